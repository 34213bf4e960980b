//! Behaviour of the trainer through its public API, on the synthetic
//! planted-factor stream of freshet-core.

use freshet_core::synth::{SynthConfig, SynthStream};
use freshet_core::{Click, Features, Feedback, Forget, Rating, RowLayout, ScoreContext, hash_id};
use freshet_core::{Head, ModelSpec, TableKind};
use freshet_trainer::{Algorithm, Removal, Tombstone, Trainer, TrainerConfig, TrainerState};

fn spec() -> ModelSpec {
    ModelSpec { dim: 16, rating_min: 1.0, rating_max: 5.0, context_features: true, shards: 1 }
}

fn stream(cfg: SynthConfig, n: usize) -> Vec<Feedback> {
    let (start, step) = (cfg.start_ts, cfg.ts_step_ms);
    let mut s = SynthStream::new(cfg);
    (0..n).map(|i| s.next_event_at(start + i as i64 * step)).collect()
}

fn mixed(n: usize) -> Vec<Feedback> {
    stream(SynthConfig { users: 300, items: 200, click_share: 0.4, forget_share: 0.01, ..SynthConfig::default() }, n)
}

fn rating(user: &str, item: &str, value: f32, ts: i64) -> Feedback {
    Feedback::Rating(Rating { user: user.into(), item: item.into(), rating: value, ts, features: Features::new() })
}

fn click(user: &str, item: &str, ts: i64) -> Feedback {
    Feedback::Click(Click { user: user.into(), item: item.into(), clicked: true, ts, features: Features::new() })
}

/// One of a user row's scalars.
fn user_scalar(t: &Trainer, user: &str, at: usize) -> f32 {
    t.row(TableKind::User, hash_id(user)).expect("the user has a row").params[at]
}

fn forget(user: &str, ts: i64) -> Feedback {
    Feedback::Forget(Forget { user: user.into(), ts })
}

/// Every parameter and moment as raw bits, so equality means bit-identical.
fn bits(state: &TrainerState) -> Vec<(TableKind, u64, Vec<u32>)> {
    state
        .rows
        .iter()
        .map(|r| {
            let all = r.params.iter().chain(&r.m).chain(&r.v).map(|x| x.to_bits()).collect();
            (r.table, r.key, all)
        })
        .collect()
}

/// Trains on the planted stream with the default configuration, micro-batches of 64.
fn train_planted(cfg: SynthConfig, n: usize) -> (Trainer, Vec<Feedback>) {
    let events = stream(cfg, n);
    let mut trainer = Trainer::new(spec(), TrainerConfig::default()).expect("valid");
    for batch in events.chunks(64) {
        trainer.train_batch(batch);
    }
    (trainer, events)
}

#[test]
fn planted_ratings_are_learned_far_below_the_running_mean_and_near_the_noise() {
    let cfg = SynthConfig { click_share: 0.0, ..SynthConfig::default() };
    let noise = f64::from(cfg.rating_noise);
    let (trainer, events) = train_planted(cfg, 400_000);
    // The baseline: predict the running mean of the ratings seen so far.
    let (mut mean, mut n, mut sq) = (0.0f64, 0.0f64, 0.0f64);
    for event in &events {
        if let Feedback::Rating(r) = event {
            let y = f64::from(r.rating);
            sq += (mean - y).powi(2);
            n += 1.0;
            mean += (y - mean) / n;
        }
    }
    let baseline = (sq / n).sqrt();
    let m = trainer.metrics();
    let cumulative = m.rating_cumulative.rmse.expect("ratings seen");
    let window = m.rating_window.rmse.expect("ratings seen");
    println!("running mean {baseline:.4}, cumulative {cumulative:.4}, last window {window:.4}, noise {noise}");
    assert!(cumulative < 0.65 * baseline, "cumulative RMSE {cumulative} vs running mean {baseline}");
    assert!(window < 1.4 * noise, "windowed RMSE {window} vs planted noise {noise}");
}

#[test]
fn planted_clicks_beat_the_base_rate_and_rank_well() {
    // Clicks say less per event than ratings: fewer users and items, so
    // each is seen some 600 times.
    let cfg = SynthConfig { click_share: 1.0, users: 300, items: 200, ..SynthConfig::default() };
    let (trainer, events) = train_planted(cfg, 200_000);
    let clicked = events.iter().filter(|e| matches!(e, Feedback::Click(c) if c.clicked)).count();
    let p = clicked as f64 / events.len() as f64;
    let entropy = -(p * p.ln() + (1.0 - p) * (1.0 - p).ln());
    let m = trainer.metrics();
    let logloss = m.click_window.logloss.expect("clicks seen");
    let auc = m.click_window.auc.expect("both outcomes");
    println!("base-rate log loss {entropy:.4}, last window log loss {logloss:.4}, AUC {auc:.4}");
    assert!(logloss < 0.95 * entropy, "log loss {logloss} vs base rate {entropy}");
    assert!(auc > 0.7, "AUC {auc}");
}

#[test]
fn same_batches_give_bit_identical_parameters() {
    let events = mixed(20_000);
    let run = || {
        let mut t =
            Trainer::new(spec(), TrainerConfig { min_count: 2, max_rows: Some(150), ..TrainerConfig::default() })
                .expect("valid");
        for batch in events.chunks(37) {
            t.train_batch(batch);
        }
        t.export_state()
    };
    let (a, b) = (run(), run());
    assert_eq!(bits(&a), bits(&b));
    assert_eq!(a, b);
}

#[test]
fn each_batch_is_scored_with_the_parameters_from_before_it() {
    let mut t = Trainer::new(spec(), TrainerConfig::default()).expect("valid");
    let batch: Vec<Feedback> = (0..10).map(|i| rating("u", "i", 5.0, 1 + i)).collect();
    t.train_batch(&batch);
    // All ten were predicted by the initial model: the middle of [1, 5].
    assert_eq!(t.metrics().rating_cumulative.mae, Some(2.0));
    t.train_batch(&batch[..1]);
    assert_eq!(t.metrics().rating_cumulative.count, 11);
    assert!(t.predict(Head::Rating, "u", "i", &ScoreContext::none()) > 3.0);
}

#[test]
fn user_update_counters_sum_to_the_events_that_touched_them() {
    let events = stream(SynthConfig { users: 500, items: 300, click_share: 0.5, ..SynthConfig::default() }, 30_000);
    let mut t = Trainer::new(spec(), TrainerConfig::default()).expect("valid");
    for batch in events.chunks(100) {
        t.train_batch(batch);
    }
    let c = t.counters();
    assert_eq!(c.events_applied, 30_000);
    assert_eq!(c.ratings + c.clicks, 30_000);
    assert_eq!(t.update_count_sum(TableKind::User), 30_000);
    assert_eq!(t.update_count_sum(TableKind::Item), 30_000);
    // One context feature (device) per click.
    assert_eq!(t.update_count_sum(TableKind::Feature), c.clicks);
    assert_eq!(c.nonfinite_skipped, 0);
}

#[test]
fn forget_events_apply_in_order_and_count_as_events() {
    let mut t = Trainer::new(spec(), TrainerConfig::default()).expect("valid");
    t.train_batch(&[rating("u1", "i1", 4.0, 1), rating("u2", "i1", 2.0, 1)]);
    t.drain_dirty();
    let report = t.train_batch(&[rating("u1", "i1", 4.0, 2), forget("u1", 3), rating("u1", "i2", 1.0, 4)]);
    assert_eq!((report.events, report.ratings, report.forgets, report.forgotten), (3, 2, 1, 1));
    let c = t.counters();
    assert_eq!((c.events_applied, c.forgets, c.users.forgotten), (5, 1, 1));
    // The row after the forget is a fresh one that saw a single event.
    let row = t.row(TableKind::User, hash_id("u1")).expect("re-admitted");
    assert_eq!((row.updates, row.steps), (1, 1));
    // It is a row again, so the drain carries it and no tombstone.
    let delta = t.drain_dirty();
    assert!(delta.tombstones.is_empty());
    assert!(delta.rows.iter().any(|r| r.table == TableKind::User && r.key == hash_id("u1")));

    let tombstones = t.forget("u1");
    assert_eq!(tombstones, [Tombstone { table: TableKind::User, key: hash_id("u1"), cause: Removal::Forgotten }]);
    assert!(t.forget("u1").is_empty());
    assert!(t.row(TableKind::User, hash_id("u1")).is_none());
    assert_eq!(t.drain_dirty().tombstones, tombstones);
    assert_eq!(t.counters().events_applied, 5, "a direct forget call is not an event");
}

#[test]
fn ids_get_rows_only_after_min_count_sightings() {
    let config = TrainerConfig { min_count: 3, ..TrainerConfig::default() };
    let mut t = Trainer::new(spec(), config).expect("valid");
    t.train_batch(&[rating("u", "i", 5.0, 1), rating("u", "i", 5.0, 2)]);
    assert_eq!((t.rows(TableKind::User), t.pending(TableKind::User)), (0, 1));
    // Without rows the prediction comes from the global bias alone.
    let before = t.predict(Head::Rating, "u", "i", &ScoreContext::none());
    let global = t.export_params().globals[Head::Rating.index()];
    assert_eq!(before, global);
    t.train_batch(&[rating("u", "i", 5.0, 3)]);
    assert_eq!((t.rows(TableKind::User), t.pending(TableKind::User)), (1, 0));
    assert_eq!(t.counters().users.admitted, 1);
    // Only the admitting event reached the new row.
    assert_eq!(t.row(TableKind::User, hash_id("u")).expect("row").updates, 1);
}

#[test]
fn the_admission_counts_stay_bounded() {
    let config = TrainerConfig { min_count: 2, max_pending: 64, ..TrainerConfig::default() };
    let mut t = Trainer::new(spec(), config).expect("valid");
    let batch: Vec<Feedback> = (0..1000).map(|i| rating(&format!("u{i}"), &format!("i{i}"), 3.0, 1 + i)).collect();
    for chunk in batch.chunks(10) {
        t.train_batch(chunk);
        assert!(t.pending(TableKind::User) <= 64 && t.pending(TableKind::Item) <= 64);
    }
    assert!(t.counters().users.pending_dropped > 0);
    assert_eq!(t.rows(TableKind::User), 0);
}

#[test]
fn rows_untouched_for_the_ttl_expire_by_event_time() {
    let config = TrainerConfig { ttl_ms: Some(1_000), ..TrainerConfig::default() };
    let mut t = Trainer::new(spec(), config).expect("valid");
    t.train_batch(&[rating("old", "i", 4.0, 1_000)]);
    t.train_batch(&[rating("new", "i", 4.0, 1_900)]);
    assert_eq!(t.rows(TableKind::User), 2);
    t.train_batch(&[rating("new", "i", 4.0, 2_500)]);
    assert!(t.row(TableKind::User, hash_id("old")).is_none());
    assert!(t.row(TableKind::User, hash_id("new")).is_some());
    assert_eq!(t.counters().users.expired, 1);
    let delta = t.drain_dirty();
    assert!(delta.tombstones.contains(&Tombstone {
        table: TableKind::User,
        key: hash_id("old"),
        cause: Removal::Expired
    }));
}

#[test]
fn the_row_budget_evicts_the_least_recently_updated() {
    let config = TrainerConfig { max_rows: Some(16), ..TrainerConfig::default() };
    let mut t = Trainer::new(spec(), config).expect("valid");
    for i in 0..40 {
        t.train_batch(&[rating(&format!("u{i}"), "i", 4.0, 1 + i)]);
        assert!(t.rows(TableKind::User) <= 16);
    }
    // The newest user always survives; the oldest went first.
    assert!(t.row(TableKind::User, hash_id("u39")).is_some());
    assert!(t.row(TableKind::User, hash_id("u0")).is_none());
    assert_eq!(t.counters().users.evicted, 40 - t.rows(TableKind::User) as u64);
}

#[test]
fn drained_deltas_rebuild_the_exported_state() {
    let config = TrainerConfig { min_count: 2, ttl_ms: Some(2_000), max_rows: Some(120), ..TrainerConfig::default() };
    let mut t = Trainer::new(spec(), config).expect("valid");
    let mut rebuilt = t.export_state();
    for (i, batch) in mixed(12_000).chunks(250).enumerate() {
        t.train_batch(batch);
        if i % 3 == 0 {
            rebuilt.apply(t.drain_dirty());
        }
    }
    rebuilt.apply(t.drain_dirty());
    let exported = t.export_state();
    assert_eq!(bits(&rebuilt), bits(&exported));
    assert_eq!(rebuilt, exported);
    let c = t.counters();
    assert!(c.users.evicted + c.users.expired + c.users.forgotten > 0, "removals exercised: {c:?}");
}

#[test]
fn a_restored_trainer_continues_bit_identically() {
    let events = mixed(16_000);
    let (first, second) = events.split_at(8_000);
    let config = TrainerConfig { min_count: 2, ..TrainerConfig::default() };
    let mut original = Trainer::new(spec(), config.clone()).expect("valid");
    for batch in first.chunks(64) {
        original.train_batch(batch);
    }
    let saved = original.export_state();
    let mut restored = Trainer::restore(spec(), config, saved).expect("restorable");
    for batch in second.chunks(64) {
        original.train_batch(batch);
        restored.train_batch(batch);
    }
    assert_eq!(original.export_state(), restored.export_state());
}

#[test]
fn restore_rejects_another_spec_and_resets_moments_of_another_algorithm() {
    let mut t = Trainer::new(spec(), TrainerConfig::default()).expect("valid");
    t.train_batch(&mixed(2_000));
    let saved = t.export_state();
    let other = ModelSpec { dim: 8, ..spec() };
    assert!(Trainer::restore(other, TrainerConfig::default(), saved.clone()).is_err());
    let adagrad = TrainerConfig { algorithm: Algorithm::Adagrad, ..TrainerConfig::default() };
    let restored = Trainer::restore(spec(), adagrad, saved.clone()).expect("restorable");
    let state = restored.export_state();
    assert_eq!(state.rows.len(), saved.rows.len());
    assert!(state.rows.iter().all(|r| r.steps == 0 && r.m.is_empty() && r.v.iter().all(|&x| x == 0.0)));
    assert_eq!(restored.export_params(), t.export_params());
}

#[test]
fn non_finite_input_never_reaches_the_parameters() {
    let mut t = Trainer::new(spec(), TrainerConfig::default()).expect("valid");
    t.train_batch(&[rating("u", "i", 4.0, 1)]);
    let before = t.export_params();
    let report = t.train_batch(&[rating("u", "i", f32::NAN, 2)]);
    // User row, item row and the rating head's global bias were all skipped.
    assert_eq!(report.nonfinite_skipped, 3);
    assert_eq!(t.export_params(), before);
    assert_eq!(t.row(TableKind::User, hash_id("u")).expect("row").updates, 1);
    assert_eq!(t.metrics().rating_cumulative.count, 1, "the NaN event is not scored");
    let huge = t.train_batch(&[rating("u", "i", f32::MAX, 3)]);
    assert!(t.export_params().rows.iter().all(|r| r.values.iter().all(|x| x.is_finite())));
    assert_eq!(huge.events, 1);
}

#[test]
fn parameter_views_carry_item_ids() {
    let mut t = Trainer::new(spec(), TrainerConfig::default()).expect("valid");
    t.train_batch(&[rating("u", "movie-42", 4.0, 1)]);
    let params = t.export_params();
    let item = params.rows.iter().find(|r| r.table == TableKind::Item).expect("item row");
    assert_eq!(item.id.as_deref(), Some("movie-42"));
    assert_eq!(item.values[RowLayout::new(TableKind::Item, 16).factors()].len(), 16);
    assert_eq!(item.updated_ms, 1, "the trainer clock at the row's last update");
    let (view, keys) = t.table_params(TableKind::Item);
    assert_eq!(view.shape(), &[1, 18]);
    assert_eq!(keys, &[hash_id("movie-42")]);
    let delta = t.drain_dirty().params(t.config().session_gap_ms);
    assert_eq!(delta.rows.len(), 2);
}

#[test]
fn a_users_session_offset_learns_within_a_session_and_restarts_after_a_gap() {
    let config = TrainerConfig::default();
    let gap = config.session_gap_ms;
    let mut t = Trainer::new(spec(), config).expect("valid");
    // Everyone else rates 3; "u" rates 5 in one sitting, a minute apart.
    for n in 0..20 {
        t.train_batch(&[rating(&format!("other{n}"), "i", 3.0, n)]);
    }
    let sitting: Vec<Feedback> = (0..10).map(|k| rating("u", "i", 5.0, 1_000 + k * 60_000)).collect();
    for event in &sitting {
        t.train_batch(std::slice::from_ref(event));
    }
    let learned = user_scalar(&t, "u", RowLayout::SESSION_OFFSET);
    assert!(learned > 0.05, "the session offset follows the sitting's high ratings: {learned}");
    let last = sitting.last().map(Feedback::ts).expect("events");
    // A click within the gap keeps the session: the offset does not learn
    // from clicks, only the L2 penalty shrinks it a little.
    t.train_batch(&[click("u", "i", last + gap)]);
    let kept = user_scalar(&t, "u", RowLayout::SESSION_OFFSET);
    assert!(kept <= learned && kept > 0.99 * learned, "{kept} vs {learned}");
    assert_eq!(t.counters().sessions_restarted, 0);
    // A click after a longer gap begins a new session.
    t.train_batch(&[click("u", "i", last + 2 * gap + 1)]);
    assert_eq!(user_scalar(&t, "u", RowLayout::SESSION_OFFSET), 0.0);
    assert_eq!(t.counters().sessions_restarted, 1);
}

#[test]
fn a_users_rating_scale_follows_how_widely_they_spread_the_items() {
    // Factors barely learn here, else they would take up the spread themselves.
    let config = TrainerConfig { learning_rate: 1e-6, ..TrainerConfig::default() };
    let mut t = Trainer::new(spec(), config).expect("valid");
    // Items alternate good (+1) and bad (−1); five users rate them 3 ± 1,
    // "wide" rates 3 ± 2 and "flat" rates everything 3.
    let mut ts = 0;
    for _ in 0..100 {
        for item in 0..20 {
            let effect = if item % 2 == 0 { 1.0 } else { -1.0 };
            let item = format!("i{item}");
            let raters = (0..5)
                .map(|u| (format!("c{u}"), 3.0 + effect))
                .chain([("wide".to_owned(), 3.0 + 2.0 * effect), ("flat".to_owned(), 3.0)]);
            for (user, value) in raters {
                ts += 1_000;
                t.train_batch(&[rating(&user, &item, value, ts)]);
            }
        }
    }
    let (wide, flat) =
        (user_scalar(&t, "wide", RowLayout::RATING_SCALE), user_scalar(&t, "flat", RowLayout::RATING_SCALE));
    assert!(wide > 0.3 && flat < -0.3, "scale offsets: wide {wide}, flat {flat}");
    let spread = |user: &str| {
        let good = t.predict(Head::Rating, user, "i0", &ScoreContext::none());
        good - t.predict(Head::Rating, user, "i1", &ScoreContext::none())
    };
    assert!(spread("wide") > 3.0 && spread("flat").abs() < 0.5, "wide {}, flat {}", spread("wide"), spread("flat"));
}
