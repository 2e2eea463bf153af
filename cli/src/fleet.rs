//! `gridloop fleet`: N virtual meters of a scenario in one process on tokio — Modbus/TCP on
//! ports counted up from a base or behind 247-unit gateways, MQTT to a broker — paced in real
//! time, with a live status line, until `--duration` or Ctrl-C (which drains the buffers).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use virtual_meter::event_log::EventLogWriter;
use virtual_meter::fleet::{FleetPlan, ModbusLayout, Shard};
use virtual_meter::live::group_model;
use virtual_meter::pacing::{run_paced_with, PacingProgress, PacingStats};
use virtual_meter::registers::{MapOptions, RegisterMap};
use virtual_meter::service::serve;
use virtual_meter::{LinkStats, LiveMeter, SharedMeter, Units};

use crate::exit::{CommandResult, Failure, OrExit, ENVIRONMENT, INVALID_INPUT, SUCCESS};
use crate::load;
use crate::mqtt_links::{self, Links, LinksReport, MqttArgs};

/// `gridloop fleet`: many meters of one scenario in this process.
#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    /// The scenario file
    #[arg(value_name = "SCENARIO", required_unless_present = "scenario_flag")]
    pub scenario: Option<PathBuf>,

    /// The scenario file (same as the positional SCENARIO)
    #[arg(long = "scenario", value_name = "FILE", conflicts_with = "scenario")]
    pub scenario_flag: Option<PathBuf>,

    /// Meters in the whole fleet, shared among the scenario's groups in proportion to their
    /// counts [default: the scenario's own counts]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub meters: Option<u32>,

    /// Run part I of N (1-based) of the fleet: a contiguous block of meter ids, the same on
    /// every machine for the same scenario and --meters
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,

    /// First Modbus/TCP listen address: one port per meter counted up from it, or with
    /// --gateway one port per 247 meters
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:15020")]
    pub modbus_base: std::net::SocketAddr,

    /// Serve meters as unit ids 1..=247 behind gateways instead of a port per meter
    #[arg(long)]
    pub gateway: bool,

    /// Serve no Modbus/TCP at all
    #[arg(long, conflicts_with_all = ["gateway"])]
    pub no_modbus: bool,

    /// Stop after this much grid time (e.g. 60s) instead of at the scenario's end
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,

    /// Pacing step in milliseconds: how often meters catch up with the wall clock
    #[arg(long, value_name = "MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub step_ms: u64,

    /// Pacing tasks the meters are split across
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub pacers: u16,

    /// The meters' event log: one line per trip and clear, appended (`none` disables)
    #[arg(long, value_name = "FILE", default_value = "voltage_events.log")]
    pub event_log: PathBuf,

    #[command(flatten)]
    pub mqtt: MqttArgs,

    /// Write the final figures as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,

    /// Print no status line
    #[arg(long, short)]
    pub quiet: bool,
}

impl FleetArgs {
    fn scenario_path(&self) -> Option<&PathBuf> {
        self.scenario.as_ref().or(self.scenario_flag.as_ref())
    }
}

/// Final figures of a fleet run (`--summary-json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct FleetSummary {
    pub scenario: String,
    pub shard: String,
    pub meters: usize,
    pub fleet_meters: u32,
    pub modbus_listeners: usize,
    pub grid_time_s: f64,
    pub wall_time_s: f64,
    pub pacing_steps: u64,
    pub overruns: u64,
    pub max_step_ms: f64,
    pub trips: u64,
    pub produced: u64,
    pub overflowed: u64,
    pub buffered: u64,
    /// The broker line (`broker: …`), or `null` without MQTT.
    pub broker: Option<String>,
    pub mqtt: Option<LinkStats>,
    pub links: Option<LinksReport>,
    pub interrupted: bool,
}

/// Run the command.
pub fn fleet(args: &FleetArgs) -> CommandResult {
    let scenario = load::load_one(args.scenario_path())?;
    let shard = match &args.shard {
        None => Shard::ALL,
        Some(text) => Shard::parse(text).map_err(|e| Failure::new(INVALID_INPUT, e))?,
    };
    let layout = if args.no_modbus {
        ModbusLayout::None
    } else if args.gateway {
        ModbusLayout::Gateway {
            base: args.modbus_base,
        }
    } else {
        ModbusLayout::PortPerMeter {
            base: args.modbus_base,
        }
    };
    let plan = FleetPlan::new(&scenario, args.meters, shard, layout)
        .map_err(|e| Failure::new(INVALID_INPUT, e))?;
    let broker = args.mqtt.broker_url()?;
    let end = match &args.duration {
        None => plan.scenario.duration,
        Some(text) => scenarios::duration::parse_duration(text)
            .map(|d| d.seconds(plan.scenario.grid.frequency))
            .map_err(|e| Failure::msg(INVALID_INPUT, format!("--duration: {e}")))?
            .min(plan.scenario.duration),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .or_exit(ENVIRONMENT, || "cannot start the tokio runtime".into())?;
    let summary = runtime.block_on(run_fleet(&plan, args, end, broker))?;
    if let Some(file) = &args.summary_json {
        let text = serde_json::to_string_pretty(&summary)
            .or_exit(ENVIRONMENT, || "cannot encode the summary".into())?;
        let what = || format!("cannot write {}", file.display());
        let (staged, mut out) =
            crate::staged::StagedFile::create(file).or_exit(ENVIRONMENT, what)?;
        out.write_all(text.as_bytes())
            .and_then(|()| out.sync_all())
            .or_exit(ENVIRONMENT, what)?;
        drop(out);
        staged.commit().or_exit(ENVIRONMENT, what)?;
    }
    Ok(SUCCESS)
}

async fn run_fleet(
    plan: &FleetPlan,
    args: &FleetArgs,
    end: f64,
    broker_url: Option<virtual_meter::broker::BrokerUrl>,
) -> Result<FleetSummary, Failure> {
    let started = Instant::now();
    // One register map per group encoding, shared by the group's meters.
    let maps: Vec<Arc<RegisterMap>> = plan
        .scenario
        .groups
        .iter()
        .map(|g| {
            Arc::new(RegisterMap::default_map(MapOptions::with_analog(
                g.registers,
            )))
        })
        .collect();
    // One supply model per group too (the meters' noise seeds still differ).
    let models: Vec<_> = (0..plan.scenario.groups.len())
        .map(|g| group_model(&plan.scenario, g))
        .collect();
    let meters: Vec<SharedMeter> = plan
        .meters
        .iter()
        .map(|m| {
            Arc::new(Mutex::new(LiveMeter::with_model(
                &plan.scenario,
                m.which,
                maps[m.which.group].clone(),
                models[m.which.group].clone(),
            )))
        })
        .collect();
    let mut event_log = if args.event_log.as_os_str() == "none" {
        None
    } else {
        Some(
            EventLogWriter::append_to(&args.event_log).or_exit(ENVIRONMENT, || {
                format!("cannot open the event log {}", args.event_log.display())
            })?,
        )
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = Vec::new();
    let listeners = plan.listeners();
    let mut bound = Vec::with_capacity(listeners.len());
    for (addr, planned) in &listeners {
        let listener = TcpListener::bind(addr)
            .await
            .or_exit(ENVIRONMENT, || format!("cannot listen on {addr}"))?;
        bound.push(
            listener
                .local_addr()
                .or_exit(ENVIRONMENT, || "cannot read a bound address".into())?,
        );
        let first = plan.meters.partition_point(|m| m.id < planned[0].id);
        let group: Vec<SharedMeter> = meters[first..first + planned.len()].to_vec();
        let units = if planned[0].modbus.is_some_and(|e| e.unit.is_some()) {
            Units::Gateway(group)
        } else {
            Units::Single(group[0].clone())
        };
        let mut stop = stop_rx.clone();
        servers.push(tokio::spawn(serve(
            listener,
            Arc::new(units),
            Box::pin(async move {
                let _ = stop.wait_for(|s| *s).await;
            }),
        )));
    }
    {
        let mut out = std::io::stdout().lock();
        let modbus = match (bound.first(), bound.last()) {
            (Some(a), Some(b)) if a == b => format!("modbus on {a}"),
            (Some(a), Some(b)) => format!("modbus on {a} … {b}"),
            _ => "no modbus".to_owned(),
        };
        writeln!(
            out,
            "fleet {}: {} of {} meters (shard {}), {modbus}{}",
            plan.scenario.name,
            plan.meters.len(),
            plan.total,
            plan.shard,
            if args.gateway {
                " (unit ids 1..=247 per port)"
            } else {
                ""
            }
        )
        .and_then(|()| out.flush())
        .or_exit(ENVIRONMENT, || "cannot write to stdout".into())?;
    }

    // MQTT: the broker (blocking until it accepts connections), then a link per meter,
    // ramped up at --ramp connections per second.
    let mut broker = None;
    let mut links = None;
    let running = match broker_url {
        Some(url) => Some(mqtt_links::start_and_print(url).await?),
        None => None,
    };
    // Grid time 0: the pacing clock and the epoch of the payloads' source timestamps.
    let start = Instant::now();
    let epoch_ms = mqtt_links::epoch_now_ms();
    if let Some(running) = running {
        let with_refs = meters
            .iter()
            .zip(&plan.meters)
            .map(|(m, p)| (m.clone(), p.which))
            .collect();
        links = Some(Links::spawn(
            &plan.scenario,
            with_refs,
            running.addr(),
            &args.mqtt,
            epoch_ms,
        ));
        broker = Some(running);
    }
    let counters = links.as_ref().map(|l| l.counters.clone());

    let progress = Arc::new(PacingProgress::default());
    let step = Duration::from_millis(args.step_ms);
    let chunk = meters.len().div_ceil(usize::from(args.pacers)).max(1);
    let mut pacers = Vec::new();
    // Pacers stop at the end or when told (Ctrl-C); each says when it has ended.
    let (pacers_stop, pacers_stop_rx) = watch::channel(false);
    let (ended_tx, mut ended) = tokio::sync::mpsc::channel::<()>(usize::from(args.pacers));
    for part in meters.chunks(chunk) {
        let part = part.to_vec();
        let progress = progress.clone();
        let mut stop = pacers_stop_rx.clone();
        let ended_tx = ended_tx.clone();
        pacers.push(tokio::spawn(async move {
            let mut stats = PacingStats::default();
            tokio::select! {
                () = run_paced_with(&part, start, step, end, &mut stats, &progress) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            let _ = ended_tx.send(()).await;
            stats
        }));
    }
    drop(ended_tx);

    let bar = status_bar(args.quiet);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    let mut log_error = None;
    let mut running = pacers.len();
    let on_terminal = !bar.is_hidden();
    let mut last_acked = 0u64;
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            e = ended.recv() => {
                running = running.saturating_sub(1);
                if e.is_none() || running == 0 {
                    break;
                }
            }
            _ = &mut ctrl_c => { interrupted = true; break; }
            _ = ticker.tick() => {
                ticks += 1;
                if let Some(log) = event_log.as_mut() {
                    if let Err(e) = log.append(&meters) {
                        log_error = Some(e);
                        interrupted = true;
                        break;
                    }
                }
                let line = status_line(
                    start.elapsed().as_secs_f64().min(end),
                    end,
                    &meters,
                    counters.as_deref(),
                    &mut last_acked,
                    progress.overruns.load(Ordering::Relaxed),
                );
                if on_terminal {
                    bar.set_message(line);
                } else if !args.quiet && ticks % 10 == 0 {
                    // Not a terminal: the status every 10 s as a plain line.
                    let _ = writeln!(std::io::stderr().lock(), "{line}");
                }
            }
        }
    }
    bar.finish_and_clear();
    // Pacing stops first (on Ctrl-C it is told to), so nothing new is produced while the links
    // drain and the figures agree with each other.
    let _ = pacers_stop.send(true);
    let mut stats = Vec::with_capacity(pacers.len());
    for p in pacers {
        match p.await {
            Ok(s) => stats.push(s),
            Err(e) => tracing::warn!("a pacing task failed: {e}"),
        }
    }
    // Drain: links flush what the meters buffered (also on Ctrl-C), then the listeners stop.
    let link_report = match links {
        Some(links) => Some(links.stop().await),
        None => None,
    };
    let link_stats = counters
        .as_deref()
        .map(virtual_meter::LinkCounters::snapshot);
    if let (Some(log), None) = (event_log.as_mut(), &log_error) {
        if let Err(e) = log.append(&meters) {
            log_error = Some(e);
        }
    }
    let _ = stop_tx.send(true);
    for s in servers {
        match s.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("modbus listener ended with {e}"),
            Err(e) => tracing::warn!("modbus listener task failed: {e}"),
        }
    }
    let mut summary = FleetSummary {
        scenario: plan.scenario.name.clone(),
        shard: plan.shard.to_string(),
        meters: meters.len(),
        fleet_meters: plan.total,
        modbus_listeners: listeners.len(),
        grid_time_s: 0.0,
        wall_time_s: started.elapsed().as_secs_f64(),
        pacing_steps: 0,
        overruns: 0,
        max_step_ms: 0.0,
        trips: 0,
        produced: 0,
        overflowed: 0,
        buffered: 0,
        broker: broker.as_ref().map(ToString::to_string),
        mqtt: link_stats,
        links: link_report,
        interrupted,
    };
    drop(broker);
    for s in &stats {
        summary.pacing_steps += s.steps;
        summary.overruns += s.overruns;
        summary.max_step_ms = summary.max_step_ms.max(s.max_step_work.as_secs_f64() * 1e3);
        summary.grid_time_s = summary.grid_time_s.max(s.sim_time);
    }
    for m in &meters {
        if let Ok(m) = m.lock() {
            summary.trips += m.meter().trip_count();
            summary.produced += m.meter().produced();
            summary.overflowed += m.meter().overflowed();
            summary.buffered += m.meter().buffered() as u64;
        }
    }
    if let Some(e) = log_error {
        return Err(Failure::msg(
            ENVIRONMENT,
            format!(
                "cannot write the event log {}: {e}",
                args.event_log.display()
            ),
        ));
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "{}: {} meters, grid time {:.3} s, {} overruns (longest step {:.2} ms), {} trips, \
         {} messages produced, {} overflowed, {} buffered",
        if interrupted { "interrupted" } else { "done" },
        summary.meters,
        summary.grid_time_s,
        summary.overruns,
        summary.max_step_ms,
        summary.trips,
        summary.produced,
        summary.overflowed,
        summary.buffered,
    );
    if let (Some(c), Some(r)) = (&summary.mqtt, &summary.links) {
        let _ = writeln!(
            err,
            "mqtt: {} published, {} acknowledged, {} reconnects, {} packet encapsulation errors \
             ({} dropped), {} left undelivered, {} of {} links flushed",
            c.published,
            c.acked,
            c.reconnects,
            c.encapsulation_errors,
            c.dropped_oversize,
            r.left_in_ring + r.unacked + r.unsent,
            r.flushed,
            r.meters
        );
    }
    Ok(summary)
}

/// `grid 12.0/60.0 s · 9998/10000 up · 10012 msg/s · 3 buffered · 0 overruns`.
fn status_line(
    t: f64,
    end: f64,
    meters: &[SharedMeter],
    counters: Option<&virtual_meter::LinkCounters>,
    last_acked: &mut u64,
    overruns: u64,
) -> String {
    let buffered: usize = meters
        .iter()
        .filter_map(|m| m.lock().ok().map(|m| m.meter().buffered()))
        .sum();
    let mqtt = match counters {
        Some(c) => {
            let s = c.snapshot();
            let rate = s.acked.saturating_sub(*last_acked);
            *last_acked = s.acked;
            format!("{}/{} up · {rate} msg/s · ", s.connected, meters.len())
        }
        None => format!("{} meters · ", meters.len()),
    };
    format!("grid {t:.1}/{end:.1} s · {mqtt}{buffered} buffered · {overruns} overruns")
}

/// A spinner with a message on a terminal; hidden otherwise or with `--quiet`.
fn status_bar(quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}
