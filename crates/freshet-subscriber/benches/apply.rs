//! What applying a delta costs a subscriber (prints figures; not a test):
//! builds a served model of U users and I items from a full snapshot, then
//! applies deltas that each change R rows drawn at random (users and items
//! in proportion), each on the version the one before made, as a
//! subscriber does. Prints the time per delta (start, rows, finish) and the
//! rows applied per second.
//!
//!     cargo bench --workspace --bench apply -- [--users U] [--items I] [--rows R] [--deltas N]
//!
//! The defaults are `bench/freshness.sh`'s model and deltas: 100k users,
//! 20k items, ~21k rows changed a delta (250 ms of 50k ratings a second).

use std::time::Instant;

use freshet_core::ModelSpec;
use freshet_core::snapshot::{SnapshotChunk, SnapshotHeader, SnapshotKind, SnapshotMetrics, SnapshotRow, Watermark};
use freshet_core::{TableKind, hash_id};
use freshet_subscriber::{Builder, DEFAULT_CANDIDATES, ServingModel};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Rows per chunk message, about what the publisher packs into one.
const CHUNK_ROWS: usize = 4_000;

fn header(version: u64, kind: SnapshotKind, spec: &ModelSpec, rows: [u64; 3]) -> SnapshotHeader {
    SnapshotHeader {
        model: "bench".to_owned(),
        version,
        kind,
        created_ms: 0,
        watermark: Watermark::default(),
        spec: spec.clone(),
        globals: [3.0, 0.0],
        session_gap_ms: 3_600_000,
        rows,
        tombstones: 0,
        chain_start_offset: None,
        metrics: SnapshotMetrics::default(),
        rollback_to: None,
        shard: 0,
    }
}

fn row(spec: &ModelSpec, table: TableKind, n: u64, noise: &mut StdRng) -> SnapshotRow {
    let id = match table {
        TableKind::Item => format!("i{n}"),
        _ => format!("u{n}"),
    };
    SnapshotRow {
        table,
        key: hash_id(&id),
        id: (table == TableKind::Item).then_some(id),
        updated_ms: 1_764_400_000_000 + n as i64,
        values: (0..spec.row_width(table)).map(|_| noise.random_range(-0.5..0.5)).collect(),
    }
}

/// Applies `rows` as snapshot `header` onto `base` (a full one without it).
fn apply(header: &SnapshotHeader, base: Option<&ServingModel>, rows: Vec<SnapshotRow>) -> ServingModel {
    let mut builder = match (header.kind, base) {
        (SnapshotKind::Delta { .. }, Some(base)) => Builder::delta(header, base).expect("delta"),
        _ => Builder::full(header, base, DEFAULT_CANDIDATES).expect("full"),
    };
    let mut rows = rows.into_iter().peekable();
    let mut index = 0;
    while rows.peek().is_some() {
        let chunk = SnapshotChunk {
            version: header.version,
            index,
            rows: rows.by_ref().take(CHUNK_ROWS).collect(),
            tombstones: Vec::new(),
        };
        builder.apply(&chunk).expect("apply");
        index += 1;
    }
    builder.finish(0)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let (mut users, mut items, mut changed, mut deltas) = (100_000u64, 20_000u64, 21_000usize, 40usize);
    let mut args = std::env::args().skip(1);
    let number = |flag: &str, args: &mut dyn Iterator<Item = String>| {
        args.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or_else(|| panic!("{flag} N"))
    };
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--users" => users = number(&flag, &mut args),
            "--items" => items = number(&flag, &mut args),
            "--rows" => changed = number(&flag, &mut args) as usize,
            "--deltas" => deltas = number(&flag, &mut args) as usize,
            _ => {} // cargo bench passes --bench
        }
    }
    let spec = ModelSpec { context_features: false, ..ModelSpec::default() };
    let mut noise = StdRng::seed_from_u64(7);
    let started = Instant::now();
    let full: Vec<SnapshotRow> = (0..users)
        .map(|n| (TableKind::User, n))
        .chain((0..items).map(|n| (TableKind::Item, n)))
        .map(|(table, n)| row(&spec, table, n, &mut noise))
        .collect();
    let mut model = apply(&header(1, SnapshotKind::Full, &spec, [users, items, 0]), None, full);
    eprintln!("full snapshot of {users} users and {items} items applied in {:.2} s", started.elapsed().as_secs_f64());
    let mut times = Vec::with_capacity(deltas);
    for d in 0..deltas as u64 {
        let version = 2 + d;
        let rows: Vec<SnapshotRow> = (0..changed)
            .map(|_| {
                let n = noise.random_range(0..users + items);
                match n < users {
                    true => row(&spec, TableKind::User, n, &mut noise),
                    false => row(&spec, TableKind::Item, n - users, &mut noise),
                }
            })
            .collect();
        let header = header(version, SnapshotKind::Delta { base_version: version - 1 }, &spec, [0; 3]);
        let started = Instant::now();
        let next = apply(&header, Some(&model), rows);
        times.push(started.elapsed().as_secs_f64() * 1e3);
        // The served version goes after the next is made, as in a subscriber.
        model = next;
        eprint!("\r  delta {}/{deltas}", d + 1);
    }
    eprintln!();
    times.sort_by(f64::total_cmp);
    let median = quantile(&times, 0.5);
    println!(
        "delta apply, {users} users x {items} items, dim {}, {changed} rows a delta, {deltas} deltas: \
         median {median:.2} ms, p90 {:.2} ms, min {:.2} ms ({:.0} rows/s at the median)",
        spec.dim,
        quantile(&times, 0.9),
        times[0],
        changed as f64 / median * 1e3,
    );
}
