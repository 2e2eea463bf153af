//! `gridloop meter`: serve a scenario's meter(s) over Modbus/TCP in real time until the
//! scenario ends (plus `--linger`) or Ctrl-C.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sim_core::Scenario;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use virtual_meter::broker::BrokerUrl;
use virtual_meter::event_log::EventLogWriter;
use virtual_meter::pacing::{run_paced, PacingStats};
use virtual_meter::registers::{parse_encoding, MapOptions, RegisterMap};
use virtual_meter::service::{serve_with, ServeOptions};
use virtual_meter::{LiveMeter, MeterRef, SharedMeter, Units};

use crate::args::MeterArgs;
use crate::exit::{CommandResult, Failure, OrExit, ENVIRONMENT, INVALID_INPUT, SUCCESS};
use crate::load;
use crate::mqtt_links::{self, Links};

/// Run the command.
pub fn meter(args: &MeterArgs) -> CommandResult {
    let scenario = load::load_one(args.scenario_path())?;
    let plan = Plan::new(&scenario, args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .or_exit(ENVIRONMENT, || "cannot start the tokio runtime".into())?;
    runtime.block_on(serve_scenario(&scenario, args, plan))
}

/// Everything decided before anything starts.
#[derive(Debug)]
struct Plan {
    group: usize,
    broker: Option<BrokerUrl>,
    map: Arc<RegisterMap>,
    end: f64,
    linger: Duration,
    /// `None`: connections never time out.
    idle_timeout: Option<Duration>,
    /// `None`: no event log file.
    event_log: Option<PathBuf>,
}

impl Plan {
    fn new(scenario: &Scenario, args: &MeterArgs) -> Result<Plan, Failure> {
        let group = match &args.group {
            None => 0,
            Some(name) => scenario
                .groups
                .iter()
                .position(|g| &g.name == name)
                .ok_or_else(|| {
                    let names: Vec<&str> =
                        scenario.groups.iter().map(|g| g.name.as_str()).collect();
                    Failure::msg(
                        INVALID_INPUT,
                        format!(
                            "no group `{name}` in the scenario (groups: {})",
                            names.join(", ")
                        ),
                    )
                })?,
        };
        let Some(g) = scenario.groups.get(group) else {
            return Err(Failure::msg(
                INVALID_INPUT,
                "the scenario has no meter group",
            ));
        };
        if u64::from(args.id) + u64::from(args.units) > u64::from(g.count) {
            let what = if args.id == 0 {
                format!("--units {}", args.units)
            } else {
                format!("--id {} with --units {}", args.id, args.units)
            };
            return Err(Failure::msg(
                INVALID_INPUT,
                format!("{what} but group `{}` has {} meters", g.name, g.count),
            ));
        }
        let analog = match &args.encoding {
            None => g.registers,
            Some(text) => parse_encoding(text).ok_or_else(|| {
                Failure::msg(
                    INVALID_INPUT,
                    format!(
                        "bad --encoding `{text}`: expected float32[:ORDER], int16:SCALE or \
                         uint32:SCALE[:ORDER] (ORDER: abcd, cdab, badc, dcba)"
                    ),
                )
            })?,
        };
        let options = MapOptions::with_analog(analog);
        let map = match &args.map {
            None => RegisterMap::default_map(options),
            Some(file) => {
                RegisterMap::load(file, options).map_err(|e| Failure::new(INVALID_INPUT, e))?
            }
        };
        let seconds = |flag: &str, text: &Option<String>| -> Result<Option<f64>, Failure> {
            text.as_deref()
                .map(|t| {
                    scenarios::duration::parse_duration(t)
                        .map(|d| d.seconds(scenario.grid.frequency))
                        .map_err(|e| Failure::msg(INVALID_INPUT, format!("{flag}: {e}")))
                })
                .transpose()
        };
        let end = seconds("--duration", &args.duration)?
            .map_or(scenario.duration, |d| d.min(scenario.duration));
        // A duration as a `Duration`: negative or beyond what it can hold is a usage error.
        let wall = |flag: &str, s: f64| {
            Duration::try_from_secs_f64(s).map_err(|_| {
                Failure::msg(
                    INVALID_INPUT,
                    format!("{flag}: {s} s is not a usable length of time"),
                )
            })
        };
        let linger = wall(
            "--linger",
            seconds("--linger", &args.linger)?.unwrap_or(0.0),
        )?;
        let idle_timeout = match args.idle_timeout.trim() {
            "0" => None,
            text => seconds("--idle-timeout", &Some(text.to_string()))?
                .filter(|s| *s > 0.0)
                .map(|s| wall("--idle-timeout", s))
                .transpose()?,
        };
        let event_log = (args.event_log.as_os_str() != "none").then(|| args.event_log.clone());
        Ok(Plan {
            group,
            broker: args.mqtt.broker_url()?,
            map: Arc::new(map),
            end,
            linger,
            idle_timeout,
            event_log,
        })
    }
}

async fn serve_scenario(scenario: &Scenario, args: &MeterArgs, plan: Plan) -> CommandResult {
    let meters: Vec<SharedMeter> = (0..u32::from(args.units))
        .map(|index| {
            let which = MeterRef {
                group: plan.group,
                index: args.id + index,
            };
            Arc::new(Mutex::new(LiveMeter::new(
                scenario,
                which,
                plan.map.clone(),
            )))
        })
        .collect();
    let units = if meters.len() == 1 {
        Units::Single(meters[0].clone())
    } else {
        Units::Gateway(meters.clone())
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .or_exit(ENVIRONMENT, || format!("cannot listen on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .or_exit(ENVIRONMENT, || "cannot read the bound address".into())?;
    let mut event_log = match &plan.event_log {
        None => None,
        Some(path) => Some(EventLogWriter::append_to(path).or_exit(ENVIRONMENT, || {
            format!("cannot open the event log {}", path.display())
        })?),
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let connected = Arc::new(Notify::new());
    let server = tokio::spawn(serve_with(
        listener,
        Arc::new(units),
        Box::pin(async move {
            let _ = stop_rx.await;
        }),
        ServeOptions {
            idle_timeout: plan.idle_timeout,
            connected: Some(connected.clone()),
        },
    ));
    {
        let group = &scenario.groups[plan.group].name;
        let who = if meters.len() == 1 {
            format!("meter {group}/{} (any unit id)", args.id)
        } else {
            format!(
                "{} meters of {group} ({}..={}) as unit ids 1..={}",
                meters.len(),
                args.id,
                args.id + meters.len() as u32 - 1,
                meters.len()
            )
        };
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "modbus listening on {addr}: {who}, scenario {}",
            scenario.name
        )
        .and_then(|()| out.flush())
        .or_exit(ENVIRONMENT, || "cannot write to stdout".into())?;
    }
    // MQTT: the broker (blocking until it accepts connections); the links start with the clock.
    let mut broker = None;
    if let Some(url) = plan.broker.clone() {
        broker = Some(mqtt_links::start_and_print(url).await?);
    }

    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    if args.wait_for_client {
        tokio::select! {
            () = connected.notified() => {}
            _ = &mut ctrl_c => interrupted = true,
        }
    }
    // Grid time 0: the pacing clock and the epoch of the payloads' source timestamps.
    let start = Instant::now();
    let epoch_ms = mqtt_links::epoch_now_ms();
    let links = broker.as_ref().map(|running| {
        let with_refs = meters
            .iter()
            .enumerate()
            .map(|(k, m)| {
                let which = MeterRef {
                    group: plan.group,
                    index: args.id + k as u32,
                };
                (m.clone(), which)
            })
            .collect();
        Links::spawn(scenario, with_refs, running.addr(), &args.mqtt, epoch_ms)
    });
    let mut stats = PacingStats::default();
    let step = Duration::from_millis(args.step_ms);
    let mut log_error = None;
    if !interrupted {
        // The event log follows the pacing loop step by step.
        let logging = async {
            let Some(log) = event_log.as_mut() else {
                return std::future::pending().await;
            };
            let mut ticker = tokio::time::interval(step);
            loop {
                ticker.tick().await;
                if let Err(e) = log.append(&meters) {
                    return e;
                }
            }
        };
        tokio::select! {
            () = run_paced(&meters, start, step, plan.end, &mut stats) => {}
            e = logging => log_error = Some(e),
            _ = &mut ctrl_c => interrupted = true,
        }
    }
    // Whatever the last step produced.
    if let (Some(log), None) = (event_log.as_mut(), &log_error) {
        if let Err(e) = log.append(&meters) {
            log_error = Some(e);
        }
    }
    if !interrupted && !plan.linger.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(plan.linger) => {}
            _ = &mut ctrl_c => {}
        }
    }
    // Links flush what the meters buffered, publish their offline status and disconnect.
    let link_report = match links {
        Some(links) => {
            let counters = links.counters.clone();
            Some((links.stop().await, counters.snapshot()))
        }
        None => None,
    };
    drop(broker);
    let _ = stop_tx.send(());
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Failure::new(ENVIRONMENT, e)),
        Err(e) => {
            return Err(Failure::msg(
                ENVIRONMENT,
                format!("modbus server failed: {e}"),
            ))
        }
    }
    if let (Some(e), Some(path)) = (log_error, &plan.event_log) {
        return Err(Failure::msg(
            ENVIRONMENT,
            format!("cannot write the event log {}: {e}", path.display()),
        ));
    }
    let trips: u64 = meters
        .iter()
        .filter_map(|m| m.lock().ok().map(|m| m.image().state().trip_count))
        .sum();
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "{}: grid time {:.3} s in {} steps, {} overruns (longest step {:.2} ms), {} trips",
        if interrupted { "interrupted" } else { "done" },
        stats.sim_time,
        stats.steps,
        stats.overruns,
        stats.max_step_work.as_secs_f64() * 1e3,
        trips
    );
    if let Some((r, c)) = link_report {
        let overflowed: u64 = meters
            .iter()
            .filter_map(|m| m.lock().ok().map(|m| m.meter().overflowed()))
            .sum();
        let _ = writeln!(
            err,
            "mqtt: {} messages published, {} acknowledged, {} reconnects, {} overflowed, {} left \
             undelivered, {} packet encapsulation errors ({} dropped), {} of {} links flushed",
            c.published,
            c.acked,
            c.reconnects,
            overflowed,
            r.left_in_ring + r.unacked + r.unsent,
            c.encapsulation_errors,
            c.dropped_oversize,
            r.flushed,
            r.meters
        );
    }
    Ok(SUCCESS)
}
