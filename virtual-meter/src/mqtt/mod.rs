//! MQTT telemetry of a virtual meter: readings and events (QoS 1) and a retained status with a
//! last will, JSON or CBOR, on `gridloop/{substation}/{feeder}/{meter}/{telemetry|event|status}`.
//!
//! - [`payload`]: topics, the JSON/CBOR data model, the MTU rule (sans-io).
//! - [`session`]: a lean MQTT 3.1.1 QoS-1 publisher session on rumqttc's packet codec
//!   (sans-io: bytes and time in, bytes out).
//! - [`link`]: the tokio shell: TCP, back-off reconnect, the meter's ring as the outbox.

pub mod link;
pub mod payload;
pub mod session;

pub use link::{run_link, LinkConfig, LinkCounters, LinkReport, LinkStats, MqttError};
pub use payload::{
    decode, meter_name, Encoding, Mtu, MtuPolicy, PayloadCodec, PayloadError, TopicKind, Topics,
};
pub use session::{Session, SessionConfig, SessionError};
