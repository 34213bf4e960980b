//! Atomic hot swap of the serving model. Readers load an `Arc` and never
//! block or see a half-applied snapshot. The writer keeps two copies
//! (left-right): a delta applies to the standby copy once no reader holds it,
//! the copies swap, and the delta is replayed on the other copy next time, so
//! applying a delta costs the delta, not the model.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use crate::assemble::AssembledSnapshot;
use crate::model::{ApplyError, ServingModel};

/// How long a delta waits for readers to leave the standby copy.
const RECLAIM_WAIT: Duration = Duration::from_millis(50);

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
}

/// The only writer of a [`LiveModel`].
#[derive(Debug)]
pub struct Swapper {
    live: Arc<LiveModel>,
    /// The copy not served, once no reader holds it.
    standby: Option<Arc<ServingModel>>,
    /// Deltas the standby copy has not seen yet.
    behind: Vec<Arc<AssembledSnapshot>>,
}

impl Swapper {
    /// A writer for `live`.
    pub fn new(live: Arc<LiveModel>) -> Self {
        Swapper { live, standby: None, behind: Vec::new() }
    }

    /// The model served now.
    pub fn served(&self) -> Option<Arc<ServingModel>> {
        self.live.load()
    }

    /// Serves a full snapshot.
    pub fn apply_full(&mut self, snapshot: &AssembledSnapshot) -> Result<(), ApplyError> {
        let model = ServingModel::from_full(snapshot)?;
        self.standby = None;
        self.behind.clear();
        self.live.current.store(Some(Arc::new(model)));
        Ok(())
    }

    /// Serves the current model with `snapshot` (a delta on its version) applied.
    pub fn apply_delta(&mut self, snapshot: Arc<AssembledSnapshot>) -> Result<(), ApplyError> {
        let Some(current) = self.live.load() else {
            return Err(ApplyError::Mismatch {
                version: snapshot.header.version,
                base: 0,
                current: 0,
                spec_matches: false,
            });
        };
        let mut next = match self.standby.take().and_then(reclaim) {
            Some(standby) => standby,
            None => {
                self.behind.clear();
                (*current).clone()
            }
        };
        drop(current);
        for missed in self.behind.drain(..) {
            next.apply_delta(&missed)?;
        }
        // On error `next` is dropped; the next delta copies the served model.
        next.apply_delta(&snapshot)?;
        let previous = self.live.current.swap(Some(Arc::new(next)));
        self.standby = previous;
        self.behind.push(snapshot);
        Ok(())
    }
}

/// Takes the model back once the last reader dropped it; `None` when a
/// reader keeps it longer than [`RECLAIM_WAIT`] (the caller copies instead).
fn reclaim(mut model: Arc<ServingModel>) -> Option<ServingModel> {
    let deadline = Instant::now() + RECLAIM_WAIT;
    loop {
        match Arc::try_unwrap(model) {
            Ok(model) => return Some(model),
            Err(_) if Instant::now() >= deadline => return None,
            Err(shared) => {
                model = shared;
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use freshet_core::snapshot::{SnapshotKind, SnapshotRow};
    use freshet_core::{ModelSpec, TableKind};

    use super::*;
    use crate::fixtures::assembled;

    fn snapshot(version: u64, kind: SnapshotKind, key: u64) -> AssembledSnapshot {
        let spec = ModelSpec { dim: 8, ..ModelSpec::default() };
        let rows = vec![SnapshotRow { table: TableKind::User, key, id: None, values: vec![version as f32; 12] }];
        assembled(version, kind, spec, rows, vec![])
    }

    #[test]
    fn both_copies_see_every_delta_and_readers_keep_their_version() {
        let live = Arc::new(LiveModel::default());
        let mut swapper = Swapper::new(Arc::clone(&live));
        assert!(live.load().is_none());
        swapper.apply_full(&snapshot(1, SnapshotKind::Full, 1)).expect("full");
        let reader = live.load().expect("served");
        for version in 2..=6 {
            let delta = snapshot(version, SnapshotKind::Delta { base_version: version - 1 }, version);
            swapper.apply_delta(Arc::new(delta)).expect("delta");
        }
        assert_eq!(reader.version(), 1, "a reader's model never changes under it");
        assert_eq!(reader.rows(TableKind::User).count(), 1);
        let served = live.load().expect("served");
        assert_eq!(served.version(), 6);
        for key in 1..=6 {
            assert_eq!(served.row(TableKind::User, key).map(|r| r[0]), Some(key as f32), "row {key}");
        }
    }

    #[test]
    fn a_delta_without_a_model_or_on_another_base_is_refused() {
        let live = Arc::new(LiveModel::default());
        let mut swapper = Swapper::new(Arc::clone(&live));
        let orphan = Arc::new(snapshot(2, SnapshotKind::Delta { base_version: 1 }, 2));
        assert!(swapper.apply_delta(Arc::clone(&orphan)).is_err());
        swapper.apply_full(&snapshot(5, SnapshotKind::Full, 1)).expect("full");
        assert!(swapper.apply_delta(orphan).is_err());
        assert_eq!(live.load().expect("served").version(), 5);
    }
}
