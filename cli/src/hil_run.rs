//! `gridloop run --mode hil` with emulated instruments: the scenario's supply is programmed
//! into SCPI AC-source emulators over real TCP sockets, exactly as a lab's sources would be
//! (one single-phase source per phase of each meter group, the `hil_bridge::source` driver with
//! its safety limits, `SYST:ERR?` after every program, output off at the end), and the meters
//! under test are fed by what the sources were programmed to output — not by the scenario —
//! then run and judged as in live mode (broker, head-end, the same expectations).
//!
//! What this proves: the whole chain scenario → program → dialect → instrument → supply →
//! meter → head-end → verdict on real sockets. A disturbance the sources cannot program (a
//! phase jump, harmonics on these dialects, a ramp AMETEK lists cannot do) fails the run with
//! the driver's error, naming it. Ctrl-C, an error and the end of the run all switch every
//! source's output off (and wait for the emulator to confirm it). Real hardware (a lab profile's sources and meters) is the
//! next step of issue 6.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hil_bridge::emulator::{outputs_to_disturbances, EmulatedOutput, Emulator, Instrument};
use hil_bridge::scpi::ScpiLink;
use hil_bridge::source::{envelope_program, AcSource, Dialect, SafetyLimits};
use sim_core::harness::Observations;
use sim_core::outcome::ScenarioOutcome;
use sim_core::{Phase, PhaseSet, Scenario};

use crate::live::{live, live_outcome, LiveOptions};

/// Settings of an emulated HIL run.
#[derive(Debug, Clone)]
pub struct HilOptions {
    /// The live part: broker, pacing, head-end.
    pub live: LiveOptions,
    /// The SCPI dialect the emulated sources speak (and the driver renders).
    pub dialect: Dialect,
    /// The lab's safety limits: never programmed above them.
    pub safety: SafetyLimits,
}

/// Set by Ctrl-C during an HIL run: the scenarios after it are not run.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Run `scenario` through emulated sources; `file` is the path shown in reports.
pub fn run_hil(scenario: &Scenario, file: &str, opts: &HilOptions) -> ScenarioOutcome {
    if INTERRUPTED.load(Ordering::Relaxed) {
        let why = "not run: the HIL run was interrupted (Ctrl-C)".to_owned();
        let mut outcome = live_outcome(scenario, file, Err(why));
        outcome.mode = "hil";
        return outcome;
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))
        .and_then(|rt| rt.block_on(hil(scenario, opts)));
    let mut outcome = live_outcome(scenario, file, result);
    outcome.mode = "hil";
    outcome
}

/// Program the sources, derive the meters' supply from their outputs, run live.
async fn hil(scenario: &Scenario, opts: &HilOptions) -> Result<Observations, String> {
    let mut sources = Vec::new();
    let mut disturbances = Vec::new();
    for g in 0..scenario.groups.len() {
        let mut outputs: Vec<(PhaseSet, EmulatedOutput)> = Vec::new();
        for ch in 0..scenario.grid.channels() {
            let phase = Phase::from_index(ch).ok_or_else(|| format!("no phase {ch}"))?;
            let what = format!("group {} phase {}", scenario.groups[g].name, phase.name());
            let program = envelope_program(
                &scenario.grid,
                &scenario.disturbances,
                g,
                ch,
                scenario.duration,
            )
            .map_err(|e| format!("{what}: cannot program a source: {e}"))?;
            let emulator = Emulator::bind(
                "127.0.0.1:0",
                Instrument::new(opts.dialect, opts.safety.max_volts.max(300.0)),
            )
            .await
            .map_err(|e| format!("{what}: cannot start the source emulator: {e}"))?;
            let addr = emulator.local_addr().to_string();
            let link = ScpiLink::connect_tcp(&addr, Duration::from_secs(2))
                .await
                .map_err(|e| format!("{what}: {e}"))?;
            let mut source = AcSource::new(link, opts.dialect, opts.safety);
            // An emulator is ready at once; a lab's source waits its dialect's post-*RST delay.
            source.rst_delay = Duration::ZERO;
            let steps = async {
                source.identify().await?;
                source.reset().await?;
                source.program(&program).await?;
                source.start().await
            };
            steps.await.map_err(|e| format!("{what} ({addr}): {e}"))?;
            outputs.push((PhaseSet::of(&[phase]), emulator.output()));
            sources.push((what, source, emulator));
        }
        let refs: Vec<(PhaseSet, &EmulatedOutput)> = outputs.iter().map(|(p, o)| (*p, o)).collect();
        let mut ds = outputs_to_disturbances(&scenario.grid, &refs, 0.0, scenario.duration)
            .map_err(|e| {
                format!(
                    "group {}: the sources' output: {e}",
                    scenario.groups[g].name
                )
            })?;
        for d in &mut ds {
            d.groups = vec![g];
        }
        disturbances.extend(ds);
    }
    // The meters under test see what the sources output; everything else (network events,
    // expectations) is the scenario's.
    let fed = Scenario {
        disturbances,
        ..scenario.clone()
    };
    // Ctrl-C ends the run here, so the sources below are switched off before the process
    // exits (the live run is dropped: its head-end and meters stop with it).
    let result = tokio::select! {
        r = live(&fed, &opts.live) => r,
        _ = tokio::signal::ctrl_c() => {
            INTERRUPTED.store(true, Ordering::Relaxed);
            Err("interrupted (Ctrl-C): every source was switched off".to_owned())
        }
    };
    // Output off on every source, whatever the run did; the emulator confirms it.
    let mut off_errors = Vec::new();
    for (what, source, emulator) in sources {
        if let Err(e) = source.shutdown().await {
            off_errors.push(format!("{what}: output off failed: {e}"));
        } else if !emulator
            .wait_for(Duration::from_secs(2), |i, _| !i.output().output_on)
            .await
        {
            off_errors.push(format!("{what}: output still on 2 s after OUTP OFF"));
        }
    }
    if !off_errors.is_empty() {
        return Err(off_errors.join("; "));
    }
    result
}
