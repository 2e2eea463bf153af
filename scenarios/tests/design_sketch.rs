//! The DESIGN.md sketch parses exactly as written and lowers to the right numbers.

use std::path::Path;

use scenarios::{load_str, LoadError};
use sim_core::disturbance::{DisturbanceKind, Harmonic};
use sim_core::encoding::{RegisterEncoding, WordOrder};
use sim_core::scenario::{EventCode, Expectation, Fidelity, NetworkEventKind, PayloadFormat};
use sim_core::{Phase, PhaseSet, PhaseSystem};

pub const SKETCH: &str = r#"schema: 1
name: sag-70pct-10-cycles
description: A 70 % residual sag on L1 for 10 cycles trips UV and alarms within 50 ms
tags: [ieee-1159, sag]
seed: 42
duration: 40s
grid: { nominal: 240.0, frequency: 60.0, phases: 3, sample_rate: 12800 }
meters:
  - group: feeder-a
    count: 100
    substation: sub-01
    fidelity: waveform        # or rms: per-half-cycle values from the envelope, for big fleets
    thresholds: { upper: 252.0, lower: 210.0, hysteresis: 2.0 }
    rbe: { delta: 1.0, heartbeat: 60s }
    buffer: { capacity: 4096 }
    encoding: { payload: json, registers: float32, word_order: abcd }
events:
  - { at: 1s, sag: { phases: [L1], residual: 0.7, duration: 10cycles } }
  - { at: 2s, harmonics: { orders: { 3: 0.05, 5: 0.04 }, duration: 1s } }
  - { at: 3s, rf_loss: { groups: [feeder-a], duration: 30s } }
expect:
  - trip: { code: UV_TRIP_0x01, group: feeder-a, phase: L1, within: 50ms }
  - alarm_latency: { p99: 50ms }
  - no_flapping: { max_trips_per_meter: 1 }
  - delivered: { lost: 0 }
"#;

fn load(src: &str) -> sim_core::Scenario {
    match load_str(src, Path::new("sketch.yaml")) {
        Ok(s) => s,
        Err(LoadError::Invalid(d)) => panic!("unexpected diagnostics:\n{}", LoadError::Invalid(d)),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_design_sketch_lowers_to_the_right_numbers() {
    let s = load(SKETCH);
    assert_eq!(s.name, "sag-70pct-10-cycles");
    assert_eq!(s.tags, ["ieee-1159", "sag"]);
    assert_eq!((s.seed, s.duration), (42, 40.0));
    assert_eq!(s.grid.nominal, 240.0);
    assert_eq!(s.grid.frequency, 60.0);
    assert_eq!(s.grid.system, PhaseSystem::ThreePhase);
    assert_eq!(s.grid.sample_rate, 12_800.0);
    assert_eq!(s.grid.load, None);

    let g = &s.groups[0];
    assert_eq!(
        (g.name.as_str(), g.count, g.substation.as_str()),
        ("feeder-a", 100, "sub-01")
    );
    assert_eq!(g.fidelity, Fidelity::Waveform);
    assert_eq!(
        (
            g.thresholds.upper,
            g.thresholds.lower,
            g.thresholds.hysteresis
        ),
        (252.0, 210.0, 2.0)
    );
    assert_eq!(
        (g.rbe.delta, g.rbe.heartbeat, g.rbe.interval),
        (Some(1.0), 60.0, 1.0)
    );
    assert_eq!(g.buffer_capacity, 4096);
    assert_eq!(g.payload, PayloadFormat::Json);
    assert_eq!(g.registers, RegisterEncoding::Float32(WordOrder::Abcd));
    assert_eq!((g.link.latency, g.link.loss), (0.005, 0.0));

    assert_eq!(s.disturbances.len(), 2);
    let sag = &s.disturbances[0];
    assert_eq!(sag.at, 1.0);
    assert_eq!(sag.phases, PhaseSet::of(&[Phase::L1]));
    assert!(sag.groups.is_empty(), "no groups given = all groups");
    let DisturbanceKind::Sag(v) = &sag.kind else {
        panic!("{:?}", sag.kind)
    };
    assert_eq!(v.level, 0.7);
    assert!(
        (v.duration - 1.0 / 6.0).abs() < 1e-15,
        "10 cycles at 60 Hz = 1/6 s, got {}",
        v.duration
    );
    assert_eq!((v.ramp, v.phase_jump_deg), (0.0, 0.0));

    let h = &s.disturbances[1];
    assert_eq!(h.phases, PhaseSet::ALL);
    let DisturbanceKind::Harmonics {
        components,
        end,
        duration,
    } = &h.kind
    else {
        panic!()
    };
    assert_eq!(
        components,
        &[
            Harmonic {
                order: 3,
                magnitude: 0.05,
                phase_deg: 0.0
            },
            Harmonic {
                order: 5,
                magnitude: 0.04,
                phase_deg: 0.0
            }
        ]
    );
    assert_eq!((end, *duration), (&None, 1.0));

    assert_eq!(s.network.len(), 1);
    let rf = &s.network[0];
    assert_eq!(
        (rf.at, rf.duration, rf.groups.as_slice()),
        (3.0, 30.0, &[0_usize][..])
    );
    assert_eq!(rf.kind, NetworkEventKind::RfLoss);

    assert_eq!(
        s.expectations,
        vec![
            Expectation::Trip {
                code: EventCode::UvTrip,
                group: 0,
                phase: Some(Phase::L1),
                within: 0.05
            },
            Expectation::AlarmLatency {
                p50: None,
                p99: Some(0.05),
                max: None
            },
            Expectation::NoFlapping {
                max_trips_per_meter: 1
            },
            Expectation::Delivered {
                lost: 0,
                duplicates: None
            },
        ]
    );
}

#[test]
fn cycles_follow_the_grid_frequency_and_groups_resolve_to_indices() {
    let src = SKETCH
        .replace("frequency: 60.0", "frequency: 50")
        .replace(
            "  - group: feeder-a\n",
            "  - group: feeder-b\n    fidelity: rms\n  - group: feeder-a\n",
        )
        .replace(
            "  - { at: 3s, rf_loss: { groups: [feeder-a]",
            "  - { at: 3s, rf_loss: { groups: [feeder-a, feeder-b]",
        );
    let s = load(&src);
    let DisturbanceKind::Sag(v) = &s.disturbances[0].kind else {
        panic!()
    };
    assert!(
        (v.duration - 0.2).abs() < 1e-15,
        "10 cycles at 50 Hz = 0.2 s, got {}",
        v.duration
    );
    assert_eq!(s.groups[0].name, "feeder-b");
    assert_eq!(s.groups[0].fidelity, Fidelity::Rms);
    assert_eq!(s.groups[0].count, 1, "count defaults to 1");
    assert_eq!(s.network[0].groups, vec![0, 1]);
    assert!(matches!(
        s.expectations[0],
        Expectation::Trip { group: 1, .. }
    ));
}

#[test]
fn every_kind_and_expectation_lowers() {
    let src = r#"schema: 1
name: everything
duration: 10min
grid: { nominal: 120, phases: split, load: { current: 10, power_factor: 0.9 } }
pq: { dip: 85, swell: 115, interruption: 5, hysteresis: 1 }
head_end: { stale_after: 2min }
meters:
  - group: a
    thresholds: { min_duration: 2cycles }
    rbe: { delta: 0, interval: 200ms }
    encoding: { payload: cbor, registers: int16, scale: 0.01 }
    calibration: { L1: 1.01, L2: 0.99 }
    adc: { bits: 16, full_scale: 400 }
    link: { latency: 20ms, jitter: 5ms, loss: 0.1, retry: 2s }
  - group: b
    fidelity: rms
    encoding: { registers: uint32, word_order: cdab }
events:
  - { at: 1s, sag: { residual: 0.5, duration: 100ms, ramp: 1ms, point_on_wave: 90, phase_jump: -10, groups: [b] } }
  - { at: 2s, swell: { magnitude: 1.2, duration: 3cycles } }
  - { at: 3s, interruption: { duration: 1s } }
  - { at: 4s, harmonics: { orders: { 3: 0.05 }, angles: { 3: 30, 7: 10 }, to: { 3: 0.1, 7: 0.02 }, duration: 1s } }
  - { at: 5s, interharmonic: { frequency: 175.5, magnitude: 0.01, duration: 1s } }
  - { at: 6s, flicker: { depth: 0.05, frequency: 8.8, shape: square, duration: 2s } }
  - { at: 7s, oscillatory_transient: { magnitude: 0.5, frequency: 600, tau: 10ms, duration: 2cycles } }
  - { at: 8s, impulsive_transient: { magnitude: -2 } }
  - { at: 9s, notch: { depth: 0.3, width: 0.2ms, per_cycle: 6, duration: 1s } }
  - { at: 10s, dc_offset: { magnitude: 0.02, duration: 1s } }
  - { at: 11s, noise: { rms: 0.01, duration: 1s } }
  - { at: 12s, frequency: { deviation: -0.5, ramp: 1s, duration: 5s } }
  - { at: 13s, unbalance: { magnitudes: { L2: 0.95 }, angles: { L2: -2 }, duration: 1s } }
  - { at: 14s, thermal_drift: { conductor: aluminium, r20: 0.1, current: 80, thermal_resistance: 0.05, tau: 10min, duration: 5min } }
  - { at: 15s, latency: { groups: [a], extra: 200ms, duration: 10s } }
  - { at: 16s, packet_loss: { probability: 0.5, duration: 10s } }
expect:
  - no_trip: { group: b }
  - no_trip: { group: a, code: OV_TRIP_0x02 }
  - measurement: { quantity: thd, at: 4.5s, expected: 5.0, tolerance: 0.05 }
  - measurement: { quantity: rms_10cycle, group: b, phase: L2, at: 9min, expected: 120, tolerance: "0.5%" }
  - event: { kind: dip, residual: 0.5, duration: 100ms }
  - event: { kind: swell, group: b, phase: L2, residual: 1.2, tolerance: "0.5%", duration: 50ms, duration_tolerance: 10ms }
  - delivered: { lost: 3, duplicates: 0 }
  - alarm_latency: { p50: 10ms, max: 1s }
"#;
    let s = load(src);
    assert_eq!(s.duration, 600.0);
    assert_eq!(s.grid.system, PhaseSystem::SplitPhase);
    assert_eq!(s.head_end.stale_after, 120.0);
    assert_eq!(s.pq.dip, 85.0);
    let a = &s.groups[0];
    assert!((a.thresholds.min_duration - 2.0 / 60.0).abs() < 1e-15);
    assert_eq!((a.rbe.delta, a.rbe.interval), (None, 0.2));
    assert_eq!(a.registers, RegisterEncoding::Int16 { scale: 0.01 });
    assert_eq!(a.payload, PayloadFormat::Cbor);
    assert_eq!(a.front_end.gain, [1.01, 0.99, 1.0]);
    assert_eq!(
        (a.front_end.adc_bits, a.front_end.adc_full_scale),
        (Some(16), 400.0)
    );
    assert_eq!(
        (a.link.latency, a.link.jitter, a.link.loss, a.link.retry),
        (0.02, 0.005, 0.1, 2.0)
    );
    assert_eq!(
        s.groups[1].registers,
        RegisterEncoding::Uint32 {
            scale: 0.1,
            word_order: WordOrder::Cdab
        }
    );

    let d = &s.disturbances;
    assert_eq!(d.len(), 14);
    assert_eq!(d[0].point_on_wave_deg, Some(90.0));
    assert_eq!(d[0].groups, vec![1]);
    assert_eq!(
        d[1].phases,
        PhaseSet::of(&[Phase::L1, Phase::L2]),
        "split phase: L1 and L2"
    );
    let names: Vec<&str> = d.iter().map(|x| x.kind.name()).collect();
    assert_eq!(
        names,
        [
            "sag",
            "swell",
            "interruption",
            "harmonics",
            "interharmonic",
            "flicker",
            "oscillatory_transient",
            "impulsive_transient",
            "notch",
            "dc_offset",
            "noise",
            "frequency",
            "unbalance",
            "thermal_drift"
        ]
    );
    let DisturbanceKind::Harmonics {
        components,
        end: Some(end),
        ..
    } = &d[3].kind
    else {
        panic!()
    };
    assert_eq!(
        components[1],
        Harmonic {
            order: 7,
            magnitude: 0.0,
            phase_deg: 10.0
        }
    );
    assert_eq!(
        end[0],
        Harmonic {
            order: 3,
            magnitude: 0.1,
            phase_deg: 30.0
        }
    );
    let DisturbanceKind::ImpulsiveTransient {
        tau_rise,
        tau_fall,
        duration,
        magnitude,
    } = d[7].kind
    else {
        panic!()
    };
    assert_eq!(
        (magnitude, tau_rise, tau_fall, duration),
        (-2.0, 1e-4, 1e-3, 5e-3)
    );
    let DisturbanceKind::Unbalance {
        magnitudes,
        angles_deg,
        ..
    } = d[12].kind
    else {
        panic!()
    };
    assert_eq!(
        (magnitudes, angles_deg),
        ([1.0, 0.95, 1.0], [0.0, -2.0, 0.0])
    );
    let DisturbanceKind::ThermalDrift(t) = d[13].kind else {
        panic!()
    };
    assert_eq!(
        (t.initial, t.ambient, t.x, t.power_factor, t.tau),
        (25.0, 25.0, 0.0, 1.0, 600.0)
    );

    assert_eq!(s.network.len(), 2);
    assert_eq!(
        s.network[0].kind,
        NetworkEventKind::Latency {
            extra: 0.2,
            jitter: 0.0
        }
    );
    assert!(s.network[1].groups.is_empty());

    use sim_core::scenario::{PqEventKind, Quantity, Tolerance};
    let e = &s.expectations;
    assert_eq!(
        e[0],
        Expectation::NoTrip {
            group: 1,
            code: None
        }
    );
    assert_eq!(
        e[1],
        Expectation::NoTrip {
            group: 0,
            code: Some(EventCode::OvTrip)
        }
    );
    assert_eq!(
        e[2],
        Expectation::Measurement {
            quantity: Quantity::Thd,
            group: 0,
            phase: Phase::L1,
            at: 4.5,
            expected: 5.0,
            tolerance: Tolerance::Absolute(0.05)
        }
    );
    assert!(
        matches!(e[3], Expectation::Measurement { group: 1, phase: Phase::L2, tolerance: Tolerance::Percent(p), at, .. } if p == 0.5 && at == 540.0)
    );
    let Expectation::PqEvent {
        kind,
        phase,
        residual_tolerance,
        duration_tolerance,
        ..
    } = e[4]
    else {
        panic!()
    };
    assert_eq!(
        (kind, phase, residual_tolerance),
        (PqEventKind::Dip, None, Tolerance::Absolute(0.002))
    );
    assert!((duration_tolerance - 1.0 / 60.0).abs() < 1e-15);
    let Expectation::PqEvent {
        residual_tolerance,
        duration_tolerance,
        ..
    } = e[5]
    else {
        panic!()
    };
    assert_eq!(
        (residual_tolerance, duration_tolerance),
        (Tolerance::Absolute(0.005), 0.01)
    );
    assert_eq!(
        e[6],
        Expectation::Delivered {
            lost: 3,
            duplicates: Some(0)
        }
    );
}

#[test]
fn all_semantic_errors_are_collected() {
    let src = SKETCH
        .replace("residual: 0.7", "residual: 1.2")
        .replace("lower: 210.0", "lower: 260.0")
        .replace("within: 50ms", "within: 50");
    let Err(LoadError::Invalid(d)) = load_str(&src, Path::new("x.yaml")) else {
        panic!()
    };
    let shown: Vec<String> = d.iter().map(ToString::to_string).collect();
    assert_eq!(d.len(), 3, "{shown:#?}");
    assert_eq!(
        shown[0],
        "x.yaml:13:40: meters[0].thresholds.lower: lower limit (260 V) must be below the upper limit (252 V)"
    );
    assert_eq!(
        shown[1],
        "x.yaml:18:46: events[0].sag.residual: must be between 0 and 1 (exclusive), got 1.2"
    );
    assert!(shown[2].starts_with("x.yaml:22:"), "{}", shown[2]);
    assert!(
        shown[2].contains("expect[0].trip.within: duration needs a unit"),
        "{}",
        shown[2]
    );
}
