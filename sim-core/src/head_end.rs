//! The pure head-end: de-duplication by (meter, seq), alarms with source and receive times.
//!
//! Sans-io like the meter: messages and the receive time are pushed in, alarms are read out.
//! Live mode's head-end crate wraps the same logic around real sockets.

use std::collections::BTreeMap;

use crate::grid::Phase;
use crate::meter::{Message, Payload};
use crate::scenario::{EventCode, HeadEndSpec};
use crate::time::Seconds;

/// What an alarm is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmKind {
    Trip(EventCode),
    Clear(EventCode),
    /// The meter's ring dropped `dropped` more messages since the last reading seen.
    BufferOverflow {
        dropped: u64,
    },
    /// Nothing new from the meter for longer than `stale_after`.
    Stale,
    /// The meter stopped answering (polls time out or connections fail); raised once per
    /// episode, re-armed when it answers again.
    Unreachable,
    /// The encoding handshake found the meter's registers in another encoding than expected
    /// (word order, int16 versus float32): its readings are not stored.
    EncodingMismatch,
}

/// One alarm, with the meter's source time and the head-end's receive time.
#[derive(Debug, Clone, PartialEq)]
pub struct Alarm {
    pub meter: u32,
    /// The message that raised it (`None` for `Stale`).
    pub seq: Option<u64>,
    pub kind: AlarmKind,
    pub phase: Option<Phase>,
    /// Source timestamp of the message (for `Stale`: the meter's newest source timestamp).
    pub source_time: Seconds,
    pub receive_time: Seconds,
}

/// The set of sequence numbers received from one meter: everything below `below` plus disjoint
/// half-open ranges above it. Memory grows with the number of gaps (reordering in flight,
/// ring-overflow holes), not with the number of messages.
#[derive(Debug, Clone, Default)]
struct SeqSet {
    /// All seqs < `below` were received.
    below: u64,
    /// start → end (exclusive) of received runs above `below`, disjoint, not touching.
    runs: BTreeMap<u64, u64>,
}

impl SeqSet {
    fn contains(&self, seq: u64) -> bool {
        seq < self.below
            || self
                .runs
                .range(..=seq)
                .next_back()
                .is_some_and(|(_, &end)| seq < end)
    }

    /// Insert `seq`; false if it was already there.
    fn insert(&mut self, seq: u64) -> bool {
        if self.contains(seq) {
            return false;
        }
        // Merge with the run ending at seq (or `below`) and the run starting at seq + 1.
        let right_end = seq.checked_add(1).and_then(|next| self.runs.remove(&next));
        let end = right_end.unwrap_or(seq.saturating_add(1));
        if seq == self.below {
            self.below = end;
            return true;
        }
        let left = self.runs.range(..seq).next_back().map(|(&s, &e)| (s, e));
        match left {
            Some((start, left_end)) if left_end == seq => {
                self.runs.insert(start, end);
            }
            _ => {
                self.runs.insert(seq, end);
            }
        }
        true
    }

    /// How many of `0..n` were received.
    fn count_below(&self, n: u64) -> u64 {
        let mut count = self.below.min(n);
        for (&s, &e) in self.runs.range(..n) {
            count += e.min(n) - s;
        }
        count
    }

    fn gaps(&self) -> usize {
        self.runs.len()
    }
}

#[derive(Debug, Clone, Default)]
struct MeterState {
    seen: SeqSet,
    /// Newest source timestamp of any message (or when the head-end started expecting it).
    newest_source: Seconds,
    last_overflow: u64,
    latest_reading: Option<(Seconds, [f32; 3])>,
    /// A `Stale` alarm was raised and no fresh message has arrived since.
    stale: bool,
    /// An `Unreachable` alarm was raised and the meter has not answered since.
    unreachable: bool,
    /// An `EncodingMismatch` alarm was raised for the meter.
    mismatched: bool,
}

/// `meter`'s state, created on first sight (newest source time: none yet).
fn state_of(meters: &mut BTreeMap<u32, MeterState>, meter: u32) -> &mut MeterState {
    meters.entry(meter).or_insert_with(|| MeterState {
        newest_source: f64::NEG_INFINITY,
        ..MeterState::default()
    })
}

/// The pure head-end: de-duplication by (meter, seq) and alarms.
#[derive(Debug, Clone)]
pub struct HeadEnd {
    spec: HeadEndSpec,
    meters: BTreeMap<u32, MeterState>,
    alarms: Vec<Alarm>,
    duplicates: u64,
    unique: u64,
}

impl HeadEnd {
    pub fn new(spec: HeadEndSpec) -> Self {
        HeadEnd {
            spec,
            meters: BTreeMap::new(),
            alarms: Vec::new(),
            duplicates: 0,
            unique: 0,
        }
    }

    /// Start expecting `meter` as of `t`, so that it goes stale even if it never reports.
    /// Meters are otherwise known from their first message.
    pub fn expect_meter(&mut self, meter: u32, t: Seconds) {
        self.meters.entry(meter).or_insert_with(|| MeterState {
            newest_source: t,
            ..MeterState::default()
        });
    }

    /// Ingest a message received at `now`. De-duplicates by (meter, seq); returns true when the
    /// message was new. Events raise Trip/Clear alarms (a duplicate raises nothing). A reading
    /// whose `overflow` count exceeds the last one seen from that meter raises
    /// `BufferOverflow { dropped: increase }`. Out-of-order arrival is fine.
    pub fn receive(&mut self, now: Seconds, msg: &Message) -> bool {
        let st = state_of(&mut self.meters, msg.meter);
        if !st.seen.insert(msg.seq) {
            self.duplicates += 1;
            return false;
        }
        self.unique += 1;
        if msg.source_time > st.newest_source {
            st.newest_source = msg.source_time;
        }
        if st.newest_source >= now - self.spec.stale_after {
            st.stale = false;
        }
        let alarm = |kind, phase| Alarm {
            meter: msg.meter,
            seq: Some(msg.seq),
            kind,
            phase,
            source_time: msg.source_time,
            receive_time: now,
        };
        match &msg.payload {
            Payload::Event(ev) => {
                let kind = if ev.code.is_trip() {
                    AlarmKind::Trip(ev.code)
                } else {
                    AlarmKind::Clear(ev.code)
                };
                self.alarms.push(alarm(kind, Some(ev.phase)));
            }
            Payload::Reading { volts, overflow } => {
                if *overflow > st.last_overflow {
                    let dropped = overflow - st.last_overflow;
                    st.last_overflow = *overflow;
                    self.alarms
                        .push(alarm(AlarmKind::BufferOverflow { dropped }, None));
                }
                if st.latest_reading.is_none_or(|(t, _)| msg.source_time >= t) {
                    st.latest_reading = Some((msg.source_time, *volts));
                }
            }
        }
        true
    }

    /// Raise `Stale` for meters whose newest source timestamp is older than now − stale_after,
    /// once per staleness episode; a fresh message (or a later check that finds the meter
    /// fresh) re-arms it.
    pub fn check_stale(&mut self, now: Seconds) {
        let limit = now - self.spec.stale_after;
        for (&meter, st) in &mut self.meters {
            let is_stale = st.newest_source < limit;
            if is_stale && !st.stale {
                st.stale = true;
                self.alarms.push(Alarm {
                    meter,
                    seq: None,
                    kind: AlarmKind::Stale,
                    phase: None,
                    source_time: st.newest_source,
                    receive_time: now,
                });
            } else if !is_stale {
                st.stale = false;
            }
        }
    }

    /// Every alarm so far, in the order raised (less those taken by [`HeadEnd::drain_alarms`]).
    pub fn alarms(&self) -> &[Alarm] {
        &self.alarms
    }

    /// Take the alarms raised so far (a live head-end publishes and stores them as they come).
    pub fn drain_alarms(&mut self) -> std::vec::Drain<'_, Alarm> {
        self.alarms.drain(..)
    }

    /// Mark (meter, seq) as already received without raising anything: a restarted head-end
    /// restores what its durable store says it had handled, so a redelivery is a duplicate.
    /// `source_time` is the message's source timestamp: the meter is as fresh as that (so a
    /// restarted head-end does not call every restored meter stale at once). Returns false if
    /// it was already marked.
    pub fn restore_seen(&mut self, meter: u32, seq: u64, source_time: Seconds) -> bool {
        let st = state_of(&mut self.meters, meter);
        if source_time > st.newest_source {
            st.newest_source = source_time;
        }
        st.seen.insert(seq)
    }

    /// Restore the highest buffer-overflow count seen from `meter` (from stored alarms), so a
    /// restarted head-end raises only increases beyond it.
    pub fn restore_overflow(&mut self, meter: u32, overflow: u64) {
        let st = state_of(&mut self.meters, meter);
        st.last_overflow = st.last_overflow.max(overflow);
    }

    /// The highest overflow count seen from `meter`.
    pub fn overflow_seen(&self, meter: u32) -> u64 {
        self.meters.get(&meter).map_or(0, |st| st.last_overflow)
    }

    /// The meter did not answer at `now` (a poll timed out after its retries, or it refused the
    /// connection). Raises `Unreachable` once per episode; returns whether it did.
    pub fn unreachable(&mut self, meter: u32, now: Seconds) -> bool {
        let st = state_of(&mut self.meters, meter);
        if st.unreachable {
            return false;
        }
        st.unreachable = true;
        let source_time = st.newest_source;
        self.alarms.push(Alarm {
            meter,
            seq: None,
            kind: AlarmKind::Unreachable,
            phase: None,
            source_time,
            receive_time: now,
        });
        true
    }

    /// A restarted head-end resumes `meter` at `now`: its stale clock starts no earlier than the
    /// restart (it has not been silent for the time the head-end was down, as far as anyone
    /// knows), and a `Stale` or `Unreachable` episode the store says was open stays open, so it
    /// is not raised again. `stale`/`unreachable`: the meter's last stored episode alarm.
    pub fn resume(&mut self, meter: u32, now: Seconds, stale: bool, unreachable: bool) {
        let st = state_of(&mut self.meters, meter);
        st.stale = stale;
        st.unreachable = unreachable;
        if !stale && st.newest_source < now {
            st.newest_source = now;
        }
    }

    /// The meter answered again: a later `unreachable` raises a new alarm.
    pub fn reachable(&mut self, meter: u32) {
        if let Some(st) = self.meters.get_mut(&meter) {
            st.unreachable = false;
        }
    }

    /// The encoding handshake failed for `meter` at `now`: raises `EncodingMismatch` once per
    /// meter; returns whether it did.
    pub fn encoding_mismatch(&mut self, meter: u32, now: Seconds) -> bool {
        let st = state_of(&mut self.meters, meter);
        if st.mismatched {
            return false;
        }
        st.mismatched = true;
        let source_time = st.newest_source;
        self.alarms.push(Alarm {
            meter,
            seq: None,
            kind: AlarmKind::EncodingMismatch,
            phase: None,
            source_time,
            receive_time: now,
        });
        true
    }

    /// Whether the encoding handshake failed for `meter`.
    pub fn is_mismatched(&self, meter: u32) -> bool {
        self.meters.get(&meter).is_some_and(|st| st.mismatched)
    }

    /// Record a polled reading (no sequence number: Modbus has none) with its source time; it
    /// freshens the meter for stale detection. Refused (false) for a meter whose encoding
    /// handshake failed, so skewed values are never stored.
    pub fn polled_reading(
        &mut self,
        meter: u32,
        source_time: Seconds,
        volts: [f32; 3],
        now: Seconds,
    ) -> bool {
        let stale_after = self.spec.stale_after;
        let st = state_of(&mut self.meters, meter);
        if st.mismatched {
            return false;
        }
        st.unreachable = false;
        if source_time > st.newest_source {
            st.newest_source = source_time;
        }
        if st.newest_source >= now - stale_after {
            st.stale = false;
        }
        if st.latest_reading.is_none_or(|(t, _)| source_time >= t) {
            st.latest_reading = Some((source_time, volts));
        }
        true
    }

    /// Messages received again after their first copy.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Distinct (meter, seq) received.
    pub fn unique(&self) -> u64 {
        self.unique
    }

    /// How many of seqs `0..produced` of `meter` never arrived.
    pub fn missing(&self, meter: u32, produced: u64) -> u64 {
        produced
            - self
                .meters
                .get(&meter)
                .map_or(0, |st| st.seen.count_below(produced))
    }

    /// Newest reading (by source time) of `meter`.
    pub fn latest_reading(&self, meter: u32) -> Option<(Seconds, [f32; 3])> {
        self.meters.get(&meter).and_then(|st| st.latest_reading)
    }

    /// Gaps in `meter`'s received sequence numbers (the size of the de-duplication memory).
    pub fn seq_gaps(&self, meter: u32) -> usize {
        self.meters.get(&meter).map_or(0, |st| st.seen.gaps())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::meter::MeterEvent;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn reading(meter: u32, seq: u64, t: f64, overflow: u64) -> Message {
        Message {
            meter,
            seq,
            source_time: t,
            payload: Payload::Reading {
                volts: [230.0, 231.0, 0.0],
                overflow,
            },
        }
    }

    fn event(meter: u32, seq: u64, t: f64, code: EventCode) -> Message {
        let ev = MeterEvent {
            code,
            phase: Phase::L2,
            value: 180.0,
            limit: 210.0,
        };
        Message {
            meter,
            seq,
            source_time: t,
            payload: Payload::Event(ev),
        }
    }

    #[test]
    fn dedupe_with_duplicates_and_reordering() {
        let mut he = HeadEnd::new(HeadEndSpec::default());
        let order = [0_u64, 2, 1, 2, 5, 4, 0, 3, 6, 6, 1];
        let fresh: Vec<bool> = order
            .iter()
            .map(|&s| he.receive(10.0, &reading(1, s, s as f64, 0)))
            .collect();
        assert_eq!(
            fresh,
            vec![true, true, true, false, true, true, false, true, true, false, false]
        );
        assert_eq!(he.unique(), 7);
        assert_eq!(he.duplicates(), 4);
        assert_eq!(he.missing(1, 7), 0);
        assert_eq!(he.missing(1, 9), 2);
        assert_eq!(
            he.seq_gaps(1),
            0,
            "contiguous 0..7 needs no out-of-order memory"
        );
        // Same seq from another meter is not a duplicate.
        assert!(he.receive(10.0, &reading(2, 0, 0.0, 0)));
        assert_eq!(he.missing(3, 5), 5, "unknown meter: everything missing");
    }

    #[test]
    fn missing_counts_with_holes() {
        let mut he = HeadEnd::new(HeadEndSpec::default());
        // 0..10, then 16..30 (6 dropped by overflow), 33, 35.
        for s in (0..10).chain(16..30).chain([35, 33]) {
            he.receive(1.0, &reading(4, s, 0.0, 0));
        }
        assert_eq!(he.missing(4, 10), 0);
        assert_eq!(he.missing(4, 16), 6);
        assert_eq!(he.missing(4, 20), 6);
        assert_eq!(he.missing(4, 36), 6 + 3 + 1);
        assert_eq!(he.missing(4, 40), 6 + 3 + 1 + 4);
        assert_eq!(he.seq_gaps(4), 3);
        // Filling 34 joins 33..36 into one run.
        he.receive(1.0, &reading(4, 34, 0.0, 0));
        assert_eq!(he.seq_gaps(4), 2);
        assert_eq!(he.missing(4, 36), 6 + 3);
    }

    #[test]
    fn events_raise_alarms_once() {
        let mut he = HeadEnd::new(HeadEndSpec::default());
        assert!(he.receive(5.2, &event(3, 7, 5.0, EventCode::UvTrip)));
        assert!(!he.receive(6.2, &event(3, 7, 5.0, EventCode::UvTrip)));
        assert!(he.receive(9.0, &event(3, 8, 8.5, EventCode::UvClear)));
        let kinds: Vec<AlarmKind> = he.alarms().iter().map(|a| a.kind).collect();
        assert_eq!(
            kinds,
            vec![
                AlarmKind::Trip(EventCode::UvTrip),
                AlarmKind::Clear(EventCode::UvClear)
            ]
        );
        let a = &he.alarms()[0];
        assert_eq!((a.meter, a.seq, a.phase), (3, Some(7), Some(Phase::L2)));
        assert_eq!((a.source_time, a.receive_time), (5.0, 5.2));
    }

    #[test]
    fn overflow_alarm_on_increase_only() {
        let mut he = HeadEnd::new(HeadEndSpec::default());
        he.receive(1.0, &reading(1, 0, 1.0, 0));
        he.receive(2.0, &reading(1, 7, 7.0, 6));
        he.receive(2.0, &reading(1, 8, 8.0, 6));
        // An older reading with a smaller count, arriving late, raises nothing.
        he.receive(2.0, &reading(1, 1, 2.0, 0));
        he.receive(3.0, &reading(1, 20, 20.0, 10));
        he.receive(3.0, &reading(1, 20, 20.0, 10)); // duplicate
        let dropped: Vec<AlarmKind> = he.alarms().iter().map(|a| a.kind).collect();
        assert_eq!(
            dropped,
            vec![
                AlarmKind::BufferOverflow { dropped: 6 },
                AlarmKind::BufferOverflow { dropped: 4 }
            ]
        );
        assert_eq!(he.alarms()[1].seq, Some(20));
        // The newest reading by source time, not by arrival.
        assert_eq!(he.latest_reading(1), Some((20.0, [230.0, 231.0, 0.0])));
        assert_eq!(he.latest_reading(9), None);
    }

    #[test]
    fn stale_once_per_episode() {
        let mut he = HeadEnd::new(HeadEndSpec { stale_after: 10.0 });
        he.expect_meter(2, 0.0); // never reports
        he.receive(1.0, &reading(1, 0, 1.0, 0));
        he.check_stale(9.5);
        assert!(he.alarms().is_empty());
        he.check_stale(11.5); // meter 1 (newest 1.0) and meter 2 (expected since 0.0)
        he.check_stale(20.0);
        let stale: Vec<(u32, f64)> = he
            .alarms()
            .iter()
            .map(|a| (a.meter, a.source_time))
            .collect();
        assert_eq!(stale, vec![(1, 1.0), (2, 0.0)]);
        assert!(he
            .alarms()
            .iter()
            .all(|a| a.kind == AlarmKind::Stale && a.receive_time == 11.5));
        // An old buffered message does not re-arm; a fresh one does.
        he.receive(21.0, &reading(1, 1, 5.0, 0));
        he.check_stale(21.0);
        assert_eq!(he.alarms().len(), 2);
        he.receive(22.0, &reading(1, 2, 21.9, 0));
        he.check_stale(25.0);
        assert_eq!(he.alarms().len(), 2);
        he.check_stale(32.0);
        assert_eq!(he.alarms().len(), 3);
        assert_eq!(he.alarms()[2].source_time, 21.9);
    }

    /// Meter → link → head-end through a 30 s RF outage: with a ring large enough nothing is
    /// lost; with a ring of 10 exactly the overflowed readings are missing and the overflow
    /// alarm reports that many; QoS-1 duplicates are all caught.
    fn outage_run(
        capacity: usize,
        loss: f64,
    ) -> (crate::meter::Meter, HeadEnd, crate::network::Link) {
        use crate::meter::{Meter, MeterConfig};
        use crate::network::Link;
        use crate::scenario::{LinkSpec, NetworkEvent, NetworkEventKind, RbeSpec, Thresholds};
        let rbe = RbeSpec {
            delta: None,
            heartbeat: 60.0,
            interval: 1.0,
        };
        let cfg = MeterConfig {
            id: 5,
            channels: 1,
            thresholds: Thresholds::default(),
            rbe,
            buffer_capacity: capacity,
        };
        let mut meter = Meter::new(cfg);
        let outage = NetworkEvent {
            at: 30.0,
            duration: 30.0,
            groups: Vec::new(),
            kind: NetworkEventKind::RfLoss,
        };
        let mut link = Link::new(
            LinkSpec {
                latency: 0.05,
                jitter: 0.01,
                loss,
                retry: 0.5,
            },
            vec![outage],
            17,
        );
        let mut he = HeadEnd::new(HeadEndSpec { stale_after: 10.0 });
        let mut in_flight: Vec<(f64, Message)> = Vec::new();
        let mut deliveries = Vec::new();
        for step in 1..=12_000 {
            let t = f64::from(step) * 0.01;
            if step % 20 == 0 {
                let ev = crate::measure::MeasureEvent::Rms10 {
                    ch: 0,
                    t_start: t - 0.2,
                    t_end: t,
                    value: 230.0,
                    flagged: false,
                };
                meter.on_measure(&ev);
            }
            meter.advance(t);
            if link.is_up(t) {
                while let Some(msg) = meter.poll_transmit() {
                    deliveries.clear();
                    link.transmit(t, &mut deliveries);
                    in_flight.extend(deliveries.iter().map(|&d| (d, msg.clone())));
                }
            }
            in_flight.sort_by(|a, b| a.0.total_cmp(&b.0));
            let due = in_flight.partition_point(|(d, _)| *d <= t);
            for (d, msg) in in_flight.drain(..due) {
                he.receive(d, &msg);
            }
            he.check_stale(t);
        }
        for (d, msg) in in_flight.drain(..) {
            he.receive(d, &msg);
        }
        (meter, he, link)
    }

    #[test]
    fn outage_with_large_ring_loses_nothing() {
        let (meter, he, link) = outage_run(4096, 0.2);
        assert_eq!(meter.produced(), 120);
        assert_eq!(meter.overflowed(), 0);
        assert_eq!(he.missing(5, meter.produced()), 0);
        assert_eq!(he.unique(), 120);
        assert_eq!(he.duplicates(), link.deliveries() - 120);
        assert!(
            he.duplicates() > 0,
            "loss 0.2 on 120 messages makes duplicates"
        );
        assert!(!he
            .alarms()
            .iter()
            .any(|a| matches!(a.kind, AlarmKind::BufferOverflow { .. })));
        // Stale once during the outage (newest source 29 s, stale after 10 s → at 39.01 s).
        let stale: Vec<&Alarm> = he
            .alarms()
            .iter()
            .filter(|a| a.kind == AlarmKind::Stale)
            .collect();
        assert_eq!(stale.len(), 1);
        assert!(
            (stale[0].source_time - 29.0).abs() < 1e-9
                && (stale[0].receive_time - 39.01).abs() < 1e-9
        );
    }

    #[test]
    fn outage_with_small_ring_loses_exactly_the_overflow() {
        let (meter, he, _) = outage_run(10, 0.0);
        // Readings at ticks 30..=60 (31) wait for the link, which is back at 60: 21 dropped.
        assert_eq!(meter.overflowed(), 21);
        assert_eq!(he.missing(5, meter.produced()), 21);
        assert_eq!(he.duplicates(), 0);
        let dropped: u64 = he
            .alarms()
            .iter()
            .filter_map(|a| match a.kind {
                AlarmKind::BufferOverflow { dropped } => Some(dropped),
                _ => None,
            })
            .sum();
        assert_eq!(dropped, 21);
        assert_eq!(
            he.seq_gaps(5),
            1,
            "one overflow hole costs one run of memory"
        );
    }

    proptest! {
        /// Any arrival order with any duplicates: unique / duplicates / missing agree with a
        /// plain set, and the memory stays at most one run per gap.
        #[test]
        fn dedupe_matches_a_set(arrivals in prop::collection::vec(0_u64..64, 0..300), produced in 0_u64..80) {
            let mut he = HeadEnd::new(HeadEndSpec::default());
            let mut set = BTreeSet::new();
            for &s in &arrivals {
                let new = he.receive(0.0, &reading(1, s, 0.0, 0));
                prop_assert_eq!(new, set.insert(s));
            }
            prop_assert_eq!(he.unique(), set.len() as u64);
            prop_assert_eq!(he.duplicates(), (arrivals.len() - set.len()) as u64);
            let missing = (0..produced).filter(|s| !set.contains(s)).count() as u64;
            prop_assert_eq!(he.missing(1, produced), missing);
            let runs = set.iter().zip(set.iter().skip(1)).filter(|(a, b)| **b != **a + 1).count()
                + usize::from(set.first().is_some_and(|&f| f > 0));
            prop_assert_eq!(he.seq_gaps(1), runs);
        }
    }
}
