//! Properties: decoding arbitrary bytes never panics, in either format;
//! decoding into keyed events gives exactly the decoded event keyed, or
//! the same rejection and nothing appended.

use freshet_core::{Click, ContentType, Decoder, Features, Feedback, KeyedEvents, Rating, encode};
use proptest::prelude::*;

const NOW: i64 = 1_764_400_000_000;

/// Decodes `payload` both ways (into a sequence already holding an
/// event) and checks they agree.
fn decode_both_ways(payload: &[u8], header: Option<&[u8]>) -> Result<Feedback, freshet_core::Rejection> {
    let decoder = Decoder::default();
    let before = Feedback::Rating(Rating {
        user: "u0".into(),
        item: "i0".into(),
        rating: 1.0,
        ts: 1,
        features: Features::new(),
    });
    let (mut keyed, mut expected) = (KeyedEvents::new(), KeyedEvents::new());
    keyed.push(&before);
    expected.push(&before);
    let decoded = decoder.decode(payload, header, NOW);
    match (&decoded, decoder.decode_into(payload, header, NOW, &mut keyed)) {
        (Ok(event), Ok(())) => expected.push(event),
        (Err(one), Err(other)) => assert_eq!(one, &other, "the same rejection both ways"),
        (one, other) => panic!("decode gave {one:?}, decode_into {other:?}"),
    }
    assert_eq!(keyed, expected, "decode_into appends the decoded event keyed, or nothing");
    decoded
}

/// A JSON string literal of `text`, escaped as serde_json escapes it.
fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("a string encodes")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4_000))]

    #[test]
    fn arbitrary_bytes(payload in proptest::collection::vec(any::<u8>(), 0..512), bincode in any::<bool>()) {
        let header: &[u8] = if bincode { b"application/x-bincode" } else { b"application/json" };
        let _ = decode_both_ways(&payload, Some(header));
    }

    #[test]
    fn json_shaped_text(text in r#"\{("(type|user|item|ts|rating|clicked|features)":("[a-z=]{0,3}"|-?[0-9]{1,20}(\.[0-9])?|true|null|\{\}|\{"[a-c]":"[x\\"]{0,2}"\}),?){0,7}\}"#) {
        let _ = decode_both_ways(text.as_bytes(), None);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    /// Features in any order, names repeated, text with escapes and
    /// non-ASCII: both formats decode them as a map keeps them (name
    /// order, the last value of a name), both ways.
    #[test]
    fn features_in_any_order_decode_as_a_map_holds_them(
        user in "[a-zé\"\\\\]{1,6}",
        item in "[a-z0-9\\n]{1,6}",
        pairs in proptest::collection::vec(("[a-cé]{1,2}", "[a-z;=\"\\\\é]{1,4}"), 0..8),
        clicked in any::<bool>(),
    ) {
        let fields: Vec<String> = pairs.iter().map(|(name, value)| format!("{}:{}", quoted(name), quoted(value))).collect();
        let json = format!(
            r#"{{"type":"click","user":{},"item":{},"clicked":{clicked},"ts":{NOW},"features":{{{}}}}}"#,
            quoted(&user),
            quoted(&item),
            fields.join(","),
        );
        let features: Features = pairs.into_iter().collect();
        let expected = Feedback::Click(Click { user, item, clicked, ts: NOW, features });
        prop_assert_eq!(decode_both_ways(json.as_bytes(), None), Ok(expected.clone()));
        let bincode = encode(&expected, ContentType::Bincode);
        prop_assert_eq!(decode_both_ways(&bincode, Some(ContentType::Bincode.mime().as_bytes())), Ok(expected.clone()));
        let mut keyed = KeyedEvents::new();
        keyed.push(&expected);
        prop_assert_eq!(keyed.iter().next().map(|event| event.to_feedback()), Some(expected), "keyed events give the event back");
    }
}

/// A valid chunk message with rows of every table (some ids non-ASCII, some
/// values beyond f16's range) and tombstones, values in f16 where `half`.
fn chunk_bytes(rows: usize, tombstones: usize, half: bool) -> Vec<u8> {
    use freshet_core::TableKind;
    use freshet_core::snapshot::{SnapshotRow, SnapshotTombstone, ValueEncoding, encode_chunk};
    let rows = (0..rows)
        .map(|n| {
            let table = TableKind::ALL[n % 3];
            let id = table.keeps_ids().then(|| format!("item-é{n}"));
            SnapshotRow {
                table,
                key: n as u64 * 7919,
                id,
                updated_ms: n as i64,
                values: vec![if n % 5 == 4 { 1e6 } else { n as f32 * 0.5 }; 3 + n % 4],
            }
        })
        .collect();
    let rows: Vec<SnapshotRow> = rows;
    let tombstones: Vec<SnapshotTombstone> =
        (0..tombstones).map(|n| SnapshotTombstone { table: TableKind::ALL[n % 3], key: n as u64 }).collect();
    let encoding = if half { ValueEncoding::F16 } else { ValueEncoding::F32 };
    encode_chunk(9, 2, &rows.iter().collect::<Vec<_>>(), &tombstones, encoding)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Snapshot messages: arbitrary bytes behind the magic and format never
    /// panic either decoder, and reading a chunk in place accepts exactly
    /// what decoding accepts, with the same rows.
    #[test]
    fn snapshot_chunks_in_place_and_decoded_agree(
        rows in 0usize..6,
        tombstones in 0usize..4,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        cut in any::<Option<usize>>(),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
        half in any::<bool>(),
    ) {
        use freshet_core::snapshot::{ChunkView, SnapshotMessage, decode_message};
        let mut bytes = chunk_bytes(rows, tombstones, half);
        for (at, value) in flips {
            let at = 6 + at % (bytes.len() - 6);
            bytes[at] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(6 + cut % (bytes.len() - 5));
        }
        if bytes.len() < 12 {
            bytes.extend(tail);
        }
        let decoded = decode_message(&bytes);
        let viewed = ChunkView::parse(&bytes);
        match (&decoded, &viewed) {
            (Ok(SnapshotMessage::Chunk(chunk)), Ok(view)) => {
                let rows: Vec<_> = view.rows().map(|r| (r.table, r.key, r.id.map(str::to_owned), r.updated_ms, r.values.iter().map(f32::to_bits).collect::<Vec<_>>())).collect();
                let expected: Vec<_> = chunk.rows.iter().map(|r| (r.table, r.key, r.id.clone(), r.updated_ms, r.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>())).collect();
                prop_assert_eq!(rows, expected);
                prop_assert_eq!(view.tombstones().collect::<Vec<_>>(), chunk.tombstones.clone());
            }
            (Ok(SnapshotMessage::Chunk(_)), Err(error)) => prop_assert!(false, "decoded, but refused in place: {error}"),
            (Err(_) | Ok(_), Ok(_)) if !matches!(decoded, Ok(SnapshotMessage::Chunk(_))) => {
                prop_assert!(false, "read in place, but decoding gives {decoded:?}");
            }
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4_000))]

    /// Arbitrary bodies behind a valid magic and either readable version:
    /// every snapshot decoder answers, none panics (and no length read from
    /// the body is allocated before the bytes it claims are there).
    #[test]
    fn arbitrary_snapshot_bodies(body in proptest::collection::vec(any::<u8>(), 0..256), version in 3u16..=4, variant in 0u32..4) {
        use freshet_core::snapshot::{ChunkView, decode_chunk_position, decode_commit, decode_message};
        let mut bytes = b"FSNP".to_vec();
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend_from_slice(&variant.to_le_bytes());
        bytes.extend(body);
        let _ = decode_message(&bytes);
        let _ = ChunkView::parse(&bytes);
        let _ = decode_commit(&bytes);
        let _ = decode_chunk_position(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Gradient messages: a valid message with bytes flipped, cut or added
    /// never panics the decoder, and what it accepts encodes back to the
    /// same bytes.
    #[test]
    fn gradient_messages_damaged_never_panic(
        rows in 0usize..5,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        cut in any::<Option<usize>>(),
        tail in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        use freshet_core::grads::{GradientsMessage, decode_gradients, encode_gradients};
        use freshet_core::{Gradients, TableGradients, TableKind};
        let items = TableGradients {
            table: TableKind::Item,
            width: 10,
            keys: (0..rows as u64).collect(),
            ids: (0..rows).map(|n| format!("item-é{n}").into_boxed_str()).collect(),
            events: (0..rows as u32).collect(),
            values: (0..rows * 10).map(|n| n as f32 * 0.25).collect(),
        };
        let gradients = Gradients { clock_ms: 5, tables: vec![items], globals: [0.5, 1.0], global_events: [2, 3] };
        let message = GradientsMessage { sender: 1, shards: 2, version: 9, part: 0, parts: 1, gradients };
        let mut bytes = encode_gradients(&message);
        for (at, byte) in flips {
            let len = bytes.len();
            bytes[at % len] ^= byte;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        bytes.extend(tail);
        if let Ok(decoded) = decode_gradients(&bytes) {
            prop_assert_eq!(encode_gradients(&decoded), bytes);
        }
    }
}
