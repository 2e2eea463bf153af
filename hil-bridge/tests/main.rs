//! Integration tests of the HIL bridge against its emulators and third-party peers.

mod scpi_source;
