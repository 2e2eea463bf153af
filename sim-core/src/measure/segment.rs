//! Waveform front end: half-cycle segmentation at the fundamental's zero crossings, half-cycle
//! mean squares, and the 10/12-cycle THD, frequency and power windows.
//!
//! Segmentation rules (per channel):
//! - a boundary is a sign change of the sample stream (`x < 0` against `x ≥ 0`); its time is
//!   the linearly interpolated crossing between the two samples;
//! - a crossing is accepted only ≥ 0.7 nominal half periods after the previous boundary
//!   (rejects chatter from noise, notches, transients and harmonics);
//! - with no accepted crossing within 1.3 nominal half periods (interruption, heavy DC), a
//!   free-running boundary is placed one nominal half period after the previous one;
//! - a sample belongs to the half cycle that contains it: the first sample at or after a
//!   boundary starts the next half cycle. Samples before the first boundary are discarded.
//!
//! Block-size independence: every decision depends on absolute sample indices only, and the
//! sums of squares use eight accumulator lanes chosen by `index mod 8`, so each lane adds the
//! same samples in the same order however the stream is split. The inner loops are plain
//! chunked slices the compiler vectorises.

use super::thd::ThdAnalyzer;
use super::{cycles_per_window, MeasureConfig, MeasureEvent};
use crate::synth::SampleBlock;
use crate::time::{first_sample_at_or_after, Seconds};

/// Accumulator lanes; lane = absolute sample index mod `LANES`.
const LANES: usize = 8;
/// Samples per sign-scan chunk.
const SCAN_CHUNK: usize = 16;

/// Earliest accepted crossing, in nominal half periods after the previous boundary.
pub const MIN_HALF_PERIOD: f64 = 0.7;
/// Latest crossing before a free-running boundary is inserted, in nominal half periods.
pub const MAX_HALF_PERIOD: f64 = 1.3;

/// Lane sums of v² and v·i over a run of samples.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    sq: [f64; LANES],
    vi: [f64; LANES],
    n: u64,
}

impl Sums {
    fn merged(&self, other: &Sums) -> Sums {
        let mut s = *self;
        for l in 0..LANES {
            s.sq[l] += other.sq[l];
            s.vi[l] += other.vi[l];
        }
        s.n += other.n;
        s
    }

    fn sq_total(&self) -> f64 {
        self.sq.iter().sum()
    }

    fn vi_total(&self) -> f64 {
        self.vi.iter().sum()
    }
}

/// Add v² (and v·i when `P`) of `v` (whose first sample has absolute index `idx0`) to `s`.
#[inline]
fn accumulate<const P: bool>(v: &[f32], cur: &[f32], idx0: u64, s: &mut Sums) {
    let len = v.len();
    s.n += len as u64;
    let lane0 = (idx0 % LANES as u64) as usize;
    let head = ((LANES - lane0) % LANES).min(len);
    for j in 0..head {
        let x = f64::from(v[j]);
        s.sq[lane0 + j] += x * x;
        if P {
            s.vi[lane0 + j] += x * f64::from(cur[j]);
        }
    }
    let vb = &v[head..];
    let chunks = vb.chunks_exact(LANES);
    let rem = chunks.remainder();
    if P {
        let cb = &cur[head..len];
        for (cv, ci) in chunks.zip(cb.chunks_exact(LANES)) {
            for ((q, p), (&x, &y)) in s.sq.iter_mut().zip(s.vi.iter_mut()).zip(cv.iter().zip(ci)) {
                let x = f64::from(x);
                *q += x * x;
                *p += x * f64::from(y);
            }
        }
        let crem = &cb[cb.len() - rem.len()..];
        for ((q, p), (&x, &y)) in
            s.sq.iter_mut()
                .zip(s.vi.iter_mut())
                .zip(rem.iter().zip(crem))
        {
            let x = f64::from(x);
            *q += x * x;
            *p += x * f64::from(y);
        }
    } else {
        for cv in chunks {
            for (q, &x) in s.sq.iter_mut().zip(cv) {
                let x = f64::from(x);
                *q += x * x;
            }
        }
        for (q, &x) in s.sq.iter_mut().zip(rem) {
            let x = f64::from(x);
            *q += x * x;
        }
    }
}

/// Position of the first sample whose sign differs from `neg` (the sign of the sample before
/// `v[0]`).
#[inline]
fn find_sign_change(v: &[f32], neg: bool) -> Option<usize> {
    let same = if neg { SCAN_CHUNK as u32 } else { 0 };
    let mut base = 0;
    for c in v.chunks_exact(SCAN_CHUNK) {
        let negatives: u32 = c.iter().map(|&x| u32::from(x < 0.0)).sum();
        if negatives != same {
            break;
        }
        base += SCAN_CHUNK;
    }
    v[base..]
        .iter()
        .position(|&x| (x < 0.0) != neg)
        .map(|p| base + p)
}

/// Settings shared by the channels.
#[derive(Debug, Clone, Copy)]
struct Params {
    fs: f64,
    half: f64,
    cycles: usize,
    thd: bool,
    power: bool,
}

impl Params {
    fn time(&self, idx: u64) -> Seconds {
        idx as f64 / self.fs
    }
}

#[derive(Debug, Default)]
struct ChannelFront {
    ch: usize,
    /// At least one sample consumed.
    seen: bool,
    /// The first boundary has been found; half cycles are being emitted.
    emitting: bool,
    /// Last consumed sample.
    prev: f32,
    /// Index after the last consumed sample.
    next_idx: u64,
    /// Previous boundary (before the first boundary: the first sample's time).
    b: Seconds,
    gate_t: Seconds,
    free_t: Seconds,
    deadline_t: Seconds,
    /// First sample index at or after `gate_t`, `free_t`, `deadline_t`.
    i_gate: u64,
    i_free: u64,
    i_deadline: u64,
    /// Samples of the half cycle in progress before `i_free`, and from `i_free` on.
    main: Sums,
    tail: Sums,
    // 10/12-cycle window in progress.
    win_hc: usize,
    win_t_start: Seconds,
    win_vi: f64,
    win_n: u64,
    /// The last block carried current samples.
    has_current: bool,
    energy_wh: f64,
    /// Samples from `buf_start` to the last consumed one (THD only).
    buf: Vec<f32>,
    buf_start: u64,
}

impl ChannelFront {
    fn set_marks(&mut self, p: &Params) {
        self.gate_t = self.b + MIN_HALF_PERIOD * p.half;
        self.free_t = self.b + p.half;
        self.deadline_t = self.b + MAX_HALF_PERIOD * p.half;
        self.i_gate = first_sample_at_or_after(self.gate_t, p.fs);
        self.i_free = first_sample_at_or_after(self.free_t, p.fs).max(self.i_gate);
        self.i_deadline = first_sample_at_or_after(self.deadline_t, p.fs).max(self.i_free);
    }

    /// Lower bound of the time of any event this channel emits from now on; `None` before
    /// its first sample.
    fn horizon(&self, p: &Params) -> Option<Seconds> {
        if !self.seen {
            return None;
        }
        let t_last = p.time(self.next_idx - 1);
        Some(if self.emitting {
            // Next boundary: a crossing after the last sample and past the gate, or free-running.
            t_last.max(self.gate_t).min(self.free_t)
        } else {
            t_last.min(self.free_t)
        })
    }

    /// Consume `v` (starting at absolute index `idx0`, entirely before or entirely from
    /// `i_free`).
    #[inline]
    fn consume<const P: bool>(&mut self, p: &Params, v: &[f32], cur: &[f32], idx0: u64) {
        if v.is_empty() {
            return;
        }
        let target = if idx0 < self.i_free {
            &mut self.main
        } else {
            &mut self.tail
        };
        accumulate::<P>(v, cur, idx0, target);
        if p.thd {
            self.buf.extend_from_slice(v);
        }
        self.prev = v[v.len() - 1];
    }

    /// Interpolated crossing between the previous sample and `x` (at `idx`), within the
    /// interval between the two samples; `None` when a sample is not finite (NaN, ±∞): that is
    /// treated as no crossing.
    fn crossing_time(&self, p: &Params, x: f32, idx: u64) -> Option<Seconds> {
        let a = f64::from(self.prev);
        let frac = a / (a - f64::from(x));
        let t = (idx.saturating_sub(1) as f64 + frac.clamp(0.0, 1.0)) / p.fs;
        (frac.is_finite() && t.is_finite()).then_some(t)
    }

    /// A boundary at `t_b`; `first_idx` is the first sample of the next half cycle. A crossing
    /// closes the half cycle with every consumed sample; a free-running boundary leaves the
    /// samples from `i_free` on to the next half cycle.
    fn boundary(
        &mut self,
        p: &Params,
        t_b: Seconds,
        first_idx: u64,
        crossing: bool,
        thd: &mut ThdAnalyzer,
        out: &mut Vec<MeasureEvent>,
    ) {
        let hc = if crossing {
            self.main.merged(&self.tail)
        } else {
            self.main
        };
        if self.emitting {
            self.emit_half_cycle(p, t_b, &hc, first_idx, thd, out);
        } else {
            self.emitting = true;
        }
        self.main = if crossing { Sums::default() } else { self.tail };
        self.tail = Sums::default();
        self.b = t_b;
        self.set_marks(p);
        if p.thd && self.win_hc == 0 && first_idx > self.buf_start {
            let k = ((first_idx - self.buf_start) as usize).min(self.buf.len());
            self.buf.drain(..k);
            self.buf_start = first_idx;
        }
    }

    fn emit_half_cycle(
        &mut self,
        p: &Params,
        t_end: Seconds,
        hc: &Sums,
        end_idx: u64,
        thd: &mut ThdAnalyzer,
        out: &mut Vec<MeasureEvent>,
    ) {
        let t_start = self.b;
        // Mean square over the half cycle's duration (Σx²/fs ≈ ∫x²dt): a sample sitting on a
        // zero crossing then weighs nothing whichever side it falls on, and a one-cycle pair is
        // exactly the RMS over the cycle's samples.
        let span = (t_end - t_start) * p.fs;
        let ms = if span > 0.0 {
            hc.sq_total() / span
        } else {
            0.0
        };
        out.push(MeasureEvent::HalfCycle {
            ch: self.ch,
            t_start,
            t_end,
            ms,
        });
        if self.win_hc == 0 {
            self.win_t_start = t_start;
        }
        self.win_hc += 1;
        self.win_vi += hc.vi_total();
        self.win_n += hc.n;
        if self.win_hc < 2 * p.cycles {
            return;
        }
        let ch = self.ch;
        let t_start = self.win_t_start;
        if p.thd {
            let k = (end_idx.saturating_sub(self.buf_start) as usize).min(self.buf.len());
            if let Some(percent) = thd.thd_percent(&self.buf[..k], p.cycles) {
                out.push(MeasureEvent::Thd {
                    ch,
                    t_start,
                    t_end,
                    percent,
                });
            }
            self.buf.drain(..k);
            self.buf_start = end_idx;
        }
        if ch == 0 && t_end > t_start {
            out.push(MeasureEvent::Frequency {
                t_start,
                t_end,
                hz: p.cycles as f64 / (t_end - t_start),
            });
        }
        if p.power && self.has_current {
            let span = (t_end - t_start) * p.fs;
            let watts = if span > 0.0 { self.win_vi / span } else { 0.0 };
            self.energy_wh += watts * (t_end - t_start) / 3600.0;
            out.push(MeasureEvent::Power {
                ch,
                t_start,
                t_end,
                watts,
                energy_wh: self.energy_wh,
            });
        }
        self.win_hc = 0;
        self.win_vi = 0.0;
        self.win_n = 0;
    }

    fn process<const P: bool>(
        &mut self,
        p: &Params,
        v: &[f32],
        cur: &[f32],
        start: u64,
        thd: &mut ThdAnalyzer,
        out: &mut Vec<MeasureEvent>,
    ) {
        let len = v.len();
        if len == 0 {
            return;
        }
        self.has_current = P;
        let mut pos = 0;
        if !self.seen {
            self.seen = true;
            self.b = p.time(start);
            self.set_marks(p);
            // The first sample has no predecessor: scanning starts at the second one.
            self.i_gate = start + 1;
            self.i_free = self.i_free.max(self.i_gate);
            self.i_deadline = self.i_deadline.max(self.i_free);
            self.buf_start = start;
            self.consume::<P>(p, &v[..1], &cur[..usize::from(P)], start);
            pos = 1;
        }
        while pos < len {
            let idx = start + pos as u64;
            if idx < self.i_gate {
                let end = pos + ((self.i_gate - idx).min((len - pos) as u64) as usize);
                let lim = if idx < self.i_free {
                    end.min(pos + (self.i_free - idx) as usize)
                } else {
                    end
                };
                self.consume::<P>(p, &v[pos..lim], cur_slice::<P>(cur, pos, lim), idx);
                pos = lim;
                continue;
            }
            if idx < self.i_deadline {
                let lim_idx = if idx < self.i_free {
                    self.i_free
                } else {
                    self.i_deadline
                };
                let end = pos + ((lim_idx - idx).min((len - pos) as u64) as usize);
                match find_sign_change(&v[pos..end], self.prev < 0.0) {
                    None => {
                        self.consume::<P>(p, &v[pos..end], cur_slice::<P>(cur, pos, end), idx);
                        pos = end;
                    }
                    Some(k) => {
                        let n = pos + k;
                        self.consume::<P>(p, &v[pos..n], cur_slice::<P>(cur, pos, n), idx);
                        let n_idx = start + n as u64;
                        let t_c = self
                            .crossing_time(p, v[n], n_idx)
                            .filter(|&t| !self.emitting || t >= self.gate_t);
                        if let Some(t_c) = t_c {
                            self.boundary(p, t_c, n_idx, true, thd, out);
                            pos = n;
                        } else {
                            self.consume::<P>(
                                p,
                                &v[n..n + 1],
                                cur_slice::<P>(cur, n, n + 1),
                                n_idx,
                            );
                            pos = n + 1;
                        }
                    }
                }
                continue;
            }
            // At the deadline sample: a last chance for a crossing, else free-running.
            let x = v[pos];
            let b_before = self.b;
            let crossing = ((x < 0.0) != (self.prev < 0.0))
                .then(|| self.crossing_time(p, x, idx))
                .flatten()
                .filter(|&t| (!self.emitting || t >= self.gate_t) && t < self.deadline_t);
            if let Some(t_c) = crossing {
                self.boundary(p, t_c, idx, true, thd, out);
            } else {
                let (t_b, first) = (self.free_t, self.i_free);
                self.boundary(p, t_b, first, false, thd, out);
            }
            // Always make progress: a boundary that did not move past the previous one (time
            // too large to advance by a half period, or a non-finite mark) consumes the sample.
            if self.b <= b_before || !self.b.is_finite() {
                self.consume::<P>(p, &v[pos..pos + 1], cur_slice::<P>(cur, pos, pos + 1), idx);
                pos += 1;
            }
        }
        self.next_idx = start + len as u64;
    }
}

#[inline]
fn cur_slice<const P: bool>(cur: &[f32], a: usize, b: usize) -> &[f32] {
    if P {
        &cur[a..b]
    } else {
        &[]
    }
}

/// Samples → half-cycle mean squares, THD, frequency and power windows.
///
/// Events are appended channel by channel for each block; [`super::Measurement`] merges them
/// into one time-ordered stream.
#[derive(Debug)]
pub struct WaveformFrontEnd {
    cfg: MeasureConfig,
    params: Option<Params>,
    channels: Vec<ChannelFront>,
    thd: ThdAnalyzer,
}

impl WaveformFrontEnd {
    pub fn new(cfg: &MeasureConfig) -> Self {
        let valid = cfg.sample_rate.is_finite()
            && cfg.sample_rate > 0.0
            && cfg.frequency.is_finite()
            && cfg.frequency > 0.0;
        let params = valid.then(|| Params {
            fs: cfg.sample_rate,
            half: 0.5 / cfg.frequency,
            cycles: cycles_per_window(cfg.frequency),
            thd: cfg.thd,
            power: cfg.power,
        });
        let channels = (0..cfg.channels.max(1))
            .map(|ch| {
                let mut c = ChannelFront {
                    ch,
                    ..ChannelFront::default()
                };
                if cfg.thd && valid {
                    // A window plus the longest free-running tail: no growth in steady state.
                    let half_samples = (cfg.sample_rate * 0.5 / cfg.frequency).ceil() as usize + 1;
                    let cap = half_samples * (2 * cycles_per_window(cfg.frequency) + 2) * 13 / 10;
                    c.buf.reserve(cap.min(1 << 24));
                }
                c
            })
            .collect();
        WaveformFrontEnd {
            cfg: cfg.clone(),
            params,
            channels,
            thd: ThdAnalyzer::new(),
        }
    }

    /// Consume one block (samples `block.start .. block.start + block.len`). Appends
    /// `HalfCycle`, `Thd`, `Frequency` and `Power` events to `out`.
    pub fn push(&mut self, block: &SampleBlock, out: &mut Vec<MeasureEvent>) {
        let Some(p) = self.params else { return };
        let n_ch = self.channels.len().min(block.voltage.len());
        for ch in 0..n_ch {
            let v = &block.voltage[ch];
            let len = block.len.min(v.len());
            let v = &v[..len];
            let state = &mut self.channels[ch];
            match block.current.get(ch) {
                Some(i) if p.power && i.len() >= len => {
                    state.process::<true>(&p, v, &i[..len], block.start, &mut self.thd, out)
                }
                _ => state.process::<false>(&p, v, &[], block.start, &mut self.thd, out),
            }
        }
    }

    /// No event this front end emits from now on has an earlier time: the minimum over the
    /// channels that have seen samples (blocks are expected to carry the same channels every
    /// time); `-∞` before the first sample.
    pub fn horizon(&self) -> Seconds {
        let Some(p) = self.params else {
            return f64::INFINITY;
        };
        let seen = self.channels.iter().filter_map(|c| c.horizon(&p));
        seen.reduce(f64::min).unwrap_or(f64::NEG_INFINITY)
    }

    pub fn config(&self) -> &MeasureConfig {
        &self.cfg
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::measure::test_signal::{config, samples};

    fn block(start: u64, fs: f64, v: Vec<f32>) -> SampleBlock {
        SampleBlock {
            start,
            len: v.len(),
            sample_rate: fs,
            voltage: vec![v],
            current: Vec::new(),
        }
    }

    fn check_times(out: &[MeasureEvent]) -> Vec<(Seconds, Seconds)> {
        out.iter()
            .filter_map(|e| match e {
                MeasureEvent::HalfCycle { t_start, t_end, .. } => Some((*t_start, *t_end)),
                _ => None,
            })
            .collect()
    }

    /// Non-finite samples (a runaway synthesis overflowing f32) never produce a non-finite
    /// boundary and never stall the scan: the run ends, every time is finite and increasing.
    #[test]
    fn non_finite_samples_finish_with_finite_times() {
        let fs = 3840.0;
        let n = 3840; // 1 s at 60 Hz
        let mut cfg = config(240.0, 60.0, fs, 1);
        cfg.thd = true;
        let patterns: [&dyn Fn(usize) -> f32; 6] = [
            &|_| f32::NAN,
            &|i| {
                if i % 2 == 0 {
                    f32::INFINITY
                } else {
                    f32::NEG_INFINITY
                }
            },
            &|i| if i % 3 == 0 { f32::NAN } else { -1.0 },
            &|i| {
                if (i / 32) % 2 == 0 {
                    f32::INFINITY
                } else {
                    -f32::INFINITY
                }
            },
            &|i| {
                if i % 2 == 0 {
                    f32::NAN
                } else {
                    f32::NEG_INFINITY
                }
            },
            &|i| {
                if i < 100 {
                    1.0
                } else {
                    f32::INFINITY * if i % 5 == 0 { -1.0 } else { 1.0 }
                }
            },
        ];
        for (k, pat) in patterns.iter().enumerate() {
            let mut fe = WaveformFrontEnd::new(&cfg);
            let mut out = Vec::new();
            // Start with a clean sine so the front end is emitting, then the bad samples.
            let sine = samples(n, fs, |t| {
                340.0 * (2.0 * std::f64::consts::PI * 60.0 * t).sin()
            });
            fe.push(&block(0, fs, sine), &mut out);
            let bad: Vec<f32> = (0..n).map(pat).collect();
            fe.push(&block(n as u64, fs, bad.clone()), &mut out);
            // A fresh front end that sees only bad samples from its first sample on.
            let mut fe2 = WaveformFrontEnd::new(&cfg);
            fe2.push(&block(0, fs, bad), &mut out);
            let times = check_times(&out);
            assert!(
                times.len() > 100,
                "pattern {k}: {} half cycles",
                times.len()
            );
            for e in &out {
                assert!(e.time().is_finite(), "pattern {k}: {e:?}");
            }
            for (a, b) in &times {
                assert!(
                    a.is_finite() && b.is_finite() && b >= a,
                    "pattern {k}: {a} {b}"
                );
                assert!(
                    *b <= 2.0 + 1e-9,
                    "pattern {k}: boundary {b} past the samples"
                );
            }
            assert!(
                fe.horizon().is_finite() && fe2.horizon().is_finite(),
                "pattern {k}"
            );
        }
    }
}
