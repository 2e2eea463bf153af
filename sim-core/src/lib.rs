//! Sans-io core of gridloop: waveform synthesis, IEC 61000-4-30 style measurement, meter and
//! head-end state machines, the network link model and the virtual-time harness.
//!
//! Nothing in this crate reads a clock, touches a socket or a file, or uses a global RNG: time
//! (`Seconds` since the scenario start) and seeded RNGs are always passed in by the caller, so
//! the same logic runs in virtual time (sim mode) and on real sockets (live and HIL modes).

pub mod disturbance;
pub mod encoding;
pub mod expect;
pub mod grid;
pub mod harness;
pub mod head_end;
pub mod measure;
pub mod meter;
pub mod network;
pub mod outcome;
pub mod rms_model;
pub mod scenario;
pub mod synth;
pub mod thermal;
pub mod time;

pub use grid::{GridSpec, Phase, PhaseSet, PhaseSystem};
pub use scenario::Scenario;
pub use time::Seconds;
