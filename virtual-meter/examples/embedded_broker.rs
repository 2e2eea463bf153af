//! The embedded rumqttd on its own, for measuring it against Mosquitto with an external load
//! generator (`../shared/peers/mqtt/mqtt_load.c`): prints `ADDR PID` and serves until killed.
//!
//! ```text
//! cargo run --release -p virtual-meter --example embedded_broker -- 127.0.0.1:18830
//! # rumqttd's own log limits (100 MiB × 10 segments) instead of ours:
//! cargo run --release -p virtual-meter --example embedded_broker -- 127.0.0.1:18830 104857600 10
//! ```
//! Then read `VmRSS`/`VmHWM` in `/proc/PID/status` while `mqtt_load -p 18830 -n 2000 -q 1 …`
//! runs. `gridloop broker --listen ADDR` runs the same broker with the default limits.

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;

use virtual_meter::broker::{EmbeddedBroker, EmbeddedConfig, LogLimit};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr: SocketAddr = args.first().map_or("127.0.0.1:0", String::as_str).parse()?;
    let mut config = EmbeddedConfig::default();
    if let (Some(size), Some(count)) = (args.get(1), args.get(2)) {
        let limit = LogLimit {
            segment_size: size.parse()?,
            segment_count: count.parse()?,
        };
        config.log = limit;
        config.topic_logs.clear();
    }
    let broker = EmbeddedBroker::start_with(addr, config)?;
    println!("{} {}", broker.addr(), std::process::id());
    loop {
        std::thread::park();
    }
}
