//! Native core of txfast.
//!
//! Pure logic lives in plain Rust modules (`hash`, `decode`, `engine`, `explain`) and is tested with
//! `cargo test`; the PyO3 bindings in `py` are a thin layer compiled only with the `python`
//! feature (maturin enables it).

pub mod decode;
pub mod engine;
pub mod error;
pub mod explain;
pub mod hash;
pub mod tabular;

#[cfg(feature = "python")]
mod py;
