//! Integration tests of virtual-meter: live meters against sim mode, the Modbus/TCP server on
//! port 0 with tokio-modbus's client, and the pacing loop on tokio's paused clock.

#![allow(clippy::unwrap_used)]

mod broker;
mod common;
mod event_log;
mod fleet;
mod idle;
mod impair;
mod live;
mod maps;
mod memory;
mod mqtt;
mod pacing;
mod server;
