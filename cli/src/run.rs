//! `gridloop run`: load everything, filter, run in parallel, report in input order.

use std::any::Any;
use std::cell::RefCell;
use std::io::IsTerminal;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use reports::{JsonReporter, JunitReporter, Reporter, RunEvent, RunSummary, TerminalReporter};
use sim_core::outcome::{ExpectationOutcome, ScenarioOutcome};

use crate::args::{Mode, RunArgs};
use crate::exit::{
    CommandResult, Failure, OrExit, ENVIRONMENT, EXPECTATION_FAILED, INVALID_INPUT, NOTHING_RAN,
    SUCCESS,
};
use crate::live::{run_live, LiveOptions};
use crate::load::{self, LoadedScenario};
use crate::report_dir::StagedReporters;
use crate::staged::same_file;
use sim_core::Scenario;

/// `--mode hil`: the lab profile (`--lab`), which must be emulated for now — its sources
/// (their dialect and the lab's safety limits) are SCPI emulators and its meters virtual ones.
fn hil_options(args: &RunArgs, live: LiveOptions) -> Result<crate::hil_run::HilOptions, Failure> {
    use hil_bridge::lab::{InstrumentTransport, Lab, MeterTransport};
    let Some(path) = &args.lab else {
        return Err(Failure::msg(
            INVALID_INPUT,
            "--mode hil needs --lab FILE (lab/emulated.yaml runs the HIL path on emulators)",
        ));
    };
    let lab = Lab::load(path).map_err(|e| Failure::msg(INVALID_INPUT, e.to_string()))?;
    let hardware = lab
        .instruments
        .iter()
        .filter(|i| !matches!(i.transport, InstrumentTransport::Emulated))
        .map(|i| i.name.clone())
        .chain(
            lab.meters
                .iter()
                .filter(|m| !matches!(m.transport, MeterTransport::Emulated { .. }))
                .map(|m| m.name.clone()),
        )
        .collect::<Vec<_>>();
    if !hardware.is_empty() {
        return Err(Failure::msg(
            ENVIRONMENT,
            format!(
                "{}: runs with real instruments or meters ({}) are not built yet (issue 6); \
                 `gridloop hil probe --lab {}` checks them",
                path.display(),
                hardware.join(", "),
                path.display()
            ),
        ));
    }
    let Some(source) = lab.instruments.first() else {
        return Err(Failure::msg(
            INVALID_INPUT,
            format!("{}: no instrument to program the supply", path.display()),
        ));
    };
    Ok(crate::hil_run::HilOptions {
        live,
        dialect: source.dialect,
        safety: lab.safety,
    })
}

/// Runs one scenario: sim mode's harness or live mode.
type Runner<'a> = dyn Fn(&Scenario, &str) -> ScenarioOutcome + Sync + 'a;

/// Expectation kind reported for a scenario whose run panicked.
pub const PANIC_KIND: &str = "panic";

pub fn run(args: &RunArgs, color: bool) -> CommandResult {
    // Two reporters writing one file would interleave: every output file must be distinct.
    let mut outputs: Vec<(String, PathBuf)> = Vec::new();
    if let Some(p) = &args.junit {
        outputs.push(("--junit".into(), p.clone()));
    }
    if let Some(p) = &args.json {
        outputs.push(("--json".into(), p.clone()));
    }
    if let Some(dir) = &args.report {
        for name in [
            crate::report_dir::SUMMARY_MD,
            crate::report_dir::RESULTS_JSON,
            crate::report_dir::JUNIT_XML,
            crate::report_dir::INDEX_HTML,
        ] {
            outputs.push((format!("--report ({name})"), dir.join(name)));
        }
    }
    for (i, (flag_a, a)) in outputs.iter().enumerate() {
        if let Some((flag_b, _)) = outputs[i + 1..].iter().find(|(_, b)| same_file(a, b)) {
            return Err(Failure::msg(
                INVALID_INPUT,
                format!(
                    "{flag_a} and {flag_b} name the same file ({}); give each report its own file",
                    a.display()
                ),
            ));
        }
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.jobs.map_or(0, |n| n.get()))
        .thread_name(|i| format!("gridloop-run-{i}"))
        .build()
        .or_exit(ENVIRONMENT, || "cannot start the worker threads".into())?;

    let loaded = pool.install(|| load::load_valid(&args.paths.paths))?;
    let loaded_count = loaded.len();
    // A report written over a scenario file would destroy the input.
    let resolved: Vec<_> = outputs
        .iter()
        .map(|(flag, p)| (flag, p, crate::staged::resolve(p)))
        .collect();
    for l in &loaded {
        let input = crate::staged::resolve(&l.path);
        if let Some((flag, _, _)) = resolved
            .iter()
            .find(|(_, p, r)| **p == l.path || (r.is_some() && *r == input))
        {
            return Err(Failure::msg(
                INVALID_INPUT,
                format!(
                    "{flag} names the scenario file {}; write the report elsewhere",
                    l.display
                ),
            ));
        }
    }
    let mut jobs: Vec<LoadedScenario> = loaded
        .into_iter()
        .filter(|l| args.filter.accepts(&l.scenario.tags))
        .collect();
    if jobs.is_empty() {
        return Err(Failure::msg(
            NOTHING_RAN,
            format!(
                "no scenario has any of the tags {} ({loaded_count} loaded); nothing ran",
                args.filter.describe()
            ),
        ));
    }
    if let Some(seed) = args.seed {
        for job in &mut jobs {
            job.scenario.seed = seed;
        }
    }

    // Stage report files before spending time on the run, so a bad path fails fast; the real
    // paths are replaced only once every report is complete.
    let mut staged = StagedReporters::default();
    if let Some(path) = &args.junit {
        staged.add(path, "JUnit", JunitReporter::new)?;
    }
    if let Some(path) = &args.json {
        staged.add(path, "JSON", JsonReporter::new)?;
    }
    if let Some(dir) = &args.report {
        crate::report_dir::open(dir, &mut staged)?;
    }
    let file_reporters = &mut staged.reporters;

    let mut terminal = TerminalReporter::new(std::io::stdout().lock())
        .with_color(color)
        .with_quiet(args.quiet);
    let bar = progress_bar(jobs.len(), args.quiet);
    let mut terminal_ok = true;
    let mut to_terminal = |event: &RunEvent<'_>| {
        if terminal_ok {
            if let Err(e) = bar.suspend(|| terminal.on_event(event)) {
                // Keep going: the exit code and the report files still carry the verdict.
                tracing::warn!("terminal summary stopped: {e}");
                terminal_ok = false;
            }
        }
    };

    let started = RunEvent::RunStarted {
        scenarios: jobs.len(),
    };
    to_terminal(&started);
    let mut file_errors = Vec::new();
    for (path, r) in file_reporters.iter_mut() {
        if let Err(e) = r.on_event(&started) {
            file_errors.push(format!("{path}: {e}"));
        }
    }

    let live = match args.mode {
        Mode::Sim => None,
        Mode::Live | Mode::Hil => Some(LiveOptions {
            broker: args.mqtt.broker_url()?.ok_or_else(|| {
                Failure::msg(
                    INVALID_INPUT,
                    "--mode live needs a broker (not `--broker none`)",
                )
            })?,
            step: Duration::from_millis(args.step_ms),
            drain: Duration::from_secs(args.drain_s),
            alarm_store: args.alarm_store.clone(),
            head_ends: args.head_ends.map(usize::from),
            poll: (args.poll_ms > 0).then(|| Duration::from_millis(args.poll_ms)),
            mqtt: crate::mqtt_links::MqttArgs {
                reconnect_max_ms: args.mqtt.reconnect_max_ms.or(Some(50)),
                ..args.mqtt.clone()
            },
        }),
    };
    let hil = match (args.mode, &live) {
        (Mode::Hil, Some(live)) => Some(hil_options(args, live.clone())?),
        _ => None,
    };
    // Live runs take real time and real sockets: one scenario at a time.
    let live_pool;
    let (pool, runner): (&rayon::ThreadPool, Box<Runner<'_>>) = match (&live, &hil) {
        (None, _) => (&pool, Box::new(sim_core::harness::run)),
        (Some(_), Some(hil)) => {
            live_pool = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .thread_name(|i| format!("gridloop-hil-{i}"))
                .build()
                .or_exit(ENVIRONMENT, || "cannot start the HIL runner thread".into())?;
            (
                &live_pool,
                Box::new(move |s: &Scenario, f: &str| crate::hil_run::run_hil(s, f, hil)),
            )
        }
        (Some(opts), None) => {
            live_pool = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .thread_name(|i| format!("gridloop-live-{i}"))
                .build()
                .or_exit(ENVIRONMENT, || "cannot start the live runner thread".into())?;
            (
                &live_pool,
                Box::new(move |s: &Scenario, f: &str| run_live(s, f, opts)),
            )
        }
    };
    let outcomes = run_in_order(pool, &jobs, runner, |outcome, wall| {
        bar.inc(1);
        to_terminal(&RunEvent::ScenarioFinished {
            outcome,
            wall: Some(wall),
        });
        for (path, r) in file_reporters.iter_mut() {
            // Deterministic reports: the wall clock stays out of them.
            if let Err(e) = r.on_event(&RunEvent::ScenarioFinished {
                outcome,
                wall: None,
            }) {
                file_errors.push(format!("{path}: {e}"));
            }
        }
    });
    bar.finish_and_clear();

    let summary =
        RunSummary::new(outcomes, args.seed).with_command(crate::report_dir::command_line());
    let finished = RunEvent::RunFinished { summary: &summary };
    to_terminal(&finished);
    for (path, r) in file_reporters.iter_mut() {
        if let Err(e) = r.on_event(&finished) {
            file_errors.push(format!("{path}: {e}"));
        }
    }
    if !file_errors.is_empty() {
        // The staged files are dropped unrenamed: every old report stays as it was.
        return Err(Failure::msg(ENVIRONMENT, file_errors.join("\n")));
    }
    if let Some(dir) = &args.report {
        crate::report_dir::stage_plots(dir, &summary, &mut staged)?;
    }
    staged.commit()?;
    Ok(if summary.passed() {
        SUCCESS
    } else {
        EXPECTATION_FAILED
    })
}

fn progress_bar(len: usize, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} scenarios  {elapsed}") {
        bar.set_style(style);
    }
    bar
}

/// Run every job on `pool`, calling `on_finished` on this thread for each outcome **in input
/// order** as soon as it and all before it are done; returns the outcomes in input order.
///
/// `runner` is `sim_core::harness::run` in production; each call is guarded by [`run_guarded`].
pub fn run_in_order<R>(
    pool: &rayon::ThreadPool,
    jobs: &[LoadedScenario],
    runner: R,
    mut on_finished: impl FnMut(&ScenarioOutcome, Duration),
) -> Vec<ScenarioOutcome>
where
    R: Fn(&Scenario, &str) -> ScenarioOutcome + Sync,
{
    let (tx, rx) = mpsc::channel::<(usize, ScenarioOutcome, Duration)>();
    let mut pending: Vec<Option<(ScenarioOutcome, Duration)>> = jobs.iter().map(|_| None).collect();
    let mut outcomes = Vec::with_capacity(jobs.len());
    std::thread::scope(|s| {
        let runner = &runner;
        s.spawn(move || {
            pool.install(|| {
                jobs.par_iter()
                    .enumerate()
                    .for_each_with(tx, |tx, (i, job)| {
                        let start = Instant::now();
                        let outcome = run_guarded(job, runner);
                        // The receiver only goes away if this thread's scope is gone.
                        let _ = tx.send((i, outcome, start.elapsed()));
                    });
            });
        });
        for (i, outcome, wall) in rx {
            pending[i] = Some((outcome, wall));
            while let Some(slot) = pending.get_mut(outcomes.len()) {
                let Some((outcome, wall)) = slot.take() else {
                    break;
                };
                on_finished(&outcome, wall);
                outcomes.push(outcome);
            }
        }
    });
    outcomes
}

/// Run one scenario; a panic becomes a failed scenario that says so.
pub fn run_guarded<R>(job: &LoadedScenario, runner: R) -> ScenarioOutcome
where
    R: Fn(&Scenario, &str) -> ScenarioOutcome,
{
    LAST_PANIC.with(|p| p.borrow_mut().take());
    match catch_unwind(AssertUnwindSafe(|| runner(&job.scenario, &job.display))) {
        Ok(outcome) => outcome,
        Err(payload) => {
            let location = LAST_PANIC.with(|p| p.borrow_mut().take());
            panicked_outcome(job, &panic_message(payload.as_ref()), location)
        }
    }
}

thread_local! {
    /// Where the last panic on this thread happened (set by the hook from [`install_panic_hook`]).
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Remember each panic's location for [`run_guarded`], then let the default hook print it as
/// usual (a panic is a bug: it is never hidden).
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(loc) = info.location() {
            let at = format!("{}:{}:{}", loc.file(), loc.line(), loc.column());
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(at));
        }
        default(info);
    }));
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}

/// The outcome reported for a scenario whose run panicked: one failed expectation of kind
/// [`PANIC_KIND`] carrying the message (and location, when known).
pub fn panicked_outcome(
    job: &LoadedScenario,
    message: &str,
    location: Option<String>,
) -> ScenarioOutcome {
    let s = &job.scenario;
    let mut detail = String::new();
    if let Some(at) = location {
        detail.push_str(&format!("panicked at {at}\n"));
    }
    detail.push_str("this is a bug in gridloop, not in the scenario: please report it");
    ScenarioOutcome {
        name: s.name.clone(),
        file: job.display.clone(),
        description: s.description.clone(),
        tags: s.tags.clone(),
        seed: s.seed,
        mode: "sim",
        duration: s.duration,
        stats: Default::default(),
        expectations: vec![ExpectationOutcome {
            index: 0,
            kind: PANIC_KIND,
            label: "scenario runs to completion".to_owned(),
            passed: false,
            expected: "no panic".to_owned(),
            measured: format!("panicked: {message}"),
            detail: Some(detail),
        }],
        timeline: Vec::new(),
        plots: Default::default(),
    }
}

/// True when the terminal summary should be coloured.
pub fn stdout_color(choice: crate::args::ColorChoice) -> bool {
    use crate::args::ColorChoice;
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sim_core::grid::{GridSpec, PhaseSystem};
    use sim_core::scenario::{HeadEndSpec, PqThresholds};
    use sim_core::Scenario;

    fn job(i: usize) -> LoadedScenario {
        LoadedScenario {
            path: format!("s{i}.yaml").into(),
            display: format!("s{i}.yaml"),
            scenario: Scenario {
                name: format!("s{i}"),
                description: String::new(),
                tags: vec!["t".into()],
                seed: i as u64,
                duration: 1.0 + i as f64,
                grid: GridSpec {
                    nominal: 240.0,
                    frequency: 60.0,
                    system: PhaseSystem::ThreePhase,
                    sample_rate: 12_800.0,
                    load: None,
                },
                pq: PqThresholds::default(),
                groups: vec![],
                disturbances: vec![],
                network: vec![],
                head_end: HeadEndSpec::default(),
                expectations: vec![],
            },
        }
    }

    /// A stand-in harness: scenario `i` does `(n - i)` units of busy work (so later ones tend
    /// to finish first) and panics when its seed is 3.
    fn fake_run(s: &Scenario, file: &str) -> ScenarioOutcome {
        let mut x = 0_u64;
        for k in 0..(20 - s.seed) * 20_000 {
            x = x.wrapping_mul(31).wrapping_add(k);
        }
        std::hint::black_box(x);
        if s.seed == 3 {
            panic!("boom in {file}");
        }
        ScenarioOutcome {
            name: s.name.clone(),
            file: file.to_owned(),
            description: String::new(),
            tags: s.tags.clone(),
            seed: s.seed,
            mode: "sim",
            duration: s.duration,
            stats: Default::default(),
            expectations: vec![],
            timeline: vec![],
            plots: Default::default(),
        }
    }

    #[test]
    fn outcomes_arrive_in_input_order_and_a_panic_is_a_failure() {
        install_panic_hook();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        let jobs: Vec<_> = (0..16).map(job).collect();
        let mut seen = Vec::new();
        let outcomes = run_in_order(&pool, &jobs, fake_run, |o, _| seen.push(o.name.clone()));
        let names: Vec<String> = (0..16).map(|i| format!("s{i}")).collect();
        assert_eq!(seen, names);
        assert_eq!(
            outcomes.iter().map(|o| o.name.clone()).collect::<Vec<_>>(),
            names
        );

        let boom = &outcomes[3];
        assert!(!boom.passed());
        assert_eq!(boom.file, "s3.yaml");
        assert_eq!(boom.seed, 3);
        assert_eq!(boom.duration, 4.0);
        let e = &boom.expectations[0];
        assert_eq!(e.kind, PANIC_KIND);
        assert_eq!(e.measured, "panicked: boom in s3.yaml");
        let detail = e.detail.as_deref().unwrap();
        assert!(
            detail.starts_with("panicked at cli/src/run.rs:"),
            "{detail}"
        );
        assert!(outcomes
            .iter()
            .enumerate()
            .all(|(i, o)| o.passed() == (i != 3)));
    }

    #[test]
    fn panic_payloads_become_messages() {
        let p: Box<dyn Any + Send> = Box::new(42_u8);
        assert_eq!(panic_message(p.as_ref()), "(non-string panic payload)");
        let p: Box<dyn Any + Send> = Box::new(String::from("owned"));
        assert_eq!(panic_message(p.as_ref()), "owned");
        let p: Box<dyn Any + Send> = Box::new("static");
        assert_eq!(panic_message(p.as_ref()), "static");
        let o = panicked_outcome(&job(1), "x", None);
        assert_eq!(
            o.expectations[0].detail.as_deref(),
            Some("this is a bug in gridloop, not in the scenario: please report it")
        );
    }
}
