//! The RocksDB checkpoint store. One checkpoint is the trainer's drained
//! [`StateChanges`] (changed rows, tombstones, admission counts, the dense state),
//! the source offsets those rows reflect, and the next version, all in ONE
//! `WriteBatch` with the WAL on (and fsync when configured): after a crash the
//! store holds either all of a checkpoint or none of it. Cost is proportional
//! to the delta, not to the model.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use freshet_core::ModelSpec;
use freshet_core::NextOffsets;
use freshet_core::Shard;
use freshet_core::exchange::{HighWater, Outbox, OutboxMessage};
use freshet_trainer::{
    DenseState, PendingAdmission, Restorer, RowRef, RowState, StateChanges, Trainer, TrainerConfig, TrainerState,
};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, FlushOptions, IteratorMode, Options, WriteBatch, WriteOptions,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::codec::{
    BINCODE_LAYOUT, CF_META, CF_OFFSETS, CF_PENDING, CF_ROWS, COLUMN_FAMILIES, FORMAT_VERSION, LAYOUT_WITHOUT_EXCHANGE,
    LAYOUT_WITHOUT_ROLLBACKS, LAYOUT_WITHOUT_SHARDS, META_DENSE, META_FORMAT, META_HIGH_WATER, META_PUBLISHED,
    META_ROLLBACKS, META_SHARD, META_SKIPPED, META_SPEC, META_VERSION, OUTBOX_PREFIX, READABLE_LAYOUTS, decode,
    decode_dense, decode_pending, decode_row, decode_shard, decode_spec, encode, encode_dense, encode_pending,
    encode_row, encode_shard, encode_spec, encoded_row_len, offset_key, outbox_key, parse_offset, parse_row_key,
    parse_u64, row_key,
};
use crate::error::CheckpointError;
use crate::retain::{self, RetainPolicy, RetainedDisk, RetainedVersion, VERSIONS_DIR};
use crate::rollback::{Position, RollbackMode, RollbackRecord, counts_after, decode_records, encode_records};

/// Bytes of a row key (table byte, big-endian key).
const ROW_KEY_LEN: usize = 9;
/// What a write batch adds to each put or delete beyond its key and value
/// (a type byte, a column family and two length prefixes).
const RECORD_OVERHEAD: usize = 16;
/// Room for a commit's records beside its rows: offsets, version, dense
/// state (whose metric windows run to about 120 KB), marks.
const COMMIT_RECORDS_BYTES: usize = 256 * 1024;

/// A checkpoint as loaded for restore.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedState {
    /// The checkpoint version.
    pub version: u64,
    /// The newest snapshot version published from this store.
    pub published_version: u64,
    /// The trainer state to restore.
    pub state: TrainerState,
    /// Where consumption resumes.
    pub offsets: NextOffsets,
}

/// A trainer restored from a checkpoint, with where consumption resumes.
#[derive(Debug)]
pub struct Resumed {
    /// The checkpoint version.
    pub version: u64,
    /// The newest snapshot version published from this store.
    pub published_version: u64,
    /// The restored trainer.
    pub trainer: Trainer,
    /// Where consumption resumes.
    pub offsets: NextOffsets,
}

/// What a shard's checkpoint keeps of its exchange with the other shards
/// (docs/scaling.md, "Exactly once across shards"), written in the same
/// batch as the state it belongs to.
#[derive(Debug, Clone, Copy)]
pub struct ExchangeCommit<'a> {
    /// The marks of what the state applied from each sender.
    pub high_water: &'a HighWater,
    /// What the checkpoint's interval produced for other shards, kept as
    /// the outbox of the new version (none is written when empty).
    pub outbox: &'a [OutboxMessage],
}

/// What one commit wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitStats {
    /// The version now durable.
    pub version: u64,
    /// Rows written.
    pub rows: usize,
    /// Rows deleted.
    pub tombstones: usize,
    /// Size of the write batch in bytes.
    pub bytes: usize,
    /// Time to build and write the batch.
    pub elapsed: Duration,
}

/// Memory RocksDB holds for the store, in bytes, summed over its column
/// families. Each part is bounded by RocksDB's options (the write buffers,
/// the block cache's capacity) or by the files on disk (table readers), so
/// a process's growth beyond these is its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreMemory {
    /// Memtables, active and immutable (`rocksdb.cur-size-all-mem-tables`).
    pub memtables: u64,
    /// Index and filter blocks of open table files (`rocksdb.estimate-table-readers-mem`).
    pub table_readers: u64,
    /// Blocks in the block caches (`rocksdb.block-cache-usage`).
    pub block_cache: u64,
}

/// The checkpoint store of one model, held by one process at a time.
pub struct CheckpointStore {
    db: DB,
    dir: PathBuf,
    write: WriteOptions,
    version: u64,
    published: u64,
    spec: Option<ModelSpec>,
    /// The shard whose rows the store holds (0 unsharded, or before the first commit).
    shard: u32,
    events_skipped: u64,
    rollbacks: Vec<RollbackRecord>,
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStore").field("dir", &self.dir).field("version", &self.version).finish()
    }
}

/// RocksDB options shared by the writer and the inspector.
pub(crate) fn db_options() -> Options {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    // Parameters and Adam moments are dense floats: LZ4 left a checkpoint's
    // blocks as large as their raw keys and values (measured on a trained
    // model), so RocksDB stored them uncompressed after spending the time to
    // try, at every flush and compaction. Blocks written compressed by
    // earlier versions stay readable (the build keeps LZ4).
    options.set_compression_type(rocksdb::DBCompressionType::None);
    options.set_max_background_jobs(2);
    options
}

pub(crate) fn descriptors() -> Vec<ColumnFamilyDescriptor> {
    COLUMN_FAMILIES.iter().map(|name| ColumnFamilyDescriptor::new(*name, db_options())).collect()
}

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a ColumnFamily, CheckpointError> {
    db.cf_handle(name).ok_or_else(|| CheckpointError::Corrupt(format!("column family {name} is missing")))
}

/// Reads a u64 meta value, 0 when absent.
pub(crate) fn meta_u64(db: &DB, key: &[u8]) -> Result<u64, CheckpointError> {
    let what = String::from_utf8_lossy(key);
    match db.get_cf(cf(db, CF_META)?, key).map_err(CheckpointError::rocks("read"))? {
        Some(bytes) => parse_u64(&bytes, &what),
        None => Ok(0),
    }
}

/// Reads a meta value and decodes it with `decode`.
fn meta_with<T>(
    db: &DB,
    key: &[u8],
    decode: impl FnOnce(&[u8]) -> Result<T, CheckpointError>,
) -> Result<Option<T>, CheckpointError> {
    db.get_cf(cf(db, CF_META)?, key).map_err(CheckpointError::rocks("read"))?.map(|bytes| decode(&bytes)).transpose()
}

/// Reads a bincode meta value.
pub(crate) fn meta_value<T: serde::de::DeserializeOwned>(db: &DB, key: &[u8]) -> Result<Option<T>, CheckpointError> {
    meta_with(db, key, |bytes| decode(bytes, &String::from_utf8_lossy(key)))
}

/// The layout of the store in `db`: its `format` key, or this build's for a
/// store nothing was committed to yet.
pub(crate) fn stored_layout(db: &DB) -> Result<u32, CheckpointError> {
    Ok(meta_value::<u32>(db, META_FORMAT)?.unwrap_or(FORMAT_VERSION))
}

/// The spec a store of `layout` holds, if any.
pub(crate) fn read_spec(db: &DB, layout: u32) -> Result<Option<ModelSpec>, CheckpointError> {
    meta_with(db, META_SPEC, |bytes| decode_spec(bytes, layout))
}

/// The shard whose rows the store in `db` holds: 0 when it has no record
/// (unsharded stores migrated from layouts before 6, or empty ones).
pub(crate) fn read_shard(db: &DB) -> Result<u32, CheckpointError> {
    Ok(meta_with(db, META_SHARD, decode_shard)?.unwrap_or(0))
}

/// The dense state a store of `layout` holds, if any.
pub(crate) fn read_dense(db: &DB, layout: u32) -> Result<Option<DenseState>, CheckpointError> {
    meta_with(db, META_DENSE, |bytes| decode_dense(bytes, layout))
}

/// The rollback audit records of the store in `db` (none before layout 5).
pub(crate) fn read_rollbacks(db: &DB) -> Result<Vec<RollbackRecord>, CheckpointError> {
    Ok(meta_with(db, META_ROLLBACKS, decode_records)?.unwrap_or_default())
}

/// The high-water marks the store in `db` holds (none before layout 7).
pub(crate) fn read_high_water(db: &DB) -> Result<HighWater, CheckpointError> {
    Ok(meta_with(db, META_HIGH_WATER, |bytes| Ok(HighWater::decode(bytes)?))?.unwrap_or_default())
}

/// The outboxes the store in `db` holds, oldest first (none before layout 7).
pub(crate) fn read_outboxes(db: &DB) -> Result<Vec<Outbox>, CheckpointError> {
    let meta = cf(db, CF_META)?;
    let mut outboxes = Vec::new();
    for item in db.iterator_cf(meta, IteratorMode::From(OUTBOX_PREFIX, rocksdb::Direction::Forward)) {
        let (key, value) = item.map_err(CheckpointError::rocks("read"))?;
        if !key.starts_with(OUTBOX_PREFIX) {
            break;
        }
        let outbox = Outbox::decode(&value)?;
        if key[..] != outbox_key(outbox.version)[..] {
            return Err(CheckpointError::Corrupt(format!("outbox of version {} under another key", outbox.version)));
        }
        outboxes.push(outbox);
    }
    Ok(outboxes)
}

/// Migrates a store of layout `from` to this build's in one atomic, synced
/// batch: the spec is rewritten with its shard count (1); a layout-3
/// store's dense state and pending counts are rewritten as records (rows
/// and offsets are the same in every readable layout); layout 4 differs
/// from 5 only in lacking the rollback keys, whose absence means none, and 6
/// from 7 in lacking the exchange keys, whose absence means no marks and no
/// outbox.
fn migrate(db: &DB, dir: &Path, from: u32) -> Result<(), CheckpointError> {
    let started = Instant::now();
    let mut batch = WriteBatch::default();
    let meta = cf(db, CF_META)?;
    let mut pending = 0u64;
    if let Some(spec) = read_spec(db, from)? {
        batch.put_cf(meta, META_SPEC, encode_spec(&spec));
    }
    if from == BINCODE_LAYOUT {
        if let Some(dense) = read_dense(db, BINCODE_LAYOUT)? {
            batch.put_cf(meta, META_DENSE, encode_dense(&dense));
        }
        let pending_cf = cf(db, CF_PENDING)?;
        for item in db.iterator_cf(pending_cf, IteratorMode::Start) {
            let (key, value) = item.map_err(CheckpointError::rocks("read"))?;
            batch.put_cf(pending_cf, &key, encode_pending(&decode_pending(&key, &value, BINCODE_LAYOUT)?));
            pending += 1;
        }
    }
    batch.put_cf(meta, META_FORMAT, encode(&FORMAT_VERSION));
    let mut write = WriteOptions::default();
    write.set_sync(true);
    db.write_opt(batch, &write).map_err(CheckpointError::rocks("migrate"))?;
    info!(
        dir = %dir.display(),
        from,
        to = FORMAT_VERSION,
        pending,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "checkpoint layout migrated"
    );
    Ok(())
}

/// Read options of a full scan: one sequential pass, so read ahead, and
/// leave the block cache to the point reads that follow.
pub(crate) fn scan_options() -> rocksdb::ReadOptions {
    let mut read = rocksdb::ReadOptions::default();
    read.set_readahead_size(8 << 20);
    read.fill_cache(false);
    read
}

/// Reads every source offset.
pub(crate) fn read_offsets(db: &DB) -> Result<NextOffsets, CheckpointError> {
    db.iterator_cf(cf(db, CF_OFFSETS)?, IteratorMode::Start)
        .map(|item| {
            let (key, value) = item.map_err(CheckpointError::rocks("read"))?;
            parse_offset(&key, &value)
        })
        .collect()
}

impl CheckpointStore {
    /// Opens (or creates) the store in `dir`. Fails with
    /// [`CheckpointError::InUse`] while another process holds it.
    pub fn open(dir: &Path, fsync: bool) -> Result<Self, CheckpointError> {
        std::fs::create_dir_all(dir).map_err(|source| CheckpointError::Io {
            operation: "creating",
            path: dir.to_owned(),
            source,
        })?;
        let db = DB::open_cf_descriptors(&db_options(), dir, descriptors()).map_err(|error| {
            let message = error.to_string();
            if message.contains("lock") || message.contains("LOCK") {
                CheckpointError::InUse { dir: dir.to_owned(), message }
            } else {
                CheckpointError::Open { dir: dir.to_owned(), message }
            }
        })?;
        match stored_layout(&db)? {
            FORMAT_VERSION => {}
            found @ (BINCODE_LAYOUT | LAYOUT_WITHOUT_ROLLBACKS | LAYOUT_WITHOUT_SHARDS | LAYOUT_WITHOUT_EXCHANGE) => {
                migrate(&db, dir, found)?
            }
            found => return Err(CheckpointError::Layout { found, supported: FORMAT_VERSION }),
        }
        retain::remove_unfinished(dir)?;
        let version = meta_u64(&db, META_VERSION)?;
        let published = meta_u64(&db, META_PUBLISHED)?;
        let spec = read_spec(&db, FORMAT_VERSION)?;
        let shard = read_shard(&db)?;
        let events_skipped = meta_u64(&db, META_SKIPPED)?;
        let rollbacks = read_rollbacks(&db)?;
        let mut write = WriteOptions::default();
        write.set_sync(fsync);
        info!(dir = %dir.display(), version, published, "checkpoint store open");
        Ok(CheckpointStore {
            db,
            dir: dir.to_owned(),
            write,
            version,
            published,
            spec,
            shard,
            events_skipped,
            rollbacks,
        })
    }

    /// Events read but not applied: left out by skip rollbacks.
    pub fn events_skipped(&self) -> u64 {
        self.events_skipped
    }

    /// The audit records of every rollback, oldest first.
    pub fn rollbacks(&self) -> &[RollbackRecord] {
        &self.rollbacks
    }

    /// The rollback that wrote the current version, if one did (no
    /// checkpoint since): its full snapshot names the version rolled back to.
    pub fn current_rollback(&self) -> Option<&RollbackRecord> {
        self.rollbacks.last().filter(|record| record.version == self.version)
    }

    /// The shard whose rows the store holds (0 for an unsharded model, and
    /// before the first commit).
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// The store's shard of its model (one of the stored spec's shards).
    fn shard_of_spec(&self) -> Result<Shard, CheckpointError> {
        let shards = self.spec.as_ref().map_or(1, |spec| spec.shards);
        Shard::new(self.shard, shards).map_err(|error| CheckpointError::Corrupt(format!("the store's shard: {error}")))
    }

    /// The newest durable checkpoint version (0 before the first).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The newest snapshot version recorded as published (0 before the first).
    pub fn published_version(&self) -> u64 {
        self.published
    }

    fn check_spec(&self, configured: &ModelSpec) -> Result<(), CheckpointError> {
        match &self.spec {
            Some(stored) if stored.shards != configured.shards => {
                Err(CheckpointError::ShardsChanged { stored: stored.shards, configured: configured.shards })
            }
            Some(stored) if stored != configured => Err(CheckpointError::SpecMismatch {
                stored: Box::new(stored.clone()),
                configured: Box::new(configured.clone()),
            }),
            _ => Ok(()),
        }
    }

    /// Loads the newest checkpoint for a trainer configured with `spec` as
    /// a whole [`TrainerState`]; `None` when the store is empty. A different
    /// spec is refused. To resume training, [`CheckpointStore::restore`]
    /// needs far less memory and time.
    pub fn load(&self, spec: &ModelSpec) -> Result<Option<SavedState>, CheckpointError> {
        if self.version == 0 {
            return Ok(None);
        }
        self.check_spec(spec)?;
        let dense = self.dense()?;
        let mut rows = Vec::new();
        scan_rows(&self.db, |row| {
            rows.push(RowState::from(row));
            Ok(())
        })?;
        let mut pending = Vec::new();
        scan_pending(&self.db, FORMAT_VERSION, |row| {
            pending.push(row);
            Ok(())
        })?;
        let state = TrainerState { spec: spec.clone(), rows, pending, dense };
        state.validate(spec)?;
        let offsets = read_offsets(&self.db)?;
        Ok(Some(SavedState { version: self.version, published_version: self.published, state, offsets }))
    }

    /// Restores a trainer configured with `spec` and `config` from the
    /// newest checkpoint; `None` when the store is empty. A different spec
    /// is refused. Rows go from RocksDB straight into the trainer's tables
    /// ([`Restorer`]), so the model is never held twice.
    pub fn restore(&self, spec: &ModelSpec, config: TrainerConfig) -> Result<Option<Resumed>, CheckpointError> {
        if self.version == 0 {
            return Ok(None);
        }
        self.check_spec(spec)?;
        let shard = self.shard_of_spec()?;
        let trainer = restore_from(&self.db, FORMAT_VERSION, spec, shard, config, self.dense()?)?;
        Ok(Some(Resumed {
            version: self.version,
            published_version: self.published,
            trainer,
            offsets: read_offsets(&self.db)?,
        }))
    }

    fn dense(&self) -> Result<DenseState, CheckpointError> {
        read_dense(&self.db, FORMAT_VERSION)?
            .ok_or_else(|| CheckpointError::Corrupt("the dense state is missing".to_owned()))
    }

    /// Writes one checkpoint: the delta, the offsets it reflects and the next
    /// version, atomically. Returns once it is durable (per the fsync setting).
    pub fn commit(
        &mut self,
        spec: &ModelSpec,
        delta: &StateChanges,
        offsets: &NextOffsets,
    ) -> Result<CommitStats, CheckpointError> {
        self.commit_with(spec, delta, offsets, None)
    }

    /// [`Self::commit`] for a shard of a sharded model: `exchange`'s marks
    /// and outbox go in the same batch (so the state, the positions it
    /// read to and the marks of what it applied, and what it owes other
    /// shards, are durable together or not at all).
    pub fn commit_with(
        &mut self,
        spec: &ModelSpec,
        delta: &StateChanges,
        offsets: &NextOffsets,
        exchange: Option<ExchangeCommit<'_>>,
    ) -> Result<CommitStats, CheckpointError> {
        self.check_spec(spec)?;
        if self.spec.is_some() && delta.shard != self.shard {
            return Err(CheckpointError::OtherShard { stored: self.shard, trainer: delta.shard });
        }
        let started = Instant::now();
        let (rows, meta, offsets_cf, pending) =
            (cf(&self.db, CF_ROWS)?, cf(&self.db, CF_META)?, cf(&self.db, CF_OFFSETS)?, cf(&self.db, CF_PENDING)?);
        // Sized up front: a batch of tens of MB grown by doubling copies
        // itself and touches fresh pages at every step.
        let record = |value: usize| value + ROW_KEY_LEN + RECORD_OVERHEAD;
        let capacity = delta.rows.iter().map(|row| record(encoded_row_len(&row.view()))).sum::<usize>()
            + (delta.tombstones.len() + delta.pending.len() + delta.pending_removed.len()) * record(16)
            + COMMIT_RECORDS_BYTES;
        let mut batch = WriteBatch::with_capacity_bytes(capacity);
        for tombstone in &delta.tombstones {
            batch.delete_cf(rows, row_key(tombstone.table, tombstone.key));
        }
        let mut value = Vec::new();
        for row in &delta.rows {
            value.clear();
            encode_row(&row.view(), &mut value);
            batch.put_cf(rows, row_key(row.table, row.key), &value);
        }
        for &(table, key) in &delta.pending_removed {
            batch.delete_cf(pending, row_key(table, key));
        }
        for row in &delta.pending {
            batch.put_cf(pending, row_key(row.table, row.key), encode_pending(row));
        }
        for (tp, next) in offsets {
            batch.put_cf(offsets_cf, offset_key(&tp.topic, tp.partition), next.to_be_bytes());
        }
        let version = self.version + 1;
        batch.put_cf(meta, META_DENSE, encode_dense(&delta.dense));
        batch.put_cf(meta, META_VERSION, version.to_be_bytes());
        if let Some(ExchangeCommit { high_water, outbox }) = exchange {
            if !high_water.is_empty() {
                batch.put_cf(meta, META_HIGH_WATER, high_water.encode());
            }
            if !outbox.is_empty() {
                let outbox = Outbox { version, messages: outbox.to_vec() };
                batch.put_cf(meta, outbox_key(version), outbox.encode());
            }
        }
        if self.spec.is_none() {
            batch.put_cf(meta, META_SPEC, encode_spec(spec));
            batch.put_cf(meta, META_SHARD, encode_shard(delta.shard));
            batch.put_cf(meta, META_FORMAT, encode(&FORMAT_VERSION));
        }
        let bytes = batch.size_in_bytes();
        debug!(version, rows = delta.rows.len(), tombstones = delta.tombstones.len(), bytes, "checkpoint writing");
        self.db.write_opt(batch, &self.write).map_err(CheckpointError::rocks("write"))?;
        self.version = version;
        if self.spec.is_none() {
            (self.spec, self.shard) = (Some(spec.clone()), delta.shard);
        }
        Ok(CommitStats {
            version,
            rows: delta.rows.len(),
            tombstones: delta.tombstones.len(),
            bytes,
            elapsed: started.elapsed(),
        })
    }

    /// The marks of what this shard applied from each other shard (none
    /// for an unsharded model).
    pub fn high_water(&self) -> Result<HighWater, CheckpointError> {
        read_high_water(&self.db)
    }

    /// The outboxes the broker may not have yet, oldest first: every one
    /// not forgotten with [`Self::forget_outboxes`].
    pub fn outboxes(&self) -> Result<Vec<Outbox>, CheckpointError> {
        read_outboxes(&self.db)
    }

    /// Forgets the outboxes of every version up to `through`: the broker
    /// has them (durably, with the same write options).
    pub fn forget_outboxes(&mut self, through: u64) -> Result<(), CheckpointError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf(&self.db, CF_META)?, outbox_key(0), outbox_key(through.saturating_add(1)));
        self.db.write_opt(batch, &self.write).map_err(CheckpointError::rocks("write"))
    }

    /// What RocksDB holds in memory for this store now. A property RocksDB
    /// cannot give counts as 0.
    pub fn memory(&self) -> StoreMemory {
        let mut memory = StoreMemory::default();
        for name in COLUMN_FAMILIES {
            let Ok(family) = cf(&self.db, name) else { continue };
            let read = |property: &str| self.db.property_int_value_cf(family, property).ok().flatten().unwrap_or(0);
            memory.memtables += read("rocksdb.cur-size-all-mem-tables");
            memory.table_readers += read("rocksdb.estimate-table-readers-mem");
            memory.block_cache += read("rocksdb.block-cache-usage");
        }
        memory
    }

    /// Records that snapshot `version` was published (durably, with the same
    /// write options), so a restart never publishes a lower version.
    pub fn record_published(&mut self, version: u64) -> Result<(), CheckpointError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_META)?, META_PUBLISHED, version.to_be_bytes());
        self.db.write_opt(batch, &self.write).map_err(CheckpointError::rocks("write"))?;
        self.published = version;
        Ok(())
    }

    /// Starts writing the memtables out to SST files in the background
    /// (RocksDB's flush, not waited for), so that a [`Self::retain`] soon
    /// after has less to flush while its caller waits (see
    /// [`crate::flush_ahead_due`]). Durability is unchanged: what is in the
    /// memtables is in the WAL already.
    pub fn flush_ahead(&self) -> Result<(), CheckpointError> {
        self.flush(false)
    }

    /// Flushes the memtables of every column family, waiting for it or not.
    fn flush(&self, wait: bool) -> Result<(), CheckpointError> {
        let families: Vec<&ColumnFamily> =
            COLUMN_FAMILIES.iter().map(|name| cf(&self.db, name)).collect::<Result<_, _>>()?;
        let mut options = FlushOptions::default();
        options.set_wait(wait);
        self.db.flush_cfs_opt(&families, &options).map_err(CheckpointError::rocks("flushing the memtables"))
    }

    /// Keeps a copy of the current version under `versions/` as a rollback
    /// target (RocksDB's checkpoint API: the memtables are flushed and the
    /// SST files hard-linked, so the copy costs what changed since the last
    /// one). Does nothing before the first checkpoint or when a copy of this
    /// version exists.
    pub fn retain(&self, now_ms: i64) -> Result<Option<RetainedVersion>, CheckpointError> {
        if self.version == 0 {
            return Ok(None);
        }
        if let Some(existing) = self.retained()?.into_iter().find(|r| r.version == self.version) {
            return Ok(Some(existing));
        }
        let versions = self.dir.join(VERSIONS_DIR);
        std::fs::create_dir_all(&versions).map_err(|source| CheckpointError::Io {
            operation: "creating",
            path: versions.clone(),
            source,
        })?;
        let started = Instant::now();
        let path = versions.join(retain::dir_name(self.version, now_ms));
        rocksdb::checkpoint::Checkpoint::new(&self.db)
            .and_then(|checkpoint| checkpoint.create_checkpoint(&path))
            .map_err(CheckpointError::rocks("retaining a version"))?;
        debug!(version = self.version, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "version retained");
        Ok(retain::list(&self.dir)?.into_iter().find(|r| r.version == self.version))
    }

    /// The retained copies, oldest first.
    pub fn retained(&self) -> Result<Vec<RetainedVersion>, CheckpointError> {
        retain::list(&self.dir)
    }

    /// What the `retained` copies (from [`CheckpointStore::retained`]) cost on disk.
    pub fn retained_disk(&self, retained: &[RetainedVersion]) -> Result<RetainedDisk, CheckpointError> {
        retain::disk_use(&self.dir, retained)
    }

    /// Deletes the copies `policy` no longer keeps ([`retain::to_prune`]);
    /// returns their versions.
    pub fn prune(&self, policy: RetainPolicy, now_ms: i64) -> Result<Vec<u64>, CheckpointError> {
        let retained = self.retained()?;
        let pairs: Vec<(u64, i64)> = retained.iter().map(|r| (r.version, r.created_ms)).collect();
        let prune = retain::to_prune(&pairs, self.published, now_ms, policy);
        for copy in retained.iter().filter(|r| prune.contains(&r.version)) {
            std::fs::remove_dir_all(&copy.path).map_err(|source| CheckpointError::Io {
                operation: "removing a retained version",
                path: copy.path.clone(),
                source,
            })?;
        }
        Ok(prune)
    }

    /// Rolls the store back to retained version `to` as a new version
    /// (`version() + 1`) in ONE synced `WriteBatch`: the rows and pending
    /// counts that differ from `to`'s, `to`'s dense state (optimizer,
    /// counters, metrics), the offsets (`to`'s for a replay, unchanged for
    /// a skip), the skipped-event count and the audit record. Cost: one
    /// pass over both stores' rows, and writes proportional to what changed
    /// since `to`. [`CheckpointStore::rollback_and_restore`] also restores
    /// a trainer.
    pub fn rollback(
        &mut self,
        to: u64,
        mode: RollbackMode,
        reason: &str,
        now_ms: i64,
    ) -> Result<RollbackRecord, CheckpointError> {
        Ok(self.roll_back(to, mode, reason, now_ms, None)?.0)
    }

    /// [`CheckpointStore::rollback`], and the trainer (of `spec` and
    /// `config`) of the rolled-back state with its offsets, restored from
    /// the retained copy on a second thread while the write batch is built
    /// and written (the two passes take about as long each). A failed
    /// rollback returns no trainer and leaves the store as it was.
    pub fn rollback_and_restore(
        &mut self,
        to: u64,
        mode: RollbackMode,
        reason: &str,
        now_ms: i64,
        spec: &ModelSpec,
        config: TrainerConfig,
    ) -> Result<(RollbackRecord, Resumed), CheckpointError> {
        self.check_spec(spec)?;
        let (record, trainer) = self.roll_back(to, mode, reason, now_ms, Some((spec, config)))?;
        let trainer = trainer.expect("a restore was asked for")?;
        let resumed = Resumed {
            version: self.version,
            published_version: self.published,
            trainer,
            offsets: read_offsets(&self.db)?,
        };
        Ok((record, resumed))
    }

    #[allow(clippy::type_complexity)] // the record, and the restore's own outcome when one was asked for
    fn roll_back(
        &mut self,
        to: u64,
        mode: RollbackMode,
        reason: &str,
        now_ms: i64,
        restore: Option<(&ModelSpec, TrainerConfig)>,
    ) -> Result<(RollbackRecord, Option<Result<Trainer, CheckpointError>>), CheckpointError> {
        let started = Instant::now();
        let retained = self.retained()?;
        let Some(copy) = retained.iter().find(|r| r.version == to) else {
            return Err(CheckpointError::NotRetained {
                version: to,
                retained: retained.iter().map(|r| r.version).collect(),
            });
        };
        let target = DB::open_cf_descriptors_read_only(&db_options(), &copy.path, descriptors(), false)
            .map_err(|error| CheckpointError::Open { dir: copy.path.clone(), message: error.to_string() })?;
        let layout = stored_layout(&target)?;
        if !READABLE_LAYOUTS.contains(&layout) {
            return Err(CheckpointError::Layout { found: layout, supported: FORMAT_VERSION });
        }
        let stored = meta_u64(&target, META_VERSION)?;
        if stored != to {
            return Err(CheckpointError::Corrupt(format!("the copy of version {to} holds version {stored}")));
        }
        if read_spec(&target, layout)? != self.spec {
            return Err(CheckpointError::Rollback(format!("version {to} was trained under another model spec")));
        }
        if read_shard(&target)? != self.shard {
            return Err(CheckpointError::Rollback(format!("version {to} holds another shard's rows")));
        }
        let shard = self.shard_of_spec()?;
        let target_dense = read_dense(&target, layout)?
            .ok_or_else(|| CheckpointError::Corrupt(format!("version {to}: the dense state is missing")))?;
        let now = Position {
            applied: self.dense()?.counters.events_applied,
            skipped: self.events_skipped,
            offsets: read_offsets(&self.db)?,
        };
        let then = Position {
            applied: target_dense.counters.events_applied,
            skipped: meta_u64(&target, META_SKIPPED)?,
            offsets: read_offsets(&target)?,
        };
        let counts = counts_after(&now, &then, mode).map_err(CheckpointError::Rollback)?;

        std::thread::scope(|scope| {
            let restoring = restore.map(|(spec, config)| {
                let (target, dense) = (&target, target_dense.clone());
                scope.spawn(move || restore_from(target, layout, spec, shard, config, dense))
            });
            let record =
                self.write_rollback(&target, layout, target_dense, to, mode, reason, now_ms, now, then, counts);
            let restored = restoring.map(|thread| {
                thread.join().unwrap_or_else(|_| Err(CheckpointError::Corrupt("the restore thread panicked".into())))
            });
            let record = record?;
            info!(
                version = record.version,
                to,
                %mode,
                reason,
                events_skipped = record.events_skipped_after,
                skipped_ranges = ?record.ranges,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "checkpoint rolled back"
            );
            Ok((record, restored))
        })
    }

    /// The rollback's one write batch: what differs from `target`, its dense
    /// state, the offsets and counts, the audit record and the version.
    #[allow(clippy::too_many_arguments)] // the rollback's parts, gathered by `roll_back`
    fn write_rollback(
        &mut self,
        target: &DB,
        layout: u32,
        target_dense: DenseState,
        to: u64,
        mode: RollbackMode,
        reason: &str,
        now_ms: i64,
        now: Position,
        then: Position,
        counts: crate::rollback::RolledCounts,
    ) -> Result<RollbackRecord, CheckpointError> {
        let started = Instant::now();
        let mut batch = WriteBatch::default();
        let rows = diff_into(&mut batch, (&self.db, CF_ROWS), (target, CF_ROWS), None)?;
        // Pending counts of layouts 4 and 5 are the same bytes; layout 3's are re-encoded.
        let reencode = |key: &[u8], value: &[u8]| Ok(encode_pending(&decode_pending(key, value, layout)?));
        let convert: Convert<'_> = (layout == BINCODE_LAYOUT).then_some(&reencode);
        let pending = diff_into(&mut batch, (&self.db, CF_PENDING), (target, CF_PENDING), convert)?;
        let offsets_cf = cf(&self.db, CF_OFFSETS)?;
        for tp in now.offsets.keys().filter(|tp| !counts.offsets.contains_key(*tp)) {
            batch.delete_cf(offsets_cf, offset_key(&tp.topic, tp.partition));
        }
        for (tp, next) in &counts.offsets {
            batch.put_cf(offsets_cf, offset_key(&tp.topic, tp.partition), next.to_be_bytes());
        }
        let version = self.version + 1;
        let record = RollbackRecord {
            version,
            to_version: to,
            from_version: self.version,
            mode,
            reason: reason.to_owned(),
            at_ms: now_ms,
            events_applied_before: now.applied,
            events_applied_after: then.applied,
            events_skipped_after: counts.events_skipped,
            ranges: counts.ranges,
        };
        let mut rollbacks = self.rollbacks.clone();
        rollbacks.push(record.clone());
        let meta = cf(&self.db, CF_META)?;
        batch.put_cf(meta, META_DENSE, encode_dense(&target_dense));
        batch.put_cf(meta, META_SKIPPED, counts.events_skipped.to_be_bytes());
        batch.put_cf(meta, META_ROLLBACKS, encode_records(&rollbacks));
        batch.put_cf(meta, META_VERSION, version.to_be_bytes());
        let mut write = WriteOptions::default();
        write.set_sync(true);
        let bytes = batch.size_in_bytes();
        self.db.write_opt(batch, &write).map_err(CheckpointError::rocks("rollback"))?;
        self.version = version;
        self.events_skipped = counts.events_skipped;
        self.rollbacks = rollbacks;
        debug!(
            version,
            rows_changed = rows,
            pending_changed = pending,
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rollback written"
        );
        Ok(record)
    }

    /// Writes a consistent copy of the store to `to` (which must not exist),
    /// with RocksDB's checkpoint API. Restore by opening the copy (or moving
    /// it in place of the original directory).
    pub fn backup(&self, to: &Path) -> Result<(), CheckpointError> {
        self.db.flush_wal(true).map_err(CheckpointError::rocks("flushing the WAL"))?;
        rocksdb::checkpoint::Checkpoint::new(&self.db)
            .and_then(|checkpoint| checkpoint.create_checkpoint(to))
            .map_err(CheckpointError::rocks("backup"))?;
        info!(to = %to.display(), version = self.version, "checkpoint backed up");
        Ok(())
    }
}

/// Calls `each` with every row of `db`, in (table, key) order, decoded from
/// the iterator's own buffers (a raw iterator: no copy of each key and value).
fn scan_rows(db: &DB, mut each: impl FnMut(RowRef<'_>) -> Result<(), CheckpointError>) -> Result<(), CheckpointError> {
    let mut floats = Vec::new();
    let mut rows = db.raw_iterator_cf_opt(cf(db, CF_ROWS)?, scan_options());
    rows.seek_to_first();
    while let (Some(key), Some(value)) = (rows.key(), rows.value()) {
        each(decode_row(value, parse_row_key(key)?, &mut floats)?)?;
        rows.next();
    }
    rows.status().map_err(CheckpointError::rocks("read"))
}

/// Calls `each` with every pending admission count of `db` (a store of
/// `layout`), in (table, key) order.
fn scan_pending(
    db: &DB,
    layout: u32,
    mut each: impl FnMut(PendingAdmission) -> Result<(), CheckpointError>,
) -> Result<(), CheckpointError> {
    for item in db.iterator_cf_opt(cf(db, CF_PENDING)?, scan_options(), IteratorMode::Start) {
        let (key, value) = item.map_err(CheckpointError::rocks("read"))?;
        each(decode_pending(&key, &value, layout)?)?;
    }
    Ok(())
}

/// A trainer of `spec` and `config` restored from the rows and pending
/// counts of `db` (a store of `layout`) and `dense`. Rows go from RocksDB
/// straight into the trainer's tables ([`Restorer`]).
fn restore_from(
    db: &DB,
    layout: u32,
    spec: &ModelSpec,
    shard: Shard,
    config: TrainerConfig,
    dense: DenseState,
) -> Result<Trainer, CheckpointError> {
    let started = Instant::now();
    let mut restorer = Restorer::new_shard(spec.clone(), config, dense, shard)?;
    let mut rows = 0u64;
    scan_rows(db, |row| {
        rows += 1;
        Ok(restorer.push_row(&row)?)
    })?;
    scan_pending(db, layout, |row| {
        restorer.push_pending(&row);
        Ok(())
    })?;
    info!(rows, elapsed_ms = started.elapsed().as_millis() as u64, "checkpoint restored");
    Ok(restorer.finish())
}

/// How a value of the target store becomes one of the current store's
/// layout (key, value); `None`: as it is.
type Convert<'c> = Option<&'c dyn Fn(&[u8], &[u8]) -> Result<Vec<u8>, CheckpointError>>;

/// Adds to `batch` what makes column family `current.1` of `current.0`
/// equal to `target`'s: puts of the keys whose value differs or that only
/// the target has (its value as it is, or through `convert`), deletes of
/// the keys only the current store has. One merged pass over both, in key
/// order; returns the keys changed.
fn diff_into(
    batch: &mut WriteBatch,
    current: (&DB, &str),
    target: (&DB, &str),
    convert: Convert<'_>,
) -> Result<u64, CheckpointError> {
    fn converted<'v>(convert: Convert<'_>, key: &[u8], value: &'v [u8]) -> Result<Cow<'v, [u8]>, CheckpointError> {
        Ok(match convert {
            Some(convert) => Cow::Owned(convert(key, value)?),
            None => Cow::Borrowed(value),
        })
    }
    enum Step {
        Current,
        Target,
        Both,
    }
    let family = cf(current.0, current.1)?;
    let mut now = current.0.raw_iterator_cf_opt(family, scan_options());
    let mut then = target.0.raw_iterator_cf_opt(cf(target.0, target.1)?, scan_options());
    now.seek_to_first();
    then.seek_to_first();
    let mut changed = 0u64;
    loop {
        let step = match (now.key(), then.key()) {
            (None, None) => break,
            (Some(key), None) => {
                batch.delete_cf(family, key);
                changed += 1;
                Step::Current
            }
            (Some(key), Some(other)) if key < other => {
                batch.delete_cf(family, key);
                changed += 1;
                Step::Current
            }
            (None, Some(key)) => {
                batch.put_cf(family, key, converted(convert, key, then.value().unwrap_or_default())?);
                changed += 1;
                Step::Target
            }
            (Some(key), Some(other)) if key > other => {
                batch.put_cf(family, other, converted(convert, other, then.value().unwrap_or_default())?);
                changed += 1;
                Step::Target
            }
            (Some(key), Some(_)) => {
                let value = converted(convert, key, then.value().unwrap_or_default())?;
                if now.value() != Some(&*value) {
                    batch.put_cf(family, key, value);
                    changed += 1;
                }
                Step::Both
            }
        };
        match step {
            Step::Current => now.next(),
            Step::Target => then.next(),
            Step::Both => {
                now.next();
                then.next();
            }
        }
    }
    now.status().map_err(CheckpointError::rocks("read"))?;
    then.status().map_err(CheckpointError::rocks("read"))?;
    Ok(changed)
}

impl Drop for CheckpointStore {
    /// Persists the memtables of every column family, so the next open reads
    /// files instead of replaying the write-ahead log (which costs time and
    /// memory for a large model). A crash skips this; the next open then
    /// replays the log.
    fn drop(&mut self) {
        if let Err(error) = self.flush(true) {
            tracing::warn!(%error, "flushing the checkpoint store on close failed; the next open replays the WAL");
        }
    }
}
