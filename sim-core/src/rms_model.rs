//! The `rms` fidelity: per-half-cycle mean squares, THD and frequency computed from the
//! disturbance model without synthesizing samples, so fleets of thousands of meters are cheap.
