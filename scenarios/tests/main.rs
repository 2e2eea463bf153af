//! Integration tests of the scenarios crate: the DESIGN.md sketch, the bad-scenario corpus,
//! discovery, and robustness against mutated input.
#![allow(clippy::unwrap_used)]

mod bad_corpus;
mod design_sketch;
mod discover;
mod no_panic;
mod rules;
