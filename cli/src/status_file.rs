//! `HOME/disks/NAME/status.json`: the agent crate's status file
//! ([`agent::status`]), read by `lifeboat status` and written by whoever
//! runs a disk's cycles.

pub use agent::status::*;
