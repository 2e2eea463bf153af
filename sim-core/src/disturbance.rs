//! Disturbances: time-bounded, composable changes to the ideal supply (STANDARDS.md §7).
//!
//! A disturbance is data only. `synth` turns the active set into samples, `rms_model` into
//! per-half-cycle mean squares; both read the same definitions so the two fidelities agree.
//! All magnitudes are per unit (pu) of the nominal peak unless the field says otherwise.

use std::sync::Arc;

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
    /// A recorded waveform (e.g. a COMTRADE file, lowered by the `scenarios` crate) that
    /// replaces the synthesized voltage of the channels it carries samples for, from the onset
    /// for the recording's length. Waveform fidelity only (`rms_model` ignores it; the
    /// `scenarios` crate refuses `rms` groups with a replay).
    Replay(Replay),
}

/// Recorded samples played back in place of the synthesized voltage.
///
/// Sample j of a channel is the voltage at `at + j / rate`; between samples the value is
/// interpolated linearly (so any recording rate plays at any synthesis rate), and after the
/// last one it holds until `at + duration`. Load currents are not replayed: they keep following
/// the synthesized envelope.
#[derive(Clone, PartialEq)]
pub struct Replay {
    /// Samples per channel index (0 = L1), V at the meter's terminals; `None` = not replayed.
    pub channels: [Option<Arc<[f32]>>; 3],
    /// Samples per second of the recording.
    pub rate: f64,
    /// Length of the replay window, s (the longest channel's samples / rate).
    pub duration: Seconds,
    /// Offset of the recording's trigger from its first sample, s: the disturbance's onset for
    /// `trip … within` and alarm latency (see [`Disturbance::onset`]).
    pub trigger: Seconds,
    /// Where the samples came from, for messages (e.g. the `.cfg` path).
    pub source: String,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lens: Vec<Option<usize>> = self
            .channels
            .iter()
            .map(|c| c.as_ref().map(|s| s.len()))
            .collect();
        f.debug_struct("Replay")
            .field("samples", &lens)
            .field("rate", &self.rate)
            .field("duration", &self.duration)
            .field("trigger", &self.trigger)
            .field("source", &self.source)
            .finish()
    }
}

impl Replay {
    /// Build a replay of `channels` at `rate` Hz; the duration is the longest channel's length.
    pub fn new(
        channels: [Option<Arc<[f32]>>; 3],
        rate: f64,
        trigger: Seconds,
        source: String,
    ) -> Self {
        let longest = channels
            .iter()
            .flatten()
            .map(|c| c.len())
            .max()
            .unwrap_or(0);
        Replay {
            duration: if rate > 0.0 {
                longest as f64 / rate
            } else {
                0.0
            },
            channels,
            rate,
            trigger,
            source,
        }
    }

    /// The replayed voltage of channel `ch` at `elapsed` s after the onset, when the replay
    /// carries that channel and `elapsed` lies inside its samples' window.
    #[inline]
    pub fn value(&self, ch: usize, elapsed: Seconds) -> Option<f64> {
        let samples = self.channels.get(ch)?.as_ref()?;
        let last = samples.len().checked_sub(1)?;
        let x = elapsed * self.rate;
        if x.is_nan() || x < 0.0 || x >= samples.len() as f64 {
            return None;
        }
        // Same rate and an onset on the sample grid: hit samples exactly, not 1e-12 beside.
        let r = x.round();
        let x = if (x - r).abs() < 1e-6 { r } else { x };
        let j = (x.floor() as usize).min(last);
        let v0 = f64::from(samples[j]);
        if j == last {
            return Some(v0);
        }
        let w = x - j as f64;
        Some(if w == 0.0 {
            v0
        } else {
            v0 + (f64::from(samples[j + 1]) - v0) * w
        })
    }
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
            DisturbanceKind::Replay(r) => r.duration,
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
            DisturbanceKind::Replay(_) => "replay",
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

    /// The instant a trip is attributed to: `at`, or for a replay its recording's trigger
    /// (`at + trigger`, kept inside the window), so a replayed disturbance keeps its onset.
    pub fn onset(&self) -> Seconds {
        match &self.kind {
            DisturbanceKind::Replay(r) => self.at + r.trigger.clamp(0.0, r.duration.max(0.0)),
            _ => self.at,
        }
    }

    pub fn applies_to_group(&self, group: usize) -> bool {
        self.groups.is_empty() || self.groups.contains(&group)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn replay_values_interpolate_and_stop_at_the_end() {
        let r = Replay::new(
            [Some(Arc::from(vec![0.0_f32, 10.0, 20.0])), None, None],
            100.0,
            0.015,
            "x.cfg".into(),
        );
        assert_eq!(r.duration, 0.03);
        assert_eq!(r.value(0, 0.0), Some(0.0));
        assert!((r.value(0, 0.005).unwrap() - 5.0).abs() < 1e-9);
        assert_eq!(r.value(0, 0.01), Some(10.0));
        // Inside the last sample's slot: hold.
        assert_eq!(r.value(0, 0.025), Some(20.0));
        assert_eq!(r.value(0, 0.03), None);
        assert_eq!(r.value(0, -0.001), None);
        assert_eq!(r.value(0, f64::NAN), None);
        assert_eq!(r.value(1, 0.01), None);
        assert_eq!(r.value(7, 0.01), None);
        let d = Disturbance {
            at: 1.0,
            point_on_wave_deg: None,
            phases: PhaseSet::ALL,
            groups: vec![],
            kind: DisturbanceKind::Replay(r),
        };
        assert_eq!((d.onset(), d.end()), (1.015, 1.03));
        assert!(format!("{d:?}").contains("samples: [Some(3), None, None]"));
    }
}
