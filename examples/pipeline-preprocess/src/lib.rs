//! Stage one of the `router → preprocess → classify` pipeline: raw text to
//! normalized tokens. A task deployment of its own, so it scales and rolls
//! out apart from the other stages; the router calls it through the fabric.
//!
//! ```text
//! fabric deploy examples/target/wasm32-wasip2/release/pipeline_preprocess.wasm --name preprocess
//! fabric call preprocess --fn clean --data '{"text": "The fabric is FAST!"}'
//! # ["fabric","fast"]
//! ```

/// Words too common to say anything about a text.
const STOPWORDS: &[&str] = &["a", "an", "and", "are", "i", "in", "is", "it", "of", "on", "or", "the", "this", "to", "was"];

/// `text` lowercased and split into words of letters and digits, without
/// stopwords. Text with no words at all is refused.
#[fabric::task]
fn clean(text: String) -> Result<Vec<String>, String> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect();
    if words.is_empty() {
        return Err("the text has no words to classify".to_string());
    }
    Ok(words.into_iter().filter(|word| !STOPWORDS.contains(&word.as_str())).collect())
}
