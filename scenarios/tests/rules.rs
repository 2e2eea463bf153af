//! Single rules of the format, each as a small edit of the DESIGN sketch.

use std::path::Path;

use scenarios::{load_str, LoadError};
use sim_core::disturbance::DisturbanceKind;
use sim_core::scenario::{Expectation, Tolerance};
use sim_core::{PhaseSet, PhaseSystem};

use crate::design_sketch::SKETCH;

fn edit(pairs: &[(&str, &str)]) -> String {
    let mut s = SKETCH.to_string();
    for (from, to) in pairs {
        assert!(s.contains(from), "sketch lacks {from:?}");
        s = s.replacen(from, to, 1);
    }
    s
}

fn ok(pairs: &[(&str, &str)]) -> sim_core::Scenario {
    match load_str(&edit(pairs), Path::new("r.yaml")) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

/// The diagnostics of an edit that must fail, as `path: message` strings.
fn errs(pairs: &[(&str, &str)]) -> Vec<String> {
    match load_str(&edit(pairs), Path::new("r.yaml")) {
        Ok(_) => panic!("{pairs:?} was accepted"),
        Err(LoadError::Invalid(d)) => d
            .iter()
            .map(|d| format!("{}: {}", d.path, d.message))
            .collect(),
        Err(e) => panic!("{e}"),
    }
}

fn has(pairs: &[(&str, &str)], want: &str) {
    let got = errs(pairs);
    assert!(
        got.iter().any(|g| g.contains(want)),
        "wanted {want:?} in {got:#?}"
    );
}

#[test]
fn phase_systems_accept_numbers_and_names() {
    for (text, system) in [
        ("1", PhaseSystem::Single),
        ("2", PhaseSystem::SplitPhase),
        ("split", PhaseSystem::SplitPhase),
        ("\"3\"", PhaseSystem::ThreePhase),
        ("three", PhaseSystem::ThreePhase),
    ] {
        let s = ok(&[("phases: 3,", &format!("phases: {text},"))]);
        assert_eq!(s.grid.system, system, "{text}");
    }
    has(&[("phases: 3,", "phases: 2.5,")], "grid.phases: must be 1");
    has(&[("phases: 3,", "phases: [3],")], "grid.phases");
    // Default phases of a disturbance are the grid's channels.
    let s = ok(&[
        ("phases: 3,", "phases: split,"),
        ("harmonics: {", "harmonics: { phases: [L2],"),
    ]);
    assert_eq!(
        s.disturbances[1].phases,
        PhaseSet::of(&[sim_core::Phase::L2])
    );
    let s = ok(&[
        ("phases: 3,", "phases: 1,"),
        ("sag: { phases: [L1], ", "sag: { "),
    ]);
    assert_eq!(
        s.disturbances[0].phases,
        PhaseSet::of(&[sim_core::Phase::L1])
    );
}

#[test]
fn defaults_apply_when_keys_are_left_out() {
    let src = "schema: 1\nname: minimal\nduration: 1s\ngrid: { nominal: 230 }\nmeters: [ { group: g } ]\n";
    let s = load_str(src, Path::new("m.yaml")).unwrap();
    assert_eq!((s.seed, s.description.as_str(), s.tags.len()), (0, "", 0));
    assert_eq!(
        (s.grid.frequency, s.grid.system, s.grid.sample_rate),
        (60.0, PhaseSystem::ThreePhase, 12_800.0)
    );
    assert_eq!(s.pq, sim_core::scenario::PqThresholds::default());
    assert_eq!(s.head_end.stale_after, 180.0);
    let g = &s.groups[0];
    assert_eq!(
        (g.count, g.substation.as_str(), g.buffer_capacity),
        (1, "sub-01", 4096)
    );
    assert_eq!(g.thresholds, sim_core::scenario::Thresholds::default());
    assert_eq!(g.rbe, sim_core::scenario::RbeSpec::default());
    assert_eq!(g.link, sim_core::scenario::LinkSpec::default());
    assert_eq!(g.front_end, sim_core::scenario::FrontEnd::default());
    assert!(s.disturbances.is_empty() && s.network.is_empty() && s.expectations.is_empty());
}

#[test]
fn interruption_defaults_to_zero_residual_and_swell_keeps_its_magnitude() {
    let s = ok(&[("sag: { phases: [L1], residual: 0.7,", "interruption: {")]);
    let DisturbanceKind::Interruption(v) = &s.disturbances[0].kind else {
        panic!()
    };
    assert_eq!(v.level, 0.0);
    let s = ok(&[(
        "sag: { phases: [L1], residual: 0.7,",
        "swell: { magnitude: 1.25, ramp: 2ms, point_on_wave: 45,",
    )]);
    assert_eq!(s.disturbances[0].point_on_wave_deg, Some(45.0));
    let DisturbanceKind::Swell(v) = &s.disturbances[0].kind else {
        panic!()
    };
    assert_eq!((v.level, v.ramp), (1.25, 0.002));
}

#[test]
fn ranges_are_enforced_with_the_field_named() {
    has(
        &[("residual: 0.7", "residual: 0")],
        "events[0].sag.residual: must be between 0 and 1 (exclusive), got 0",
    );
    has(
        &[("residual: 0.7", "residual: .nan")],
        "events[0].sag.residual",
    );
    has(
        &[("nominal: 240.0", "nominal: 89")],
        "grid.nominal: must be between 90 and 480, got 89",
    );
    has(
        &[("sample_rate: 12800", "sample_rate: 0.5")],
        "grid.sample_rate: must be at least 1",
    );
    has(
        &[("sample_rate: 12800", "sample_rate: 1000")],
        "use `fidelity: rms`",
    );
    ok(&[
        ("sample_rate: 12800", "sample_rate: 1000"),
        ("fidelity: waveform ", "fidelity: rms "),
    ]);
    has(
        &[("count: 100", "count: 1000001")],
        "meters[0].count: must be between 1 and 1000000",
    );
    has(
        &[("registers: float32,", "registers: float32, scale: 0.1,")],
        "meters[0].encoding.scale",
    );
    has(
        &[("duration: 1s } }", "duration: 0s } }")],
        "events[1].harmonics.duration: must be longer than 0",
    );
    has(
        &[("3: 0.05", "3: 0.6")],
        "events[1].harmonics.orders.3: must be between 0 and 0.5",
    );
    has(
        &[("p99: 50ms", "p99: 50ms, p50: 1 parsec")],
        "expect[1].alarm_latency.p50: unknown duration unit",
    );
    has(
        &[("alarm_latency: { p99: 50ms }", "alarm_latency: {}")],
        "give at least one of p50, p99, max",
    );
}

#[test]
fn several_problems_are_all_reported() {
    let got = errs(&[
        ("nominal: 240.0", "nominal: 20"),
        ("count: 100", "count: 0"),
        ("residual: 0.7", "residual: 7"),
        ("groups: [feeder-a]", "groups: [nope]"),
        ("code: UV_TRIP_0x01", "code: NOPE"),
    ]);
    assert_eq!(got.len(), 5, "{got:#?}");
}

#[test]
fn tolerances_parse_as_documented() {
    let s = ok(&[(
        "  - delivered: { lost: 0 }\n",
        "  - delivered: { lost: 0 }\n  - measurement: { quantity: frequency, at: 5s, expected: 60, tolerance: \" 1.5 % \" }\n  - event: { kind: dip, residual: 0.7, tolerance: 0.01, duration: 10cycles }\n",
    )]);
    assert!(
        matches!(s.expectations[4], Expectation::Measurement { tolerance: Tolerance::Percent(p), .. } if p == 1.5)
    );
    assert!(
        matches!(s.expectations[5], Expectation::PqEvent { residual_tolerance: Tolerance::Absolute(a), .. } if a == 0.01)
    );
    has(
        &[(
            "  - delivered: { lost: 0 }\n",
            "  - measurement: { quantity: thd, at: 5s, expected: 1, tolerance: -1 }\n",
        )],
        "expect[3].measurement.tolerance",
    );
    has(
        &[(
            "  - delivered: { lost: 0 }\n",
            "  - measurement: { quantity: volts, at: 5s, expected: 1, tolerance: 1 }\n",
        )],
        "unknown variant `volts`",
    );
}

#[test]
fn network_event_groups_point_at_the_name() {
    let Err(LoadError::Invalid(d)) = load_str(
        &edit(&[("groups: [feeder-a]", "groups: [feeder-x]")]),
        Path::new("r.yaml"),
    ) else {
        panic!("accepted")
    };
    assert_eq!(d.len(), 1);
    assert_eq!(
        d[0].to_string(),
        "r.yaml:20:35: events[2].rf_loss.groups[0]: unknown group `feeder-x`; known groups: `feeder-a`"
    );
}

const EVENTS: &str = "  - { at: 3s, rf_loss: { groups: [feeder-a], duration: 30s } }";

#[test]
fn limits_accept_their_boundary_values() {
    // Durations exactly at their maxima.
    let s = ok(&[
        ("duration: 40s", "duration: 720h"),
        (
            "rbe: { delta: 1.0, heartbeat: 60s }",
            "rbe: { delta: 1.0, heartbeat: 24h, interval: 1h }\n    link: { latency: 60s, jitter: 60000ms, retry: 60min, loss: 0.3 }",
        ),
        ("buffer: { capacity: 4096 }", "buffer: { capacity: 10000000 }"),
        (
            EVENTS,
            "  - { at: 3s, packet_loss: { probability: 0.6, duration: 1s } }\n  - { at: 4s, latency: { extra: 1min, jitter: 60s, duration: 1s } }",
        ),
    ]);
    assert_eq!(s.duration, 720.0 * 3600.0);
    let g = &s.groups[0];
    assert_eq!((g.rbe.heartbeat, g.rbe.interval), (86_400.0, 3_600.0));
    assert_eq!(
        (g.link.latency, g.link.jitter, g.link.retry),
        (60.0, 60.0, 3_600.0)
    );
    assert_eq!(g.buffer_capacity, 10_000_000);
    // 0.3 + 0.6 is 0.8999…: at the limit, accepted.
    assert_eq!(s.network.len(), 2);
    // Measurement windows: one cycle after the start up to just before the end.
    for at in ["1cycle", "16.667ms", "39.999s"] {
        ok(&[(
            "  - delivered: { lost: 0 }",
            &format!("  - measurement: {{ quantity: rms_10cycle, at: {at}, expected: 240, tolerance: 1 }}"),
        )]);
    }
    // PQ thresholds one step inside.
    ok(&[(
        "meters:",
        "pq: { dip: 97.5, swell: 102.5, interruption: 5, hysteresis: 2 }\nmeters:",
    )]);
}

#[test]
fn loss_of_every_packet_loss_on_a_group_is_summed() {
    let two = "  - { at: 3s, packet_loss: { probability: 0.5, duration: 1s } }\n  - { at: 30s, packet_loss: { groups: [feeder-a], probability: 0.45, duration: 1s } }";
    let got = errs(&[(EVENTS, two)]);
    // Reported at both events (the windows do not overlap: the sum counts anyway).
    for i in [2, 3] {
        assert!(
            got.iter().any(
                |g| g.starts_with(&format!("events[{i}].packet_loss.probability"))
                    && g.contains("`feeder-a` (0.950)")
            ),
            "{got:#?}"
        );
    }
}

#[test]
fn thermal_drift_must_settle() {
    let td = |fields: &str| {
        format!(
            "  - {{ at: 3s, thermal_drift: {{ r20: 0.1, tau: 10min, duration: 5min, {fields} }} }}"
        )
    };
    // k = I²·R20·R_th = 203.5: kα = 0.80 < 0.9 but T∞ ≈ 1061 °C, far above 250 °C.
    has(
        &[(EVENTS, &td("current: 80, thermal_resistance: 0.318"))],
        "would settle at",
    );
    // kα ≥ 0.9.
    has(
        &[(EVENTS, &td("current: 80, thermal_resistance: 0.36"))],
        "no thermal steady state: I²·R20·α·R_th = 0.9055",
    );
    // Settles: T∞ = (25 + 32·(1 − 20α)) / (1 − 32α) with α = 0.00393 → 62.32 °C.
    let s = ok(&[(EVENTS, &td("current: 80, thermal_resistance: 0.05"))]);
    let DisturbanceKind::ThermalDrift(t) = &s.disturbances[2].kind else {
        panic!("{:?}", s.disturbances[2].kind)
    };
    let (k, a): (f64, f64) = (32.0, 0.00393);
    let t_inf = (25.0 + k * (1.0 - 20.0 * a)) / (1.0 - k * a);
    assert!((t_inf - 62.32).abs() < 0.01, "{t_inf}");
    // The drop at T∞ (8 V · 1.166) is far below 0.9 × 240 V; now make it too big.
    assert_eq!(t.thermal_resistance, 0.05);
    has(
        &[(
            EVENTS,
            &td("current: 80, thermal_resistance: 0.001, x: 5, power_factor: 0.5"),
        )],
        "not below 0.9 × nominal (216.0 V)",
    );
}
