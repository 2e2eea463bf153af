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

    /// Heap bytes held: the per-channel state and the PQ detector's (whose closed polyphase
    /// events are pruned as windows close, so this does not grow with grid time).
    pub fn heap_bytes(&self) -> usize {
        self.channels.capacity() * size_of::<ChannelAgg>() + self.pq.heap_bytes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::grid::Phase;
    use crate::measure::test_signal::{config, pq_events};
    use crate::measure::PqEvent;
    use crate::scenario::PqEventKind;

    const UDIN: f64 = 230.0;
    const HALF: f64 = 0.01;

    /// Feed half cycles whose RMS is `levels[k][ch]` pu, channels interleaved in time order.
    fn feed(levels: &[Vec<f64>], finish_at: Option<f64>) -> Vec<MeasureEvent> {
        let channels = levels[0].len();
        let mut agg = Aggregator::new(&config(UDIN, 50.0, 3200.0, channels));
        let mut out = Vec::new();
        for (k, lv) in levels.iter().enumerate() {
            for (ch, &u) in lv.iter().enumerate() {
                let t0 = k as f64 * HALF;
                agg.push_half_cycle(ch, t0, t0 + HALF, (u * UDIN).powi(2), &mut out);
            }
        }
        if let Some(t) = finish_at {
            agg.finish(t, &mut out);
        }
        out
    }

    fn steady(n: usize, lv: &[f64]) -> Vec<Vec<f64>> {
        vec![lv.to_vec(); n]
    }

    fn of(events: &[PqEvent], kind: PqEventKind, phase: Option<Phase>) -> Vec<PqEvent> {
        events
            .iter()
            .filter(|e| e.kind == kind && e.phase == phase)
            .cloned()
            .collect()
    }

    #[test]
    fn urms_half_is_the_duration_weighted_last_cycle() {
        let mut agg = Aggregator::new(&config(UDIN, 50.0, 3200.0, 1));
        let mut out = Vec::new();
        agg.push_half_cycle(0, 0.0, 0.01, 100.0, &mut out);
        assert!(out.is_empty());
        agg.push_half_cycle(0, 0.01, 0.03, 400.0, &mut out);
        let expected = ((100.0 * 0.01 + 400.0 * 0.02) / 0.03_f64).sqrt();
        assert_eq!(out.len(), 1);
        match out[0] {
            MeasureEvent::UrmsHalf {
                ch: 0,
                t_start,
                t_end,
                value,
            } => {
                assert_eq!((t_start, t_end), (0.0, 0.03));
                assert!((value - expected).abs() < 1e-12);
            }
            ref e => panic!("{e:?}"),
        }
    }

    #[test]
    fn hysteresis_gives_one_dip_for_a_value_oscillating_inside_the_band() {
        let oscillate = |high: f64| {
            let mut lv = steady(10, &[1.0]);
            for k in 0..60 {
                lv.push(vec![if (k / 3) % 2 == 0 { 0.895 } else { high }]);
            }
            lv.extend(steady(10, &[1.0]));
            pq_events(&feed(&lv, None))
        };
        let pq = oscillate(0.91);
        let dips = of(&pq, PqEventKind::Dip, Some(Phase::L1));
        assert_eq!(dips.len(), 1, "{pq:?}");
        assert!((dips[0].extreme - 0.895 * UDIN).abs() < 1e-9);
        // First value below 90 %: the first full cycle at 0.895 (half cycles 10 and 11).
        assert!((dips[0].start - 0.12).abs() < 1e-9, "{}", dips[0].start);
        // First value at or above 92 %: the cycle half back at 1.0 (√((0.91² + 1)/2) ≈ 0.956).
        assert!((dips[0].end - 0.71).abs() < 1e-9, "{}", dips[0].end);
        assert_eq!(of(&pq, PqEventKind::Dip, None).len(), 1);
        // Control: swinging past 92 % ends the dip every time.
        let many = of(&oscillate(0.95), PqEventKind::Dip, Some(Phase::L1)).len();
        assert_eq!(many, 10);
    }

    #[test]
    fn swell_ends_at_threshold_minus_hysteresis() {
        let mut lv = steady(4, &[1.0]);
        lv.extend(steady(6, &[1.12]));
        lv.extend(steady(6, &[1.09])); // inside the band: still a swell
        lv.extend(steady(6, &[1.08]));
        let pq = pq_events(&feed(&lv, None));
        let sw = of(&pq, PqEventKind::Swell, Some(Phase::L1));
        assert_eq!(sw.len(), 1, "{pq:?}");
        assert!((sw[0].extreme - 1.12 * UDIN).abs() < 1e-9);
        assert!(
            (sw[0].start - 0.06).abs() < 1e-9 && (sw[0].end - 0.18).abs() < 1e-9,
            "{:?}",
            sw[0]
        );
    }

    #[test]
    fn polyphase_dip_starts_on_any_channel_and_ends_when_all_recover() {
        let mut lv = steady(4, &[1.0, 1.0, 1.0]);
        lv.extend(steady(6, &[0.5, 1.0, 1.0]));
        lv.extend(steady(6, &[1.0, 0.7, 1.0]));
        lv.extend(steady(6, &[1.0, 1.0, 1.0]));
        let pq = pq_events(&feed(&lv, None));
        let poly = of(&pq, PqEventKind::Dip, None);
        assert_eq!(poly.len(), 1, "{pq:?}");
        assert!((poly[0].extreme - 0.5 * UDIN).abs() < 1e-9);
        // Starts with the cycle half in the dip (√((1 + 0.25)/2) ≈ 0.79), ends when L2 is back.
        assert!(
            (poly[0].start - 0.05).abs() < 1e-9 && (poly[0].end - 0.18).abs() < 1e-9,
            "{:?}",
            poly[0]
        );
        assert_eq!(of(&pq, PqEventKind::Dip, Some(Phase::L1)).len(), 1);
        assert_eq!(of(&pq, PqEventKind::Dip, Some(Phase::L2)).len(), 1);
        assert!(of(&pq, PqEventKind::Dip, Some(Phase::L3)).is_empty());
        assert!(of(&pq, PqEventKind::Interruption, None).is_empty());
    }

    #[test]
    fn polyphase_interruption_needs_all_channels_and_ends_on_any() {
        let mut lv = steady(4, &[1.0, 1.0, 1.0]);
        lv.extend(steady(6, &[0.05, 0.0, 1.0])); // two of three: no polyphase interruption
        lv.extend(steady(6, &[0.05, 0.0, 0.02])); // all three: interruption
        lv.extend(steady(6, &[0.05, 0.5, 0.02])); // L2 back above 12 %: ends
        lv.extend(steady(6, &[1.0, 1.0, 1.0]));
        let pq = pq_events(&feed(&lv, None));
        let int = of(&pq, PqEventKind::Interruption, None);
        assert_eq!(int.len(), 1, "{pq:?}");
        // L3's first value below 10 % is its first full cycle at 2 %; L2's first value back is
        // √((0 + 0.25)/2) ≈ 35 %.
        assert!(
            (int[0].start - 0.12).abs() < 1e-9 && (int[0].end - 0.17).abs() < 1e-9,
            "{:?}",
            int[0]
        );
        assert!(int[0].extreme < 0.03 * UDIN);
        // The polyphase dip spans everything; single-phase interruptions on each channel.
        let dip = of(&pq, PqEventKind::Dip, None);
        assert_eq!(dip.len(), 1);
        assert!(
            (dip[0].start - 0.05).abs() < 1e-9 && (dip[0].end - 0.24).abs() < 1e-9,
            "{:?}",
            dip[0]
        );
        for ph in Phase::ALL {
            assert_eq!(
                of(&pq, PqEventKind::Interruption, Some(ph)).len(),
                1,
                "{ph}"
            );
        }
    }

    #[test]
    fn finish_closes_open_events() {
        let mut lv = steady(4, &[1.0]);
        lv.extend(steady(6, &[0.5]));
        let pq = pq_events(&feed(&lv, Some(7.0)));
        assert_eq!(pq.len(), 2, "{pq:?}");
        assert!(pq
            .iter()
            .all(|e| e.end == 7.0 && e.kind == PqEventKind::Dip));
    }

    #[test]
    fn rms10_and_rms150_count_windows_and_flag_overlaps() {
        // 50 Hz: 20 half cycles per window, 15 windows per aggregate.
        let mut lv = steady(20 * 15, &[1.0]);
        lv[20 * 3 + 5] = vec![0.1];
        lv.extend(steady(20 * 15, &[1.0]));
        let out = feed(&lv, None);
        let rms10: Vec<_> = out
            .iter()
            .filter_map(|e| match *e {
                MeasureEvent::Rms10 {
                    t_start,
                    value,
                    flagged,
                    ..
                } => Some((t_start, value, flagged)),
                _ => None,
            })
            .collect();
        assert_eq!(rms10.len(), 30);
        for (i, &(t0, v, flagged)) in rms10.iter().enumerate() {
            assert!((t0 - i as f64 * 0.2).abs() < 1e-9);
            assert_eq!(flagged, i == 3, "window {i}");
            if i != 3 {
                assert!((v - UDIN).abs() < 1e-9);
            } else {
                let expected = ((19.0 + 0.01) / 20.0_f64).sqrt() * UDIN;
                assert!((v - expected).abs() < 1e-9);
            }
        }
        let rms150: Vec<_> = out
            .iter()
            .filter_map(|e| match *e {
                MeasureEvent::Rms150 {
                    t_start,
                    t_end,
                    flagged,
                    ..
                } => Some((t_start, t_end, flagged)),
                _ => None,
            })
            .collect();
        assert_eq!(rms150.len(), 2);
        assert!((rms150[0].1 - 3.0).abs() < 1e-9 && rms150[0].2);
        assert!((rms150[1].0 - 3.0).abs() < 1e-9 && !rms150[1].2);
    }
}
