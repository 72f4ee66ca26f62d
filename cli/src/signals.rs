//! SIGTERM / SIGINT as an ordinary event (the system layer's `signals`).

pub use system::signals::{block_termination, wait_termination};
