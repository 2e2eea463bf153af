//! IEC 61000-4-30 style measurement (STANDARDS.md §4–5): half-cycle segmentation at the
//! fundamental's zero crossings, Urms(1/2), 10/12-cycle and 150/180-cycle RMS, frequency, THD to
//! the 50th order, active power and energy, and dip/swell/interruption detection.
//!
//! Two stages: [`WaveformFrontEnd`] turns samples into half-cycle mean squares (plus THD,
//! frequency and power windows); [`Aggregator`] turns half-cycle mean squares into Urms(1/2),
//! aggregates and power-quality events. The `rms` fidelity feeds the aggregator directly from
//! the disturbance model, so both fidelities share every decision after the front end.
//! Results never depend on the block sizes in which samples arrive.

mod aggregate;
mod pq;
mod segment;
mod thd;

pub use aggregate::{Aggregator, RESYNC_INTERVAL, WINDOWS_PER_AGGREGATE};
pub use segment::{WaveformFrontEnd, MAX_HALF_PERIOD, MIN_HALF_PERIOD};
pub use thd::{ThdAnalyzer, THD_MAX_ORDER};

use crate::grid::Phase;
use crate::scenario::{PqEventKind, PqThresholds};
use crate::synth::SampleBlock;
use crate::time::Seconds;

/// Fundamental cycles per basic window: 10 at 50 Hz, 12 at 60 Hz (≈ 200 ms).
pub fn cycles_per_window(frequency: f64) -> usize {
    if frequency >= 55.0 {
        12
    } else {
        10
    }
}

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

/// The whole chain for the waveform fidelity.
///
/// The front end's events are held until no channel can still produce an earlier one, then
/// released in one canonical order (time, channel, kind) and the half cycles fed to the
/// aggregator in that order. Polyphase decisions therefore never depend on how the samples
/// were split into blocks.
#[derive(Debug)]
pub struct Measurement {
    pub front: WaveformFrontEnd,
    pub aggregator: Aggregator,
    /// Front-end events not yet released.
    pending: Vec<MeasureEvent>,
}

impl Measurement {
    pub fn new(cfg: &MeasureConfig) -> Self {
        Measurement {
            front: WaveformFrontEnd::new(cfg),
            aggregator: Aggregator::new(cfg),
            pending: Vec::new(),
        }
    }

    /// Push a block through both stages. `out` receives every event, including the
    /// `HalfCycle` events the aggregator consumed.
    pub fn push(&mut self, block: &SampleBlock, out: &mut Vec<MeasureEvent>) {
        let before = self.pending.len();
        self.front.push(block, &mut self.pending);
        if self.pending.len() != before {
            self.pending.sort_unstable_by(canonical_order);
        }
        self.release(self.front.horizon(), out);
    }

    /// End of stream at `t`: release everything held and close open PQ events at `t`.
    pub fn finish(&mut self, t: Seconds, out: &mut Vec<MeasureEvent>) {
        self.release(f64::INFINITY, out);
        self.aggregator.finish(t, out)
    }

    /// Release the (sorted) pending events earlier than `horizon`.
    fn release(&mut self, horizon: Seconds, out: &mut Vec<MeasureEvent>) {
        let k = self.pending.partition_point(|e| e.time() < horizon);
        for e in self.pending.drain(..k) {
            if let MeasureEvent::HalfCycle {
                ch,
                t_start,
                t_end,
                ms,
            } = e
            {
                out.push(e);
                self.aggregator.push_half_cycle(ch, t_start, t_end, ms, out);
            } else {
                out.push(e);
            }
        }
    }
}

/// Total order of front-end events: time, then channel, then kind.
fn canonical_order(a: &MeasureEvent, b: &MeasureEvent) -> std::cmp::Ordering {
    fn key(e: &MeasureEvent) -> (usize, u8) {
        match e {
            MeasureEvent::HalfCycle { ch, .. } => (*ch, 0),
            MeasureEvent::UrmsHalf { ch, .. } => (*ch, 1),
            MeasureEvent::Rms10 { ch, .. } => (*ch, 2),
            MeasureEvent::Rms150 { ch, .. } => (*ch, 3),
            MeasureEvent::Thd { ch, .. } => (*ch, 4),
            MeasureEvent::Power { ch, .. } => (*ch, 5),
            MeasureEvent::Frequency { .. } => (0, 6),
            MeasureEvent::Pq(_) => (usize::MAX, 7),
        }
    }
    a.time()
        .total_cmp(&b.time())
        .then_with(|| key(a).cmp(&key(b)))
}

/// RMS of a slice, accumulated in f64.
pub fn rms(samples: &[f32]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let ss: f64 = samples.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    (ss / samples.len() as f64).sqrt()
}

/// Plain `f64::sin` signal builders for the measurement tests (independent of `synth`).
#[cfg(test)]
pub(crate) mod test_signal {
    use super::*;

    pub fn config(
        nominal: f64,
        frequency: f64,
        sample_rate: f64,
        channels: usize,
    ) -> MeasureConfig {
        MeasureConfig {
            nominal,
            frequency,
            sample_rate,
            channels,
            thd: false,
            power: false,
            pq: PqThresholds::default(),
        }
    }

    /// Samples `0..n` of `f(t)` at `fs`.
    pub fn samples(n: usize, fs: f64, f: impl Fn(f64) -> f64) -> Vec<f32> {
        (0..n).map(|i| f(i as f64 / fs) as f32).collect()
    }

    /// Split the streams into blocks of the given sizes (cycled), first sample index `start`.
    pub fn blocks(
        fs: f64,
        start: u64,
        voltage: &[Vec<f32>],
        current: &[Vec<f32>],
        sizes: &[usize],
    ) -> Vec<SampleBlock> {
        let total = voltage.first().map_or(0, Vec::len);
        let mut out = Vec::new();
        let mut pos = 0;
        let mut k = 0;
        while pos < total {
            let n = sizes[k % sizes.len()].max(1).min(total - pos);
            k += 1;
            out.push(SampleBlock {
                start: start + pos as u64,
                len: n,
                sample_rate: fs,
                voltage: voltage.iter().map(|v| v[pos..pos + n].to_vec()).collect(),
                current: current.iter().map(|c| c[pos..pos + n].to_vec()).collect(),
            });
            pos += n;
        }
        out
    }

    /// Run the whole chain; `finish` at the time of the last sample.
    pub fn run(
        cfg: &MeasureConfig,
        voltage: &[Vec<f32>],
        current: &[Vec<f32>],
        sizes: &[usize],
    ) -> Vec<MeasureEvent> {
        run_from(cfg, 0, voltage, current, sizes)
    }

    pub fn run_from(
        cfg: &MeasureConfig,
        start: u64,
        voltage: &[Vec<f32>],
        current: &[Vec<f32>],
        sizes: &[usize],
    ) -> Vec<MeasureEvent> {
        let mut m = Measurement::new(cfg);
        let mut out = Vec::new();
        for b in blocks(cfg.sample_rate, start, voltage, current, sizes) {
            m.push(&b, &mut out);
        }
        let n = voltage.first().map_or(0, Vec::len) as u64;
        m.finish((start + n) as f64 / cfg.sample_rate, &mut out);
        out
    }

    pub fn pq_events(events: &[MeasureEvent]) -> Vec<PqEvent> {
        events
            .iter()
            .filter_map(|e| match e {
                MeasureEvent::Pq(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::test_signal::*;
    use super::*;
    use proptest::prelude::*;
    use std::f64::consts::{PI, SQRT_2};

    fn urms_values(events: &[MeasureEvent], want_ch: usize) -> Vec<(f64, f64, f64)> {
        events
            .iter()
            .filter_map(|e| match *e {
                MeasureEvent::UrmsHalf {
                    ch,
                    t_start,
                    t_end,
                    value,
                } if ch == want_ch => Some((t_start, t_end, value)),
                _ => None,
            })
            .collect()
    }

    /// (t_start, t_end, value, flagged) of every Rms10 (or Rms150 when `long`) of `want_ch`.
    fn windows(events: &[MeasureEvent], want_ch: usize, long: bool) -> Vec<(f64, f64, f64, bool)> {
        events
            .iter()
            .filter_map(|e| match *e {
                MeasureEvent::Rms10 {
                    ch,
                    t_start,
                    t_end,
                    value,
                    flagged,
                } if ch == want_ch && !long => Some((t_start, t_end, value, flagged)),
                MeasureEvent::Rms150 {
                    ch,
                    t_start,
                    t_end,
                    value,
                    flagged,
                } if ch == want_ch && long => Some((t_start, t_end, value, flagged)),
                _ => None,
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn pure_sine_rms_is_amplitude_over_root_two(
            amp in 50.0..500.0_f64,
            freq_choice in 0_u8..3,
            free_freq in 45.0..65.0_f64,
            phase in 0.0..(2.0 * PI),
            per_cycle in 64_usize..400,
            slice_start in 0_usize..1000,
            slice_cycles in 1_usize..5,
        ) {
            let f = match freq_choice { 0 => 50.0, 1 => 60.0, _ => free_freq };
            let nominal_f = if f < 55.0 { 50.0 } else { 60.0 };
            let fs = f * per_cycle as f64;
            let x = samples(27 * per_cycle, fs, |t| amp * (2.0 * PI * f * t + phase).sin());
            let expected = amp / SQRT_2;

            let whole = &x[slice_start..slice_start + slice_cycles * per_cycle];
            prop_assert!((rms(whole) / expected - 1.0).abs() < 1e-6);

            let events = run(&config(expected, nominal_f, fs, 1), &[x], &[], &[4096]);
            let urms = urms_values(&events, 0);
            prop_assert!(urms.len() > 40);
            for (_, _, v) in urms {
                prop_assert!((v / expected - 1.0).abs() < 1e-6, "urms {} expected {}", v, expected);
            }
            let rms10 = windows(&events, 0, false);
            prop_assert!(rms10.len() >= 2);
            for (t0, t1, v, flagged) in rms10 {
                prop_assert!((v / expected - 1.0).abs() < 1e-6, "rms10 {} expected {}", v, expected);
                let cycles = cycles_per_window(nominal_f) as f64;
                prop_assert!(((t1 - t0) * f - cycles).abs() < 1e-6);
                prop_assert!(!flagged);
            }
        }

        #[test]
        fn results_do_not_depend_on_block_sizes(
            seed in any::<u64>(),
            sizes in prop::collection::vec(prop_oneof![Just(1_usize), 1_usize..40, 40_usize..700], 1..12),
        ) {
            let fs = 3200.0;
            let n = 4800; // 1.5 s
            // A noisy, distorted 3-phase 50 Hz supply with a dip on L1, an interruption on L3
            // (free-running segmentation) and currents.
            let mut state = seed | 1;
            let mut noise = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            };
            let mut voltage = Vec::new();
            let mut current = Vec::new();
            for ch in 0..3 {
                let shift = 2.0 * PI * ch as f64 / 3.0;
                let v: Vec<f32> = (0..n)
                    .map(|i| {
                        let t = i as f64 / fs;
                        let th = 2.0 * PI * 50.0 * t - shift;
                        let env = match ch {
                            0 if (0.5..0.7).contains(&t) => 0.6,
                            2 if (0.9..1.1).contains(&t) => 0.0,
                            _ => 1.0,
                        };
                        (325.0 * env * (th.sin() + 0.05 * (3.0 * th).sin()) + 3.0 * noise()) as f32
                    })
                    .collect();
                let c = samples(n, fs, |t| 10.0 * (2.0 * PI * 50.0 * t - shift - 0.6).sin());
                voltage.push(v);
                current.push(c);
            }
            let mut cfg = config(230.0, 50.0, fs, 3);
            cfg.thd = true;
            cfg.power = true;
            let reference = run(&cfg, &voltage, &current, &[n]);
            let split = run(&cfg, &voltage, &current, &sizes);
            let thd_count = reference.iter().filter(|e| matches!(e, MeasureEvent::Thd { .. })).count();
            let power_count = reference.iter().filter(|e| matches!(e, MeasureEvent::Power { .. })).count();
            prop_assert!(thd_count >= 12);
            prop_assert!(power_count >= 12);
            prop_assert!(pq_events(&reference).len() >= 4);
            prop_assert_eq!(&reference, &split);

            // The front end alone: the same events per channel (it emits channel by channel).
            let per_channel = |sizes: &[usize]| {
                let mut fe = WaveformFrontEnd::new(&cfg);
                let mut out = Vec::new();
                for b in blocks(fs, 0, &voltage, &current, sizes) {
                    fe.push(&b, &mut out);
                }
                out.sort_by(canonical_order);
                out
            };
            prop_assert_eq!(per_channel(&[n]), per_channel(&sizes));
        }
    }

    #[test]
    fn thd_of_third_and_fifth_harmonics_at_60_hz_12_8_khz() {
        let fs = 12_800.0;
        let x = samples(12_800, fs, |t| {
            let th = 2.0 * PI * 60.0 * t + 0.4;
            170.0 * (th.sin() + 0.05 * (3.0 * th + 1.0).sin() + 0.04 * (5.0 * th - 0.5).sin())
        });
        let mut cfg = config(120.0, 60.0, fs, 1);
        cfg.thd = true;
        let events = run(&cfg, &[x], &[], &[1000]);
        let thd: Vec<f64> = events
            .iter()
            .filter_map(|e| match e {
                MeasureEvent::Thd { percent, .. } => Some(*percent),
                _ => None,
            })
            .collect();
        assert!(thd.len() >= 4, "{thd:?}");
        for p in thd {
            assert!((p - 6.403).abs() < 0.01, "thd {p}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn chain_thd_matches_definition(
            sixty in any::<bool>(),
            phase in 0.0..(2.0 * PI),
            harmonics in prop::collection::vec((2_usize..=50, 0.0..0.2_f64, 0.0..(2.0 * PI)), 1..4),
        ) {
            let f = if sixty { 60.0 } else { 50.0 };
            let per_cycle = 200;
            let fs = f * per_cycle as f64;
            let mut hs: Vec<(usize, f64, f64)> = Vec::new();
            for &(h, m, p) in &harmonics {
                if !hs.iter().any(|x| x.0 == h) {
                    hs.push((h, m, p));
                }
            }
            let x = samples(40 * per_cycle, fs, |t| {
                let th = 2.0 * PI * f * t + phase;
                230.0 * (th.sin() + hs.iter().map(|&(h, m, p)| m * (h as f64 * th + p).sin()).sum::<f64>())
            });
            let mut cfg = config(230.0, f, fs, 1);
            cfg.thd = true;
            let events = run(&cfg, &[x], &[], &[777]);
            let expected = 100.0 * hs.iter().map(|h| h.1 * h.1).sum::<f64>().sqrt();
            let thd: Vec<f64> = events.iter().filter_map(|e| match e {
                MeasureEvent::Thd { percent, .. } => Some(*percent),
                _ => None,
            }).collect();
            prop_assert!(thd.len() >= 2);
            // The first window may start inside a cluster of crossings; from the second on the
            // segmentation has locked to the period.
            for p in &thd[1..] {
                prop_assert!((p - expected).abs() < 0.01, "thd {} expected {}", p, expected);
            }
        }
    }

    /// 3-phase 60 Hz at 12.8 kHz, 120 V, with per-phase envelopes `env(ch, t)`.
    fn three_phase_60(seconds: f64, env: impl Fn(usize, f64) -> f64) -> Vec<MeasureEvent> {
        let fs = 12_800.0;
        let n = (seconds * fs) as usize;
        let voltage: Vec<Vec<f32>> = (0..3)
            .map(|ch| {
                let shift = 2.0 * PI * ch as f64 / 3.0;
                samples(n, fs, |t| {
                    env(ch, t) * 120.0 * SQRT_2 * (2.0 * PI * 60.0 * t - shift).sin()
                })
            })
            .collect();
        run(&config(120.0, 60.0, fs, 3), &voltage, &[], &[2048])
    }

    fn sag(ch_sagged: usize, level: f64) -> impl Fn(usize, f64) -> f64 {
        // 12 cycles from t = 1 s, a zero crossing of L1.
        move |ch, t| {
            if ch == ch_sagged && (1.0..1.2).contains(&t) {
                level
            } else {
                1.0
            }
        }
    }

    #[test]
    fn twelve_cycle_sag_to_075_is_a_dip_with_residual_and_duration() {
        let events = three_phase_60(1.6, sag(0, 0.75));
        let pq = pq_events(&events);
        let l1: Vec<_> = pq.iter().filter(|e| e.phase == Some(Phase::L1)).collect();
        assert_eq!(l1.len(), 1, "{pq:?}");
        let dip = l1[0];
        assert_eq!(dip.kind, PqEventKind::Dip);
        assert!(
            (dip.extreme - 0.75 * 120.0).abs() < 0.002 * 120.0,
            "residual {}",
            dip.extreme
        );
        assert!(
            (dip.duration() - 0.2).abs() < 1.0 / 60.0,
            "duration {}",
            dip.duration()
        );
        assert!((dip.start - 1.0).abs() < 1.0 / 60.0);
        // One phase dipping makes a polyphase dip with the same residual; nothing else happens.
        let poly: Vec<_> = pq.iter().filter(|e| e.phase.is_none()).collect();
        assert_eq!(poly.len(), 1);
        assert_eq!(poly[0].kind, PqEventKind::Dip);
        assert_eq!(poly[0].extreme, dip.extreme);
        assert_eq!(pq.len(), 2);
    }

    #[test]
    fn a_095_pu_sag_is_not_a_dip() {
        let events = three_phase_60(1.6, sag(1, 0.95));
        assert!(pq_events(&events).is_empty());
        let lowest = urms_values(&events, 1)
            .iter()
            .map(|u| u.2)
            .fold(f64::INFINITY, f64::min);
        assert!((lowest - 0.95 * 120.0).abs() < 0.01);
    }

    #[test]
    fn interruption_needs_every_phase() {
        // L3 alone to zero: single-phase interruption and dip on L3, polyphase dip only.
        let events = three_phase_60(1.6, sag(2, 0.0));
        let pq = pq_events(&events);
        let kinds = |phase: Option<Phase>| {
            let mut k: Vec<_> = pq
                .iter()
                .filter(|e| e.phase == phase)
                .map(|e| e.kind)
                .collect();
            k.sort_by_key(|k| k.name());
            k
        };
        assert_eq!(
            kinds(Some(Phase::L3)),
            vec![PqEventKind::Dip, PqEventKind::Interruption]
        );
        assert_eq!(kinds(None), vec![PqEventKind::Dip]);
        assert!(kinds(Some(Phase::L1)).is_empty());
        let int = pq
            .iter()
            .find(|e| e.kind == PqEventKind::Interruption)
            .unwrap();
        assert!(int.extreme < 1e-3);
        assert!((int.duration() - 0.2).abs() < 1.0 / 60.0);

        // All phases to 5 %: a polyphase interruption.
        let events = three_phase_60(1.6, |_, t| if (1.0..1.2).contains(&t) { 0.05 } else { 1.0 });
        let pq = pq_events(&events);
        let poly_int: Vec<_> = pq
            .iter()
            .filter(|e| e.phase.is_none() && e.kind == PqEventKind::Interruption)
            .collect();
        assert_eq!(poly_int.len(), 1, "{pq:?}");
        assert!((poly_int[0].extreme - 6.0).abs() < 0.01 * 120.0);
        assert_eq!(
            pq.iter()
                .filter(|e| e.kind == PqEventKind::Interruption)
                .count(),
            4
        );
    }

    #[test]
    fn swell_magnitude_is_the_highest_value() {
        let events = three_phase_60(1.6, sag(1, 1.15));
        let pq = pq_events(&events);
        assert_eq!(pq.len(), 2, "{pq:?}");
        for e in &pq {
            assert_eq!(e.kind, PqEventKind::Swell);
            assert!((e.extreme - 1.15 * 120.0).abs() < 0.002 * 120.0);
        }
    }

    #[test]
    fn frequency_of_59_5_hz_within_a_millihertz() {
        let fs = 12_800.0;
        let x = samples(25_600, fs, |t| 170.0 * (2.0 * PI * 59.5 * t + 1.0).sin());
        let events = run(&config(120.0, 60.0, fs, 1), &[x], &[], &[999]);
        let hz: Vec<f64> = events
            .iter()
            .filter_map(|e| match e {
                MeasureEvent::Frequency { hz, .. } => Some(*hz),
                _ => None,
            })
            .collect();
        assert!(hz.len() >= 8);
        for f in hz {
            assert!((f - 59.5).abs() < 1e-3, "{f}");
        }
    }

    #[test]
    fn active_power_and_energy_with_power_factor_08() {
        let fs = 6400.0;
        let (vpk, ipk) = (325.0, 14.0);
        let phi = 0.8_f64.acos();
        let v = samples(12_800, fs, |t| vpk * (2.0 * PI * 50.0 * t + 0.2).sin());
        let i = samples(12_800, fs, |t| {
            ipk * (2.0 * PI * 50.0 * t + 0.2 - phi).sin()
        });
        let mut cfg = config(230.0, 50.0, fs, 1);
        cfg.power = true;
        let events = run(&cfg, &[v], &[i], &[512]);
        let expected = vpk / SQRT_2 * ipk / SQRT_2 * 0.8;
        let mut energy = 0.0;
        let mut count = 0;
        for e in &events {
            if let MeasureEvent::Power {
                t_start,
                t_end,
                watts,
                energy_wh,
                ..
            } = *e
            {
                assert!(
                    (watts / expected - 1.0).abs() < 1e-6,
                    "{watts} vs {expected}"
                );
                energy += expected * (t_end - t_start) / 3600.0;
                assert!((energy_wh / energy - 1.0).abs() < 1e-6);
                count += 1;
            }
        }
        assert!(count >= 9);
    }

    #[test]
    fn noise_and_notches_do_not_split_half_cycles_and_silence_free_runs() {
        let fs = 12_800.0;
        // A fast ripple that chatters at every zero crossing, and an interruption (exact zeros)
        // 0.5–0.8 s.
        let x = samples(12_800, fs, |t| {
            let th = 2.0 * PI * 50.0 * t;
            if (0.5..0.8).contains(&t) {
                0.0
            } else {
                // Its slope beats the fundamental's near zero: several crossings per crossing.
                325.0 * th.sin() + 30.0 * (2.0 * PI * 3100.0 * t).sin()
            }
        });
        let mut fe = WaveformFrontEnd::new(&config(230.0, 50.0, fs, 1));
        let mut out = Vec::new();
        for b in blocks(fs, 0, &[x], &[], &[300]) {
            fe.push(&b, &mut out);
        }
        let halves: Vec<(f64, f64, f64)> = out
            .iter()
            .filter_map(|e| match *e {
                MeasureEvent::HalfCycle {
                    t_start, t_end, ms, ..
                } => Some((t_start, t_end, ms)),
                _ => None,
            })
            .collect();
        for w in halves.windows(2) {
            assert_eq!(w[0].1, w[1].0, "contiguous");
        }
        for &(t0, t1, ms) in &halves {
            let d = t1 - t0;
            assert!((0.7 * 0.01..=1.3 * 0.01 + 1e-12).contains(&d), "{t0} {d}");
            if t0 > 0.52 && t1 < 0.8 {
                // Free-running: one nominal half period each, no energy.
                assert!((d - 0.01).abs() < 1e-12 && ms == 0.0, "{t0} {d} {ms}");
            }
            if t0 > 0.005 && t1 < 0.5 {
                // The ripple adds 30²/2 V² and beats with the half cycle a little.
                let expected = (325.0_f64.powi(2) / 2.0 + 450.0).sqrt();
                assert!((ms.sqrt() / expected - 1.0).abs() < 0.01, "{t0} {ms}");
            }
        }
        // ~100 half cycles per second: none lost to chatter, none added.
        assert!((98..=101).contains(&halves.len()), "{}", halves.len());
    }

    #[test]
    fn flagged_windows_and_aggregates_overlap_the_dip() {
        let fs = 3200.0;
        let x = samples((7.0 * fs) as usize, fs, |t| {
            let env = if (2.0..2.1).contains(&t) { 0.5 } else { 1.0 };
            env * 325.0 * (2.0 * PI * 50.0 * t + 0.5).sin()
        });
        let events = run(&config(230.0, 50.0, fs, 1), &[x], &[], &[1024]);
        let rms10 = windows(&events, 0, false);
        assert!(rms10.len() >= 30);
        for &(t0, t1, _, flagged) in &rms10 {
            let touches = t1 > 2.0 && t0 < 2.1 + 0.02;
            let clear = t1 < 1.99 || t0 > 2.14;
            assert!(!touches || flagged, "{t0}..{t1} should be flagged");
            assert!(!clear || !flagged, "{t0}..{t1} should not be flagged");
        }
        let rms150 = windows(&events, 0, true);
        assert_eq!(rms150.len(), 2);
        assert!(rms150[0].3, "the first 3 s contain the dip");
        assert!(!rms150[1].3);
        assert!((rms150[1].2 / (325.0 / SQRT_2) - 1.0).abs() < 1e-6);
        assert!((rms150[0].1 - rms150[0].0 - 3.0).abs() < 1e-9);
    }

    #[test]
    fn ten_minute_resynchronisation() {
        let fs = 1600.0;
        // The stream starts at 0.1 s so the 10-cycle series is not aligned to the boundary.
        let start = 160;
        let n = (603.6 * fs) as usize - start as usize;
        let amp = 325.0;
        let x: Vec<f32> = (0..n)
            .map(|i| {
                (amp * (2.0 * PI * 50.0 * ((start + i as u64) as f64 / fs) + 0.3).sin()) as f32
            })
            .collect();
        let events = run_from(&config(230.0, 50.0, fs, 1), start, &[x], &[], &[8192]);
        let rms10 = windows(&events, 0, false);
        let rms150 = windows(&events, 0, true);
        // Zero crossings of sin(2π·50·t + 0.3) sit at (kπ − 0.3)/(100π).
        let crossing = |k: f64| (k * PI - 0.3) / (100.0 * PI);
        let t0 = crossing(11.0); // first crossing after 0.1 s
        let resync = crossing(((600.0 * 100.0 * PI + 0.3) / PI).ceil());
        assert!(t0 > 0.1 && (600.0..600.01).contains(&resync));
        // Old series: windows every 0.2 s from t0, the last one straddling the boundary.
        let old: Vec<_> = rms10.iter().filter(|w| w.0 < resync - 1e-6).collect();
        let new: Vec<_> = rms10.iter().filter(|w| w.0 >= resync - 1e-6).collect();
        let last_old = old.last().unwrap();
        assert!((old[0].0 - t0).abs() < 1e-6);
        assert_eq!(old.len(), ((resync - t0) / 0.2).ceil() as usize);
        assert!(
            last_old.1 > resync + 0.01 && last_old.1 < resync + 0.2,
            "overlap {:?}",
            last_old
        );
        assert!((last_old.0 - (t0 + 0.2 * (old.len() - 1) as f64)).abs() < 1e-6);
        // New series starts at the first half cycle at or after 600 s.
        assert!((new[0].0 - resync).abs() < 1e-6, "{:?} {}", new[0], resync);
        for w in new.windows(2) {
            assert!((w[1].0 - w[0].1).abs() < 1e-9);
        }
        assert_eq!(new.len(), ((603.6 - 0.01 - resync) / 0.2) as usize);
        // 150-cycle aggregates: contiguous 3 s intervals from t0, none spanning the boundary,
        // the incomplete one dropped, a new one starting at the boundary.
        let spans = rms150
            .iter()
            .filter(|w| w.0 < resync && w.1 > resync)
            .count();
        assert_eq!(spans, 0);
        let old150: Vec<_> = rms150.iter().filter(|w| w.1 <= resync).collect();
        assert_eq!(old150.len(), ((resync - t0) / 3.0) as usize);
        assert!((old150.last().unwrap().1 - (t0 + 3.0 * old150.len() as f64)).abs() < 1e-6);
        let new150: Vec<_> = rms150.iter().filter(|w| w.0 >= resync - 1e-6).collect();
        assert_eq!(new150.len(), 1);
        assert!((new150[0].0 - resync).abs() < 1e-6 && (new150[0].1 - resync - 3.0).abs() < 1e-6);
        for w in rms10.iter().chain(&rms150) {
            assert!((w.2 / (amp / SQRT_2) - 1.0).abs() < 1e-6);
            assert!(!w.3);
        }
    }
}
