//! The head-end's state machine (sans-io, clock-agnostic): decoded messages and poll results
//! in, alarm records out. Times are Unix milliseconds passed in by the caller; the de-duplication
//! and alarm rules are sim-core's [`HeadEnd`], so sim and live mode judge with the same logic.

use std::collections::HashMap;

use sim_core::head_end::{Alarm, AlarmKind, HeadEnd};
use sim_core::meter::Payload;
use sim_core::scenario::HeadEndSpec;

use crate::alarm::{AlarmRecord, Kind};
use crate::decode::{decode, DecodeError, Incoming, Origin};

/// Names of a meter, learnt from its topics (or given by whoever configured the poller).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeterInfo {
    pub name: String,
    pub substation: String,
    pub group: String,
}

/// What the Modbus poller tells the head-end about one meter.
#[derive(Debug, Clone, PartialEq)]
pub enum PollEvent {
    /// Voltages read with the verified encoding; `source_ms` is the meter's timestamp when it
    /// has one (Unix ms), else the poll's receive time.
    Reading {
        meter: u32,
        source_ms: u64,
        volts: [f32; 3],
    },
    /// The meter answered after being unreachable (or for the first time).
    Reachable { meter: u32 },
    /// Timeouts after all retries, or a refused connection.
    Unreachable { meter: u32, detail: String },
    /// The encoding handshake failed: the meter's registers are not in the expected encoding.
    EncodingMismatch { meter: u32, detail: String },
}

/// Counters of what came in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IngestStats {
    /// Messages (readings, events, parts) decoded.
    pub messages: u64,
    /// Distinct (meter, seq).
    pub unique: u64,
    pub duplicates: u64,
    /// Messages refused by the decoder (logged with topic and field).
    pub refused: u64,
    pub statuses: u64,
    /// Polled readings stored, and refused because the meter's encoding handshake failed.
    pub polled: u64,
    pub polled_refused: u64,
    pub alarms: u64,
}

/// Latest voltages of a meter, by source time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latest {
    pub source_ms: u64,
    pub volts: [f32; 3],
}

/// The head-end state machine.
#[derive(Debug)]
pub struct HeadEndCore {
    instance: String,
    inner: HeadEnd,
    directory: HashMap<u32, MeterInfo>,
    latest: HashMap<u32, Latest>,
    online: HashMap<u32, bool>,
    stats: IngestStats,
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn ms(s: f64) -> Option<u64> {
    (s.is_finite() && s >= 0.0).then(|| (s * 1000.0).round() as u64)
}

impl HeadEndCore {
    /// A head-end instance named `instance` (it appears in every alarm it raises).
    pub fn new(spec: HeadEndSpec, instance: &str) -> HeadEndCore {
        HeadEndCore {
            instance: instance.to_owned(),
            inner: HeadEnd::new(spec),
            directory: HashMap::new(),
            latest: HashMap::new(),
            online: HashMap::new(),
            stats: IngestStats::default(),
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Start expecting `meter` at `now_ms`, so that it goes stale even if it never reports.
    pub fn expect_meter(&mut self, meter: u32, info: MeterInfo, now_ms: u64) {
        self.inner.expect_meter(meter, secs(now_ms));
        self.directory.insert(meter, info);
    }

    /// Restore what a previous run of this head-end stored, restarting at `now_ms`: every
    /// sequenced alarm's (meter, seq) is marked handled (a redelivery is then a duplicate,
    /// raising nothing), overflow counters and encoding mismatches are restored, meter names
    /// are learnt, and each stored meter resumes at the restart: its stale clock starts no
    /// earlier than `now_ms`, and a STALE or UNREACHABLE episode that was its last stored alarm
    /// stays open (not raised again until the meter is heard from).
    pub fn restore(&mut self, records: &[AlarmRecord], now_ms: u64) {
        // Per meter: is its last episode alarm still open (STALE or UNREACHABLE, with no
        // sequenced message stored after it)?
        let mut open: HashMap<u32, (bool, bool)> = HashMap::new();
        for r in records {
            if let Some((meter, seq)) = r.key() {
                let source = r.source_ms.map_or(f64::NEG_INFINITY, secs);
                self.inner.restore_seen(meter, seq, source);
            }
            let episode = open.entry(r.meter).or_default();
            match r.kind {
                Kind::BufferOverflow => {
                    if let Some(o) = r.overflow {
                        self.inner.restore_overflow(r.meter, o);
                    }
                }
                Kind::EncodingMismatch => {
                    self.inner.encoding_mismatch(r.meter, secs(r.receive_ms));
                    self.inner.drain_alarms().for_each(drop);
                }
                Kind::Stale => episode.0 = true,
                Kind::Unreachable => episode.1 = true,
                Kind::Trip | Kind::Clear => {}
            }
            if r.seq.is_some() {
                // A message stored after the episode alarm: the meter was heard from again.
                *episode = (false, false);
            }
            if !r.name.is_empty() {
                self.directory.entry(r.meter).or_insert_with(|| MeterInfo {
                    name: r.name.clone(),
                    substation: r.substation.clone(),
                    group: r.group.clone(),
                });
            }
        }
        for (meter, (stale, unreachable)) in open {
            self.inner.resume(meter, secs(now_ms), stale, unreachable);
        }
    }

    /// Decode and ingest one MQTT message received at `now_ms`; alarms it raises are appended
    /// to `out`. Returns whether the message was new (false: duplicate or status).
    pub fn on_mqtt(
        &mut self,
        topic: &str,
        payload: &[u8],
        now_ms: u64,
        out: &mut Vec<AlarmRecord>,
    ) -> Result<bool, DecodeError> {
        let incoming = match decode(topic, payload) {
            Ok(i) => i,
            Err(e) => {
                self.stats.refused += 1;
                return Err(e);
            }
        };
        Ok(self.on_incoming(incoming, now_ms, out))
    }

    /// Ingest a decoded message (see [`HeadEndCore::on_mqtt`]).
    pub fn on_incoming(
        &mut self,
        incoming: Incoming,
        now_ms: u64,
        out: &mut Vec<AlarmRecord>,
    ) -> bool {
        match incoming {
            Incoming::Status {
                origin,
                meter,
                online,
            } => {
                self.stats.statuses += 1;
                self.learn(meter, &origin, None);
                self.online.insert(meter, online);
                false
            }
            Incoming::Message {
                origin,
                name,
                message,
                source_ms,
                part,
            } => {
                self.stats.messages += 1;
                self.learn(message.meter, &origin, Some(name));
                if let Payload::Reading { volts, .. } = &message.payload {
                    self.merge_latest(message.meter, source_ms, volts, part);
                }
                // Parts after the first of a split reading carry the same seq: their values are
                // merged above, the sequence number was handled with the first part.
                if part.is_some_and(|(p, _)| p > 0) {
                    return false;
                }
                let new = self.inner.receive(secs(now_ms), &message);
                if new {
                    self.stats.unique += 1;
                } else {
                    self.stats.duplicates += 1;
                }
                let event = match &message.payload {
                    Payload::Event(ev) => Some(*ev),
                    Payload::Reading { .. } => None,
                };
                self.collect(out, |rec| {
                    if let Some(ev) = event {
                        rec.value = Some(ev.value);
                        rec.limit = Some(ev.limit);
                    }
                    rec.source_ms = Some(source_ms);
                    rec.latency_ms = Some(rec.receive_ms as i64 - source_ms as i64);
                });
                new
            }
        }
    }

    /// Ingest what the poller found at `now_ms`.
    pub fn on_poll(&mut self, event: PollEvent, now_ms: u64, out: &mut Vec<AlarmRecord>) {
        match event {
            PollEvent::Reading {
                meter,
                source_ms,
                volts,
            } => {
                if self
                    .inner
                    .polled_reading(meter, secs(source_ms), volts, secs(now_ms))
                {
                    self.stats.polled += 1;
                    self.merge_latest(meter, source_ms, &volts, None);
                } else {
                    self.stats.polled_refused += 1;
                }
            }
            PollEvent::Reachable { meter } => self.inner.reachable(meter),
            PollEvent::Unreachable { meter, detail } => {
                self.inner.unreachable(meter, secs(now_ms));
                self.collect(out, |rec| rec.detail = Some(detail.clone()));
            }
            PollEvent::EncodingMismatch { meter, detail } => {
                self.inner.encoding_mismatch(meter, secs(now_ms));
                // Whatever was stored before the handshake verdict is not trusted either.
                self.latest.remove(&meter);
                self.collect(out, |rec| rec.detail = Some(detail.clone()));
            }
        }
    }

    /// Raise `STALE` for meters with nothing newer than the stale time at `now_ms`.
    pub fn check_stale(&mut self, now_ms: u64, out: &mut Vec<AlarmRecord>) {
        self.inner.check_stale(secs(now_ms));
        self.collect(out, |_| {});
    }

    /// Latest voltages of `meter` (none for a meter whose encoding handshake failed).
    pub fn latest(&self, meter: u32) -> Option<Latest> {
        self.latest.get(&meter).copied()
    }

    /// Last status (`online`/`offline`) a meter published.
    pub fn online(&self, meter: u32) -> Option<bool> {
        self.online.get(&meter).copied()
    }

    pub fn info(&self, meter: u32) -> Option<&MeterInfo> {
        self.directory.get(&meter)
    }

    pub fn stats(&self) -> IngestStats {
        self.stats
    }

    /// How many of seqs `0..produced` of `meter` never arrived (for the delivered check).
    pub fn missing(&self, meter: u32, produced: u64) -> u64 {
        self.inner.missing(meter, produced)
    }

    fn learn(&mut self, meter: u32, origin: &Origin, name: Option<String>) {
        let info = self.directory.entry(meter).or_default();
        if info.substation.is_empty() {
            info.substation.clone_from(&origin.substation);
            info.group.clone_from(&origin.group);
        }
        if info.name.is_empty() {
            info.name = name
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| origin.meter.clone());
        }
    }

    fn merge_latest(
        &mut self,
        meter: u32,
        source_ms: u64,
        volts: &[f32; 3],
        part: Option<(u8, u8)>,
    ) {
        if self.inner.is_mismatched(meter) {
            return;
        }
        let e = self.latest.entry(meter).or_insert(Latest {
            source_ms,
            volts: [f32::NAN; 3],
        });
        match part {
            Some((p, _)) if source_ms == e.source_ms => {
                e.volts[usize::from(p).min(2)] = volts[usize::from(p).min(2)];
            }
            Some((p, _)) if source_ms > e.source_ms => {
                *e = Latest {
                    source_ms,
                    volts: [f32::NAN; 3],
                };
                e.volts[usize::from(p).min(2)] = volts[usize::from(p).min(2)];
            }
            None if source_ms >= e.source_ms => {
                *e = Latest {
                    source_ms,
                    volts: *volts,
                };
            }
            _ => {}
        }
    }

    /// Turn the sim-core alarms raised since the last call into records, `fill` adding what
    /// only the caller knows.
    fn collect(&mut self, out: &mut Vec<AlarmRecord>, fill: impl Fn(&mut AlarmRecord)) {
        let raised: Vec<Alarm> = self.inner.drain_alarms().collect();
        for a in raised {
            let info = self.directory.get(&a.meter).cloned().unwrap_or_default();
            let receive_ms = ms(a.receive_time).unwrap_or(0);
            let source_ms = ms(a.source_time);
            let (code, dropped) = match a.kind {
                AlarmKind::Trip(c) | AlarmKind::Clear(c) => (Some(c.name().to_owned()), None),
                AlarmKind::BufferOverflow { dropped } => (None, Some(dropped)),
                _ => (None, None),
            };
            let mut rec = AlarmRecord {
                kind: Kind::of(&a.kind),
                code,
                meter: a.meter,
                name: info.name,
                substation: info.substation,
                group: info.group,
                seq: a.seq,
                phase: a.phase.map(|p| p.name().to_owned()),
                value: None,
                limit: None,
                dropped,
                overflow: dropped.map(|_| self.inner.overflow_seen(a.meter)),
                source_ms,
                receive_ms,
                latency_ms: source_ms.map(|s| receive_ms as i64 - s as i64),
                detail: None,
                instance: self.instance.clone(),
            };
            fill(&mut rec);
            self.stats.alarms += 1;
            out.push(rec);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn record(kind: Kind, meter: u32, seq: Option<u64>, source_ms: Option<u64>) -> AlarmRecord {
        AlarmRecord {
            kind,
            code: (kind == Kind::Trip).then(|| "UV_TRIP_0x01".to_owned()),
            meter,
            name: format!("m-{meter}"),
            substation: "s".into(),
            group: "g".into(),
            seq,
            phase: None,
            value: None,
            limit: None,
            dropped: None,
            overflow: None,
            source_ms,
            receive_ms: source_ms.unwrap_or(0) + 5,
            latency_ms: None,
            detail: None,
            instance: "he".into(),
        }
    }

    /// A restart long after the stored alarms: no meter is stale at once, an open STALE episode
    /// is not raised again, and a meter silent for the stale time after the restart is.
    #[test]
    fn restore_resumes_stale_clocks_at_the_restart() {
        let spec = HeadEndSpec { stale_after: 180.0 };
        let stored = [
            // Meter 1 tripped an hour before the restart; meter 2 went stale then.
            record(Kind::Trip, 1, Some(7), Some(1_000_000)),
            record(Kind::Stale, 2, None, Some(900_000)),
        ];
        let restart = 1_000_000 + 3_600_000;
        let mut core = HeadEndCore::new(spec, "he");
        core.restore(&stored, restart);
        let mut out = Vec::new();
        core.check_stale(restart + 1_000, &mut out);
        assert!(out.is_empty(), "stale at once after a restart: {out:?}");
        core.check_stale(restart + 181_000, &mut out);
        let stale: Vec<u32> = out.iter().map(|a| a.meter).collect();
        assert_eq!(
            stale,
            vec![1],
            "meter 1 silent 181 s after the restart; meter 2's episode stays open"
        );
        // The redelivered trip raises nothing.
        let trip = br#"{"meter":1,"name":"m-1","seq":7,"kind":"event","t":1,"ts_ms":1000000,"code":"UV_TRIP_0x01","phase":"L1","value":180,"limit":210}"#;
        out.clear();
        let new = core
            .on_mqtt("gridloop/s/g/m-1/event", trip, restart + 182_000, &mut out)
            .unwrap();
        assert!(!new && out.is_empty(), "{out:?}");
    }
}
