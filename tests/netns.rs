//! The partition test with real network namespaces: the primary runs in a namespace of its own,
//! joined to the host by a veth pair, and the partition is the host's end of the link going
//! down — no proxy, the kernel drops the packets. Needs root and a working `ip netns`, so it is
//! ignored by a plain `cargo test`, where it would not run for most users, and `make test`
//! runs it as root with `--ignored --nocapture` (or says `SKIPPED` when not root). A root
//! run where namespaces do not work prints `SKIPPED` and why.

mod faults;

use std::process::Command;
use std::sync::Arc;

use dsm_testkit::cluster::{free_port, stat, wait_for, Listen};
use dsm_testkit::nemesis::History;
use faults::{serving, wait_acked, READY};

/// A namespace with a veth pair to the host, deleted on drop.
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
    ns_ip: String,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).output().map(|o| o.status.success()).unwrap_or(false)
}

impl Netns {
    fn create() -> Result<Netns, String> {
        let id = std::process::id();
        let name = format!("dsm-{id}");
        let (host_if, ns_if) = (format!("dh{id}"), format!("dn{id}"));
        let net = format!("10.201.{}", id % 250);
        let n = Netns { name, host_if, host_ip: format!("{net}.1"), ns_ip: format!("{net}.2") };
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), n.name.clone()],
            vec![
                "link".into(),
                "add".into(),
                n.host_if.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                ns_if.clone(),
            ],
            vec!["link".into(), "set".into(), ns_if.clone(), "netns".into(), n.name.clone()],
            vec!["addr".into(), "add".into(), format!("{}/24", n.host_ip), "dev".into(), n.host_if.clone()],
            vec!["link".into(), "set".into(), n.host_if.clone(), "up".into()],
            vec![
                "-n".into(),
                n.name.clone(),
                "addr".into(),
                "add".into(),
                format!("{}/24", n.ns_ip),
                "dev".into(),
                ns_if.clone(),
            ],
            vec!["-n".into(), n.name.clone(), "link".into(), "set".into(), ns_if, "up".into()],
            vec!["-n".into(), n.name.clone(), "link".into(), "set".into(), "lo".into(), "up".into()],
        ];
        for step in steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            if !ip(&args) {
                return Err(format!("`ip {}` failed", step.join(" ")));
            }
        }
        Ok(n)
    }

    fn link(&self, up: bool) {
        assert!(ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }]));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the veth pair, and with it the host's end.
        ip(&["link", "del", &self.host_if]);
        ip(&["netns", "del", &self.name]);
    }
}

#[test]
#[ignore = "needs root and ip netns: make test runs it as root (cargo test --test netns -- --ignored)"]
fn primary_in_its_own_namespace_cut_off_by_link_down() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: network namespaces need root");
        return;
    }
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("SKIPPED: network namespaces unavailable: {e}");
            return;
        }
    };
    let port = free_port().unwrap().port();
    // Declared after `ns`, so the processes die before the namespace is deleted. Ready once
    // the namespaced primary serves with every slave.
    let c = faults::builder()
        .primary_listen(Listen::At(format!("{}:{port}", ns.ns_ip)))
        .primary_wrapper(["ip", "netns", "exec", &ns.name])
        .slaves(3)
        .start()
        .unwrap();
    let (primary_addr, backup_addr) = (c.primary_addr().to_string(), c.backup_addr().unwrap().to_string());

    let history = Arc::new(History::new());
    let workload =
        dsm_testkit::nemesis::Workload::start(&history, &primary_addr, &backup_addr, 3, 3, 40, 31).unwrap();
    let acked = wait_acked(&workload, 0, 50, "writes before the partition");
    ns.link(false);
    wait_for("the backup to take over", READY, || serving(&backup_addr, 3))
        .unwrap_or_else(|e| panic!("{e}: backup role={:?}", stat(&backup_addr, "role")));
    let acked = wait_acked(&workload, acked, 50, "writes through the backup");
    ns.link(true);
    wait_for("a master serving after healing", READY, || {
        serving(&primary_addr, 3) || serving(&backup_addr, 3)
    })
    .unwrap();
    wait_acked(&workload, acked, 30, "writes after healing");
    let counts = workload.stop();
    dsm_testkit::nemesis::final_reads(&history, &primary_addr, &backup_addr).unwrap();
    let verdict = history.judge(dsm_testkit::nemesis::FINAL_CLIENT);
    assert!(verdict.is_ok(), "{counts:?}\n{verdict}\nlogs in {}", c.dir().display());
}
