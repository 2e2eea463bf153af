//! Waveform synthesis: the ideal supply plus active disturbances, streamed in fixed-size blocks
//! of f32 samples (per channel), allocation-free after construction, seeded noise.
//!
//! [`SupplyModel`] is the analytic description (envelope, phase, harmonics, additive terms at
//! any time t) shared with `rms_model`; [`Synthesizer`] evaluates it fast, block by block.

use crate::disturbance::Disturbance;
use crate::grid::GridSpec;
use crate::time::Seconds;

/// A block of samples for all channels: `voltage[ch][..len]`, `current[ch][..len]`.
#[derive(Debug, Clone)]
pub struct SampleBlock {
    /// Index of the first sample in the stream.
    pub start: u64,
    /// Valid samples per channel.
    pub len: usize,
    pub sample_rate: f64,
    pub voltage: Vec<Vec<f32>>,
    /// Empty when the grid has no load.
    pub current: Vec<Vec<f32>>,
}

impl SampleBlock {
    pub fn new(channels: usize, capacity: usize, sample_rate: f64, with_current: bool) -> Self {
        SampleBlock {
            start: 0,
            len: 0,
            sample_rate,
            voltage: vec![vec![0.0; capacity]; channels],
            current: if with_current { vec![vec![0.0; capacity]; channels] } else { Vec::new() },
        }
    }

    pub fn capacity(&self) -> usize {
        self.voltage.first().map_or(0, Vec::len)
    }

    pub fn channels(&self) -> usize {
        self.voltage.len()
    }

    pub fn time_of(&self, i: usize) -> Seconds {
        (self.start + i as u64) as f64 / self.sample_rate
    }
}

/// Analytic model of the supply seen by one meter group.
#[derive(Debug, Clone)]
pub struct SupplyModel {
    pub grid: GridSpec,
    pub disturbances: Vec<Disturbance>,
}

impl SupplyModel {
    /// `disturbances` are those that apply to the group, with point-on-wave onsets resolved.
    pub fn new(grid: &GridSpec, disturbances: Vec<Disturbance>) -> Self {
        SupplyModel { grid: grid.clone(), disturbances }
    }
}

/// Streams samples of a [`SupplyModel`].
#[derive(Debug)]
pub struct Synthesizer {
    _model: SupplyModel,
}

impl Synthesizer {
    /// `seed` drives the noise generator (one seed per meter).
    pub fn new(model: SupplyModel, _seed: u64) -> Self {
        Synthesizer { _model: model }
    }

    /// Fill `block` with the next `n` samples (n ≤ capacity) and advance.
    pub fn fill(&mut self, _block: &mut SampleBlock, _n: usize) {
        unimplemented!("synth::Synthesizer::fill")
    }
}

/// Move onsets that ask for a point-on-wave angle to the next instant where L1's fundamental
/// (at nominal frequency) is at that angle.
pub fn resolve_point_on_wave(grid: &GridSpec, disturbances: &mut [Disturbance]) {
    for d in disturbances.iter_mut() {
        if let Some(deg) = d.point_on_wave_deg.take() {
            let period = 1.0 / grid.frequency;
            let target = deg.rem_euclid(360.0) / 360.0 * period;
            let cycles = ((d.at - target) / period - 1e-9).ceil();
            d.at = cycles * period + target;
        }
    }
}
