//! The monitoring stack: what a utility's head-end system does with a fleet of meters.
//!
//! - [`decode`]: MQTT topics and JSON/CBOR payloads of the wire contract into sim-core messages.
//! - [`core`]: the sans-io state machine — de-duplication by (meter, seq), out-of-order
//!   tolerance, stale detection by source timestamp, alarms (sim-core's `HeadEnd` rules) turned
//!   into [`alarm::AlarmRecord`]s with source time, receive time and latency.
//! - [`store`]: the durable alarm store (append-only JSON Lines, synced before acknowledging).
//! - [`subscriber`]: the tokio shell — MQTT subscriber (persistent session, manual acks after
//!   the store sync, topic partitioning by substation or shared subscriptions), alarm publisher.
//! - [`poller`] and [`handshake`]: the async Modbus poller and its encoding handshake.

pub mod alarm;
pub mod core;
pub mod decode;
pub mod handshake;
pub mod poller;
pub mod store;
pub mod subscriber;

pub use alarm::{AlarmRecord, Kind};
pub use core::{HeadEndCore, IngestStats, MeterInfo, PollEvent};
pub use store::{AlarmStore, StoreError};
pub use subscriber::{run_head_end, HeadEndError, HeadEndReport, Outputs, SubscriberConfig};
