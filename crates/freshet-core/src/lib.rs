//! freshet's shared vocabulary: feedback events and their wire formats,
//! validation with one typed error per rule, the stable id hash and a
//! deterministic synthetic stream. No I/O happens here.

pub mod codec;
pub mod config;
pub mod event;
pub mod id_hash;
pub mod reject;
pub mod synth;
pub mod validate;

pub use codec::{CONTENT_TYPE_HEADER, ContentType, Decoder, encode};
pub use config::ConfigError;
pub use event::{Click, EventKind, Features, Feedback, Forget, Rating};
pub use id_hash::{hash_feature, hash_id};
pub use reject::{RejectReason, Rejection};
pub use validate::ValidationConfig;
