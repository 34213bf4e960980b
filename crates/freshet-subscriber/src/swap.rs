//! Atomic hot swap of the serving model. Readers load an `Arc` of a version
//! and never block or see a half-applied snapshot; the one writer (the
//! follower thread) builds the next version aside, sharing every unchanged
//! page with the served one, and publishes it with one pointer swap. The
//! previous version's own pages are freed when its last reader lets go.

use std::sync::Arc;

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
    pub fn store(&self, model: ServingModel) {
        self.current.store(Some(Arc::new(model)));
    }
}
