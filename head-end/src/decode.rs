//! Incoming MQTT messages: topic `gridloop/{substation}/{group}/{meter}/{telemetry|event|status}`
//! and a JSON or CBOR payload (told apart by the first byte: a JSON object starts with `{`, a
//! CBOR map with a major-type-5 byte). Decoding is independent of the meter's encoder: it reads
//! the documented wire contract, so a mismatch between the two fails the live tests.

use serde::Deserialize;
use sim_core::grid::Phase;
use sim_core::meter::{Message, MeterEvent, Payload};
use sim_core::scenario::EventCode;

/// Why a message was refused. Never a panic: every refusal is counted and logged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "topic `{0}` is not gridloop/{{substation}}/{{group}}/{{meter}}/{{telemetry|event|status}}"
    )]
    Topic(String),
    #[error("{topic}: payload is neither a JSON object nor a CBOR map (first byte {first:#04x})")]
    Format { topic: String, first: u8 },
    #[error("{topic}: empty payload")]
    Empty { topic: String },
    #[error("{topic}: {format} payload: {why}")]
    Payload {
        topic: String,
        format: &'static str,
        why: String,
    },
    #[error("{topic}: field `{field}`: {why}")]
    Field {
        topic: String,
        field: &'static str,
        why: String,
    },
}

/// Where a message came from, by its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub substation: String,
    pub group: String,
    /// The meter segment of the topic.
    pub meter: String,
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A reading or an event: a sim-core message whose `source_time` is Unix seconds
    /// (`ts_ms` / 1000), with the meter's name and, for a reading split over the MTU, its part.
    Message {
        origin: Origin,
        name: String,
        message: Message,
        source_ms: u64,
        part: Option<(u8, u8)>,
    },
    /// The retained status or last will.
    Status {
        origin: Origin,
        meter: u32,
        online: bool,
    },
}

#[derive(Deserialize)]
struct Volts {
    #[serde(rename = "L1")]
    l1: Option<f64>,
    #[serde(rename = "L2")]
    l2: Option<f64>,
    #[serde(rename = "L3")]
    l3: Option<f64>,
}

#[derive(Deserialize)]
struct Wire {
    meter: u32,
    #[serde(default)]
    name: String,
    seq: Option<u64>,
    kind: Option<String>,
    ts_ms: Option<u64>,
    volts: Option<Volts>,
    overflow: Option<u64>,
    part: Option<u8>,
    parts: Option<u8>,
    code: Option<String>,
    phase: Option<String>,
    value: Option<f64>,
    limit: Option<f64>,
    status: Option<String>,
}

/// Split a topic into its origin and suffix.
pub fn parse_topic(topic: &str) -> Result<(Origin, &str), DecodeError> {
    let parts: Vec<&str> = topic.split('/').collect();
    match parts.as_slice() {
        ["gridloop", sub, group, meter, suffix @ ("telemetry" | "event" | "status")]
            if !sub.is_empty() && !group.is_empty() && !meter.is_empty() =>
        {
            Ok((
                Origin {
                    substation: (*sub).to_owned(),
                    group: (*group).to_owned(),
                    meter: (*meter).to_owned(),
                },
                suffix,
            ))
        }
        _ => Err(DecodeError::Topic(topic.to_owned())),
    }
}

/// Decode one message.
pub fn decode(topic: &str, payload: &[u8]) -> Result<Incoming, DecodeError> {
    let (origin, suffix) = parse_topic(topic)?;
    let first = *payload.first().ok_or_else(|| DecodeError::Empty {
        topic: topic.to_owned(),
    })?;
    let wire: Wire = match first {
        b'{' | b' ' | b'\n' | b'\t' | b'\r' => {
            serde_json::from_slice(payload).map_err(|e| DecodeError::Payload {
                topic: topic.to_owned(),
                format: "JSON",
                why: e.to_string(),
            })?
        }
        0xA0..=0xBF => ciborium::from_reader(payload).map_err(|e| DecodeError::Payload {
            topic: topic.to_owned(),
            format: "CBOR",
            why: e.to_string(),
        })?,
        _ => {
            return Err(DecodeError::Format {
                topic: topic.to_owned(),
                first,
            })
        }
    };
    let field = |field: &'static str, why: &str| DecodeError::Field {
        topic: topic.to_owned(),
        field,
        why: why.to_owned(),
    };
    if suffix == "status" {
        let online = match wire.status.as_deref() {
            Some("online") => true,
            Some("offline") => false,
            Some(other) => {
                return Err(field("status", &format!("`{other}` is not online/offline")))
            }
            None => return Err(field("status", "missing")),
        };
        return Ok(Incoming::Status {
            origin,
            meter: wire.meter,
            online,
        });
    }
    let seq = wire.seq.ok_or_else(|| field("seq", "missing"))?;
    let source_ms = wire.ts_ms.ok_or_else(|| field("ts_ms", "missing"))?;
    let kind = wire.kind.as_deref().unwrap_or(match suffix {
        "event" => "event",
        _ => "reading",
    });
    let payload = match kind {
        "reading" => {
            let v = wire.volts.ok_or_else(|| field("volts", "missing"))?;
            // A phase the payload leaves out (a single-phase meter, or another part of a split
            // reading) is NaN, not 0 V: no voltage was reported, none is invented.
            let volts = [v.l1, v.l2, v.l3].map(|x| x.map_or(f32::NAN, |x| x as f32));
            Payload::Reading {
                volts,
                overflow: wire.overflow.unwrap_or(0),
            }
        }
        "event" => {
            let code = wire.code.ok_or_else(|| field("code", "missing"))?;
            let code = EventCode::parse(&code)
                .ok_or_else(|| field("code", &format!("unknown event code `{code}`")))?;
            let phase = match wire.phase.as_deref() {
                Some("L1") => Phase::L1,
                Some("L2") => Phase::L2,
                Some("L3") => Phase::L3,
                Some(other) => return Err(field("phase", &format!("`{other}` is not L1/L2/L3"))),
                None => return Err(field("phase", "missing")),
            };
            Payload::Event(MeterEvent {
                code,
                phase,
                value: wire.value.unwrap_or(f64::NAN),
                limit: wire.limit.unwrap_or(f64::NAN),
            })
        }
        other => return Err(field("kind", &format!("`{other}` is not reading/event"))),
    };
    let part = match (wire.part, wire.parts) {
        (Some(p), Some(n)) if p < n => Some((p, n)),
        (None, None) => None,
        _ => {
            return Err(field(
                "part",
                "part must be below parts, both or neither present",
            ))
        }
    };
    Ok(Incoming::Message {
        origin,
        name: wire.name,
        message: Message {
            meter: wire.meter,
            seq,
            source_time: source_ms as f64 / 1000.0,
            payload,
        },
        source_ms,
        part,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn json_event_and_reading() {
        let ev = br#"{"meter":7,"name":"feeder-a-0003","seq":12,"kind":"event","t":1.25,"ts_ms":1700000001250,"code":"UV_TRIP_0x01","code_num":1,"phase":"L2","value":180.5,"limit":210.0}"#;
        let Incoming::Message {
            origin,
            message,
            source_ms,
            ..
        } = decode("gridloop/sub-01/feeder-a/feeder-a-0003/event", ev).unwrap()
        else {
            panic!("not a message")
        };
        assert_eq!(origin.substation, "sub-01");
        assert_eq!(source_ms, 1_700_000_001_250);
        assert_eq!(message.seq, 12);
        assert!(matches!(
            message.payload,
            Payload::Event(MeterEvent {
                code: EventCode::UvTrip,
                phase: Phase::L2,
                ..
            })
        ));
        let r = br#"{"meter":7,"name":"x","seq":3,"kind":"reading","t":1,"ts_ms":5,"volts":{"L1":230.5},"overflow":4}"#;
        let Incoming::Message { message, .. } = decode("gridloop/s/g/x/telemetry", r).unwrap()
        else {
            panic!()
        };
        let Payload::Reading { volts, overflow } = message.payload else {
            panic!("not a reading")
        };
        assert_eq!(overflow, 4);
        assert_eq!(volts[0], 230.5);
        assert!(volts[1].is_nan() && volts[2].is_nan(), "{volts:?}");
    }

    #[test]
    fn refusals_name_topic_and_field() {
        let e = decode(
            "gridloop/s/g/x/event",
            br#"{"meter":1,"seq":1,"ts_ms":1,"kind":"event","code":"XX","phase":"L1"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("field `code`"), "{e}");
        let e = decode("other/topic", b"{}").unwrap_err();
        assert!(matches!(e, DecodeError::Topic(_)));
        let e = decode("gridloop/s/g/x/event", b"\x00\x01").unwrap_err();
        assert!(e.to_string().contains("0x00"), "{e}");
        let e = decode("gridloop/s/g/x/status", br#"{"meter":1,"status":"maybe"}"#).unwrap_err();
        assert!(e.to_string().contains("status"), "{e}");
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode("gridloop/s/g/m/event", &bytes);
            let _ = decode("gridloop/s/g/m/telemetry", &bytes);
        }
    }
}
