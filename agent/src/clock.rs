//! Time as the agent sees it, injected so the seeded simulation can drive
//! the scheduler: monotonic time for schedules (a wall-clock jump moves no
//! cycle), wall time for what is recorded, and a wait that a stop ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

/// The agent's stop signal, with a wait that wakes on it.
#[derive(Debug, Default)]
pub struct Stop {
    flag: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Stop {
    /// A stop not yet given.
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Stops: every waiter wakes, and cycles in progress see [`Stop::flag`].
    pub fn set(&self) {
        let _g = self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.flag.store(true, Ordering::SeqCst);
        self.wake.notify_all();
    }

    /// Whether the stop was given.
    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// The flag a cycle polls to cancel itself.
    pub fn flag(&self) -> &AtomicBool {
        &self.flag
    }

    /// Sleeps until `deadline` (on the system's monotonic clock); true if
    /// stopping instead.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        let mut g = self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if self.is_set() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self.wake.wait_timeout(g, deadline - now).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
    }
}

/// A source of time.
pub trait Clock: Sync {
    /// Monotonic now: schedules are measured in it.
    fn now(&self) -> Instant;
    /// Wall-clock now, nanoseconds since the Unix epoch: what is recorded
    /// (status, audit, retention).
    fn wall_ns(&self) -> u64;
    /// Waits until `deadline` or a stop; true if stopping.
    fn wait_until(&self, deadline: Instant, stop: &Stop) -> bool;
}

/// The system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall_ns(&self) -> u64 {
        system::clock::now_ns()
    }

    fn wait_until(&self, deadline: Instant, stop: &Stop) -> bool {
        stop.wait_until(deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_stop_wakes_a_sleeping_waiter() {
        let stop = Arc::new(Stop::new());
        assert!(!stop.wait_until(Instant::now() + Duration::from_millis(1)), "no stop yet");
        let waiter = {
            let stop = stop.clone();
            std::thread::spawn(move || stop.wait_until(Instant::now() + Duration::from_secs(600)))
        };
        stop.set();
        assert!(waiter.join().unwrap(), "a stop wakes the waiter instead of letting it sleep for 10 minutes");
        assert!(stop.wait_until(Instant::now() + Duration::from_secs(600)), "and every later wait returns at once");
    }
}
