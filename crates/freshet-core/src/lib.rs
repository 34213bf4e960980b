//! freshet's shared vocabulary: feedback events and their wire formats,
//! validation with one typed error per rule, the stable id hash, the model's
//! shape and row layout, the one scoring function trainer and serving share,
//! the snapshot wire format, the offsets a checkpoint keeps and a
//! deterministic synthetic stream.
//!
//! **Architecture invariant:** no I/O happens here (no Kafka, no files, no
//! async runtime), and nothing reads the wall clock except [`now_ms`], which
//! the I/O crates call and pass in.
//!
//! ```
//! use freshet_core::{Decoder, Feedback, ModelSpec, RejectReason, ValidationConfig};
//!
//! let spec = ModelSpec::default(); // ratings from 0.5 to 5
//! let decoder = Decoder::new(ValidationConfig::default().for_model(&spec));
//! let now = 1_764_400_000_000;
//! let json = br#"{"type":"rating","user":"u1","item":"i9","rating":4.5,"ts":1764400000000}"#;
//! let Feedback::Rating(rating) = decoder.decode(json, None, now)? else { unreachable!() };
//! assert_eq!((rating.user.as_str(), rating.rating), ("u1", 4.5));
//!
//! // A rating outside the model's range is refused with a stable reason,
//! // the one the dead-letter topic records.
//! let json = br#"{"type":"rating","user":"u1","item":"i9","rating":9,"ts":1764400000000}"#;
//! let rejection = decoder.decode(json, None, now).expect_err("out of range");
//! assert_eq!(rejection.reason(), RejectReason::RatingOutOfRange);
//! assert_eq!(rejection.reason().as_str(), "rating_out_of_range");
//! # Ok::<(), freshet_core::Rejection>(())
//! ```

pub mod clock;
pub mod codec;
pub mod config;
pub mod event;
pub mod exchange;
pub mod grads;
pub mod id_hash;
pub mod kernels;
pub mod keyed;
pub mod layout;
pub mod model;
pub mod offsets;
pub mod record;
pub mod reject;
pub mod score;
pub mod shard;
pub mod snapshot;
pub mod synth;
pub mod threads;
pub mod validate;

pub use clock::now_ms;
pub use codec::{CONTENT_TYPE_HEADER, ContentType, Decoder, encode};
pub use config::ConfigError;
pub use event::{Click, EventKind, Features, Feedback, Forget, Rating};
pub use id_hash::{hash_feature, hash_id};
pub use keyed::{EventRef, Events, KeyedEvents, Target};
pub use layout::{RowLayout, Slot};
pub use model::{Head, MAX_DIM, MIN_DIM, ModelSpec, TableKind};
pub use offsets::{NextOffsets, OffsetRange, TopicPartition};
pub use reject::{RejectReason, Rejection};
pub use score::ScoreContext;
pub use shard::{AssignmentError, Gradients, Shard, TableGradients, assigned_partitions, partition_of, shard_of};
pub use validate::ValidationConfig;
