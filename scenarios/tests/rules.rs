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
            "rbe: { delta: 1.0, heartbeat: 24h, interval: 24h }\n    link: { latency: 60s, jitter: 60000ms, retry: 60min, loss: 0.3 }",
        ),
        ("buffer: { capacity: 4096 }", "buffer: { capacity: 10000000 }"),
        (
            EVENTS,
            "  - { at: 3s, packet_loss: { probability: 0.6, duration: 1s } }\n  - { at: 4s, latency: { extra: 1min, jitter: 60s, duration: 1s } }",
        ),
    ]);
    assert_eq!(s.duration, 720.0 * 3600.0);
    let g = &s.groups[0];
    assert_eq!((g.rbe.heartbeat, g.rbe.interval), (86_400.0, 86_400.0));
    assert_eq!(
        (g.link.latency, g.link.jitter, g.link.retry),
        (60.0, 60.0, 3_600.0)
    );
    assert_eq!(g.buffer_capacity, 10_000_000);
    // 0.3 + 0.6 is 0.8999…: at the limit, accepted.
    assert_eq!(s.network.len(), 2);
    // Measurement windows: from the start (the window containing `at` counts, even the first)
    // up to the last `at` whose window ends before the scenario does:
    // duration − window − one cycle = 40 − 0.2 − 1/60 = 39.78333 s for rms_10cycle.
    for (quantity, at) in [
        ("rms_10cycle", "0s"),
        ("rms_10cycle", "1ms"),
        ("urms_half_cycle", "1ms"),
        ("rms_10cycle", "39.783s"),
        ("thd", "39.783s"),
        ("urms_half_cycle", "39.966s"),
        ("rms_150cycle", "36.983s"),
    ] {
        ok(&[(
            "  - delivered: { lost: 0 }",
            &format!("  - measurement: {{ quantity: {quantity}, at: {at}, expected: 240, tolerance: 1 }}"),
        )]);
    }
    // PQ thresholds one step inside.
    ok(&[(
        "meters:",
        "pq: { dip: 97.5, swell: 102.5, interruption: 5, hysteresis: 2 }\nmeters:",
    )]);
}

#[test]
fn packet_loss_windows_add_only_where_they_overlap() {
    // 0.5 + 0.45 = 0.95, but the windows [3, 4) and [30, 31) never overlap: accepted, as the
    // link never sees more than 0.5.
    let apart = "  - { at: 3s, packet_loss: { probability: 0.5, duration: 1s } }\n  - { at: 30s, packet_loss: { groups: [feeder-a], probability: 0.45, duration: 1s } }";
    assert_eq!(ok(&[(EVENTS, apart)]).network.len(), 2);
    // Touching windows ([3, 4) and [4, 5)) do not overlap either (half-open).
    let touching = "  - { at: 3s, packet_loss: { probability: 0.5, duration: 1s } }\n  - { at: 4s, packet_loss: { probability: 0.45, duration: 1s } }";
    ok(&[(EVENTS, touching)]);
    // Overlapping at [3.5, 4): 0.95 at 3.5 s, reported at both events.
    let overlap = "  - { at: 3s, packet_loss: { probability: 0.5, duration: 1s } }\n  - { at: 3.5s, packet_loss: { groups: [feeder-a], probability: 0.45, duration: 1s } }\n  - { at: 20s, packet_loss: { probability: 0.3, duration: 1s } }";
    let got = errs(&[(EVENTS, overlap)]);
    for i in [2, 3] {
        assert!(
            got.iter().any(
                |g| g.starts_with(&format!("events[{i}].packet_loss.probability"))
                    && g.contains("group `feeder-a`")
                    && g.contains("active at 3.5s (events[2], events[3]) add up to 0.950")
            ),
            "{got:#?}"
        );
    }
    // The third window is not active at the peak: not reported.
    assert!(!got.iter().any(|g| g.starts_with("events[4]")), "{got:#?}");
    assert_eq!(got.len(), 2, "{got:#?}");
    // Link loss counts at every instant: 0.3 + 0.65 > 0.9 with a single window.
    has(
        &[
            (
                "rbe: { delta: 1.0, heartbeat: 60s }",
                "rbe: { delta: 1.0, heartbeat: 60s }\n    link: { loss: 0.3 }",
            ),
            (
                EVENTS,
                "  - { at: 3s, packet_loss: { probability: 0.65, duration: 1s } }",
            ),
        ],
        "the link loss 0.3 plus the packet_loss windows active at 3s (events[2]) add up to 0.950",
    );
}

#[test]
fn empty_packet_loss_groups_is_one_error_not_a_loss_on_all_groups() {
    // With `groups: []` counted as "all groups", 0.5 + 0.45 would overlap on feeder-a.
    let two = "  - { at: 3s, packet_loss: { groups: [], probability: 0.5, duration: 1s } }\n  - { at: 3s, packet_loss: { probability: 0.45, duration: 1s } }";
    let got = errs(&[(EVENTS, two)]);
    assert_eq!(
        got,
        ["events[2].packet_loss.groups: must name at least one group (omit `groups` for all groups)"],
    );
}

/// The thermal drift of the corpus' `thermal-runaway.yaml`: k = 80²·0.1·0.5 = 320, kα = 1.26
/// (no steady state), with `duration` as given.
fn runaway(duration: &str) -> String {
    format!("  - {{ at: 3s, thermal_drift: {{ r20: 0.1, current: 80, thermal_resistance: 0.5, tau: 10min, duration: {duration} }} }}")
}

#[test]
fn a_short_drift_without_steady_state_is_accepted() {
    // Over 5 s (τ = 10 min) it warms by 2.7 K: harmless.
    let s = ok(&[(EVENTS, &runaway("5s"))]);
    let DisturbanceKind::ThermalDrift(t) = &s.disturbances[2].kind else {
        panic!("{:?}", s.disturbances[2].kind)
    };
    let end = scenarios::drift_temperature(t, 5.0);
    // 25 + (A − B·25)·(e^(−B·5/600) − 1)/(−B), A = 319.85, B = −0.2576: 25 + 326.29 · 0.008342.
    assert!((end - 27.722).abs() < 0.001, "{end}");
    // It reaches 250 °C after 380.8 s; the scenario (40 s) cuts a long drift short, so a
    // 1 h drift is accepted too: the hottest is at 37 s.
    ok(&[(EVENTS, &runaway("1h"))]);
    // In a longer scenario the same drift runs away: reported at `duration`.
    has(
        &[("duration: 40s", "duration: 2h"), (EVENTS, &runaway("1h"))],
        "events[2].thermal_drift.duration: the conductor reaches",
    );
    let got = errs(&[("duration: 40s", "duration: 2h"), (EVENTS, &runaway("1h"))]);
    assert!(
        got[0].contains("it has no steady state and grows without bound")
            && got[0].contains("it reaches 250 °C after 380.841s"),
        "{got:#?}"
    );
    // Shortened below what the message says: accepted.
    ok(&[
        ("duration: 40s", "duration: 2h"),
        (EVENTS, &runaway("380s")),
    ]);
    has(
        &[
            ("duration: 40s", "duration: 2h"),
            (EVENTS, &runaway("382s")),
        ],
        "above 250 °C",
    );
}

/// Fourth-order Runge–Kutta on τ·dT/dt = I²·R(T)·R_th − (T − T_amb), written from the model
/// (not from the closed form's A and B).
fn integrate(t: &sim_core::disturbance::ThermalDrift, until: f64, steps: usize) -> f64 {
    let alpha = t.conductor.alpha20();
    let f = |temp: f64| {
        let r = t.r20 * (1.0 + alpha * (temp - 20.0));
        (t.current * t.current * r * t.thermal_resistance - (temp - t.ambient)) / t.tau
    };
    let h = until / steps as f64;
    let mut y = t.initial;
    for _ in 0..steps {
        let k1 = f(y);
        let k2 = f(y + h / 2.0 * k1);
        let k3 = f(y + h / 2.0 * k2);
        let k4 = f(y + h * k3);
        y += h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4);
    }
    y
}

#[test]
fn the_closed_form_matches_a_numeric_integration() {
    use sim_core::disturbance::{Conductor, ThermalDrift};
    let base = ThermalDrift {
        conductor: Conductor::Aluminium,
        r20: 0.1,
        x: 0.0,
        current: 80.0,
        power_factor: 1.0,
        ambient: 30.0,
        initial: 40.0,
        thermal_resistance: 0.5,
        tau: 600.0,
        duration: 3600.0,
    };
    // Runaway (kα = 1.29), settling (kα = 0.26, from above ambient and from above T∞) and
    // B = 0 exactly (kα = 1: linear growth).
    let balanced = 1.0 / (80.0 * 80.0 * 0.1 * Conductor::Aluminium.alpha20());
    for (rth, initial, until) in [
        (0.5, 40.0, 300.0),
        (0.1, 40.0, 1800.0),
        (0.1, 120.0, 1800.0),
        (balanced, 40.0, 600.0),
    ] {
        let t = ThermalDrift {
            thermal_resistance: rth,
            initial,
            ..base
        };
        let closed = scenarios::drift_temperature(&t, until);
        let numeric = integrate(&t, until, 20_000);
        assert!(
            (closed - numeric).abs() < 1e-6 * numeric.abs().max(1.0),
            "R_th {rth}, T0 {initial}: closed {closed} vs numeric {numeric}"
        );
        assert_eq!(scenarios::drift_temperature(&t, 0.0), initial);
    }
    // The balanced case grows linearly: T0 + A·t/τ with A = T_amb + k(1 − 20α), k = 1/α.
    let t = ThermalDrift {
        thermal_resistance: balanced,
        ..base
    };
    let a = 30.0 + (1.0 - 20.0 * Conductor::Aluminium.alpha20()) / Conductor::Aluminium.alpha20();
    let want = 40.0 + a * 600.0 / 600.0;
    assert!((scenarios::drift_temperature(&t, 600.0) - want).abs() < 1e-6 * want);
}

#[test]
fn thermal_drift_limits() {
    let td = |fields: &str| {
        format!(
            "  - {{ at: 3s, thermal_drift: {{ r20: 0.1, tau: 10min, duration: 5min, {fields} }} }}"
        )
    };
    // k = I²·R20·R_th = 203.5: kα = 0.80, T∞ ≈ 1061 °C; over 5 min (τ = 10 min), from 25 °C,
    // it reaches 1061 − 1036·e^(−0.2·300/600) ≈ 123 °C: accepted.
    ok(&[(EVENTS, &td("current: 80, thermal_resistance: 0.318"))]);
    // Over 30 min (scenario 1 h) it passes 250 °C.
    has(
        &[
            ("duration: 40s", "duration: 1h"),
            (
                EVENTS,
                &td("current: 80, thermal_resistance: 0.318").replace("5min", "30min"),
            ),
        ],
        "it would settle at 1061.",
    );
    // The old kα ≥ 0.9 rule is gone: kα = 0.9055 over 5 min is accepted.
    ok(&[(EVENTS, &td("current: 80, thermal_resistance: 0.36"))]);
    // Settles: T∞ = (25 + 32·(1 − 20α)) / (1 − 32α) with α = 0.00393 → 62.32 °C.
    let s = ok(&[(EVENTS, &td("current: 80, thermal_resistance: 0.05"))]);
    let DisturbanceKind::ThermalDrift(t) = &s.disturbances[2].kind else {
        panic!("{:?}", s.disturbances[2].kind)
    };
    let (k, a): (f64, f64) = (32.0, 0.00393);
    let t_inf = (25.0 + k * (1.0 - 20.0 * a)) / (1.0 - k * a);
    assert!((t_inf - 62.32).abs() < 0.01, "{t_inf}");
    assert!((scenarios::drift_temperature(t, 1e6) - t_inf).abs() < 1e-9);
    // The drop is far below 0.9 × 240 V; now make it too big: reported at the drift.
    assert_eq!(t.thermal_resistance, 0.05);
    has(
        &[(
            EVENTS,
            &td("current: 80, thermal_resistance: 0.001, x: 5, power_factor: 0.5"),
        )],
        "events[2].thermal_drift: the voltage drop along the conductor reaches",
    );
    has(
        &[(
            EVENTS,
            &td("current: 80, thermal_resistance: 0.001, x: 5, power_factor: 0.5"),
        )],
        "not below 0.9 × nominal (216.0 V)",
    );
    // A hot `initial` counts even when the drift cools the conductor: the drop is 163 V at
    // 25 °C but 80 · 2 · (1 + 0.00393 · 220) = 298.3 V at the initial 240 °C.
    has(
        &[(
            EVENTS,
            "  - { at: 3s, thermal_drift: { r20: 2.0, current: 80, initial: 240, thermal_resistance: 0.0001, tau: 10min, duration: 5min } }",
        )],
        "reaches 298.3 V at 240.0 °C",
    );
}

fn measurement(quantity: &str, at: &str) -> String {
    format!("  - measurement: {{ quantity: {quantity}, at: {at}, expected: 240, tolerance: 1 }}")
}

const LAST_EXPECT: &str = "  - delivered: { lost: 0 }";

#[test]
fn a_measurement_window_must_end_before_the_scenario() {
    // 40 s scenario at 60 Hz: the last `at` is 40 − window − 1/60.
    for (quantity, at, last) in [
        ("rms_10cycle", "39.784s", "39.783333s"),
        ("energy", "39.9s", "39.783333s"),
        ("urms_half_cycle", "39.967s", "39.966666s"),
        ("rms_150cycle", "36.984s", "36.983333s"),
        ("rms_150cycle", "40s", "36.983333s"),
    ] {
        has(
            &[(LAST_EXPECT, &measurement(quantity, at))],
            &format!("expect[3].measurement.at: no complete {quantity} window contains t = {at} before the scenario ends at 40s; use at ≤ {last}"),
        );
    }
    // Too short for any 3 s window.
    has(
        &[
            ("duration: 40s", "duration: 2s"),
            ("at: 3s, rf_loss", "at: 1.5s, rf_loss"),
            ("at: 2s, harmonics", "at: 1.2s, harmonics"),
            (LAST_EXPECT, &measurement("rms_150cycle", "1s")),
        ],
        "the scenario is too short for one (it needs at least 3.016667s)",
    );
}

#[test]
fn pq_interruption_band_is_a_sanity_rule_with_its_own_message() {
    has(
        &[("meters:", "pq: { dip: 10, interruption: 9, hysteresis: 1 }\nmeters:")],
        "pq: the interruption band must lie below the dip threshold: interruption + hysteresis < dip, got interruption 9, hysteresis 1, dip 10",
    );
    let got = errs(&[("meters:", "pq: { dip: 99, hysteresis: 1 }\nmeters:")]);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(
        got[0].contains("dip + hysteresis < 100") && got[0].contains("never end"),
        "{got:#?}"
    );
}

#[test]
fn rbe_interval_goes_up_to_a_day() {
    let s = ok(&[("heartbeat: 60s }", "heartbeat: 60s, interval: 24h }")]);
    assert_eq!(s.groups[0].rbe.interval, 86_400.0);
    has(
        &[("heartbeat: 60s }", "heartbeat: 60s, interval: 25h }")],
        "meters[0].rbe.interval: `interval` must be at most 1 day (24h), got 90000s",
    );
}
