//! The HIL bridge: drive a real programmable AC source over SCPI and read a real meter over
//! Modbus TCP/RTU, with emulated twins of both for CI (issue 6).
//!
//! - [`scpi`]: the SCPI line protocol over any byte stream (TCP port 5025 or a serial line),
//!   `*IDN?`, `SYST:ERR?`, two-layer errors (link failed vs the instrument's error queue).
//! - [`source`]: AC-source programs (fixed, list, pulse), their lowering from a sim-core supply
//!   envelope, the safety check, the Chroma and AMETEK/CI dialects and the async driver.
//! - [`emulator`]: an SCPI AC-source emulator for both dialects whose programmed output is a
//!   pure function of time since the trigger.
//! - [`lab`]: the lab profile (YAML): instruments, meters, register maps, safety limits, and
//!   the `GRIDLOOP_HIL` gate of hardware tests.
//! - [`rtu`]: Modbus RTU framing (CRC-16, inter-frame silence), sans-io.
//! - [`reader`]: meter readers over Modbus RTU (tokio-serial) and TCP with two-layer results
//!   (the device's exception vs a failed link).

pub mod emulator;
pub mod lab;
pub mod reader;
pub mod rtu;
pub mod scpi;
pub mod source;
