//! The HIL bridge: drive a real programmable AC source over SCPI and read a real meter over
//! Modbus TCP/RTU, with emulated twins of both for CI (issue 6).
//!
//! Modules arrive as they hold real code: the SCPI layer and AC-source drivers with their
//! emulator, and the Modbus RTU reader.

pub mod reader;
pub mod rtu;
