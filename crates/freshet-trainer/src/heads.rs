//! The two heads sharing the embeddings: ratings with squared loss and clicks
//! with logistic loss. Each head has its own global bias and its own bias in
//! every row (a rating offset and a click propensity live on different
//! scales); the factors are shared. How a head scores is
//! [`freshet_core::score`], shared with serving.

use freshet_core::ModelSpec;

use freshet_core::Head;
pub(crate) use freshet_core::model::sigmoid;

/// The training side of a head: its loss, the loss's gradient and the
/// global bias a fresh model starts with.
pub(crate) trait HeadLoss {
    /// The head's loss at raw score `score` for target `target` (a rating,
    /// or 0/1): what [`HeadLoss::gradient`] is checked against, in tests.
    #[cfg(test)]
    fn loss(self, score: f32, target: f32) -> f32;
    /// Derivative of [`HeadLoss::loss`] with respect to the raw score.
    fn gradient(self, score: f32, target: f32) -> f32;
    /// The global bias a fresh model starts with.
    fn initial_global(self, spec: &ModelSpec) -> f32;
}

impl HeadLoss for Head {
    /// Squared loss `½(s − y)²` for ratings, logistic loss on the logit for clicks.
    #[cfg(test)]
    fn loss(self, score: f32, target: f32) -> f32 {
        match self {
            Head::Rating => 0.5 * (score - target) * (score - target),
            // log(1 + e^s) − y·s, computed without overflow.
            Head::Click => score.max(0.0) + (-score.abs()).exp().ln_1p() - target * score,
        }
    }

    fn gradient(self, score: f32, target: f32) -> f32 {
        match self {
            Head::Rating => score - target,
            Head::Click => sigmoid(score) - target,
        }
    }

    /// The middle of the rating range, or an even click chance.
    fn initial_global(self, spec: &ModelSpec) -> f32 {
        match self {
            Head::Rating => 0.5 * (spec.rating_min + spec.rating_max),
            Head::Click => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The analytic derivative of each loss against a central finite difference.
    #[test]
    fn loss_gradients_match_finite_differences() {
        let h = 1e-2f32;
        for head in Head::ALL {
            for (score, target) in [(0.3f32, 1.0f32), (-2.0, 0.0), (4.5, 1.0), (1.7, 4.0)] {
                let numeric = (f64::from(head.loss(score + h, target)) - f64::from(head.loss(score - h, target)))
                    / f64::from(2.0 * h);
                let analytic = f64::from(head.gradient(score, target));
                assert!((numeric - analytic).abs() < 1e-3, "{head:?} at {score}: {numeric} vs {analytic}");
            }
        }
    }

    #[test]
    fn logistic_loss_is_stable_for_large_scores() {
        assert!(Head::Click.loss(500.0, 1.0).abs() < 1e-6);
        assert!((Head::Click.loss(-500.0, 1.0) - 500.0).abs() < 1e-3);
        assert!(Head::Click.gradient(-500.0, 1.0).is_finite());
    }
}
