//! Memory of idle MQTT links: N `rms` meters of the library sag scenario, each with its own
//! `run_link` to a spawned Mosquitto; prints process RSS before and after the links connect
//! and after every meter has published a few messages, per link.
//!
//! `cargo run --release -p virtual-meter --example mqtt_links_rss -- 2000`

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sim_core::scenario::Fidelity;
use virtual_meter::broker::SpawnedMosquitto;
use virtual_meter::mqtt::{LinkConfig, LinkCounters};
use virtual_meter::{run_link, LiveMeter, MapOptions, MeterRef, RegisterMap, SharedMeter};

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let broker = SpawnedMosquitto::start().unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios/library/sags-swells/sag-75pct-12-cycles.yaml");
    let mut sc = scenarios::load_file(&path).unwrap();
    sc.groups[0].count = n;
    sc.groups[0].fidelity = Fidelity::Rms;
    sc.duration = 3600.0;
    // Every reading sent (no report-by-exception), one a second.
    sc.groups[0].rbe.delta = None;
    let map = Arc::new(RegisterMap::default_map(MapOptions::default()));
    let meters: Vec<SharedMeter> = (0..n)
        .map(|index| {
            Arc::new(Mutex::new(LiveMeter::new(
                &sc,
                MeterRef { group: 0, index },
                Arc::clone(&map),
            )))
        })
        .collect();
    // First touch of every meter's buffers, before the baseline (no link yet: drained).
    for m in &meters {
        m.lock().unwrap().advance_to(1.5);
    }
    rt.block_on(async {
        let base = rss_kib();
        let drained: u64 = meters
            .iter()
            .map(|m| m.lock().unwrap().meter().produced())
            .sum();
        let counters = Arc::new(LinkCounters::default());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        let mut future_size = 0;
        for (index, meter) in meters.iter().enumerate() {
            let cfg = LinkConfig::for_meter(
                &sc,
                MeterRef {
                    group: 0,
                    index: index as u32,
                },
                broker.addr().ip().to_string(),
                broker.addr().port(),
                0,
            );
            let mut rx = stop_rx.clone();
            let fut = run_link(Arc::clone(meter), cfg, Arc::clone(&counters), async move {
                let _ = rx.wait_for(|s| *s).await;
            });
            future_size = size_of_val(&fut);
            tasks.push(tokio::spawn(fut));
        }
        let start = Instant::now();
        while counters.snapshot().connected < u64::from(n)
            && start.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let up = counters.snapshot().connected;
        let connect_time = start.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let connected = rss_kib();
        // Grid time 1.5 s → 5 s: a reading a second each.
        for m in &meters {
            m.lock().unwrap().advance_to(5.0);
        }
        let want: u64 = meters
            .iter()
            .map(|m| m.lock().unwrap().meter().produced())
            .sum::<u64>()
            - drained;
        let t0 = Instant::now();
        while counters.snapshot().acked < want && t0.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let published = rss_kib();
        let s = counters.snapshot();
        println!("links: {n}, connected: {up} in {connect_time:.2?}");
        println!("run_link future: {future_size} bytes");
        println!("RSS meters only: {base} KiB");
        println!(
            "RSS links connected: {connected} KiB (+{} KiB, {:.0} bytes/link)",
            connected - base,
            (connected - base) as f64 * 1024.0 / f64::from(n)
        );
        println!(
            "RSS after {want} messages acked: {published} KiB (+{} KiB, {:.0} bytes/link)",
            published - base,
            (published - base) as f64 * 1024.0 / f64::from(n)
        );
        println!("counters: {s:?}");
        stop_tx.send(true).unwrap();
        let mut flushed = 0;
        for t in tasks {
            if let Ok(Ok(r)) = t.await {
                flushed += u32::from(r.flushed);
            }
        }
        println!("flushed on stop: {flushed}/{n}");
        if let Some(pid) = broker.pid() {
            let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if let Some(l) = s.lines().find(|l| l.starts_with("VmRSS:")) {
                println!("mosquitto {l}");
            }
        }
    });
}
