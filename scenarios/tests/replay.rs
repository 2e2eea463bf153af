//! `replay` events: the fixture under `tests/replay/` (the library's sag-75pct-12-cycles
//! replayed from its own COMTRADE export) lowers to the recorded samples, runs to the same
//! verdicts as the original, and bad recordings are reported at the `replay` key with the
//! COMTRADE file and line.

use std::path::{Path, PathBuf};

use scenarios::{load_file, LoadError};
use sim_core::disturbance::DisturbanceKind;
use sim_core::harness;
use sim_core::synth::SampleBlock;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture() -> PathBuf {
    repo().join("tests/replay/sag-75pct-replayed.yaml")
}

fn original() -> sim_core::Scenario {
    load_file(&repo().join("scenarios/library/sags-swells/sag-75pct-12-cycles.yaml")).unwrap()
}

#[test]
fn the_fixture_lowers_to_the_recorded_probe_waveform() {
    let s = load_file(&fixture()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.disturbances.len(), 1);
    let d = &s.disturbances[0];
    let DisturbanceKind::Replay(r) = &d.kind else {
        panic!("not a replay: {:?}", d.kind);
    };
    assert_eq!(d.at, 0.9);
    assert_eq!(r.rate, 12_800.0);
    assert!((r.duration - 0.5).abs() < 1e-12);
    // The .cfg's trigger is the sag's point-on-wave onset, 1 s + a quarter cycle, to the µs.
    assert!(
        (d.onset() - (1.0 + 0.25 / 60.0)).abs() < 1e-6,
        "{}",
        d.onset()
    );
    assert!(
        r.source.ends_with("sag-75pct-12-cycles.cfg"),
        "{}",
        r.source
    );

    // Sample for sample the probe meter's supply from 0.9 s to 1.4 s, within a/2 of the
    // file's scaling (a = 0.0103584 V at most) plus f32 rounding.
    let orig = original();
    let mut synth = harness::probe_synthesizer(&orig, 0);
    let mut block = SampleBlock::new(3, 17_920, 12_800.0, false);
    synth.fill(&mut block, 17_920);
    let half_step = 0.010_358_4 / 2.0 + 1e-4;
    for ch in 0..3 {
        let rec = r.channels[ch].as_ref().unwrap();
        assert_eq!(rec.len(), 6400);
        let worst = rec
            .iter()
            .zip(&block.voltage[ch][11_520..17_920])
            .map(|(a, b)| f64::from((a - b).abs()))
            .fold(0.0, f64::max);
        assert!(worst <= half_step, "channel {ch}: {worst} V");
    }
}

#[test]
fn the_replay_gives_the_original_verdicts_and_trip_times() {
    let replayed = load_file(&fixture()).unwrap();
    let orig = original();
    let a = harness::run(&orig, "original");
    let b = harness::run(&replayed, "replayed");
    let verdicts = |o: &sim_core::outcome::ScenarioOutcome| {
        o.expectations
            .iter()
            .map(|e| (e.label.clone(), e.passed))
            .collect::<Vec<_>>()
    };
    assert_eq!(verdicts(&a), verdicts(&b));
    assert!(b.expectations.iter().all(|e| e.passed), "{b:#?}");
    assert_eq!(b.expectations.len(), 7);
    // Every meter trips (and clears) at the same instants.
    let events = |s: &sim_core::Scenario| {
        let obs = harness::simulate(s);
        obs.meters
            .iter()
            .flat_map(|m| {
                m.events
                    .iter()
                    .map(move |(t, e)| format!("{} {:?} {:?} {t:.6}", m.id, e.code, e.phase))
            })
            .collect::<Vec<_>>()
    };
    let (ta, tb) = (events(&orig), events(&replayed));
    assert_eq!(ta.len(), 8, "{ta:?}");
    assert_eq!(ta, tb);
}

#[test]
fn a_truncated_recording_names_the_dat_file_and_record() {
    let file = repo().join("tests/bad-scenarios/replay-truncated-recording.yaml");
    let Err(LoadError::Invalid(diags)) = load_file(&file) else {
        panic!("loaded");
    };
    let d = &diags[0];
    assert_eq!((d.path.as_str(), d.line), ("events[0].replay.comtrade", 12));
    assert!(
        d.message.contains(
            "broken/truncated.dat:record 72 (byte 994): record: truncated: 71 whole records"
        ),
        "{}",
        d.message
    );
}

#[test]
fn a_recording_resampled_to_another_grid_rate_gives_the_same_verdicts() {
    // The 12.8 kHz recording played into 25.6 kHz and 10 kHz synthesis (linear interpolation).
    let src = std::fs::read_to_string(fixture()).unwrap();
    for rate in ["25600", "10000"] {
        let text = src.replace("sample_rate: 12800", &format!("sample_rate: {rate}"));
        assert_ne!(text, src);
        let s = scenarios::load_str(&text, &fixture()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.grid.sample_rate.to_string(), rate);
        let out = harness::run(&s, "resampled");
        let failed: Vec<String> = out
            .expectations
            .iter()
            .filter(|e| !e.passed)
            .map(|e| format!("{}: {}", e.label, e.measured))
            .collect();
        assert!(failed.is_empty(), "{rate} Hz: {failed:?}");
    }
}
