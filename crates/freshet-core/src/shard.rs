//! How a sharded model splits its rows and its input, and what one shard
//! sends another.
//!
//! A model sharded over `S` instances gives every row to one owner: the row
//! of key `k` (a [`crate::hash_id`] or [`crate::hash_feature`] key) belongs to
//! shard [`shard_of`]`(k, S)`, the upper 32 bits of the key modulo `S`. The
//! global biases belong to shard 0. A producer that sends a user's events to
//! partition [`partition_of`]`(user, P)` (the same upper 32 bits modulo the
//! partition count `P`) puts them on a partition `p` with `p mod S` equal to
//! the user's shard whenever `S` divides `P`, so that shard reads them
//! without forwarding. The upper half is used so that the lower bits, which
//! hash tables index by, stay uniform within one shard's rows.
//!
//! A shard trains the events of its own users. It scores them with its own
//! rows and a read-only replica of the item and feature rows other shards
//! own, and sums the gradients it computes for those rows into
//! [`Gradients`], one per owner, which the owner steps like its own.

use crate::config::ConfigError;
use crate::id_hash::hash_id;
pub use crate::model::MAX_SHARDS;
use crate::model::TableKind;
use crate::offsets::TopicPartition;

/// The shard that owns the row of `key` in a model of `shards` shards
/// (`shards` ≥ 1): `(key >> 32) mod shards`.
#[inline]
pub fn shard_of(key: u64, shards: u32) -> u32 {
    ((key >> 32) % u64::from(shards.max(1))) as u32
}

/// The partition, out of `partitions` (≥ 1), that the documented
/// partitioner gives a user's events: `(hash_id(user) >> 32) mod partitions`.
pub fn partition_of(user: &str, partitions: u32) -> u32 {
    shard_of(hash_id(user), partitions)
}

/// One instance's place in a sharded model: shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    index: u32,
    count: u32,
}

impl Shard {
    /// The only shard of an unsharded model: it owns every row.
    pub const SOLE: Shard = Shard { index: 0, count: 1 };

    /// Shard `index` of `count`, checked: `count` in 1..=[`MAX_SHARDS`] and
    /// `index` below it.
    pub fn new(index: u32, count: u32) -> Result<Self, ConfigError> {
        if !(1..=MAX_SHARDS).contains(&count) {
            return Err(ConfigError::new("model.shards", format!("must be between 1 and {MAX_SHARDS}, got {count}")));
        }
        if index >= count {
            return Err(ConfigError::new("shard", format!("must be below model.shards = {count}, got {index}")));
        }
        Ok(Shard { index, count })
    }

    /// This shard's number, from 0.
    pub fn index(self) -> u32 {
        self.index
    }

    /// How many shards the model has.
    pub fn count(self) -> u32 {
        self.count
    }

    /// Whether the model has more than one shard.
    pub fn is_sharded(self) -> bool {
        self.count > 1
    }

    /// Whether this shard owns the row of `key`.
    #[inline]
    pub fn owns(self, key: u64) -> bool {
        self.count == 1 || shard_of(key, self.count) == self.index
    }

    /// The shard that owns the row of `key`.
    #[inline]
    pub fn owner(self, key: u64) -> u32 {
        shard_of(key, self.count)
    }

    /// Whether this shard owns the global biases (shard 0 does).
    pub fn owns_globals(self) -> bool {
        self.index == 0
    }
}

/// Why a shard cannot read its input as the partitions are laid out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignmentError {
    /// No input topic.
    #[error("no input topic")]
    NoTopics,
    /// Input topics with different partition counts: a user's partition
    /// would differ from topic to topic.
    #[error(
        "input topic {topic} has {partitions} partitions and {first} has {first_partitions}: every input topic of a \
         sharded model needs the same partition count"
    )]
    Unequal {
        /// The topic that differs.
        topic: String,
        /// Its partition count.
        partitions: u32,
        /// The first topic.
        first: String,
        /// Its partition count.
        first_partitions: u32,
    },
    /// A partition count that the shard count does not divide: some
    /// partitions would hold users of several shards.
    #[error("input topic {topic} has {partitions} partitions, not a multiple of model.shards = {shards}")]
    NotMultiple {
        /// The topic.
        topic: String,
        /// Its partition count.
        partitions: u32,
        /// The model's shard count.
        shards: u32,
    },
}

/// The input partitions `shard` reads: of every topic (given with its
/// partition count), the partitions `p` with `p mod S` = the shard's index.
/// Checked: every topic has the same partition count, a multiple of `S`,
/// so that partition `p` holds only users of shard `p mod S` when producers
/// use [`partition_of`]. In topic order, then partition order.
pub fn assigned_partitions(topics: &[(&str, u32)], shard: Shard) -> Result<Vec<TopicPartition>, AssignmentError> {
    let &(first, first_partitions) = topics.first().ok_or(AssignmentError::NoTopics)?;
    let mut assigned = Vec::new();
    for &(topic, partitions) in topics {
        if partitions != first_partitions {
            return Err(AssignmentError::Unequal {
                topic: topic.to_owned(),
                partitions,
                first: first.to_owned(),
                first_partitions,
            });
        }
        if partitions == 0 || partitions % shard.count != 0 {
            return Err(AssignmentError::NotMultiple { topic: topic.to_owned(), partitions, shards: shard.count });
        }
        let mine = (shard.index..partitions).step_by(shard.count as usize);
        assigned.extend(mine.map(|p| TopicPartition::new(topic, p as i32)));
    }
    Ok(assigned)
}

/// Gradient sums a shard computed for rows another shard owns: what the
/// owner steps as if its own events had produced them. The rows of one
/// table are in the order the sender first touched them, so stepping them
/// is deterministic.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gradients {
    /// The sender's trainer clock (event time, ms) when the sums were taken.
    pub clock_ms: i64,
    /// Per table that has rows here, in [`TableKind::ALL`] order; user rows
    /// never travel (a user's events are trained by the user's shard).
    pub tables: Vec<TableGradients>,
    /// Summed gradient of each head's global bias (indexed by
    /// [`crate::Head::index`]).
    pub globals: [f32; 2],
    /// Events that contributed to each head's global gradient.
    pub global_events: [u32; 2],
}

impl Gradients {
    /// Whether nothing is here: no row and no global event.
    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(|t| t.keys.is_empty()) && self.global_events == [0, 0]
    }

    /// Events summed over every row of `table`.
    pub fn row_events(&self, table: TableKind) -> u64 {
        self.tables.iter().filter(|t| t.table == table).flat_map(|t| &t.events).map(|&n| u64::from(n)).sum()
    }
}

/// One table's gradient sums, as columns.
#[derive(Debug, Clone, PartialEq)]
pub struct TableGradients {
    /// The table.
    pub table: TableKind,
    /// Floats per row ([`crate::ModelSpec::row_width`] of the table).
    pub width: usize,
    /// Each row's key.
    pub keys: Vec<u64>,
    /// Each row's original id, for a table that keeps them (items), so an
    /// owner admitting the row keeps its id; empty for one that does not.
    pub ids: Vec<Box<str>>,
    /// How many events each row's sum holds (its update counter grows by it).
    pub events: Vec<u32>,
    /// `keys.len() × width` floats, laid out like the row ([`crate::RowLayout`]).
    pub values: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors docs/scaling.md gives, so other languages can check
    /// their partitioner.
    #[test]
    fn partitioner_test_vectors() {
        let vectors = [
            ("u1", 0x8bd6_3504_52ca_9ce7u64, [0, 4, 8], [0, 2]),
            ("u2", 0x7a99_1a85_cc5f_9311, [1, 5, 5], [1, 2]),
            ("alice", 0x2d09_f5b4_047f_4437, [0, 4, 8], [0, 2]),
            ("user-42", 0xf0eb_ddbb_9e52_589b, [3, 3, 7], [1, 1]),
        ];
        for (id, hash, partitions, shards) in vectors {
            assert_eq!(hash_id(id), hash, "{id}");
            assert_eq!([4, 8, 12].map(|p| partition_of(id, p)), partitions, "{id}");
            assert_eq!([2, 3].map(|s| shard_of(hash, s)), shards, "{id}");
        }
    }

    #[test]
    fn a_user_on_its_partition_is_read_by_its_shard() {
        for n in 0..2_000u32 {
            let user = format!("user-{n}");
            let key = hash_id(&user);
            for (shards, partitions) in [(2, 4), (3, 12), (4, 4), (5, 10)] {
                assert_eq!(partition_of(&user, partitions) % shards, shard_of(key, shards), "{user}");
            }
        }
    }

    #[test]
    fn rows_spread_evenly_and_one_shard_owns_everything_alone() {
        let mut owned = [0u32; 3];
        for n in 0..30_000u32 {
            let key = hash_id(&format!("item-{n}"));
            owned[shard_of(key, 3) as usize] += 1;
            assert!(Shard::SOLE.owns(key));
            let shards = [0, 1, 2].map(|i| Shard::new(i, 3).expect("valid"));
            assert_eq!(shards.iter().filter(|s| s.owns(key)).count(), 1);
        }
        assert!(owned.iter().all(|&n| (9_500..10_500).contains(&n)), "{owned:?}");
    }

    #[test]
    fn each_shard_reads_the_partitions_of_its_users_and_together_every_partition_once() {
        let topics = [("clicks", 12), ("ratings", 12)];
        let mut every = Vec::new();
        for index in 0..3 {
            let shard = Shard::new(index, 3).expect("valid");
            let assigned = assigned_partitions(&topics, shard).expect("12 is a multiple of 3");
            assert_eq!(assigned.len(), 8);
            assert!(assigned.iter().all(|tp| tp.partition as u32 % 3 == index), "{assigned:?}");
            every.extend(assigned);
        }
        every.sort();
        every.dedup();
        assert_eq!(every.len(), 24, "every partition of both topics, once");
        let sole = assigned_partitions(&[("clicks", 5)], Shard::SOLE).expect("one shard reads any count");
        assert_eq!(sole.len(), 5);
        // The users a producer puts on a shard's partitions are the shard's.
        let shard = Shard::new(1, 3).expect("valid");
        let mine = assigned_partitions(&[("clicks", 12)], shard).expect("valid");
        for n in 0..500 {
            let user = format!("user-{n}");
            let on_mine = mine.iter().any(|tp| tp.partition as u32 == partition_of(&user, 12));
            assert_eq!(on_mine, shard.owns(hash_id(&user)), "{user}");
        }
    }

    #[test]
    fn partition_counts_that_do_not_fit_name_the_topic() {
        let shard = Shard::new(0, 4).expect("valid");
        let error = assigned_partitions(&[("clicks", 8), ("ratings", 4)], shard).expect_err("unequal");
        assert!(matches!(&error, AssignmentError::Unequal { topic, .. } if topic == "ratings"), "{error:?}");
        assert!(error.to_string().contains("ratings"), "{error}");
        let error = assigned_partitions(&[("clicks", 6), ("ratings", 6)], shard).expect_err("not a multiple");
        assert!(matches!(&error, AssignmentError::NotMultiple { topic, shards: 4, .. } if topic == "clicks"));
        assert!(error.to_string().contains("model.shards = 4"), "{error}");
        assert_eq!(assigned_partitions(&[], shard), Err(AssignmentError::NoTopics));
        assert!(assigned_partitions(&[("clicks", 0)], Shard::SOLE).is_err(), "a topic without partitions");
    }

    #[test]
    fn a_bad_shard_names_its_key() {
        assert_eq!(Shard::new(0, 0).expect_err("no shards").key, "model.shards");
        assert_eq!(Shard::new(2, 2).expect_err("past the end").key, "shard");
        assert!(Shard::new(1, 2).expect("valid").is_sharded());
        assert!(Shard::new(0, 2).expect("valid").owns_globals());
        assert!(!Shard::new(1, 2).expect("valid").owns_globals());
    }
}
