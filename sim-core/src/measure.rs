//! IEC 61000-4-30 style measurement (STANDARDS.md §4–5): half-cycle segmentation at the
//! fundamental's zero crossings, Urms(1/2), 10/12-cycle and 150/180-cycle RMS, frequency, THD to
//! the 50th order, active power and energy, and dip/swell/interruption detection.
//!
//! Two stages: [`WaveformFrontEnd`] turns samples into half-cycle mean squares (plus THD,
//! frequency and power windows); [`Aggregator`] turns half-cycle mean squares into Urms(1/2),
//! aggregates and power-quality events. The `rms` fidelity feeds the aggregator directly from
//! the disturbance model, so both fidelities share every decision after the front end.
//! Results never depend on the block sizes in which samples arrive.

use crate::grid::Phase;
use crate::scenario::{PqEventKind, PqThresholds};
use crate::synth::SampleBlock;
use crate::time::Seconds;

/// Settings for one meter's measurement chain.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasureConfig {
    /// Udin: declared input voltage (the nominal), V.
    pub nominal: f64,
    /// Nominal frequency, Hz (50 or 60).
    pub frequency: f64,
    /// Sample rate, Hz (waveform front end only).
    pub sample_rate: f64,
    /// Number of voltage channels (1–3).
    pub channels: usize,
    /// Compute THD per 10/12-cycle window (costs an FFT per window).
    pub thd: bool,
    /// Compute active power and energy (needs current samples).
    pub power: bool,
    pub pq: PqThresholds,
}

/// A detected power-quality event.
#[derive(Debug, Clone, PartialEq)]
pub struct PqEvent {
    pub kind: PqEventKind,
    /// `Some` for a single-channel event, `None` for the polyphase-aggregated event.
    pub phase: Option<Phase>,
    /// Time-stamp of the first Urms(1/2) value beyond the threshold (its window end), s.
    pub start: Seconds,
    /// Time-stamp of the first Urms(1/2) value back past threshold ± hysteresis, s.
    pub end: Seconds,
    /// Residual (dip, interruption: lowest Urms(1/2)) or magnitude (swell: highest), V.
    pub extreme: f64,
}

impl PqEvent {
    pub fn duration(&self) -> Seconds {
        self.end - self.start
    }
}

/// Everything the measurement chain reports, in time order per channel.
#[derive(Debug, Clone, PartialEq)]
pub enum MeasureEvent {
    /// Mean square of one half cycle between two zero crossings, V².
    HalfCycle {
        ch: usize,
        t_start: Seconds,
        t_end: Seconds,
        ms: f64,
    },
    /// Urms(1/2): RMS over the last full cycle, refreshed every half cycle; `t_end` is the
    /// window end (when the value becomes available).
    UrmsHalf {
        ch: usize,
        t_start: Seconds,
        t_end: Seconds,
        value: f64,
    },
    /// 10/12-cycle RMS; `flagged` when the window overlapped a dip, swell or interruption.
    Rms10 {
        ch: usize,
        t_start: Seconds,
        t_end: Seconds,
        value: f64,
        flagged: bool,
    },
    /// 150/180-cycle aggregate (RMS of 15 basic windows), resynchronised at 10-min boundaries.
    Rms150 {
        ch: usize,
        t_start: Seconds,
        t_end: Seconds,
        value: f64,
        flagged: bool,
    },
    /// THD (subgroup form, orders 2..=50) over a 10/12-cycle window, % of the fundamental.
    Thd {
        ch: usize,
        t_start: Seconds,
        t_end: Seconds,
        percent: f64,
    },
    /// Frequency from whole cycles between zero crossings over the window, Hz.
    Frequency {
        t_start: Seconds,
        t_end: Seconds,
        hz: f64,
    },
    /// Active power over a 10/12-cycle window and cumulative energy since start.
    Power {
        ch: usize,
        t_start: Seconds,
        t_end: Seconds,
        watts: f64,
        energy_wh: f64,
    },
    /// A completed power-quality event.
    Pq(PqEvent),
}

impl MeasureEvent {
    /// The instant the value became available.
    pub fn time(&self) -> Seconds {
        match self {
            MeasureEvent::HalfCycle { t_end, .. }
            | MeasureEvent::UrmsHalf { t_end, .. }
            | MeasureEvent::Rms10 { t_end, .. }
            | MeasureEvent::Rms150 { t_end, .. }
            | MeasureEvent::Thd { t_end, .. }
            | MeasureEvent::Frequency { t_end, .. }
            | MeasureEvent::Power { t_end, .. } => *t_end,
            MeasureEvent::Pq(e) => e.end,
        }
    }
}

/// Samples → half-cycle mean squares, THD, frequency and power windows.
#[derive(Debug)]
pub struct WaveformFrontEnd {
    _cfg: MeasureConfig,
}

impl WaveformFrontEnd {
    pub fn new(cfg: &MeasureConfig) -> Self {
        WaveformFrontEnd { _cfg: cfg.clone() }
    }

    /// Consume one block (samples `block.start .. block.start + block.len`). Appends
    /// `HalfCycle`, `Thd`, `Frequency` and `Power` events to `out`.
    pub fn push(&mut self, _block: &SampleBlock, _out: &mut Vec<MeasureEvent>) {
        unimplemented!("measure::WaveformFrontEnd::push")
    }
}

/// Half-cycle mean squares → Urms(1/2), 10/12- and 150/180-cycle RMS, PQ events.
#[derive(Debug)]
pub struct Aggregator {
    _cfg: MeasureConfig,
}

impl Aggregator {
    pub fn new(cfg: &MeasureConfig) -> Self {
        Aggregator { _cfg: cfg.clone() }
    }

    /// Feed one half cycle of channel `ch`. Appends `UrmsHalf`, `Rms10`, `Rms150` and `Pq`
    /// events to `out`.
    pub fn push_half_cycle(
        &mut self,
        _ch: usize,
        _t_start: Seconds,
        _t_end: Seconds,
        _ms: f64,
        _out: &mut Vec<MeasureEvent>,
    ) {
        unimplemented!("measure::Aggregator::push_half_cycle")
    }

    /// End of stream at `t`: close open PQ events (ending at `t`).
    pub fn finish(&mut self, _t: Seconds, _out: &mut Vec<MeasureEvent>) {
        unimplemented!("measure::Aggregator::finish")
    }
}

/// The whole chain for the waveform fidelity.
#[derive(Debug)]
pub struct Measurement {
    pub front: WaveformFrontEnd,
    pub aggregator: Aggregator,
}

impl Measurement {
    pub fn new(cfg: &MeasureConfig) -> Self {
        Measurement {
            front: WaveformFrontEnd::new(cfg),
            aggregator: Aggregator::new(cfg),
        }
    }

    /// Push a block through both stages. `out` receives every event, including the
    /// `HalfCycle` events the aggregator consumed.
    pub fn push(&mut self, _block: &SampleBlock, _out: &mut Vec<MeasureEvent>) {
        unimplemented!("measure::Measurement::push")
    }

    pub fn finish(&mut self, t: Seconds, out: &mut Vec<MeasureEvent>) {
        self.aggregator.finish(t, out)
    }
}

/// RMS of a slice, accumulated in f64.
pub fn rms(samples: &[f32]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let ss: f64 = samples.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    (ss / samples.len() as f64).sqrt()
}
