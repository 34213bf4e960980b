//! Wire formats of feedback events. JSON is the default (what producers in any
//! language write); bincode is the fast path. A message's `content-type`
//! header selects the format: absent or `application/json` means JSON,
//! `application/x-bincode` means bincode. See docs/events.md.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::event::{Click, EventKind, Features, Feedback, Forget, Rating};
use crate::reject::Rejection;
use crate::validate::ValidationConfig;

/// The message header that names the payload's format.
pub const CONTENT_TYPE_HEADER: &str = "content-type";

/// Bincode decoding never claims more than this many bytes, whatever length
/// prefixes a corrupt payload carries.
const BINCODE_LIMIT: usize = 16 * 1024 * 1024;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<BINCODE_LIMIT>()
}

/// A payload format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// `application/json` (the default when the header is absent).
    Json,
    /// `application/x-bincode`: the serde form of [`Feedback`], bincode standard config.
    Bincode,
}

impl ContentType {
    /// The header value for this format.
    pub fn mime(self) -> &'static str {
        match self {
            ContentType::Json => "application/json",
            ContentType::Bincode => "application/x-bincode",
        }
    }

    /// The format a header value names; `None` (no header) means JSON.
    pub fn from_header(value: Option<&[u8]>) -> Result<ContentType, Rejection> {
        let Some(value) = value else {
            return Ok(ContentType::Json);
        };
        // The media type is what precedes any `;` parameters (e.g. charset).
        let essence = value.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
        [ContentType::Json, ContentType::Bincode]
            .into_iter()
            .find(|format| essence.eq_ignore_ascii_case(format.mime().as_bytes()))
            .ok_or_else(|| Rejection::UnsupportedContentType {
                found: String::from_utf8_lossy(value).chars().take(128).collect(),
            })
    }
}

/// Turns message payloads into validated events.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    limits: ValidationConfig,
}

impl Decoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: ValidationConfig) -> Self {
        Decoder { limits }
    }

    /// The limits this decoder enforces.
    pub fn limits(&self) -> &ValidationConfig {
        &self.limits
    }

    /// Decodes and validates one message. `content_type` is the raw header
    /// value, `now_ms` the consumer's clock for the timestamp window.
    pub fn decode(&self, payload: &[u8], content_type: Option<&[u8]>, now_ms: i64) -> Result<Feedback, Rejection> {
        let event = self.decode_unchecked(payload, content_type)?;
        self.limits.validate(&event, now_ms)?;
        Ok(event)
    }

    /// Decodes and validates an event another shard forwarded: every rule
    /// but the time window, which that shard applied when it read the event
    /// ([`ValidationConfig::validate_forwarded`]).
    pub fn decode_forwarded(&self, payload: &[u8], content_type: Option<&[u8]>) -> Result<Feedback, Rejection> {
        let event = self.decode_unchecked(payload, content_type)?;
        self.limits.validate_forwarded(&event)?;
        Ok(event)
    }

    /// The size check and the format, before the content rules.
    fn decode_unchecked(&self, payload: &[u8], content_type: Option<&[u8]>) -> Result<Feedback, Rejection> {
        if payload.len() > self.limits.max_message_bytes {
            return Err(Rejection::TooLarge { size: payload.len(), limit: self.limits.max_message_bytes });
        }
        match ContentType::from_header(content_type)? {
            ContentType::Json => self.decode_json(payload),
            ContentType::Bincode => decode_bincode(payload),
        }
    }

    fn decode_json(&self, payload: &[u8]) -> Result<Feedback, Rejection> {
        let text = std::str::from_utf8(payload).map_err(|e| Rejection::InvalidUtf8 { valid_up_to: e.valid_up_to() })?;
        let raw: RawEvent<'_> =
            serde_json::from_str(text).map_err(|e| Rejection::MalformedJson { message: e.to_string() })?;
        let found = raw.kind.as_deref().unwrap_or_default();
        let kind = EventKind::parse(found)
            .ok_or_else(|| Rejection::UnknownType { found: found.chars().take(64).collect() })?;
        let user = required_id(raw.user, "user")?;
        let ts_of = |ts: Option<i64>| ts.ok_or(Rejection::MissingTimestamp);
        Ok(match kind {
            EventKind::Click => {
                let item = required_id(raw.item, "item")?;
                let clicked = raw.clicked.ok_or(Rejection::MissingField { field: "clicked" })?;
                Feedback::Click(Click {
                    user,
                    item,
                    clicked: clicked.0,
                    ts: ts_of(raw.ts)?,
                    features: raw.features.unwrap_or_default(),
                })
            }
            EventKind::Rating => {
                let item = required_id(raw.item, "item")?;
                let rating = raw.rating.ok_or(Rejection::MissingField { field: "rating" })?;
                self.limits.check_rating(rating)?;
                Feedback::Rating(Rating {
                    user,
                    item,
                    rating: rating as f32,
                    ts: ts_of(raw.ts)?,
                    features: raw.features.unwrap_or_default(),
                })
            }
            EventKind::Forget => Feedback::Forget(Forget { user, ts: ts_of(raw.ts)? }),
        })
    }
}

fn required_id(value: Option<Cow<'_, str>>, field: &'static str) -> Result<String, Rejection> {
    match value {
        Some(id) if !id.is_empty() => Ok(id.into_owned()),
        _ => Err(Rejection::MissingId { field }),
    }
}

fn decode_bincode(payload: &[u8]) -> Result<Feedback, Rejection> {
    let (event, read) = bincode::serde::decode_from_slice::<Feedback, _>(payload, bincode_config())
        .map_err(|e| Rejection::MalformedBincode { message: e.to_string() })?;
    if read != payload.len() {
        return Err(Rejection::MalformedBincode { message: format!("{} trailing bytes", payload.len() - read) });
    }
    Ok(event)
}

/// Encodes an event in the given format (what producers send).
pub fn encode(event: &Feedback, format: ContentType) -> Vec<u8> {
    match format {
        ContentType::Json => {
            serde_json::to_vec(&JsonEvent::from(event)).expect("JSON encoding of an event cannot fail")
        }
        ContentType::Bincode => {
            bincode::serde::encode_to_vec(event, bincode_config()).expect("bincode encoding of an event cannot fail")
        }
    }
}

/// The JSON schema as producers write it; every field optional so that each
/// absence maps to its own rejection, unknown fields ignored.
#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    item: Option<Cow<'a, str>>,
    #[serde(default)]
    clicked: Option<Clicked>,
    #[serde(default)]
    rating: Option<f64>,
    #[serde(default)]
    ts: Option<i64>,
    #[serde(default)]
    features: Option<Features>,
}

/// `clicked` accepts `true`/`false` or `1`/`0`.
struct Clicked(bool);

impl<'de> Deserialize<'de> for Clicked {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Bool(bool),
            Int(i64),
        }
        match Wire::deserialize(deserializer) {
            Ok(Wire::Bool(b)) => Ok(Clicked(b)),
            Ok(Wire::Int(0)) => Ok(Clicked(false)),
            Ok(Wire::Int(1)) => Ok(Clicked(true)),
            _ => Err(serde::de::Error::custom("`clicked` must be true, false, 0 or 1")),
        }
    }
}

/// The JSON form written by [`encode`].
#[derive(Serialize)]
struct JsonEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    item: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    clicked: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rating: Option<f32>,
    ts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    features: Option<&'a Features>,
}

impl<'a> From<&'a Feedback> for JsonEvent<'a> {
    fn from(event: &'a Feedback) -> Self {
        let non_empty = |f: &'a Features| (!f.is_empty()).then_some(f);
        let mut json = JsonEvent {
            kind: event.kind().as_str(),
            user: event.user(),
            item: None,
            clicked: None,
            rating: None,
            ts: event.ts(),
            features: None,
        };
        match event {
            Feedback::Click(c) => {
                json.item = Some(&c.item);
                json.clicked = Some(c.clicked);
                json.features = non_empty(&c.features);
            }
            Feedback::Rating(r) => {
                json.item = Some(&r.item);
                json.rating = Some(r.rating);
                json.features = non_empty(&r.features);
            }
            Feedback::Forget(_) => {}
        }
        json
    }
}
