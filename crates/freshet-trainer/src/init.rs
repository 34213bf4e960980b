//! Initial values of a new row. They depend only on the seed, the table and
//! the key — not on arrival order — so a replay or a re-admitted id starts
//! from the same point, on every platform (integer arithmetic only).

use freshet_core::TableKind;

/// Fills `row` with zero scalars (its table's first [`TableKind::scalars`]
/// values) and factors uniform in `[−√3·std, √3·std]` (standard deviation `std`).
pub(crate) fn init_row(seed: u64, table: TableKind, key: u64, std: f32, row: &mut [f32]) {
    let mut state = seed ^ key.rotate_left(17) ^ (table.index() as u64).wrapping_mul(0xa076_1d64_78bd_642f);
    let half_width = 3.0f32.sqrt() * std;
    let (scalars, factors) = row.split_at_mut(table.scalars());
    scalars.fill(0.0);
    for value in factors {
        // 24 random bits → uniform in [0, 1).
        let unit = (splitmix64(&mut state) >> 40) as f32 / (1u64 << 24) as f32;
        *value = (2.0 * unit - 1.0) * half_width;
    }
}

/// One SplitMix64 step.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_on_seed_table_and_key_only() {
        let draw = |seed, table, key| {
            let mut row = [1.0f32; 36];
            init_row(seed, table, key, 0.1, &mut row);
            row
        };
        assert_eq!(draw(1, TableKind::User, 7), draw(1, TableKind::User, 7));
        assert_ne!(draw(1, TableKind::User, 7), draw(1, TableKind::Item, 7));
        assert_ne!(draw(1, TableKind::User, 7), draw(2, TableKind::User, 7));
        let row = draw(1, TableKind::User, 7);
        assert_eq!(row[..4], [0.0; 4], "a user row's scalars start at 0");
        let bound = 3.0f32.sqrt() * 0.1;
        assert!(row[4..].iter().all(|x| x.abs() <= bound && *x != 1.0));
        let mean = row[4..].iter().sum::<f32>() / 32.0;
        assert!(mean.abs() < 0.1);
    }
}
