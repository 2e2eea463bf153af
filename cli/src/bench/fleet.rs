//! `gridloop bench fleet`: N meters in a `gridloop fleet` child process publishing to a broker
//! (a spawned Mosquitto, or the embedded rumqttd in a `gridloop broker` child), a subscriber
//! here checking every message arrives, then a Modbus/TCP load on the fleet's gateways. It
//! reports messages delivered and lost, RSS per meter, Modbus requests/s and requests per
//! server CPU-second (the fleet's CPU during the load minus its CPU in an equal quiet window
//! before it), and pacing overruns. A benchmark: it measures, it does not judge.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, ValueEnum};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sim_core::scenario::PayloadFormat;
use tokio::time::Instant;
use virtual_meter::broker::{free_port, SpawnedMosquitto};

use super::modbus_load::{self, LoadResult, LoadSpec};
use super::procfs::{self, ProcSample};
use crate::exit::{CommandResult, Failure, OrExit, ENVIRONMENT, INVALID_INPUT, SUCCESS};

/// Where the benchmark's default scenario lives (1 Hz telemetry, `rms` fidelity).
pub const DEFAULT_SCENARIO: &str = "scenarios/bench/fleet-1hz.yaml";

#[derive(Debug, Clone, Args)]
pub struct BenchFleetArgs {
    /// The scenario the fleet runs
    #[arg(long, value_name = "FILE", default_value = DEFAULT_SCENARIO)]
    pub scenario: PathBuf,

    /// Meters in the fleet
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub meters: u32,

    /// Wall time of each fleet run, seconds
    #[arg(long, value_name = "S", default_value_t = 60)]
    pub seconds: u64,

    /// Brokers to run the fleet against, one after the other
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [BrokerKind::Mosquitto, BrokerKind::Embedded])]
    pub brokers: Vec<BrokerKind>,

    /// Modbus/TCP client connections in the load phase (0: no load phase)
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub modbus_conns: usize,

    /// Length of the Modbus quiet window and of the load window, seconds
    #[arg(long, value_name = "S", default_value_t = 10)]
    pub modbus_seconds: u64,

    /// The libmodbus C load generator of shared/peers (`modbus_load`); without it the built-in
    /// tokio-modbus client makes the load
    #[arg(long, value_name = "PATH")]
    pub modbus_client: Option<PathBuf>,

    /// First Modbus port of the fleet's gateways
    #[arg(long, value_name = "PORT", default_value_t = 25020)]
    pub modbus_base: u16,

    /// Write the figures as JSON lines to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// A Mosquitto started by the benchmark
    Mosquitto,
    /// rumqttd in a `gridloop broker` child process
    Embedded,
}

/// The figures of one fleet run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FleetFigures {
    pub broker: Option<BrokerKind>,
    pub meters: u32,
    pub seconds: f64,
    /// Messages the meters created, overflowed (ring), and the subscriber received (distinct
    /// (meter, seq)), duplicates, and gaps in seq not explained by overflow.
    pub produced: u64,
    pub overflowed: u64,
    pub received: u64,
    pub duplicates: u64,
    /// Seq numbers the subscriber never saw (overflowed or lost).
    pub gaps: u64,
    pub subscriber_reconnects: u64,
    pub lost: i64,
    pub messages_per_s: f64,
    pub fleet_rss_bytes: u64,
    pub fleet_peak_rss_bytes: u64,
    pub rss_per_meter_bytes: f64,
    pub broker_peak_rss_bytes: u64,
    pub fleet_cpu_s: f64,
    pub overruns: u64,
    /// MQTT reconnections of the meters (a broker dropping connections under load).
    pub reconnects: u64,
    /// Warning lines the fleet logged.
    pub fleet_warnings: usize,
    pub modbus: Option<ModbusFigures>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ModbusFigures {
    pub client: String,
    pub load: LoadResult,
    /// Fleet CPU seconds in the quiet window and in the load window (same length).
    pub quiet_cpu_s: f64,
    pub load_cpu_s: f64,
    /// requests / (load CPU − quiet CPU).
    pub requests_per_server_cpu_s: f64,
}

/// Run the benchmark.
pub fn bench_fleet(args: &BenchFleetArgs) -> CommandResult {
    if !args.scenario.is_file() {
        return Err(Failure::msg(
            INVALID_INPUT,
            format!("no scenario file {}", args.scenario.display()),
        ));
    }
    let gateways = args.meters.div_ceil(virtual_meter::fleet::GATEWAY_UNITS);
    if u32::from(args.modbus_base) + gateways > 65536 || args.modbus_base == 0 {
        return Err(Failure::msg(
            INVALID_INPUT,
            format!(
                "--modbus-base {}: {gateways} gateways need ports up to {}, past 65535",
                args.modbus_base,
                u32::from(args.modbus_base) + gateways - 1
            ),
        ));
    }
    let warm = warmup_seconds(args.meters);
    let needed = warm + 2 * args.modbus_seconds + 5;
    if args.modbus_conns > 0 && args.seconds < needed {
        return Err(Failure::msg(
            INVALID_INPUT,
            format!(
                "--seconds {} is too short for {} meters: ramp-up {warm} s, quiet and load \
                 windows 2 × {} s, 5 s to spare: give at least {needed}",
                args.seconds, args.meters, args.modbus_seconds
            ),
        ));
    }
    let exe = std::env::current_exe()
        .or_exit(ENVIRONMENT, || "cannot find the gridloop binary".into())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .or_exit(ENVIRONMENT, || "cannot start the tokio runtime".into())?;
    let mut all = Vec::new();
    for &kind in &args.brokers {
        let figures = runtime.block_on(one_run(&exe, args, kind, warm))?;
        print_figures(&figures);
        all.push(figures);
    }
    if let Some(path) = &args.json {
        let mut text = String::new();
        for f in &all {
            text += &serde_json::to_string(f)
                .or_exit(ENVIRONMENT, || "cannot encode the figures".into())?;
            text.push('\n');
        }
        std::fs::write(path, text)
            .or_exit(ENVIRONMENT, || format!("cannot write {}", path.display()))?;
    }
    Ok(SUCCESS)
}

/// Seconds before the quiet window: the connection ramp (2,000 per second) and 5 s to settle.
fn warmup_seconds(meters: u32) -> u64 {
    u64::from(meters).div_ceil(2000) + 5
}

/// A child process killed (and reaped) when dropped: every early return of a run stops the
/// fleet it started, so its ports are free again.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A broker for one run, stopped when dropped.
enum Broker {
    Mosquitto(SpawnedMosquitto),
    Embedded { child: Child, addr: SocketAddr },
}

impl Broker {
    fn start(exe: &Path, kind: BrokerKind) -> Result<Broker, Failure> {
        match kind {
            BrokerKind::Mosquitto => SpawnedMosquitto::start()
                .map(Broker::Mosquitto)
                .map_err(|e| Failure::new(ENVIRONMENT, e)),
            BrokerKind::Embedded => {
                let ip = std::net::IpAddr::from([127, 0, 0, 1]);
                let port = free_port(ip).or_exit(ENVIRONMENT, || "no free port".into())?;
                let addr = SocketAddr::new(ip, port);
                let mut child = Command::new(exe)
                    .args(["broker", "--listen", &addr.to_string()])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .or_exit(ENVIRONMENT, || "cannot start `gridloop broker`".into())?;
                let mut line = String::new();
                if let Some(out) = child.stdout.take() {
                    let _ = BufReader::new(out).read_line(&mut line);
                }
                if !line.contains(&addr.to_string()) {
                    let _ = child.kill();
                    return Err(Failure::msg(
                        ENVIRONMENT,
                        format!("`gridloop broker` did not start: {line:?}"),
                    ));
                }
                Ok(Broker::Embedded { child, addr })
            }
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Broker::Mosquitto(m) => m.addr(),
            Broker::Embedded { addr, .. } => *addr,
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Broker::Mosquitto(m) => m.pid(),
            Broker::Embedded { child, .. } => Some(child.id()),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Broker::Embedded { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Per-meter sequence tracking of the subscriber.
#[derive(Debug, Default)]
struct Seen {
    /// meter id → next expected seq.
    next: HashMap<u64, u64>,
    received: u64,
    duplicates: u64,
    /// Sum of forward jumps in seq (messages never seen: overflowed or lost).
    gaps: u64,
    /// CONNACKs the subscriber got (1 = it never reconnected).
    connections: u64,
}

impl Seen {
    fn on(&mut self, meter: u64, seq: u64) {
        let next = self.next.entry(meter).or_insert(0);
        if seq < *next {
            self.duplicates += 1;
            return;
        }
        self.gaps += seq - *next;
        *next = seq + 1;
        self.received += 1;
    }
}

/// Subscribe to every meter topic and count what arrives.
/// The (meter, seq) a decoded payload counts for: split parts (`part` 0..`parts`) share their
/// reading's seq, so only part 0 counts; statuses have no seq.
fn counted(v: &serde_json::Value) -> Option<(u64, u64)> {
    if v["part"].as_u64().unwrap_or(0) != 0 {
        return None;
    }
    Some((v["meter"].as_u64()?, v["seq"].as_u64()?))
}

/// The subscriber's client and its event-loop task (aborted when dropped).
struct Subscriber {
    _client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn subscribe(addr: SocketAddr, seen: Arc<Mutex<Seen>>) -> Result<Subscriber, Failure> {
    let mut opts = MqttOptions::new("gridloop-bench-sub", addr.ip().to_string(), addr.port());
    // A persistent session, subscribed again on every CONNACK: a reconnect under load neither
    // loses the broker's queue for it nor the subscription.
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(false)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 1024);
    let resubscribe = client.clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    let task = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Ok(mut seen) = seen.lock() {
                        seen.connections += 1;
                    }
                    let _ = resubscribe.try_subscribe("gridloop/#", QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if p.topic.ends_with("/status") {
                        continue;
                    }
                    let format = if p.payload.first() == Some(&b'{') {
                        PayloadFormat::Json
                    } else {
                        PayloadFormat::Cbor
                    };
                    if let Some((m, q)) = virtual_meter::mqtt::decode(format, &p.payload)
                        .ok()
                        .as_ref()
                        .and_then(counted)
                    {
                        if let Ok(mut seen) = seen.lock() {
                            seen.on(m, q);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("bench subscriber: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| Failure::msg(ENVIRONMENT, "the subscriber got no SUBACK within 10 s"))?;
    Ok(Subscriber {
        _client: client,
        task,
    })
}

async fn one_run(
    exe: &Path,
    args: &BenchFleetArgs,
    kind: BrokerKind,
    warm: u64,
) -> Result<FleetFigures, Failure> {
    let broker = Broker::start(exe, kind)?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let subscriber = subscribe(broker.addr(), seen.clone()).await?;
    let summary = std::env::temp_dir().join(format!(
        "gridloop-bench-fleet-{}-{kind:?}.json",
        std::process::id()
    ));
    let stderr_path = summary.with_extension("stderr");
    let base = SocketAddr::from(([127, 0, 0, 1], args.modbus_base));
    let fleet = Command::new(exe)
        .arg("fleet")
        .arg(&args.scenario)
        .args(["--meters", &args.meters.to_string()])
        .args(["--gateway", "--modbus-base", &base.to_string()])
        .args(["--broker", &format!("mqtt://{}", broker.addr())])
        .args(["--duration", &format!("{}s", args.seconds)])
        .args(["--event-log", "none", "-q", "--summary-json"])
        .arg(&summary)
        .stdout(Stdio::null())
        // To a file, not a pipe nobody reads until the end: a full pipe would block the
        // fleet's logging (and with it the fleet).
        .stderr(
            std::fs::File::create(&stderr_path).or_exit(ENVIRONMENT, || {
                format!("cannot create {}", stderr_path.display())
            })?,
        )
        .spawn()
        .or_exit(ENVIRONMENT, || "cannot start `gridloop fleet`".into())?;
    let pid = fleet.id();
    let mut fleet = KillOnDrop(fleet);
    let fleet = &mut fleet.0;
    let started = Instant::now();
    eprintln!(
        "bench fleet: {} meters, broker {kind:?} on {}, {} s",
        args.meters,
        broker.addr(),
        args.seconds
    );

    // Quiet window, then the Modbus load window.
    let mut modbus = None;
    let mut steady = ProcSample::default();
    if args.modbus_conns > 0 {
        let window = Duration::from_secs(args.modbus_seconds);
        tokio::time::sleep_until(started + Duration::from_secs(warm)).await;
        let q0 = procfs::sample(pid).unwrap_or_default();
        tokio::time::sleep(window).await;
        let q1 = procfs::sample(pid).unwrap_or_default();
        steady = q1;
        let listeners = args.meters.div_ceil(virtual_meter::fleet::GATEWAY_UNITS);
        let (client, load, l0, l1) = match &args.modbus_client {
            Some(path) => {
                let l0 = procfs::sample(pid).unwrap_or_default();
                let out = Command::new(path)
                    .args(["-h", "127.0.0.1", "-p", &args.modbus_base.to_string()])
                    .args(["-P", &listeners.to_string()])
                    .args(["-c", &args.modbus_conns.to_string()])
                    .args(["-d", &args.modbus_seconds.to_string(), "-w", "0"])
                    .output()
                    .or_exit(ENVIRONMENT, || format!("cannot run {}", path.display()))?;
                let l1 = procfs::sample(pid).unwrap_or_default();
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
                    Failure::msg(
                        ENVIRONMENT,
                        format!(
                            "{} printed no JSON ({e}): {}",
                            path.display(),
                            String::from_utf8_lossy(&out.stderr)
                        ),
                    )
                })?;
                let load = LoadResult {
                    connections: args.modbus_conns,
                    connected: v["connected"].as_u64().unwrap_or(0) as usize,
                    requests: v["requests"].as_u64().unwrap_or(0),
                    errors: v["errors"].as_u64().unwrap_or(0),
                    seconds: v["duration_s"].as_f64().unwrap_or(0.0),
                    requests_per_s: v["rps"].as_f64().unwrap_or(0.0),
                };
                (path.display().to_string(), load, l0, l1)
            }
            None => {
                let targets = (0..listeners)
                    .flat_map(|g| {
                        // In range: checked against 65535 before anything started.
                        let port = args.modbus_base.saturating_add(g as u16);
                        let addr = SocketAddr::from(([127, 0, 0, 1], port));
                        (1..=virtual_meter::fleet::GATEWAY_UNITS).map(move |u| (addr, u as u8))
                    })
                    .collect();
                let spec = LoadSpec {
                    targets,
                    connections: args.modbus_conns,
                    address: virtual_meter::registers::VOLTAGE_L1_REG,
                    count: 4,
                    warmup: Duration::ZERO,
                    duration: window,
                    timeout: Duration::from_secs(5),
                };
                let l0 = procfs::sample(pid).unwrap_or_default();
                let load = modbus_load::run(&spec).await;
                let l1 = procfs::sample(pid).unwrap_or_default();
                ("built-in tokio-modbus client".to_owned(), load, l0, l1)
            }
        };
        let quiet_cpu = (q1.cpu.saturating_sub(q0.cpu)).as_secs_f64();
        let load_secs = load.seconds.max(1e-9);
        let load_cpu = (l1.cpu.saturating_sub(l0.cpu)).as_secs_f64();
        // The quiet window's CPU, scaled to the load window's length, is the fleet's own work.
        let own = quiet_cpu * load_secs / window.as_secs_f64();
        let server_cpu = (load_cpu - own).max(1e-9);
        modbus = Some(ModbusFigures {
            client,
            requests_per_server_cpu_s: load.requests as f64 / server_cpu,
            load,
            quiet_cpu_s: quiet_cpu,
            load_cpu_s: load_cpu,
        });
    }

    // Wait for the fleet to end by itself (its duration plus the drain), sampling it.
    let deadline = started + Duration::from_secs(args.seconds + 120);
    let mut last = procfs::sample(pid).unwrap_or_default();
    let mut broker_peak = 0;
    let status = loop {
        if let Some(status) = fleet
            .try_wait()
            .or_exit(ENVIRONMENT, || "cannot wait for the fleet".into())?
        {
            break status;
        }
        if Instant::now() > deadline {
            let _ = fleet.kill();
            return Err(Failure::msg(ENVIRONMENT, "the fleet did not end in time"));
        }
        if let Some(s) = procfs::sample(pid) {
            last = s;
        }
        if let Some(b) = broker.pid().and_then(procfs::sample) {
            broker_peak = broker_peak.max(b.peak_rss);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let _ = std::fs::remove_file(&stderr_path);
    let warnings = stderr.lines().filter(|l| l.contains(" WARN ")).count();
    if !status.success() {
        return Err(Failure::msg(
            ENVIRONMENT,
            format!("the fleet failed ({status}): {stderr}"),
        ));
    }
    let text = std::fs::read_to_string(&summary)
        .or_exit(ENVIRONMENT, || format!("cannot read {}", summary.display()))?;
    let _ = std::fs::remove_file(&summary);
    let s: serde_json::Value = serde_json::from_str(&text).or_exit(ENVIRONMENT, || {
        format!("bad fleet summary {}", summary.display())
    })?;
    let produced = s["produced"].as_u64().unwrap_or(0);
    let overflowed = s["overflowed"].as_u64().unwrap_or(0);
    // Deliveries still in flight when the fleet exited: wait until nothing new arrives.
    let mut quiet_since = Instant::now();
    let mut count = 0;
    while quiet_since.elapsed() < Duration::from_secs(3) {
        let now = seen.lock().map(|s| s.received).unwrap_or(0);
        if now != count {
            count = now;
            quiet_since = Instant::now();
        }
        if count + overflowed >= produced {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (received, duplicates, gaps, connections) = seen
        .lock()
        .map(|s| (s.received, s.duplicates, s.gaps, s.connections))
        .unwrap_or_default();
    drop(subscriber);
    let seconds = started.elapsed().as_secs_f64();
    let if_zero = |v: u64| if v == 0 { last.rss } else { v };
    Ok(FleetFigures {
        broker: Some(kind),
        meters: args.meters,
        seconds,
        produced,
        overflowed,
        received,
        duplicates,
        gaps,
        subscriber_reconnects: connections.saturating_sub(1),
        lost: produced as i64 - overflowed as i64 - received as i64,
        messages_per_s: received as f64 / args.seconds as f64,
        fleet_rss_bytes: if_zero(steady.rss),
        fleet_peak_rss_bytes: last.peak_rss,
        rss_per_meter_bytes: if_zero(steady.rss) as f64 / f64::from(args.meters.max(1)),
        broker_peak_rss_bytes: broker_peak,
        fleet_cpu_s: last.cpu.as_secs_f64(),
        overruns: s["overruns"].as_u64().unwrap_or(0),
        reconnects: s["mqtt"]["reconnects"].as_u64().unwrap_or(0),
        fleet_warnings: warnings,
        modbus,
    })
}

fn print_figures(f: &FleetFigures) {
    let mut out = std::io::stdout().lock();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let _ = writeln!(
        out,
        "broker {:?}: {} meters, {} produced, {} overflowed, {} received ({:.0} msg/s), {} \
         duplicates, {} lost; fleet RSS {:.1} MiB steady ({:.0} B per meter, peak {:.1} MiB), \
         broker peak {:.1} MiB, fleet CPU {:.1} s, {} overruns, {} reconnects (subscriber {})",
        f.broker.unwrap_or(BrokerKind::Mosquitto),
        f.meters,
        f.produced,
        f.overflowed,
        f.received,
        f.messages_per_s,
        f.duplicates,
        f.lost,
        mib(f.fleet_rss_bytes),
        f.rss_per_meter_bytes,
        mib(f.fleet_peak_rss_bytes),
        mib(f.broker_peak_rss_bytes),
        f.fleet_cpu_s,
        f.overruns,
        f.reconnects,
        f.subscriber_reconnects
    );
    if let Some(m) = &f.modbus {
        let _ = writeln!(
            out,
            "  modbus ({}): {} of {} connections, {:.0} req/s, {} errors; fleet CPU {:.2} s \
             quiet vs {:.2} s loaded → {:.0} requests per server CPU-second",
            m.client,
            m.load.connected,
            m.load.connections,
            m.load.requests_per_s,
            m.load.errors,
            m.quiet_cpu_s,
            m.load_cpu_s,
            m.requests_per_server_cpu_s
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_counts_gaps_and_duplicates_per_meter() {
        let mut s = Seen::default();
        for (m, q) in [(1, 0), (1, 1), (2, 0), (1, 1), (1, 4), (2, 1), (1, 5)] {
            s.on(m, q);
        }
        assert_eq!(s.received, 6);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.gaps, 2);
    }

    #[test]
    fn only_part_zero_of_a_split_reading_counts() {
        let whole = serde_json::json!({"meter": 7, "seq": 3, "kind": "reading"});
        assert_eq!(counted(&whole), Some((7, 3)));
        let p0 = serde_json::json!({"meter": 7, "seq": 4, "part": 0, "parts": 3});
        let p1 = serde_json::json!({"meter": 7, "seq": 4, "part": 1, "parts": 3});
        assert_eq!(counted(&p0), Some((7, 4)));
        assert_eq!(counted(&p1), None);
        let status = serde_json::json!({"meter": 7, "status": "online"});
        assert_eq!(counted(&status), None);
    }

    #[test]
    fn warmup_covers_the_connection_ramp() {
        assert_eq!(warmup_seconds(10_000), 10);
        assert_eq!(warmup_seconds(1), 6);
    }
}
