//! Shared by the failpoint and partition tests: a primary, a backup and slaves on fixed ports,
//! optionally with a fault-injecting proxy in front of the primary on every link, and the
//! nemesis workload recording into a history.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dsm_testkit::cluster::{free_port, stat, wait_for, Node};
use dsm_testkit::nemesis::{self, History, Verdict, Workload};
use dsm_testkit::proxy::Proxy;
use tempfile::TempDir;

/// How long a test waits for the cluster to reach a state: generous, because tests run in
/// parallel on two contended cores.
pub const READY: Duration = Duration::from_secs(60);

pub fn bin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dsm-master")).parent().unwrap().join(name)
}

/// Where the primary's links go.
pub struct Links {
    /// In front of the primary for the backup's probes (the backup's `--primary`).
    pub backup_to_primary: Option<Proxy>,
    /// In front of the primary for each slave (its `--master`).
    pub slave_to_primary: Vec<Proxy>,
    /// In front of the backup for the primary's probes and failback (the primary's `--backup`).
    pub primary_to_backup: Option<Proxy>,
}

pub struct Cluster {
    pub primary: Node,
    pub backup: Node,
    pub slaves: Vec<Node>,
    pub primary_addr: String,
    pub backup_addr: String,
    pub links: Links,
    /// Declared last so the processes die before their directory is removed.
    pub dir: TempDir,
}

impl Cluster {
    /// `failpoint`: `DSM_FAILPOINT` for the primary's first start. `proxies`: route the backup's
    /// probes and every slave's link to the primary through a proxy.
    pub fn start(slaves: usize, failpoint: Option<&str>, proxies: bool) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let primary_addr = free_port().unwrap().to_string();
        let backup_addr = free_port().unwrap().to_string();
        let proxy_to = |to: &str| Proxy::start("127.0.0.1:0".parse().unwrap(), to.parse().unwrap()).unwrap();
        let proxy = || proxy_to(&primary_addr);
        let links = Links {
            backup_to_primary: proxies.then(proxy),
            slave_to_primary: if proxies { (0..slaves).map(|_| proxy()).collect() } else { Vec::new() },
            primary_to_backup: proxies.then(|| proxy_to(&backup_addr)),
        };
        let primary_peer =
            links.primary_to_backup.as_ref().map_or(backup_addr.clone(), |p| p.addr().to_string());
        let primary = start_primary(dir.path(), &primary_addr, &primary_peer, failpoint);
        let probe = links.backup_to_primary.as_ref().map_or(primary_addr.clone(), |p| p.addr().to_string());
        let backup_args = args(&[
            "--listen",
            &backup_addr,
            "--primary",
            &probe,
            "--follow",
            &dir.path().join("primary.log").display().to_string(),
            "--wal",
            &dir.path().join("backup.log").display().to_string(),
        ]);
        let backup = Node::start("backup", &bin("dsm-backup"), backup_args, dir.path(), false, true).unwrap();
        let mut nodes = Vec::new();
        for i in 0..slaves {
            let master = links.slave_to_primary.get(i).map_or(primary_addr.clone(), |p| p.addr().to_string());
            let id = format!("s{}", i + 1);
            let a = args(&["--id", &id, "--master", &master, "--backup", &backup_addr]);
            nodes.push(Node::start(&id, &bin("dsm-slave"), a, dir.path(), false, false).unwrap());
        }
        let c = Cluster { primary, backup, slaves: nodes, primary_addr, backup_addr, links, dir };
        c.wait_serving(&c.primary_addr, slaves);
        c
    }

    /// Waits until the master at `addr` serves with `slaves` caught-up slaves.
    pub fn wait_serving(&self, addr: &str, slaves: usize) {
        wait_for(&format!("{addr} to serve with {slaves} slaves"), READY, || serving(addr, slaves))
            .unwrap_or_else(|e| {
                panic!("{e}: role={:?} slaves={:?}", stat(addr, "role"), stat(addr, "slaves"))
            });
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
        self.primary.kill();
        let peer =
            self.links.primary_to_backup.as_ref().map_or(self.backup_addr.clone(), |p| p.addr().to_string());
        self.primary = start_primary(self.dir.path(), &self.primary_addr, &peer, None);
    }

    /// The nemesis workload against both masters.
    pub fn workload(&self, history: &Arc<History>, clients: usize, ops_per_key: u64, seed: u64) -> Workload {
        Workload::start(history, &self.primary_addr, &self.backup_addr, clients, 3, ops_per_key, seed)
            .unwrap()
    }

    /// Stops the workload, judges its history, and on a violation keeps the cluster's
    /// directory and fails with the counts, the verdict and where the logs are. `what` names
    /// the run in the message. Returns the counts of a clean run.
    pub fn stop_and_judge(self, workload: Workload, history: &History, what: &str) -> nemesis::Counts {
        let counts = workload.stop();
        let verdict = self.judge(history);
        if !verdict.is_ok() {
            let kept = self.dir.keep();
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

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Starts `dsm-master` on `addr`; with a failpoint it runs under `env DSM_FAILPOINT=...`, so
/// only this process is armed.
fn start_primary(dir: &Path, addr: &str, backup: &str, failpoint: Option<&str>) -> Node {
    let wal = dir.join("primary.log").display().to_string();
    let master = args(&["--listen", addr, "--wal", &wal, "--backup", backup]);
    let node = match failpoint {
        None => Node::start("primary", &bin("dsm-master"), master, dir, false, true),
        Some(fp) => {
            let mut a =
                vec![format!("{}={fp}", dsm::failpoint::ENV), bin("dsm-master").display().to_string()];
            a.extend(master);
            Node::start("primary", Path::new("/usr/bin/env"), a, dir, false, true)
        }
    };
    node.expect("start primary")
}

/// Waits until the counts of `workload` show `n` more acknowledged writes than `from`.
pub fn wait_acked(workload: &Workload, from: u64, n: u64, what: &str) -> u64 {
    wait_for(what, READY, || workload.counts().acked_writes >= from + n)
        .unwrap_or_else(|e| panic!("{e}: {:?}", workload.counts()));
    workload.counts().acked_writes
}
