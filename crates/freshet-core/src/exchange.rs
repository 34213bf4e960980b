//! What the shards of one model send each other, and the rules that make
//! every message count exactly once (docs/scaling.md, "Exactly once across
//! shards"):
//!
//! - a sender keeps what one checkpoint interval produced for other shards
//!   (forwarded events, gradient sums) as an [`Outbox`] in that checkpoint,
//!   and sends it only once the checkpoint is durable, again after a restart
//!   until the broker has it;
//! - every message carries an [`ExchangeTag`] (sender, the sender's
//!   checkpoint version, the part number within that version for the
//!   receiver), and a receiver applies a message only when its tag is past
//!   the [`HighWater`] mark it keeps for that sender and channel, checkpointed
//!   with the state the message changed.
//!
//! Pure: the Kafka plumbing lives in the `freshet` binary.

use std::collections::BTreeMap;

use crate::grads::GradientsMessage;
use crate::record::{RecordError, RecordReader, RecordWriter};
use crate::shard::{Gradients, TableGradients};

/// Header naming the sending shard of a forwarded event.
pub const HEADER_SENDER: &str = "freshet-sender";
/// Header naming the sender's checkpoint version a forwarded event belongs to.
pub const HEADER_VERSION: &str = "freshet-version";
/// Header numbering a forwarded event within its version, for its receiver.
pub const HEADER_PART: &str = "freshet-part";

/// The topic that carries events to the shard that owns their user: `freshet.route.<model>`.
pub fn route_topic(model: &str) -> String {
    format!("freshet.route.{model}")
}

/// The topic that carries gradient sums to the shard that owns their rows: `freshet.grads.<model>`.
pub fn grads_topic(model: &str) -> String {
    format!("freshet.grads.{model}")
}

/// Which of the two exchange topics a message travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Channel {
    /// Forwarded events (`freshet.route.<model>`).
    Route,
    /// Gradient sums (`freshet.grads.<model>`).
    Grads,
}

impl Channel {
    /// Both channels.
    pub const ALL: [Channel; 2] = [Channel::Route, Channel::Grads];

    /// The label metrics and logs use.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Route => "route",
            Channel::Grads => "grads",
        }
    }

    fn code(self) -> u8 {
        match self {
            Channel::Route => 0,
            Channel::Grads => 1,
        }
    }

    fn from_code(code: u8) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// Where a message comes from, in the order its receiver must apply them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExchangeTag {
    /// The sending shard.
    pub sender: u32,
    /// The sender's checkpoint version whose interval produced the message.
    pub version: u64,
    /// The message's number among those of `version` for its receiver on its channel, from 0.
    pub part: u32,
}

impl ExchangeTag {
    /// The tag of a gradient message (its header holds the same fields).
    pub fn of_gradients(message: &GradientsMessage) -> Self {
        ExchangeTag { sender: message.sender, version: message.version, part: message.part }
    }

    /// The headers a forwarded event carries its tag in, as decimal text.
    pub fn headers(self) -> [(&'static str, String); 3] {
        [
            (HEADER_SENDER, self.sender.to_string()),
            (HEADER_VERSION, self.version.to_string()),
            (HEADER_PART, self.part.to_string()),
        ]
    }

    /// The tag in a forwarded event's headers, read with `header` (a
    /// header's value by name); `None` when one is missing or not a number.
    pub fn from_headers<'a>(header: impl Fn(&str) -> Option<&'a [u8]>) -> Option<Self> {
        fn number<T: std::str::FromStr>(value: Option<&[u8]>) -> Option<T> {
            std::str::from_utf8(value?).ok()?.parse().ok()
        }
        Some(ExchangeTag {
            sender: number(header(HEADER_SENDER))?,
            version: number(header(HEADER_VERSION))?,
            part: number(header(HEADER_PART))?,
        })
    }
}

/// Per channel and sender, the newest (version, part) a receiver applied:
/// a message at or before it was applied already (sent twice, after a
/// sender's crash between the broker taking it and the sender's store
/// forgetting it) and is dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HighWater {
    marks: BTreeMap<(Channel, u32), (u64, u32)>,
}

impl HighWater {
    /// Whether the message tagged `tag` on `channel` is new; if it is, the
    /// mark moves to it. A sender's messages reach a receiver in the order
    /// they were sent, so "new" is "after the mark".
    pub fn admit(&mut self, channel: Channel, tag: ExchangeTag) -> bool {
        let at = (tag.version, tag.part);
        match self.marks.get_mut(&(channel, tag.sender)) {
            Some(mark) if *mark >= at => false,
            Some(mark) => {
                *mark = at;
                true
            }
            None => {
                self.marks.insert((channel, tag.sender), at);
                true
            }
        }
    }

    /// The mark of `sender` on `channel`, if any message of it was applied.
    pub fn mark(&self, channel: Channel, sender: u32) -> Option<(u64, u32)> {
        self.marks.get(&(channel, sender)).copied()
    }

    /// Every mark, in (channel, sender) order, as the tag of the newest message applied.
    pub fn marks(&self) -> impl Iterator<Item = (Channel, ExchangeTag)> + '_ {
        self.marks.iter().map(|(&(channel, sender), &(version, part))| (channel, ExchangeTag { sender, version, part }))
    }

    /// Whether no message was ever applied.
    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    /// The checkpoint record (docs/checkpoint.md, `high_water`): a count
    /// (u64), then per mark channel (u8: 0 route, 1 grads), sender (u32),
    /// version (u64), part (u32), in (channel, sender) order.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = RecordWriter::default();
        w.len(self.marks.len());
        for (&(channel, sender), &(version, part)) in &self.marks {
            w.u8(channel.code());
            w.u32(sender);
            w.u64(version);
            w.u32(part);
        }
        w.into_bytes()
    }

    /// Reads what [`Self::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let mut r = RecordReader::new(bytes, "high_water");
        let count = r.len(17)?;
        let mut marks = BTreeMap::new();
        for _ in 0..count {
            let code = r.u8()?;
            let channel = Channel::from_code(code).ok_or_else(|| r.error(format!("channel {code}")))?;
            let sender = r.u32()?;
            let at = (r.u64()?, r.u32()?);
            if marks.insert((channel, sender), at).is_some() {
                return Err(r.error(format!("sender {sender} twice on {}", channel.name())));
            }
        }
        r.finish()?;
        Ok(HighWater { marks })
    }
}

/// One message an outbox holds: its channel, the receiving shard (the
/// partition of the channel's topic it goes to), its part number and its
/// bytes (a forwarded event in the bincode event format, or a gradient
/// message of [`crate::grads`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// The topic it goes to.
    pub channel: Channel,
    /// The receiving shard.
    pub to: u32,
    /// Its number among the version's messages for `to` on `channel`.
    pub part: u32,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// What one checkpoint interval of a shard produced for other shards,
/// written in that checkpoint and kept until the broker has it all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outbox {
    /// The sender's checkpoint version.
    pub version: u64,
    /// The messages, in the order they are sent.
    pub messages: Vec<OutboxMessage>,
}

impl Outbox {
    /// The tag of `message` from `sender`.
    pub fn tag(&self, sender: u32, message: &OutboxMessage) -> ExchangeTag {
        ExchangeTag { sender, version: self.version, part: message.part }
    }

    /// The checkpoint record (docs/checkpoint.md, `outbox.<version>`): the
    /// version (u64), a count (u64), then per message channel (u8), receiver
    /// (u32), part (u32), payload length (u64) and bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = RecordWriter::default();
        w.u64(self.version);
        w.len(self.messages.len());
        for message in &self.messages {
            w.u8(message.channel.code());
            w.u32(message.to);
            w.u32(message.part);
            w.bytes(&message.payload);
        }
        w.into_bytes()
    }

    /// Reads what [`Self::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let mut r = RecordReader::new(bytes, "outbox");
        let version = r.u64()?;
        let count = r.len(17)?;
        let mut messages = Vec::with_capacity(count);
        for _ in 0..count {
            let code = r.u8()?;
            let channel = Channel::from_code(code).ok_or_else(|| r.error(format!("channel {code}")))?;
            messages.push(OutboxMessage { channel, to: r.u32()?, part: r.u32()?, payload: r.bytes()? });
        }
        r.finish()?;
        Ok(Outbox { version, messages })
    }
}

/// Splits `gradients` into parts of at most `max_rows` rows each (at least
/// one part; the global sums go in the first), so no gradient message
/// outgrows what the broker takes. The rows keep their order.
pub fn split_gradients(gradients: Gradients, max_rows: usize) -> Vec<Gradients> {
    let max_rows = max_rows.max(1);
    let Gradients { clock_ms, tables, globals, global_events } = gradients;
    let mut parts = vec![Gradients { clock_ms, tables: Vec::new(), globals, global_events }];
    let mut room = max_rows;
    for table in tables {
        let TableGradients { table: kind, width, keys, ids, events, values } = table;
        let mut start = 0;
        while start < keys.len() {
            if room == 0 {
                parts.push(Gradients { clock_ms, ..Gradients::default() });
                room = max_rows;
            }
            let end = keys.len().min(start + room);
            let part = parts.last_mut().expect("one part at least");
            part.tables.push(TableGradients {
                table: kind,
                width,
                keys: keys[start..end].to_vec(),
                ids: if ids.is_empty() { Vec::new() } else { ids[start..end].to_vec() },
                events: events[start..end].to_vec(),
                values: values[start * width..end * width].to_vec(),
            });
            room -= end - start;
            start = end;
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TableKind;

    fn tag(sender: u32, version: u64, part: u32) -> ExchangeTag {
        ExchangeTag { sender, version, part }
    }

    #[test]
    fn a_message_at_or_before_the_mark_is_dropped_per_sender_and_channel() {
        let mut marks = HighWater::default();
        assert!(marks.admit(Channel::Grads, tag(1, 5, 0)));
        assert!(marks.admit(Channel::Grads, tag(1, 5, 1)));
        assert!(!marks.admit(Channel::Grads, tag(1, 5, 1)), "the same part twice");
        assert!(!marks.admit(Channel::Grads, tag(1, 4, 9)), "an older version");
        assert!(marks.admit(Channel::Grads, tag(2, 1, 0)), "another sender has its own mark");
        assert!(marks.admit(Channel::Route, tag(1, 1, 0)), "another channel has its own mark");
        assert!(marks.admit(Channel::Grads, tag(1, 6, 0)));
        assert_eq!(marks.mark(Channel::Grads, 1), Some((6, 0)));
        assert_eq!(marks.mark(Channel::Route, 2), None);
    }

    #[test]
    fn marks_and_outboxes_read_back_what_was_written_and_refuse_damage() {
        let mut marks = HighWater::default();
        marks.admit(Channel::Route, tag(0, 3, 7));
        marks.admit(Channel::Grads, tag(2, 9, 1));
        let bytes = marks.encode();
        assert_eq!(bytes.len(), 8 + 2 * 17);
        assert_eq!(HighWater::decode(&bytes), Ok(marks));
        assert!(HighWater::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(HighWater::decode(&u64::MAX.to_le_bytes()).is_err(), "a count the bytes cannot hold");

        let outbox = Outbox {
            version: 12,
            messages: vec![
                OutboxMessage { channel: Channel::Route, to: 1, part: 0, payload: b"event".to_vec() },
                OutboxMessage { channel: Channel::Grads, to: 2, part: 0, payload: vec![] },
            ],
        };
        let bytes = outbox.encode();
        assert_eq!(Outbox::decode(&bytes), Ok(outbox.clone()));
        let mut extended = bytes.clone();
        extended.push(0);
        assert!(Outbox::decode(&extended).is_err(), "trailing bytes");
        let mut bad_channel = bytes;
        bad_channel[16] = 9;
        assert!(Outbox::decode(&bad_channel).is_err());
        assert_eq!(outbox.tag(3, &outbox.messages[1]), tag(3, 12, 0));
    }

    #[test]
    fn a_tag_travels_in_headers() {
        let sent = tag(2, 41, 17);
        let headers = sent.headers();
        let read = ExchangeTag::from_headers(|name| {
            headers.iter().find(|(key, _)| *key == name).map(|(_, value)| value.as_bytes())
        });
        assert_eq!(read, Some(sent));
        assert_eq!(ExchangeTag::from_headers(|_| None), None);
        assert_eq!(ExchangeTag::from_headers(|_| Some(&b"x"[..])), None);
    }

    #[test]
    fn split_parts_hold_every_row_once_in_order_with_the_globals_first() {
        let table = |kind: TableKind, n: usize, ids: bool| TableGradients {
            table: kind,
            width: 2,
            keys: (0..n as u64).collect(),
            ids: if ids { (0..n).map(|i| format!("i{i}").into_boxed_str()).collect() } else { Vec::new() },
            events: (0..n as u32).collect(),
            values: (0..2 * n).map(|v| v as f32).collect(),
        };
        let whole = Gradients {
            clock_ms: 9,
            tables: vec![table(TableKind::Item, 5, true), table(TableKind::Feature, 3, false)],
            globals: [0.5, -0.5],
            global_events: [3, 4],
        };
        let parts = split_gradients(whole.clone(), 3);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.tables.iter().map(|t| t.keys.len()).sum::<usize>() <= 3));
        assert_eq!((parts[0].globals, parts[0].global_events), ([0.5, -0.5], [3, 4]));
        assert!(parts[1..].iter().all(|p| p.global_events == [0, 0] && p.clock_ms == 9));
        for kind in [TableKind::Item, TableKind::Feature] {
            let of = |g: &Gradients| g.tables.iter().filter(|t| t.table == kind).cloned().collect::<Vec<_>>();
            let rejoined: Vec<u64> = parts.iter().flat_map(of).flat_map(|t| t.keys).collect();
            let values: Vec<f32> = parts.iter().flat_map(of).flat_map(|t| t.values).collect();
            assert_eq!(rejoined, of(&whole)[0].keys);
            assert_eq!(values, of(&whole)[0].values);
        }
        assert_eq!(split_gradients(Gradients::default(), 3).len(), 1, "an empty message is one part");
    }
}
