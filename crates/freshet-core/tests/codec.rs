//! Decoding and validation of feedback messages: every rule, both formats.

use freshet_core::synth::{Expected, SynthConfig, SynthStream};
use freshet_core::{
    Click, ContentType, Decoder, Features, Feedback, Forget, Rating, RejectReason, ValidationConfig, encode,
};

const NOW: i64 = 1_764_400_000_000;

fn decode_json(text: &str) -> Result<Feedback, RejectReason> {
    Decoder::default().decode(text.as_bytes(), None, NOW).map_err(|e| e.reason())
}

fn reason_of(text: &str) -> RejectReason {
    decode_json(text).expect_err("must be rejected")
}

#[test]
fn documented_examples_decode() {
    let click = decode_json(
        r#"{"type":"click","user":"u1","item":"i9","clicked":true,"ts":1764400000000,"features":{"device":"ios"}}"#,
    );
    assert_eq!(
        click,
        Ok(Feedback::Click(Click {
            user: "u1".into(),
            item: "i9".into(),
            clicked: true,
            ts: NOW,
            features: Features::from([("device".into(), "ios".into())]),
        }))
    );
    let rating = decode_json(r#"{"type":"rating","user":"u1","item":"i9","rating":4.5,"ts":1764400000000}"#);
    assert_eq!(
        rating,
        Ok(Feedback::Rating(Rating {
            user: "u1".into(),
            item: "i9".into(),
            rating: 4.5,
            ts: NOW,
            features: Features::new(),
        }))
    );
    let forget = decode_json(r#"{"type":"forget","user":"u1","ts":1764400000000}"#);
    assert_eq!(forget, Ok(Feedback::Forget(Forget { user: "u1".into(), ts: NOW })));
}

#[test]
fn unknown_fields_are_ignored_and_clicked_accepts_integers() {
    let event = decode_json(
        r#"{"type":"click","user":"u1","item":"i9","clicked":0,"ts":1764400000000,"session":"s1","extra":{"a":[1,2]}}"#,
    )
    .expect("valid");
    let Feedback::Click(click) = event else { panic!("not a click: {event:?}") };
    assert!(!click.clicked);
    assert_eq!(
        reason_of(r#"{"type":"click","user":"u1","item":"i9","clicked":2,"ts":1}"#),
        RejectReason::MalformedJson
    );
}

#[test]
fn escaped_strings_decode() {
    let event = decode_json(r#"{"type":"forget","user":"u\u00e9\n","ts":1764400000000}"#).expect("valid");
    assert_eq!(event.user(), "u\u{e9}\n");
}

#[test]
fn each_rule_has_its_own_reason() {
    let cases = [
        (r#"{"type":"click","item":"i","clicked":true,"ts":1}"#, RejectReason::MissingId),
        (r#"{"type":"click","user":"u","item":"","clicked":true,"ts":1}"#, RejectReason::MissingId),
        (r#"{"type":"rating","user":"u","item":"i","ts":1}"#, RejectReason::MissingField),
        (r#"{"type":"click","user":"u","item":"i","ts":1}"#, RejectReason::MissingField),
        (r#"{"type":"rating","user":"u","item":"i","rating":5.5,"ts":1}"#, RejectReason::RatingOutOfRange),
        (r#"{"type":"rating","user":"u","item":"i","rating":0.0,"ts":1}"#, RejectReason::RatingOutOfRange),
        (r#"{"type":"purchase","user":"u","ts":1}"#, RejectReason::UnknownType),
        (r#"{"user":"u","ts":1}"#, RejectReason::UnknownType),
        (r#"{"type":"forget","user":"u"}"#, RejectReason::MissingTimestamp),
        (r#"{"type":"forget","user":"u","ts":0}"#, RejectReason::TimestampOutOfRange),
        (r#"{"type":"forget","user":"u","ts":9999999999999}"#, RejectReason::TimestampOutOfRange),
        (r#"{"type":"forget","user":"u","ts":1.5}"#, RejectReason::MalformedJson),
        (r#"{"type":"forget","user":"#, RejectReason::MalformedJson),
        (r#"[1,2,3]"#, RejectReason::MalformedJson),
        (
            r#"{"type":"click","user":"u","item":"i","clicked":true,"ts":1,"features":{"a=b":"c"}}"#,
            RejectReason::InvalidFeature,
        ),
        (
            r#"{"type":"click","user":"u","item":"i","clicked":true,"ts":1,"features":{"a":""}}"#,
            RejectReason::InvalidFeature,
        ),
        (
            r#"{"type":"click","user":"u","item":"i","clicked":true,"ts":1,"features":{"a":1}}"#,
            RejectReason::MalformedJson,
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(reason_of(text), expected, "payload {text}");
    }
    let long_id = format!(r#"{{"type":"forget","user":"{}","ts":1}}"#, "x".repeat(257));
    assert_eq!(reason_of(&long_id), RejectReason::IdTooLong);
    let just_fits = format!(r#"{{"type":"forget","user":"{}","ts":1}}"#, "x".repeat(256));
    assert!(decode_json(&just_fits).is_ok());
}

#[test]
fn limits_on_size_features_and_encoding() {
    let decoder = Decoder::new(ValidationConfig { max_message_bytes: 40, max_features: 1, ..Default::default() });
    let big = br#"{"type":"forget","user":"u","ts":1,"pad":"xxxxxxxx"}"#;
    assert_eq!(decoder.decode(big, None, NOW).map_err(|e| e.reason()), Err(RejectReason::TooLarge));
    let decoder = Decoder::new(ValidationConfig { max_features: 1, ..Default::default() });
    let with_two = br#"{"type":"click","user":"u","item":"i","clicked":true,"ts":1,"features":{"a":"1","b":"2"}}"#;
    assert_eq!(decoder.decode(with_two, None, NOW).map_err(|e| e.reason()), Err(RejectReason::TooManyFeatures));
    let bad_utf8 = b"{\"type\":\"forget\",\"user\":\"\xff\",\"ts\":1}";
    assert_eq!(decoder.decode(bad_utf8, None, NOW).map_err(|e| e.reason()), Err(RejectReason::InvalidUtf8));
}

#[test]
fn timestamp_window_follows_configuration() {
    let decoder =
        Decoder::new(ValidationConfig { max_future_skew_ms: 1_000, max_age_ms: Some(60_000), ..Default::default() });
    let at = |ts: i64| {
        let text = format!(r#"{{"type":"forget","user":"u","ts":{ts}}}"#);
        decoder.decode(text.as_bytes(), None, NOW).map(|_| ()).map_err(|e| e.reason())
    };
    assert_eq!(at(NOW + 1_000), Ok(()));
    assert_eq!(at(NOW + 1_001), Err(RejectReason::TimestampOutOfRange));
    assert_eq!(at(NOW - 60_000), Ok(()));
    assert_eq!(at(NOW - 60_001), Err(RejectReason::TimestampOutOfRange));
}

/// A forwarded event was judged on time by the shard that read it: its
/// owner, later and with another clock, checks every other rule again but
/// not the window.
#[test]
fn a_forwarded_event_is_not_judged_on_time_again() {
    let decoder =
        Decoder::new(ValidationConfig { max_future_skew_ms: 1_000, max_age_ms: Some(60_000), ..Default::default() });
    let forwarded = |text: &str| decoder.decode_forwarded(text.as_bytes(), None).map(|_| ()).map_err(|e| e.reason());
    let old = format!(r#"{{"type":"click","user":"u","item":"i","clicked":true,"ts":{}}}"#, NOW - 3_600_000);
    assert_eq!(
        decoder.decode(old.as_bytes(), None, NOW).map_err(|e| e.reason()),
        Err(RejectReason::TimestampOutOfRange)
    );
    assert_eq!(forwarded(&old), Ok(()));
    assert_eq!(forwarded(r#"{"type":"forget","user":"u","ts":0}"#), Err(RejectReason::TimestampOutOfRange));
    assert_eq!(
        forwarded(r#"{"type":"click","user":"","item":"i","clicked":true,"ts":5}"#),
        Err(RejectReason::MissingId)
    );
    assert_eq!(forwarded(r#"{"type":"click","user":"u","#), Err(RejectReason::MalformedJson));
}

#[test]
fn content_type_header_selects_the_format() {
    let event = Feedback::Rating(Rating {
        user: "u1".into(),
        item: "i2".into(),
        rating: 3.5,
        ts: NOW,
        features: Features::from([("page".into(), "home".into())]),
    });
    let decoder = Decoder::default();
    for format in [ContentType::Json, ContentType::Bincode] {
        let bytes = encode(&event, format);
        let header = format.mime().as_bytes();
        assert_eq!(decoder.decode(&bytes, Some(header), NOW), Ok(event.clone()), "{format:?}");
    }
    let json = encode(&event, ContentType::Json);
    assert_eq!(decoder.decode(&json, None, NOW), Ok(event.clone()));
    assert_eq!(decoder.decode(&json, Some(b"application/json; charset=utf-8"), NOW), Ok(event.clone()));
    let as_bincode = decoder.decode(&json, Some(b"application/x-bincode"), NOW);
    assert_eq!(as_bincode.map_err(|e| e.reason()), Err(RejectReason::MalformedBincode));
    let other = decoder.decode(&json, Some(b"text/csv"), NOW);
    assert_eq!(other.map_err(|e| e.reason()), Err(RejectReason::UnsupportedContentType));
}

#[test]
fn bincode_events_are_validated_like_json() {
    let nan = Feedback::Rating(Rating {
        user: "u".into(),
        item: "i".into(),
        rating: f32::NAN,
        ts: NOW,
        features: Features::new(),
    });
    let empty_item = Feedback::Click(Click {
        user: "u".into(),
        item: String::new(),
        clicked: true,
        ts: NOW,
        features: Features::new(),
    });
    let decoder = Decoder::default();
    let decode = |event: &Feedback| {
        let bytes = encode(event, ContentType::Bincode);
        decoder.decode(&bytes, Some(b"application/x-bincode"), NOW).map_err(|e| e.reason())
    };
    assert_eq!(decode(&nan), Err(RejectReason::NonFinite));
    assert_eq!(decode(&empty_item), Err(RejectReason::MissingId));
    let mut trailing = encode(&empty_item, ContentType::Bincode);
    trailing.push(0);
    let trailing = decoder.decode(&trailing, Some(b"application/x-bincode"), NOW);
    assert_eq!(trailing.map_err(|e| e.reason()), Err(RejectReason::MalformedBincode));
}

#[test]
fn synthetic_stream_labels_match_the_decoder() {
    let cfg = SynthConfig { invalid_rate: 0.3, bincode_share: 0.3, forget_share: 0.05, ..Default::default() };
    let decoder = Decoder::default();
    let mut seen = std::collections::BTreeSet::new();
    for message in SynthStream::new(cfg).take(3_000) {
        let got = decoder.decode(&message.payload, message.content_type.as_deref().map(str::as_bytes), NOW);
        match (message.expected, got) {
            (Expected::Valid(kind), Ok(event)) => assert_eq!(event.kind(), kind),
            (Expected::Invalid(reason), Err(rejection)) => {
                assert_eq!(rejection.reason(), reason, "{rejection}");
                seen.insert(reason);
            }
            (expected, got) => panic!("expected {expected:?}, got {got:?}"),
        }
    }
    assert_eq!(seen.len(), RejectReason::OF_EVENTS.len(), "every reason of an event is generated");
}

#[test]
fn synthetic_stream_is_deterministic() {
    let a: Vec<_> = SynthStream::new(SynthConfig::default()).take(500).map(|m| m.payload).collect();
    let b: Vec<_> = SynthStream::new(SynthConfig::default()).take(500).map(|m| m.payload).collect();
    let c: Vec<_> =
        SynthStream::new(SynthConfig { seed: 7, ..Default::default() }).take(500).map(|m| m.payload).collect();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn configuration_errors_name_the_key() {
    let bad = ValidationConfig { max_age_ms: Some(0), ..Default::default() };
    assert_eq!(bad.check().expect_err("invalid").key, "validation.max_age_ms");
    assert!(ValidationConfig::default().check().is_ok());
}

/// The events of `tests/fixtures/events.hex`, in its order.
fn fixture_events() -> Vec<Feedback> {
    let features = Features::from([("device".into(), "ios".into()), ("pagé".into(), "home;x=1".into())]);
    vec![
        Feedback::Click(Click { user: "u1".into(), item: "i9".into(), clicked: true, ts: NOW, features }),
        Feedback::Rating(Rating {
            user: "ü2".into(),
            item: "i3".into(),
            rating: 4.5,
            ts: NOW,
            features: Features::new(),
        }),
        Feedback::Forget(Forget { user: "u1".into(), ts: NOW }),
    ]
}

/// Both wire formats against bytes checked in (`tests/fixtures/events.hex`:
/// one `format hex` line per message, written by this encoder when the file
/// was made): each line decodes to its event, and encoding the event gives
/// the line's bytes again. A change to either format fails here first.
#[test]
fn checked_in_messages_decode_and_encode_byte_for_byte() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/events.hex")).expect("fixture");
    let lines: Vec<(&str, Vec<u8>)> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let (format, hex) = line.split_once(' ').expect("format hex");
            let bytes =
                (0..hex.len()).step_by(2).map(|at| u8::from_str_radix(&hex[at..at + 2], 16).expect("hex")).collect();
            (format, bytes)
        })
        .collect();
    let events = fixture_events();
    assert_eq!(lines.len(), 2 * events.len(), "each event in both formats");
    let mut keyed = freshet_core::KeyedEvents::new();
    for ((format, bytes), event) in lines.iter().zip(events.iter().flat_map(|e| [e, e])) {
        let format = if *format == "json" { ContentType::Json } else { ContentType::Bincode };
        let header = Some(format.mime().as_bytes());
        assert_eq!(Decoder::default().decode(bytes, header, NOW).as_ref(), Ok(event), "{format:?}");
        Decoder::default().decode_into(bytes, header, NOW, &mut keyed).expect("decodes keyed");
        assert_eq!(keyed.iter().last().map(|e| e.to_feedback()).as_ref(), Some(event), "{format:?} keyed");
        assert_eq!(&encode(event, format), bytes, "{format:?} encodes as checked in");
    }
}

/// Writes `tests/fixtures/events.hex` if it is absent (an existing file is
/// never overwritten): `cargo test -p freshet-core --test codec -- --ignored`.
#[test]
#[ignore = "writes the fixture once; the checked-in file is the test's input"]
fn write_events_fixture() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/events.hex");
    if std::path::Path::new(path).exists() {
        return;
    }
    let mut text = String::from("# freshet feedback messages: `format hex` per line (docs/events.md)\n");
    for event in fixture_events() {
        for (name, format) in [("json", ContentType::Json), ("bincode", ContentType::Bincode)] {
            let hex: String = encode(&event, format).iter().map(|b| format!("{b:02x}")).collect();
            text.push_str(&format!("{name} {hex}\n"));
        }
    }
    std::fs::write(path, text).expect("fixture written");
}
