//! Virtual meters on the wire: a sim-core meter, paced in real time, served over Modbus/TCP
//! through tokio-modbus's server `Service`.
//!
//! - [`registers`]: the register map (default map, `register_map.conf` loader).
//! - [`image`]: [`image::MeterImage`], the meter's registers as a pure function of its state.
//! - [`live`]: [`live::LiveMeter`], one scenario meter (synthesis → measurement → meter logic)
//!   feeding its image; sans-io, advanced by the caller.
//! - [`service`]: the tokio-modbus `Service` (single meter or gateway of unit ids), FC43.
//! - [`pacing`]: the real-time loop on tokio's clock.
//! - [`event_log`]: [`event_log::EventLogWriter`], the meters' `voltage_events.log`.
//! - [`broker`]: `--broker` URLs, the embedded rumqttd, a spawned Mosquitto.
//! - [`fleet`]: which meters a fleet process runs (rescaling, shards, Modbus ports/gateways).
//! - [`mqtt`]: MQTT telemetry, events and status (payloads, a sans-io publisher session, the
//!   tokio link that takes messages from the meter's ring).
//! - [`impair`]: live mode's network impairment, a TCP proxy applying a group's sim-core link
//!   model (latency, jitter, loss, RF-loss outages) in real time.
//!
//! Only `pacing`, `service`, `impair` and `mqtt::link` know about tokio (the embedded rumqttd in `broker`
//! runs its own runtimes on its own threads); nothing here reads YAML or prints.

pub mod broker;
pub mod event_log;
pub mod fleet;
pub mod image;
pub mod impair;
pub mod live;
pub mod mqtt;
pub mod pacing;
pub mod registers;
pub mod service;

pub use image::{CalSelector, Calibration, DeviceIdentity, MeterImage, Refusal, Settings};
pub use impair::{spawn_proxy, ImpairProfile, ProxyStats};
pub use live::{LiveMeter, MeterRef, Outbox};
pub use mqtt::{run_link, LinkConfig, LinkCounters, LinkReport, LinkStats, MqttError};
pub use registers::{MapOptions, Point, RegisterMap};
pub use service::{MeterService, SharedMeter, Units};
