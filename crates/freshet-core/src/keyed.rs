//! Events reduced to what the model reads, their ids hashed once: the form
//! the trainer trains from. Whoever fills a [`KeyedEvents`] (the trainer
//! from decoded [`Feedback`], a file loader straight from text) pays for the
//! hashing; the events then live in three flat buffers (the events, their
//! feature keys, and the id and feature text), so a batch or a whole
//! replayed data set costs no allocation per event.
//!
//! A feature's key is [`crate::hash_feature`]'s (both go through
//! [`append_feature`]). An event's features are kept in name order, one
//! value per name, as [`Features`] (a map) holds them: their order is the
//! order the scoring function adds them in. [`in_name_order`] is that rule
//! for pairs read from text or a payload.

use std::ops::Range;

use crate::event::{Click, EventKind, Features, Feedback, Forget, Rating};
use crate::id_hash::{FEATURE_SEPARATOR, append_feature, hash_id};

/// What an event asks of the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// A rating to learn (the rating head).
    Rating(f32),
    /// An impression, clicked or not (the click head).
    Click(bool),
    /// Remove the user's row.
    Forget,
}

impl Target {
    /// The kind of event that asks it.
    pub fn kind(self) -> EventKind {
        match self {
            Target::Rating(_) => EventKind::Rating,
            Target::Click(_) => EventKind::Click,
            Target::Forget => EventKind::Forget,
        }
    }

    /// The event that asks it, from its parts (`item` and `features`
    /// dropped for a forget).
    pub(crate) fn feedback(self, user: String, item: String, ts: i64, features: Features) -> Feedback {
        match self {
            Target::Click(clicked) => Feedback::Click(Click { user, item, clicked, ts, features }),
            Target::Rating(rating) => Feedback::Rating(Rating { user, item, rating, ts, features }),
            Target::Forget => Feedback::Forget(Forget { user, ts }),
        }
    }
}

/// Where an event's parts sit in its [`KeyedEvents`]' buffers.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyedEvent {
    /// What the event asks.
    pub target: Target,
    /// Event time, epoch milliseconds.
    pub ts: i64,
    /// The user's key ([`hash_id`] of the user id).
    pub user: u64,
    /// The item's key (0 for a forget).
    pub item: u64,
    user_id: Span,
    item_id: Span,
    /// Indexes into the feature keys.
    features: Span,
    /// The `name=value;name=value` text, in the id text.
    feature_text: Span,
}

/// A range of a buffer, in 32-bit offsets (a batch or data set stays below 4 GiB of text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// An owned sequence of keyed events. See the module documentation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyedEvents {
    events: Vec<KeyedEvent>,
    feature_keys: Vec<u64>,
    /// Where each feature's `name=value` sits in the text (beside its key).
    feature_pairs: Vec<Span>,
    text: String,
}

/// Why a line of features could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureTextError {
    /// The offending `name=value` pair.
    pub pair: String,
}

impl std::fmt::Display for FeatureTextError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "feature {:?} is not name=value", self.pair)
    }
}

impl std::error::Error for FeatureTextError {}

impl KeyedEvents {
    /// No events.
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `events` events, `features` feature keys and `text_bytes`
    /// of their ids and features without growing a buffer.
    pub fn with_capacity(events: usize, features: usize, text_bytes: usize) -> Self {
        KeyedEvents {
            events: Vec::with_capacity(events),
            feature_keys: Vec::with_capacity(features),
            feature_pairs: Vec::with_capacity(features),
            text: String::with_capacity(text_bytes),
        }
    }

    /// Makes room for `events` more events, `features` more feature keys and
    /// `text_bytes` more of their text.
    pub fn reserve(&mut self, events: usize, features: usize, text_bytes: usize) {
        self.events.reserve(events);
        self.feature_keys.reserve(features);
        self.feature_pairs.reserve(features);
        self.text.reserve(text_bytes);
    }

    /// Appends a decoded event.
    pub fn push(&mut self, event: &Feedback) {
        let (target, item, features) = match event {
            Feedback::Rating(r) => (Target::Rating(r.rating), r.item.as_str(), Some(&r.features)),
            Feedback::Click(c) => (Target::Click(c.clicked), c.item.as_str(), Some(&c.features)),
            Feedback::Forget(_) => (Target::Forget, "", None),
        };
        let pairs = features.into_iter().flat_map(Features::iter).map(|(n, v)| (n.as_str(), v.as_str()));
        self.push_parts(target, event.ts(), event.user(), item, pairs);
    }

    /// Appends a rating or click read from text: `features` is
    /// `name=value` pairs separated by `;` (empty for none), kept in name
    /// order, the last value of a repeated name winning, as a [`Features`]
    /// map would hold them. Nothing is appended on an error.
    pub fn push_text(
        &mut self,
        target: Target,
        ts: i64,
        user: &str,
        item: &str,
        features: &str,
    ) -> Result<(), FeatureTextError> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for pair in features.split(';').filter(|pair| !pair.is_empty()) {
            match pair.split_once(FEATURE_SEPARATOR) {
                Some((name, value)) if !name.is_empty() && !value.is_empty() => pairs.push((name, value)),
                _ => return Err(FeatureTextError { pair: pair.to_owned() }),
            }
        }
        in_name_order(&mut pairs);
        self.push_parts(target, ts, user, item, pairs.into_iter());
        Ok(())
    }

    /// Appends another sequence's event.
    pub fn push_ref(&mut self, event: EventRef<'_>) {
        let user_id = self.add_text(event.user_id);
        let item_id = self.add_text(event.item_id);
        let feature_text = self.add_text(event.feature_text);
        let keys_from = self.feature_keys.len();
        self.feature_keys.extend_from_slice(event.features);
        // The pairs keep their places relative to the feature text.
        let moved = |at: u32| at - event.text_from + feature_text.start;
        let pairs = event.pairs.iter().map(|pair| Span { start: moved(pair.start), end: moved(pair.end) });
        self.feature_pairs.extend(pairs);
        self.events.push(KeyedEvent {
            target: event.target,
            ts: event.ts,
            user: event.user,
            item: event.item,
            user_id,
            item_id,
            features: span(keys_from, self.feature_keys.len()),
            feature_text,
        });
    }

    /// Appends an event whose feature `pairs` come in name order, once
    /// each ([`in_name_order`]); `item` is empty for a forget.
    pub(crate) fn push_parts<'p>(
        &mut self,
        target: Target,
        ts: i64,
        user: &str,
        item: &str,
        pairs: impl Iterator<Item = (&'p str, &'p str)>,
    ) {
        let user_id = self.add_text(user);
        let item_id = self.add_text(item);
        let keys_from = self.feature_keys.len();
        let text_from = self.text.len();
        for (i, (name, value)) in pairs.enumerate() {
            if i > 0 {
                self.text.push(';');
            }
            let pair_from = self.text.len();
            self.feature_keys.push(append_feature(&mut self.text, name, value));
            self.feature_pairs.push(span(pair_from, self.text.len()));
        }
        let feature_text = span(text_from, self.text.len());
        self.events.push(KeyedEvent {
            target,
            ts,
            user: hash_id(user),
            item: if item.is_empty() { 0 } else { hash_id(item) },
            user_id,
            item_id,
            features: span(keys_from, self.feature_keys.len()),
            feature_text,
        });
    }

    /// Appends every event of `other`.
    pub fn append(&mut self, other: &KeyedEvents) {
        for event in other.iter() {
            self.push_ref(event);
        }
    }

    fn add_text(&mut self, text: &str) -> Span {
        let from = self.text.len();
        self.text.push_str(text);
        span(from, self.text.len())
    }

    /// Forgets every event, keeping the buffers' room.
    pub fn clear(&mut self) {
        self.events.clear();
        self.feature_keys.clear();
        self.feature_pairs.clear();
        self.text.clear();
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Puts the events in time order, ties in their order now.
    pub fn sort_by_time(&mut self) {
        if !self.events.is_sorted_by_key(|e| e.ts) {
            self.events.sort_by_key(|e| e.ts);
        }
    }

    /// All the events, borrowed.
    pub fn as_events(&self) -> Events<'_> {
        Events {
            events: &self.events,
            feature_keys: &self.feature_keys,
            feature_pairs: &self.feature_pairs,
            text: &self.text,
        }
    }

    /// Keeps the events `keep` says yes to, in their order (their text
    /// stays in the buffer until [`Self::clear`]).
    pub fn retain(&mut self, mut keep: impl FnMut(EventRef<'_>) -> bool) {
        let all = Events {
            events: &[],
            feature_keys: &self.feature_keys,
            feature_pairs: &self.feature_pairs,
            text: &self.text,
        };
        self.events.retain(|event| keep(all.view(event)));
    }

    /// The events, one by one.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = EventRef<'_>> + '_ {
        self.as_events().iter()
    }
}

/// Puts feature pairs in name order, one per name, the last value of a
/// repeated name winning: how a [`Features`] map built from them in order
/// would hold them.
pub fn in_name_order<T: AsRef<str>>(pairs: &mut Vec<(T, T)>) {
    // Most events hold their pairs in name order already, once each.
    if pairs.is_sorted_by(|a, b| a.0.as_ref() < b.0.as_ref()) {
        return;
    }
    // Stable: of a repeated name, the last pair stays last; keep it.
    pairs.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
    let mut write = 0;
    for read in 0..pairs.len() {
        if write > 0 && pairs[write - 1].0.as_ref() == pairs[read].0.as_ref() {
            pairs.swap(write - 1, read);
        } else {
            pairs.swap(write, read);
            write += 1;
        }
    }
    pairs.truncate(write);
}

fn span(start: usize, end: usize) -> Span {
    let offset = |at: usize| u32::try_from(at).expect("keyed events hold less than 4 GiB of text and keys");
    Span { start: offset(start), end: offset(end) }
}

/// Borrowed keyed events: a [`KeyedEvents`] or a run of it.
#[derive(Debug, Clone, Copy)]
pub struct Events<'a> {
    events: &'a [KeyedEvent],
    feature_keys: &'a [u64],
    feature_pairs: &'a [Span],
    text: &'a str,
}

impl<'a> Events<'a> {
    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Event `index`.
    #[inline]
    pub fn get(&self, index: usize) -> Option<EventRef<'a>> {
        self.events.get(index).map(|event| self.view(event))
    }

    /// The events in `range` (of indexes, as for a slice).
    pub fn slice(&self, range: Range<usize>) -> Events<'a> {
        Events { events: &self.events[range], ..*self }
    }

    /// The events, one by one.
    #[inline]
    pub fn iter(self) -> impl ExactSizeIterator<Item = EventRef<'a>> + 'a {
        self.events.iter().map(move |event| self.view(event))
    }

    /// The `(target, ts, user key, item key)` of each event, without its texts.
    #[inline]
    pub fn keys(self) -> impl ExactSizeIterator<Item = (Target, i64, u64, u64)> + 'a {
        self.events.iter().map(|event| (event.target, event.ts, event.user, event.item))
    }

    #[inline]
    fn view(&self, event: &'a KeyedEvent) -> EventRef<'a> {
        EventRef {
            target: event.target,
            ts: event.ts,
            user: event.user,
            item: event.item,
            user_id: &self.text[event.user_id.range()],
            item_id: &self.text[event.item_id.range()],
            features: &self.feature_keys[event.features.range()],
            feature_text: &self.text[event.feature_text.range()],
            pairs: &self.feature_pairs[event.features.range()],
            text_from: event.feature_text.start,
        }
    }
}

/// One keyed event, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    /// What the event asks.
    pub target: Target,
    /// Event time, epoch milliseconds.
    pub ts: i64,
    /// The user's key.
    pub user: u64,
    /// The item's key (0 for a forget).
    pub item: u64,
    /// The user id.
    pub user_id: &'a str,
    /// The item id (empty for a forget).
    pub item_id: &'a str,
    /// The keys of its context features, in name order.
    pub features: &'a [u64],
    /// Its features as `name=value;name=value` text, in the same order.
    pub feature_text: &'a str,
    /// Where each `name=value` sits in the buffer the feature text is in.
    pairs: &'a [Span],
    /// Where the feature text starts in that buffer.
    text_from: u32,
}

/// Equal when every part is: where its text sits in a buffer does not count.
impl PartialEq for EventRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        (self.target, self.ts, self.user, self.item, self.user_id, self.item_id, self.features, self.feature_text)
            == (
                other.target,
                other.ts,
                other.user,
                other.item,
                other.user_id,
                other.item_id,
                other.features,
                other.feature_text,
            )
            && self.feature_pairs().eq(other.feature_pairs())
    }
}

impl<'a> EventRef<'a> {
    /// The event as it was decoded (what a shard forwards to another).
    pub fn to_feedback(&self) -> Feedback {
        let features = self.feature_pairs().map(|(n, v)| (n.to_owned(), v.to_owned())).collect();
        self.target.feedback(self.user_id.to_owned(), self.item_id.to_owned(), self.ts, features)
    }

    /// Its features as `(name, value)` pairs, in name order.
    pub fn feature_pairs(&self) -> impl ExactSizeIterator<Item = (&'a str, &'a str)> + 'a {
        let (text, from) = (self.feature_text, self.text_from);
        self.pairs.iter().map(move |pair| {
            let text = &text[(pair.start - from) as usize..(pair.end - from) as usize];
            text.split_once(FEATURE_SEPARATOR).expect("a feature pair holds its separator")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id_hash::hash_feature;

    fn features(pairs: &[(&str, &str)]) -> Features {
        pairs.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn decoded_events_keep_their_keys_ids_and_features() {
        let mut keyed = KeyedEvents::new();
        let device = features(&[("page", "home"), ("device", "ios")]);
        keyed.push(&Feedback::Click(Click {
            user: "u1".into(),
            item: "i9".into(),
            clicked: true,
            ts: 5,
            features: device,
        }));
        keyed.push(&Feedback::Forget(Forget { user: "u2".into(), ts: 6 }));
        keyed.push(&Feedback::Rating(Rating {
            user: "u3".into(),
            item: "i1".into(),
            rating: 4.5,
            ts: 7,
            features: Features::new(),
        }));
        let events: Vec<EventRef<'_>> = keyed.iter().collect();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].target, Target::Click(true));
        assert_eq!((events[0].user, events[0].item), (hash_id("u1"), hash_id("i9")));
        assert_eq!((events[0].user_id, events[0].item_id), ("u1", "i9"));
        assert_eq!(events[0].features, [hash_feature("device", "ios"), hash_feature("page", "home")]);
        assert_eq!(events[0].feature_text, "device=ios;page=home");
        assert_eq!((events[1].target, events[1].item, events[1].item_id), (Target::Forget, 0, ""));
        assert_eq!((events[2].target, events[2].ts, events[2].features), (Target::Rating(4.5), 7, &[][..]));
        let tail: Vec<i64> = keyed.as_events().slice(1..3).iter().map(|e| e.ts).collect();
        assert_eq!(tail, [6, 7]);
    }

    #[test]
    fn text_features_are_kept_as_a_map_would_keep_them() {
        let mut from_text = KeyedEvents::new();
        from_text.push_text(Target::Click(false), 1, "u", "i", "page=home;device=ios;page=cart").expect("valid");
        let mut from_event = KeyedEvents::new();
        from_event.push(&Feedback::Click(Click {
            user: "u".into(),
            item: "i".into(),
            clicked: false,
            ts: 1,
            features: features(&[("page", "home"), ("device", "ios"), ("page", "cart")]),
        }));
        let (a, b) = (from_text.iter().next().expect("one"), from_event.iter().next().expect("one"));
        assert_eq!(a, b);
        assert_eq!(a.feature_text, "device=ios;page=cart");
        for bad in ["page", "=home", "page=", "a=1;;b"] {
            let result = KeyedEvents::new().push_text(Target::Forget, 1, "u", "", bad);
            assert!(result.is_err(), "{bad}");
        }
        let mut empty_pairs = KeyedEvents::new();
        empty_pairs.push_text(Target::Forget, 1, "u", "", ";a=1;;b=2;").expect("empty pairs are skipped");
        assert_eq!(empty_pairs.iter().next().expect("one").feature_text, "a=1;b=2");
        let mut keyed = KeyedEvents::new();
        assert!(keyed.push_text(Target::Rating(1.0), 1, "u", "i", "x").is_err());
        assert!(keyed.is_empty(), "nothing appended on an error");
    }

    #[test]
    fn copies_and_sorting_keep_every_part() {
        let mut keyed = KeyedEvents::new();
        for (ts, user) in [(3, "c"), (1, "a"), (3, "d"), (2, "b")] {
            keyed.push_text(Target::Rating(2.0), ts, user, "i", "f=1").expect("valid");
        }
        keyed.sort_by_time();
        let users: Vec<&str> = keyed.iter().map(|e| e.user_id).collect();
        assert_eq!(users, ["a", "b", "c", "d"], "stable");
        let mut copy = KeyedEvents::new();
        for event in keyed.iter() {
            copy.push_ref(event);
        }
        assert!(copy.iter().eq(keyed.iter()));
        copy.clear();
        assert!(copy.is_empty());
    }
}
