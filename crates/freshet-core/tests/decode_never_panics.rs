//! Property: decoding arbitrary bytes never panics, in either format.

use freshet_core::Decoder;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4_000))]

    #[test]
    fn arbitrary_bytes(payload in proptest::collection::vec(any::<u8>(), 0..512), bincode in any::<bool>()) {
        let header: &[u8] = if bincode { b"application/x-bincode" } else { b"application/json" };
        let _ = Decoder::default().decode(&payload, Some(header), 1_764_400_000_000);
    }

    #[test]
    fn json_shaped_text(text in r#"\{("(type|user|item|ts|rating|clicked|features)":("[a-z=]{0,3}"|-?[0-9]{1,20}(\.[0-9])?|true|null|\{\}),?){0,7}\}"#) {
        let _ = Decoder::default().decode(text.as_bytes(), None, 1_764_400_000_000);
    }
}
