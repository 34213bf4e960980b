//! A deterministic synthetic feedback stream drawn from planted user and item
//! factors, so a learner has real structure to find and tests know the truth.
//! It can also mix in malformed messages, cycling through every rejection
//! reason, each labelled with the reason a validator must give.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::codec::{ContentType, encode};
use crate::event::{Click, EventKind, Features, Feedback, Forget, Rating};
use crate::reject::RejectReason;

/// Devices used as the click context feature, with their planted logit effect.
const DEVICES: [(&str, f32); 3] = [("ios", 0.3), ("android", -0.2), ("web", 0.0)];
/// Pages (the second context feature), with their planted logit effect and
/// the weight of their interaction with the item's first planted factor (a
/// page where some items do better than others: what a factorised or
/// quadratic model can learn and a linear one cannot).
const PAGES: [(&str, f32, f32); 4] =
    [("home", 0.0, 1.5), ("search", 0.4, -1.5), ("detail", 0.2, 2.5), ("cart", -0.3, 0.0)];
/// Hours of the day (the third context feature): a planted logit effect
/// of `HOUR_EFFECT · sin(2π·hour/24)`.
const HOUR_EFFECT: f32 = 0.25;
/// Most context features a synthetic click carries (device, page, hour).
pub const MAX_SYNTH_FEATURES: usize = 3;

/// Shape of the synthetic stream.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    /// Seed of every random draw.
    pub seed: u64,
    /// Number of distinct users.
    pub users: u32,
    /// Number of distinct items (popularity is skewed towards low indices).
    pub items: u32,
    /// Dimension of the planted factors.
    pub dim: usize,
    /// Standard deviation of the rating noise.
    pub rating_noise: f32,
    /// Share of valid events that are clicks (the rest are ratings or forgets).
    pub click_share: f64,
    /// Context features of each click, 1 to [`MAX_SYNTH_FEATURES`]: `device`,
    /// then `page` (with a planted page × item interaction), then `hour`.
    /// With 1 the stream is what it was before the others existed.
    pub click_features: usize,
    /// Share of valid events that are forget requests.
    pub forget_share: f64,
    /// Share of messages that are malformed.
    pub invalid_rate: f64,
    /// Share of valid events sent as bincode instead of JSON.
    pub bincode_share: f64,
    /// Event time of the first message (epoch ms).
    pub start_ts: i64,
    /// Event time step between consecutive messages (ms).
    pub ts_step_ms: i64,
    /// The validator's size limit, so oversized messages exceed it.
    pub max_message_bytes: usize,
    /// Ratings are clipped into this range.
    pub rating_range: (f32, f32),
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            seed: 42,
            users: 2_000,
            items: 1_000,
            dim: 8,
            rating_noise: 0.3,
            click_share: 0.5,
            click_features: 1,
            forget_share: 0.0,
            invalid_rate: 0.0,
            bincode_share: 0.0,
            start_ts: 1_764_400_000_000,
            ts_step_ms: 1,
            max_message_bytes: 64 * 1024,
            rating_range: (1.0, 5.0),
        }
    }
}

/// The ground truth the stream is drawn from.
#[derive(Debug, Clone)]
pub struct PlantedModel {
    dim: usize,
    global_rating: f32,
    click_bias: f32,
    user_bias: Vec<f32>,
    item_bias: Vec<f32>,
    user_factors: Vec<f32>,
    item_factors: Vec<f32>,
}

impl PlantedModel {
    fn draw(cfg: &SynthConfig, rng: &mut ChaCha8Rng) -> Self {
        let bias = Normal::new(0.0f32, 0.4).expect("valid normal");
        // Factor scale chosen so that u·v has a standard deviation of about 0.6.
        let scale = (0.6f32 / (cfg.dim.max(1) as f32).sqrt()).sqrt();
        let factor = Normal::new(0.0f32, scale).expect("valid normal");
        let users = cfg.users.max(1) as usize;
        let items = cfg.items.max(1) as usize;
        PlantedModel {
            dim: cfg.dim,
            global_rating: 3.5,
            click_bias: -0.5,
            user_bias: (0..users).map(|_| bias.sample(rng)).collect(),
            item_bias: (0..items).map(|_| bias.sample(rng)).collect(),
            user_factors: (0..users * cfg.dim).map(|_| factor.sample(rng)).collect(),
            item_factors: (0..items * cfg.dim).map(|_| factor.sample(rng)).collect(),
        }
    }

    fn affinity(&self, user: usize, item: usize) -> f32 {
        let u = &self.user_factors[user * self.dim..(user + 1) * self.dim];
        let v = &self.item_factors[item * self.dim..(item + 1) * self.dim];
        u.iter().zip(v).map(|(a, b)| a * b).sum()
    }

    /// The noiseless rating of `item` by `user` (before clipping).
    pub fn expected_rating(&self, user: usize, item: usize) -> f32 {
        self.global_rating + self.user_bias[user] + self.item_bias[item] + self.affinity(user, item)
    }

    /// The probability that `user` clicks `item`, without context.
    pub fn click_probability(&self, user: usize, item: usize) -> f32 {
        sigmoid(self.click_bias + self.item_bias[item] + 2.0 * self.affinity(user, item))
    }

    /// The first planted factor of `item` (scaled to about unit variance),
    /// which the synthetic pages interact with.
    fn item_trait(&self, item: usize) -> f32 {
        let scale = (0.6f32 / (self.dim.max(1) as f32).sqrt()).sqrt();
        self.item_factors.get(item * self.dim).map_or(0.0, |v| v / scale)
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Which input topic a message belongs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The clicks topic.
    Clicks,
    /// The ratings topic (forget requests go here too).
    Ratings,
}

/// What a validator must make of a synthetic message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// A valid event of this kind.
    Valid(EventKind),
    /// A rejection with this reason.
    Invalid(RejectReason),
}

/// One message ready to produce.
#[derive(Debug, Clone)]
pub struct SynthMessage {
    /// Destination topic.
    pub stream: Stream,
    /// Message key (the user id).
    pub key: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Value of the `content-type` header, if any.
    pub content_type: Option<String>,
    /// What validation must conclude.
    pub expected: Expected,
}

/// The stream itself: an endless iterator of messages.
#[derive(Debug, Clone)]
pub struct SynthStream {
    cfg: SynthConfig,
    planted: PlantedModel,
    rng: ChaCha8Rng,
    noise: Normal<f32>,
    produced: u64,
    invalid_produced: usize,
}

impl SynthStream {
    /// A stream shaped by `cfg`.
    pub fn new(cfg: SynthConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let planted = PlantedModel::draw(&cfg, &mut rng);
        let noise = Normal::new(0.0, cfg.rating_noise.max(0.0)).expect("valid normal");
        SynthStream { cfg, planted, rng, noise, produced: 0, invalid_produced: 0 }
    }

    /// The planted ground truth.
    pub fn planted(&self) -> &PlantedModel {
        &self.planted
    }

    /// The next valid event, at event time `ts`.
    pub fn next_event_at(&mut self, ts: i64) -> Feedback {
        let user_index = self.rng.random_range(0..self.cfg.users.max(1)) as usize;
        let user = format!("u{user_index}");
        let draw: f64 = self.rng.random();
        if draw < self.cfg.forget_share {
            return Feedback::Forget(Forget { user, ts });
        }
        // Skewed popularity: low indices are drawn far more often.
        let skew: f64 = self.rng.random();
        let item_index = ((self.cfg.items.max(1) as f64) * skew * skew) as usize;
        let item_index = item_index.min(self.cfg.items.max(1) as usize - 1);
        let item = format!("i{item_index}");
        if draw < self.cfg.forget_share + self.cfg.click_share {
            let (device, effect) = DEVICES[self.rng.random_range(0..DEVICES.len())];
            let mut features = Features::from([("device".to_owned(), device.to_owned())]);
            let p = self.planted.click_probability(user_index, item_index);
            let mut logit = (p / (1.0 - p)).ln() + effect;
            if self.cfg.click_features >= 2 {
                let (page, effect, interaction) = PAGES[self.rng.random_range(0..PAGES.len())];
                logit += effect + interaction * self.planted.item_trait(item_index);
                features.insert("page".to_owned(), page.to_owned());
            }
            if self.cfg.click_features >= 3 {
                let hour = self.rng.random_range(0..24u32);
                logit += HOUR_EFFECT * (std::f32::consts::TAU * hour as f32 / 24.0).sin();
                features.insert("hour".to_owned(), format!("h{hour}"));
            }
            let clicked = self.rng.random::<f32>() < sigmoid(logit);
            Feedback::Click(Click { user, item, clicked, ts, features })
        } else {
            let (low, high) = self.cfg.rating_range;
            let noisy = self.planted.expected_rating(user_index, item_index) + self.noise.sample(&mut self.rng);
            let rating = (noisy.clamp(low, high) * 100.0).round() / 100.0;
            Feedback::Rating(Rating { user, item, rating, ts, features: Features::new() })
        }
    }

    /// The next message (valid or, at the configured rate, malformed) at event time `ts`.
    pub fn next_message_at(&mut self, ts: i64) -> SynthMessage {
        let event = self.next_event_at(ts);
        let stream = match event {
            Feedback::Click(_) => Stream::Clicks,
            _ => Stream::Ratings,
        };
        let key = event.user().to_owned();
        if self.rng.random::<f64>() < self.cfg.invalid_rate {
            let reason = RejectReason::OF_EVENTS[self.invalid_produced % RejectReason::OF_EVENTS.len()];
            self.invalid_produced += 1;
            let (payload, content_type) = malformed(&event, reason, self.cfg.max_message_bytes);
            return SynthMessage {
                stream,
                key,
                payload,
                content_type: content_type.map(str::to_owned),
                expected: Expected::Invalid(reason),
            };
        }
        let format =
            if self.rng.random::<f64>() < self.cfg.bincode_share { ContentType::Bincode } else { ContentType::Json };
        SynthMessage {
            stream,
            key,
            payload: encode(&event, format),
            content_type: Some(format.mime().to_owned()),
            expected: Expected::Valid(event.kind()),
        }
    }
}

impl Iterator for SynthStream {
    type Item = SynthMessage;

    fn next(&mut self) -> Option<SynthMessage> {
        let ts = self.cfg.start_ts + self.produced as i64 * self.cfg.ts_step_ms;
        self.produced += 1;
        Some(self.next_message_at(ts))
    }
}

/// A payload derived from `event` that breaks exactly the rule `reason` names.
fn malformed(event: &Feedback, reason: RejectReason, max_message_bytes: usize) -> (Vec<u8>, Option<&'static str>) {
    const JSON: Option<&str> = Some("application/json");
    let ts = event.ts();
    let user = event.user();
    let json = |value: serde_json::Value| (value.to_string().into_bytes(), JSON);
    match reason {
        RejectReason::TooLarge => json(serde_json::json!({
            "type": "forget", "user": user, "ts": ts,
            "padding": "x".repeat(max_message_bytes),
        })),
        RejectReason::UnsupportedContentType => (encode(event, ContentType::Json), Some("text/xml")),
        RejectReason::InvalidUtf8 => {
            let mut bytes = format!(r#"{{"type":"forget","user":"{user}","ts":{ts}}}"#).into_bytes();
            bytes.insert(bytes.len() - 3, 0xff);
            (bytes, JSON)
        }
        RejectReason::MalformedJson => (format!(r#"{{"type":"rating","user":"{user}","rating":"#).into_bytes(), JSON),
        RejectReason::MalformedBincode => {
            let mut bytes = encode(event, ContentType::Bincode);
            bytes.truncate(bytes.len() / 2);
            (bytes, Some(ContentType::Bincode.mime()))
        }
        RejectReason::UnknownType => {
            json(serde_json::json!({"type": "purchase", "user": user, "item": "i1", "ts": ts}))
        }
        RejectReason::MissingId => {
            json(serde_json::json!({"type": "click", "user": "", "item": "i1", "clicked": true, "ts": ts}))
        }
        RejectReason::IdTooLong => json(serde_json::json!({
            "type": "click", "user": "u".repeat(300), "item": "i1", "clicked": false, "ts": ts,
        })),
        RejectReason::MissingField => json(serde_json::json!({"type": "rating", "user": user, "item": "i1", "ts": ts})),
        RejectReason::NonFinite => {
            let nan = Feedback::Rating(Rating {
                user: user.to_owned(),
                item: "i1".to_owned(),
                rating: f32::NAN,
                ts,
                features: Features::new(),
            });
            (encode(&nan, ContentType::Bincode), Some(ContentType::Bincode.mime()))
        }
        RejectReason::RatingOutOfRange => json(serde_json::json!({
            "type": "rating", "user": user, "item": "i1", "rating": 99.5, "ts": ts,
        })),
        RejectReason::MissingTimestamp => {
            json(serde_json::json!({"type": "click", "user": user, "item": "i1", "clicked": true}))
        }
        RejectReason::TimestampOutOfRange => json(serde_json::json!({
            "type": "click", "user": user, "item": "i1", "clicked": true, "ts": -ts,
        })),
        RejectReason::TooManyFeatures => {
            let features: Features = (0..200).map(|i| (format!("f{i}"), "v".to_owned())).collect();
            json(serde_json::json!({
                "type": "click", "user": user, "item": "i1", "clicked": true, "ts": ts,
                "features": features,
            }))
        }
        RejectReason::InvalidFeature => json(serde_json::json!({
            "type": "click", "user": user, "item": "i1", "clicked": true, "ts": ts,
            "features": {"a=b": "c"},
        })),
        RejectReason::MalformedExchange => unreachable!("only messages of the exchange topics are refused so"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn clicks(features: usize, n: usize) -> Vec<Click> {
        let cfg = SynthConfig { click_share: 1.0, click_features: features, ..SynthConfig::default() };
        let mut stream = SynthStream::new(cfg);
        (0..n)
            .map(|i| match stream.next_event_at(1 + i as i64) {
                Feedback::Click(click) => click,
                other => panic!("a click stream gave {other:?}"),
            })
            .collect()
    }

    #[test]
    fn clicks_carry_as_many_context_features_as_configured() {
        let names = |c: &Click| c.features.keys().cloned().collect::<Vec<_>>();
        assert!(clicks(1, 200).iter().all(|c| names(c) == ["device"]));
        assert!(clicks(2, 200).iter().all(|c| names(c) == ["device", "page"]));
        let three = clicks(3, 2_000);
        assert!(three.iter().all(|c| names(c) == ["device", "hour", "page"]));
        let hours: std::collections::BTreeSet<&str> = three.iter().map(|c| c.features["hour"].as_str()).collect();
        assert_eq!(hours.len(), 24, "{hours:?}");
    }

    #[test]
    fn the_page_interacts_with_the_item() {
        // Items with a high planted trait are clicked more on "detail" than
        // on "search", and the other way round for a low trait.
        let cfg = SynthConfig { click_share: 1.0, click_features: 2, ..SynthConfig::default() };
        let mut stream = SynthStream::new(cfg);
        let planted = stream.planted().clone();
        let mut rate = BTreeMap::<(&str, bool), (u32, u32)>::new();
        for i in 0..200_000 {
            let Feedback::Click(click) = stream.next_event_at(1 + i) else { unreachable!("clicks only") };
            let item: usize = click.item[1..].parse().expect("item index");
            let high = planted.item_trait(item) > 0.0;
            let page = PAGES.iter().find(|(name, ..)| *name == click.features["page"]).expect("a page").0;
            let entry = rate.entry((page, high)).or_default();
            entry.0 += u32::from(click.clicked);
            entry.1 += 1;
        }
        let of = |page, high| {
            let (clicked, shown) = rate[&(page, high)];
            f64::from(clicked) / f64::from(shown)
        };
        assert!(of("detail", true) > of("search", true) + 0.1, "{rate:?}");
        assert!(of("search", false) > of("detail", false) + 0.1, "{rate:?}");
    }
}
