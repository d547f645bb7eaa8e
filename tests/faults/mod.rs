//! Shared by the failpoint, partition and netns tests: a primary, a backup and slaves on fixed
//! ports, optionally with a fault-injecting proxy on every link of the primary, and the nemesis
//! workload recording into a history.

#![allow(dead_code)]

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dsm_testkit::cluster::{stat, wait_for, ClusterBuilder, Follow, Link, Listen, Ready};
use dsm_testkit::nemesis::{self, History, Verdict, Workload};

/// How long a test waits for the cluster to reach a state: generous, because tests run in
/// parallel on two contended cores.
pub const READY: Duration = Duration::from_secs(60);

pub fn bin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dsm-master")).parent().unwrap().join(name)
}

/// A builder for these tests' clusters: the binaries of this build, a primary on a fixed port
/// and a backup following its log file, ready when the primary serves with every slave.
pub fn builder() -> ClusterBuilder {
    dsm_testkit::cluster::Cluster::builder()
        .bin_dir(bin("dsm-master").parent().unwrap())
        .primary_listen(Listen::FreePort)
        .backup(Follow::Wal)
        .ready(Ready::Serving)
        .ready_timeout(READY)
}

pub struct Cluster {
    pub cluster: dsm_testkit::cluster::Cluster,
    pub primary_addr: String,
    pub backup_addr: String,
}

impl Deref for Cluster {
    type Target = dsm_testkit::cluster::Cluster;
    fn deref(&self) -> &Self::Target {
        &self.cluster
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.cluster
    }
}

impl Cluster {
    /// `failpoint`: `DSM_FAILPOINT` for the primary's first start. `proxies`: route the backup's
    /// probes, every slave's link to the primary and the primary's to the backup through a proxy.
    pub fn start(slaves: usize, failpoint: Option<&str>, proxies: bool) -> Cluster {
        let mut b = builder().slaves(slaves);
        if let Some(fp) = failpoint {
            b = b.primary_env(dsm::failpoint::ENV, fp);
        }
        if proxies {
            b = b.proxy(Link::BackupToPrimary).proxy(Link::SlaveToPrimary).proxy(Link::PrimaryToBackup);
        }
        Cluster::from_builder(b)
    }

    /// Starts what `builder` says.
    pub fn from_builder(builder: ClusterBuilder) -> Cluster {
        let cluster = builder.start().unwrap_or_else(|e| panic!("start the cluster: {e}"));
        let primary_addr = cluster.primary_addr().to_string();
        let backup_addr = cluster.backup_addr().expect("a backup").to_string();
        Cluster { cluster, primary_addr, backup_addr }
    }

    /// Waits until the master at `addr` serves with `slaves` caught-up slaves.
    pub fn wait_serving(&self, addr: &str, slaves: usize) {
        self.cluster.wait_serving(addr, slaves, READY).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Waits until either master serves with `slaves` caught-up slaves.
    pub fn wait_any_serving(&self, slaves: usize) {
        wait_for(&format!("a master serving with {slaves} slaves"), READY, || {
            serving(&self.primary_addr, slaves) || serving(&self.backup_addr, slaves)
        })
        .unwrap_or_else(|e| panic!("{e}: {}", self.roles()));
    }

    /// Both masters' roles and slave counts, for messages.
    pub fn roles(&self) -> String {
        let one = |a: &str| format!("{a}: role={:?} slaves={:?}", stat(a, "role"), stat(a, "slaves"));
        format!("primary {}; backup {}", one(&self.primary_addr), one(&self.backup_addr))
    }

    /// Starts the primary again on its address, without a failpoint.
    pub fn restart_primary(&mut self) {
        self.primary.restart().expect("restart the primary");
    }

    /// The nemesis workload against both masters.
    pub fn workload(&self, history: &Arc<History>, clients: usize, ops_per_key: u64, seed: u64) -> Workload {
        Workload::start(history, &self.primary_addr, &self.backup_addr, clients, 3, ops_per_key, seed)
            .unwrap()
    }

    /// Stops the workload, judges its history, and on a violation keeps the cluster's
    /// directory and fails with the counts, the verdict and where the logs are. `what` names
    /// the run in the message. Returns the counts of a clean run.
    pub fn stop_and_judge(mut self, workload: Workload, history: &History, what: &str) -> nemesis::Counts {
        let counts = workload.stop();
        let verdict = self.judge(history);
        if !verdict.is_ok() {
            let kept = self.keep_dir();
            panic!("{what}: {counts:?}\n{verdict}\nlogs in {}", kept.display());
        }
        counts
    }

    /// Final reads of every key, then the verdict.
    pub fn judge(&self, history: &History) -> Verdict {
        nemesis::final_reads(history, &self.primary_addr, &self.backup_addr).expect("final reads");
        history.judge(nemesis::FINAL_CLIENT)
    }
}

pub fn serving(addr: &str, slaves: usize) -> bool {
    stat(addr, "role").as_deref() == Some("primary") && stat(addr, "slaves") == Some(slaves.to_string())
}

/// Waits until the counts of `workload` show `n` more acknowledged writes than `from`.
pub fn wait_acked(workload: &Workload, from: u64, n: u64, what: &str) -> u64 {
    wait_for(what, READY, || workload.counts().acked_writes >= from + n)
        .unwrap_or_else(|e| panic!("{e}: {:?}", workload.counts()));
    workload.counts().acked_writes
}
