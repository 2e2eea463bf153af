//! Integration tests of virtual-meter: live meters against sim mode, the Modbus/TCP server on
//! port 0 with tokio-modbus's client, and the pacing loop on tokio's paused clock.

#![allow(clippy::unwrap_used)]

mod broker;
mod common;
mod live;
mod pacing;
mod server;
