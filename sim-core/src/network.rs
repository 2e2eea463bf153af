//! Sim mode's backhaul model: latency, jitter, loss with QoS-1 retries, outage windows.
//!
//! [`Link`] models one meter group's backhaul as MQTT QoS 1 sees it: every attempt may be lost,
//! a lost attempt is retried after the retransmission timeout, and a delivered attempt whose
//! PUBACK is lost is retried too, so the broker sees a duplicate. RF-loss windows take the link
//! down (meters buffer and flush on recovery); latency and loss windows add to the base values.

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

use crate::scenario::{LinkSpec, NetworkEvent, NetworkEventKind};
use crate::time::Seconds;

/// Attempts after which [`Link::transmit`] gives up on a message. With a loss probability p per
/// direction an attempt completes with probability (1 − p)²; at p = 0.9 the chance that 1000
/// attempts all fail is 0.99^1000 ≈ 4e-5 per message, and at p ≤ 0.5 it is below 1e-124.
pub const MAX_ATTEMPTS: u32 = 1000;

/// One group's modelled link. Deterministic for a seed.
#[derive(Debug, Clone)]
pub struct Link {
    spec: LinkSpec,
    windows: Vec<NetworkEvent>,
    rng: Pcg64,
    attempts: u64,
    deliveries: u64,
    messages: u64,
    abandoned: u64,
}

impl Link {
    /// `windows` = the scenario's network events that apply to this link's group.
    pub fn new(spec: LinkSpec, windows: Vec<NetworkEvent>, seed: u64) -> Self {
        Link {
            spec,
            windows,
            rng: Pcg64::seed_from_u64(seed),
            attempts: 0,
            deliveries: 0,
            messages: 0,
            abandoned: 0,
        }
    }

    pub fn spec(&self) -> &LinkSpec {
        &self.spec
    }

    fn active(&self, t: Seconds) -> impl Iterator<Item = &NetworkEventKind> {
        self.windows
            .iter()
            .filter(move |w| w.at <= t && t < w.at + w.duration)
            .map(|w| &w.kind)
    }

    /// False inside any RF-loss window `[at, at + duration)`.
    pub fn is_up(&self, t: Seconds) -> bool {
        !self
            .active(t)
            .any(|k| matches!(k, NetworkEventKind::RfLoss))
    }

    /// Earliest time ≥ `t` at which the link is up (overlapping and adjacent windows chain).
    pub fn next_up(&self, t: Seconds) -> Seconds {
        let mut t = t;
        // Each pass moves t to the end of a window that contained it, which can then never
        // contain t again: at most one pass per window.
        for _ in 0..=self.windows.len() {
            let end = self
                .windows
                .iter()
                .filter(|w| matches!(w.kind, NetworkEventKind::RfLoss))
                .filter(|w| w.at <= t && t < w.at + w.duration)
                .map(|w| w.at + w.duration)
                .fold(None, |m: Option<Seconds>, e| {
                    Some(m.map_or(e, |m| m.max(e)))
                });
            match end {
                Some(end) => t = end,
                None => break,
            }
        }
        t
    }

    /// Loss probability of one attempt at `t`: the base plus active loss windows, capped at 1.
    fn loss_at(&self, t: Seconds) -> f64 {
        let extra: f64 = self
            .active(t)
            .map(|k| match k {
                NetworkEventKind::Loss { probability } => *probability,
                _ => 0.0,
            })
            .sum();
        (self.spec.loss + extra).clamp(0.0, 1.0)
    }

    fn uniform(&mut self, width: Seconds) -> Seconds {
        // No draw for a zero width keeps jitter-free links exact and their RNG stream short.
        if width > 0.0 {
            self.rng.gen::<f64>() * width
        } else {
            0.0
        }
    }

    /// One-way delay of an attempt made at `t`.
    fn delay(&mut self, t: Seconds) -> Seconds {
        let (extra, extra_jitter) = self
            .active(t)
            .map(|k| match k {
                NetworkEventKind::Latency { extra, jitter } => (*extra, *jitter),
                _ => (0.0, 0.0),
            })
            .fold((0.0, 0.0), |(e, j), (e2, j2)| (e + e2, j + j2));
        let jitter = self.uniform(self.spec.jitter) + self.uniform(extra_jitter);
        self.spec.latency + extra + jitter
    }

    /// Hand one message to the link at `t` (link up; if it is down the first attempt waits for
    /// [`Link::next_up`]). Appends its delivery time(s) to `out`, in attempt order: MQTT QoS 1
    /// — each attempt is lost with probability `loss` (+ loss windows active at the attempt
    /// time); a lost attempt is retried after `spec.retry` (at `next_up` if the link is down
    /// then); a delivered attempt whose PUBACK is lost (same probability) is retried too and
    /// delivered again (a duplicate). Delivery = attempt + latency + extra latency of active
    /// latency windows + uniform jitter. Gives up after [`MAX_ATTEMPTS`] attempts (counted in
    /// [`Link::abandoned`]); a message may then have been delivered zero times.
    pub fn transmit(&mut self, t: Seconds, out: &mut Vec<Seconds>) {
        self.messages += 1;
        let retry = self.spec.retry.max(0.0);
        let mut attempt = self.next_up(t);
        for _ in 0..MAX_ATTEMPTS {
            self.attempts += 1;
            let p = self.loss_at(attempt);
            if self.rng.gen::<f64>() >= p {
                let delivered = attempt + self.delay(attempt);
                out.push(delivered);
                self.deliveries += 1;
                if self.rng.gen::<f64>() >= p {
                    return; // PUBACK arrived
                }
            }
            attempt = self.next_up(attempt + retry);
        }
        self.abandoned += 1;
    }

    /// Delivery time of one chunk of a reliable byte stream (TCP) handed to the link at `t`:
    /// the same attempts as [`Link::transmit`] — lost with the loss probability at the attempt
    /// time, retried after `spec.retry`, waiting for [`Link::next_up`] while the link is down —
    /// but the first attempt that gets through ends it: the receiver drops a retransmitted
    /// duplicate, so a lost acknowledgement delays nothing. `None` after [`MAX_ATTEMPTS`] lost
    /// attempts (counted in [`Link::abandoned`]).
    pub fn stream_delivery(&mut self, t: Seconds) -> Option<Seconds> {
        self.messages += 1;
        let retry = self.spec.retry.max(0.0);
        let mut attempt = self.next_up(t);
        for _ in 0..MAX_ATTEMPTS {
            self.attempts += 1;
            if self.rng.gen::<f64>() >= self.loss_at(attempt) {
                self.deliveries += 1;
                return Some(attempt + self.delay(attempt));
            }
            attempt = self.next_up(attempt + retry);
        }
        self.abandoned += 1;
        None
    }

    /// RF-loss windows, merged where they overlap or touch, in time order.
    pub fn outages(&self) -> Vec<(Seconds, Seconds)> {
        let mut w: Vec<(Seconds, Seconds)> = self
            .windows
            .iter()
            .filter(|w| matches!(w.kind, NetworkEventKind::RfLoss) && w.duration > 0.0)
            .map(|w| (w.at, w.at + w.duration))
            .collect();
        w.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let mut merged: Vec<(Seconds, Seconds)> = Vec::with_capacity(w.len());
        for (s, e) in w {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        merged
    }

    /// Transmission attempts made so far.
    pub fn attempts(&self) -> u64 {
        self.attempts
    }

    /// Deliveries so far (duplicates included).
    pub fn deliveries(&self) -> u64 {
        self.deliveries
    }

    /// Messages handed to [`Link::transmit`].
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Messages given up after [`MAX_ATTEMPTS`].
    pub fn abandoned(&self) -> u64 {
        self.abandoned
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn window(at: f64, duration: f64, kind: NetworkEventKind) -> NetworkEvent {
        NetworkEvent {
            at,
            duration,
            groups: Vec::new(),
            kind,
        }
    }

    fn spec(latency: f64, jitter: f64, loss: f64, retry: f64) -> LinkSpec {
        LinkSpec {
            latency,
            jitter,
            loss,
            retry,
        }
    }

    #[test]
    fn exact_delivery_without_loss() {
        let mut link = Link::new(spec(0.005, 0.0, 0.0, 1.0), Vec::new(), 1);
        let mut out = Vec::new();
        for t in [0.0, 1.0, 2.5] {
            link.transmit(t, &mut out);
        }
        assert_eq!(out, vec![0.005, 1.005, 2.505]);
        assert_eq!(
            (link.attempts(), link.deliveries(), link.messages()),
            (3, 3, 3)
        );
    }

    #[test]
    fn latency_windows_add_delay_and_bounded_jitter() {
        let lat = window(
            10.0,
            5.0,
            NetworkEventKind::Latency {
                extra: 0.2,
                jitter: 0.0,
            },
        );
        let mut link = Link::new(spec(0.01, 0.0, 0.0, 1.0), vec![lat], 1);
        let mut out = Vec::new();
        link.transmit(9.0, &mut out);
        link.transmit(10.0, &mut out);
        link.transmit(14.99, &mut out);
        link.transmit(15.0, &mut out);
        let delays: Vec<f64> = out
            .iter()
            .zip([9.0, 10.0, 14.99, 15.0])
            .map(|(d, t)| d - t)
            .collect();
        for (d, want) in delays.iter().zip([0.01, 0.21, 0.21, 0.01]) {
            assert!((d - want).abs() < 1e-12, "{delays:?}");
        }

        let jit = window(
            0.0,
            100.0,
            NetworkEventKind::Latency {
                extra: 0.0,
                jitter: 0.05,
            },
        );
        let mut link = Link::new(spec(0.01, 0.02, 0.0, 1.0), vec![jit], 3);
        let mut out = Vec::new();
        for k in 0..2000 {
            link.transmit(f64::from(k) * 0.01, &mut out);
        }
        let delays: Vec<f64> = out
            .iter()
            .enumerate()
            .map(|(k, d)| d - k as f64 * 0.01)
            .collect();
        let (lo, hi) = delays
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &d| (l.min(d), h.max(d)));
        let mean = delays.iter().sum::<f64>() / delays.len() as f64;
        assert!(lo >= 0.01 - 1e-12 && hi < 0.08, "{lo} {hi}");
        // Sum of U(0, 0.02) and U(0, 0.05): mean 0.035 above the latency.
        assert!((mean - 0.045).abs() < 0.002, "mean {mean}");
        assert!(hi > 0.07 && lo < 0.015, "jitter spans its range: {lo} {hi}");
    }

    #[test]
    fn qos1_retry_statistics_with_loss() {
        let p = 0.3;
        let mut link = Link::new(spec(0.005, 0.0, p, 1.0), Vec::new(), 42);
        let n = 10_000;
        let mut per_message = Vec::with_capacity(n);
        let mut out = Vec::new();
        for k in 0..n {
            out.clear();
            let t = k as f64;
            link.transmit(t, &mut out);
            // Every message arrives at least once, each delivery on the retry grid.
            assert!(!out.is_empty(), "message {k} never delivered");
            for d in &out {
                let r = d - t - 0.005;
                assert!(
                    (r - r.round()).abs() < 1e-9 && r >= -1e-9,
                    "delivery {d} of message at {t}"
                );
            }
            per_message.push(out.len());
        }
        let attempts = link.attempts() as f64 / n as f64;
        let deliveries = link.deliveries() as f64 / n as f64;
        // An attempt completes (publish and PUBACK through) with q = (1 − p)² = 0.49: attempts
        // are geometric with mean 1/q = 2.0408 (std of the mean 0.0146); deliveries per message
        // average (1 − p)/q = 1/(1 − p) = 1.4286 (std of the mean ≈ 0.007).
        assert!(
            (attempts - 1.0 / 0.49).abs() < 0.06,
            "mean attempts {attempts}"
        );
        assert!(
            (deliveries - 1.0 / 0.7).abs() < 0.03,
            "mean deliveries {deliveries}"
        );
        let dup_free = per_message.iter().filter(|&&c| c == 1).count() as f64 / n as f64;
        // Exactly one delivery: the first delivered attempt's PUBACK arrives: P = 1 − p = 0.7.
        assert!(
            (dup_free - 0.7).abs() < 0.02,
            "single-delivery share {dup_free}"
        );
        assert_eq!(link.abandoned(), 0);
    }

    #[test]
    fn outage_windows() {
        let windows = vec![
            window(10.0, 5.0, NetworkEventKind::RfLoss),
            window(15.0, 2.0, NetworkEventKind::RfLoss), // adjacent
            window(16.0, 4.0, NetworkEventKind::RfLoss), // overlapping
            window(30.0, 1.0, NetworkEventKind::RfLoss),
            window(25.0, 1.0, NetworkEventKind::Loss { probability: 0.5 }),
        ];
        let mut link = Link::new(spec(0.005, 0.0, 0.0, 1.0), windows, 1);
        assert!(link.is_up(9.999));
        assert!(!link.is_up(10.0));
        assert!(!link.is_up(19.999));
        assert!(link.is_up(20.0));
        assert!(link.is_up(25.5), "a loss window is not an outage");
        assert_eq!(link.next_up(5.0), 5.0);
        assert_eq!(link.next_up(10.0), 20.0);
        assert_eq!(link.next_up(30.5), 31.0);
        assert_eq!(link.outages(), vec![(10.0, 20.0), (30.0, 31.0)]);
        // A message handed over during an outage waits for the link.
        let mut out = Vec::new();
        link.transmit(12.0, &mut out);
        assert_eq!(out, vec![20.005]);
    }

    #[test]
    fn retries_wait_for_the_link_to_come_back() {
        // Total loss until t = 3 (loss window), then an outage until 10: the retries at 1, 2
        // are lost, 3 falls in the outage, so the first possible attempt is at 10.
        let windows = vec![
            window(0.0, 3.0, NetworkEventKind::Loss { probability: 1.0 }),
            window(3.0, 7.0, NetworkEventKind::RfLoss),
        ];
        let mut link = Link::new(spec(0.1, 0.0, 0.0, 1.0), windows, 9);
        let mut out = Vec::new();
        link.transmit(0.0, &mut out);
        assert_eq!(out, vec![10.1]);
        assert_eq!(link.attempts(), 4);
    }

    #[test]
    fn total_loss_gives_up_after_max_attempts() {
        let mut link = Link::new(spec(0.0, 0.0, 1.0, 1.0), Vec::new(), 1);
        let mut out = Vec::new();
        link.transmit(0.0, &mut out);
        assert!(out.is_empty());
        assert_eq!(link.attempts(), u64::from(MAX_ATTEMPTS));
        assert_eq!(link.abandoned(), 1);
    }

    #[test]
    fn stream_delivery_retries_lost_chunks_without_duplicates() {
        // No loss: the latency exactly, like transmit.
        let mut link = Link::new(spec(0.04, 0.0, 0.0, 1.0), Vec::new(), 1);
        assert_eq!(link.stream_delivery(2.0), Some(2.04));
        // Loss p: attempts are geometric with mean 1/(1 − p) (no acknowledgement draw), each
        // delivery on the retry grid after the hand-over.
        let p = 0.3;
        let mut link = Link::new(spec(0.005, 0.0, p, 0.25), Vec::new(), 5);
        let n: u32 = 10_000;
        let mut retried = 0u32;
        for k in 0..n {
            let t = f64::from(k);
            let d = link.stream_delivery(t).unwrap();
            let r = (d - t - 0.005) / 0.25;
            assert!(
                (r - r.round()).abs() < 1e-9 && r > -1e-9,
                "delivery {d} of {t}"
            );
            if r.round() >= 1.0 {
                retried += 1;
            }
        }
        assert_eq!(link.deliveries(), u64::from(n));
        let attempts = link.attempts() as f64 / f64::from(n);
        // Mean 1/0.7 = 1.4286, std of the mean sqrt(p)/(1 − p)/sqrt(n) ≈ 0.008.
        assert!(
            (attempts - 1.0 / 0.7).abs() < 0.03,
            "mean attempts {attempts}"
        );
        let share = f64::from(retried) / f64::from(n);
        assert!((share - p).abs() < 0.02, "retried share {share}");
        // Down at hand-over or at a retry: waits for the link; total loss gives up.
        let windows = vec![
            window(0.0, 3.0, NetworkEventKind::Loss { probability: 1.0 }),
            window(3.0, 7.0, NetworkEventKind::RfLoss),
        ];
        let mut link = Link::new(spec(0.1, 0.0, 0.0, 1.0), windows, 9);
        assert_eq!(link.stream_delivery(0.0), Some(10.1));
        assert_eq!(link.stream_delivery(5.0), Some(10.1));
        let mut link = Link::new(spec(0.0, 0.0, 1.0, 1.0), Vec::new(), 1);
        assert_eq!(link.stream_delivery(0.0), None);
        assert_eq!(link.abandoned(), 1);
    }

    #[test]
    fn deterministic_for_a_seed() {
        let run = |seed| {
            let mut link = Link::new(spec(0.01, 0.02, 0.2, 0.5), Vec::new(), seed);
            let mut out = Vec::new();
            for k in 0..500 {
                link.transmit(f64::from(k) * 0.1, &mut out);
            }
            out
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
    }
}
