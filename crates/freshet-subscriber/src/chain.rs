//! What to do with a snapshot, decided from the version served and the
//! snapshot's header alone: a pure function the follower thread drives, so
//! every branch is tested without a broker.

use std::collections::HashSet;

use freshet_core::snapshot::SnapshotKind;

/// The decision for one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// A full snapshot to serve.
    Full,
    /// A full snapshot of the version served (a publisher restarted): the
    /// same parameters; its chain is the one to follow now.
    Repeat,
    /// A delta on the version served.
    Delta,
    /// Nothing to do.
    Skip(&'static str),
    /// A delta on a version not served: a link is missing. Once the delta
    /// is known complete, look for the newest full snapshot again.
    Broken {
        /// The version it needs.
        base: u64,
    },
}

/// The plan for snapshot `version` of `kind` while `served` is served.
pub(crate) fn plan(served: Option<u64>, kind: SnapshotKind, version: u64) -> Plan {
    match kind {
        SnapshotKind::Full if served == Some(version) => Plan::Repeat,
        SnapshotKind::Full => Plan::Full,
        SnapshotKind::Delta { .. } if served.is_none() => Plan::Skip("no full snapshot served yet"),
        SnapshotKind::Delta { .. } if served.is_some_and(|served| version <= served) => Plan::Skip("already applied"),
        SnapshotKind::Delta { base_version } if Some(base_version) == served => Plan::Delta,
        SnapshotKind::Delta { base_version } => Plan::Broken { base: base_version },
    }
}

/// After a broken chain, where to read from: the newest full snapshot's
/// header offset `newest`, unless it starts the chain already followed or
/// was refused before (then the next full snapshot repairs the chain).
pub(crate) fn reload_from(newest: Option<i64>, following: Option<i64>, refused: &HashSet<i64>) -> Option<i64> {
    newest.filter(|start| Some(*start) != following && !refused.contains(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_goes_to_a_newer_chain_never_to_a_refused_one() {
        let refused = HashSet::from([40]);
        let cases = [
            (Some(50), Some(10), Some(50)),
            (Some(50), None, Some(50)),
            (Some(10), Some(10), None), // the chain followed: wait for the next full snapshot
            (Some(40), Some(10), None), // refused before (damaged or not servable)
            (None, Some(10), None),
        ];
        for (newest, following, expected) in cases {
            assert_eq!(reload_from(newest, following, &refused), expected, "{newest:?} {following:?}");
        }
    }

    #[test]
    fn every_branch() {
        let delta = |base_version| SnapshotKind::Delta { base_version };
        let cases = [
            (None, SnapshotKind::Full, 3, Plan::Full),
            (Some(2), SnapshotKind::Full, 3, Plan::Full),
            (Some(5), SnapshotKind::Full, 3, Plan::Full), // a reset model: served as it is
            (Some(3), SnapshotKind::Full, 3, Plan::Repeat),
            (None, delta(2), 3, Plan::Skip("no full snapshot served yet")),
            (Some(3), delta(2), 3, Plan::Skip("already applied")),
            (Some(4), delta(2), 3, Plan::Skip("already applied")),
            (Some(2), delta(2), 3, Plan::Delta),
            (Some(1), delta(2), 3, Plan::Broken { base: 2 }),
        ];
        for (served, kind, version, expected) in cases {
            assert_eq!(plan(served, kind, version), expected, "served {served:?}, {kind:?} {version}");
        }
    }
}
