//! Failover: bringing protected VMs up at the recovery site from a chosen
//! recovery point.
//!
//! This crate owns the VM launch definition ([`vmdef`]), booting a recovered
//! VM with QEMU and stopping it ([`launch`]), the boot health check
//! ([`health`]), and failover jobs whose steps survive a crash of Lifeboat
//! itself ([`failover`]), recorded one step at a time by one step log
//! ([`step_log`]) and kept in versioned files separate from the runtime
//! types ([`job_file`], [`run_file`]), and recovery plans that fail whole applications
//! over in order ([`plan`]), and the rule for what may run as root and how
//! its own files are kept private ([`trust`]). It reads points through the `vault` crate (restore
//! verifies every block) and the sealed definition through `disk-format`'s
//! root extension; it must not re-implement either. It also owns failback
//! ([`failback`]) and the source side of a planned failover ([`planned`]),
//! written against [`host::HostSide`], what only the protecting host can do
//! (its home, protecting a disk, a replication cycle, its audit log): this
//! crate never depends on the binary's home or on the shipper.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod error;
pub mod failback;
pub mod failover;
pub mod health;
pub mod host;
pub mod instant;
pub mod job_file;
pub mod json_lines;
pub mod launch;
pub mod plan;
pub mod planned;
pub mod run_file;
pub mod step_log;
pub mod trust;
pub mod vmdef;

pub use error::{QemuError, RecoveryError, Refusal};
pub use failback::FailbackError;
pub use failover::{HealthResult, Job, JobState, Kind, Observer, PointChoice, Request, Site};
pub use host::{HostError, HostSide, LocalDisk, ProtectRequest, Shipped};
pub use launch::{Network, QemuConfig};
pub use planned::PlannedError;
pub use step_log::{Step, StepName, StepState};
pub use vmdef::VmDefinition;
