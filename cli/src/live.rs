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

use head_end::{
    run_head_end, AlarmRecord, AlarmStore, HeadEndCore, Kind, MeterInfo, Outputs, SubscriberConfig,
};
use sim_core::grid::Phase;
use sim_core::harness::{derive_seed, observe, MeterRecord, Observations, ProbeRecord, RunFacts};
use sim_core::head_end::{Alarm, AlarmKind};
use sim_core::outcome::{ExpectationOutcome, ScenarioOutcome, TimelineEntry};
use sim_core::scenario::{EventCode, LinkSpec};
use sim_core::{Scenario, Seconds};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use virtual_meter::broker::{
    start_broker, BrokerError, BrokerUrl, EmbeddedBroker, EmbeddedConfig, RunningBroker,
};
use virtual_meter::live::group_model;
use virtual_meter::mqtt::meter_name;
use virtual_meter::pacing::{run_paced_with, PacingProgress, PacingStats};
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
}

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

async fn live(scenario: &Scenario, opts: &LiveOptions) -> Result<Observations, String> {
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

    // The head-end: expects every meter from grid time 0, stores alarms in a scratch store.
    let epoch_ms = epoch_now_ms();
    let start = Instant::now();
    let mut core = HeadEndCore::new(scenario.head_end, "live");
    for (_, which) in &meters {
        let group = &scenario.groups[which.group];
        core.expect_meter(
            which.id(scenario),
            MeterInfo {
                name: meter_name(&group.name, which.index),
                substation: group.substation.clone(),
                group: group.name.clone(),
            },
            epoch_ms,
        );
    }
    let (store_path, scratch) = match &opts.alarm_store {
        Some(dir) => (dir.join(format!("{}.alarms.jsonl", scenario.name)), None),
        None => {
            let dir = tempdir()?;
            (dir.join("alarms.jsonl"), Some(dir))
        }
    };
    if scratch.is_none() {
        // A fresh store per run: old alarms would be restored as already handled.
        match std::fs::remove_file(&store_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot replace {}: {e}", store_path.display())),
        }
    }
    let (store, _) = AlarmStore::open(&store_path).map_err(|e| e.to_string())?;
    let (alarm_tx, mut alarm_rx) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed_rx) = oneshot::channel();
    let progress = Arc::new(AtomicU64::new(0));
    let (stop_he, stop_he_rx) = watch::channel(false);
    let mut cfg = SubscriberConfig::new(
        broker_addr,
        &format!("gridloop-head-end-{}", std::process::id()),
    );
    cfg.clean_session = true;
    // Nobody here subscribes to the alarm topic, and publishing there costs alarm latency:
    // the broker's PUBACKs to the head-end share its socket with the forwarded meter messages,
    // and with Nagle on that socket (neither rumqttd nor Mosquitto's default sets TCP_NODELAY)
    // and the head-end's delayed ACK, a meter's second trip within ~40 ms waited ~40 ms behind
    // them (docs/live-mode.md).
    cfg.publish_alarms = false;
    // The head-end is another system: its own thread and runtime, so it never waits behind
    // the meters' pacing or links for a worker.
    let (he_done_tx, he_done_rx) = oneshot::channel();
    let outputs = Outputs {
        alarms: Some(alarm_tx),
        polls: None,
        subscribed: Some(subscribed_tx),
        progress: Some(progress.clone()),
    };
    std::thread::Builder::new()
        .name("gridloop-head-end".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the head-end runtime: {e}"))
                .and_then(|rt| {
                    rt.block_on(run_head_end(cfg, core, Some(store), outputs, stop_he_rx))
                        .map_err(|e| format!("head-end: {e}"))
                });
            let _ = he_done_tx.send(result);
        })
        .map_err(|e| format!("cannot start the head-end thread: {e}"))?;
    tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
        .await
        .map_err(|_| format!("the head-end did not subscribe at {broker_addr} within 10 s"))?
        .map_err(|_| "the head-end stopped before subscribing".to_owned())?;

    // Each group's backhaul: a proxy applying its link model and network events (latency,
    // jitter, loss as TCP retransmission delay, RF-loss windows cutting every connection).
    let (stop_proxies, stop_proxies_rx) = watch::channel(false);
    let mut proxies = Vec::with_capacity(scenario.groups.len());
    let mut addrs = Vec::with_capacity(scenario.groups.len());
    for g in 0..scenario.groups.len() {
        let profile =
            ImpairProfile::for_group(scenario, g, derive_seed(scenario.seed, g as u32, 7))
                .ok_or_else(|| format!("no network profile for group {g}"))?;
        // A group with sim mode's default link and no network events connects straight to
        // the broker: live mode then measures the real stack, not a modelled 5 ms backhaul.
        if scenario.groups[g].link == LinkSpec::default() && profile.windows().is_empty() {
            addrs.push(broker_addr);
            continue;
        }
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
    let counters = links.counters.clone();
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
        if let Ok(s) = p.await {
            stats.steps += s.steps;
            stats.overruns += s.overruns;
            stats.max_step_work = stats.max_step_work.max(s.max_step_work);
        }
    }
    // Flush: every link sends what its meter buffered, then disconnects.
    let link_report = links.stop().await;
    let acked = counters.snapshot().acked;
    let deadline = Instant::now() + opts.drain;
    while progress.load(Ordering::Relaxed) < acked && Instant::now() < deadline {
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
    let (report, core) = he_done_rx
        .await
        .map_err(|_| "the head-end thread ended without a result".to_owned())??;
    drop(broker);
    if let Some(dir) = scratch {
        let _ = std::fs::remove_dir_all(dir);
    }
    tracing::info!(
        "live {}: {} pacing steps, {} overruns, links {link_report:?}, head-end {report:?}",
        scenario.name,
        stats.steps,
        stats.overruns
    );

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
    let ingest = core.stats();
    let mut obs = observe(
        scenario,
        RunFacts {
            meters: records,
            probes,
            alarms: &alarms,
            samples: 0,
            half_cycles: 0,
            delivered: ingest.unique,
            duplicates: ingest.duplicates,
            missing: &|meter, produced| core.missing(meter, produced),
        },
    );
    if !observed.is_empty() {
        obs.timeline.extend(observed);
        obs.timeline.sort_by(|a, b| a.at.total_cmp(&b.at));
    }
    Ok(obs)
}

/// The broker of a live run. The embedded one without [`EmbeddedConfig`]'s small per-topic
/// logs: rumqttd applies a custom log to every filter its pattern matches, the head-end's
/// subscriptions (`gridloop/+/+/+/telemetry`, …) included, and a head-end more than 64 KiB
/// behind then skipped ahead ("jumping to head"): grid-wide-sag-fleet lost 5734–6753 of 8400
/// messages. With the head-end subscribed before any meter publishes, every meter topic is
/// matched by one of its filters, so no per-topic log is created and the default limits
/// (1 MiB × 32 per log) bound three logs.
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
