//! The smallest fabric job: one task that greets.
//!
//! ```text
//! fabric submit examples/target/wasm32-wasip2/release/hello.wasm --args '{"name": "fabric"}'
//! ```

/// Greets `name` (default "world"), logging on the way.
#[fabric::task]
fn main(name: Option<String>) -> String {
    let name = name.unwrap_or_else(|| "world".to_string());
    println!("saying hello to {name}");
    format!("Hello, {name}!")
}
