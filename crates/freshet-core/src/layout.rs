//! Where each parameter sits in a row: the one description of the row
//! layout that the trainer, the checkpoint, snapshots, serving and the docs
//! (docs/snapshots.md) share.
//!
//! Every row starts with its table's scalars, then `dim` factors:
//!
//! | table | slots |
//! |---|---|
//! | user | rating bias, click bias, rating scale `c`, session offset `o`, factors |
//! | item | rating bias, click bias, factors |
//! | feature | rating weight, click weight, factors |

use std::ops::Range;

use crate::model::{Head, ModelSpec, TableKind};

/// The layout of one table's rows for a model of dimension `dim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowLayout {
    table: TableKind,
    dim: usize,
}

/// One slot of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The head's bias (a feature's linear weight for the head).
    Bias(Head),
    /// A user's rating scale offset `c`: the rating head weighs the item's
    /// bias by `1 + c` (timeSVD++'s `c_u`).
    RatingScale,
    /// A user's session offset: a rating bias of the user's current sitting.
    SessionOffset,
    /// Factor `k` of the embedding.
    Factor(usize),
}

impl ModelSpec {
    /// Where each parameter sits in `table`'s rows.
    pub fn layout(&self, table: TableKind) -> RowLayout {
        RowLayout::new(table, self.dim)
    }
}

impl RowLayout {
    /// Where the head biases are, in every table.
    pub const BIASES: Range<usize> = 0..Head::ALL.len();
    /// Position of a user's rating scale offset.
    pub const RATING_SCALE: usize = Head::ALL.len();
    /// Position of a user's session offset.
    pub const SESSION_OFFSET: usize = Head::ALL.len() + 1;

    /// The layout of `table`'s rows with `dim` factors.
    pub const fn new(table: TableKind, dim: usize) -> Self {
        RowLayout { table, dim }
    }

    /// The table.
    pub const fn table(&self) -> TableKind {
        self.table
    }

    /// Position of the head's bias, the same in every table.
    pub const fn bias(head: Head) -> usize {
        head.index()
    }

    /// Floats before the factors: the head biases, and in user rows the
    /// rating scale and session offsets.
    pub const fn scalars(&self) -> usize {
        self.table.scalars()
    }

    /// Floats per row.
    pub const fn width(&self) -> usize {
        self.scalars() + self.dim
    }

    /// Where the factors are.
    pub const fn factors(&self) -> Range<usize> {
        self.scalars()..self.width()
    }

    /// Where `slot` is, if this table's rows have it.
    pub fn position(&self, slot: Slot) -> Option<usize> {
        let user = self.table == TableKind::User;
        match slot {
            Slot::Bias(head) => Some(Self::bias(head)),
            Slot::RatingScale => user.then_some(Self::RATING_SCALE),
            Slot::SessionOffset => user.then_some(Self::SESSION_OFFSET),
            Slot::Factor(k) => (k < self.dim).then_some(self.scalars() + k),
        }
    }

    /// Every slot, in row order.
    pub fn slots(&self) -> impl Iterator<Item = Slot> + use<> {
        let scalars: &'static [Slot] = match self.table {
            TableKind::User => {
                &[Slot::Bias(Head::Rating), Slot::Bias(Head::Click), Slot::RatingScale, Slot::SessionOffset]
            }
            TableKind::Item | TableKind::Feature => &[Slot::Bias(Head::Rating), Slot::Bias(Head::Click)],
        };
        scalars.iter().copied().chain((0..self.dim).map(Slot::Factor))
    }
}

impl Slot {
    /// The slot's name as the docs write it.
    pub fn name(&self) -> String {
        match self {
            Slot::Bias(Head::Rating) => "rating bias".to_owned(),
            Slot::Bias(Head::Click) => "click bias".to_owned(),
            Slot::RatingScale => "rating scale c".to_owned(),
            Slot::SessionOffset => "session offset o".to_owned(),
            Slot::Factor(k) => format!("factor {k}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_in_row_order_and_found_where_they_are() {
        for table in TableKind::ALL {
            let layout = RowLayout::new(table, 8);
            let slots: Vec<Slot> = layout.slots().collect();
            assert_eq!(slots.len(), layout.width());
            for (at, slot) in slots.iter().enumerate() {
                assert_eq!(layout.position(*slot), Some(at), "{table:?} {slot:?}");
            }
            assert_eq!(layout.factors(), layout.scalars()..layout.width());
            assert_eq!(layout.position(Slot::Factor(8)), None);
        }
        let items = RowLayout::new(TableKind::Item, 8);
        assert_eq!((items.position(Slot::RatingScale), items.position(Slot::SessionOffset)), (None, None));
        let users = RowLayout::new(TableKind::User, 8);
        assert_eq!(users.slots().nth(3).map(|s| s.name()), Some("session offset o".to_owned()));
    }
}
