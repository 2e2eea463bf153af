//! Dip, swell and interruption detection on Urms(1/2) (IEC 61000-4-30, STANDARDS.md §4.3):
//! single-channel events per channel and the polyphase-aggregated event, with hysteresis.
//!
//! Thresholds are % of Udin. Every Urms(1/2) update of any channel re-evaluates that channel's
//! events and the polyphase events on each channel's latest value. An interruption on a
//! channel is also a dip on it; both are reported, as instruments do.

use std::collections::VecDeque;

use super::{MeasureEvent, PqEvent};
use crate::grid::Phase;
use crate::scenario::{PqEventKind, PqThresholds};
use crate::time::Seconds;

/// Closed polyphase events kept for flagging, at most.
const MAX_FLAG_INTERVALS: usize = 1024;

const KINDS: [PqEventKind; 3] = [
    PqEventKind::Dip,
    PqEventKind::Swell,
    PqEventKind::Interruption,
];

/// Start and end levels of one event kind, V.
#[derive(Debug, Clone, Copy)]
struct Rule {
    /// Below (dip, interruption) or above (swell) this starts an event.
    start: f64,
    /// At or above (dip, interruption) or at or below (swell) this ends it.
    end: f64,
    /// Swell: the event is on the high side.
    high: bool,
}

impl Rule {
    fn new(kind: PqEventKind, t: &PqThresholds, udin: f64) -> Rule {
        let v = |pct: f64| pct / 100.0 * udin;
        match kind {
            PqEventKind::Dip => Rule {
                start: v(t.dip),
                end: v(t.dip + t.hysteresis),
                high: false,
            },
            PqEventKind::Swell => Rule {
                start: v(t.swell),
                end: v(t.swell - t.hysteresis),
                high: true,
            },
            PqEventKind::Interruption => Rule {
                start: v(t.interruption),
                end: v(t.interruption + t.hysteresis),
                high: false,
            },
        }
    }

    fn beyond(&self, u: f64) -> bool {
        if self.high {
            u > self.start
        } else {
            u < self.start
        }
    }

    fn back(&self, u: f64) -> bool {
        if self.high {
            u <= self.end
        } else {
            u >= self.end
        }
    }

    fn worse(&self, a: f64, b: f64) -> f64 {
        if self.high {
            a.max(b)
        } else {
            a.min(b)
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Open {
    start: Seconds,
    extreme: f64,
}

/// The detector state for all channels.
#[derive(Debug)]
pub(crate) struct PqDetector {
    rules: [Rule; 3],
    /// Per channel, per kind.
    single: Vec<[Option<Open>; 3]>,
    latest: Vec<Option<f64>>,
    poly: [Option<Open>; 3],
    /// Closed polyphase events (start, end), oldest first.
    closed: VecDeque<(Seconds, Seconds)>,
}

impl PqDetector {
    pub(crate) fn new(thresholds: &PqThresholds, udin: f64, channels: usize) -> Self {
        PqDetector {
            rules: KINDS.map(|k| Rule::new(k, thresholds, udin)),
            single: vec![[None; 3]; channels],
            latest: vec![None; channels],
            poly: [None; 3],
            closed: VecDeque::new(),
        }
    }

    /// Heap bytes held by the per-channel state and the closed polyphase events.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.single.capacity() * size_of::<[Option<Open>; 3]>()
            + self.latest.capacity() * size_of::<Option<f64>>()
            + self.closed.capacity() * size_of::<(Seconds, Seconds)>()
    }

    fn ensure_channel(&mut self, ch: usize) {
        if ch >= self.latest.len() {
            self.latest.resize(ch + 1, None);
            self.single.resize(ch + 1, [None; 3]);
        }
    }

    /// A new Urms(1/2) value `u` of channel `ch`, available at `t`.
    pub(crate) fn update(&mut self, ch: usize, t: Seconds, u: f64, out: &mut Vec<MeasureEvent>) {
        self.ensure_channel(ch);
        self.latest[ch] = Some(u);
        let phase = Phase::from_index(ch);
        for (k, kind) in KINDS.into_iter().enumerate() {
            let rule = self.rules[k];
            let slot = &mut self.single[ch][k];
            match slot {
                Some(open) if rule.back(u) => {
                    out.push(MeasureEvent::Pq(PqEvent {
                        kind,
                        phase,
                        start: open.start,
                        end: t,
                        extreme: open.extreme,
                    }));
                    *slot = None;
                }
                Some(open) => open.extreme = rule.worse(open.extreme, u),
                None if rule.beyond(u) => {
                    *slot = Some(Open {
                        start: t,
                        extreme: u,
                    })
                }
                None => {}
            }
        }
        for (k, kind) in KINDS.into_iter().enumerate() {
            let rule = self.rules[k];
            let values = self.latest.iter().flatten();
            let (starts, ends) = if kind == PqEventKind::Interruption {
                // All channels below starts it; any channel back ends it.
                let mut vals = values.clone().peekable();
                let any = vals.peek().is_some();
                (
                    any && vals.all(|&v| rule.beyond(v)),
                    values.clone().any(|&v| rule.back(v)),
                )
            } else {
                // Any channel beyond starts it; all channels back end it.
                (
                    values.clone().any(|&v| rule.beyond(v)),
                    values.clone().all(|&v| rule.back(v)),
                )
            };
            match &mut self.poly[k] {
                Some(open) if ends => {
                    out.push(MeasureEvent::Pq(PqEvent {
                        kind,
                        phase: None,
                        start: open.start,
                        end: t,
                        extreme: open.extreme,
                    }));
                    self.closed.push_back((open.start, t));
                    if self.closed.len() > MAX_FLAG_INTERVALS {
                        self.closed.pop_front();
                    }
                    self.poly[k] = None;
                }
                Some(open) => open.extreme = rule.worse(open.extreme, u),
                None if starts => {
                    let first = if rule.high {
                        f64::NEG_INFINITY
                    } else {
                        f64::INFINITY
                    };
                    let extreme = values.fold(first, |e, &v| rule.worse(e, v));
                    self.poly[k] = Some(Open { start: t, extreme });
                }
                None => {}
            }
        }
    }

    /// Did any polyphase event overlap `t_start ..= t_end`?
    pub(crate) fn overlaps(&self, t_start: Seconds, t_end: Seconds) -> bool {
        self.poly.iter().flatten().any(|o| o.start <= t_end)
            || self.closed.iter().any(|&(s, e)| s <= t_end && e > t_start)
    }

    /// Forget closed polyphase events that ended before `t`.
    pub(crate) fn prune(&mut self, t: Seconds) {
        while self.closed.front().is_some_and(|&(_, e)| e < t) {
            self.closed.pop_front();
        }
    }

    /// Close every open event at `t`.
    pub(crate) fn finish(&mut self, t: Seconds, out: &mut Vec<MeasureEvent>) {
        for ch in 0..self.single.len() {
            for (k, kind) in KINDS.into_iter().enumerate() {
                if let Some(open) = self.single[ch][k].take() {
                    out.push(MeasureEvent::Pq(PqEvent {
                        kind,
                        phase: Phase::from_index(ch),
                        start: open.start,
                        end: t,
                        extreme: open.extreme,
                    }));
                }
            }
        }
        for (k, kind) in KINDS.into_iter().enumerate() {
            if let Some(open) = self.poly[k].take() {
                out.push(MeasureEvent::Pq(PqEvent {
                    kind,
                    phase: None,
                    start: open.start,
                    end: t,
                    extreme: open.extreme,
                }));
                self.closed.push_back((open.start, t));
            }
        }
    }
}
