//! `gridloop run --mode live`: the scenario's meters, a broker and the head-end on real sockets
//! in real time, judged by the same expectations as sim mode.
//!
//! One run: start the broker (embedded unless `--broker`), the head-end (MQTT subscriber with
//! its durable alarm store), every meter of the scenario (`LiveMeter`s with sim mode's seeds,
//! each with its MQTT link), pace them on the wall clock, flush the links at the end, wait until
//! the head-end has handled every message the broker acknowledged (bounded), and gather
//! sim-core [`Observations`] from the meters' own records and the head-end's alarms. Alarm
//! latency is end to end: the disturbance onset at the source (grid time, whose Unix epoch is
//! the run's start) to the alarm raised at the head-end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use head_end::poller::{run_poller, PollTarget, PollerConfig};
use head_end::{
    run_head_end, AlarmRecord, AlarmStore, HeadEndCore, Kind, MeterInfo, Outputs, SubscriberConfig,
};
use sim_core::grid::Phase;
use sim_core::harness::{derive_seed, observe, MeterRecord, Observations, ProbeRecord, RunFacts};
use sim_core::head_end::{Alarm, AlarmKind};
use sim_core::outcome::{ExpectationOutcome, ScenarioOutcome, TimelineEntry};
use sim_core::scenario::{EventCode, LinkSpec};
use sim_core::{Scenario, Seconds};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use virtual_meter::broker::{
    start_broker, BrokerError, BrokerUrl, EmbeddedBroker, EmbeddedConfig, RunningBroker,
};
use virtual_meter::fleet::GATEWAY_UNITS;
use virtual_meter::live::group_model;
use virtual_meter::mqtt::meter_name;
use virtual_meter::pacing::{run_paced_with, PacingProgress, PacingStats};
use virtual_meter::service::{serve, Units};
use virtual_meter::{
    spawn_proxy, ImpairProfile, LiveMeter, MapOptions, MeterRef, RegisterMap, SharedMeter,
};

use crate::mqtt_links::{epoch_now_ms, Links, MqttArgs};

/// Settings of a live run.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    pub broker: BrokerUrl,
    /// Pacing step: meters are advanced to the wall clock this often.
    pub step: Duration,
    /// Longest wait, after the links flushed, for the head-end to handle what the broker
    /// acknowledged.
    pub drain: Duration,
    /// Payload, MTU, in-flight window and connection ramp of the meters' links.
    pub mqtt: MqttArgs,
    /// Keep the alarm store as `DIR/<scenario>.alarms.jsonl` (else a scratch file).
    pub alarm_store: Option<std::path::PathBuf>,
    /// Head-end instances, each taking whole substations [default: one per substation].
    pub head_ends: Option<usize>,
    /// The head-end polls every meter's Modbus registers this often (through the group's
    /// impairment proxy); `None`: no polling, MQTT only.
    pub poll: Option<Duration>,
}

/// Seed streams of the impairment proxies (see `harness::derive_seed`).
const MQTT_STREAM: u64 = 7;
const MODBUS_STREAM: u64 = 8;

/// Expectation kind of a run that could not take place (broker, sockets).
pub const ENVIRONMENT_KIND: &str = "live environment";

/// Run `scenario` live; `file` is the path shown in reports.
pub fn run_live(scenario: &Scenario, file: &str, opts: &LiveOptions) -> ScenarioOutcome {
    live_outcome(scenario, file, observe_live(scenario, opts))
}

/// Run `scenario` live and return what it observed (the meters' own records included), or why
/// the run could not take place.
pub fn observe_live(scenario: &Scenario, opts: &LiveOptions) -> Result<Observations, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))
        .and_then(|rt| rt.block_on(live(scenario, opts)))
}

/// The outcome of a live run from its observations: the expectations judged on them, or one
/// failed [`ENVIRONMENT_KIND`] expectation saying why the run could not take place.
pub fn live_outcome(
    scenario: &Scenario,
    file: &str,
    result: Result<Observations, String>,
) -> ScenarioOutcome {
    let (obs, expectations) = match result {
        Ok(obs) => {
            let ex = sim_core::expect::evaluate(scenario, &obs);
            (Some(obs), ex)
        }
        Err(why) => (
            None,
            vec![ExpectationOutcome {
                index: 0,
                kind: ENVIRONMENT_KIND,
                label: "the live run takes place".to_owned(),
                passed: false,
                expected: "broker, meters and head-end running".to_owned(),
                measured: why,
                detail: None,
            }],
        ),
    };
    let obs = obs.unwrap_or_else(|| Observations {
        meters: Vec::new(),
        probes: Vec::new(),
        pq_events: Vec::new(),
        trip_alarms: Vec::new(),
        stats: Default::default(),
        timeline: Vec::new(),
        plots: Default::default(),
    });
    ScenarioOutcome {
        name: scenario.name.clone(),
        file: file.to_owned(),
        description: scenario.description.clone(),
        tags: scenario.tags.clone(),
        seed: scenario.seed,
        mode: "live",
        duration: scenario.duration,
        stats: obs.stats,
        expectations,
        timeline: obs.timeline,
        plots: obs.plots,
    }
}

/// The live run itself, on the caller's runtime (`--mode hil` runs it after programming its
/// sources).
pub(crate) async fn live(scenario: &Scenario, opts: &LiveOptions) -> Result<Observations, String> {
    let url = opts.broker.clone();
    let broker = tokio::task::spawn_blocking(move || start_live_broker(&url))
        .await
        .map_err(|e| format!("broker start failed: {e}"))?
        .map_err(|e| e.to_string())?;
    let broker_addr = broker.addr();
    tracing::info!("live {}: {broker}", scenario.name);

    // The meters, as sim mode numbers them; each group's meter 0 records the probes.
    let maps: Vec<Arc<RegisterMap>> = scenario
        .groups
        .iter()
        .map(|g| {
            Arc::new(RegisterMap::default_map(MapOptions::with_analog(
                g.registers,
            )))
        })
        .collect();
    let mut meters: Vec<(SharedMeter, MeterRef)> = Vec::new();
    for (g, group) in scenario.groups.iter().enumerate() {
        let model = group_model(scenario, g);
        for index in 0..group.count {
            let which = MeterRef { group: g, index };
            let mut m = LiveMeter::with_model(scenario, which, maps[g].clone(), model.clone());
            if index == 0 {
                m.tap_probes(scenario, g);
            }
            meters.push((Arc::new(Mutex::new(m)), which));
        }
    }

    // The head-end: one instance per substation (at most --head-ends; substations dealt out
    // in turn), each with its own MQTT connection, alarm store and share of the poll targets.
    // Every instance expects its meters from grid time 0.
    let epoch_ms = epoch_now_ms();
    let start = Instant::now();
    let mut substations: Vec<&str> = Vec::new();
    for g in &scenario.groups {
        if !substations.contains(&g.substation.as_str()) {
            substations.push(&g.substation);
        }
    }
    let n = opts
        .head_ends
        .unwrap_or(substations.len())
        .clamp(1, substations.len().max(1));
    let instance_of = |g: usize| {
        let sub = scenario.groups[g].substation.as_str();
        substations.iter().position(|s| *s == sub).unwrap_or(0) % n
    };
    let (store_dir, scratch) = match &opts.alarm_store {
        Some(dir) => (dir.clone(), false),
        None => (tempdir()?, true),
    };
    let (alarm_tx, mut alarm_rx) = mpsc::unbounded_channel();
    let progress = Arc::new(AtomicU64::new(0));
    let (stop_he, stop_he_rx) = watch::channel(false);
    let mut instances = Vec::with_capacity(n);
    for k in 0..n {
        let name = if n == 1 {
            "live".to_owned()
        } else {
            format!("live-{k}")
        };
        let path = store_dir.join(format!("{}.{name}.alarms.jsonl", scenario.name));
        if !scratch {
            // A fresh store per run: old alarms would be restored as already handled.
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot replace {}: {e}", path.display())),
            }
        }
        let (store, _) = AlarmStore::open(&path).map_err(|e| e.to_string())?;
        let mut cfg = SubscriberConfig::new(
            broker_addr,
            &format!("gridloop-head-end-{}-{k}", std::process::id()),
        );
        // A persistent session: a head-end reconnect mid-run loses nothing the broker queued.
        cfg.clean_session = false;
        cfg.substations = substations
            .iter()
            .enumerate()
            .filter(|(i, _)| i % n == k)
            .map(|(_, s)| (*s).to_owned())
            .collect();
        instances.push(Instance {
            core: HeadEndCore::new(scenario.head_end, &name),
            cfg,
            store,
            targets: Vec::new(),
        });
    }
    for (_, which) in &meters {
        let group = &scenario.groups[which.group];
        instances[instance_of(which.group)].core.expect_meter(
            which.id(scenario),
            MeterInfo {
                name: meter_name(&group.name, which.index),
                substation: group.substation.clone(),
                group: group.name.clone(),
            },
            epoch_ms,
        );
    }
    // Modbus: each group's meters behind gateways (247 unit ids each), reached by the head-end's
    // poller through the group's impairment proxy when the group has one.
    let (stop_modbus, stop_modbus_rx) = watch::channel(false);
    let mut servers = Vec::new();
    let mut modbus_proxies = Vec::new();
    if let Some(interval) = opts.poll {
        let mut first = 0usize;
        for (g, group) in scenario.groups.iter().enumerate() {
            let count = group.count as usize;
            let members: Vec<&(SharedMeter, MeterRef)> =
                meters[first..first + count].iter().collect();
            first += count;
            for chunk in members.chunks(GATEWAY_UNITS as usize) {
                let listener = TcpListener::bind(("127.0.0.1", 0))
                    .await
                    .map_err(|e| format!("cannot listen for Modbus: {e}"))?;
                let gateway = listener
                    .local_addr()
                    .map_err(|e| format!("cannot read a bound address: {e}"))?;
                let units = Units::Gateway(chunk.iter().map(|(m, _)| m.clone()).collect());
                let mut stop = stop_modbus_rx.clone();
                servers.push(tokio::spawn(serve(
                    listener,
                    Arc::new(units),
                    Box::pin(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    }),
                )));
                let addr = match impaired(scenario, g, MODBUS_STREAM) {
                    Some(profile) => {
                        let (addr, task) = spawn_proxy(
                            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                            gateway,
                            profile,
                            start,
                            stop_modbus_rx.clone(),
                        )
                        .await
                        .map_err(|e| format!("cannot start the Modbus proxy of group {g}: {e}"))?;
                        modbus_proxies.push(task);
                        addr
                    }
                    None => gateway,
                };
                for (unit, (_, which)) in chunk.iter().enumerate() {
                    instances[instance_of(g)].targets.push(PollTarget {
                        meter: which.id(scenario),
                        info: MeterInfo {
                            name: meter_name(&group.name, which.index),
                            substation: group.substation.clone(),
                            group: group.name.clone(),
                        },
                        addr,
                        unit: u8::try_from(unit + 1).ok(),
                        expected: group.registers,
                        interval,
                        channels: scenario.grid.channels(),
                        epoch_ms: Some(epoch_ms),
                    });
                }
            }
        }
    }

    // The head-end is another system: its own thread and runtime, so it never waits behind
    // the meters' pacing or links for a worker.
    let (he_done_tx, he_done_rx) = oneshot::channel();
    let poller_cfg = PollerConfig {
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        seed: scenario.seed,
        ..PollerConfig::default()
    };
    let mut subscribed = Vec::with_capacity(n);
    let mut jobs = Vec::with_capacity(n);
    for inst in instances {
        let (subscribed_tx, subscribed_rx) = oneshot::channel();
        subscribed.push(subscribed_rx);
        let (poll_tx, poll_rx) = mpsc::channel(4096);
        let outputs = Outputs {
            alarms: Some(alarm_tx.clone()),
            polls: (!inst.targets.is_empty()).then_some(poll_rx),
            subscribed: Some(subscribed_tx),
            progress: Some(progress.clone()),
        };
        jobs.push((inst, outputs, poll_tx));
    }
    drop(alarm_tx);
    let stop_all = stop_he_rx.clone();
    std::thread::Builder::new()
        .name("gridloop-head-end".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the head-end runtime: {e}"))
                .and_then(|rt| {
                    rt.block_on(async move {
                        let mut tasks = Vec::with_capacity(jobs.len());
                        for (inst, outputs, poll_tx) in jobs {
                            let poller = (!inst.targets.is_empty()).then(|| {
                                tokio::spawn(run_poller(
                                    inst.targets,
                                    poller_cfg.clone(),
                                    poll_tx,
                                    stop_all.clone(),
                                ))
                            });
                            let he = tokio::spawn(run_head_end(
                                inst.cfg,
                                inst.core,
                                Some(inst.store),
                                outputs,
                                stop_all.clone(),
                            ));
                            tasks.push((he, poller));
                        }
                        let mut done = Vec::with_capacity(tasks.len());
                        for (he, poller) in tasks {
                            let result = he
                                .await
                                .map_err(|e| format!("head-end task failed: {e}"))?
                                .map_err(|e| format!("head-end: {e}"))?;
                            let polled = match poller {
                                Some(p) => p.await.ok(),
                                None => None,
                            };
                            done.push((result.0, result.1, polled));
                        }
                        Ok::<_, String>(done)
                    })
                });
            let _ = he_done_tx.send(result);
        })
        .map_err(|e| format!("cannot start the head-end thread: {e}"))?;
    for rx in subscribed {
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .map_err(|_| format!("the head-end did not subscribe at {broker_addr} within 10 s"))?
            .map_err(|_| "the head-end stopped before subscribing".to_owned())?;
    }

    // Each group's backhaul: a proxy applying its link model and network events (latency,
    // jitter, loss as TCP retransmission delay, RF-loss windows cutting every connection).
    let (stop_proxies, stop_proxies_rx) = watch::channel(false);
    let mut proxies = Vec::with_capacity(scenario.groups.len());
    let mut addrs = Vec::with_capacity(scenario.groups.len());
    for g in 0..scenario.groups.len() {
        let Some(profile) = impaired(scenario, g, MQTT_STREAM) else {
            addrs.push(broker_addr);
            continue;
        };
        let outages = profile.outages();
        let (addr, task) = spawn_proxy(
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            broker_addr,
            profile,
            start,
            stop_proxies_rx.clone(),
        )
        .await
        .map_err(|e| format!("cannot start the network proxy of group {g}: {e}"))?;
        addrs.push(addr);
        proxies.push((g, outages, task));
    }

    // Links (each meter keeps its messages in its ring until its link is up), then pacing.
    let all: Vec<SharedMeter> = meters.iter().map(|(m, _)| m.clone()).collect();
    let links = Links::spawn_via(scenario, meters.clone(), &addrs, &opts.mqtt, epoch_ms);
    let mut stats = PacingStats::default();
    // Grid time 0 was `start`; meters catch up to the wall clock on their first step.
    let chunks = all.len().div_ceil(2).max(1);
    let parts: Vec<Vec<SharedMeter>> = all.chunks(chunks).map(<[_]>::to_vec).collect();
    let mut pacers = Vec::new();
    for part in parts {
        let step = opts.step;
        let end = scenario.duration;
        pacers.push(tokio::spawn(async move {
            let mut stats = PacingStats::default();
            let progress = PacingProgress::default();
            run_paced_with(&part, start, step, end, &mut stats, &progress).await;
            stats
        }));
    }
    for p in pacers {
        let s = p.await.map_err(|e| format!("a pacing task failed: {e}"))?;
        stats.steps += s.steps;
        stats.overruns += s.overruns;
        stats.max_step_work = stats.max_step_work.max(s.max_step_work);
    }
    // Flush: every link sends what its meter buffered, then disconnects.
    let link_report = links.stop().await;
    // Everything a meter produced reaches the head-end unless its ring overflowed or it is
    // still in the ring (a link that could not flush): wait for exactly that many distinct
    // messages, bounded by --drain-s.
    let deliverable: u64 = all
        .iter()
        .filter_map(|m| {
            m.lock().ok().map(|m| {
                let meter = m.meter();
                meter
                    .produced()
                    .saturating_sub(meter.overflowed())
                    .saturating_sub(meter.buffered() as u64)
            })
        })
        .sum();
    let deadline = Instant::now() + opts.drain;
    while progress.load(Ordering::Relaxed) < deliverable && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop_he.send(true);
    let _ = stop_proxies.send(true);
    let mut observed = Vec::new();
    for (g, outages, task) in proxies {
        let stats = task
            .await
            .map_err(|e| format!("network proxy task failed: {e}"))?;
        let name = &scenario.groups[g].name;
        for (from, to) in outages {
            observed.push(TimelineEntry {
                at: from,
                what: format!(
                    "live: {name} backhaul down until {to:.3} s ({} connections cut, {} refused during outages)",
                    stats.cut_by_outage, stats.refused_in_outage
                ),
            });
        }
        tracing::info!("live {}: proxy of {name}: {stats:?}", scenario.name);
    }
    let _ = stop_modbus.send(true);
    for s in servers {
        if let Ok(Err(e)) = s.await {
            tracing::warn!("live {}: a Modbus gateway ended with {e}", scenario.name);
        }
    }
    for p in modbus_proxies {
        let _ = p.await;
    }
    let done = he_done_rx
        .await
        .map_err(|_| "the head-end thread ended without a result".to_owned())??;
    drop(broker);
    if scratch {
        let _ = std::fs::remove_dir_all(&store_dir);
    }
    tracing::info!(
        "live {}: {} pacing steps, {} overruns, links {link_report:?}",
        scenario.name,
        stats.steps,
        stats.overruns
    );
    let mut cores = Vec::with_capacity(done.len());
    for (report, core, polled) in done {
        tracing::info!(
            "live {}: head-end {}: {report:?}, poller {polled:?}",
            scenario.name,
            core.instance()
        );
        cores.push(core);
    }

    let mut records = Vec::with_capacity(meters.len());
    let mut probes = vec![ProbeRecord::default(); scenario.groups.len()];
    for (m, which) in &meters {
        let mut m = m
            .lock()
            .map_err(|_| "a meter's lock is poisoned".to_owned())?;
        if let Some(p) = m.take_probe_record() {
            probes[which.group] = p;
        }
        let meter = m.meter();
        records.push(MeterRecord {
            id: which.id(scenario),
            group: which.group,
            index: which.index,
            events: meter.event_log().to_vec(),
            produced: meter.produced(),
            overflowed: meter.overflowed(),
            buffered_at_end: meter.buffered() as u64,
        });
    }
    let mut alarms = Vec::new();
    while let Ok(a) = alarm_rx.try_recv() {
        if let Some(a) = to_grid_alarm(&a, epoch_ms) {
            alarms.push(a);
        }
    }
    let (delivered, duplicates) = cores.iter().fold((0, 0), |(u, d), c| {
        (u + c.stats().unique, d + c.stats().duplicates)
    });
    let owner: std::collections::HashMap<u32, usize> = meters
        .iter()
        .map(|(_, w)| (w.id(scenario), instance_of(w.group)))
        .collect();
    let mut obs = observe(
        scenario,
        RunFacts {
            meters: records,
            probes,
            alarms: &alarms,
            samples: 0,
            half_cycles: 0,
            delivered,
            duplicates,
            missing: &|meter, produced| {
                let k = owner.get(&meter).copied().unwrap_or(0);
                cores
                    .get(k)
                    .map_or(produced, |c| c.missing(meter, produced))
            },
        },
    );
    if !observed.is_empty() {
        obs.timeline.extend(observed);
        obs.timeline.sort_by(|a, b| a.at.total_cmp(&b.at));
    }
    Ok(obs)
}

/// One head-end instance before it starts.
struct Instance {
    core: HeadEndCore,
    cfg: SubscriberConfig,
    store: AlarmStore,
    targets: Vec<PollTarget>,
}

/// Group `g`'s impairment profile, or `None` for a group with sim mode's default link and no
/// network events: it connects straight to the broker (and is polled directly), so live mode
/// measures the real stack rather than a modelled 5 ms backhaul. `stream` separates the seeds
/// of the MQTT and Modbus proxies (independent jitter and loss).
fn impaired(scenario: &Scenario, g: usize, stream: u64) -> Option<ImpairProfile> {
    let profile =
        ImpairProfile::for_group(scenario, g, derive_seed(scenario.seed, g as u32, stream))?;
    if scenario.groups[g].link == LinkSpec::default() && profile.windows().is_empty() {
        None
    } else {
        Some(profile)
    }
}

/// The broker of a live run. The embedded one without [`EmbeddedConfig`]'s small per-topic
/// logs: rumqttd applies a custom log to every filter its pattern matches, and a head-end more
/// than 64 KiB behind on such a log was skipped ahead ("jumping to head"): grid-wide-sag-fleet
/// lost 5734–6753 of 8400 messages. The head-end subscribes (`gridloop/{substation}/#`) before
/// any meter publishes, so every meter topic is matched by a subscription and no per-topic
/// log is created; the default limits (1 MiB × 32 per log) bound one log per instance.
fn start_live_broker(url: &BrokerUrl) -> Result<RunningBroker, BrokerError> {
    match url {
        BrokerUrl::Embedded => EmbeddedBroker::start_with(
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            EmbeddedConfig {
                topic_logs: Vec::new(),
                ..EmbeddedConfig::default()
            },
        )
        .map(RunningBroker::Embedded),
        other => start_broker(other),
    }
}

/// A stored alarm record as sim-core's alarm in grid time (`epoch_ms` = grid time 0).
pub fn to_grid_alarm(a: &AlarmRecord, epoch_ms: u64) -> Option<Alarm> {
    let grid = |ms: u64| (ms as f64 - epoch_ms as f64) / 1000.0;
    let code = || a.code.as_deref().and_then(EventCode::parse);
    let kind = match a.kind {
        Kind::Trip => AlarmKind::Trip(code()?),
        Kind::Clear => AlarmKind::Clear(code()?),
        Kind::BufferOverflow => AlarmKind::BufferOverflow {
            dropped: a.dropped.unwrap_or(0),
        },
        Kind::Stale => AlarmKind::Stale,
        Kind::Unreachable => AlarmKind::Unreachable,
        Kind::EncodingMismatch => AlarmKind::EncodingMismatch,
    };
    let phase = match a.phase.as_deref() {
        Some("L1") => Some(Phase::L1),
        Some("L2") => Some(Phase::L2),
        Some("L3") => Some(Phase::L3),
        _ => None,
    };
    Some(Alarm {
        meter: a.meter,
        seq: a.seq,
        kind,
        phase,
        source_time: a.source_ms.map_or(Seconds::NEG_INFINITY, grid),
        receive_time: grid(a.receive_ms),
    })
}

fn tempdir() -> Result<std::path::PathBuf, String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "gridloop-live-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}
