//! Integration tests of the scenarios crate: the DESIGN.md sketch, the bad-scenario corpus,
//! discovery, robustness against mutated input, and the shipped library run end to end.
#![allow(clippy::unwrap_used)]

mod bad_corpus;
mod design_sketch;
mod discover;
mod library;
mod no_panic;
mod replay;
mod rules;
