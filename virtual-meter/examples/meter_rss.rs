//! Resident memory per live meter: builds N meters of a scenario in one process (meter `i` is
//! meter `i mod count` of group `i mod groups`, each group's supply model shared), advances
//! them to 10 s and 60 s of grid time in 0.1 s steps, and prints the process RSS growth per
//! meter at each point (Linux `/proc/self/status`), plus `LiveMeter::heap_bytes`. Meters only:
//! no MQTT link or tokio task.
//!
//! `cargo run --release -p virtual-meter --example meter_rss -- \
//!     scenarios/library/network/grid-wide-sag-fleet.yaml 10000`

#![allow(clippy::print_stdout)]

use std::error::Error;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use virtual_meter::live::group_model;
use virtual_meter::{LiveMeter, MapOptions, MeterRef, RegisterMap};

/// Grid-time step between `advance_to` calls.
const STEP: f64 = 0.1;

/// Resident set size in KiB (`None` where `/proc/self/status` is not available).
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(n)) = (args.next(), args.next()) else {
        return Err("usage: meter_rss <scenario.yaml> <meters>".into());
    };
    let n: u32 = n.parse().map_err(|e| format!("<meters> {n:?}: {e}"))?;
    let mut scenario = scenarios::load_file(Path::new(&path))?;
    if scenario.groups.is_empty() || n == 0 {
        return Err(format!("{path}: no meters to build").into());
    }
    // Run past the scenario's end if it is shorter than the last checkpoint.
    scenario.duration = scenario.duration.max(60.0 + STEP);
    let map = Arc::new(RegisterMap::default_map(MapOptions::default()));
    let models: Vec<_> = (0..scenario.groups.len())
        .map(|g| group_model(&scenario, g))
        .collect();
    let groups = scenario.groups.len() as u32;

    let before = rss_kib();
    let mut meters = Vec::with_capacity(n as usize);
    for i in 0..n {
        let group = (i % groups) as usize;
        let which = MeterRef {
            group,
            index: (i / groups) % scenario.groups[group].count.max(1),
        };
        meters.push(LiveMeter::with_model(
            &scenario,
            which,
            Arc::clone(&map),
            Arc::clone(&models[group]),
        ));
    }
    let report = |label: &str, meters: &[LiveMeter], secs: Option<f64>| {
        let per_meter = match (before, rss_kib()) {
            (Some(a), Some(b)) => format!("{:.2} KiB", (b - a) as f64 / f64::from(n)),
            _ => "unavailable".into(),
        };
        let heap = meters.iter().map(LiveMeter::heap_bytes).sum::<usize>() as f64 / f64::from(n);
        let speed = secs.map_or(String::new(), |s| format!(", advanced in {s:.2} s"));
        println!("{label:>9}: RSS {per_meter}/meter, heap_bytes {heap:.0} B/meter{speed}");
    };
    println!(
        "{n} meters of {path} ({} group(s)), size_of::<LiveMeter>() = {} B",
        groups,
        size_of::<LiveMeter>()
    );
    report("created", &meters, None);
    let mut t = 0.0;
    for checkpoint in [10.0, 60.0] {
        let start = Instant::now();
        while t < checkpoint - 1e-9 {
            t += STEP;
            for m in &mut meters {
                m.advance_to(t);
            }
        }
        let secs = start.elapsed().as_secs_f64();
        report(&format!("t = {checkpoint} s"), &meters, Some(secs));
    }
    let trips: u64 = meters.iter().map(|m| m.meter().trip_count()).sum();
    println!("trips raised: {trips}");
    Ok(())
}
