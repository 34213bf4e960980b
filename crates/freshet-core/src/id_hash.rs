//! The stable 64-bit id hash: XXH3-64 of the id's UTF-8 bytes with a fixed
//! seed. Subscribers in any language reproduce it with an XXH3 library (test
//! vectors in docs/id-hash.md).

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The seed: the ASCII bytes of `freshet!` read as a big-endian u64.
pub const ID_HASH_SEED: u64 = 0x6672_6573_6865_7421;

/// Separates a feature's name from its value in the hashed feature key.
/// Feature names may not contain it (validation rejects them).
pub const FEATURE_SEPARATOR: char = '=';

/// The 64-bit key of a user or item id.
pub fn hash_id(id: &str) -> u64 {
    xxh3_64_with_seed(id.as_bytes(), ID_HASH_SEED)
}

/// The 64-bit key of a categorical feature `name=value`.
pub fn hash_feature(name: &str, value: &str) -> u64 {
    append_feature(&mut String::with_capacity(name.len() + value.len() + 1), name, value)
}

/// Appends `name=value` to `text` and returns that feature's key: the one
/// rule for a feature key, which [`hash_feature`] and keyed events
/// ([`crate::KeyedEvents`], keeping the text) share.
pub fn append_feature(text: &mut String, name: &str, value: &str) -> u64 {
    let from = text.len();
    text.push_str(name);
    text.push(FEATURE_SEPARATOR);
    text.push_str(value);
    hash_id(&text[from..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_before_the_feature_leaves_its_key_alone() {
        let mut buffer = String::from("left over");
        for (name, value) in [("device", "ios"), ("page", ""), ("lang", "pt=BR")] {
            assert_eq!(append_feature(&mut buffer, name, value), hash_feature(name, value));
        }
    }

    /// The vectors published in docs/id-hash.md (cross-checked with Python's
    /// `xxhash.xxh3_64_intdigest(data, seed=0x6672657368657421)`).
    #[test]
    fn matches_published_vectors() {
        for (id, expected) in published_vectors() {
            assert_eq!(hash_id(id), expected, "id {id:?}");
        }
    }

    #[test]
    fn feature_key_is_hash_of_joined_text() {
        assert_eq!(hash_feature("device", "ios"), hash_id("device=ios"));
        assert_ne!(hash_feature("device", "ios"), hash_feature("device", "web"));
    }

    fn published_vectors() -> Vec<(&'static str, u64)> {
        include_str!("../../../docs/id-hash-vectors.txt")
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .map(|line| {
                let (hex, id) = line.split_once(' ').expect("vector line is `HEX ID`");
                let id = id.strip_prefix('"').and_then(|s| s.strip_suffix('"')).expect("quoted id");
                (id, u64::from_str_radix(hex, 16).expect("hex hash"))
            })
            .collect()
    }
}
