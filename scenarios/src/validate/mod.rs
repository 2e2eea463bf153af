//! Semantic validation and lowering of parsed DTOs into `sim_core::Scenario`. Every problem is
//! collected (not just the first) with the field path and the position from the span index.

mod lower;

pub use lower::{drift_temperature, lower};
