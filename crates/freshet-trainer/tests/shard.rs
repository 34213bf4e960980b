//! A model sharded over several trainers (freshet_core::shard): the same
//! model as one trainer when the shards synchronise after every event, and
//! every event's effect applied exactly once whatever the staleness.

use std::collections::BTreeMap;

use freshet_core::snapshot::{ParamsDelta, SnapshotRow, SnapshotTombstone};
use freshet_core::synth::{SynthConfig, SynthStream};
use freshet_core::{Feedback, Gradients, Head, ModelSpec, Shard, TableGradients, TableKind, hash_id, shard_of};
use freshet_trainer::{GradientsError, ShardSimulation, Trainer, TrainerConfig};

fn spec() -> ModelSpec {
    ModelSpec { dim: 8, rating_min: 1.0, rating_max: 5.0, context_features: true, shards: 1 }
}

fn sharded(shards: u32) -> ModelSpec {
    ModelSpec { shards, ..spec() }
}

/// Ratings and clicks of 400 users on 150 items, every rating and click
/// carrying three context features, with a few forgets.
fn events(n: usize) -> Vec<Feedback> {
    let cfg = SynthConfig { users: 400, items: 150, click_share: 0.5, forget_share: 0.005, ..SynthConfig::default() };
    let (start, step) = (cfg.start_ts, cfg.ts_step_ms);
    let mut stream = SynthStream::new(cfg);
    (0..n)
        .map(|i| {
            let mut event = stream.next_event_at(start + i as i64 * step);
            let features = match &mut event {
                Feedback::Rating(r) => Some(&mut r.features),
                Feedback::Click(c) => Some(&mut c.features),
                Feedback::Forget(_) => None,
            };
            if let Some(features) = features {
                features.insert("device".into(), ["ios", "android", "web"][i % 3].into());
                features.insert("page".into(), format!("p{}", i % 7));
                features.insert("hour".into(), format!("h{}", (i / 5) % 24));
            }
            event
        })
        .collect()
}

/// Every owned row of every shard as (table, key) → parameter bits.
fn owned_rows(trainers: &[Trainer]) -> BTreeMap<(TableKind, u64), Vec<u32>> {
    let mut rows = BTreeMap::new();
    for trainer in trainers {
        for row in trainer.export_state().rows {
            let bits = row.params.iter().chain(&row.m).chain(&row.v).map(|x| x.to_bits()).collect();
            assert!(rows.insert((row.table, row.key), bits).is_none(), "two shards own {:?} {}", row.table, row.key);
        }
    }
    rows
}

fn whole(events: &[Feedback], batch: usize) -> Trainer {
    let mut trainer = Trainer::new(spec(), TrainerConfig::default()).expect("valid");
    for chunk in events.chunks(batch) {
        trainer.train_batch(chunk);
    }
    trainer
}

fn simulate(events: &[Feedback], shards: u32, batch: usize, staleness_ms: i64) -> ShardSimulation {
    let mut sim = ShardSimulation::new(sharded(shards), TrainerConfig::default(), batch, staleness_ms).expect("valid");
    events.iter().for_each(|event| sim.push(event.clone()));
    sim.finish();
    sim
}

#[test]
fn shards_in_step_after_every_event_are_the_unsharded_model_bit_for_bit() {
    let events = events(3_000);
    let one = whole(&events, 1);
    let expected = owned_rows(std::slice::from_ref(&one));
    for shards in [2, 3] {
        let sim = simulate(&events, shards, 1, 0);
        let trainers = sim.shards();
        let got = owned_rows(trainers);
        let differ: Vec<_> =
            expected.iter().filter(|(key, bits)| got.get(key) != Some(bits)).map(|(key, _)| key).collect();
        assert!(
            differ.is_empty() && got.len() == expected.len(),
            "{shards} shards: {} of {} rows differ, first {:?}",
            differ.len(),
            expected.len(),
            differ.first()
        );
        for trainer in trainers {
            assert_eq!(trainer.export_state().dense.globals.bias, one.export_state().dense.globals.bias);
            assert!(trainer.replica_rows(TableKind::Item) > 0 || shards == 1);
            assert_eq!(trainer.replica_rows(TableKind::User), 0, "user rows are never replicated");
        }
        // The same progressive scores, so the same metrics taken together.
        let (rating, click) = sim.metrics();
        let want = one.metrics();
        assert_eq!(rating.count, want.rating_cumulative.count);
        assert!((rating.rmse.expect("ratings") - want.rating_cumulative.rmse.expect("ratings")).abs() < 1e-12);
        assert!((click.auc.expect("clicks") - want.click_cumulative.auc.expect("clicks")).abs() < 1e-12);
        // A served score: every shard scores an item it does not own as its owner does.
        let (user, item) = ("u7", "i11");
        let owner = shard_of(hash_id(user), shards) as usize;
        let context = freshet_core::ScoreContext::none();
        assert_eq!(
            trainers[owner].predict(Head::Rating, user, item, &context).to_bits(),
            one.predict(Head::Rating, user, item, &context).to_bits()
        );
        let traffic = sim.traffic();
        assert!(traffic.gradient_rows > 0 && traffic.replica_rows > 0, "{traffic:?}");
    }
}

/// The exactly-once invariant of a sharded model: whatever the staleness
/// and the batch, the update counters of each table summed over the shards
/// count every event once (user rows: every rating and click; item rows:
/// the same), and every row has exactly one owner.
#[test]
fn every_event_reaches_every_row_once_whatever_the_staleness() {
    let events = events(4_000);
    let trained = events.iter().filter(|e| !matches!(e, Feedback::Forget(_))).count() as u64;
    for (shards, batch, staleness_ms) in [(2, 1, 1_000), (3, 16, 250), (4, 64, 60_000), (3, 7, 0)] {
        let sim = simulate(&events, shards, batch, staleness_ms);
        let trainers = sim.shards();
        owned_rows(trainers);
        let forgotten_updates = {
            // Forgets remove user rows and their counters; count what the
            // unsharded model loses the same way.
            let one = whole(&events, batch);
            trained - one.update_count_sum(TableKind::User)
        };
        let sum = |kind| trainers.iter().map(|t| t.update_count_sum(kind)).sum::<u64>();
        assert_eq!(sum(TableKind::User), trained - forgotten_updates, "{shards} shards, batch {batch}");
        assert_eq!(sum(TableKind::Item), trained, "{shards} shards, batch {batch}, staleness {staleness_ms}");
        let applied: u64 = trainers.iter().map(|t| t.counters().events_applied).sum();
        assert_eq!(applied, events.len() as u64);
        for (index, trainer) in trainers.iter().enumerate() {
            let state = trainer.export_state();
            assert!(
                state.rows.iter().all(|row| row.table == TableKind::User || shard_of(row.key, shards) == index as u32)
            );
        }
    }
}

#[test]
fn gradients_that_do_not_fit_are_refused_whole() {
    let shard = Shard::new(1, 2).expect("valid");
    let mut trainer = Trainer::new_shard(sharded(2), TrainerConfig::default(), shard).expect("valid");
    let width = spec().row_width(TableKind::Item);
    let owned = (0..).map(|n| hash_id(&format!("i{n}"))).find(|&k| shard.owns(k)).expect("some key");
    let foreign = (0..).map(|n| hash_id(&format!("i{n}"))).find(|&k| !shard.owns(k)).expect("some key");
    let columns = |keys: Vec<u64>, values: usize| TableGradients {
        table: TableKind::Item,
        width,
        ids: keys.iter().map(|_| "i".into()).collect(),
        events: keys.iter().map(|_| 1).collect(),
        keys,
        values: vec![0.5; values],
    };
    let send = |tables| Gradients { clock_ms: 5, tables, globals: [0.0; 2], global_events: [0; 2] };
    let cases = [
        send(vec![columns(vec![owned, foreign], 2 * width)]),
        send(vec![columns(vec![owned], width + 1)]),
        send(vec![TableGradients { table: TableKind::User, ..columns(vec![owned], width) }]),
    ];
    let fitting = send(vec![columns(vec![owned], width)]);
    let refused = trainer.apply_gradients(&[fitting.clone(), cases[0].clone()]);
    assert!(matches!(refused, Err(GradientsError::NotOwned { owner: 0, shard: 1, .. })), "{refused:?}");
    assert!(matches!(trainer.apply_gradients(&cases[1..2]), Err(GradientsError::Shape { .. })));
    assert_eq!(trainer.apply_gradients(&cases[2..]), Err(GradientsError::UserRows));
    assert_eq!(trainer.rows(TableKind::Item), 0, "nothing of a refused arrival is applied, fitting messages neither");
    // Fitting ones admit the row and count their events, in one step.
    assert_eq!(trainer.apply_gradients(&[fitting.clone(), fitting]), Ok(2));
    assert_eq!(trainer.update_count_sum(TableKind::Item), 2);
    let row = trainer.row(TableKind::Item, owned).expect("admitted");
    assert_eq!((row.id.as_deref(), row.steps), (Some("i"), 1), "two messages, one step");
}

#[test]
fn replicas_follow_their_owner_and_are_never_exported() {
    let shard = Shard::new(0, 2).expect("valid");
    let mut trainer = Trainer::new_shard(sharded(2), TrainerConfig::default(), shard).expect("valid");
    let width = spec().row_width(TableKind::Item);
    let name = (0..).map(|n| format!("i{n}")).find(|name| !shard.owns(hash_id(name))).expect("some key");
    let foreign = hash_id(&name);
    let row = |value: f32| SnapshotRow {
        table: TableKind::Item,
        key: foreign,
        id: Some(name.clone()),
        updated_ms: 3,
        values: vec![value; width],
    };
    let delta = |rows, tombstones| ParamsDelta { globals: [9.0, 9.0], session_gap_ms: 0, rows, tombstones };
    assert_eq!(trainer.apply_replica(1, &delta(vec![row(0.25)], vec![])), Ok(1));
    assert_eq!((trainer.rows(TableKind::Item), trainer.replica_rows(TableKind::Item)), (0, 1));
    assert!(trainer.export_state().rows.is_empty() && trainer.drain_dirty().rows.is_empty());
    assert_ne!(trainer.export_state().dense.globals.bias, [9.0, 9.0], "shard 0 owns the global biases");
    // Rows another shard than the sender owns are not the sender's to set.
    let mut elsewhere =
        Trainer::new_shard(sharded(3), TrainerConfig::default(), Shard::new(2, 3).expect("valid")).expect("valid");
    let third = (0..).map(|n| hash_id(&format!("i{n}"))).find(|&k| shard_of(k, 3) == 0).expect("some key");
    let stray = SnapshotRow { key: third, ..row(0.5) };
    assert_eq!(elsewhere.apply_replica(1, &delta(vec![stray.clone()], vec![])), Ok(0));
    assert_eq!(elsewhere.apply_replica(0, &delta(vec![stray], vec![])), Ok(1));
    assert_eq!(elsewhere.export_state().dense.globals.bias, [9.0, 9.0], "taken from shard 0");
    // Scored with: the item's prediction follows the replica's values as its owner sends them.
    let none = freshet_core::ScoreContext::none();
    let unknown = trainer.predict(Head::Rating, "nobody", "never-seen", &none);
    let at_quarter = trainer.predict(Head::Rating, "nobody", &name, &none);
    assert_ne!(at_quarter, unknown, "the replica's bias takes part in the score");
    assert_eq!(trainer.apply_replica(1, &delta(vec![row(0.5)], vec![])), Ok(1));
    let at_half = trainer.predict(Head::Rating, "nobody", &name, &none);
    assert_ne!(at_half, at_quarter, "an update from the owner replaces the replica's values");
    assert_eq!(trainer.replica_rows(TableKind::Item), 1, "an update is not a second row");
    let bad = SnapshotRow { values: vec![0.0; width - 1], ..row(0.5) };
    assert!(trainer.apply_replica(1, &delta(vec![bad], vec![])).is_err());
    assert_eq!(
        trainer.apply_replica(1, &delta(vec![], vec![SnapshotTombstone { table: TableKind::Item, key: foreign }])),
        Ok(1)
    );
    assert_eq!(trainer.replica_rows(TableKind::Item), 0);
    assert!(trainer.drain_dirty().tombstones.is_empty(), "a replica's removal is its owner's to record");
}

#[test]
fn a_trainer_is_one_of_its_specs_shards() {
    let error = Trainer::new(sharded(2), TrainerConfig::default()).expect_err("a sharded model has no sole trainer");
    assert_eq!(error.key, "model.shards");
    let shard = Shard::new(0, 3).expect("valid");
    assert_eq!(Trainer::new_shard(sharded(2), TrainerConfig::default(), shard).expect_err("3 ≠ 2").key, "model.shards");
    let error = ShardSimulation::new(sharded(0), TrainerConfig::default(), 1, 0).expect_err("no shards");
    assert_eq!(error.key, "model.shards");
}

/// Feeding a run of keyed events at once (whole micro-batches trained in
/// place when unsharded) is feeding them one by one: the same rows, the
/// same progressive predictions seen before each event, the same traffic,
/// whatever the run's cut against the micro-batches.
#[test]
fn events_fed_as_a_run_train_as_events_fed_one_by_one() {
    let events = events(2_000);
    let mut keyed = freshet_core::KeyedEvents::new();
    events.iter().for_each(|event| keyed.push(event));
    for (shards, batch, staleness_ms) in [(1, 1, 0), (1, 7, 1_000), (1, 64, 0), (2, 5, 1_000), (3, 1, 0)] {
        let new = || ShardSimulation::new(sharded(shards), TrainerConfig::default(), batch, staleness_ms).expect("ok");
        let (mut one_by_one, mut seen_one) = (new(), Vec::new());
        for event in keyed.iter() {
            let trainer = one_by_one.trainer_of(event.user);
            seen_one.push(trainer.predict_keys(Head::Click, event.user, event.item, event.features, Some(event.ts)));
            one_by_one.push_keyed(event);
        }
        one_by_one.finish();
        let (mut as_runs, mut seen_runs) = (new(), Vec::new());
        let all = keyed.as_events();
        for (from, to) in [(0, 3), (3, 700), (700, 701), (701, 2_000)] {
            as_runs
                .push_events(all.slice(from..to), |trainer, event| {
                    let p = trainer.predict_keys(Head::Click, event.user, event.item, event.features, Some(event.ts));
                    seen_runs.push(p);
                    Ok::<(), ()>(())
                })
                .expect("no error");
        }
        as_runs.finish();
        let case = format!("{shards} shards, batch {batch}, staleness {staleness_ms}");
        assert_eq!(owned_rows(as_runs.shards()), owned_rows(one_by_one.shards()), "{case}");
        let bits = |seen: &[f32]| seen.iter().map(|p| p.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&seen_runs), bits(&seen_one), "{case}");
        assert_eq!(as_runs.traffic(), one_by_one.traffic(), "{case}");
        assert_eq!(as_runs.metrics().0.count, one_by_one.metrics().0.count, "{case}");
    }
}
