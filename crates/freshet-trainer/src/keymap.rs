//! Hash maps keyed by the 64-bit ids. The keys are XXH3 hashes already, so the
//! maps use them as their own hash instead of hashing them again.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A hasher that passes a `u64` key through unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; this keeps any other use correct.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

type BuildIdentity = BuildHasherDefault<IdentityHasher>;

/// A map from a 64-bit id key.
pub(crate) type KeyMap<V> = HashMap<u64, V, BuildIdentity>;

/// A set of 64-bit id keys.
pub(crate) type KeySet = HashSet<u64, BuildIdentity>;
