//! The RocksDB checkpoint store. One checkpoint is the trainer's drained
//! [`StateChanges`] (changed rows, tombstones, admission counts, the dense state),
//! the source offsets those rows reflect, and the next version, all in ONE
//! `WriteBatch` with the WAL on (and fsync when configured): after a crash the
//! store holds either all of a checkpoint or none of it. Cost is proportional
//! to the delta, not to the model.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use freshet_core::ModelSpec;
use freshet_core::NextOffsets;
use freshet_trainer::{
    DenseState, PendingAdmission, Restorer, RowRef, RowState, StateChanges, Trainer, TrainerConfig, TrainerState,
};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, FlushOptions, IteratorMode, Options, WriteBatch, WriteOptions,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::codec::{
    CF_META, CF_OFFSETS, CF_PENDING, CF_ROWS, COLUMN_FAMILIES, FORMAT_VERSION, META_DENSE, META_FORMAT, META_PUBLISHED,
    META_SPEC, META_VERSION, MIGRATED_LAYOUT, decode, decode_dense, decode_pending, decode_row, decode_spec, encode,
    encode_dense, encode_pending, encode_row, encode_spec, offset_key, parse_offset, parse_row_key, parse_u64, row_key,
};
use crate::error::CheckpointError;

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

/// The checkpoint store of one model, held by one process at a time.
pub struct CheckpointStore {
    db: DB,
    dir: PathBuf,
    write: WriteOptions,
    version: u64,
    published: u64,
    spec: Option<ModelSpec>,
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
    options.set_compression_type(rocksdb::DBCompressionType::Lz4);
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

/// The dense state a store of `layout` holds, if any.
pub(crate) fn read_dense(db: &DB, layout: u32) -> Result<Option<DenseState>, CheckpointError> {
    meta_with(db, META_DENSE, |bytes| decode_dense(bytes, layout))
}

/// Rewrites a layout-3 store's spec, dense state and pending counts as
/// layout 4 in one atomic, synced batch (rows and offsets are the same in both).
fn migrate(db: &DB, dir: &Path) -> Result<(), CheckpointError> {
    let started = Instant::now();
    let mut batch = WriteBatch::default();
    let meta = cf(db, CF_META)?;
    if let Some(spec) = read_spec(db, MIGRATED_LAYOUT)? {
        batch.put_cf(meta, META_SPEC, encode_spec(&spec));
    }
    if let Some(dense) = read_dense(db, MIGRATED_LAYOUT)? {
        batch.put_cf(meta, META_DENSE, encode_dense(&dense));
    }
    let pending_cf = cf(db, CF_PENDING)?;
    let mut pending = 0u64;
    for item in db.iterator_cf(pending_cf, IteratorMode::Start) {
        let (key, value) = item.map_err(CheckpointError::rocks("read"))?;
        batch.put_cf(pending_cf, &key, encode_pending(&decode_pending(&key, &value, MIGRATED_LAYOUT)?));
        pending += 1;
    }
    batch.put_cf(meta, META_FORMAT, encode(&FORMAT_VERSION));
    let mut write = WriteOptions::default();
    write.set_sync(true);
    db.write_opt(batch, &write).map_err(CheckpointError::rocks("migrate"))?;
    info!(
        dir = %dir.display(),
        from = MIGRATED_LAYOUT,
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
            MIGRATED_LAYOUT => migrate(&db, dir)?,
            found => return Err(CheckpointError::Layout { found, supported: FORMAT_VERSION }),
        }
        let version = meta_u64(&db, META_VERSION)?;
        let published = meta_u64(&db, META_PUBLISHED)?;
        let spec = read_spec(&db, FORMAT_VERSION)?;
        let mut write = WriteOptions::default();
        write.set_sync(fsync);
        info!(dir = %dir.display(), version, published, "checkpoint store open");
        Ok(CheckpointStore { db, dir: dir.to_owned(), write, version, published, spec })
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
        self.scan_rows(|row| {
            rows.push(RowState::from(row));
            Ok(())
        })?;
        let mut pending = Vec::new();
        self.scan_pending(|row| {
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
        let started = Instant::now();
        let mut restorer = Restorer::new(spec.clone(), config, self.dense()?)?;
        let mut rows = 0u64;
        self.scan_rows(|row| {
            rows += 1;
            Ok(restorer.push_row(&row)?)
        })?;
        self.scan_pending(|row| {
            restorer.push_pending(&row);
            Ok(())
        })?;
        let offsets = read_offsets(&self.db)?;
        info!(version = self.version, rows, elapsed_ms = started.elapsed().as_millis() as u64, "checkpoint restored");
        Ok(Some(Resumed {
            version: self.version,
            published_version: self.published,
            trainer: restorer.finish(),
            offsets,
        }))
    }

    fn dense(&self) -> Result<DenseState, CheckpointError> {
        read_dense(&self.db, FORMAT_VERSION)?
            .ok_or_else(|| CheckpointError::Corrupt("the dense state is missing".to_owned()))
    }

    /// Calls `each` with every row, in (table, key) order, decoded from the
    /// iterator's own buffers (a raw iterator: no copy of each key and value).
    fn scan_rows(
        &self,
        mut each: impl FnMut(RowRef<'_>) -> Result<(), CheckpointError>,
    ) -> Result<(), CheckpointError> {
        let mut floats = Vec::new();
        let mut rows = self.db.raw_iterator_cf_opt(cf(&self.db, CF_ROWS)?, scan_options());
        rows.seek_to_first();
        while let (Some(key), Some(value)) = (rows.key(), rows.value()) {
            each(decode_row(value, parse_row_key(key)?, &mut floats)?)?;
            rows.next();
        }
        rows.status().map_err(CheckpointError::rocks("read"))
    }

    /// Calls `each` with every pending admission count, in (table, key) order.
    fn scan_pending(
        &self,
        mut each: impl FnMut(PendingAdmission) -> Result<(), CheckpointError>,
    ) -> Result<(), CheckpointError> {
        for item in self.db.iterator_cf_opt(cf(&self.db, CF_PENDING)?, scan_options(), IteratorMode::Start) {
            let (key, value) = item.map_err(CheckpointError::rocks("read"))?;
            each(decode_pending(&key, &value, FORMAT_VERSION)?)?;
        }
        Ok(())
    }

    /// Writes one checkpoint: the delta, the offsets it reflects and the next
    /// version, atomically. Returns once it is durable (per the fsync setting).
    pub fn commit(
        &mut self,
        spec: &ModelSpec,
        delta: &StateChanges,
        offsets: &NextOffsets,
    ) -> Result<CommitStats, CheckpointError> {
        self.check_spec(spec)?;
        let started = Instant::now();
        let (rows, meta, offsets_cf, pending) =
            (cf(&self.db, CF_ROWS)?, cf(&self.db, CF_META)?, cf(&self.db, CF_OFFSETS)?, cf(&self.db, CF_PENDING)?);
        let mut batch = WriteBatch::default();
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
        if self.spec.is_none() {
            batch.put_cf(meta, META_SPEC, encode_spec(spec));
            batch.put_cf(meta, META_FORMAT, encode(&FORMAT_VERSION));
        }
        let bytes = batch.size_in_bytes();
        debug!(version, rows = delta.rows.len(), tombstones = delta.tombstones.len(), bytes, "checkpoint writing");
        self.db.write_opt(batch, &self.write).map_err(CheckpointError::rocks("write"))?;
        self.version = version;
        self.spec.get_or_insert_with(|| spec.clone());
        Ok(CommitStats {
            version,
            rows: delta.rows.len(),
            tombstones: delta.tombstones.len(),
            bytes,
            elapsed: started.elapsed(),
        })
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

impl Drop for CheckpointStore {
    /// Persists the memtables of every column family, so the next open reads
    /// files instead of replaying the write-ahead log (which costs time and
    /// memory for a large model). A crash skips this; the next open then
    /// replays the log.
    fn drop(&mut self) {
        let families: Result<Vec<_>, _> = COLUMN_FAMILIES.iter().map(|name| cf(&self.db, name)).collect();
        let flushed = match families {
            Ok(families) => self.db.flush_cfs_opt(&families, &FlushOptions::default()).map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        if let Err(error) = flushed {
            tracing::warn!(%error, "flushing the checkpoint store on close failed; the next open replays the WAL");
        }
    }
}
