//! `gridloop head-end`: the head-end on its own, against any fleet or real meters — subscribe
//! to the meters' MQTT telemetry (persistent session, substation partitions or a shared
//! subscription), poll Modbus meters with the encoding handshake, raise alarms, keep them in a
//! durable store (restored at start) and print each one, until `--duration` or Ctrl-C.
//!
//! Alarms go to stdout (a human line, or JSON Lines with `--json-alarms`); everything else —
//! the broker, the restored count, the final summary — to stderr, so stdout stays parseable.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use head_end::poller::{run_poller, PollTarget, PollerConfig, PollerReport};
use head_end::subscriber::now_ms;
use head_end::{
    run_head_end, AlarmRecord, AlarmStore, HeadEndCore, HeadEndReport, IngestStats, MeterInfo,
    Outputs, PollEvent, StoreError, SubscriberConfig,
};
use scenarios::duration::DurationValue;
use sim_core::encoding::RegisterEncoding;
use sim_core::scenario::HeadEndSpec;
use tokio::sync::{mpsc, oneshot, watch};
use virtual_meter::broker::{BrokerUrl, RunningBroker};
use virtual_meter::fleet::{FleetPlan, ModbusLayout, Shard};
use virtual_meter::mqtt::meter_name;
use virtual_meter::registers::parse_encoding;

use crate::exit::{CommandResult, Failure, OrExit, ENVIRONMENT, INVALID_INPUT, SUCCESS};
use crate::load;

/// Longest wait at start for the broker to accept a connection and acknowledge the
/// subscription.
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(10);

/// `gridloop head-end`: run the head-end standalone.
#[derive(Debug, Clone, Args)]
pub struct HeadEndArgs {
    /// Broker the meters publish to: `mqtt://HOST[:PORT]`, `embedded` (rumqttd in this
    /// process), `spawn:mosquitto` (a local Mosquitto started here), or `none` (Modbus polling
    /// only)
    #[arg(long, value_name = "URL", default_value = "mqtt://127.0.0.1:1883")]
    pub broker: String,

    /// Only this substation's topics (`gridloop/NAME/…`); repeat for several. Partition a fleet
    /// among head-ends this way [default: every substation]
    #[arg(long = "substation", value_name = "NAME", value_parser = topic_level)]
    pub substations: Vec<String>,

    /// Share the subscription with the other head-ends of GROUP (`$share/GROUP/…`): the broker
    /// gives each message to one of them
    #[arg(long, value_name = "GROUP", value_parser = topic_level)]
    pub share: Option<String>,

    /// MQTT client id; keep it the same across restarts so the broker keeps the session and
    /// queues messages while the head-end is down [default: gridloop-head-end-HOSTNAME]
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,

    /// Start a clean session (the broker forgets what it queued for this client id)
    #[arg(long)]
    pub clean_session: bool,

    /// The alarm store (JSON Lines, one alarm per line, synced before messages are
    /// acknowledged); alarms in it are restored at start and not raised again
    #[arg(long, value_name = "FILE", default_value = "alarms.jsonl")]
    pub store: PathBuf,

    /// A meter with nothing newer than this is STALE (e.g. 180s, 5min)
    #[arg(long, value_name = "DURATION", default_value = "180s", value_parser = positive_duration)]
    pub stale_after: Duration,

    /// Poll a meter over Modbus/TCP (unit id after `@`; without one the meter has the port to
    /// itself); repeat for several. Meters get ids 2147483648, 2147483649, … (2^31 + k, clear
    /// of fleet meter ids) in the order given
    #[arg(long = "poll", value_name = "HOST:PORT[@UNIT]", value_parser = poll_address)]
    pub poll: Vec<PollAddress>,

    /// Analog encoding the polled meters are expected to use: float32, float32:ORDER,
    /// int16:SCALE, uint32:SCALE or uint32:SCALE:ORDER (ORDER: abcd, cdab, badc, dcba)
    /// [default: float32 for --poll; each group's encoding for --poll-fleet]
    #[arg(long, value_name = "ENCODING", value_parser = encoding)]
    pub encoding: Option<RegisterEncoding>,

    /// How often each polled meter is read
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = positive_duration)]
    pub poll_interval: Duration,

    /// Modbus request and connect timeout
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = positive_duration)]
    pub timeout: Duration,

    /// Modbus attempts after a failed one before a meter is UNREACHABLE
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub retries: u32,

    /// Poll every meter a `gridloop fleet SCENARIO` with the same --modbus-base, --gateway,
    /// --meters and --shard serves, with its group's encoding and its names
    #[arg(long, value_name = "SCENARIO", conflicts_with = "poll")]
    pub poll_fleet: Option<PathBuf>,

    /// With --poll-fleet: the fleet's first Modbus/TCP address
    #[arg(
        long,
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:15020",
        requires = "poll_fleet"
    )]
    pub modbus_base: SocketAddr,

    /// With --poll-fleet: the fleet serves its meters behind gateways (unit ids 1..=247)
    #[arg(long, requires = "poll_fleet")]
    pub gateway: bool,

    /// With --poll-fleet: meters in the whole fleet [default: the scenario's own counts]
    #[arg(long, value_name = "N", requires = "poll_fleet", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub meters: Option<u32>,

    /// With --poll-fleet: poll part I of N of the fleet (as `gridloop fleet --shard I/N`)
    #[arg(long, value_name = "I/N", requires = "poll_fleet", value_parser = shard)]
    pub shard: Option<Shard>,

    /// Stop after this long (e.g. 30s) instead of at Ctrl-C
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub duration: Option<Duration>,

    /// Print each alarm as a JSON line (the store's format) instead of a human line
    #[arg(long)]
    pub json_alarms: bool,

    /// Print only alarms and the final summary
    #[arg(long, short)]
    pub quiet: bool,
}

/// One `--poll` address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollAddress {
    pub addr: SocketAddr,
    pub unit: Option<u8>,
}

impl std::fmt::Display for PollAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.unit {
            Some(u) => write!(f, "{}@{u}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// A wall-clock duration greater than zero (`30s`, `500ms`, `5min`; cycles are refused).
pub fn positive_duration(text: &str) -> Result<Duration, String> {
    let seconds = match scenarios::duration::parse_duration(text)? {
        DurationValue::Seconds(s) => s,
        DurationValue::Cycles(_) => {
            return Err(format!("`{text}` is in cycles; give a time such as 30s"))
        }
    };
    match Duration::try_from_secs_f64(seconds) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("`{text}` is not a positive length of time")),
    }
}

/// `HOST:PORT[@UNIT]`, the host resolved now.
pub fn poll_address(text: &str) -> Result<PollAddress, String> {
    let (host_port, unit) = match text.rsplit_once('@') {
        Some((hp, u)) => {
            let unit: u8 = u
                .trim()
                .parse()
                .map_err(|_| format!("unit id `{u}` is not a number 0..=255"))?;
            (hp, Some(unit))
        }
        None => (text, None),
    };
    let addr = host_port
        .to_socket_addrs()
        .map_err(|e| format!("`{host_port}` is not HOST:PORT: {e}"))?
        .next()
        .ok_or_else(|| format!("`{host_port}` resolves to no address"))?;
    Ok(PollAddress { addr, unit })
}

/// The `--encoding` syntax of `gridloop meter`.
pub fn encoding(text: &str) -> Result<RegisterEncoding, String> {
    parse_encoding(text).ok_or_else(|| {
        format!(
            "`{text}`: expected float32[:ORDER], int16:SCALE or uint32:SCALE[:ORDER] (ORDER: \
             abcd, cdab, badc, dcba)"
        )
    })
}

fn shard(text: &str) -> Result<Shard, String> {
    Shard::parse(text).map_err(|e| e.to_string())
}

/// One MQTT topic level: not empty, no `/`, `+` or `#`.
fn topic_level(text: &str) -> Result<String, String> {
    if text.is_empty() || text.contains(['/', '+', '#', '\0']) {
        return Err(format!(
            "`{text}` is not one MQTT topic level (non-empty, without / + #)"
        ));
    }
    Ok(text.to_owned())
}

/// `gridloop-head-end-<hostname>` (stable across restarts), else `…-<pid>`.
pub fn default_client_id() -> String {
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| {
            h.trim()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        })
        .filter(|h| !h.is_empty());
    match host {
        Some(h) => format!("gridloop-head-end-{h}"),
        None => format!("gridloop-head-end-{}", std::process::id()),
    }
}

/// Ids of `--poll` meters start here: a fleet's meters (numbered from 0 in their payloads)
/// never collide with them in the head-end's tables or its store.
pub const POLL_ID_BASE: u32 = 1 << 31;

/// The Modbus targets the flags name (empty without `--poll`/`--poll-fleet`).
fn poll_targets(args: &HeadEndArgs) -> Result<Vec<PollTarget>, Failure> {
    let mut targets = Vec::new();
    for (k, p) in args.poll.iter().enumerate() {
        targets.push(PollTarget {
            meter: POLL_ID_BASE + k as u32,
            info: MeterInfo {
                name: p.to_string(),
                substation: String::new(),
                group: String::new(),
            },
            addr: p.addr,
            unit: p.unit,
            expected: args.encoding.unwrap_or_default(),
            interval: args.poll_interval,
            channels: 3,
            epoch_ms: None,
        });
    }
    if let Some(file) = &args.poll_fleet {
        let scenario = load::load_one(Some(file))?;
        let layout = if args.gateway {
            ModbusLayout::Gateway {
                base: args.modbus_base,
            }
        } else {
            ModbusLayout::PortPerMeter {
                base: args.modbus_base,
            }
        };
        let plan = FleetPlan::new(
            &scenario,
            args.meters,
            args.shard.unwrap_or(Shard::ALL),
            layout,
        )
        .map_err(|e| Failure::new(INVALID_INPUT, e))?;
        let channels = plan.scenario.grid.channels();
        for m in &plan.meters {
            let Some(ep) = m.modbus else { continue };
            let group = &plan.scenario.groups[m.which.group];
            targets.push(PollTarget {
                meter: m.id,
                info: MeterInfo {
                    name: meter_name(&group.name, m.which.index),
                    substation: group.substation.clone(),
                    group: group.name.clone(),
                },
                addr: ep.addr,
                unit: ep.unit,
                expected: args.encoding.unwrap_or(group.registers),
                interval: args.poll_interval,
                channels,
                // The fleet's grid time 0 is not known here: readings get their receive time.
                epoch_ms: None,
            });
        }
    }
    Ok(targets)
}

/// Run the command.
pub fn head_end(args: &HeadEndArgs) -> CommandResult {
    let broker = if args.broker.eq_ignore_ascii_case("none") {
        None
    } else {
        let url = BrokerUrl::parse(&args.broker)
            .map_err(|e| Failure::msg(INVALID_INPUT, format!("--broker: {e}")))?;
        url.transport_supported()
            .map_err(|e| Failure::msg(INVALID_INPUT, format!("--broker: {e}")))?;
        Some(url)
    };
    let targets = poll_targets(args)?;
    if broker.is_none() && targets.is_empty() {
        return Err(Failure::msg(
            INVALID_INPUT,
            "--broker none and nothing to poll: give --poll HOST:PORT or --poll-fleet SCENARIO",
        ));
    }
    if broker.is_none() && (!args.substations.is_empty() || args.share.is_some()) {
        return Err(Failure::msg(
            INVALID_INPUT,
            "--substation and --share select MQTT topics; they need a --broker",
        ));
    }
    let (store, restored) = AlarmStore::open(&args.store).map_err(|e| match e {
        e @ StoreError::Corrupt { .. } => Failure::msg(INVALID_INPUT, format!("--store: {e}")),
        e => Failure::msg(ENVIRONMENT, format!("--store: {e}")),
    })?;
    let client_id = args.client_id.clone().unwrap_or_else(default_client_id);
    let mut core = HeadEndCore::new(
        HeadEndSpec {
            stale_after: args.stale_after.as_secs_f64(),
        },
        &client_id,
    );
    core.restore(&restored, now_ms());
    let now = now_ms();
    for t in &targets {
        core.expect_meter(t.meter, t.info.clone(), now);
    }
    if !args.quiet {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "head-end {client_id}: restored {} alarm{} from {}",
            restored.len(),
            if restored.len() == 1 { "" } else { "s" },
            args.store.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .or_exit(ENVIRONMENT, || "cannot start the tokio runtime".into())?;
    let ended = runtime.block_on(run(args, broker, core, store, targets, &client_id))?;
    let mut err = std::io::stderr().lock();
    writeln!(err, "{}", ended.summary_line(args, restored.len()))
        .or_exit(ENVIRONMENT, || "cannot write to stderr".into())?;
    Ok(SUCCESS)
}

/// What a run did, for the summary line.
#[derive(Debug, Default)]
struct Ended {
    interrupted: bool,
    ingest: IngestStats,
    mqtt: Option<HeadEndReport>,
    poller: Option<PollerReport>,
    alarms: BTreeMap<&'static str, u64>,
    stored: u64,
}

impl Ended {
    fn summary_line(&self, args: &HeadEndArgs, restored: usize) -> String {
        let i = &self.ingest;
        let mut line = format!(
            "{}: {} messages, {} unique, {} duplicates, {} refused, {} statuses",
            if self.interrupted {
                "interrupted"
            } else {
                "done"
            },
            i.messages,
            i.unique,
            i.duplicates,
            i.refused,
            i.statuses
        );
        let alarms: u64 = self.alarms.values().sum();
        line.push_str(&format!(
            "; {alarms} alarm{}",
            if alarms == 1 { "" } else { "s" }
        ));
        if alarms > 0 {
            let kinds: Vec<String> = self
                .alarms
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect();
            line.push_str(&format!(" ({})", kinds.join(", ")));
        }
        line.push_str(&format!(
            ", {} stored in {} ({restored} restored)",
            self.stored,
            args.store.display()
        ));
        if let Some(m) = &self.mqtt {
            line.push_str(&format!(
                "; mqtt: {} connects, {} connection errors, {} acked, {} alarms published",
                m.connects, m.connection_errors, m.acked, m.alarms_published
            ));
        }
        if let Some(p) = &self.poller {
            line.push_str(&format!(
                "; poller: {} polls, {} answered, {} readings ({} stored, {} refused), {} \
                 timeouts, {} retries, {} exceptions, {} unreachable, {} handshakes, {} \
                 mismatches",
                p.polls,
                p.answered,
                p.readings,
                i.polled,
                i.polled_refused,
                p.timeouts,
                p.retries,
                p.exceptions,
                p.unreachable_episodes,
                p.handshakes,
                p.mismatches
            ));
        }
        line
    }
}

/// `HH:MM:SS.mmm` (UTC) of a Unix-ms time.
pub fn clock(unix_ms: u64) -> String {
    let day_ms = unix_ms % 86_400_000;
    let (h, rest) = (day_ms / 3_600_000, day_ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    format!("{h:02}:{m:02}:{:02}.{:03}", rest / 1000, rest % 1000)
}

/// The human line of an alarm:
/// `ALARM TRIP UV_TRIP_0x01 feeder-a-0003 L1 source 12:00:01.234 latency 12 ms`.
pub fn alarm_line(a: &AlarmRecord) -> String {
    let mut s = format!("ALARM {}", a.kind.name());
    if let Some(code) = &a.code {
        s.push(' ');
        s.push_str(code);
    }
    if a.name.is_empty() {
        s.push_str(&format!(" meter-{}", a.meter));
    } else {
        s.push(' ');
        s.push_str(&a.name);
    }
    if let Some(p) = &a.phase {
        s.push(' ');
        s.push_str(p);
    }
    match a.source_ms {
        Some(t) => s.push_str(&format!(" source {}", clock(t))),
        None => s.push_str(&format!(" received {}", clock(a.receive_ms))),
    }
    if let Some(l) = a.latency_ms {
        s.push_str(&format!(" latency {l} ms"));
    }
    if let Some(d) = a.dropped {
        s.push_str(&format!(" dropped {d}"));
    }
    if let Some(d) = &a.detail {
        s.push_str(": ");
        s.push_str(d);
    }
    s
}

/// Print alarms as they come until the channel closes; counts by kind.
async fn print_alarms(
    mut rx: mpsc::UnboundedReceiver<AlarmRecord>,
    json: bool,
) -> BTreeMap<&'static str, u64> {
    let mut counts = BTreeMap::new();
    while let Some(a) = rx.recv().await {
        *counts.entry(a.kind.name()).or_insert(0) += 1;
        let line = if json {
            match serde_json::to_string(&a) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("cannot encode an alarm: {e}");
                    continue;
                }
            }
        } else {
            alarm_line(&a)
        };
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            // stdout closed (a pipe's reader went away): keep counting, stop printing.
            tracing::debug!("stdout closed");
        }
    }
    counts
}

/// Connect to (or start) the broker; exit 3 when it cannot be reached.
async fn reach_broker(url: BrokerUrl) -> Result<RunningBroker, Failure> {
    let running = tokio::task::spawn_blocking(move || crate::mqtt_links::start(&url))
        .await
        .map_err(|e| Failure::msg(ENVIRONMENT, format!("broker start failed: {e}")))??;
    if let RunningBroker::External { url, addr } = &running {
        match tokio::time::timeout(BROKER_START_TIMEOUT, tokio::net::TcpStream::connect(addr)).await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(Failure::msg(
                    ENVIRONMENT,
                    format!("cannot reach the broker {url} at {addr}: {e}"),
                ))
            }
            Err(_) => {
                return Err(Failure::msg(
                    ENVIRONMENT,
                    format!(
                        "cannot reach the broker {url} at {addr}: no connection within {} s",
                        BROKER_START_TIMEOUT.as_secs()
                    ),
                ))
            }
        }
    }
    Ok(running)
}

async fn run(
    args: &HeadEndArgs,
    broker: Option<BrokerUrl>,
    core: HeadEndCore,
    store: AlarmStore,
    targets: Vec<PollTarget>,
    client_id: &str,
) -> Result<Ended, Failure> {
    let running = match broker {
        Some(url) => Some(reach_broker(url).await?),
        None => None,
    };
    if let (Some(r), false) = (&running, args.quiet) {
        let _ = writeln!(std::io::stderr().lock(), "{r}");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let (alarm_tx, alarm_rx) = mpsc::unbounded_channel();
    let printer = tokio::spawn(print_alarms(alarm_rx, args.json_alarms));

    let polling = !targets.is_empty();
    let (poll_tx, poll_rx) = mpsc::channel::<PollEvent>(4096);
    let poller = polling.then(|| {
        if !args.quiet {
            let addrs: std::collections::BTreeSet<SocketAddr> =
                targets.iter().map(|t| t.addr).collect();
            let _ = writeln!(
                std::io::stderr().lock(),
                "head-end {client_id}: polling {} meter{} on {} Modbus address{} every {:?}",
                targets.len(),
                if targets.len() == 1 { "" } else { "s" },
                addrs.len(),
                if addrs.len() == 1 { "" } else { "es" },
                args.poll_interval
            );
        }
        let cfg = PollerConfig {
            timeout: args.timeout,
            retries: args.retries,
            ..PollerConfig::default()
        };
        tokio::spawn(run_poller(targets, cfg, poll_tx, stop_rx.clone()))
    });
    let polls = polling.then_some(poll_rx);

    let mut ended = Ended::default();
    let mut task = match &running {
        Some(r) => {
            let mut cfg = SubscriberConfig::new(r.addr(), client_id);
            cfg.substations.clone_from(&args.substations);
            cfg.share_group.clone_from(&args.share);
            cfg.clean_session = args.clean_session;
            let filters = cfg.filters();
            let (subscribed_tx, subscribed_rx) = oneshot::channel();
            let outputs = Outputs {
                alarms: Some(alarm_tx),
                polls,
                subscribed: Some(subscribed_tx),
                progress: None,
            };
            let task = tokio::spawn(async move {
                run_head_end(cfg, core, Some(store), outputs, stop_rx)
                    .await
                    .map(|(report, core)| (Some(report), core.stats(), 0))
                    .map_err(|e| e.to_string())
            });
            match tokio::time::timeout(BROKER_START_TIMEOUT, subscribed_rx).await {
                Ok(Ok(())) => {}
                outcome => {
                    let _ = stop_tx.send(true);
                    let why = match task.await {
                        Ok(Err(e)) => e,
                        _ if outcome.is_err() => format!(
                            "no subscription acknowledged within {} s",
                            BROKER_START_TIMEOUT.as_secs()
                        ),
                        _ => "the head-end stopped before subscribing".to_owned(),
                    };
                    return Err(Failure::msg(
                        ENVIRONMENT,
                        format!("broker {}: {why}", r.addr()),
                    ));
                }
            }
            if !args.quiet {
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "head-end {client_id}: subscribed at {} to {} ({} session)",
                    r.addr(),
                    filters.join(" "),
                    if args.clean_session {
                        "clean"
                    } else {
                        "persistent"
                    }
                );
            }
            task
        }
        None => tokio::spawn(async move {
            poll_only(core, store, polls, alarm_tx, stop_rx)
                .await
                .map(|(stats, stored)| (None, stats, stored))
                .map_err(|e| e.to_string())
        }),
    };

    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let until = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let early = tokio::select! {
        () = until => None,
        _ = &mut ctrl_c => { ended.interrupted = true; None }
        done = &mut task => Some(done),
    };
    let _ = stop_tx.send(true);
    let done = match early {
        Some(done) => done,
        None => task.await,
    };
    let (mqtt, ingest, stored) = done
        .map_err(|e| Failure::msg(ENVIRONMENT, format!("the head-end task failed: {e}")))?
        .map_err(|e| Failure::msg(ENVIRONMENT, format!("head-end: {e}")))?;
    ended.stored = mqtt.as_ref().map_or(stored, |m| m.alarms_stored);
    ended.mqtt = mqtt;
    ended.ingest = ingest;
    if let Some(p) = poller {
        ended.poller = p.await.ok();
    }
    ended.alarms = printer.await.unwrap_or_default();
    drop(running);
    Ok(ended)
}

/// The head-end without MQTT (`--broker none`): poll events and stale checks into the core,
/// alarms synced to the store, then printed. Returns the ingest counters and alarms stored.
async fn poll_only(
    mut core: HeadEndCore,
    mut store: AlarmStore,
    polls: Option<mpsc::Receiver<PollEvent>>,
    alarms: mpsc::UnboundedSender<AlarmRecord>,
    mut stop: watch::Receiver<bool>,
) -> Result<(IngestStats, u64), StoreError> {
    let mut stale = tokio::time::interval(Duration::from_secs(1));
    stale.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut polls = polls;
    let mut out = Vec::new();
    let mut stored = 0u64;
    loop {
        tokio::select! {
            biased;
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
            ev = async { match polls.as_mut() { Some(p) => p.recv().await, None => None } }, if polls.is_some() => {
                match ev {
                    Some(ev) => core.on_poll(ev, now_ms(), &mut out),
                    None => polls = None,
                }
            }
            _ = stale.tick() => core.check_stale(now_ms(), &mut out),
        }
        if !out.is_empty() {
            store.append(&out)?;
            stored += out.len() as u64;
            for a in out.drain(..) {
                let _ = alarms.send(a);
            }
        }
    }
    Ok((core.stats(), stored))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use head_end::Kind;

    fn alarm(kind: Kind) -> AlarmRecord {
        AlarmRecord {
            kind,
            code: None,
            meter: 7,
            name: String::new(),
            substation: String::new(),
            group: String::new(),
            seq: None,
            phase: None,
            value: None,
            limit: None,
            dropped: None,
            overflow: None,
            source_ms: None,
            receive_ms: 0,
            latency_ms: None,
            detail: None,
            instance: "he".into(),
        }
    }

    #[test]
    fn human_alarm_lines() {
        // 2023-11-14T12:00:01.234Z
        let t = 1_699_963_201_234;
        let mut a = alarm(Kind::Trip);
        a.code = Some("UV_TRIP_0x01".into());
        a.name = "feeder-a-0003".into();
        a.phase = Some("L1".into());
        a.source_ms = Some(t);
        a.receive_ms = t + 12;
        a.latency_ms = Some(12);
        assert_eq!(
            alarm_line(&a),
            "ALARM TRIP UV_TRIP_0x01 feeder-a-0003 L1 source 12:00:01.234 latency 12 ms"
        );
        let mut b = alarm(Kind::EncodingMismatch);
        b.receive_ms = 59_999;
        b.detail = Some("expected float32".into());
        assert_eq!(
            alarm_line(&b),
            "ALARM ENCODING_MISMATCH meter-7 received 00:00:59.999: expected float32"
        );
        assert_eq!(clock(86_400_000 + 3_600_000 * 23 + 61_001), "23:01:01.001");
    }

    #[test]
    fn flag_values() {
        assert_eq!(positive_duration("180s").unwrap(), Duration::from_secs(180));
        assert_eq!(
            positive_duration("250ms").unwrap(),
            Duration::from_millis(250)
        );
        for bad in ["0s", "-1s", "10cycles", "soon", ""] {
            assert!(positive_duration(bad).is_err(), "{bad}");
        }
        let p = poll_address("127.0.0.1:1502@3").unwrap();
        assert_eq!(p.addr, "127.0.0.1:1502".parse().unwrap());
        assert_eq!(p.unit, Some(3));
        assert_eq!(p.to_string(), "127.0.0.1:1502@3");
        assert_eq!(poll_address("127.0.0.1:502").unwrap().unit, None);
        for bad in ["127.0.0.1", "127.0.0.1:502@300", "127.0.0.1:502@x", ":x"] {
            assert!(poll_address(bad).is_err(), "{bad}");
        }
        assert_eq!(
            encoding("int16:0.1").unwrap(),
            RegisterEncoding::Int16 { scale: 0.1 }
        );
        assert!(encoding("float64").is_err());
        assert!(topic_level("sub-01").is_ok());
        for bad in ["", "a/b", "+", "#"] {
            assert!(topic_level(bad).is_err(), "{bad}");
        }
        assert!(default_client_id().starts_with("gridloop-head-end-"));
    }
}
