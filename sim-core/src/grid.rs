//! The supply the meters are connected to: phase system, nominal voltage and frequency, the
//! synthesis sample rate and the load that draws current.

/// One conductor measured against neutral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    L1,
    L2,
    L3,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::L1, Phase::L2, Phase::L3];

    /// 0 for L1, 1 for L2, 2 for L3.
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(i: usize) -> Option<Phase> {
        Phase::ALL.get(i).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::L1 => "L1",
            Phase::L2 => "L2",
            Phase::L3 => "L3",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of phases (bit i = phase i).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PhaseSet(u8);

impl PhaseSet {
    pub const NONE: PhaseSet = PhaseSet(0);
    pub const ALL: PhaseSet = PhaseSet(0b111);

    pub fn of(phases: &[Phase]) -> PhaseSet {
        PhaseSet(phases.iter().fold(0, |m, p| m | (1 << p.index())))
    }

    #[inline]
    pub fn contains(self, p: Phase) -> bool {
        self.0 & (1 << p.index()) != 0
    }

    #[inline]
    pub fn contains_index(self, i: usize) -> bool {
        i < 3 && self.0 & (1 << i) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Phase> {
        Phase::ALL.into_iter().filter(move |p| self.contains(*p))
    }
}

/// How the supply is wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseSystem {
    /// One phase conductor against neutral (L1 only).
    Single,
    /// North-American 120/240 V: L1 and L2 are 180° apart, each `nominal` against neutral.
    SplitPhase,
    /// L1, L2, L3 at 0°, −120°, +120°.
    ThreePhase,
}

impl PhaseSystem {
    /// Number of measured voltage channels.
    pub fn channels(self) -> usize {
        match self {
            PhaseSystem::Single => 1,
            PhaseSystem::SplitPhase => 2,
            PhaseSystem::ThreePhase => 3,
        }
    }

    /// Phase angle offset of channel `i` in radians (added to the fundamental's angle).
    pub fn angle_offset(self, i: usize) -> f64 {
        use std::f64::consts::PI;
        match (self, i) {
            (_, 0) => 0.0,
            (PhaseSystem::SplitPhase, _) => PI,
            (_, 1) => -2.0 * PI / 3.0,
            _ => 2.0 * PI / 3.0,
        }
    }
}

/// The load every meter's current channels see (constant impedance: the current follows the
/// voltage envelope).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadSpec {
    /// RMS current per phase at nominal voltage, in A.
    pub current: f64,
    /// Displacement power factor, cos φ in (0, 1]; the current lags the voltage.
    pub power_factor: f64,
}

/// The supply as a whole.
#[derive(Debug, Clone, PartialEq)]
pub struct GridSpec {
    /// Nominal RMS voltage of each measured channel against neutral, in V (90–480).
    pub nominal: f64,
    /// Nominal frequency in Hz (50 or 60).
    pub frequency: f64,
    pub system: PhaseSystem,
    /// Synthesis sample rate in Hz for `waveform` fidelity.
    pub sample_rate: f64,
    /// When present, current waveforms are synthesized and power/energy measured.
    pub load: Option<LoadSpec>,
}

impl GridSpec {
    pub fn channels(&self) -> usize {
        self.system.channels()
    }

    /// Cycles in the IEC 61000-4-30 basic window: 10 at 50 Hz, 12 at 60 Hz.
    pub fn basic_window_cycles(&self) -> u32 {
        if self.frequency < 55.0 {
            10
        } else {
            12
        }
    }

    /// Peak of the nominal sine, √2 · nominal.
    pub fn nominal_peak(&self) -> f64 {
        std::f64::consts::SQRT_2 * self.nominal
    }
}
