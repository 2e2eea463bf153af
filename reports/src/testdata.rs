//! Hand-built outcomes for reporter tests: one scenario that passes, one that fails.

use sim_core::grid::Phase;
use sim_core::outcome::{
    EventWaveform, ExpectationOutcome, GroupPlot, LatencySummary, PlotData, PlotEvent, RunStats,
    ScenarioOutcome, TimelineEntry,
};
use sim_core::scenario::{EventCode, Thresholds};

pub(crate) fn passing() -> ScenarioOutcome {
    ScenarioOutcome {
        name: "sag-70pct-10-cycles".into(),
        file: "scenarios/library/sag-70pct.yaml".into(),
        description: "A 70 % residual sag on L1 for 10 cycles trips UV and alarms within 50 ms"
            .into(),
        tags: vec!["ieee-1159".into(), "sag".into()],
        seed: 42,
        mode: "sim",
        duration: 40.0,
        stats: RunStats {
            meters: 100,
            samples: 1_536_000_000,
            half_cycles: 2_880_000,
            trips: 100,
            clears: 100,
            produced: 4_300,
            delivered: 4_300,
            duplicates: 0,
            overflowed: 0,
            buffered_at_end: 0,
            unexplained_loss: 0,
            alarms: 100,
            alarm_latency: LatencySummary {
                count: 100,
                p50: 0.0071,
                p99: 0.0091,
                max: 0.0093,
            },
        },
        expectations: vec![
            ExpectationOutcome {
                index: 0,
                kind: "trip",
                label: "trip UV_TRIP_0x01 on L1 in feeder-a within 50 ms".into(),
                passed: true,
                expected: "≤ 50 ms".into(),
                measured: "worst 9.1 ms (meter feeder-a/17)".into(),
                detail: None,
            },
            ExpectationOutcome {
                index: 1,
                kind: "alarm_latency",
                label: "alarm latency p99 ≤ 50 ms".into(),
                passed: true,
                expected: "p99 ≤ 50 ms".into(),
                measured: "p99 9.1 ms".into(),
                detail: None,
            },
        ],
        timeline: vec![
            TimelineEntry {
                at: 1.0,
                what: "sag L1 to 0.7 pu for 10 cycles".into(),
            },
            TimelineEntry {
                at: 1.0021,
                what: "first UV_TRIP_0x01 (feeder-a/3, L1)".into(),
            },
            TimelineEntry {
                at: 1.0092,
                what: "first alarm at head-end".into(),
            },
        ],
        plots: passing_plots(),
    }
}

pub(crate) fn failing() -> ScenarioOutcome {
    ScenarioOutcome {
        name: "thd-over-limit".into(),
        file: "tests/fixtures/thd <over> & limit.yaml".into(),
        description: "Harmonics that \"cannot\" give 3 % THD".into(),
        tags: vec!["thd".into()],
        seed: 7,
        mode: "sim",
        duration: 2.5,
        stats: RunStats {
            meters: 2,
            samples: 384_000,
            half_cycles: 1_800,
            produced: 10,
            delivered: 8,
            overflowed: 1,
            buffered_at_end: 1,
            ..RunStats::default()
        },
        expectations: vec![
            ExpectationOutcome {
                index: 0,
                kind: "measurement",
                label: "thd on L1 at 1.5 s".into(),
                passed: false,
                expected: "3 % ± 0.05".into(),
                measured: "6.403 %".into(),
                detail: Some("meter feeder-a/0: 6.403 %\nmeter feeder-a/1: 6.402 %".into()),
            },
            ExpectationOutcome {
                index: 1,
                kind: "no_trip",
                label: "no trip in feeder-a".into(),
                passed: true,
                expected: "0 trips".into(),
                measured: "0 trips".into(),
                detail: None,
            },
            ExpectationOutcome {
                index: 2,
                kind: "delivered",
                label: "delivered, lost 0".into(),
                passed: false,
                expected: "lost 0".into(),
                measured: "lost 2 (1 overflowed, 1 buffered at end)".into(),
                detail: None,
            },
        ],
        timeline: vec![TimelineEntry {
            at: 0.5,
            what: "harmonics 3rd 5 %, 5th 4 %".into(),
        }],
        plots: PlotData::default(),
    }
}

/// Plot series of [`passing`]: a sag on L1 from 1.0 s to 1.2 s, a trip and a clear, and three
/// alarm latencies.
pub(crate) fn passing_plots() -> PlotData {
    let phase = |sag: bool| -> Vec<(f64, f64)> {
        (1..=200)
            .map(|k| {
                let t = f64::from(k) * 0.2;
                let v = if sag && (1.0..1.4).contains(&t) {
                    161.0
                } else {
                    230.0
                };
                (t, v)
            })
            .collect()
    };
    PlotData {
        groups: vec![GroupPlot {
            name: "feeder-a".into(),
            thresholds: Thresholds::default(),
            nominal: 230.0,
            rms: vec![phase(true), phase(false), phase(false)],
            events: vec![
                PlotEvent {
                    at: 1.0021,
                    code: EventCode::UvTrip,
                    phase: Phase::L1,
                    value: 190.0,
                },
                PlotEvent {
                    at: 1.2103,
                    code: EventCode::UvClear,
                    phase: Phase::L1,
                    value: 229.0,
                },
            ],
            alarm_latencies: vec![(1.0092, 0.0092), (1.0095, 0.0095), (1.0071, 0.0071)],
            meters: 1,
            trips: vec![(1.04, 1)],
            thd: (0..3)
                .map(|ch| {
                    (1..=200)
                        .map(|k| (f64::from(k) * 0.2, 6.4 + f64::from(ch) * 0.1))
                        .collect()
                })
                .collect(),
            event_waveforms: vec![sag_waveform()],
            event_waveforms_omitted: Vec::new(),
        }],
    }
}

/// 50 Hz at 10 kHz from 40 ms before an onset at 1.0 s to 120 ms after it: L1 sags to 70 %
/// at the onset, L2 and L3 stay at 230 V.
pub(crate) fn sag_waveform() -> EventWaveform {
    let fs = 10_000.0;
    let start = 0.96;
    let peak = 230.0 * std::f64::consts::SQRT_2;
    let samples = (0..3)
        .map(|ch| {
            (0..1600)
                .map(|i| {
                    let t = start + f64::from(i) / fs;
                    let residual = if ch == 0 && t >= 1.0 { 0.7 } else { 1.0 };
                    let angle = std::f64::consts::TAU * (50.0 * t - f64::from(ch) / 3.0);
                    (residual * peak * angle.sin()) as f32
                })
                .collect()
        })
        .collect();
    EventWaveform {
        onset: 1.0,
        start,
        step: 1.0 / fs,
        samples,
    }
}
