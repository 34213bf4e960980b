//! Retained versions: after a checkpoint, a consistent copy of the store made
//! with RocksDB's checkpoint API (hard links to the immutable SST files, so
//! a copy costs the files written since the previous one, not the model),
//! kept under `<dir>/versions/` as rollback targets.
//!
//! A copy's directory is named `v<version, 20 digits>-<created ms>`. RocksDB
//! builds it as `<name>.tmp` and renames it when complete, so a directory
//! with a plain name is always a whole copy; a `.tmp` left by a crash is
//! removed when the store opens. Which copies stay is [`to_prune`]'s
//! decision, a pure function of the copies, the published version and the
//! time.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::CheckpointError;

/// The directory under the store's directory that holds the copies.
pub(crate) const VERSIONS_DIR: &str = "versions";

/// `[checkpoint] retain_versions`, `retain_ms` and `retain_every_ms`: how
/// many versions to keep as rollback targets, for how long, and how far
/// apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetainPolicy {
    /// Copies of versions up to the newest published one to keep (and as
    /// many newer ones awaiting the publisher); 0 keeps none.
    pub versions: usize,
    /// Copies older than this are pruned, except the newest published one
    /// (the automatic rollback's target). `None`: no age limit.
    pub max_age_ms: Option<u64>,
    /// A checkpoint is copied only when the newest copy is at least this old
    /// ([`retain_due`]); 0 copies every checkpoint.
    pub every_ms: u64,
}

/// One retained copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetainedVersion {
    /// The checkpoint version it holds.
    pub version: u64,
    /// When it was made (ms since the epoch).
    pub created_ms: i64,
    /// Bytes of its files (shared with the store and with other copies
    /// through hard links: see [`RetainedDisk`] for what retention costs).
    pub bytes: u64,
    /// Its directory.
    #[serde(skip)]
    pub path: PathBuf,
}

/// What the retained copies cost on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct RetainedDisk {
    /// Copies kept.
    pub versions: usize,
    /// Bytes of the store's own files.
    pub store_bytes: u64,
    /// Bytes of files only the copies hold (what retention adds on disk).
    pub retained_only_bytes: u64,
}

/// The directory name of the copy of `version` made at `created_ms`.
pub(crate) fn dir_name(version: u64, created_ms: i64) -> String {
    format!("v{version:020}-{created_ms}")
}

/// The version and creation time a copy's directory name holds.
fn parse_dir_name(name: &str) -> Option<(u64, i64)> {
    let (version, created) = name.strip_prefix('v')?.split_once('-')?;
    if version.len() != 20 {
        return None;
    }
    Some((version.parse().ok()?, created.parse().ok()?))
}

fn io<'a>(operation: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CheckpointError + 'a {
    move |source| CheckpointError::Io { operation, path: path.to_owned(), source }
}

/// The copies under the store in `dir`, oldest version first.
pub(crate) fn list(dir: &Path) -> Result<Vec<RetainedVersion>, CheckpointError> {
    let versions = dir.join(VERSIONS_DIR);
    let entries = match std::fs::read_dir(&versions) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io("listing", &versions)(error)),
    };
    let mut retained = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io("listing", &versions))?;
        let Some((version, created_ms)) = entry.file_name().to_str().and_then(parse_dir_name) else { continue };
        let path = entry.path();
        let bytes = files(&path)?.iter().map(|(_, len)| len).sum();
        retained.push(RetainedVersion { version, created_ms, bytes, path });
    }
    retained.sort_by_key(|r| r.version);
    Ok(retained)
}

/// Removes copies a crash left half made (`*.tmp`).
pub(crate) fn remove_unfinished(dir: &Path) -> Result<(), CheckpointError> {
    let versions = dir.join(VERSIONS_DIR);
    let Ok(entries) = std::fs::read_dir(&versions) else { return Ok(()) };
    for entry in entries.filter_map(Result::ok) {
        if entry.file_name().to_str().is_some_and(|name| name.ends_with(".tmp")) {
            let path = entry.path();
            std::fs::remove_dir_all(&path).map_err(io("removing an unfinished copy", &path))?;
            tracing::info!(path = %path.display(), "removed a retained copy a crash left unfinished");
        }
    }
    Ok(())
}

/// (inode, length) of every regular file directly in `dir`. A file removed
/// between the listing and its metadata (RocksDB deletes obsolete files in
/// the background) is left out, not an error.
fn files(dir: &Path) -> Result<Vec<(u64, u64)>, CheckpointError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("listing", dir))? {
        match entry.and_then(|e| e.metadata()) {
            Ok(metadata) if metadata.is_file() => files.push((metadata.ino(), metadata.len())),
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io("reading", dir)(error)),
        }
    }
    Ok(files)
}

/// What the copies of the store in `dir` cost on disk.
pub(crate) fn disk_use(dir: &Path, retained: &[RetainedVersion]) -> Result<RetainedDisk, CheckpointError> {
    let store = files(dir)?;
    let store_bytes = store.iter().map(|(_, len)| len).sum();
    let mut seen: BTreeSet<u64> = store.into_iter().map(|(inode, _)| inode).collect();
    let mut retained_only_bytes = 0;
    for copy in retained {
        for (inode, len) in files(&copy.path)? {
            if seen.insert(inode) {
                retained_only_bytes += len;
            }
        }
    }
    Ok(RetainedDisk { versions: retained.len(), store_bytes, retained_only_bytes })
}

/// Whether to copy a checkpoint made at `now_ms`, the newest copy having
/// been made at `newest_created_ms`: when the policy keeps copies and none
/// was made yet, or the newest is `policy.every_ms` old or more (or dated
/// after `now_ms`: the clock went back, and waiting for it would retain
/// nothing for as long). A copy
/// flushes RocksDB's memtables, which at a checkpoint a second costs more
/// than the checkpoint itself and leaves ten copies only ten seconds of
/// history; spaced copies keep `versions × every_ms` of it.
pub fn retain_due(newest_created_ms: Option<i64>, now_ms: i64, policy: RetainPolicy) -> bool {
    let every = i64::try_from(policy.every_ms).unwrap_or(i64::MAX);
    policy.versions > 0
        && newest_created_ms.is_none_or(|at| {
            let elapsed = now_ms.saturating_sub(at);
            elapsed < 0 || elapsed >= every
        })
}

/// Whether to have RocksDB write its memtables out now, in the background,
/// because a copy will be due within `lead_ms` ([`retain_due`] then but not
/// now): the copy's own flush, which the trainer loop waits for, then finds
/// only what was written after this one (measured with
/// `bench/freshness.sh`: it was the largest stall of a run's trainer
/// thread, 110 ms against a 38 ms checkpoint).
pub fn flush_ahead_due(newest_created_ms: Option<i64>, now_ms: i64, lead_ms: u64, policy: RetainPolicy) -> bool {
    let soon = now_ms.saturating_add(i64::try_from(lead_ms).unwrap_or(i64::MAX));
    !retain_due(newest_created_ms, now_ms, policy) && retain_due(newest_created_ms, soon, policy)
}

/// The version a rollback goes to when none is named (and the automatic
/// rollback's target): the newest retained version the publisher published,
/// the last one serving had that passed the quality gate, or one before it
/// when copies are spaced. `None` when no published version is retained.
pub fn default_target(retained: &[u64], published: u64) -> Option<u64> {
    retained.iter().copied().filter(|&version| version <= published).max()
}

/// The versions to delete from `retained` (version, created ms): of the
/// copies up to `published`, the newest `policy.versions` not older than
/// `policy.max_age_ms` stay, and the newest always; of the newer ones (not
/// published yet: the publisher is behind, or the quality gate holds them),
/// the newest `policy.versions`. With `policy.versions` 0 nothing stays.
pub fn to_prune(retained: &[(u64, i64)], published: u64, now_ms: i64, policy: RetainPolicy) -> Vec<u64> {
    let mut versions: Vec<(u64, i64)> = retained.to_vec();
    versions.sort_unstable();
    if policy.versions == 0 {
        return versions.into_iter().map(|(version, _)| version).collect();
    }
    let (published_ones, newer): (Vec<_>, Vec<_>) = versions.into_iter().partition(|&(v, _)| v <= published);
    let young = |created_ms: i64| policy.max_age_ms.is_none_or(|max| now_ms.saturating_sub(created_ms) <= max as i64);
    let mut prune = Vec::new();
    let newest_published = published_ones.last().map(|&(v, _)| v);
    for (rank, &(version, created_ms)) in published_ones.iter().rev().enumerate() {
        let keep = Some(version) == newest_published || (rank < policy.versions && young(created_ms));
        if !keep {
            prune.push(version);
        }
    }
    prune.extend(newer.iter().rev().skip(policy.versions).map(|&(v, _)| v));
    prune.sort_unstable();
    prune
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP_3: RetainPolicy = RetainPolicy { versions: 3, max_age_ms: None, every_ms: 0 };

    #[test]
    fn names_round_trip_and_others_are_ignored() {
        let name = dir_name(42, 1_700_000_000_123);
        assert_eq!(name, "v00000000000000000042-1700000000123");
        assert_eq!(parse_dir_name(&name), Some((42, 1_700_000_000_123)));
        for other in ["v42-1", "x00000000000000000042-1", "v00000000000000000042-1.tmp", "v00000000000000000042"] {
            assert_eq!(parse_dir_name(other), None, "{other}");
        }
    }

    #[test]
    fn the_newest_published_copies_stay() {
        let copies: Vec<(u64, i64)> = (1..=6).map(|v| (v, 0)).collect();
        // 1..=6 published: the newest three stay.
        assert_eq!(to_prune(&copies, 6, 0, KEEP_3), vec![1, 2, 3]);
        // 5 and 6 wait for the publisher (or the gate): they stay, and three published ones.
        assert_eq!(to_prune(&copies, 4, 0, KEEP_3), vec![1]);
        // Nothing published yet: the newest three waiting ones stay.
        assert_eq!(to_prune(&copies, 0, 0, KEEP_3), vec![1, 2, 3]);
        assert_eq!(
            to_prune(&copies, 6, 0, RetainPolicy { versions: 0, max_age_ms: None, every_ms: 0 }),
            vec![1, 2, 3, 4, 5, 6]
        );
        assert_eq!(to_prune(&[], 6, 0, KEEP_3), Vec::<u64>::new());
    }

    #[test]
    fn old_copies_go_but_never_the_newest_published() {
        let copies = [(1, 1_000), (2, 2_000), (3, 3_000), (4, 9_000)];
        let policy = RetainPolicy { versions: 10, max_age_ms: Some(5_000), every_ms: 0 };
        assert_eq!(to_prune(&copies, 4, 10_000, policy), vec![1, 2, 3]);
        // Every published copy is too old: the newest one stays anyway.
        assert_eq!(to_prune(&copies, 3, 20_000, policy), vec![1, 2]);
        // Copies awaiting the publisher are kept by count only.
        assert_eq!(to_prune(&copies, 2, 20_000, policy), vec![1]);
    }

    #[test]
    fn copies_are_made_at_most_every_every_ms() {
        let policy = RetainPolicy { versions: 10, max_age_ms: None, every_ms: 10_000 };
        assert!(retain_due(None, 5, policy), "the first copy");
        assert!(!retain_due(Some(1_000), 10_999, policy));
        assert!(retain_due(Some(1_000), 11_000, policy));
        assert!(retain_due(Some(1_000), 1_000, RetainPolicy { every_ms: 0, ..policy }), "every checkpoint");
        assert!(retain_due(Some(20_000), 1_000, policy), "the clock went back");
        assert!(!retain_due(None, 5, RetainPolicy { versions: 0, ..policy }), "keeping none");
        assert!(retain_due(Some(i64::MIN), i64::MAX, RetainPolicy { every_ms: u64::MAX, ..policy }));
    }

    #[test]
    fn memtables_are_flushed_ahead_once_a_copy_is_due_within_the_lead() {
        let policy = RetainPolicy { versions: 10, max_age_ms: None, every_ms: 10_000 };
        assert!(!flush_ahead_due(Some(1_000), 5_000, 1_000, policy), "not due within the lead");
        assert!(flush_ahead_due(Some(1_000), 10_000, 1_000, policy), "due at 11,000");
        assert!(flush_ahead_due(Some(1_000), 10_500, 1_000, policy));
        assert!(!flush_ahead_due(Some(1_000), 11_000, 1_000, policy), "due now: the copy flushes itself");
        assert!(!flush_ahead_due(None, 5, 1_000, policy), "the first copy is due at once");
        assert!(!flush_ahead_due(Some(1_000), 10_500, 1_000, RetainPolicy { versions: 0, ..policy }), "keeping none");
        assert!(!flush_ahead_due(Some(1_000), i64::MAX, u64::MAX, policy), "due now, at the clock's end");
    }

    #[test]
    fn a_rollback_goes_to_the_newest_published_copy() {
        assert_eq!(default_target(&[3, 13, 23, 33], 30), Some(23));
        assert_eq!(default_target(&[3, 13, 23, 33], 33), Some(33));
        assert_eq!(default_target(&[3, 13], 2), None);
        assert_eq!(default_target(&[], 9), None);
    }
}
