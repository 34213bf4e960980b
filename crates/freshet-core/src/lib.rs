//! freshet's shared vocabulary: feedback events and their wire formats,
//! validation with one typed error per rule, the stable id hash, the model's
//! shape, the snapshot wire format and a deterministic synthetic stream. No
//! I/O happens here.

pub mod clock;
pub mod codec;
pub mod config;
pub mod event;
pub mod id_hash;
pub mod model;
pub mod reject;
pub mod snapshot;
pub mod synth;
pub mod threads;
pub mod validate;

pub use clock::now_ms;
pub use codec::{CONTENT_TYPE_HEADER, ContentType, Decoder, encode};
pub use config::ConfigError;
pub use event::{Click, EventKind, Features, Feedback, Forget, Rating};
pub use id_hash::{hash_feature, hash_id};
pub use model::{
    HEAD_BIASES, Head, MAX_DIM, MIN_DIM, ModelSpec, TableKind, USER_RATING_SCALE, USER_SESSION_OFFSET, bias_terms,
};
pub use reject::{RejectReason, Rejection};
pub use validate::ValidationConfig;
