//! The feedback events freshet learns from, after decoding and validation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Categorical context features: name → value, kept sorted so every iteration
/// over them is deterministic.
pub type Features = BTreeMap<String, String>;

/// A user clicked (or skipped) an item that was shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Click {
    /// The user's id as producers write it.
    pub user: String,
    /// The item's id as producers write it.
    pub item: String,
    /// Whether the impression was clicked.
    pub clicked: bool,
    /// Event time, epoch milliseconds.
    pub ts: i64,
    /// Optional categorical context (device, page, ...).
    pub features: Features,
}

/// A user rated an item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rating {
    /// The user's id as producers write it.
    pub user: String,
    /// The item's id as producers write it.
    pub item: String,
    /// The rating, inside the configured range.
    pub rating: f32,
    /// Event time, epoch milliseconds.
    pub ts: i64,
    /// Optional categorical context.
    pub features: Features,
}

/// Remove everything the model holds about a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forget {
    /// The user to forget.
    pub user: String,
    /// Event time, epoch milliseconds.
    pub ts: i64,
}

/// One validated feedback event. Its serde form (externally tagged) is the
/// bincode wire format; JSON has its own schema in [`crate::codec`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Feedback {
    /// A click or skip.
    Click(Click),
    /// An explicit rating.
    Rating(Rating),
    /// A right-to-be-forgotten request.
    Forget(Forget),
}

impl Feedback {
    /// The event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Feedback::Click(_) => EventKind::Click,
            Feedback::Rating(_) => EventKind::Rating,
            Feedback::Forget(_) => EventKind::Forget,
        }
    }

    /// The user the event is about.
    pub fn user(&self) -> &str {
        match self {
            Feedback::Click(c) => &c.user,
            Feedback::Rating(r) => &r.user,
            Feedback::Forget(f) => &f.user,
        }
    }

    /// Event time, epoch milliseconds.
    pub fn ts(&self) -> i64 {
        match self {
            Feedback::Click(c) => c.ts,
            Feedback::Rating(r) => r.ts,
            Feedback::Forget(f) => f.ts,
        }
    }
}

/// The kinds of feedback event, as named in the JSON `type` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// `"click"`
    Click,
    /// `"rating"`
    Rating,
    /// `"forget"`
    Forget,
}

impl EventKind {
    /// Every kind, in a fixed order.
    pub const ALL: [EventKind; 3] = [EventKind::Click, EventKind::Rating, EventKind::Forget];

    /// The name used on the wire and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Click => "click",
            EventKind::Rating => "rating",
            EventKind::Forget => "forget",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
