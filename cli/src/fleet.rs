//! `gridloop fleet`: N virtual meters of a scenario in one process on tokio — Modbus/TCP on
//! ports counted up from a base or behind 247-unit gateways, MQTT to a broker — paced in real
//! time, with a live status line, until `--duration` or Ctrl-C (which drains the buffers).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use virtual_meter::fleet::{FleetPlan, ModbusLayout, Shard};
use virtual_meter::pacing::{run_paced, PacingStats};
use virtual_meter::registers::{MapOptions, RegisterMap};
use virtual_meter::service::serve;
use virtual_meter::{LiveMeter, SharedMeter, Units};

use crate::exit::{CommandResult, Failure, OrExit, ENVIRONMENT, INVALID_INPUT, SUCCESS};
use crate::load;

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
    pub interrupted: bool,
}

/// Run the command.
pub fn fleet(args: &FleetArgs) -> CommandResult {
    let path = args
        .scenario_path()
        .cloned()
        .ok_or_else(|| Failure::msg(INVALID_INPUT, "no scenario given"))?;
    let mut loaded = load::load_valid(std::slice::from_ref(&path))?;
    if loaded.len() != 1 {
        return Err(Failure::msg(
            INVALID_INPUT,
            format!(
                "{} holds {} scenarios; give one file",
                path.display(),
                loaded.len()
            ),
        ));
    }
    let scenario = loaded.remove(0).scenario;
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
    let summary = runtime.block_on(run_fleet(&plan, args, end))?;
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

/// Counters the status line reads while the fleet runs.
#[derive(Debug, Default)]
struct Live {
    overruns: AtomicU64,
    steps: AtomicU64,
    /// Grid time reached, µs.
    sim_us: AtomicU64,
}

async fn run_fleet(plan: &FleetPlan, args: &FleetArgs, end: f64) -> Result<FleetSummary, Failure> {
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
    let meters: Vec<SharedMeter> = plan
        .meters
        .iter()
        .map(|m| {
            Arc::new(Mutex::new(LiveMeter::new(
                &plan.scenario,
                m.which,
                maps[m.which.group].clone(),
            )))
        })
        .collect();

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

    let live = Arc::new(Live::default());
    let step = Duration::from_millis(args.step_ms);
    let start = Instant::now();
    let chunk = meters.len().div_ceil(usize::from(args.pacers)).max(1);
    let mut pacers = Vec::new();
    for part in meters.chunks(chunk) {
        let part = part.to_vec();
        let live = live.clone();
        pacers.push(tokio::spawn(async move {
            let mut stats = PacingStats::default();
            run_paced(&part, start, step, end, &mut stats).await;
            live.overruns.fetch_add(stats.overruns, Ordering::Relaxed);
            live.steps.fetch_add(stats.steps, Ordering::Relaxed);
            live.sim_us
                .fetch_max((stats.sim_time * 1e6) as u64, Ordering::Relaxed);
            stats
        }));
    }

    let bar = status_bar(args.quiet);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    let all_paced = futures_all(&mut pacers);
    tokio::pin!(all_paced);
    let stats = loop {
        tokio::select! {
            stats = &mut all_paced => break stats,
            _ = &mut ctrl_c => { interrupted = true; break Vec::new(); }
            _ = ticker.tick() => {
                let t = start.elapsed().as_secs_f64().min(end);
                bar.set_message(format!(
                    "grid {t:.1}/{end:.1} s · {} meters · {} overruns",
                    meters.len(),
                    live.overruns.load(Ordering::Relaxed)
                ));
            }
        }
    };
    bar.finish_and_clear();
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
        interrupted,
    };
    for s in &stats {
        summary.pacing_steps += s.steps;
        summary.overruns += s.overruns;
        summary.max_step_ms = summary.max_step_ms.max(s.max_step_work.as_secs_f64() * 1e3);
        summary.grid_time_s = summary.grid_time_s.max(s.sim_time);
    }
    if interrupted {
        summary.grid_time_s = live.sim_us.load(Ordering::Relaxed) as f64 / 1e6;
    }
    for m in &meters {
        if let Ok(m) = m.lock() {
            summary.trips += m.meter().trip_count();
            summary.produced += m.meter().produced();
            summary.overflowed += m.meter().overflowed();
            summary.buffered += m.meter().buffered() as u64;
        }
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
    Ok(summary)
}

/// Await every pacing task; a task that panicked contributes nothing.
async fn futures_all(tasks: &mut [tokio::task::JoinHandle<PacingStats>]) -> Vec<PacingStats> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks.iter_mut() {
        if let Ok(s) = t.await {
            out.push(s);
        }
    }
    out
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
