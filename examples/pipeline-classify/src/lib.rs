//! Stage two of the `router → preprocess → classify` pipeline: tokens to a
//! sentiment label with a score, from a small lexicon (the stand-in for a
//! model; a real one would load its weights once per instance).
//!
//! ```text
//! fabric deploy examples/target/wasm32-wasip2/release/pipeline_classify.wasm --name classify
//! fabric call classify --fn predict --data '{"tokens": ["love", "fast", "slow"]}'
//! # {"label":"positive","score":0.3333333333333333}
//! fabric deploy examples/target/wasm32-wasip2/release/pipeline_classify.wasm --name classify \
//!     --batch predict_batch --max-batch-size 32 --batch-wait-ms 5
//! fabric call classify --fn predict_batch --data '{"tokens": ["great"]}'
//! # {"label":"positive","score":1.0}
//! ```

use serde::{Deserialize, Serialize};

const POSITIVE: &[&str] =
    &["best", "excellent", "fast", "good", "great", "happy", "like", "love", "nice", "wonderful"];
const NEGATIVE: &[&str] = &["angry", "awful", "bad", "broken", "hate", "poor", "sad", "slow", "terrible", "worst"];

/// What `predict` answers.
#[derive(Serialize, Deserialize)]
pub struct Prediction {
    /// `positive`, `negative` or `neutral`.
    pub label: String,
    /// From -1 (all negative) to 1 (all positive).
    pub score: f64,
}

/// One input of [`predict_batch`].
#[derive(Serialize, Deserialize)]
pub struct Tokens {
    /// The input's tokens.
    pub tokens: Vec<String>,
}

/// The sentiment of `tokens`: (positive - negative) / (positive + negative).
#[fabric::task]
fn predict(tokens: Vec<String>) -> Prediction {
    score(&tokens)
}

/// [`predict`] for many inputs in one call. Deployed with `--batch
/// predict_batch`, concurrent `/v1/call/classify/predict_batch` requests
/// (each `{"tokens": [...]}`) are gathered into one call, and each gets
/// its own prediction back.
#[fabric::task]
fn predict_batch(batch: Vec<Tokens>) -> Vec<Prediction> {
    batch.iter().map(|input| score(&input.tokens)).collect()
}

fn score(tokens: &[String]) -> Prediction {
    let count = |lexicon: &[&str]| tokens.iter().filter(|t| lexicon.contains(&t.as_str())).count() as f64;
    let (positive, negative) = (count(POSITIVE), count(NEGATIVE));
    let score = if positive + negative == 0.0 { 0.0 } else { (positive - negative) / (positive + negative) };
    let label = if score > 0.0 {
        "positive"
    } else if score < 0.0 {
        "negative"
    } else {
        "neutral"
    };
    Prediction { label: label.to_string(), score }
}
