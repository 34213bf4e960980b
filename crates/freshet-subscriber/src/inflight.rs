//! Requests first: how many requests are being answered now, so that the
//! thread applying snapshots stands aside while they fill the cores.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Longest the writer stands aside for requests at a time: it then applies
/// a few rows before it looks again, so a server kept busy still applies
/// snapshots (at least ~15k rows a second).
const MAX_PAUSE: Duration = Duration::from_millis(2);

/// How many requests are being answered now, so that the thread applying
/// snapshots can stand aside while requests would otherwise share their
/// cores with it: the kernel lets a lower-priority thread finish its time
/// slice while a request waits, which is the request's latency.
#[derive(Debug, Clone)]
pub(crate) struct InFlight {
    count: Arc<AtomicUsize>,
    /// Cores this process may run on: fewer requests than that leave the
    /// writer a core of its own.
    cores: usize,
}

impl Default for InFlight {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        InFlight { count: Arc::default(), cores }
    }
}

/// One request being answered (see `InFlight::enter`).
#[derive(Debug)]
pub struct Answering(Arc<AtomicUsize>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl InFlight {
    /// Counts a request until the guard is dropped.
    pub(crate) fn enter(&self) -> Answering {
        self.count.fetch_add(1, Ordering::Relaxed);
        Answering(Arc::clone(&self.count))
    }

    /// Requests being answered now.
    pub(crate) fn now(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits while requests occupy every core, at most [`MAX_PAUSE`];
    /// returns how many times it slept.
    pub(crate) fn stand_aside(&self) -> u32 {
        let started = Instant::now();
        let mut naps = 0;
        while self.now() >= self.cores {
            std::thread::sleep(Duration::from_micros(50));
            naps += 1;
            if started.elapsed() >= MAX_PAUSE {
                break;
            }
        }
        naps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_stands_aside_only_while_requests_fill_the_cores_and_never_for_long() {
        let in_flight = InFlight { count: Arc::default(), cores: 2 };
        let first = in_flight.enter();
        assert_eq!(in_flight.stand_aside(), 0, "a core is free");
        let second = in_flight.enter();
        assert_eq!(in_flight.now(), 2);
        let started = Instant::now();
        assert!(in_flight.stand_aside() > 0, "both cores answer");
        // It returned although both still answer: after its longest pause.
        assert!(started.elapsed() >= MAX_PAUSE);
        drop((first, second));
        assert_eq!(in_flight.now(), 0);
        assert_eq!(in_flight.stand_aside(), 0);
    }
}
