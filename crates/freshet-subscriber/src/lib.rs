//! freshet's subscriber, for serving processes: reads a model's snapshot
//! topic (read_committed), starts from the newest full snapshot, applies the
//! deltas after it in order, applies a snapshot only when its commit record
//! arrived with a matching checksum and chunk count, and hot-swaps the served
//! model atomically (readers never block and never see a half model).
//!
//! **API boundary:** [`Subscriber`], [`ServingModel`] (score, top-k, version,
//! watermark) and the HTTP endpoint ([`http::router`]) are what serving
//! processes build on.
//!
//! **Architecture invariant:** the subscriber never trains; it knows the
//! model only through the snapshot wire format of `freshet-core`.

mod assemble;
#[cfg(test)]
mod fixtures;
mod follow;
pub mod http;
mod model;
mod swap;

pub use assemble::{AssembledSnapshot, Assembler, AssemblyError};
pub use follow::{
    SubscribeError, Subscriber, SubscriberConfig, SubscriberEvent, SubscriberStats, SubscriberView, SwapReport,
};
pub use model::{ApplyError, Recommendation, ServingModel, VersionInfo};
pub use swap::{LiveModel, Swapper};
