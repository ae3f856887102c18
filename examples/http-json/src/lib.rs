//! Task functions called over HTTP, with no HTTP code: deploy the component
//! and `POST /v1/call/<deployment>/<function>` with JSON arguments.
//!
//! ```text
//! fabric deploy examples/target/wasm32-wasip2/release/http_json.wasm --name stats
//! fabric call stats --fn summarize --data '{"values": [3, 1, 4, 1, 5]}'
//! curl -X POST localhost:8080/v1/call/stats/summarize -d '{"values": [3, 1, 4, 1, 5]}'
//! ```

use serde::Serialize;

/// What `summarize` answers.
#[derive(Serialize)]
pub struct Summary {
    count: usize,
    mean: f64,
    min: f64,
    max: f64,
}

/// Count, mean, min and max of `values`.
#[fabric::task]
fn summarize(values: Vec<f64>) -> Result<Summary, String> {
    if values.is_empty() {
        return Err("no values to summarize".to_string());
    }
    let count = values.len();
    let mean = values.iter().sum::<f64>() / count as f64;
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Ok(Summary { count, mean, min, max })
}

/// Squares each value in a sub-task of its own, on whichever host has room.
#[fabric::task]
fn squares(values: Vec<i64>) -> fabric::Result<Vec<i64>> {
    let refs = values.iter().map(|&v| square.remote(v)).collect::<fabric::Result<Vec<_>>>()?;
    fabric::get_all(&refs)
}

/// `value` squared.
#[fabric::task]
fn square(value: i64) -> i64 {
    value * value
}
