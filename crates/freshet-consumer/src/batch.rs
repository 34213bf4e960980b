//! Micro-batches: validated events plus the offset range per partition they
//! (and the rejected messages routed to the dead-letter topic) came from.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use freshet_core::exchange::{Channel, ExchangeTag};
use freshet_core::grads::GradientsMessage;
use freshet_core::{Feedback, KeyedEvents, RejectReason};

use freshet_core::offsets::{NextOffsets, OffsetRange, TopicPartition};

/// A batch of consumed messages, ready for the trainer.
#[derive(Debug, Clone, Default)]
pub struct MicroBatch {
    /// The valid events, in consumption order, keyed as decoded.
    pub events: KeyedEvents,
    /// Rejected messages per reason; all of them are already durable in the
    /// dead-letter topic when the batch is handed over.
    pub rejected: BTreeMap<RejectReason, u64>,
    /// Offsets covered per partition (valid and rejected messages alike).
    pub offsets: BTreeMap<TopicPartition, OffsetRange>,
    /// Messages from other shards of a sharded model (read from the
    /// exchange topics), in consumption order; the reader decides which
    /// are new by their tags.
    pub received: Vec<Received>,
}

/// A message another shard sent this one.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// An event of a user this shard owns, forwarded by the shard that read it.
    Event {
        /// Where it comes from.
        tag: ExchangeTag,
        /// The event, validated again.
        event: Feedback,
    },
    /// Gradient sums for rows this shard owns.
    Gradients(GradientsMessage),
}

impl Received {
    /// The topic it came on.
    pub fn channel(&self) -> Channel {
        match self {
            Received::Event { .. } => Channel::Route,
            Received::Gradients(_) => Channel::Grads,
        }
    }

    /// Where it comes from.
    pub fn tag(&self) -> ExchangeTag {
        match self {
            Received::Event { tag, .. } => *tag,
            Received::Gradients(message) => ExchangeTag::of_gradients(message),
        }
    }
}

impl MicroBatch {
    /// Number of messages (valid, received from other shards and rejected) in the batch.
    pub fn messages(&self) -> usize {
        self.events.len() + self.received.len() + self.rejected_count() as usize
    }

    /// Number of rejected messages.
    pub fn rejected_count(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// The next offset to read per partition once this batch is applied.
    pub fn next_offsets(&self) -> NextOffsets {
        self.offsets.iter().map(|(tp, range)| (tp.clone(), range.next())).collect()
    }
}

/// Accumulates messages until a size or age limit closes the batch.
#[derive(Debug)]
pub(crate) struct BatchBuilder {
    max_messages: usize,
    max_age: Duration,
    batch: MicroBatch,
    opened: Option<Instant>,
}

impl BatchBuilder {
    pub(crate) fn new(max_messages: usize, max_age: Duration) -> Self {
        BatchBuilder { max_messages, max_age, batch: MicroBatch::default(), opened: None }
    }

    fn note_offset(&mut self, topic: &str, partition: i32, offset: i64) {
        self.opened.get_or_insert_with(Instant::now);
        let key = (topic, partition);
        // Look up by borrowed parts first, allocating the key only for a new partition.
        match self.batch.offsets.iter_mut().find(|(tp, _)| (tp.topic.as_str(), tp.partition) == key) {
            Some((_, range)) => {
                range.first = range.first.min(offset);
                range.last = range.last.max(offset);
            }
            None => {
                let range = OffsetRange { first: offset, last: offset };
                self.batch.offsets.insert(TopicPartition::new(topic, partition), range);
            }
        }
    }

    /// Appends the message at `offset` to the batch's events with
    /// `decode` (which appends nothing when it fails) and notes its
    /// position if it succeeds.
    pub(crate) fn push_event<E>(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        decode: impl FnOnce(&mut KeyedEvents) -> Result<(), E>,
    ) -> Result<(), E> {
        decode(&mut self.batch.events)?;
        self.note_offset(topic, partition, offset);
        Ok(())
    }

    pub(crate) fn push_received(&mut self, topic: &str, partition: i32, offset: i64, received: Received) {
        self.note_offset(topic, partition, offset);
        self.batch.received.push(received);
    }

    pub(crate) fn push_rejected(&mut self, topic: &str, partition: i32, offset: i64, reason: RejectReason) {
        self.note_offset(topic, partition, offset);
        *self.batch.rejected.entry(reason).or_default() += 1;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.opened.is_none()
    }

    /// Whether the batch must be closed now.
    pub(crate) fn is_due(&self, now: Instant) -> bool {
        match self.opened {
            None => false,
            Some(opened) => self.batch.messages() >= self.max_messages || now.duration_since(opened) >= self.max_age,
        }
    }

    /// How long a poll may wait before the open batch becomes due.
    pub(crate) fn time_left(&self, now: Instant, idle_wait: Duration) -> Duration {
        match self.opened {
            None => idle_wait,
            Some(opened) => self.max_age.saturating_sub(now.duration_since(opened)),
        }
    }

    /// Takes the batch, leaving an empty one.
    pub(crate) fn take(&mut self) -> MicroBatch {
        self.opened = None;
        std::mem::take(&mut self.batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshet_core::{Forget, RejectReason};

    fn push_forget(builder: &mut BatchBuilder, topic: &str, partition: i32, offset: i64, user: &str) {
        let event = Feedback::Forget(Forget { user: user.into(), ts: 1 });
        let pushed = builder.push_event(topic, partition, offset, |events| {
            events.push(&event);
            Ok::<(), ()>(())
        });
        assert_eq!(pushed, Ok(()));
    }

    #[test]
    fn tracks_offset_ranges_per_partition() {
        let mut builder = BatchBuilder::new(10, Duration::from_secs(1));
        assert!(builder.is_empty());
        push_forget(&mut builder, "a", 0, 5, "u1");
        builder.push_rejected("a", 0, 6, RejectReason::MalformedJson);
        push_forget(&mut builder, "a", 1, 9, "u2");
        push_forget(&mut builder, "b", 0, 3, "u3");
        let batch = builder.take();
        assert!(builder.is_empty());
        assert_eq!(batch.messages(), 4);
        assert_eq!(batch.rejected_count(), 1);
        assert_eq!(batch.offsets[&TopicPartition::new("a", 0)], OffsetRange { first: 5, last: 6 });
        let next = batch.next_offsets();
        assert_eq!(next[&TopicPartition::new("a", 0)], 7);
        assert_eq!(next[&TopicPartition::new("a", 1)], 10);
        assert_eq!(next[&TopicPartition::new("b", 0)], 4);
    }

    #[test]
    fn an_event_that_fails_to_decode_is_not_in_the_batch() {
        let mut builder = BatchBuilder::new(10, Duration::from_secs(1));
        let failed = builder.push_event("a", 0, 5, |_| Err("malformed"));
        assert_eq!(failed, Err("malformed"));
        assert!(builder.is_empty(), "no batch opened, no offset noted");
        push_forget(&mut builder, "a", 0, 6, "u1");
        let batch = builder.take();
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.offsets[&TopicPartition::new("a", 0)], OffsetRange { first: 6, last: 6 });
    }

    #[test]
    fn closes_on_size_or_age() {
        let mut builder = BatchBuilder::new(2, Duration::from_millis(50));
        assert!(!builder.is_due(Instant::now()));
        push_forget(&mut builder, "a", 0, 0, "u1");
        assert!(!builder.is_due(Instant::now()));
        assert!(builder.is_due(Instant::now() + Duration::from_millis(60)));
        push_forget(&mut builder, "a", 0, 1, "u1");
        assert!(builder.is_due(Instant::now()));
        assert!(builder.time_left(Instant::now(), Duration::from_secs(9)) <= Duration::from_millis(50));
        builder.take();
        assert_eq!(builder.time_left(Instant::now(), Duration::from_secs(9)), Duration::from_secs(9));
    }
}
