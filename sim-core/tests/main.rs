//! Integration tests of the virtual-time harness on scenarios built in code.

#![allow(clippy::unwrap_used)]

use sim_core::disturbance::{Disturbance, DisturbanceKind, RmsVariation};
use sim_core::encoding::RegisterEncoding;
use sim_core::grid::{GridSpec, Phase, PhaseSet, PhaseSystem};
use sim_core::harness::{self, simulate};
use sim_core::scenario::*;

fn group(name: &str, count: u32, fidelity: Fidelity) -> MeterGroup {
    MeterGroup {
        name: name.into(),
        count,
        substation: "sub-01".into(),
        fidelity,
        thresholds: Thresholds::default(),
        rbe: RbeSpec::default(),
        buffer_capacity: 4096,
        front_end: FrontEnd::default(),
        payload: PayloadFormat::Json,
        registers: RegisterEncoding::default(),
        link: LinkSpec::default(),
    }
}

fn scenario(groups: Vec<MeterGroup>, disturbances: Vec<Disturbance>, duration: f64) -> Scenario {
    Scenario {
        name: "test".into(),
        description: String::new(),
        tags: vec![],
        seed: 1,
        duration,
        grid: GridSpec {
            nominal: 240.0,
            frequency: 60.0,
            system: PhaseSystem::ThreePhase,
            sample_rate: 7680.0,
            load: None,
        },
        pq: PqThresholds::default(),
        groups,
        disturbances,
        network: vec![],
        head_end: HeadEndSpec::default(),
        expectations: vec![],
    }
}

fn sag(at: f64, phases: &[Phase], level: f64, duration: f64) -> Disturbance {
    Disturbance {
        at,
        point_on_wave_deg: Some(90.0),
        phases: PhaseSet::of(phases),
        groups: vec![],
        kind: DisturbanceKind::Sag(RmsVariation {
            level,
            duration,
            ramp: 0.0,
            phase_jump_deg: 0.0,
        }),
    }
}

/// (group, meter index, code, phase, time) of every trip and clear, sorted.
fn trips(obs: &harness::Observations) -> Vec<(usize, u32, EventCode, Phase, f64)> {
    let mut v: Vec<_> = obs
        .meters
        .iter()
        .flat_map(|m| {
            m.events
                .iter()
                .map(move |(t, e)| (m.group, m.index, e.code, e.phase, *t))
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

#[test]
fn same_seed_same_observations() {
    let mut s = scenario(
        vec![
            group("a", 3, Fidelity::Waveform),
            group("b", 5, Fidelity::Rms),
        ],
        vec![sag(1.0, &[Phase::L1], 0.7, 0.2)],
        2.0,
    );
    s.disturbances.push(Disturbance {
        at: 0.0,
        point_on_wave_deg: None,
        phases: PhaseSet::ALL,
        groups: vec![],
        kind: DisturbanceKind::Noise {
            rms: 0.01,
            duration: 2.0,
        },
    });
    s.groups[1].link = LinkSpec {
        latency: 0.02,
        jitter: 0.01,
        loss: 0.2,
        retry: 0.3,
    };
    let a = simulate(&s);
    let b = simulate(&s);
    assert_eq!(a, b);
    s.seed = 2;
    let c = simulate(&s);
    assert_ne!(
        a.stats.alarm_latency, c.stats.alarm_latency,
        "jitter and loss follow the seed"
    );
}

#[test]
fn both_fidelities_agree_on_trips() {
    for (level, pow) in [(0.75, 90.0), (0.6, 0.0), (0.85, 45.0), (1.2, 90.0)] {
        let kind = |f| {
            let mut d = sag(0.5, &[Phase::L2], level, 0.25);
            d.point_on_wave_deg = Some(pow);
            if level > 1.0 {
                d.kind = DisturbanceKind::Swell(RmsVariation {
                    level,
                    duration: 0.25,
                    ramp: 0.0,
                    phase_jump_deg: 0.0,
                });
            }
            scenario(vec![group("g", 1, f)], vec![d], 1.5)
        };
        let w = trips(&simulate(&kind(Fidelity::Waveform)));
        let r = trips(&simulate(&kind(Fidelity::Rms)));
        assert!(!w.is_empty(), "level {level}: the waveform meter tripped");
        assert_eq!(w.len(), r.len(), "level {level}: {w:?} vs {r:?}");
        for (a, b) in w.iter().zip(&r) {
            assert_eq!((a.0, a.1, a.2, a.3), (b.0, b.1, b.2, b.3));
            assert!(
                (a.4 - b.4).abs() < 1.0 / 120.0 + 1e-3,
                "level {level}: {a:?} vs {b:?}"
            );
        }
    }
}

#[test]
fn sag_trips_within_one_cycle_and_clears() {
    let s = scenario(
        vec![group("g", 1, Fidelity::Waveform)],
        vec![sag(1.0, &[Phase::L1], 0.75, 0.2)],
        2.0,
    );
    let t = trips(&simulate(&s));
    assert_eq!(t.len(), 2, "{t:?}");
    assert_eq!(t[0].2, EventCode::UvTrip);
    assert_eq!(t[0].3, Phase::L1);
    // point_on_wave 90 moves the onset from 1.0 s (a zero crossing) to the next peak.
    let onset = 1.0 + 0.25 / 60.0;
    // At the positive peak the first full-cycle window below 210 V ends 3/4 cycle after onset.
    let delay = t[0].4 - onset;
    assert!((delay - 0.75 / 60.0).abs() < 2e-4, "trip delay {delay}");
    // Recovery at a peak too: the first window at or above 212 V ends 3/4 cycle after it.
    assert_eq!(t[1].2, EventCode::UvClear);
    let clear = t[1].4 - (onset + 0.2);
    assert!(
        (clear - 0.75 / 60.0).abs() < 2e-4,
        "clear {clear} after recovery"
    );
}

#[test]
fn ring_overflow_is_counted_exactly() {
    let mut g = group("g", 2, Fidelity::Rms);
    g.rbe = RbeSpec {
        delta: None,
        heartbeat: 60.0,
        interval: 0.1,
    };
    g.buffer_capacity = 7;
    let mut s = scenario(vec![g], vec![], 12.0);
    s.network.push(NetworkEvent {
        at: 2.0,
        duration: 5.0,
        groups: vec![],
        kind: NetworkEventKind::RfLoss,
    });
    s.expectations.push(Expectation::Delivered {
        lost: 2 * (50 - 7),
        duplicates: Some(0),
    });
    let out = harness::run(&s, "test");
    // Readings every 100 ms from 2.0 s to 6.9 s: 50 per meter, 7 survive in the ring.
    assert_eq!(out.stats.overflowed, 2 * 43, "{:?}", out.stats);
    assert_eq!(out.stats.unexplained_loss, 0);
    assert!(out.passed(), "{:?}", out.expectations);
}

#[test]
fn outage_past_the_end_is_buffered_not_lost() {
    let mut g = group("g", 1, Fidelity::Rms);
    g.rbe = RbeSpec {
        delta: None,
        heartbeat: 60.0,
        interval: 0.5,
    };
    let mut s = scenario(vec![g], vec![], 6.0);
    s.network.push(NetworkEvent {
        at: 4.0,
        duration: 10.0,
        groups: vec![],
        kind: NetworkEventKind::RfLoss,
    });
    s.expectations.push(Expectation::Delivered {
        lost: 0,
        duplicates: None,
    });
    let out = harness::run(&s, "test");
    assert!(out.stats.buffered_at_end >= 4, "{:?}", out.stats);
    assert!(out.passed(), "{:?}", out.expectations);
}

#[test]
fn an_impossible_expectation_fails_with_numbers() {
    let mut s = scenario(
        vec![group("g", 2, Fidelity::Waveform)],
        vec![sag(1.0, &[Phase::L1], 0.7, 0.2)],
        2.0,
    );
    s.expectations = vec![
        Expectation::Trip {
            code: EventCode::UvTrip,
            group: 0,
            phase: Some(Phase::L1),
            within: 0.001,
        },
        Expectation::NoTrip {
            group: 0,
            code: None,
        },
        Expectation::Trip {
            code: EventCode::OvTrip,
            group: 0,
            phase: None,
            within: 1.0,
        },
    ];
    let out = harness::run(&s, "test");
    assert_eq!(out.failed_count(), 3, "{:#?}", out.expectations);
    let first = &out.expectations[0];
    assert!(first.expected.contains("1.0 ms"), "{first:?}");
    assert!(first.measured.contains("ms"), "{first:?}");
    assert!(
        out.expectations[2].measured.contains("never tripped"),
        "{:?}",
        out.expectations[2]
    );
}

#[test]
fn alarm_latency_is_onset_to_head_end() {
    let mut g = group("g", 20, Fidelity::Rms);
    g.link = LinkSpec {
        latency: 0.02,
        jitter: 0.0,
        loss: 0.0,
        retry: 1.0,
    };
    let mut s = scenario(vec![g], vec![sag(1.0, &[Phase::L1], 0.5, 0.1)], 2.0);
    s.expectations.push(Expectation::AlarmLatency {
        p50: None,
        p99: Some(0.05),
        max: None,
    });
    let out = harness::run(&s, "test");
    assert_eq!(out.stats.alarm_latency.count, 20);
    // Onset at the peak: the window ending 1/4 cycle later still reads 0.90 pu (216 V), the one
    // ending 3/4 cycle after onset reads 0.66 pu, so the trip is at +12.5 ms, the alarm 20 ms later.
    let expected = 0.75 / 60.0 + 0.02;
    assert!(
        (out.stats.alarm_latency.max - expected).abs() < 2e-4,
        "{:?}",
        out.stats.alarm_latency
    );
    assert!(out.passed());
}

#[test]
fn a_reading_due_before_an_outage_starts_is_sent_not_buffered() {
    // 50 Hz: measurement events come every 10 ms. Readings are due every 1.0025 s, so the one due
    // at 30.075 s is only taken at the event at 30.08 s, after the outage started at 30.078 s.
    // It was due while the link was up, so it must go out, not wait in the ring.
    let mut g = group("g", 1, Fidelity::Rms);
    g.rbe = RbeSpec {
        delta: None,
        heartbeat: 60.0,
        interval: 1.0025,
    };
    g.buffer_capacity = 10;
    let mut s = scenario(vec![g], vec![], 70.0);
    s.grid.frequency = 50.0;
    s.grid.system = PhaseSystem::Single;
    s.network.push(NetworkEvent {
        at: 30.078,
        duration: 30.0,
        groups: vec![],
        kind: NetworkEventKind::RfLoss,
    });
    let out = harness::run(&s, "test");
    // Readings due in the outage [30.078, 60.078): k · 1.0025 for k = 31 … 59, 29 of them; the
    // ring keeps 10.
    assert_eq!(out.stats.overflowed, 19, "{:?}", out.stats);
    assert_eq!(out.stats.unexplained_loss, 0);
}

#[test]
fn trips_are_attributed_to_the_disturbance_active_at_the_trip() {
    use sim_core::harness::attribute_onset;
    let lag = 2.0 / 60.0;
    let windows = [(1.0, 1.2), (1.1, 1.15), (3.0, 3.5)];
    // Inside the second window, and within the lag after it ended: the latest active onset.
    assert_eq!(attribute_onset(&windows, 1.12, lag), 1.1);
    assert_eq!(attribute_onset(&windows, 1.17, lag), 1.1);
    // After both ended, long before the third: the latest onset so far.
    assert_eq!(attribute_onset(&windows, 2.0, lag), 1.1);
    // A later onset that is not active any more does not steal the attribution from a long
    // one that is.
    assert_eq!(attribute_onset(&[(1.0, 100.0), (2.0, 2.1)], 50.0, lag), 1.0);
    // Before any onset: power-on.
    assert_eq!(attribute_onset(&windows, 0.5, lag), 0.0);
}

/// The probe synthesizer export uses: ids count meters in group order, the group's own
/// disturbances (point-on-wave resolved) apply, and the noise seed is the probe meter's.
#[test]
fn probe_synthesizer_matches_the_group_and_its_probe_meter() {
    use sim_core::synth::{resolve_point_on_wave, SampleBlock, SupplyModel, Synthesizer};
    let mut only_b = sag(0.1, &[Phase::L1], 0.5, 0.1);
    only_b.groups = vec![1];
    let noise = Disturbance {
        at: 0.0,
        point_on_wave_deg: None,
        phases: PhaseSet::ALL,
        groups: vec![],
        kind: DisturbanceKind::Noise {
            rms: 0.01,
            duration: 1.0,
        },
    };
    let s = scenario(
        vec![
            group("a", 3, Fidelity::Waveform),
            group("b", 2, Fidelity::Waveform),
            group("c", 4, Fidelity::Waveform),
        ],
        vec![only_b.clone(), noise.clone()],
        1.0,
    );
    assert_eq!(
        (0..3)
            .map(|g| harness::probe_meter_id(&s, g))
            .collect::<Vec<_>>(),
        [0, 3, 5]
    );
    let fill = |mut syn: Synthesizer| {
        let mut b = SampleBlock::new(3, 2048, 7680.0, false);
        syn.fill(&mut b, 2048);
        b.voltage
    };
    // Group b: the sag (onset moved to L1's peak) and meter 3's noise.
    let mut ds = vec![only_b, noise.clone()];
    resolve_point_on_wave(&s.grid, &mut ds);
    assert!(ds[0].at > 0.1);
    let want = fill(Synthesizer::new(
        SupplyModel::new(&s.grid, ds),
        harness::synthesis_seed(1, 3),
    ));
    assert_eq!(fill(harness::probe_synthesizer(&s, 1)), want);
    // Group a has no sag; group c draws other noise than group b.
    let a = fill(harness::probe_synthesizer(&s, 0));
    let c = fill(harness::probe_synthesizer(&s, 2));
    let k = (0.15 * 7680.0) as usize;
    assert!(a[0][k].abs() > 0.0 && (a[0][k] - want[0][k]).abs() > 1.0);
    assert_ne!(a[1][..100], c[1][..100]);
}

#[test]
fn slice_length_does_not_change_the_result() {
    // Waveform and rms meters, an outage across slice edges, QoS-1 loss and jitter: everything
    // that crosses a slice boundary.
    let mut s = scenario(
        vec![
            group("w", 2, Fidelity::Waveform),
            group("r", 3, Fidelity::Rms),
        ],
        vec![
            sag(3.2, &[Phase::L1], 0.6, 0.3),
            sag(7.9, &[Phase::L3], 0.5, 1.4),
        ],
        12.0,
    );
    for g in &mut s.groups {
        g.rbe = RbeSpec {
            delta: None,
            heartbeat: 60.0,
            interval: 0.1,
        };
        g.buffer_capacity = 25;
        g.link = LinkSpec {
            latency: 0.03,
            jitter: 0.02,
            loss: 0.2,
            retry: 0.4,
        };
    }
    s.network.push(NetworkEvent {
        at: 4.9,
        duration: 4.3,
        groups: vec![],
        kind: NetworkEventKind::RfLoss,
    });
    let reference = harness::simulate_in_slices(&s, 1e6);
    assert!(
        reference.stats.overflowed > 0 && reference.stats.duplicates > 0,
        "{:?}",
        reference.stats
    );
    for slice in [0.25, 0.5, 2.0, 10.0] {
        assert_eq!(
            harness::simulate_in_slices(&s, slice),
            reference,
            "slice {slice} s"
        );
    }
}

#[test]
fn plot_series_are_bounded_and_keep_the_extremes() {
    // 1000 s of 10/12-cycle windows (≈ 5000 per phase) are decimated to one or two points in
    // each of 2000 buckets (one when the bucket is flat: minimum and maximum are one window),
    // and the bucket holding the sag keeps its minimum.
    let s = scenario(
        vec![group("r", 1, Fidelity::Rms)],
        vec![sag(500.0, &[Phase::L1], 0.5, 0.5)],
        1000.0,
    );
    let obs = simulate(&s);
    assert_eq!(obs.plots.groups.len(), 1);
    let g = &obs.plots.groups[0];
    assert_eq!(g.name, "r");
    assert_eq!(g.thresholds, Thresholds::default());
    assert_eq!(g.nominal, 240.0);
    assert_eq!(g.rms.len(), 3);
    for trace in &g.rms {
        assert!(
            (2000..=sim_core::outcome::RMS_PLOT_MAX).contains(&trace.len()),
            "{} points",
            trace.len()
        );
        assert!(trace.windows(2).all(|w| w[0].0 < w[1].0), "time order");
    }
    let min = |trace: &[(f64, f64)]| trace.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    // A 0.5 s sag to 120 V fills at least one 0.2 s window entirely.
    assert!((min(&g.rms[0]) - 120.0).abs() < 2.0, "{}", min(&g.rms[0]));
    assert!(min(&g.rms[1]) > 235.0);
    let trip = g.events.first().unwrap();
    assert_eq!((trip.code, trip.phase), (EventCode::UvTrip, Phase::L1));
    assert!((500.0..500.05).contains(&trip.at), "{}", trip.at);
    assert!(g
        .events
        .iter()
        .any(|e| e.code == EventCode::UvClear && e.at > 500.5));
    assert_eq!(g.alarm_latencies.len(), obs.trip_alarms.len());
    for (rx, lat) in &g.alarm_latencies {
        assert!(*lat > 0.0 && *lat < 1.0 && *rx > 500.0, "{rx} {lat}");
    }
}

#[test]
fn short_runs_keep_every_rms_window_for_plots() {
    let s = scenario(vec![group("w", 1, Fidelity::Waveform)], vec![], 12.0);
    let obs = simulate(&s);
    let trace = &obs.plots.groups[0].rms[0];
    // 12-cycle windows at 60 Hz are 0.2 s: 59 or 60 of them end within 12 s.
    assert!((59..=60).contains(&trace.len()), "{}", trace.len());
    for w in trace.windows(2) {
        assert!((w[1].0 - w[0].0 - 0.2).abs() < 1e-3, "{:?}", w);
    }
    assert!(trace.iter().all(|p| (p.1 - 240.0).abs() < 1.0));
    assert!(obs.plots.groups[0].events.is_empty());
    assert!(obs.plots.groups[0].alarm_latencies.is_empty());
}

#[test]
fn plot_trip_counts_cover_every_meter_of_each_group() {
    // Two groups of 3 and 2 meters; a sag on every phase at 2 s trips every phase of every
    // meter once: 9 and 6 trips, in the bucket holding 2 s.
    let s = scenario(
        vec![group("a", 3, Fidelity::Rms), group("b", 2, Fidelity::Rms)],
        vec![sag(2.0, &[Phase::L1, Phase::L2, Phase::L3], 0.5, 0.5)],
        5.0,
    );
    let obs = simulate(&s);
    let groups = &obs.plots.groups;
    assert_eq!(groups.len(), 2);
    assert_eq!((groups[0].meters, groups[1].meters), (3, 2));
    let bucket = 5.0 / sim_core::outcome::TRIP_BUCKETS as f64;
    for (g, want) in groups.iter().zip([9_u64, 6]) {
        assert_eq!(g.trips.iter().map(|b| b.1).sum::<u64>(), want, "{}", g.name);
        for (end, _) in &g.trips {
            assert!(*end > 2.0 && *end - bucket < 2.05, "bucket ending {end}");
        }
    }
    let total: u64 = groups.iter().flat_map(|g| &g.trips).map(|b| b.1).sum();
    assert_eq!(total, obs.stats.trips);
}

#[test]
fn event_waveforms_are_the_probe_supply_around_the_first_onsets() {
    // Sags at 2 s and 2.05 s (overlapping windows), one at 3 s and one at 70 s: the first three
    // onsets are recorded, 2 cycles before to 6 cycles after each; the 70 s one (a fourth) is not.
    let s = scenario(
        vec![
            group("w", 2, Fidelity::Waveform),
            group("r", 1, Fidelity::Rms),
        ],
        vec![
            sag(3.0, &[Phase::L2], 0.5, 0.1),
            sag(2.0, &[Phase::L1], 0.5, 0.1),
            sag(2.05, &[Phase::L1], 0.6, 0.1),
            sag(70.0, &[Phase::L1], 0.5, 0.1),
        ],
        80.0,
    );
    let obs = simulate(&s);
    let fs = s.grid.sample_rate;
    for (gi, g) in obs.plots.groups.iter().enumerate() {
        let onsets: Vec<f64> = g.event_waveforms.iter().map(|w| w.onset).collect();
        // point_on_wave 90 moves each onset a quarter cycle, to L1's next peak.
        let want = [2.0, 2.05, 3.0].map(|t| t + 0.25 / 60.0);
        assert_eq!(onsets.len(), 3, "{}", g.name);
        for (a, b) in onsets.iter().zip(want) {
            assert!((a - b).abs() < 1e-9, "{a} {b}");
        }
        assert_eq!(g.event_waveforms, harness::event_waveforms(&s, gi));
        // Every sample is the probe synthesizer's, read from the scenario start.
        let mut synth = harness::probe_synthesizer(&s, gi);
        let mut block = sim_core::synth::SampleBlock::new(3, 4096, fs, false);
        let mut all: Vec<Vec<f32>> = vec![Vec::new(); 3];
        while synth.position() < (3.2 * fs) as u64 {
            synth.fill(&mut block, 4096);
            for (ch, v) in all.iter_mut().enumerate() {
                v.extend_from_slice(&block.voltage[ch][..block.len]);
            }
        }
        for w in &g.event_waveforms {
            assert_eq!(w.step, 1.0 / fs, "not decimated");
            let first = (w.start * fs).round() as usize;
            assert!(
                (w.start - (w.onset - 2.0 / 60.0)).abs() <= 1.0 / fs,
                "{}",
                w.start
            );
            assert_eq!(w.samples.len(), 3);
            for (kept, stream) in w.samples.iter().zip(&all) {
                // 8 cycles at 60 Hz and 7680 Hz: 1024 sample intervals.
                let n = kept.len();
                assert!((1024..=1025).contains(&n), "{n}");
                assert_eq!(kept[..], stream[first..first + n]);
            }
        }
        // L1 at the 2 s sag: full peak before the onset, half of it 1 cycle after.
        let w = &g.event_waveforms[0];
        let peak = |a: f64, b: f64| {
            w.samples[0]
                .iter()
                .enumerate()
                .filter(|(i, _)| (a..b).contains(&(w.start + *i as f64 * w.step - w.onset)))
                .map(|(_, v)| f64::from(v.abs()))
                .fold(0.0, f64::max)
        };
        let nominal_peak = 240.0 * std::f64::consts::SQRT_2;
        assert!((peak(-2.0 / 60.0, 0.0) - nominal_peak).abs() < 2.0);
        assert!((peak(1.0 / 60.0, 2.0 / 60.0) - 0.5 * nominal_peak).abs() < 2.0);
        // THD per window per phase: a clean sine before the first sag, so ≈ 0 %; the windows
        // holding a sag's edges are distorted.
        assert_eq!(g.thd.len(), 3);
        assert!(g.thd[0].len() > 300, "{}", g.thd[0].len());
        let clean: Vec<f64> = g
            .thd
            .iter()
            .flatten()
            .filter(|p| p.0 < 1.9)
            .map(|p| p.1)
            .collect();
        assert!(clean.len() >= 3 * 8, "{}", clean.len());
        assert!(clean.iter().all(|p| *p < 0.05), "{clean:?}");
        let sagged: Vec<_> = g.thd[0]
            .iter()
            .filter(|p| (1.9..2.5).contains(&p.0))
            .collect();
        assert!(sagged.len() >= 2, "{} {sagged:?}", g.name);
    }
}

#[test]
fn event_waveforms_longer_than_the_cap_are_decimated() {
    // 8 cycles at 50 Hz and 12.8 kHz are 2048 sample intervals, over the 2000 cap: every
    // second sample is kept.
    let mut s = scenario(
        vec![group("w", 1, Fidelity::Waveform)],
        vec![sag(1.0, &[Phase::L1], 0.5, 0.1)],
        2.0,
    );
    s.grid.frequency = 50.0;
    s.grid.sample_rate = 12_800.0;
    let waves = harness::event_waveforms(&s, 0);
    assert_eq!(waves.len(), 1);
    let w = &waves[0];
    assert_eq!(w.step, 2.0 / 12_800.0);
    for kept in &w.samples {
        assert!(kept.len() <= sim_core::outcome::EVENT_WAVEFORM_SAMPLES_MAX);
        assert!((1024..=1025).contains(&kept.len()), "{}", kept.len());
    }
    // The kept samples are every second one of the stream.
    let mut synth = harness::probe_synthesizer(&s, 0);
    let mut block = sim_core::synth::SampleBlock::new(3, 32_000, 12_800.0, false);
    synth.fill(&mut block, 32_000);
    let first = (w.start * 12_800.0).round() as usize;
    for (i, v) in w.samples[0].iter().enumerate() {
        assert_eq!(*v, block.voltage[0][first + 2 * i], "sample {i}");
    }
}

#[test]
fn event_waveforms_reach_onsets_long_after_the_start() {
    // A sag on L1 at 90 s, noise on every phase from 30 s to 100 s: the window is reached by
    // skipping the samples before it (the noise stream drawn through), and shows the dip.
    let noise = Disturbance {
        at: 30.0,
        point_on_wave_deg: None,
        phases: PhaseSet::ALL,
        groups: vec![],
        kind: DisturbanceKind::Noise {
            rms: 0.002,
            duration: 70.0,
        },
    };
    let s = scenario(
        vec![group("r", 1, Fidelity::Rms)],
        vec![sag(90.0, &[Phase::L1], 0.5, 0.2), noise],
        100.0,
    );
    let obs = simulate(&s);
    let g = &obs.plots.groups[0];
    assert!(g.event_waveforms_omitted.is_empty());
    assert_eq!(g.event_waveforms.len(), 1);
    let w = &g.event_waveforms[0];
    let onset = 90.0 + 0.25 / 60.0;
    assert!((w.onset - onset).abs() < 1e-9, "{}", w.onset);
    let fs = s.grid.sample_rate;
    let first = (w.start * fs).round() as usize;
    assert!((w.start - (onset - 2.0 / 60.0)).abs() <= 1.0 / fs);
    // The samples are the probe synthesizer's stream, filled from t = 0.
    let mut synth = harness::probe_synthesizer(&s, 0);
    let mut block = sim_core::synth::SampleBlock::new(3, 4096, fs, false);
    let mut all: Vec<Vec<f32>> = vec![Vec::new(); 3];
    while synth.position() < (first + 1100) as u64 {
        synth.fill(&mut block, 4096);
        for (ch, v) in all.iter_mut().enumerate() {
            v.extend_from_slice(&block.voltage[ch][..block.len]);
        }
    }
    for (kept, stream) in w.samples.iter().zip(&all) {
        let n = kept.len();
        assert!((1024..=1025).contains(&n), "{n}");
        assert_eq!(kept[..], stream[first..first + n]);
    }
    // L1: the full peak before the onset, half of it a cycle after; L2 keeps its peak.
    let peak = |ch: usize, a: f64, b: f64| {
        w.samples[ch]
            .iter()
            .enumerate()
            .filter(|(i, _)| (a..b).contains(&(w.start + *i as f64 * w.step - w.onset)))
            .map(|(_, v)| f64::from(v.abs()))
            .fold(0.0, f64::max)
    };
    let nominal_peak = 240.0 * std::f64::consts::SQRT_2;
    assert!((peak(0, -2.0 / 60.0, 0.0) - nominal_peak).abs() < 4.0);
    assert!((peak(0, 1.0 / 60.0, 2.0 / 60.0) - 0.5 * nominal_peak).abs() < 4.0);
    assert!((peak(1, 1.0 / 60.0, 2.0 / 60.0) - nominal_peak).abs() < 4.0);

    // Under a cap smaller than the noise before the window, the onset is listed as omitted
    // with the draws it needed: 3 phases from 30 s (sample 230 400, a chunk boundary) to the
    // start of the 512-sample chunk holding the window's first sample (that chunk is
    // synthesized whole, its noise included; no model edge lies between).
    let needed = 3 * (first as u64 / 512 * 512 - 230_400);
    let (waves, omitted) = harness::event_waveforms_within(&s, 0, needed - 1);
    assert!(waves.is_empty());
    assert_eq!(omitted, [(w.onset, needed)]);
    let (waves, omitted) = harness::event_waveforms_within(&s, 0, needed);
    assert_eq!((waves.len(), omitted.len()), (1, 0));
    assert_eq!(waves[0], *w);
}
