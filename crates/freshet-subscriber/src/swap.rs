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
