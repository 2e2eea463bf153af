//! `gridloop bench`: benchmarks that measure this machine, never pass/fail tests.
//!
//! - [`procfs`]: RSS and CPU time of a process from `/proc`.
//! - [`modbus_load`]: a built-in closed-loop Modbus/TCP load generator.

pub mod modbus_load;
pub mod procfs;
