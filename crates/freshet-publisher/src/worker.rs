//! The publisher thread and the trainer's handle to it. The trainer submits a
//! hand-off after each checkpoint and never waits: hand-offs not taken yet
//! merge into one. The thread publishes, holds (quality gate) or retries, and
//! reports what it published.
//!
//! A delta may be handed over ahead, while its checkpoint is being written
//! ([`PublisherHandle::submit_ahead`]): its transaction is written meanwhile
//! and committed only once the trainer says the version is durable
//! ([`PublisherHandle::durable`]), so a subscriber never serves a version a
//! restart could lose, and the snapshot is out a checkpoint write sooner.
//!
//! When a full snapshot is due, the trainer hands over the version's delta
//! and then its full snapshot: the delta goes out first, so subscribers
//! following the chain apply a few rows and pass over the full snapshot of
//! the version they already serve, which is there for those that join.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use freshet_core::snapshot::SnapshotMetrics;
use freshet_core::threads::join_within;
use tracing::{info, info_span, warn};

use crate::gate::QualityGate;
use crate::outgoing::Outgoing;
use crate::producer::{PublishError, Published, SnapshotProducer};

/// Pause after an aborted transaction before trying again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// What the publisher thread reports as it goes (on that thread): for
/// metrics that must be current while a long transaction is open.
#[derive(Debug, Clone, Copy)]
pub enum PublisherEvent<'a> {
    /// A snapshot transaction opens for this version.
    Started {
        /// The version.
        version: u64,
        /// Whether it is a full snapshot.
        full: bool,
    },
    /// Every message of the transaction is delivered; it commits once the
    /// version is durable (at once unless it was handed over ahead).
    Prepared {
        /// The version.
        version: u64,
    },
    /// The transaction committed.
    Published(&'a Published),
    /// The transaction was aborted; the version is tried again.
    Aborted {
        /// The version.
        version: u64,
    },
}

/// Counters and the latest publish, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PublisherStats {
    /// Newest version published (0 before any).
    pub published_version: u64,
    /// Full snapshots published.
    pub fulls: u64,
    /// Delta snapshots published.
    pub deltas: u64,
    /// Publishes held by the quality gate.
    pub holds: u64,
    /// Since when the quality gate holds the newest hand-off (`None`: not held).
    pub held_since: Option<Instant>,
    /// Aborted transactions.
    pub aborts: u64,
    /// The newest publish.
    pub last: Option<Published>,
}

/// When full snapshots are due.
#[derive(Debug, Clone, Copy)]
pub struct FullPolicy {
    /// After this many deltas.
    pub every_deltas: u32,
    /// When the newest full snapshot is this old.
    pub interval: Duration,
}

/// [`PublisherHandle::full_due_in`] of `state` under `policy`.
fn full_due_in(state: &State, policy: &FullPolicy) -> Duration {
    let handed_full = state.pending.as_ref().is_some_and(Outgoing::is_full) || state.full_after.is_some();
    if handed_full {
        return policy.interval;
    }
    if state.wants_full || state.deltas_since_full >= policy.every_deltas {
        return Duration::ZERO;
    }
    state.last_full.map_or(Duration::ZERO, |at| policy.interval.saturating_sub(at.elapsed()))
}

impl PublisherStats {
    /// Whether the quality gate holds the newest hand-off now.
    pub fn holding(&self) -> bool {
        self.held_since.is_some()
    }
}

impl State {
    /// Nothing handed over or published yet.
    fn new() -> Self {
        State {
            pending: None,
            full_after: None,
            fresh: false,
            closing: false,
            wants_full: false,
            durable: 0,
            deltas_since_full: 0,
            last_full: None,
            failure: None,
            stats: PublisherStats::default(),
        }
    }

    /// Takes `outgoing` in: the newest pending hand-off, or the full snapshot
    /// that follows its delta.
    fn hand_over(&mut self, outgoing: Outgoing) {
        let follows_delta = self.pending.as_ref().is_some_and(|p| !p.is_full() && p.version == outgoing.version);
        if outgoing.is_full() && follows_delta {
            self.full_after = Some(outgoing);
        } else {
            if let Some(full) = self.full_after.take() {
                // Both move on to the newer version.
                self.full_after = full.merge(outgoing.clone()).ok();
            }
            self.pending = match self.pending.take() {
                None => Some(outgoing),
                Some(earlier) => self.merged(earlier, outgoing),
            };
        }
        self.fresh = true;
    }

    /// `earlier` then `later` as one hand-off. On a gap between them both
    /// are dropped (with any full snapshot waiting to follow) and a full
    /// snapshot is wanted instead.
    fn merged(&mut self, earlier: Outgoing, later: Outgoing) -> Option<Outgoing> {
        match earlier.merge(later) {
            Ok(merged) => Some(merged),
            Err(gap) => {
                warn!(%gap, "dropping unpublished changes; a full snapshot follows");
                self.wants_full = true;
                self.full_after = None;
                None
            }
        }
    }
}

struct State {
    pending: Option<Outgoing>,
    /// A full snapshot of `pending`'s version, published right after it.
    full_after: Option<Outgoing>,
    /// `pending` changed since the thread last looked at it.
    fresh: bool,
    closing: bool,
    /// A full snapshot is needed whatever the policy says.
    wants_full: bool,
    /// The newest version the trainer has declared durable: a transaction
    /// of a newer one is not committed.
    durable: u64,
    deltas_since_full: u32,
    last_full: Option<Instant>,
    failure: Option<PublishError>,
    stats: PublisherStats,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    policy: FullPolicy,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data: keep using it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until `version` is durable (true) or the handle closes first (false).
    fn wait_durable(&self, version: u64) -> bool {
        let mut state = self.lock();
        loop {
            if state.durable >= version {
                return true;
            }
            if state.closing {
                return false;
            }
            state = self.wake.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

/// The trainer's side of the publisher thread.
pub struct PublisherHandle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl PublisherHandle {
    /// Starts the publisher thread around a connected producer;
    /// `on_event` runs on that thread when a snapshot transaction opens,
    /// commits or aborts.
    pub fn spawn(
        producer: SnapshotProducer,
        gate: QualityGate,
        policy: FullPolicy,
        on_event: impl Fn(PublisherEvent<'_>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared { state: Mutex::new(State::new()), wake: Condvar::new(), policy });
        let worker =
            Worker { shared: Arc::clone(&shared), producer, gate, baseline: None, on_event: Box::new(on_event) };
        let thread = std::thread::Builder::new().name("freshet-publisher".to_owned()).spawn(move || worker.run())?;
        Ok(PublisherHandle { shared, thread: Some(thread) })
    }

    /// Hands a durable version over; merges with one not taken yet. A full
    /// snapshot of the version of a delta not taken yet is published after
    /// that delta.
    pub fn submit(&self, outgoing: Outgoing) {
        let version = outgoing.version;
        let mut state = self.shared.lock();
        state.durable = state.durable.max(version);
        state.hand_over(outgoing);
        self.shared.wake.notify_all();
    }

    /// Hands over a version whose checkpoint is still being written, as
    /// [`Self::submit`] does, except that its transaction commits only after
    /// [`Self::durable`] of its version (or a newer one). A handle closed or
    /// dropped before that aborts the transaction: the version is withdrawn.
    pub fn submit_ahead(&self, outgoing: Outgoing) {
        let mut state = self.shared.lock();
        state.hand_over(outgoing);
        self.shared.wake.notify_all();
    }

    /// Declares every version up to `version` durable: their transactions may commit.
    pub fn durable(&self, version: u64) {
        let mut state = self.shared.lock();
        state.durable = state.durable.max(version);
        self.shared.wake.notify_all();
    }

    /// Whether a full snapshot was handed over before: deltas then have a
    /// chain to extend.
    pub fn has_chain(&self) -> bool {
        let state = self.shared.lock();
        state.last_full.is_some() || state.pending.as_ref().is_some_and(Outgoing::is_full)
    }

    /// Whether the next hand-off should be a full snapshot.
    pub fn full_due(&self) -> bool {
        self.full_due_in() == Duration::ZERO
    }

    /// How long until a full snapshot is due by age (`ZERO` when due now).
    /// While one is handed over and not yet taken, the interval: the caller
    /// asks again then (a caller that slept until the next hand-off instead
    /// would stop sending full snapshots of an idle model).
    pub fn full_due_in(&self) -> Duration {
        let state = self.shared.lock();
        full_due_in(&state, &self.shared.policy)
    }

    /// The counters now.
    pub fn stats(&self) -> PublisherStats {
        self.shared.lock().stats
    }

    /// Why the thread stopped, if it stopped on a fatal error (e.g. fenced).
    pub fn failure(&self) -> Option<PublishError> {
        self.shared.lock().failure.clone()
    }

    /// Publishes what is pending (unless held) and stops the thread, waiting
    /// at most `timeout`. Returns the fatal error that stopped it, if any.
    pub fn close(mut self, timeout: Duration) -> Result<PublisherStats, PublishError> {
        self.shared.lock().closing = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take()
            && !join_within(thread, timeout)
        {
            warn!(?timeout, "the publisher did not stop in time; leaving it");
        }
        let state = self.shared.lock();
        match &state.failure {
            Some(failure) => Err(failure.clone()),
            None => Ok(state.stats),
        }
    }
}

impl Drop for PublisherHandle {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_all();
    }
}

/// The publisher thread's own state.
struct Worker {
    shared: Arc<Shared>,
    producer: SnapshotProducer,
    gate: QualityGate,
    /// Metrics of the newest published version.
    baseline: Option<SnapshotMetrics>,
    on_event: Box<dyn Fn(PublisherEvent<'_>) + Send>,
}

impl Worker {
    fn run(mut self) {
        while let Some((outgoing, closing)) = self.next() {
            // A full snapshot's rows are built here, off the trainer's thread.
            let outgoing = info_span!("build_full", version = outgoing.version).in_scope(|| outgoing.build());
            // A rollback is the remedy for what the gate holds: never held itself.
            let judged = outgoing.rollback_to.is_none().then_some(()).and(self.baseline.as_ref());
            if let Some(hold) = judged.and_then(|published| self.gate.judge(published, &outgoing.metrics)) {
                warn!(
                    version = outgoing.version,
                    metric = hold.metric,
                    published = hold.published,
                    current = hold.current,
                    "quality gate: publish held"
                );
                self.put_back(outgoing, |stats| {
                    stats.holds += 1;
                    stats.held_since.get_or_insert_with(Instant::now);
                });
                if closing {
                    return;
                }
                continue;
            }
            let version = outgoing.version;
            (self.on_event)(PublisherEvent::Started { version, full: outgoing.is_full() });
            let (shared, on_event) = (&self.shared, &self.on_event);
            let may_commit = || {
                on_event(PublisherEvent::Prepared { version });
                shared.wait_durable(version)
            };
            match self.producer.publish_when(&outgoing, may_commit) {
                Ok(published) => {
                    (self.on_event)(PublisherEvent::Published(&published));
                    self.record(published, outgoing.metrics);
                }
                Err(error @ PublishError::Withdrawn { .. }) => {
                    // Only a closing handle withdraws: its checkpoint failed or never came.
                    warn!(%error, "snapshot withdrawn");
                    (self.on_event)(PublisherEvent::Aborted { version });
                    return;
                }
                Err(error) if !error.is_fatal() => {
                    warn!(%error, version = outgoing.version, "publish failed; retrying");
                    (self.on_event)(PublisherEvent::Aborted { version: outgoing.version });
                    self.put_back(outgoing, |stats| stats.aborts += 1);
                    if closing {
                        return;
                    }
                    std::thread::sleep(RETRY_PAUSE);
                    self.shared.lock().fresh = true;
                }
                Err(error) => return self.fail(&error),
            }
        }
    }

    /// Waits for a fresh hand-off (or closing); `None` when there is nothing left to do.
    fn next(&self) -> Option<(Outgoing, bool)> {
        let mut state = self.shared.lock();
        loop {
            if state.fresh
                && let Some(outgoing) = state.pending.take()
            {
                // The full snapshot of the same version is next.
                state.pending = state.full_after.take();
                state.fresh = state.pending.is_some();
                if outgoing.is_full() {
                    // Counted from when it is taken, so no second full is exported meanwhile.
                    state.last_full = Some(Instant::now());
                    state.deltas_since_full = 0;
                    state.wants_full = false;
                }
                return Some((outgoing, state.closing));
            }
            if state.closing {
                return None;
            }
            state = self.shared.wake.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Returns an unpublished hand-off, merged before anything submitted since.
    fn put_back(&self, outgoing: Outgoing, count: impl FnOnce(&mut PublisherStats)) {
        let mut state = self.shared.lock();
        count(&mut state.stats);
        state.pending = match state.pending.take() {
            None => Some(outgoing),
            Some(newer) => state.merged(outgoing, newer),
        };
    }

    fn record(&mut self, published: Published, metrics: SnapshotMetrics) {
        let mut state = self.shared.lock();
        let stats = &mut state.stats;
        stats.published_version = published.version;
        stats.held_since = None;
        stats.last = Some(published);
        if published.full {
            stats.fulls += 1;
        } else {
            stats.deltas += 1;
            state.deltas_since_full += 1;
        }
        self.baseline = Some(metrics);
    }

    fn fail(&self, error: &PublishError) {
        tracing::error!(%error, "publisher stopped");
        let mut state = self.shared.lock();
        state.failure = Some(error.clone());
        state.closing = true;
        info!(topic = self.producer.topic(), "publisher thread exits");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshet_core::snapshot::{ModelParams, Watermark};

    fn full() -> Outgoing {
        let params = ModelParams {
            spec: freshet_core::ModelSpec::default(),
            globals: [0.0; 2],
            session_gap_ms: 1,
            rows: Vec::new(),
        };
        Outgoing::full(1, params, Watermark::default(), SnapshotMetrics::default())
    }

    #[test]
    fn a_full_snapshot_is_due_by_count_age_or_need_and_never_forgotten_while_one_waits() {
        let policy = FullPolicy { every_deltas: 10, interval: Duration::from_secs(60) };
        let mut state = State::new();
        assert_eq!(full_due_in(&state, &policy), Duration::ZERO, "none yet");
        state.last_full = Some(Instant::now());
        let left = full_due_in(&state, &policy);
        assert!(left > Duration::from_secs(59) && left <= policy.interval, "{left:?}");
        state.deltas_since_full = 10;
        assert_eq!(full_due_in(&state, &policy), Duration::ZERO, "after every_deltas deltas");
        state.deltas_since_full = 0;
        state.wants_full = true;
        assert_eq!(full_due_in(&state, &policy), Duration::ZERO, "after a chain gap");
        // Handed over, not taken yet: not due, but ask again after an interval
        // (an idle trainer sleeping "until further notice" sent no more full snapshots).
        state.pending = Some(full());
        assert_eq!(full_due_in(&state, &policy), policy.interval);
    }
}
