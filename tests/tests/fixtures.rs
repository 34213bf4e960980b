//! Old snapshots stay readable: snapshot chains written by earlier builds
//! (a full snapshot and a delta on it, with context features, a forgotten
//! user and several chunks each) are checked in as their Kafka message
//! values, `tests/fixtures/snapshots-<format>.messages`, with the model each
//! must give at each version (`snapshots-<format>.expected.json`): format 3,
//! format 4 with f32 and with f16 values, and formats 5 and 6 (which adds
//! the shard count and the shard), whose chains go on with a rollback's
//! full snapshot (version 3 holding version 1 again). The tests decode and apply them
//! with this build's subscriber, so a change that breaks a snapshot format
//! without a version bump fails CI; a reader refuses versions it does not
//! know, by number.
//!
//! A new format version gets fixture files of its own, named after it, beside
//! the old ones: with the names changed below, `FRESHET_WRITE_FIXTURES=1
//! cargo test --workspace --test fixtures` writes them (an existing file is
//! never overwritten).
//!
//! Messages file: `FSNM`, u32 LE fixture-file version (1), then per message
//! its u32 LE length and value, in topic order (the position in the file is
//! the message's offset).

use std::path::{Path, PathBuf};

use freshet_core::snapshot::{
    ChunkView, FORMAT_VERSION, SnapshotChecksum, SnapshotFormatError, SnapshotKind, SnapshotMessage, ValueEncoding,
    decode_message,
};
use freshet_core::{Features, Head, ScoreContext, TableKind, hash_id};
use freshet_e2e::snapshots::{CONTEXT, ModelUnderTest};
use freshet_publisher::{HeaderContext, encode};
use freshet_subscriber::{Builder, DEFAULT_CANDIDATES, ServingModel};
use serde_json::{Value, json};

const MAGIC: &[u8; 4] = b"FSNM";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// FNV-1a over every row (table, key, value bits) in key order: the whole
/// model in one number.
fn digest(model: &ServingModel) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |bytes: &[u8]| {
        for &byte in bytes {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for table in TableKind::ALL {
        let mut rows: Vec<_> = model.rows(table).map(|(key, _, values)| (key, values)).collect();
        rows.sort_by_key(|(key, _)| *key);
        for (key, values) in rows {
            eat(&[table.index() as u8]);
            eat(&key.to_le_bytes());
            values.iter().for_each(|v| eat(&v.to_bits().to_le_bytes()));
        }
    }
    hash
}

/// What a served version holds, as the expected file writes it.
fn summary(model: &ServingModel) -> Value {
    let row =
        |table, id: &str| model.row(table, hash_id(id)).map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    let mut summary = json!({
        "version": model.version(),
        "rows": TableKind::ALL.map(|table| model.rows(table).count()),
        "globals": model.globals().map(f32::to_bits),
        "digest": digest(model).to_string(),
        "user_u1": row(TableKind::User, "u1"),
        "item_i7": row(TableKind::Item, "i7"),
    });
    if let Some(to) = model.info().rollback_to {
        summary["rollback_to"] = json!(to);
    }
    summary
}

/// Trains a small model with context features, publishes version 1 in full
/// and version 2 as a delta (with a forgotten user), then version 3 in full
/// as a rollback to version 1 (its parameters again), as message values of
/// this build's format with `value_encoding`.
fn write_fixture(messages: &Path, value_encoding: ValueEncoding) {
    let mut model = ModelUnderTest::with_context(11);
    model.train(600);
    let full = model.full(1);
    model.train(300);
    model.forget("u3");
    let delta = model.delta(2);
    let rollback = freshet_publisher::Outgoing { version: 3, ..full.clone() }.rolling_back_to(1);
    let spec = model.trainer.spec().clone();
    let mut values: Vec<Vec<u8>> = Vec::new();
    for (outgoing, chain_start) in [(&full, None), (&delta, Some(0)), (&rollback, None)] {
        let context = HeaderContext {
            model: "fixture",
            spec: &spec,
            shard: 0,
            created_ms: 1_764_400_000_000,
            chain_start_offset: chain_start,
            value_encoding,
        };
        let encoded = encode(outgoing, context, 4096);
        let header_offset = values.len() as i64;
        values.push(encoded.header_value.clone());
        values.extend(encoded.chunks.iter().cloned());
        values.push(encoded.commit_value(chain_start.unwrap_or(header_offset)));
    }
    let mut out = MAGIC.to_vec();
    out.extend(1u32.to_le_bytes());
    for value in &values {
        out.extend(u32::try_from(value.len()).expect("small").to_le_bytes());
        out.extend(value);
    }
    std::fs::write(messages, out).expect("write messages");
}

/// The message values of a messages file, in order.
fn read_messages(file: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(file).expect("the messages fixture");
    assert_eq!(&bytes[..4], MAGIC, "a messages file");
    assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")), 1, "fixture file version");
    let mut rest = &bytes[8..];
    let mut values = Vec::new();
    while !rest.is_empty() {
        let (len, after) = rest.split_at(4);
        let (value, after) = after.split_at(u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize);
        values.push(value.to_vec());
        rest = after;
    }
    values
}

/// Applies the chain the way a subscriber does: each snapshot is served only
/// once its commit arrived with a matching checksum and chunk count. Chunks
/// are read in place (as `Subscriber` does) or, with `decoded`, decoded first.
fn apply_chain(values: &[Vec<u8>], decoded: bool) -> Vec<ServingModel> {
    let mut served: Vec<ServingModel> = Vec::new();
    let mut open: Option<(Builder, SnapshotChecksum, u32)> = None;
    for (offset, value) in values.iter().enumerate() {
        match decode_message(value).unwrap_or_else(|error| panic!("message {offset}: {error}")) {
            SnapshotMessage::Header(header) => {
                let builder = match header.kind {
                    SnapshotKind::Full => Builder::full(&header, served.last(), DEFAULT_CANDIDATES),
                    SnapshotKind::Delta { .. } => Builder::delta(&header, served.last().expect("a base")),
                }
                .expect("a servable header");
                let mut checksum = SnapshotChecksum::new();
                checksum.update(value);
                open = Some((builder, checksum, 0));
            }
            SnapshotMessage::Chunk(chunk) => {
                let (builder, checksum, chunks) = open.as_mut().expect("a header first");
                checksum.update(value);
                *chunks += 1;
                match decoded {
                    true => builder.apply(&chunk),
                    false => builder.apply_view(&ChunkView::parse(value).expect("a chunk in place")),
                }
                .expect("the chunk applies");
            }
            SnapshotMessage::Commit(commit) => {
                let (builder, checksum, chunks) = open.take().expect("a header first");
                assert_eq!((checksum.digest(), chunks), (commit.checksum, commit.chunks), "commit {}", commit.version);
                served.push(builder.finish(commit.chain_start_offset));
            }
        }
    }
    served
}

/// Decodes and applies fixture `name` and compares it with its expected
/// model; with `FRESHET_WRITE_FIXTURES` set, first writes a missing fixture
/// of this build's format (`name` must then be of it).
fn check_fixture(name: &str, value_encoding: ValueEncoding) -> Vec<ServingModel> {
    let messages = fixtures().join(format!("{name}.messages"));
    let expected = fixtures().join(format!("{name}.expected.json"));
    if std::env::var_os("FRESHET_WRITE_FIXTURES").is_some() && !messages.exists() {
        assert!(name.starts_with(&format!("snapshots-v{FORMAT_VERSION}")), "{name} is not of format {FORMAT_VERSION}");
        write_fixture(&messages, value_encoding);
        let served = apply_chain(&read_messages(&messages), false);
        let text = serde_json::to_string_pretty(&served.iter().map(summary).collect::<Vec<_>>()).expect("json");
        std::fs::write(&expected, text + "\n").expect("write expected");
    }
    let values = read_messages(&messages);
    assert!(values.len() > 6, "several chunks per snapshot");
    let served = apply_chain(&values, false);
    let decoded = apply_chain(&values, true);
    assert_eq!(served.iter().map(summary).collect::<Vec<_>>(), decoded.iter().map(summary).collect::<Vec<_>>());
    let expected: Value = serde_json::from_slice(&std::fs::read(&expected).expect("expected")).expect("json");
    assert_eq!(Value::Array(served.iter().map(summary).collect()), expected, "{name}");
    assert!(served[0].row(TableKind::User, hash_id("u3")).is_some(), "u3 trained before version 1");
    assert_eq!(served[1].row(TableKind::User, hash_id("u3")), None, "the forgotten user is gone at version 2");
    served
}

#[test]
fn a_format_3_snapshot_chain_written_by_an_earlier_build_serves_the_same_model() {
    check_fixture("snapshots-v3", ValueEncoding::F32);
}

#[test]
fn format_4_chains_with_f32_and_f16_values_serve_their_models() {
    let exact = check_fixture("snapshots-v4-f32", ValueEncoding::F32);
    let half = check_fixture("snapshots-v4-f16", ValueEncoding::F16);
    let v3 = check_fixture("snapshots-v3", ValueEncoding::F32);
    // Format 4 with f32 serves the very model format 3 did; f16 rounds each
    // value, and moves served scores by less than 1e-3.
    let mut worst = 0.0f32;
    for ((exact, half), v3) in exact.iter().zip(&half).zip(&v3) {
        for n in 0..1_000usize {
            let (user, item) = (format!("u{}", n % 300), format!("i{}", (n * 7) % 200));
            let features: Features = CONTEXT
                .iter()
                .enumerate()
                .map(|(k, (name, values))| ((*name).to_owned(), values[(n + k) % values.len()].to_owned()))
                .collect();
            let context = ScoreContext::new(&features).at(exact.info().newest_event_ms);
            for head in Head::ALL {
                let (a, b) = (exact.score(head, &user, &item, &context), half.score(head, &user, &item, &context));
                worst = worst.max((a - b).abs());
            }
        }
        assert_eq!(summary(exact), summary(v3));
        for table in TableKind::ALL {
            for (key, _, values) in exact.rows(table) {
                let rounded = half.row(table, key).expect("the same rows");
                for (a, b) in values.iter().zip(&rounded) {
                    assert!((a - b).abs() <= a.abs() * 2f32.powi(-11) + 1e-7, "{a} vs {b}");
                }
            }
        }
    }
    assert!(worst < 1e-3, "an f16 snapshot moved a served score by {worst}");
}

#[test]
fn a_format_5_chain_serves_a_rollback_as_a_new_version_of_the_old_parameters() {
    let served = check_fixture("snapshots-v5-f32", ValueEncoding::F32);
    let v4 = check_fixture("snapshots-v4-f32", ValueEncoding::F32);
    assert_eq!(summary(&served[0]), summary(&v4[0]), "format 5 serves what format 4 did");
    assert_eq!(summary(&served[1]), summary(&v4[1]));
    let rollback = &served[2];
    assert_eq!((rollback.version(), rollback.info().rollback_to), (3, Some(1)));
    let (mut restored, mut original) = (summary(rollback), summary(&served[0]));
    for fields in [&mut restored, &mut original] {
        let fields = fields.as_object_mut().expect("an object");
        fields.remove("version");
        fields.remove("rollback_to");
    }
    assert_eq!(restored, original, "version 3 holds version 1's parameters bit for bit");
    assert!(rollback.row(TableKind::User, hash_id("u3")).is_some(), "the forgotten user is back with version 1");
    assert_eq!(served[0].info().rollback_to, None);
}

/// The header (the first message) of fixture `name`, decoded.
fn first_header(name: &str) -> freshet_core::snapshot::SnapshotHeader {
    match decode_message(&read_messages(&fixtures().join(format!("{name}.messages"))).remove(0)) {
        Ok(SnapshotMessage::Header(header)) => *header,
        other => panic!("{name}: the first message is not a header: {other:?}"),
    }
}

#[test]
fn a_format_6_chain_names_its_shard_and_serves_what_format_5_did() {
    let served = check_fixture("snapshots-v6-f32", ValueEncoding::F32);
    let v5 = check_fixture("snapshots-v5-f32", ValueEncoding::F32);
    assert_eq!(served.len(), v5.len());
    for (new, old) in served.iter().zip(&v5) {
        assert_eq!(summary(new), summary(old), "version {}", new.version());
    }
    let header = first_header("snapshots-v6-f32");
    assert_eq!((header.spec.shards, header.shard), (1, 0), "an unsharded model is shard 0 of 1");
    let old = first_header("snapshots-v5-f32");
    assert_eq!((old.spec.shards, old.shard), (1, 0), "format 5 read as shard 0 of 1");
    assert_eq!(header.spec, old.spec);
}

#[test]
fn a_snapshot_of_an_unknown_format_version_is_refused_by_number() {
    let mut header = read_messages(&fixtures().join("snapshots-v3.messages")).remove(0);
    header[4..6].copy_from_slice(&99u16.to_le_bytes());
    let error = decode_message(&header).expect_err("refused");
    assert_eq!(error, SnapshotFormatError::UnsupportedVersion(99));
    assert!(error.to_string().contains("99"), "{error}");
}
