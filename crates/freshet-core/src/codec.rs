//! Wire formats of feedback events. JSON is the default (what producers in any
//! language write); bincode is the fast path. A message's `content-type`
//! header selects the format: absent or `application/json` means JSON,
//! `application/x-bincode` means bincode. See docs/events.md.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::event::{EventKind, Features, Feedback};
use crate::keyed::{KeyedEvents, Target, in_name_order};
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
        event.check(&self.limits, Some(now_ms))?;
        Ok(event.into_feedback())
    }

    /// [`Self::decode`] into `into`, keyed: what a consumer does with every
    /// message, with no allocation per event beyond `into`'s buffers'
    /// growth. Nothing is appended when the message is rejected.
    pub fn decode_into(
        &self,
        payload: &[u8],
        content_type: Option<&[u8]>,
        now_ms: i64,
        into: &mut KeyedEvents,
    ) -> Result<(), Rejection> {
        let event = self.decode_unchecked(payload, content_type)?;
        event.check(&self.limits, Some(now_ms))?;
        let features = event.features.iter().map(|(name, value)| (name.as_ref(), value.as_ref()));
        into.push_parts(event.target, event.ts, &event.user, &event.item, features);
        Ok(())
    }

    /// Decodes and validates an event another shard forwarded: every rule
    /// but the time window, which that shard applied when it read the event
    /// ([`ValidationConfig::validate_forwarded`]).
    pub fn decode_forwarded(&self, payload: &[u8], content_type: Option<&[u8]>) -> Result<Feedback, Rejection> {
        let event = self.decode_unchecked(payload, content_type)?;
        event.check(&self.limits, None)?;
        Ok(event.into_feedback())
    }

    /// The size check and the format, before the content rules.
    fn decode_unchecked<'a>(&self, payload: &'a [u8], content_type: Option<&[u8]>) -> Result<Decoded<'a>, Rejection> {
        if payload.len() > self.limits.max_message_bytes {
            return Err(Rejection::TooLarge { size: payload.len(), limit: self.limits.max_message_bytes });
        }
        let mut event = match ContentType::from_header(content_type)? {
            ContentType::Json => self.decode_json(payload)?,
            ContentType::Bincode => decode_bincode(payload)?,
        };
        in_name_order(&mut event.features);
        Ok(event)
    }

    fn decode_json<'a>(&self, payload: &'a [u8]) -> Result<Decoded<'a>, Rejection> {
        // serde_json checks the UTF-8 of what it reads; a payload it refuses
        // is looked at again only to name the right reason.
        let raw: RawEvent<'_> = serde_json::from_slice(payload).map_err(|e| match std::str::from_utf8(payload) {
            Err(utf8) => Rejection::InvalidUtf8 { valid_up_to: utf8.valid_up_to() },
            Ok(_) => Rejection::MalformedJson { message: e.to_string() },
        })?;
        let found = raw.kind.as_deref().unwrap_or_default();
        let kind = EventKind::parse(found)
            .ok_or_else(|| Rejection::UnknownType { found: found.chars().take(64).collect() })?;
        let user = required_id(raw.user, "user")?;
        let ts = raw.ts.ok_or(Rejection::MissingTimestamp);
        let features = raw.features.map(|f| f.0).unwrap_or_default();
        Ok(match kind {
            EventKind::Click => {
                let item = required_id(raw.item, "item")?;
                let clicked = raw.clicked.ok_or(Rejection::MissingField { field: "clicked" })?;
                Decoded { target: Target::Click(clicked.0), ts: ts?, user, item, features }
            }
            EventKind::Rating => {
                let item = required_id(raw.item, "item")?;
                let rating = raw.rating.ok_or(Rejection::MissingField { field: "rating" })?;
                // The range is checked before the rating is narrowed to f32.
                self.limits.check_rating(rating)?;
                Decoded { target: Target::Rating(rating as f32), ts: ts?, user, item, features }
            }
            EventKind::Forget => {
                Decoded { target: Target::Forget, ts: ts?, user, item: Cow::Borrowed(""), features: Vec::new() }
            }
        })
    }
}

/// An event as its payload holds it, its text borrowed where the format
/// allows: what both formats decode to, before the rules are checked and
/// it becomes a [`Feedback`] or a keyed event. Its features are in name
/// order once decoding is done ([`in_name_order`]).
struct Decoded<'a> {
    target: Target,
    ts: i64,
    user: Cow<'a, str>,
    /// Empty for a forget.
    item: Cow<'a, str>,
    features: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl Decoded<'_> {
    fn check(&self, limits: &ValidationConfig, now_ms: Option<i64>) -> Result<(), Rejection> {
        let features = self.features.iter().map(|(name, value)| (name.as_ref(), value.as_ref()));
        limits.check_event(self.target, &self.user, &self.item, self.ts, features, now_ms)
    }

    fn into_feedback(self) -> Feedback {
        let features = self.features.into_iter().map(|(n, v)| (n.into_owned(), v.into_owned())).collect();
        self.target.feedback(self.user.into_owned(), self.item.into_owned(), self.ts, features)
    }
}

fn required_id<'a>(value: Option<Cow<'a, str>>, field: &'static str) -> Result<Cow<'a, str>, Rejection> {
    match value {
        Some(id) if !id.is_empty() => Ok(id),
        _ => Err(Rejection::MissingId { field }),
    }
}

fn decode_bincode(payload: &[u8]) -> Result<Decoded<'_>, Rejection> {
    let (event, read) = bincode::serde::borrow_decode_from_slice::<WireEvent<'_>, _>(payload, bincode_config())
        .map_err(|e| Rejection::MalformedBincode { message: e.to_string() })?;
    if read != payload.len() {
        return Err(Rejection::MalformedBincode { message: format!("{} trailing bytes", payload.len() - read) });
    }
    Ok(match event {
        WireEvent::Click(c) => {
            Decoded { target: Target::Click(c.value), ts: c.ts, user: c.user, item: c.item, features: c.features.0 }
        }
        WireEvent::Rating(r) => {
            Decoded { target: Target::Rating(r.value), ts: r.ts, user: r.user, item: r.item, features: r.features.0 }
        }
        WireEvent::Forget(f) => {
            Decoded { target: Target::Forget, ts: f.ts, user: f.user, item: Cow::Borrowed(""), features: Vec::new() }
        }
    })
}

/// [`Feedback`]'s serde form (the bincode wire format) read borrowing its
/// text: the same variants and fields in the same order (bincode reads
/// fields by position, not name).
#[derive(Deserialize)]
enum WireEvent<'a> {
    Click(#[serde(borrow)] WireFeedback<'a, bool>),
    Rating(#[serde(borrow)] WireFeedback<'a, f32>),
    Forget(#[serde(borrow)] WireForget<'a>),
}

/// A [`crate::Click`] (`T` = `clicked`) or a [`crate::Rating`] (`T` = `rating`).
#[derive(Deserialize)]
struct WireFeedback<'a, T> {
    #[serde(borrow)]
    user: Cow<'a, str>,
    #[serde(borrow)]
    item: Cow<'a, str>,
    value: T,
    ts: i64,
    #[serde(borrow)]
    features: Pairs<'a>,
}

#[derive(Deserialize)]
struct WireForget<'a> {
    #[serde(borrow)]
    user: Cow<'a, str>,
    ts: i64,
}

/// A string-to-string map read as its pairs in the order the payload
/// holds them (sorted and deduplicated afterwards, as a [`Features`] map
/// would be), the text borrowed where the format allows.
#[derive(Default)]
struct Pairs<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

/// Pairs reserved up front at most, whatever length a payload claims.
const MAX_RESERVED_PAIRS: usize = 16;

impl<'de: 'a, 'a> Deserialize<'de> for Pairs<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<Pairs<'a>>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Pairs<'a>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of strings to strings")
            }

            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(MAX_RESERVED_PAIRS));
                while let Some((Text(name), Text(value))) = map.next_entry()? {
                    pairs.push((name, value));
                }
                Ok(Pairs(pairs))
            }
        }
        deserializer.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// A string, borrowed from the payload where the format allows.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<Text<'a>>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Text<'a>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: serde::de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(text)))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }

            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(Visit(std::marker::PhantomData))
    }
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
    #[serde(borrow, default)]
    features: Option<Pairs<'a>>,
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
