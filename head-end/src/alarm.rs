//! Alarm records as the head-end stores and publishes them: who, what, and three times — the
//! source timestamp the meter put on the reading, the head-end's receive time, and the latency
//! between them.

use serde::{Deserialize, Serialize};
use sim_core::head_end::AlarmKind;

/// What an alarm is about, as written to the store and the alarm topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Kind {
    /// A meter's UV/OV trip event (`code` names it).
    Trip,
    /// A meter's UV/OV clear event.
    Clear,
    /// The meter's store-and-forward ring dropped readings (`dropped` says how many more).
    BufferOverflow,
    /// Nothing new from the meter for longer than the stale time.
    Stale,
    /// The meter does not answer (Modbus timeouts after retries, refused connections).
    Unreachable,
    /// The encoding handshake found other registers than expected (`detail` says what).
    EncodingMismatch,
}

impl Kind {
    /// The kind of a sim-core alarm.
    pub fn of(kind: &AlarmKind) -> Kind {
        match kind {
            AlarmKind::Trip(_) => Kind::Trip,
            AlarmKind::Clear(_) => Kind::Clear,
            AlarmKind::BufferOverflow { .. } => Kind::BufferOverflow,
            AlarmKind::Stale => Kind::Stale,
            AlarmKind::Unreachable => Kind::Unreachable,
            AlarmKind::EncodingMismatch => Kind::EncodingMismatch,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Trip => "TRIP",
            Kind::Clear => "CLEAR",
            Kind::BufferOverflow => "BUFFER_OVERFLOW",
            Kind::Stale => "STALE",
            Kind::Unreachable => "UNREACHABLE",
            Kind::EncodingMismatch => "ENCODING_MISMATCH",
        }
    }
}

/// One alarm. Times are Unix milliseconds; `source_ms` is the meter's own timestamp of the
/// message that raised it (for `STALE` and `UNREACHABLE`: the newest one seen, if any).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmRecord {
    pub kind: Kind,
    /// Event code for trips and clears, e.g. `UV_TRIP_0x01`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Fleet-wide meter id.
    pub meter: u32,
    /// Meter name, e.g. `feeder-a-0003` (empty when the head-end never learnt it).
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub substation: String,
    #[serde(default)]
    pub group: String,
    /// Sequence number of the message that raised it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Measured value and limit of a trip or clear, V.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<f64>,
    /// Readings the meter's ring dropped (BUFFER_OVERFLOW), and its overflow counter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overflow: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ms: Option<u64>,
    pub receive_ms: u64,
    /// receive − source, ms (absent without a source time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The head-end instance that raised it.
    #[serde(default)]
    pub instance: String,
}

impl AlarmRecord {
    /// `gridloop-alarms/{substation}/{instance}`: outside the meters' `gridloop/…` tree, so a
    /// head-end subscribed to its substations' meters never receives its own alarms back.
    pub fn topic(&self) -> String {
        alarm_topic(&self.substation, &self.instance)
    }

    /// (meter, seq) when the alarm came from a sequenced message: the de-duplication key.
    pub fn key(&self) -> Option<(u32, u64)> {
        self.seq.map(|s| (self.meter, s))
    }
}

/// The alarm topic of `instance` for `substation` (empty → `_`).
pub fn alarm_topic(substation: &str, instance: &str) -> String {
    let seg = |s: &str| {
        if s.is_empty() {
            "_".to_owned()
        } else {
            s.replace(['/', '+', '#'], "_")
        }
    };
    format!("gridloop-alarms/{}/{}", seg(substation), seg(instance))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn json_round_trip_and_names() {
        let a = AlarmRecord {
            kind: Kind::EncodingMismatch,
            code: None,
            meter: 3,
            name: "feeder-a-0003".into(),
            substation: "sub-01".into(),
            group: "feeder-a".into(),
            seq: None,
            phase: None,
            value: None,
            limit: None,
            dropped: None,
            overflow: None,
            source_ms: None,
            receive_ms: 1_700_000_000_123,
            latency_ms: None,
            detail: Some("expected float32 ABCD, registers look like int16 ×0.1".into()),
            instance: "he-1".into(),
        };
        let text = serde_json::to_string(&a).unwrap();
        assert!(text.contains("\"kind\":\"ENCODING_MISMATCH\""), "{text}");
        let back: AlarmRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, a);
        assert_eq!(a.topic(), "gridloop-alarms/sub-01/he-1");
        assert_eq!(alarm_topic("", "a/b"), "gridloop-alarms/_/a_b");
        assert_eq!(Kind::Unreachable.name(), "UNREACHABLE");
    }
}
