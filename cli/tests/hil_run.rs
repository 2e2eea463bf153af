//! `--mode hil` through emulated sources: the library's sag, swell and interruption scenarios
//! programmed into SCPI AC-source emulators over TCP (Chroma and AMETEK dialects), the meters
//! fed by what the sources output, run live, give sim mode's verdicts; a disturbance the
//! sources cannot program fails the run naming it; every source ends with its output off.

use std::path::Path;

use gridloop::hil_run::{run_hil, HilOptions};
use hil_bridge::source::{Dialect, SafetyLimits};
use sim_core::Scenario;
use virtual_meter::broker::BrokerUrl;

use super::live::{live_options, LIVE};

fn load(name: &str) -> (Scenario, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios/library/sags-swells")
        .join(format!("{name}.yaml"));
    let sc = scenarios::load_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (sc, path.display().to_string())
}

fn options(dialect: Dialect) -> HilOptions {
    HilOptions {
        live: live_options(BrokerUrl::Embedded, None),
        dialect,
        safety: SafetyLimits {
            max_volts: 300.0,
            max_freq: 66.0,
            min_freq: 45.0,
        },
    }
}

fn verdicts(outcome: &sim_core::outcome::ScenarioOutcome) -> Vec<(String, bool)> {
    outcome
        .expectations
        .iter()
        .map(|e| (e.label.clone(), e.passed))
        .collect()
}

#[test]
fn sag_swell_and_interruption_through_emulated_sources_give_sim_verdicts() {
    for (name, dialect) in [
        ("sag-75pct-12-cycles", Dialect::Chroma),
        ("sag-75pct-12-cycles", Dialect::Ametek),
        ("swell-120pct-10-cycles", Dialect::Chroma),
        ("interruption-momentary", Dialect::Ametek),
    ] {
        let (sc, file) = load(name);
        let sim = sim_core::harness::run(&sc, &file);
        assert!(sim.passed(), "{name} passes in sim");
        let _turn = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        let hil = run_hil(&sc, &file, &options(dialect));
        assert_eq!(hil.mode, "hil");
        assert_eq!(
            verdicts(&hil),
            verdicts(&sim),
            "{name} via {dialect:?}: {:#?}",
            hil.expectations
        );
    }
}

#[test]
fn a_disturbance_the_sources_cannot_program_fails_the_run_naming_it() {
    let (sc, file) = load("sag-phase-jump");
    let _turn = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    let hil = run_hil(&sc, &file, &options(Dialect::Chroma));
    assert!(!hil.passed());
    let e = &hil.expectations[0];
    assert_eq!(e.kind, gridloop::live::ENVIRONMENT_KIND);
    assert!(e.measured.contains("phase jump"), "{}", e.measured);
}

#[test]
fn a_program_over_the_lab_limit_is_refused_before_the_run() {
    let (sc, file) = load("swell-120pct-10-cycles");
    let mut opts = options(Dialect::Chroma);
    opts.safety.max_volts = 264.0; // the swell reaches 288 V
    let _turn = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    let hil = run_hil(&sc, &file, &opts);
    assert!(!hil.passed());
    let measured = &hil.expectations[0].measured;
    assert!(measured.contains("safety limit"), "{measured}");
}
