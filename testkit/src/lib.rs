//! dsm-testkit: the tools that test and measure dsm, kept apart from the product so the servers
//! link no plotting, CSV or histogram crate.
//!
//! - `cluster`: starts real `dsm-*` processes on free ports and kills them on drop;
//! - `proxy`: a TCP proxy that delays, drops or blackholes a link (partitions);
//! - `checker` and `nemesis`: a linearizability checker and the fault-injecting workload;
//! - `harness` and `plot`: the load-test harness (`dsm-harness`) and its PNG plots.

pub mod checker;
pub mod cluster;
pub mod harness;
pub mod nemesis;
pub mod plot;
pub mod proxy;
