//! A closed-loop Modbus/TCP load generator (tokio-modbus client): C connections, each reading
//! `count` holding registers at `address` back to back, for a fixed time. The built-in
//! stand-in for the libmodbus C client of `shared/peers` when that one is not built.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_modbus::client::{tcp, Reader};
use tokio_modbus::Slave;

/// What to load.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Connection `i` goes to `targets[i % len]` (address, unit id).
    pub targets: Vec<(SocketAddr, u8)>,
    pub connections: usize,
    pub address: u16,
    pub count: u16,
    pub warmup: Duration,
    pub duration: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// What the load saw in the measured window.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct LoadResult {
    pub connections: usize,
    pub connected: usize,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub requests_per_s: f64,
}

/// Run the load; returns when the measured window is over (every connection stops by then).
pub async fn run(spec: &LoadSpec) -> LoadResult {
    let measuring = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + spec.warmup + spec.duration;
    let mut tasks = Vec::with_capacity(spec.connections);
    for i in 0..spec.connections {
        let Some(&(addr, unit)) = spec.targets.get(i % spec.targets.len().max(1)) else {
            break;
        };
        let (measuring, requests, errors, connected) = (
            measuring.clone(),
            requests.clone(),
            errors.clone(),
            connected.clone(),
        );
        let (address, count, timeout) = (spec.address, spec.count, spec.timeout);
        tasks.push(tokio::spawn(async move {
            let Ok(Ok(mut ctx)) =
                tokio::time::timeout(timeout, tcp::connect_slave(addr, Slave(unit))).await
            else {
                return;
            };
            connected.fetch_add(1, Ordering::Relaxed);
            while Instant::now() < end {
                let r =
                    tokio::time::timeout(timeout, ctx.read_holding_registers(address, count)).await;
                let counting = measuring.load(Ordering::Relaxed);
                match r {
                    Ok(Ok(Ok(_))) if counting => {
                        requests.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(Ok(_))) => {}
                    // A Modbus exception: the connection itself is fine.
                    Ok(Ok(Err(_))) => {
                        if counting {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // A transport error or a timeout: the connection is gone or unusable; end
                    // it rather than spin on a dead socket.
                    Ok(Err(_)) | Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(spec.warmup).await;
    let start = Instant::now();
    let before = requests.load(Ordering::Relaxed);
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep_until(end).await;
    measuring.store(false, Ordering::Relaxed);
    let seconds = start.elapsed().as_secs_f64();
    let done = requests.load(Ordering::Relaxed) - before;
    for t in tasks {
        let _ = t.await;
    }
    LoadResult {
        connections: spec.connections,
        connected: connected.load(Ordering::Relaxed) as usize,
        requests: done,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        requests_per_s: done as f64 / seconds.max(1e-9),
    }
}
