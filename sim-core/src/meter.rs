//! The meter's own logic: threshold/hysteresis trips per phase, trip and clear events with
//! source timestamps and sequence numbers, report-by-exception, the store-and-forward ring.

use crate::grid::Phase;
use crate::measure::MeasureEvent;
use crate::scenario::{EventCode, RbeSpec, Thresholds};
use crate::time::Seconds;

/// Settings of one meter.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterConfig {
    /// Fleet-wide meter number (unique in a run).
    pub id: u32,
    pub channels: usize,
    pub thresholds: Thresholds,
    pub rbe: RbeSpec,
    pub buffer_capacity: usize,
}

/// A trip or clear, as the meter logs and reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeterEvent {
    pub code: EventCode,
    pub phase: Phase,
    /// The Urms(1/2) value that caused it, V.
    pub value: f64,
    /// The limit it was compared against, V.
    pub limit: f64,
}

/// What a meter sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// Latest 10/12-cycle RMS per phase (unused phases 0), plus the meter's cumulative ring
    /// overflow count so the head-end can raise a buffer-overflow alarm.
    Reading {
        volts: [f32; 3],
        overflow: u64,
    },
    Event(MeterEvent),
}

/// One message with its source timestamp and per-meter sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub meter: u32,
    /// Per-meter sequence number, shared by readings and events, starting at 0.
    pub seq: u64,
    pub source_time: Seconds,
    pub payload: Payload,
}
