//! Read-only inspection of a checkpoint directory, safe while `freshet run`
//! holds it: the store is opened as a RocksDB secondary instance.

use std::collections::BTreeMap;
use std::path::Path;

use freshet_core::{ModelSpec, TableKind};
use freshet_trainer::{Counters, DenseState, MetricsReading};
use rocksdb::{DB, IteratorMode};
use serde::Serialize;

use crate::codec::{
    CF_PENDING, CF_ROWS, FORMAT_VERSION, META_PUBLISHED, META_SKIPPED, META_VERSION, READABLE_LAYOUTS, decode_pending,
    decode_row_header, parse_row_key,
};
use crate::error::CheckpointError;
use crate::retain::{self, RetainedDisk, RetainedVersion};
use crate::rollback::RollbackRecord;
use crate::store::{
    cf, db_options, descriptors, meta_u64, read_dense, read_high_water, read_offsets, read_outboxes, read_rollbacks,
    read_shard, read_spec, scan_options, stored_layout,
};

/// A summary of a checkpoint directory.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The newest durable checkpoint version.
    pub version: u64,
    /// The newest snapshot version recorded as published.
    pub published_version: u64,
    /// Valid events whose update the checkpoint contains (written in the same
    /// batch as the rows and offsets).
    pub events_applied: u64,
    /// Next offset per source partition, as `"topic/partition"`.
    pub offsets: BTreeMap<String, i64>,
    /// Rows per table.
    pub rows_by_table: BTreeMap<TableKind, u64>,
    /// Sum of the rows' update counters per table.
    pub updates_by_table: BTreeMap<TableKind, u64>,
    /// Ids waiting for admission per table.
    pub pending_by_table: BTreeMap<TableKind, u64>,
    /// The trainer's running counters.
    pub counters: Option<Counters>,
    /// Progressive metrics at the checkpoint.
    pub metrics: Option<MetricsReading>,
    /// The model spec.
    pub spec: Option<ModelSpec>,
    /// The shard whose rows the store holds, of `spec.shards` (0 unsharded).
    pub shard: u32,
    /// Bytes of all files in the directory.
    pub size_on_disk_bytes: u64,
    /// Events read but left out by skip rollbacks.
    pub events_skipped: u64,
    /// The retained versions (rollback targets), oldest first.
    pub retained: Vec<RetainedVersion>,
    /// What the retained versions cost on disk.
    pub retained_disk: RetainedDisk,
    /// The audit records of every rollback, oldest first.
    pub rollbacks: Vec<RollbackRecord>,
    /// A shard's marks of what it applied from each other shard.
    pub high_water: Vec<Mark>,
    /// A shard's outboxes the broker may not have yet: (version, messages).
    pub outboxes: Vec<(u64, usize)>,
}

/// One high-water mark: the newest message applied from `sender` on `channel`.
#[derive(Debug, Clone, Serialize)]
pub struct Mark {
    /// `route` or `grads`.
    pub channel: &'static str,
    /// The sending shard.
    pub sender: u32,
    /// The sender's checkpoint version.
    pub version: u64,
    /// The part within it.
    pub part: u32,
}

/// Inspects the store in `dir` without taking it from its writer.
pub fn inspect(dir: &Path) -> Result<Inspection, CheckpointError> {
    if !dir.join("CURRENT").is_file() {
        return Err(CheckpointError::Open {
            dir: dir.to_owned(),
            message: "not a checkpoint directory (no RocksDB CURRENT file)".to_owned(),
        });
    }
    let secondary = tempfile::tempdir().map_err(|source| CheckpointError::Io {
        operation: "creating a temporary directory for",
        path: dir.to_owned(),
        source,
    })?;
    let db = DB::open_cf_descriptors_as_secondary(&db_options(), dir, secondary.path(), descriptors())
        .map_err(|error| CheckpointError::Open { dir: dir.to_owned(), message: error.to_string() })?;
    db.try_catch_up_with_primary().map_err(CheckpointError::rocks("catching up with the writer"))?;

    let layout = stored_layout(&db)?;
    if !READABLE_LAYOUTS.contains(&layout) {
        return Err(CheckpointError::Layout { found: layout, supported: FORMAT_VERSION });
    }
    let dense: Option<DenseState> = read_dense(&db, layout)?;
    let mut rows_by_table = BTreeMap::new();
    let mut updates_by_table = BTreeMap::new();
    for item in db.iterator_cf_opt(cf(&db, CF_ROWS)?, scan_options(), IteratorMode::Start) {
        let (key, value) = item.map_err(CheckpointError::rocks("read"))?;
        let at = parse_row_key(&key)?;
        let row = decode_row_header(&value, at)?;
        *rows_by_table.entry(at.0).or_insert(0) += 1;
        *updates_by_table.entry(at.0).or_insert(0) += row.updates;
    }
    let mut pending_by_table = BTreeMap::new();
    for item in db.iterator_cf(cf(&db, CF_PENDING)?, IteratorMode::Start) {
        let (key, value) = item.map_err(CheckpointError::rocks("read"))?;
        let pending = decode_pending(&key, &value, layout)?;
        *pending_by_table.entry(pending.table).or_insert(0) += 1;
    }
    for table in TableKind::ALL {
        for map in [&mut rows_by_table, &mut updates_by_table, &mut pending_by_table] {
            map.entry(table).or_insert(0);
        }
    }
    let retained = retain::list(dir)?;
    let high_water = read_high_water(&db)?
        .marks()
        .map(|(channel, tag)| Mark {
            channel: channel.name(),
            sender: tag.sender,
            version: tag.version,
            part: tag.part,
        })
        .collect();
    let outboxes = read_outboxes(&db)?.iter().map(|outbox| (outbox.version, outbox.messages.len())).collect();
    Ok(Inspection {
        high_water,
        outboxes,
        version: meta_u64(&db, META_VERSION)?,
        published_version: meta_u64(&db, META_PUBLISHED)?,
        events_applied: dense.as_ref().map_or(0, |d| d.counters.events_applied),
        offsets: freshet_core::offsets::by_name(&read_offsets(&db)?),
        rows_by_table,
        updates_by_table,
        pending_by_table,
        counters: dense.as_ref().map(|d| d.counters),
        metrics: dense.as_ref().map(|d| d.metrics.snapshot()),
        spec: read_spec(&db, layout)?,
        shard: read_shard(&db)?,
        size_on_disk_bytes: directory_size(dir),
        events_skipped: meta_u64(&db, META_SKIPPED)?,
        retained_disk: retain::disk_use(dir, &retained)?,
        retained,
        rollbacks: read_rollbacks(&db)?,
    })
}

fn directory_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
