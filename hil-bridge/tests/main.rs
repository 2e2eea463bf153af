//! Integration tests of the HIL bridge against its emulators and third-party peers.

mod emulated_round_trip;
mod hardware;
mod lab_profiles;
mod pymodbus_peer;
mod rtu_faults;
mod scpi_serial;
mod scpi_source;
mod tcp_faults;
