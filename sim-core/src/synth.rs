//! Waveform synthesis: the ideal supply plus active disturbances, streamed in fixed-size blocks
//! of f32 samples (per channel), allocation-free after construction, seeded noise.
//!
//! [`SupplyModel`] is the analytic description (envelope, phase, harmonics, additive terms at
//! any time t) shared with `rms_model`; [`Synthesizer`] evaluates it fast, block by block.
//!
//! Conventions the two share:
//! - the fundamental's angle is 2π·∫f dt + the phase system's offset + active phase jumps and
//!   unbalance angles; frequency excursions are system-wide (they ignore `phases`);
//! - interharmonic, oscillatory-transient and flicker phases count from the disturbance onset;
//! - notch windows are placed on the affected channel's own fundamental angle, their width
//!   converted to angle at nominal frequency;
//! - v = √2·U·E(t)·[sin θ + Σ a_h sin(hθ + φ_h)] + interharmonics + transients, then notches,
//!   then DC offset, then noise; inside a replay window, the replayed samples (interpolated)
//!   replace all of it on the channels the replay carries.
//!
//! The synthesizer works in chunks of up to 512 samples on a fixed grid of sample indices, split
//! at every model edge; inside a chunk the fundamental and each harmonic come from phasor
//! rotations seeded from the exact f64 angle at the chunk start (4 lanes, vectorised), so error
//! never accumulates and output is bit-identical for any block sizes. Noise draws come from one
//! Pcg64 stream per channel, derived from the seed.

use std::f64::consts::{SQRT_2, TAU};

use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rand_pcg::Pcg64;

use crate::disturbance::{Disturbance, DisturbanceKind, FlickerShape, Harmonic, RmsVariation};
use crate::grid::GridSpec;
use crate::thermal::ThermalProfile;
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
            current: if with_current {
                vec![vec![0.0; capacity]; channels]
            } else {
                Vec::new()
            },
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
///
/// All evaluation methods are pure functions of `(channel, t)`. Build it with
/// [`SupplyModel::new`]; the thermal profiles are precomputed there, so do not edit
/// `disturbances` afterwards (build a new model instead).
#[derive(Debug, Clone)]
pub struct SupplyModel {
    pub grid: GridSpec,
    pub disturbances: Vec<Disturbance>,
    /// Precomputed conductor heating, parallel to `disturbances`.
    thermal: Vec<Option<ThermalProfile>>,
}

/// Fraction of a cycle count: `x − ⌊x⌋` in [0, 1).
#[inline]
fn frac(x: f64) -> f64 {
    x - x.floor()
}

/// End of a disturbance's active window (`+∞` for a frequency change that does not return).
fn window_end(d: &Disturbance) -> Seconds {
    match d.kind {
        DisturbanceKind::Frequency {
            return_to_nominal: false,
            ..
        } => f64::INFINITY,
        _ => d.at + d.kind.duration(),
    }
}

#[inline]
fn is_active(d: &Disturbance, t: Seconds) -> bool {
    t >= d.at && t < window_end(d)
}

/// Envelope factor of a sag/swell/interruption at `t` (1 outside its window): 1 → level over
/// `ramp` from `at`, level until `at + duration`, level → 1 over `ramp`.
fn rms_variation_factor(d: &Disturbance, v: &RmsVariation, t: Seconds) -> f64 {
    if !is_active(d, t) {
        return 1.0;
    }
    let s = if v.ramp > 0.0 {
        let tau = t - d.at;
        (tau / v.ramp)
            .min((v.duration + v.ramp - tau) / v.ramp)
            .clamp(0.0, 1.0)
    } else {
        1.0
    };
    1.0 + (v.level - 1.0) * s
}

/// Trapezoid shape (0..1) of a frequency excursion and its integral since onset.
fn frequency_shape(
    at: Seconds,
    ramp: Seconds,
    duration: Seconds,
    ret: bool,
    t: Seconds,
) -> (f64, f64) {
    let tau = t - at;
    if tau.is_nan() || tau < 0.0 {
        return (0.0, 0.0);
    }
    if ret {
        let r = ramp.min(duration / 2.0).max(0.0);
        if tau >= duration {
            return (0.0, duration - r);
        }
        if r <= 0.0 {
            return (1.0, tau);
        }
        let g = (tau / r).min((duration - tau) / r).min(1.0);
        let integral = if tau < r {
            tau * tau / (2.0 * r)
        } else if tau < duration - r {
            r / 2.0 + (tau - r)
        } else {
            (duration - r) - (duration - tau) * (duration - tau) / (2.0 * r)
        };
        (g, integral)
    } else {
        let r = ramp.max(0.0);
        if r <= 0.0 {
            return (1.0, tau);
        }
        if tau < r {
            (tau / r, tau * tau / (2.0 * r))
        } else {
            (1.0, r / 2.0 + (tau - r))
        }
    }
}

/// Peak normalisation of a double exponential e^(−t/τf) − e^(−t/τr): 1 / its extreme value.
fn impulse_norm(tau_rise: f64, tau_fall: f64) -> Option<f64> {
    if !(tau_rise > 0.0 && tau_fall > 0.0) || tau_rise == tau_fall {
        return None;
    }
    let t_peak = (tau_fall / tau_rise).ln() * tau_fall * tau_rise / (tau_fall - tau_rise);
    let peak = (-t_peak / tau_fall).exp() - (-t_peak / tau_rise).exp();
    (peak.abs() > 0.0).then(|| 1.0 / peak)
}

/// Pull `v` towards zero by `dv` without crossing it.
#[inline]
fn notch_pull(v: f64, dv: f64) -> f64 {
    if v > 0.0 {
        (v - dv).max(0.0)
    } else {
        (v + dv).min(0.0)
    }
}

impl SupplyModel {
    /// `disturbances` are those that apply to the group, with point-on-wave onsets resolved.
    pub fn new(grid: &GridSpec, disturbances: Vec<Disturbance>) -> Self {
        let thermal = disturbances
            .iter()
            .map(|d| match &d.kind {
                DisturbanceKind::ThermalDrift(t) => Some(ThermalProfile::new(t)),
                _ => None,
            })
            .collect();
        SupplyModel {
            grid: grid.clone(),
            disturbances,
            thermal,
        }
    }

    pub fn channels(&self) -> usize {
        self.grid.channels()
    }

    /// √2 · nominal, V.
    pub fn nominal_peak(&self) -> f64 {
        self.grid.nominal_peak()
    }

    /// Fundamental cycles since t = 0: ∫ f dt including frequency excursions (f64, unreduced).
    pub fn cycles(&self, t: Seconds) -> f64 {
        let mut c = self.grid.frequency * t;
        for d in &self.disturbances {
            if let DisturbanceKind::Frequency {
                deviation,
                ramp,
                duration,
                return_to_nominal,
            } = d.kind
            {
                c += deviation * frequency_shape(d.at, ramp, duration, return_to_nominal, t).1;
            }
        }
        c
    }

    /// Instantaneous fundamental frequency, Hz. Frequency excursions are system-wide: they
    /// apply to every channel whatever their `phases`.
    pub fn frequency(&self, t: Seconds) -> f64 {
        let mut f = self.grid.frequency;
        for d in &self.disturbances {
            if let DisturbanceKind::Frequency {
                deviation,
                ramp,
                duration,
                return_to_nominal,
            } = d.kind
            {
                f += deviation * frequency_shape(d.at, ramp, duration, return_to_nominal, t).0;
            }
        }
        f
    }

    /// Angle added to channel `ch`'s fundamental at `t`: the phase system's offset, active
    /// phase jumps of sags/swells/interruptions and unbalance angles, radians.
    pub fn angle_offset(&self, ch: usize, t: Seconds) -> f64 {
        let mut off = self.grid.system.angle_offset(ch);
        for d in &self.disturbances {
            if !d.phases.contains_index(ch) || !is_active(d, t) {
                continue;
            }
            match &d.kind {
                DisturbanceKind::Sag(v)
                | DisturbanceKind::Swell(v)
                | DisturbanceKind::Interruption(v) => {
                    off += v.phase_jump_deg.to_radians();
                }
                DisturbanceKind::Unbalance { angles_deg, .. } => off += angles_deg[ch].to_radians(),
                _ => {}
            }
        }
        off
    }

    /// Unreduced fundamental angle of channel `ch` at `t`, radians (2π·cycles + offset). Its
    /// zero crossings (multiples of π) delimit half cycles.
    pub fn fundamental_angle(&self, ch: usize, t: Seconds) -> f64 {
        TAU * self.cycles(t) + self.angle_offset(ch, t)
    }

    /// The angle used for evaluating sines: 2π·frac(cycles) + offset (same value mod 2π as
    /// [`SupplyModel::fundamental_angle`], with full precision for long runs).
    fn carrier_angle(&self, ch: usize, t: Seconds) -> f64 {
        TAU * frac(self.cycles(t)) + self.angle_offset(ch, t)
    }

    /// Envelope factor of one disturbance on channel `ch` at `t` (1 when it does not shape the
    /// envelope).
    fn envelope_factor(&self, i: usize, ch: usize, t: Seconds) -> f64 {
        let d = &self.disturbances[i];
        if !d.phases.contains_index(ch) || !is_active(d, t) {
            return 1.0;
        }
        match &d.kind {
            DisturbanceKind::Sag(v)
            | DisturbanceKind::Swell(v)
            | DisturbanceKind::Interruption(v) => rms_variation_factor(d, v, t),
            DisturbanceKind::Flicker {
                depth,
                frequency,
                shape,
                ..
            } => {
                let x = frequency * (t - d.at);
                let m = match shape {
                    FlickerShape::Sine => (TAU * frac(x)).sin(),
                    FlickerShape::Square => {
                        if frac(x) < 0.5 {
                            1.0
                        } else {
                            -1.0
                        }
                    }
                };
                1.0 + depth / 2.0 * m
            }
            DisturbanceKind::Unbalance { magnitudes, .. } => magnitudes[ch],
            DisturbanceKind::ThermalDrift(_) => match &self.thermal[i] {
                Some(p) if self.grid.nominal > 0.0 => {
                    (self.grid.nominal - p.voltage_drop(t - d.at)) / self.grid.nominal
                }
                _ => 1.0,
            },
            _ => 1.0,
        }
    }

    /// Envelope of channel `ch` at `t`: product of RMS variations (with ramps), flicker,
    /// unbalance magnitude and the thermal-drift factor (V_source − ΔV)/V_source.
    pub fn envelope(&self, ch: usize, t: Seconds) -> f64 {
        let mut e = 1.0;
        for i in 0..self.disturbances.len() {
            e *= self.envelope_factor(i, ch, t);
        }
        e
    }

    /// Calls `f(order, magnitude, phase_rad)` for every active harmonic component of channel
    /// `ch` at `t` (magnitudes interpolated towards `end`; an order only in `end` grows from 0).
    pub fn for_each_harmonic(&self, ch: usize, t: Seconds, mut f: impl FnMut(u32, f64, f64)) {
        for d in &self.disturbances {
            let DisturbanceKind::Harmonics {
                components,
                end,
                duration,
            } = &d.kind
            else {
                continue;
            };
            if !d.phases.contains_index(ch) || !is_active(d, t) {
                continue;
            }
            let x = if *duration > 0.0 {
                ((t - d.at) / duration).clamp(0.0, 1.0)
            } else {
                0.0
            };
            for c in components {
                let m1 = match end {
                    Some(e) => e
                        .iter()
                        .find(|h| h.order == c.order)
                        .map_or(0.0, |h| h.magnitude),
                    None => c.magnitude,
                };
                f(
                    c.order,
                    c.magnitude + (m1 - c.magnitude) * x,
                    c.phase_deg.to_radians(),
                );
            }
            if let Some(e) = end {
                for h in e
                    .iter()
                    .filter(|h| !components.iter().any(|c| c.order == h.order))
                {
                    f(h.order, h.magnitude * x, h.phase_deg.to_radians());
                }
            }
        }
    }

    /// Active harmonic set of channel `ch` at `t` (allocates; see
    /// [`SupplyModel::for_each_harmonic`] for the allocation-free form).
    pub fn harmonics(&self, ch: usize, t: Seconds) -> Vec<Harmonic> {
        let mut v = Vec::new();
        self.for_each_harmonic(ch, t, |order, magnitude, phase| {
            v.push(Harmonic {
                order,
                magnitude,
                phase_deg: phase.to_degrees(),
            })
        });
        v
    }

    /// Noise RMS on channel `ch` at `t`, V (active noise disturbances add in quadrature).
    pub fn noise_rms(&self, ch: usize, t: Seconds) -> f64 {
        let mut var = 0.0;
        for d in &self.disturbances {
            if let DisturbanceKind::Noise { rms, .. } = d.kind {
                if d.phases.contains_index(ch) && is_active(d, t) {
                    var += rms * rms;
                }
            }
        }
        var.sqrt() * self.grid.nominal
    }

    /// Additive terms that do not follow the envelope: interharmonics and transients, V.
    fn additive_at(&self, ch: usize, t: Seconds) -> f64 {
        let vpk = self.nominal_peak();
        let mut a = 0.0;
        for d in &self.disturbances {
            if !d.phases.contains_index(ch) || !is_active(d, t) {
                continue;
            }
            let tau = t - d.at;
            match d.kind {
                DisturbanceKind::Interharmonic {
                    frequency,
                    magnitude,
                    phase_deg,
                    ..
                } => {
                    a += vpk
                        * magnitude
                        * (TAU * frac(frequency * tau) + phase_deg.to_radians()).sin();
                }
                DisturbanceKind::OscillatoryTransient {
                    magnitude,
                    frequency,
                    tau: decay,
                    phase_deg,
                    ..
                } if decay > 0.0 => {
                    a += vpk
                        * magnitude
                        * (-tau / decay).exp()
                        * (TAU * frac(frequency * tau) + phase_deg.to_radians()).sin();
                }
                DisturbanceKind::ImpulsiveTransient {
                    magnitude,
                    tau_rise,
                    tau_fall,
                    ..
                } => {
                    if let Some(k) = impulse_norm(tau_rise, tau_fall) {
                        a += vpk
                            * magnitude
                            * k
                            * ((-tau / tau_fall).exp() - (-tau / tau_rise).exp());
                    }
                }
                _ => {}
            }
        }
        a
    }

    /// Apply active notches (carrier angle `theta`) to `v` and add the DC offset.
    fn notch_and_dc(&self, ch: usize, t: Seconds, theta: f64, mut v: f64) -> f64 {
        let vpk = self.nominal_peak();
        let mut dc = 0.0;
        for d in &self.disturbances {
            if !d.phases.contains_index(ch) || !is_active(d, t) {
                continue;
            }
            match d.kind {
                DisturbanceKind::Notch {
                    depth,
                    width,
                    per_cycle,
                    angle_deg,
                    ..
                } => {
                    if let Some((spacing, w)) = self.notch_geometry(per_cycle, width) {
                        if (theta - angle_deg.to_radians()).rem_euclid(spacing) < w {
                            v = notch_pull(v, depth * vpk);
                        }
                    }
                }
                DisturbanceKind::DcOffset { magnitude, .. } => dc += magnitude * vpk,
                _ => {}
            }
        }
        v + dc
    }

    /// Notch spacing and width in radians of the fundamental (width at nominal frequency).
    fn notch_geometry(&self, per_cycle: u32, width: Seconds) -> Option<(f64, f64)> {
        (per_cycle > 0 && width > 0.0).then(|| {
            (
                TAU / f64::from(per_cycle),
                TAU * self.grid.frequency * width,
            )
        })
    }

    /// Exact instantaneous voltage of channel `ch` at `t`, V, without noise (the slow
    /// reference that [`Synthesizer`] is tested against).
    pub fn voltage_at(&self, ch: usize, t: Seconds) -> f64 {
        if let Some(v) = self.replayed(ch, t) {
            return v;
        }
        let theta = self.carrier_angle(ch, t);
        let mut c = theta.sin();
        self.for_each_harmonic(ch, t, |h, a, phi| {
            c += a * (f64::from(h) * theta + phi).sin()
        });
        let v = self.nominal_peak() * self.envelope(ch, t) * c + self.additive_at(ch, t);
        self.notch_and_dc(ch, t, theta, v)
    }

    /// The replayed voltage of channel `ch` at `t` when a replay covers it (the last one
    /// listed wins), V.
    pub fn replayed(&self, ch: usize, t: Seconds) -> Option<f64> {
        let mut out = None;
        for d in &self.disturbances {
            if let DisturbanceKind::Replay(r) = &d.kind {
                if d.phases.contains_index(ch) && is_active(d, t) {
                    out = r.value(ch, t - d.at).or(out);
                }
            }
        }
        out
    }

    /// True when a replay window is open on channel `ch` at `t`.
    fn replay_active(&self, ch: usize, t: Seconds) -> bool {
        self.disturbances.iter().any(|d| {
            matches!(d.kind, DisturbanceKind::Replay(_))
                && d.phases.contains_index(ch)
                && is_active(d, t)
        })
    }

    /// Load current of channel `ch` at `t`, A (constant impedance: follows the envelope and
    /// lags by acos(pf)); 0 without a load.
    pub fn current_at(&self, ch: usize, t: Seconds) -> f64 {
        match self.grid.load {
            Some(load) => {
                let phi = load.power_factor.clamp(0.0, 1.0).acos();
                SQRT_2
                    * load.current
                    * self.envelope(ch, t)
                    * (self.carrier_angle(ch, t) - phi).sin()
            }
            None => 0.0,
        }
    }

    /// Instants where the model changes form (onsets, ends, ramp corners), sorted, distinct.
    pub fn edges(&self) -> Vec<Seconds> {
        let mut e = Vec::new();
        for d in &self.disturbances {
            e.push(d.at);
            let end = window_end(d);
            if end.is_finite() {
                e.push(end);
            }
            match d.kind {
                DisturbanceKind::Sag(v)
                | DisturbanceKind::Swell(v)
                | DisturbanceKind::Interruption(v) => {
                    e.push(d.at + v.ramp);
                    e.push(d.at + v.duration);
                }
                DisturbanceKind::Frequency {
                    ramp,
                    duration,
                    return_to_nominal,
                    ..
                } => {
                    let r = if return_to_nominal {
                        ramp.min(duration / 2.0)
                    } else {
                        ramp
                    };
                    e.push(d.at + r.max(0.0));
                    if return_to_nominal {
                        e.push(d.at + duration - r.max(0.0));
                    }
                }
                _ => {}
            }
        }
        e.retain(|x| x.is_finite());
        e.sort_by(f64::total_cmp);
        e.dedup();
        e
    }

    /// True when some frequency excursion changes the frequency between `t0` and `t1`.
    fn frequency_varies(&self, t0: Seconds, t1: Seconds) -> bool {
        self.disturbances.iter().any(|d| match d.kind {
            DisturbanceKind::Frequency {
                ramp,
                duration,
                return_to_nominal,
                ..
            } => {
                frequency_shape(d.at, ramp, duration, return_to_nominal, t0).0
                    != frequency_shape(d.at, ramp, duration, return_to_nominal, t1).0
            }
            _ => false,
        })
    }

    /// Smallest sample index whose time `k / fs` is at or after `t` (exactly as sample times
    /// are computed, so segment edges agree with [`SupplyModel::voltage_at`]'s comparisons).
    fn first_index_at_or_after(t: Seconds, fs: f64) -> u64 {
        if t.is_nan() || t <= 0.0 {
            return 0;
        }
        let x = (t * fs).ceil();
        if x >= 1.8e19 {
            return u64::MAX;
        }
        let mut k = x as u64;
        while k > 0 && ((k - 1) as f64) / fs >= t {
            k -= 1;
        }
        while (k as f64) / fs < t {
            k += 1;
        }
        k
    }
}

/// Samples per internal chunk. Chunks sit on a fixed grid of sample indices (and split at
/// model edges), so output never depends on the caller's block sizes.
const CHUNK: usize = 512;

/// `out[i] = sin(θ0 + i·δ)` by a phasor rotation in 4 independent lanes (vectorisable),
/// seeded exactly at θ0.
#[inline]
fn sine_block(out: &mut [f64], theta0: f64, delta: f64) {
    add_sine_block(out, theta0, delta, 1.0, 0.0, false);
}

/// `out[i] (+)= (a0 + i·da)·sin(θ0 + i·δ)`; overwrites when `add` is false.
#[inline]
fn add_sine_block(out: &mut [f64], theta0: f64, delta: f64, a0: f64, da: f64, add: bool) {
    let mut re = [0.0; 4];
    let mut im = [0.0; 4];
    let mut amp = [0.0; 4];
    for l in 0..4 {
        let (s, c) = (theta0 + l as f64 * delta).sin_cos();
        re[l] = c;
        im[l] = s;
        amp[l] = a0 + l as f64 * da;
    }
    let (ws, wc) = (4.0 * delta).sin_cos();
    let da4 = 4.0 * da;
    let mut chunks = out.chunks_exact_mut(4);
    for c in &mut chunks {
        for l in 0..4 {
            let x = amp[l] * im[l];
            c[l] = if add { c[l] + x } else { x };
            let r = re[l] * wc - im[l] * ws;
            im[l] = re[l] * ws + im[l] * wc;
            re[l] = r;
            amp[l] += da4;
        }
    }
    for (l, c) in chunks.into_remainder().iter_mut().enumerate() {
        let x = amp[l] * im[l];
        *c = if add { *c + x } else { x };
    }
}

/// `out[i] (+)= (a0 + i·da)·sin(θ0 + i·δ + ½α·i²)`: a plain rotation when α = 0, otherwise a
/// chirp whose per-lane step rotates by 16α every 4 samples (θ_{i+4} − θ_i = 4δ + 8α + 4αi).
#[inline]
fn carrier_block(
    out: &mut [f64],
    theta0: f64,
    delta: f64,
    alpha: f64,
    a0: f64,
    da: f64,
    add: bool,
) {
    if alpha == 0.0 {
        add_sine_block(out, theta0, delta, a0, da, add);
        return;
    }
    let mut re = [0.0; 4];
    let mut im = [0.0; 4];
    let mut sr = [0.0; 4];
    let mut si = [0.0; 4];
    let mut amp = [0.0; 4];
    for l in 0..4 {
        let x = l as f64;
        let (s, c) = (theta0 + delta * x + 0.5 * alpha * x * x).sin_cos();
        re[l] = c;
        im[l] = s;
        let (s, c) = (4.0 * delta + 8.0 * alpha + 4.0 * alpha * x).sin_cos();
        sr[l] = c;
        si[l] = s;
        amp[l] = a0 + x * da;
    }
    let (cs, cc) = (16.0 * alpha).sin_cos();
    let da4 = 4.0 * da;
    let mut chunks = out.chunks_exact_mut(4);
    for c in &mut chunks {
        for l in 0..4 {
            let x = amp[l] * im[l];
            c[l] = if add { c[l] + x } else { x };
            let r = re[l] * sr[l] - im[l] * si[l];
            im[l] = re[l] * si[l] + im[l] * sr[l];
            re[l] = r;
            let r = sr[l] * cc - si[l] * cs;
            si[l] = sr[l] * cs + si[l] * cc;
            sr[l] = r;
            amp[l] += da4;
        }
    }
    for (l, c) in chunks.into_remainder().iter_mut().enumerate() {
        let x = amp[l] * im[l];
        *c = if add { *c + x } else { x };
    }
}

/// Streams samples of a [`SupplyModel`].
#[derive(Debug)]
pub struct Synthesizer {
    model: SupplyModel,
    /// Sample indices where the model changes form, ascending.
    edges: Vec<u64>,
    edge_cursor: usize,
    /// Next sample index handed out by `fill`.
    next: u64,
    /// Index of the first sample after the cached chunk.
    chunk_end: u64,
    chunk_len: usize,
    chunk_pos: usize,
    cache_v: Vec<Vec<f32>>,
    cache_i: Vec<Vec<f32>>,
    /// One noise stream per channel, so the draws do not depend on block sizes.
    rngs: Vec<Pcg64>,
    /// Harmonic components at the chunk start: (order, magnitude, phase).
    harm: Vec<(u32, f64, f64)>,
}

impl Synthesizer {
    /// `seed` drives the noise generator (one seed per meter).
    pub fn new(model: SupplyModel, seed: u64) -> Self {
        let fs = model.grid.sample_rate;
        let mut edges: Vec<u64> = model
            .edges()
            .into_iter()
            .map(|t| SupplyModel::first_index_at_or_after(t, fs))
            .filter(|&k| k > 0)
            .collect();
        edges.dedup();
        let channels = model.channels();
        let with_current = model.grid.load.is_some();
        let harm_cap = model
            .disturbances
            .iter()
            .map(|d| match &d.kind {
                DisturbanceKind::Harmonics {
                    components, end, ..
                } => components.len() + end.as_ref().map_or(0, Vec::len),
                _ => 0,
            })
            .sum();
        let rngs = (0..channels)
            .map(|ch| {
                Pcg64::seed_from_u64(seed ^ (ch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            })
            .collect();
        Synthesizer {
            model,
            edges,
            edge_cursor: 0,
            next: 0,
            chunk_end: 0,
            chunk_len: 0,
            chunk_pos: 0,
            cache_v: vec![vec![0.0; CHUNK]; channels],
            cache_i: if with_current {
                vec![vec![0.0; CHUNK]; channels]
            } else {
                Vec::new()
            },
            rngs,
            harm: Vec::with_capacity(harm_cap),
        }
    }

    pub fn model(&self) -> &SupplyModel {
        &self.model
    }

    /// Index of the next sample `fill` will produce.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Fill `block` with the next `n` samples (n ≤ capacity, clamped) and advance.
    pub fn fill(&mut self, block: &mut SampleBlock, n: usize) {
        let n = n.min(block.capacity());
        block.start = self.next;
        block.len = n;
        let channels = self.cache_v.len().min(block.voltage.len());
        let currents = self.cache_i.len().min(block.current.len());
        let mut done = 0;
        while done < n {
            if self.chunk_pos == self.chunk_len {
                self.compute_chunk();
            }
            let take = (n - done).min(self.chunk_len - self.chunk_pos);
            let src = self.chunk_pos..self.chunk_pos + take;
            for ch in 0..channels {
                block.voltage[ch][done..done + take]
                    .copy_from_slice(&self.cache_v[ch][src.clone()]);
            }
            for ch in 0..currents {
                block.current[ch][done..done + take]
                    .copy_from_slice(&self.cache_i[ch][src.clone()]);
            }
            // A block with current channels but a model without load carries zero current.
            for cur in block.current.iter_mut().skip(currents) {
                cur[done..done + take].fill(0.0);
            }
            done += take;
            self.chunk_pos += take;
        }
        self.next += n as u64;
    }

    /// Advance to sample `target` without synthesizing the samples before it: what `fill`
    /// produces next is exactly what it would produce after filling up to `target`. The noise
    /// of the skipped chunks is drawn and dropped (one draw per sample and channel where noise
    /// is active; the generator cannot jump a normal variate stream), unless that would take
    /// more than `max_draws` draws: then nothing moves and the result is `Err` with the
    /// draws needed. `Ok` holds the draws made. A `target` at or before the position is a
    /// no-op.
    pub fn skip_to(&mut self, target: u64, max_draws: u64) -> Result<u64, u64> {
        if target <= self.next {
            return Ok(0);
        }
        if target < self.chunk_end {
            // Inside the cached chunk.
            self.chunk_pos += (target - self.next) as usize;
            self.next = target;
            return Ok(0);
        }
        // The chunks wholly before the one holding `target`: count their draws, then make them.
        let (needed, _, _) = self.skipped_noise(target, false);
        if needed > max_draws {
            return Err(needed);
        }
        let (_, k0, cursor) = self.skipped_noise(target, true);
        self.chunk_end = k0;
        self.edge_cursor = cursor;
        self.compute_chunk();
        self.chunk_pos = (target - k0) as usize;
        self.next = target;
        Ok(needed)
    }

    /// The noise draws of the chunks from the cached one's end up to the one holding
    /// `target`; made (and dropped) when `draw`, else only counted. Returns the draws, the
    /// first sample of the chunk holding `target` and the edge cursor there.
    fn skipped_noise(&mut self, target: u64, draw: bool) -> (u64, u64, usize) {
        let fs = self.model.grid.sample_rate;
        let mut cursor = self.edge_cursor;
        let mut k0 = self.chunk_end;
        let mut total = 0_u64;
        loop {
            let k1 = self.chunk_bound(k0, &mut cursor);
            if k1 > target {
                return (total, k0, cursor);
            }
            let t0 = k0 as f64 / fs;
            for (ch, rng) in self.rngs.iter_mut().enumerate() {
                if self.model.noise_rms(ch, t0) > 0.0 {
                    total += k1 - k0;
                    if draw {
                        for _ in 0..k1 - k0 {
                            let _: f64 = rng.sample(StandardNormal);
                        }
                    }
                }
            }
            k0 = k1;
        }
    }

    /// The end of the chunk starting at sample `k0`: the next multiple of CHUNK or model
    /// edge, whichever is first (`cursor` is moved past the edges at or before `k0`).
    fn chunk_bound(&self, k0: u64, cursor: &mut usize) -> u64 {
        let mut k1 = (k0 / CHUNK as u64 + 1) * CHUNK as u64;
        while *cursor < self.edges.len() && self.edges[*cursor] <= k0 {
            *cursor += 1;
        }
        if let Some(&e) = self.edges.get(*cursor) {
            k1 = k1.min(e);
        }
        k1
    }

    /// Synthesize the next chunk (up to the next multiple of CHUNK or model edge) into the cache.
    fn compute_chunk(&mut self) {
        let k0 = self.chunk_end;
        let mut cursor = self.edge_cursor;
        let k1 = self.chunk_bound(k0, &mut cursor);
        self.edge_cursor = cursor;
        let m = (k1 - k0) as usize;
        self.chunk_end = k1;
        self.chunk_len = m;
        self.chunk_pos = 0;

        let Synthesizer {
            model,
            cache_v,
            cache_i,
            rngs,
            harm,
            ..
        } = self;
        let fs = model.grid.sample_rate;
        let vpk = model.nominal_peak();
        let t0 = k0 as f64 / fs;
        let t_last = (k1 - 1) as f64 / fs;
        let time = |i: usize| (k0 + i as u64) as f64 / fs;

        // Fundamental angle θ0 + δ·i + ½α·i²: the frequency is constant, or linear inside a
        // ramp (ramp corners are chunk edges), so the angle is exactly quadratic in the chunk.
        let base0 = TAU * frac(model.cycles(t0));
        let f0 = model.frequency(t0);
        let delta = TAU * f0 / fs;
        let alpha = if m > 1 && model.frequency_varies(t0, t_last) {
            TAU * (model.frequency(t_last) - f0) / (m - 1) as f64 / fs
        } else {
            0.0
        };
        let load = model.grid.load;
        let mut s = [0.0_f64; CHUNK];
        let mut g = [0.0_f64; CHUNK];
        let mut a = [0.0_f64; CHUNK];
        let mut tmp = [0.0_f64; CHUNK];

        for (ch, out) in cache_v.iter_mut().enumerate() {
            let off = model.angle_offset(ch, t0);
            let theta0 = base0 + off;

            // Carrier: fundamental + harmonics (magnitudes linear in time inside a chunk).
            harm.clear();
            model.for_each_harmonic(ch, t0, |h, mag, phi| harm.push((h, mag, phi)));
            let mut j = 0;
            let span = (m - 1).max(1) as f64;
            carrier_block(&mut s[..m], theta0, delta, alpha, 1.0, 0.0, false);
            model.for_each_harmonic(ch, t_last, |h, mag1, phi| {
                if let Some(&(h0, mag0, _)) = harm.get(j) {
                    debug_assert_eq!(h, h0);
                    let hf = f64::from(h0);
                    let da = if m > 1 { (mag1 - mag0) / span } else { 0.0 };
                    carrier_block(
                        &mut s[..m],
                        hf * theta0 + phi,
                        hf * delta,
                        hf * alpha,
                        mag0,
                        da,
                        true,
                    );
                }
                j += 1;
            });

            // Envelope: a product of factors. Constant factors fold into `e0`; ramps are
            // linear inside a chunk (their corners are chunk edges) and thermal drift nearly so;
            // sine flicker uses a phasor recurrence, square flicker a per-sample step.
            let mut e0 = 1.0;
            let mut varying = false;
            for (idx, d) in model.disturbances.iter().enumerate() {
                if !d.phases.contains_index(ch) || !is_active(d, t0) {
                    continue;
                }
                if !varying && matches!(d.kind, DisturbanceKind::Flicker { .. }) {
                    g[..m].fill(1.0);
                    varying = true;
                }
                match d.kind {
                    DisturbanceKind::Flicker {
                        depth,
                        frequency,
                        shape: FlickerShape::Sine,
                        ..
                    } => {
                        let th = TAU * frac(frequency * (t0 - d.at));
                        sine_block(&mut tmp[..m], th, TAU * frequency / fs);
                        for (x, f) in g[..m].iter_mut().zip(&tmp[..m]) {
                            *x *= 1.0 + depth / 2.0 * f;
                        }
                    }
                    DisturbanceKind::Flicker { .. } => {
                        for (i, x) in g[..m].iter_mut().enumerate() {
                            *x *= model.envelope_factor(idx, ch, time(i));
                        }
                    }
                    _ => {
                        let f0 = model.envelope_factor(idx, ch, t0);
                        let f1 = model.envelope_factor(idx, ch, t_last);
                        if f0 == f1 || m == 1 {
                            e0 *= f0;
                        } else {
                            if !varying {
                                g[..m].fill(1.0);
                                varying = true;
                            }
                            let df = (f1 - f0) / span;
                            for (i, x) in g[..m].iter_mut().enumerate() {
                                *x *= f0 + df * i as f64;
                            }
                        }
                    }
                }
            }
            if varying {
                for x in g[..m].iter_mut() {
                    *x *= e0;
                }
            }
            let scalar_gain = !varying;

            // Additive terms, notches, DC offset and noise.
            let mut additive = false;
            let mut post = false;
            let mut dc = 0.0;
            for d in &model.disturbances {
                if !d.phases.contains_index(ch) || !is_active(d, t0) {
                    continue;
                }
                let tau0 = t0 - d.at;
                match d.kind {
                    DisturbanceKind::Interharmonic {
                        frequency,
                        magnitude,
                        phase_deg,
                        ..
                    } => {
                        let th = TAU * frac(frequency * tau0) + phase_deg.to_radians();
                        add_sine_block(
                            &mut a[..m],
                            th,
                            TAU * frequency / fs,
                            vpk * magnitude,
                            0.0,
                            additive,
                        );
                        additive = true;
                    }
                    DisturbanceKind::OscillatoryTransient {
                        magnitude,
                        frequency,
                        tau,
                        phase_deg,
                        ..
                    } if tau > 0.0 => {
                        let th = TAU * frac(frequency * tau0) + phase_deg.to_radians();
                        let (mut im, mut re) = th.sin_cos();
                        let amp = vpk * magnitude * (-tau0 / tau).exp();
                        im *= amp;
                        re *= amp;
                        let decay = (-1.0 / (fs * tau)).exp();
                        let (ws, wc) = (TAU * frequency / fs).sin_cos();
                        let (ws, wc) = (ws * decay, wc * decay);
                        for x in a[..m].iter_mut() {
                            *x = if additive { *x + im } else { im };
                            let r = re * wc - im * ws;
                            im = re * ws + im * wc;
                            re = r;
                        }
                        additive = true;
                    }
                    DisturbanceKind::ImpulsiveTransient {
                        magnitude,
                        tau_rise,
                        tau_fall,
                        ..
                    } => {
                        if let Some(k) = impulse_norm(tau_rise, tau_fall) {
                            let amp = vpk * magnitude * k;
                            let mut ef = amp * (-tau0 / tau_fall).exp();
                            let mut er = amp * (-tau0 / tau_rise).exp();
                            let (rf, rr) = (
                                (-1.0 / (fs * tau_fall)).exp(),
                                (-1.0 / (fs * tau_rise)).exp(),
                            );
                            for x in a[..m].iter_mut() {
                                *x = if additive { *x + (ef - er) } else { ef - er };
                                ef *= rf;
                                er *= rr;
                            }
                            additive = true;
                        }
                    }
                    DisturbanceKind::Notch { .. } => post = true,
                    DisturbanceKind::DcOffset { magnitude, .. } => dc += vpk * magnitude,
                    _ => {}
                }
            }
            let sigma = model.noise_rms(ch, t0);
            let rng = &mut rngs[ch];
            let out = &mut out[..m];

            if !additive && !post && sigma == 0.0 && scalar_gain {
                // The common case: a scaled carrier.
                let k = vpk * e0;
                for (o, x) in out.iter_mut().zip(&s[..m]) {
                    *o = (k * x + dc) as f32;
                }
            } else {
                for i in 0..m {
                    let gain = if scalar_gain { e0 } else { g[i] };
                    let mut v = vpk * gain * s[i];
                    if additive {
                        v += a[i];
                    }
                    if post {
                        let x = i as f64;
                        let theta = theta0 + x * delta + 0.5 * alpha * x * x;
                        v = model.notch_and_dc(ch, time(i), theta, v);
                    } else {
                        v += dc;
                    }
                    if sigma > 0.0 {
                        let z: f64 = rng.sample(StandardNormal);
                        v += sigma * z;
                    }
                    out[i] = v as f32;
                }
            }

            // Replays replace the voltage (replay windows start and end on chunk edges).
            if model.replay_active(ch, t0) {
                for (i, o) in out.iter_mut().enumerate() {
                    if let Some(v) = model.replayed(ch, time(i)) {
                        *o = v as f32;
                    }
                }
            }

            // Current: constant impedance, follows the envelope and lags by acos(pf).
            if let (Some(load), Some(cur)) = (load, cache_i.get_mut(ch)) {
                let phi = load.power_factor.clamp(0.0, 1.0).acos();
                carrier_block(&mut s[..m], theta0 - phi, delta, alpha, 1.0, 0.0, false);
                let ipk = SQRT_2 * load.current;
                for i in 0..m {
                    let gain = if scalar_gain { e0 } else { g[i] };
                    cur[i] = (ipk * gain * s[i]) as f32;
                }
            }
        }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::disturbance::{Conductor, ThermalDrift};
    use crate::grid::{LoadSpec, PhaseSet, PhaseSystem};
    use proptest::prelude::*;
    use rand::Rng as RandRng;

    fn grid(f: f64, system: PhaseSystem, fs: f64) -> GridSpec {
        GridSpec {
            nominal: 230.0,
            frequency: f,
            system,
            sample_rate: fs,
            load: Some(LoadSpec {
                current: 10.0,
                power_factor: 0.8,
            }),
        }
    }

    fn dist(at: f64, phases: PhaseSet, kind: DisturbanceKind) -> Disturbance {
        Disturbance {
            at,
            point_on_wave_deg: None,
            phases,
            groups: vec![],
            kind,
        }
    }

    fn rv(level: f64, duration: f64, ramp: f64, jump: f64) -> RmsVariation {
        RmsVariation {
            level,
            duration,
            ramp,
            phase_jump_deg: jump,
        }
    }

    /// A random mix with every disturbance kind except noise, inside [0, span].
    pub(crate) fn random_mix(rng: &mut Pcg64, span: f64, with_noise: bool) -> Vec<Disturbance> {
        let mut u = |lo: f64, hi: f64| lo + (hi - lo) * RandRng::gen::<f64>(rng);
        let ph = |x: f64| {
            PhaseSet::of(&[crate::grid::Phase::from_index((x * 3.0) as usize % 3).unwrap()])
        };
        let mut v = vec![
            dist(
                u(0.0, span / 2.0),
                ph(u(0.0, 1.0)),
                DisturbanceKind::Sag(rv(u(0.1, 0.9), u(0.02, 0.1), u(0.0, 0.01), u(-30.0, 30.0))),
            ),
            dist(
                u(0.0, span / 2.0),
                ph(u(0.0, 1.0)),
                DisturbanceKind::Swell(rv(u(1.1, 1.8), u(0.02, 0.1), 0.0, 0.0)),
            ),
            dist(
                u(0.0, span / 2.0),
                ph(u(0.0, 1.0)),
                DisturbanceKind::Interruption(rv(u(0.0, 0.1), u(0.02, 0.1), u(0.0, 0.005), 0.0)),
            ),
            dist(
                u(0.0, span / 2.0),
                PhaseSet::ALL,
                DisturbanceKind::Harmonics {
                    components: vec![
                        Harmonic {
                            order: 3,
                            magnitude: u(0.0, 0.15),
                            phase_deg: u(-180.0, 180.0),
                        },
                        Harmonic {
                            order: 5,
                            magnitude: u(0.0, 0.15),
                            phase_deg: u(-180.0, 180.0),
                        },
                    ],
                    end: Some(vec![
                        Harmonic {
                            order: 3,
                            magnitude: u(0.0, 0.1),
                            phase_deg: 0.0,
                        },
                        Harmonic {
                            order: 2,
                            magnitude: u(0.0, 0.05),
                            phase_deg: 10.0,
                        },
                    ]),
                    duration: u(0.05, span / 2.0),
                },
            ),
            dist(
                u(0.0, span / 2.0),
                PhaseSet::ALL,
                DisturbanceKind::Harmonics {
                    components: vec![Harmonic {
                        order: 7,
                        magnitude: u(0.0, 0.1),
                        phase_deg: u(-180.0, 180.0),
                    }],
                    end: None,
                    duration: u(0.05, span / 2.0),
                },
            ),
            dist(
                u(0.0, span / 2.0),
                ph(u(0.0, 1.0)),
                DisturbanceKind::Interharmonic {
                    frequency: u(70.0, 900.0),
                    magnitude: u(0.0, 0.05),
                    phase_deg: u(-180.0, 180.0),
                    duration: u(0.02, 0.2),
                },
            ),
            dist(
                u(0.0, span / 2.0),
                PhaseSet::ALL,
                DisturbanceKind::Flicker {
                    depth: u(0.0, 0.1),
                    frequency: u(8.0, 25.0),
                    shape: FlickerShape::Sine,
                    duration: u(0.05, 0.2),
                },
            ),
            dist(
                u(0.0, span / 2.0),
                ph(u(0.0, 1.0)),
                DisturbanceKind::Flicker {
                    depth: u(0.0, 0.1),
                    frequency: u(8.0, 25.0),
                    shape: FlickerShape::Square,
                    duration: u(0.05, 0.2),
                },
            ),
            dist(
                u(0.0, span / 2.0),
                ph(u(0.0, 1.0)),
                DisturbanceKind::OscillatoryTransient {
                    magnitude: u(0.1, 0.8),
                    frequency: u(300.0, 900.0),
                    tau: u(0.008, 0.04),
                    phase_deg: u(-180.0, 180.0),
                    duration: u(0.005, 0.05),
                },
            ),
            dist(
                u(0.0, span / 2.0),
                ph(u(0.0, 1.0)),
                DisturbanceKind::ImpulsiveTransient {
                    magnitude: u(-1.1, 1.1),
                    tau_rise: u(0.00005, 0.0002),
                    tau_fall: u(0.0005, 0.002),
                    duration: 0.001,
                },
            ),
            dist(
                u(0.0, span / 2.0),
                ph(u(0.0, 1.0)),
                DisturbanceKind::Notch {
                    depth: u(0.1, 0.4),
                    width: u(0.0002, 0.0008),
                    per_cycle: 2,
                    angle_deg: u(0.0, 360.0),
                    duration: u(0.02, 0.2),
                },
            ),
            dist(
                u(0.0, span / 2.0),
                ph(u(0.0, 1.0)),
                DisturbanceKind::DcOffset {
                    magnitude: u(-0.05, 0.05),
                    duration: u(0.02, 0.2),
                },
            ),
            dist(
                u(0.0, span / 2.0),
                PhaseSet::ALL,
                DisturbanceKind::Frequency {
                    deviation: u(-2.0, 2.0),
                    ramp: u(0.0, 0.05),
                    duration: u(0.1, 0.3),
                    return_to_nominal: true,
                },
            ),
            dist(
                u(span / 2.0, span),
                PhaseSet::ALL,
                DisturbanceKind::Frequency {
                    deviation: u(-0.5, 0.5),
                    ramp: u(0.0, 0.05),
                    duration: 1.0,
                    return_to_nominal: false,
                },
            ),
            dist(
                u(0.0, span / 2.0),
                PhaseSet::of(&[crate::grid::Phase::L2, crate::grid::Phase::L3]),
                DisturbanceKind::Unbalance {
                    magnitudes: [1.0, u(0.9, 1.1), u(0.9, 1.1)],
                    angles_deg: [0.0, u(-5.0, 5.0), u(-5.0, 5.0)],
                    duration: u(0.02, 0.2),
                },
            ),
            dist(
                u(0.0, span / 2.0),
                ph(u(0.0, 1.0)),
                DisturbanceKind::ThermalDrift(ThermalDrift {
                    conductor: Conductor::Aluminium,
                    r20: 0.2,
                    x: 0.05,
                    current: 60.0,
                    power_factor: 0.9,
                    ambient: 30.0,
                    initial: 30.0,
                    thermal_resistance: 0.5,
                    tau: 0.3,
                    duration: span,
                }),
            ),
        ];
        if with_noise {
            v.push(dist(
                u(0.0, span / 2.0),
                PhaseSet::ALL,
                DisturbanceKind::Noise {
                    rms: u(0.001, 0.02),
                    duration: u(0.05, span),
                },
            ));
        }
        v
    }

    fn run(model: &SupplyModel, seed: u64, sizes: &[usize], total: usize) -> SampleBlock {
        let channels = model.channels();
        let mut out = SampleBlock::new(channels, total, model.grid.sample_rate, true);
        let mut block = SampleBlock::new(channels, 4096, model.grid.sample_rate, true);
        let mut syn = Synthesizer::new(model.clone(), seed);
        let mut done = 0;
        let mut i = 0;
        while done < total {
            let n = sizes[i % sizes.len()].min(total - done);
            i += 1;
            syn.fill(&mut block, n);
            assert_eq!(block.start, done as u64);
            assert_eq!(block.len, n);
            for ch in 0..channels {
                out.voltage[ch][done..done + n].copy_from_slice(&block.voltage[ch][..n]);
                out.current[ch][done..done + n].copy_from_slice(&block.current[ch][..n]);
            }
            done += n;
        }
        out
    }

    #[test]
    fn fill_matches_the_analytic_model_for_every_kind() {
        let mut rng = Pcg64::seed_from_u64(7);
        let systems = [
            PhaseSystem::ThreePhase,
            PhaseSystem::SplitPhase,
            PhaseSystem::Single,
        ];
        for case in 0..6 {
            let f = if case % 2 == 0 { 50.0 } else { 60.0 };
            let fs = [12_800.0, 10_000.0, 7_680.0][case % 3];
            let g = grid(f, systems[case % 3], fs);
            let span = 0.4;
            let model = SupplyModel::new(&g, random_mix(&mut rng, span, false));
            let total = (span * fs) as usize + 300;
            let vpk = g.nominal_peak();
            let ipk = SQRT_2 * 10.0;
            for sizes in [&[1usize][..], &[7], &[256], &[4096]] {
                let out = run(&model, 1, sizes, total);
                let mut worst = 0.0_f64;
                for ch in 0..model.channels() {
                    for k in 0..total {
                        let t = k as f64 / fs;
                        let e =
                            (f64::from(out.voltage[ch][k]) - model.voltage_at(ch, t)).abs() / vpk;
                        worst = worst.max(e);
                        let ei =
                            (f64::from(out.current[ch][k]) - model.current_at(ch, t)).abs() / ipk;
                        assert!(ei < 1e-4, "current case {case} ch {ch} k {k}: {ei}");
                    }
                }
                assert!(worst < 1e-4, "case {case} sizes {sizes:?}: worst {worst}");
            }
        }
    }

    #[test]
    fn plain_three_phase_sine_is_exact() {
        let g = grid(60.0, PhaseSystem::ThreePhase, 12_800.0);
        let model = SupplyModel::new(&g, vec![]);
        let out = run(&model, 3, &[1000], 128_000);
        let vpk = g.nominal_peak();
        for (ch, off) in [(0, 0.0), (1, -TAU / 3.0), (2, TAU / 3.0)] {
            for k in (0..128_000).step_by(997) {
                let t = k as f64 / 12_800.0;
                let want = vpk * (TAU * 60.0 * t + off).sin();
                assert!((f64::from(out.voltage[ch][k]) - want).abs() < 1e-5 * vpk);
            }
            let rms = crate::measure::rms(&out.voltage[ch][..12_800]);
            assert!((rms - 230.0).abs() < 1e-4, "{rms}");
        }
    }

    #[test]
    fn sag_envelope_ramps_and_phase_jump() {
        let g = grid(50.0, PhaseSystem::ThreePhase, 12_800.0);
        let sag = dist(
            0.1,
            PhaseSet::of(&[crate::grid::Phase::L1]),
            DisturbanceKind::Sag(rv(0.6, 0.2, 0.01, 20.0)),
        );
        let m = SupplyModel::new(&g, vec![sag]);
        assert_eq!(m.envelope(0, 0.099), 1.0);
        assert!((m.envelope(0, 0.105) - 0.8).abs() < 1e-12);
        assert!((m.envelope(0, 0.2) - 0.6).abs() < 1e-12);
        assert!((m.envelope(0, 0.305) - 0.8).abs() < 1e-12);
        assert_eq!(m.envelope(0, 0.311), 1.0);
        assert_eq!(m.envelope(1, 0.2), 1.0);
        let jump = m.angle_offset(0, 0.2) - m.angle_offset(0, 0.05);
        assert!((jump - 20f64.to_radians()).abs() < 1e-12);
    }

    #[test]
    fn frequency_trapezoid_angle_is_the_integral_of_frequency() {
        let g = grid(50.0, PhaseSystem::Single, 12_800.0);
        let m = SupplyModel::new(
            &g,
            vec![
                dist(
                    0.1,
                    PhaseSet::ALL,
                    DisturbanceKind::Frequency {
                        deviation: 1.5,
                        ramp: 0.1,
                        duration: 0.5,
                        return_to_nominal: true,
                    },
                ),
                dist(
                    0.8,
                    PhaseSet::ALL,
                    DisturbanceKind::Frequency {
                        deviation: -0.5,
                        ramp: 0.2,
                        duration: 0.0,
                        return_to_nominal: false,
                    },
                ),
            ],
        );
        assert_eq!(m.frequency(0.05), 50.0);
        assert!((m.frequency(0.15) - 50.75).abs() < 1e-12);
        assert!((m.frequency(0.3) - 51.5).abs() < 1e-12);
        assert!((m.frequency(0.55) - 50.75).abs() < 1e-12);
        assert_eq!(m.frequency(0.7), 50.0);
        assert!((m.frequency(2.0) - 49.5).abs() < 1e-12);
        // Midpoint-rule integral of frequency, fine steps.
        let n = 200_000;
        let h = 2.0 / n as f64;
        let mut c = 0.0;
        for i in 0..n {
            c += m.frequency((i as f64 + 0.5) * h) * h;
            if (i + 1) % 20_000 == 0 {
                let t = (i + 1) as f64 * h;
                assert!(
                    (m.cycles(t) - c).abs() < 1e-7,
                    "t {t}: {} vs {c}",
                    m.cycles(t)
                );
            }
        }
        // Closed form after the excursion: 1.5·(0.5 − 0.1) extra cycles.
        assert!((m.cycles(0.7) - (35.0 + 0.6)).abs() < 1e-9);
    }

    #[test]
    fn thermal_drift_lowers_the_envelope() {
        let g = grid(60.0, PhaseSystem::Single, 12_800.0);
        let td = ThermalDrift {
            conductor: Conductor::Copper,
            r20: 0.1,
            x: 0.0,
            current: 50.0,
            power_factor: 1.0,
            ambient: 20.0,
            initial: 20.0,
            thermal_resistance: 0.1,
            tau: 60.0,
            duration: 3600.0,
        };
        let m = SupplyModel::new(
            &g,
            vec![dist(10.0, PhaseSet::ALL, DisturbanceKind::ThermalDrift(td))],
        );
        assert_eq!(m.envelope(0, 5.0), 1.0);
        // At onset the conductor is at 20 °C: drop = 50 A × 0.1 Ω.
        assert!((m.envelope(0, 10.0) - (230.0 - 5.0) / 230.0).abs() < 1e-12);
        let p = ThermalProfile::new(&td);
        let want = (230.0 - 50.0 * p.resistance(1000.0)) / 230.0;
        assert!((m.envelope(0, 1010.0) - want).abs() < 1e-12);
        assert!(m.envelope(0, 1010.0) < m.envelope(0, 10.0));
    }

    #[test]
    fn skip_to_continues_exactly_as_a_full_fill_would() {
        let mut rng = Pcg64::seed_from_u64(11);
        for case in 0..4 {
            let fs = [12_800.0, 7_680.0][case % 2];
            let g = grid(
                if case < 2 { 50.0 } else { 60.0 },
                PhaseSystem::ThreePhase,
                fs,
            );
            let span = 0.4;
            // Noise (somewhere inside the span) and every other kind, so chunks end at edges.
            let mut mix = random_mix(&mut rng, span, true);
            mix.push(dist(
                0.05,
                PhaseSet::ALL,
                DisturbanceKind::Noise {
                    rms: 0.002,
                    duration: 0.1,
                },
            ));
            let model = SupplyModel::new(&g, mix);
            let total = (span * fs) as usize + 300;
            let full = run(&model, 5, &[4096], total);
            let edges: Vec<u64> = model
                .edges()
                .into_iter()
                .map(|t| SupplyModel::first_index_at_or_after(t, fs))
                .collect();
            let mut targets = vec![1_u64, 511, 512, 513, 1500, total as u64 - 40];
            targets.extend(edges.iter().filter(|&&e| e + 40 < total as u64));
            targets.extend(edges.iter().filter(|&&e| e > 0).map(|e| e - 1));
            targets.retain(|&t| t + 40 <= total as u64);
            assert!(targets.len() > 8, "{targets:?}");
            for &target in &targets {
                // From the start, and after a partial fill (the cached chunk part-used).
                for lead in [0_usize, 100] {
                    if lead as u64 >= target {
                        continue;
                    }
                    let mut syn = Synthesizer::new(model.clone(), 5);
                    let mut block = SampleBlock::new(3, 4096, fs, true);
                    if lead > 0 {
                        syn.fill(&mut block, lead);
                    }
                    syn.skip_to(target, u64::MAX).unwrap();
                    assert_eq!(syn.position(), target);
                    let n = 40;
                    syn.fill(&mut block, n);
                    assert_eq!(block.start, target);
                    let k = target as usize;
                    for ch in 0..3 {
                        assert_eq!(
                            block.voltage[ch][..n],
                            full.voltage[ch][k..k + n],
                            "case {case} target {target} lead {lead} ch {ch}"
                        );
                        assert_eq!(block.current[ch][..n], full.current[ch][k..k + n]);
                    }
                }
            }
        }
    }

    #[test]
    fn skip_to_counts_noise_draws_and_refuses_over_the_budget() {
        let mut g = grid(50.0, PhaseSystem::ThreePhase, 12_800.0);
        g.load = None;
        // Noise on L1 only from 1 s to 2 s: 12 800 draws on one channel.
        let noise = dist(
            1.0,
            PhaseSet::of(&[crate::grid::Phase::L1]),
            DisturbanceKind::Noise {
                rms: 0.01,
                duration: 1.0,
            },
        );
        let model = SupplyModel::new(&g, vec![noise]);
        let mut syn = Synthesizer::new(model.clone(), 3);
        // Before the noise: nothing to draw.
        assert_eq!(syn.skip_to(12_000, 0), Ok(0));
        // Past it: the whole second is drawn; a smaller budget moves nothing.
        assert_eq!(syn.skip_to(40_000, 12_799), Err(12_800));
        assert_eq!(syn.position(), 12_000);
        assert_eq!(syn.skip_to(40_000, 12_800), Ok(12_800));
        let mut block = SampleBlock::new(3, 64, 12_800.0, false);
        syn.fill(&mut block, 64);
        let full = run(&model, 3, &[4096], 40_064);
        assert_eq!(block.voltage[0][..64], full.voltage[0][40_000..40_064]);
        // Backwards is a no-op.
        assert_eq!(syn.skip_to(10, 0), Ok(0));
        assert_eq!(syn.position(), 40_064);
    }

    #[test]
    fn noise_has_the_requested_rms_and_is_seeded() {
        let mut g = grid(50.0, PhaseSystem::ThreePhase, 12_800.0);
        g.load = None;
        let m = SupplyModel::new(
            &g,
            vec![dist(
                0.0,
                PhaseSet::ALL,
                DisturbanceKind::Noise {
                    rms: 0.01,
                    duration: 10.0,
                },
            )],
        );
        let a = run(&m, 42, &[4096], 64_000);
        let b = run(&m, 42, &[333], 64_000);
        let c = run(&m, 43, &[4096], 64_000);
        assert_eq!(a.voltage, b.voltage);
        assert_ne!(a.voltage, c.voltage);
        for ch in 0..3 {
            let mut ss = 0.0;
            for k in 0..64_000 {
                let r = f64::from(a.voltage[ch][k]) - m.voltage_at(ch, k as f64 / 12_800.0);
                ss += r * r;
            }
            let sigma = (ss / 64_000.0).sqrt();
            assert!((sigma / 2.3 - 1.0).abs() < 0.02, "ch {ch}: {sigma}");
        }
        // Channels draw independent noise.
        assert_ne!(a.voltage[1][..10], a.voltage[0][..10]);
    }

    #[test]
    fn point_on_wave_90_starts_a_sag_at_the_positive_peak() {
        let g = grid(60.0, PhaseSystem::ThreePhase, 12_800.0);
        let mut d = vec![Disturbance {
            point_on_wave_deg: Some(90.0),
            ..dist(
                0.1234,
                PhaseSet::ALL,
                DisturbanceKind::Sag(rv(0.5, 0.1, 0.0, 0.0)),
            )
        }];
        resolve_point_on_wave(&g, &mut d);
        assert!(d[0].at >= 0.1234 && d[0].at < 0.1234 + 1.0 / 60.0);
        let m = SupplyModel::new(&g, d.clone());
        let vpk = g.nominal_peak();
        let t = d[0].at;
        assert!((m.voltage_at(0, t - 1e-9) - vpk).abs() < 1e-6 * vpk);
        assert!((m.voltage_at(0, t) - 0.5 * vpk).abs() < 1e-6 * vpk);
        let mut d0 = vec![Disturbance {
            point_on_wave_deg: Some(0.0),
            ..d[0].clone()
        }];
        resolve_point_on_wave(&g, &mut d0);
        assert!(m.voltage_at(0, d0[0].at - 1e-9).abs() < 1e-5 * vpk);
    }

    #[test]
    fn notch_pulls_towards_zero_without_crossing() {
        let g = grid(50.0, PhaseSystem::Single, 12_800.0);
        let m = SupplyModel::new(
            &g,
            vec![dist(
                0.0,
                PhaseSet::ALL,
                DisturbanceKind::Notch {
                    depth: 0.3,
                    width: 0.001,
                    per_cycle: 2,
                    angle_deg: 30.0,
                    duration: 1.0,
                },
            )],
        );
        let vpk = g.nominal_peak();
        // 30° into the cycle: inside the first notch.
        let t = (30.5 / 360.0) / 50.0;
        let clean = vpk * (TAU * 50.0 * t).sin();
        assert!((m.voltage_at(0, t) - (clean - 0.3 * vpk)).abs() < 1e-9);
        // Near the zero crossing of the second notch (210°): clipped at zero, not crossed.
        let m2 = SupplyModel::new(
            &g,
            vec![dist(
                0.0,
                PhaseSet::ALL,
                DisturbanceKind::Notch {
                    depth: 0.3,
                    width: 0.001,
                    per_cycle: 1,
                    angle_deg: 179.0,
                    duration: 1.0,
                },
            )],
        );
        let t2 = (179.5 / 360.0) / 50.0;
        assert_eq!(m2.voltage_at(0, t2), 0.0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn block_splits_are_bit_identical(seed in 0u64..1000, sizes in proptest::collection::vec(1usize..700, 1..8)) {
            let mut rng = Pcg64::seed_from_u64(seed);
            let g = grid(if seed % 2 == 0 { 50.0 } else { 60.0 }, PhaseSystem::ThreePhase, 12_800.0);
            let model = SupplyModel::new(&g, random_mix(&mut rng, 0.3, true));
            let total = 4_000;
            let whole = run(&model, seed, &[4096], total);
            let split = run(&model, seed, &sizes, total);
            prop_assert_eq!(&whole.voltage, &split.voltage);
            prop_assert_eq!(&whole.current, &split.current);
        }
    }

    #[test]
    fn low_sample_rates_match_the_model() {
        for fs in [1.0, 100.0, 1234.5] {
            let g = grid(60.0, PhaseSystem::ThreePhase, fs);
            let model = SupplyModel::new(
                &g,
                vec![
                    dist(
                        10.3,
                        PhaseSet::ALL,
                        DisturbanceKind::Sag(rv(0.7, 20.0, 0.5, 10.0)),
                    ),
                    dist(
                        5.0,
                        PhaseSet::ALL,
                        DisturbanceKind::Harmonics {
                            components: vec![Harmonic {
                                order: 5,
                                magnitude: 0.05,
                                phase_deg: 30.0,
                            }],
                            end: None,
                            duration: 50.0,
                        },
                    ),
                    dist(
                        40.0,
                        PhaseSet::ALL,
                        DisturbanceKind::Frequency {
                            deviation: 0.4,
                            ramp: 5.0,
                            duration: 20.0,
                            return_to_nominal: true,
                        },
                    ),
                ],
            );
            let total = (100.0 * fs) as usize;
            let out = run(&model, 1, &[97], total);
            for ch in 0..3 {
                for k in 0..total {
                    let t = k as f64 / fs;
                    let e = (f64::from(out.voltage[ch][k]) - model.voltage_at(ch, t)).abs();
                    assert!(e < 1e-4 * g.nominal_peak(), "fs {fs} ch {ch} k {k}: {e}");
                }
            }
        }
    }

    #[test]
    fn current_is_zero_without_a_load() {
        let mut g = grid(50.0, PhaseSystem::Single, 12_800.0);
        g.load = None;
        let mut syn = Synthesizer::new(SupplyModel::new(&g, vec![]), 0);
        let mut block = SampleBlock::new(1, 64, 12_800.0, true);
        block.current[0].fill(9.0);
        syn.fill(&mut block, 64);
        assert!(block.current[0].iter().all(|&x| x == 0.0));
        assert!(block.voltage[0][10] != 0.0);
    }

    #[test]
    fn replay_replaces_the_voltage_inside_its_window_for_any_block_size() {
        use crate::disturbance::Replay;
        use std::sync::Arc;
        // A 2 kHz recording on L2 only, played into a 12.8 kHz synthesis at 0.1 s.
        let rec: Vec<f32> = (0..100).map(|j| 100.0 + j as f32).collect();
        let replay = Replay::new([None, Some(Arc::from(rec)), None], 2000.0, 0.0, "t".into());
        let g = grid(50.0, PhaseSystem::ThreePhase, 12_800.0);
        let ds = vec![dist(0.1, PhaseSet::ALL, DisturbanceKind::Replay(replay))];
        let model = SupplyModel::new(&g, ds);
        let plain = SupplyModel::new(&g, vec![]);
        let total = 12_800 / 4; // 0.25 s
        let run = |block: usize| {
            let mut s = Synthesizer::new(model.clone(), 7);
            let mut b = SampleBlock::new(3, block, 12_800.0, true);
            let mut v = vec![Vec::new(); 3];
            while (s.position() as usize) < total {
                let n = block.min(total - s.position() as usize);
                s.fill(&mut b, n);
                for (out, ch) in v.iter_mut().zip(&b.voltage) {
                    out.extend_from_slice(&ch[..n]);
                }
            }
            v
        };
        let a = run(4096);
        assert_eq!(a, run(97));
        assert_eq!(a[1].len(), total);
        for (k, (&l1, &l2)) in a[0].iter().zip(&a[1]).enumerate() {
            let t = k as f64 / 12_800.0;
            let tau = t - 0.1;
            // Sample j (= 100 + j V) at j / 2000 s: linear in time, so interpolation gives
            // 100 + 2000·τ, holding the last sample (199) for its slot; window 100 / 2000 s.
            let expect_l2 = if (0.0..0.05).contains(&tau) {
                (100.0 + (tau * 2000.0).min(99.0)) as f32
            } else {
                plain.voltage_at(1, t) as f32
            };
            assert!((l2 - expect_l2).abs() < 1e-3, "k {k}: {l2} vs {expect_l2}");
            assert!((l1 - plain.voltage_at(0, t) as f32).abs() < 1e-3);
            assert!((f64::from(l2) - model.voltage_at(1, t)).abs() < 1e-3);
        }
    }
}
