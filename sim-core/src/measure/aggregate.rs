//! Half-cycle mean squares → Urms(1/2), 10/12-cycle and 150/180-cycle RMS with flagging, and
//! PQ events (STANDARDS.md §4.2–4.5).
//!
//! Urms(1/2) and the 10/12-cycle values are duration-weighted means of the half-cycle mean
//! squares.
//!
//! 10-minute resynchronisation: at each boundary `t = 600·m s` a new 10/12-cycle series starts
//! with the first half cycle starting at or after the boundary; the window in progress still
//! completes (a small overlap, as IEC 61000-4-30 asks) but does not feed a 150/180-cycle
//! aggregate. The 150/180-cycle aggregate restarts with the new series' first window; an
//! incomplete one is dropped.

use super::pq::PqDetector;
use super::{cycles_per_window, MeasureConfig, MeasureEvent};
use crate::time::Seconds;

/// Seconds between resynchronisations of the aggregation intervals.
pub const RESYNC_INTERVAL: Seconds = 600.0;
/// 10/12-cycle values per 150/180-cycle aggregate.
pub const WINDOWS_PER_AGGREGATE: usize = 15;

#[derive(Debug, Clone, Copy)]
struct HalfCycle {
    t_start: Seconds,
    ms: f64,
    weight: f64,
}

/// A 10/12-cycle window in progress.
#[derive(Debug, Clone, Copy)]
struct BasicWindow {
    t_start: Seconds,
    half_cycles: usize,
    sum_msw: f64,
    sum_w: f64,
    sum_ms: f64,
    /// Belongs to the current 150/180-cycle series (false for a window finishing after a
    /// resynchronisation).
    feeds_aggregate: bool,
}

impl BasicWindow {
    fn new(t_start: Seconds) -> Self {
        BasicWindow {
            t_start,
            half_cycles: 0,
            sum_msw: 0.0,
            sum_w: 0.0,
            sum_ms: 0.0,
            feeds_aggregate: true,
        }
    }

    fn add(&mut self, hc: &HalfCycle) {
        self.half_cycles += 1;
        self.sum_msw += hc.ms * hc.weight;
        self.sum_w += hc.weight;
        self.sum_ms += hc.ms;
    }

    fn rms(&self) -> f64 {
        weighted_rms(self.sum_msw, self.sum_w, self.sum_ms, self.half_cycles)
    }
}

/// √(Σ ms·w / Σ w), or the plain mean when the weights are degenerate.
fn weighted_rms(sum_msw: f64, sum_w: f64, sum_ms: f64, n: usize) -> f64 {
    if sum_w > 0.0 && sum_w.is_finite() {
        (sum_msw / sum_w).sqrt()
    } else if n > 0 {
        (sum_ms / n as f64).sqrt()
    } else {
        0.0
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct VeryShort {
    count: usize,
    sum_sq: f64,
    t_start: Seconds,
    flagged: bool,
}

#[derive(Debug, Default)]
struct ChannelAgg {
    fed: bool,
    prev: Option<HalfCycle>,
    current: Option<BasicWindow>,
    finishing: Option<BasicWindow>,
    very_short: VeryShort,
    next_resync: Seconds,
    last_t_end: Seconds,
}

impl ChannelAgg {
    /// Start of the oldest window still open (or the last half-cycle end).
    fn oldest_open(&self) -> Seconds {
        if !self.fed {
            return f64::NEG_INFINITY;
        }
        [self.finishing, self.current]
            .iter()
            .flatten()
            .map(|w| w.t_start)
            .fold(self.last_t_end, f64::min)
    }
}

/// Half-cycle mean squares → Urms(1/2), 10/12- and 150/180-cycle RMS, PQ events.
#[derive(Debug)]
pub struct Aggregator {
    cycles: usize,
    channels: Vec<ChannelAgg>,
    pq: PqDetector,
}

impl Aggregator {
    pub fn new(cfg: &MeasureConfig) -> Self {
        let n = cfg.channels.max(1);
        Aggregator {
            cycles: cycles_per_window(cfg.frequency),
            channels: (0..n).map(|_| ChannelAgg::default()).collect(),
            pq: PqDetector::new(&cfg.pq, cfg.nominal, n),
        }
    }

    /// Feed one half cycle of channel `ch` (weighted by its duration). Appends `UrmsHalf`,
    /// `Rms10`, `Rms150` and `Pq` events to `out`.
    pub fn push_half_cycle(
        &mut self,
        ch: usize,
        t_start: Seconds,
        t_end: Seconds,
        ms: f64,
        out: &mut Vec<MeasureEvent>,
    ) {
        let weight = t_end - t_start;
        if ch >= self.channels.len() {
            self.channels.resize_with(ch + 1, ChannelAgg::default);
        }
        let hc = HalfCycle {
            t_start,
            ms,
            weight: if weight.is_finite() {
                weight.max(0.0)
            } else {
                0.0
            },
        };
        let c = &mut self.channels[ch];
        let resync_slot = |t: Seconds| RESYNC_INTERVAL * ((t / RESYNC_INTERVAL).floor() + 1.0);
        if !c.fed {
            c.fed = true;
            c.next_resync = resync_slot(t_start);
        } else if t_start >= c.next_resync {
            c.next_resync = resync_slot(t_start);
            if let Some(mut w) = c.current.take() {
                w.feeds_aggregate = false;
                c.finishing = Some(w);
            }
            c.very_short = VeryShort::default();
        }
        c.last_t_end = t_end;

        if let Some(prev) = c.prev {
            let value = weighted_rms(
                prev.ms * prev.weight + hc.ms * hc.weight,
                prev.weight + hc.weight,
                prev.ms + hc.ms,
                2,
            );
            out.push(MeasureEvent::UrmsHalf {
                ch,
                t_start: prev.t_start,
                t_end,
                value,
            });
            self.pq.update(ch, t_end, value, out);
        }
        let c = &mut self.channels[ch];
        c.prev = Some(hc);

        if let Some(mut w) = c.finishing.take() {
            w.add(&hc);
            if w.half_cycles >= 2 * self.cycles {
                let flagged = self.pq.overlaps(w.t_start, t_end);
                out.push(MeasureEvent::Rms10 {
                    ch,
                    t_start: w.t_start,
                    t_end,
                    value: w.rms(),
                    flagged,
                });
            } else {
                c.finishing = Some(w);
            }
        }
        let w = c.current.get_or_insert_with(|| BasicWindow::new(t_start));
        w.add(&hc);
        if w.half_cycles >= 2 * self.cycles {
            let w = *w;
            c.current = None;
            let value = w.rms();
            let flagged = self.pq.overlaps(w.t_start, t_end);
            out.push(MeasureEvent::Rms10 {
                ch,
                t_start: w.t_start,
                t_end,
                value,
                flagged,
            });
            if w.feeds_aggregate {
                let vs = &mut c.very_short;
                if vs.count == 0 {
                    vs.t_start = w.t_start;
                    vs.flagged = false;
                    vs.sum_sq = 0.0;
                }
                vs.count += 1;
                vs.sum_sq += value * value;
                vs.flagged |= flagged;
                if vs.count == WINDOWS_PER_AGGREGATE {
                    let value = (vs.sum_sq / WINDOWS_PER_AGGREGATE as f64).sqrt();
                    out.push(MeasureEvent::Rms150 {
                        ch,
                        t_start: vs.t_start,
                        t_end,
                        value,
                        flagged: vs.flagged,
                    });
                    *vs = VeryShort::default();
                }
            }
            let oldest = self
                .channels
                .iter()
                .map(ChannelAgg::oldest_open)
                .fold(f64::INFINITY, f64::min);
            self.pq.prune(oldest);
        }
    }

    /// End of stream at `t`: close open PQ events (ending at `t`).
    pub fn finish(&mut self, t: Seconds, out: &mut Vec<MeasureEvent>) {
        self.pq.finish(t, out);
    }
}
