//! Time-limited joins: stopping a component never hangs on a stuck thread.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Joins `thread` if it finishes within `timeout`; otherwise leaves it
/// running (detached) and returns `false`. A thread that panicked counts as
/// finished.
pub fn join_within<T>(thread: JoinHandle<T>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !thread.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if thread.is_finished() {
        let _ = thread.join();
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_threads_join_and_stuck_ones_are_left() {
        assert!(join_within(std::thread::spawn(|| 1), Duration::from_secs(5)));
        let stuck = std::thread::spawn(|| std::thread::sleep(Duration::from_secs(3)));
        assert!(!join_within(stuck, Duration::from_millis(50)));
    }
}
