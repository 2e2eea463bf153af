//! Disturbances: time-bounded, composable changes to the ideal supply (STANDARDS.md §7).
//!
//! A disturbance is data only. `synth` turns the active set into samples, `rms_model` into
//! per-half-cycle mean squares; both read the same definitions so the two fidelities agree.
//! All magnitudes are per unit (pu) of the nominal peak unless the field says otherwise.

use crate::grid::PhaseSet;
use crate::time::Seconds;

/// Conductor material for the thermal-drift model (α20 from STANDARDS.md §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conductor {
    /// Annealed copper, α20 = 0.00393 /K.
    Copper,
    /// EC-grade aluminium, α20 = 0.00403 /K.
    Aluminium,
}

impl Conductor {
    pub fn alpha20(self) -> f64 {
        match self {
            Conductor::Copper => 0.00393,
            Conductor::Aluminium => 0.00403,
        }
    }
}

/// One harmonic component, relative to the fundamental.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Harmonic {
    /// Harmonic order h ≥ 2 (frequency h · f).
    pub order: u32,
    /// Amplitude relative to the fundamental (0.05 = 5 %).
    pub magnitude: f64,
    /// Phase angle in degrees, relative to h × the fundamental's angle.
    pub phase_deg: f64,
}

/// Shape of a flicker modulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlickerShape {
    Sine,
    /// Rectangular modulation (IEC 61000-4-15 test form); one period = two changes.
    Square,
}

/// Parameters that shape an RMS-variation (sag, swell, interruption) envelope.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RmsVariation {
    /// Envelope level during the event, pu of the pre-event amplitude (sag residual 0.7,
    /// swell magnitude 1.2, interruption ≤ 0.1).
    pub level: f64,
    /// Time from onset to recovery start (the event's nominal duration), s.
    pub duration: Seconds,
    /// Linear slew time of each edge, s (0 = a step).
    pub ramp: Seconds,
    /// Phase jump in degrees applied to the fundamental while the event lasts.
    pub phase_jump_deg: f64,
}

/// The kinds of disturbance and their parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum DisturbanceKind {
    Sag(RmsVariation),
    Swell(RmsVariation),
    Interruption(RmsVariation),
    /// Harmonic content; when `end` is given the magnitudes move linearly from `components`
    /// to `end` over the duration (harmonics that change over time).
    Harmonics {
        components: Vec<Harmonic>,
        end: Option<Vec<Harmonic>>,
        duration: Seconds,
    },
    /// A component at a non-integer multiple of the fundamental.
    Interharmonic {
        frequency: f64,
        magnitude: f64,
        phase_deg: f64,
        duration: Seconds,
    },
    /// Amplitude modulation: envelope × (1 + depth/2 · m(t)) with m ∈ [−1, 1], so `depth` is
    /// ΔV/V peak to peak.
    Flicker {
        depth: f64,
        frequency: f64,
        shape: FlickerShape,
        duration: Seconds,
    },
    /// Damped ringing added to the wave: magnitude · e^(−t/τ) · sin(2π f t + phase).
    OscillatoryTransient {
        magnitude: f64,
        frequency: f64,
        tau: Seconds,
        phase_deg: f64,
        duration: Seconds,
    },
    /// Unidirectional double-exponential impulse added to the wave:
    /// k · magnitude · (e^(−t/τ_fall) − e^(−t/τ_rise)), with k chosen so the peak equals
    /// `magnitude` (negative magnitudes pull the wave down); `tau_rise` < `tau_fall`.
    ImpulsiveTransient {
        magnitude: f64,
        tau_rise: Seconds,
        tau_fall: Seconds,
        duration: Seconds,
    },
    /// Commutation notches: `per_cycle` notches of `depth` pu and `width` s, pulling the wave
    /// towards zero, equally spaced from the point-on-wave `angle_deg`.
    Notch {
        depth: f64,
        width: Seconds,
        per_cycle: u32,
        angle_deg: f64,
        duration: Seconds,
    },
    DcOffset {
        magnitude: f64,
        duration: Seconds,
    },
    /// Gaussian noise with RMS `rms` pu of nominal RMS (so 0.01 = 1 % of nominal RMS).
    Noise {
        rms: f64,
        duration: Seconds,
    },
    /// Trapezoidal frequency excursion: ramps to `nominal + deviation` over `ramp`, holds,
    /// and ramps back over `ramp` so it is back at nominal after `duration`. With
    /// `return_to_nominal = false` it ramps once and stays (a frequency ramp/step).
    Frequency {
        deviation: f64,
        ramp: Seconds,
        duration: Seconds,
        return_to_nominal: bool,
    },
    /// Per-phase magnitude (pu) and angle (degrees) offsets: the phases in `Disturbance::phases`
    /// take `magnitudes[i]` / `angles[i]`.
    Unbalance {
        magnitudes: [f64; 3],
        angles_deg: [f64; 3],
        duration: Seconds,
    },
    /// A heating service conductor between the source and the meter (STANDARDS.md §8):
    /// m·c·dT/dt = I²R(T) − (T − T_amb)/R_th, R(T) = R20·(1 + α(T − 20)), and the meter sees
    /// V_source − I·(R(T)·cos φ + X·sin φ). The load current steps to `current` at onset.
    ThermalDrift(ThermalDrift),
}

/// Parameters of the first-order conductor heating model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThermalDrift {
    pub conductor: Conductor,
    /// Loop (out-and-back) resistance at 20 °C, Ω.
    pub r20: f64,
    /// Loop reactance, Ω (temperature independent).
    pub x: f64,
    /// Load current after onset, A RMS.
    pub current: f64,
    /// Load power factor (cos φ, lagging).
    pub power_factor: f64,
    /// Ambient temperature, °C.
    pub ambient: f64,
    /// Conductor temperature at onset, °C.
    pub initial: f64,
    /// Thermal resistance conductor→ambient, K/W (steady rise = I²R·R_th).
    pub thermal_resistance: f64,
    /// Thermal time constant m·c·R_th, s.
    pub tau: Seconds,
    pub duration: Seconds,
}

/// One disturbance on the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Disturbance {
    /// Onset, s since scenario start.
    pub at: Seconds,
    /// When set, the onset is moved to the next instant where L1's fundamental is at this
    /// point-on-wave angle (degrees, 0 = positive-going zero crossing).
    pub point_on_wave_deg: Option<f64>,
    /// Phases affected.
    pub phases: PhaseSet,
    /// Meter groups affected (indices into `Scenario::groups`); empty = all groups.
    pub groups: Vec<usize>,
    pub kind: DisturbanceKind,
}

impl DisturbanceKind {
    /// Nominal length of the disturbance (its window).
    pub fn duration(&self) -> Seconds {
        match self {
            DisturbanceKind::Sag(v)
            | DisturbanceKind::Swell(v)
            | DisturbanceKind::Interruption(v) => v.duration + v.ramp,
            DisturbanceKind::Harmonics { duration, .. }
            | DisturbanceKind::Interharmonic { duration, .. }
            | DisturbanceKind::Flicker { duration, .. }
            | DisturbanceKind::OscillatoryTransient { duration, .. }
            | DisturbanceKind::ImpulsiveTransient { duration, .. }
            | DisturbanceKind::Notch { duration, .. }
            | DisturbanceKind::DcOffset { duration, .. }
            | DisturbanceKind::Noise { duration, .. }
            | DisturbanceKind::Frequency { duration, .. }
            | DisturbanceKind::Unbalance { duration, .. } => *duration,
            DisturbanceKind::ThermalDrift(t) => t.duration,
        }
    }

    /// Short name used in reports and errors.
    pub fn name(&self) -> &'static str {
        match self {
            DisturbanceKind::Sag(_) => "sag",
            DisturbanceKind::Swell(_) => "swell",
            DisturbanceKind::Interruption(_) => "interruption",
            DisturbanceKind::Harmonics { .. } => "harmonics",
            DisturbanceKind::Interharmonic { .. } => "interharmonic",
            DisturbanceKind::Flicker { .. } => "flicker",
            DisturbanceKind::OscillatoryTransient { .. } => "oscillatory_transient",
            DisturbanceKind::ImpulsiveTransient { .. } => "impulsive_transient",
            DisturbanceKind::Notch { .. } => "notch",
            DisturbanceKind::DcOffset { .. } => "dc_offset",
            DisturbanceKind::Noise { .. } => "noise",
            DisturbanceKind::Frequency { .. } => "frequency",
            DisturbanceKind::Unbalance { .. } => "unbalance",
            DisturbanceKind::ThermalDrift(_) => "thermal_drift",
        }
    }

    /// True when the disturbance is a change of RMS magnitude that a trip can be attributed to
    /// (its onset counts for `trip … within`).
    pub fn is_voltage_onset(&self) -> bool {
        !matches!(self, DisturbanceKind::Noise { .. })
    }
}

impl Disturbance {
    /// End of the disturbance window.
    pub fn end(&self) -> Seconds {
        self.at + self.kind.duration()
    }

    pub fn applies_to_group(&self, group: usize) -> bool {
        self.groups.is_empty() || self.groups.contains(&group)
    }
}
