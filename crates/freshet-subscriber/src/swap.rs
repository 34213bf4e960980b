//! Atomic hot swap of the serving model. Readers load an `Arc` of a version
//! and never block or see a half-applied snapshot; the one writer (the
//! follower thread) builds the next version aside, sharing every unchanged
//! page with the served one, and publishes it with one pointer swap. The
//! previous version's own pages are freed when its last reader lets go.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use crate::model::ServingModel;

/// The currently served model, shared with readers.
#[derive(Debug, Default)]
pub struct LiveModel {
    current: ArcSwapOption<ServingModel>,
}

impl LiveModel {
    /// The model now, if a snapshot was applied yet.
    pub fn load(&self) -> Option<Arc<ServingModel>> {
        self.current.load_full()
    }

    /// Serves `model` from now on (the subscriber's thread does this; a
    /// reader with its own transport builds versions with [`crate::Builder`]).
    /// Returns the version served until now: hold it until no reader does
    /// (see [`Retired`]), so that freeing it never falls to a request.
    pub fn store(&self, model: ServingModel) -> Option<Arc<ServingModel>> {
        self.current.swap(Some(Arc::new(model)))
    }
}

/// Versions no longer served, kept by the writer until their last reader
/// lets go, then freed on the writer's thread: dropping a large version
/// releases thousands of pages, which a request must never have to do.
#[derive(Debug, Default)]
pub struct Retired {
    versions: Vec<Arc<ServingModel>>,
}

impl Retired {
    /// Keeps `version` until no reader holds it.
    pub fn push(&mut self, version: Option<Arc<ServingModel>>) {
        self.versions.extend(version);
        self.collect();
    }

    /// Frees the versions only this holder still holds.
    pub fn collect(&mut self) {
        self.versions.retain(|version| Arc::strong_count(version) > 1);
    }

    /// Versions waiting for readers to let go.
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }
}

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

/// One request being answered (see [`InFlight::enter`]).
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
