//! freshet's shared vocabulary: feedback events and their wire formats,
//! validation with one typed error per rule, the stable id hash, the model's
//! shape and row layout, the one scoring function trainer and serving share,
//! the snapshot wire format and a deterministic synthetic stream. No I/O
//! happens here.

pub mod clock;
pub mod codec;
pub mod config;
pub mod event;
pub mod id_hash;
pub mod kernels;
pub mod layout;
pub mod model;
pub mod reject;
pub mod score;
pub mod snapshot;
pub mod synth;
pub mod threads;
pub mod validate;

pub use clock::now_ms;
pub use codec::{CONTENT_TYPE_HEADER, ContentType, Decoder, encode};
pub use config::ConfigError;
pub use event::{Click, EventKind, Features, Feedback, Forget, Rating};
pub use id_hash::{hash_feature, hash_id};
pub use layout::{RowLayout, Slot};
pub use model::{Head, MAX_DIM, MIN_DIM, ModelSpec, TableKind};
pub use reject::{RejectReason, Rejection};
pub use score::ScoreContext;
pub use validate::ValidationConfig;
