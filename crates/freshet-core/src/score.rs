//! The one scoring function. The trainer scores every event with it (its
//! progressive metrics and gradients come from these numbers), serving
//! answers every request with it: the same f32 operations in the same order,
//! so a served score equals the trainer's prediction bit for bit.
//!
//! For head `h`, a user row `u`, feature rows `f₁…fₙ` (in the event's
//! feature order, by name) and an item row `i`:
//!
//! ```text
//! constant = ((global[h] + u.bias[h]) + o) + f₁.bias[h] + … + fₙ.bias[h]
//! weight   = 1 + u.scale                      (rating head; 1 for clicks)
//! vector   = u.factors + f₁.factors + … + fₙ.factors
//! raw      = (constant + weight · i.bias[h]) + dot(vector, i.factors)
//! ```
//!
//! `o` is the user's session offset on the rating head while the session is
//! active ([`session_active`]), else nothing is added. A missing user adds
//! nothing and leaves `weight = 1` and `vector = 0 + Σ f.factors`; a missing
//! item gives `raw = constant`. `dot` is [`crate::kernels::dot`]. A head
//! predicts from `raw` with [`Head::predict`].
//!
//! ```
//! use freshet_core::score::{ScoreContext, UserTerms, item_score, query};
//! use freshet_core::{Features, Head};
//!
//! // dim 8: a user row is 4 scalars + 8 factors, an item row 2 + 8.
//! let user = [0.5, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
//! let item = [0.25, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
//! let mut vector = [0.0; 8];
//! let terms = query(Head::Rating, 3.0, Some(UserTerms::new(&user, true)), [], &mut vector);
//! assert_eq!(item_score(&terms, &vector, Some(&item)), 3.0 + 0.5 + 0.25 + 2.0);
//! let _any_context = ScoreContext::new(&Features::new()).at(1_764_400_000_000);
//! ```

use crate::event::Features;
use crate::kernels::{axpy, dot};
use crate::layout::RowLayout;
use crate::model::{Head, TableKind};

/// What a score is asked in: the request's context features and its time.
#[derive(Debug, Clone, Copy)]
pub struct ScoreContext<'a> {
    /// ScoreContext features, `name → value`. Features the model has no row for
    /// score with zero parameters, as in training.
    pub features: &'a Features,
    /// When the request happens (ms since the epoch), for the session rule.
    /// `None` scores as of the model's own time: the session offset applies.
    pub at_ms: Option<i64>,
}

/// A context without features.
pub static NO_FEATURES: Features = Features::new();

impl<'a> ScoreContext<'a> {
    /// `features`, as of the model's own time.
    pub fn new(features: &'a Features) -> Self {
        ScoreContext { features, at_ms: None }
    }

    /// No features, as of the model's own time.
    pub fn none() -> ScoreContext<'static> {
        ScoreContext { features: &NO_FEATURES, at_ms: None }
    }

    /// The same context at time `at_ms`.
    pub fn at(self, at_ms: i64) -> Self {
        ScoreContext { at_ms: Some(at_ms), ..self }
    }

    /// Whether a user last updated at `updated_ms` is still in the session
    /// its offset belongs to, for a model whose sessions end after `gap_ms`.
    pub fn session_active(&self, updated_ms: i64, gap_ms: i64) -> bool {
        self.at_ms.is_none_or(|at| session_active(updated_ms, at, gap_ms))
    }
}

/// The session rule: an event at `at_ms` continues the session of a user
/// last updated at `updated_ms` unless more than `gap_ms` passed. The
/// trainer restarts the session offset at 0 when it does not; serving then
/// leaves the offset out.
pub fn session_active(updated_ms: i64, at_ms: i64, gap_ms: i64) -> bool {
    at_ms.saturating_sub(updated_ms) <= gap_ms
}

/// A user row as a score reads it.
#[derive(Debug, Clone, Copy)]
pub struct UserTerms<'a> {
    values: &'a [f32],
    session: bool,
}

impl<'a> UserTerms<'a> {
    /// A user row (see [`RowLayout`]) and whether its session is active.
    pub fn new(values: &'a [f32], session: bool) -> Self {
        UserTerms { values, session }
    }
}

/// The item-independent part of a head's score: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueryTerms {
    /// The head scored.
    pub head: Head,
    /// Global, user and feature biases.
    pub constant: f32,
    /// What the item's bias is multiplied by.
    pub item_bias_weight: f32,
}

/// The terms of a score that do not depend on the item, leaving the
/// query vector `u.factors + Σ f.factors` in `vector` (length `dim`).
pub fn query<'r>(
    head: Head,
    global: f32,
    user: Option<UserTerms<'_>>,
    features: impl IntoIterator<Item = &'r [f32]>,
    vector: &mut [f32],
) -> QueryTerms {
    let h = RowLayout::bias(head);
    let mut constant = global;
    let mut item_bias_weight = 1.0;
    match user {
        Some(user) => {
            constant += user.values[h];
            if head == Head::Rating {
                if user.session {
                    constant += user.values[RowLayout::SESSION_OFFSET];
                }
                item_bias_weight += user.values[RowLayout::RATING_SCALE];
            }
            vector.copy_from_slice(&user.values[TableKind::User.scalars()..]);
        }
        None => vector.fill(0.0),
    }
    for feature in features {
        constant += feature[h];
        axpy(1.0, &feature[TableKind::Feature.scalars()..], vector);
    }
    QueryTerms { head, constant, item_bias_weight }
}

/// The raw score of `item` (an item row, `None` when the model has none)
/// for a query made by [`query`] with `vector`.
#[inline]
pub fn item_score(terms: &QueryTerms, vector: &[f32], item: Option<&[f32]>) -> f32 {
    match item {
        Some(item) => {
            let (biases, factors) = item.split_at(TableKind::Item.scalars());
            (terms.constant + terms.item_bias_weight * biases[RowLayout::bias(terms.head)]) + dot(vector, factors)
        }
        None => terms.constant,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIM: usize = 8;

    fn user(bias: [f32; 2], scale: f32, session: f32, factor: f32) -> Vec<f32> {
        let mut row = vec![bias[0], bias[1], scale, session];
        row.extend([factor; DIM]);
        row
    }

    fn row(bias: [f32; 2], factor: f32) -> Vec<f32> {
        let mut row = bias.to_vec();
        row.extend([factor; DIM]);
        row
    }

    #[test]
    fn the_rating_head_adds_the_session_offset_and_scales_the_item_bias() {
        let (u, i, f) = (user([0.5, 0.25], 1.0, 0.125, 0.5), row([0.25, 1.0], 0.25), row([0.5, 2.0], 0.5));
        let mut vector = [0.0; DIM];
        let terms = query(Head::Rating, 3.0, Some(UserTerms::new(&u, true)), [f.as_slice()], &mut vector);
        assert_eq!(vector, [1.0; DIM], "user factors + feature factors");
        // ((3 + 0.5) + 0.125) + 0.5, then + (1 + 1)·0.25, then + 8·(1·0.25)
        assert_eq!(item_score(&terms, &vector, Some(&i)), 4.125 + 0.5 + 2.0);
        let expired = query(Head::Rating, 3.0, Some(UserTerms::new(&u, false)), [f.as_slice()], &mut vector);
        assert_eq!(terms.constant - expired.constant, 0.125, "an ended session's offset is left out");
        let click = query(Head::Click, -1.0, Some(UserTerms::new(&u, true)), [f.as_slice()], &mut vector);
        assert_eq!((click.constant, click.item_bias_weight), (-1.0 + 0.25 + 2.0, 1.0));
        assert_eq!(item_score(&click, &vector, Some(&i)), 1.25 + 1.0 + 2.0);
    }

    #[test]
    fn missing_rows_score_with_zero_parameters() {
        let f = row([0.5, 0.0], 0.5);
        let mut vector = [9.0; DIM];
        let terms = query(Head::Rating, 3.0, None, [f.as_slice()], &mut vector);
        assert_eq!((terms.constant, terms.item_bias_weight, vector), (3.5, 1.0, [0.5; DIM]));
        assert_eq!(item_score(&terms, &vector, None), 3.5, "an unknown item adds nothing");
    }

    #[test]
    fn sessions_end_after_the_gap() {
        assert!(session_active(1_000, 1_000 + 3_600_000, 3_600_000));
        assert!(!session_active(1_000, 1_001 + 3_600_000, 3_600_000));
        assert!(session_active(1_000, 0, 3_600_000), "an older request never ends the session");
        let features = Features::new();
        assert!(ScoreContext::new(&features).session_active(0, 1), "no time: as of the model");
        assert!(!ScoreContext::new(&features).at(10).session_active(0, 1));
    }
}
