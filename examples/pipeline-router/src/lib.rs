//! The front of the `router → preprocess → classify` pipeline (Ray Serve's
//! deployment graph): called over HTTP, it calls the two stages, each a
//! deployment of its own, through the fabric, not over HTTP. Every stage
//! scales, rolls out and fails on its own; a stage's error comes back to
//! the caller with its kind.
//!
//! ```text
//! fabric deploy examples/target/wasm32-wasip2/release/pipeline_preprocess.wasm --name preprocess
//! fabric deploy examples/target/wasm32-wasip2/release/pipeline_classify.wasm --name classify
//! fabric deploy examples/target/wasm32-wasip2/release/pipeline_router.wasm --name router
//! fabric call router --fn classify --data '{"text": "I love this fast, wonderful fabric!"}'
//! # {"label":"positive","score":1.0,"tokens":["love","fast","wonderful","fabric"]}
//! ```

use serde::{Deserialize, Serialize};

/// The deployments the router calls.
const PREPROCESS: &str = "preprocess";
const CLASSIFY: &str = "classify";

/// What `classify` (the stage) answers: the same fields in the same order
/// as its `Prediction`, which is all its encoding needs.
#[derive(Deserialize)]
struct Prediction {
    label: String,
    score: f64,
}

/// What the router answers for one text.
#[derive(Serialize)]
pub struct Routed {
    label: String,
    score: f64,
    tokens: Vec<String>,
}

/// `text` through both stages.
#[fabric::task]
fn classify(text: String) -> fabric::Result<Routed> {
    let tokens: Vec<String> = fabric::deployment(PREPROCESS).call("clean", &(text,))?.get()?;
    let prediction: Prediction = fabric::deployment(CLASSIFY).call("predict", &(tokens.clone(),))?.get()?;
    Ok(Routed { label: prediction.label, score: prediction.score, tokens })
}

/// Many texts: every text's stage-one call is queued before any result is
/// awaited, then every stage-two call, so the texts go through each stage
/// in parallel across the cluster.
#[fabric::task]
fn classify_many(texts: Vec<String>) -> fabric::Result<Vec<Routed>> {
    let cleaning = texts
        .into_iter()
        .map(|text| fabric::deployment(PREPROCESS).call::<_, Vec<String>>("clean", &(text,)))
        .collect::<fabric::Result<Vec<_>>>()?;
    let all_tokens = fabric::get_all(&cleaning)?;
    let predicting = all_tokens
        .iter()
        .map(|tokens| fabric::deployment(CLASSIFY).call::<_, Prediction>("predict", &(tokens.clone(),)))
        .collect::<fabric::Result<Vec<_>>>()?;
    let predictions = fabric::get_all(&predicting)?;
    Ok(predictions
        .into_iter()
        .zip(all_tokens)
        .map(|(prediction, tokens)| Routed { label: prediction.label, score: prediction.score, tokens })
        .collect())
}
