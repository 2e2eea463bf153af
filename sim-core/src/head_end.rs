//! The pure head-end: de-duplication by (meter, seq), alarms with source and receive times.
