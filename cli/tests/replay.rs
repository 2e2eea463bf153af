//! The acceptance round trip of issue 5: `gridloop export` a library scenario's waveform,
//! replay it (`replay:` event, no synthesized disturbance) and `gridloop run` both: the same
//! verdicts. Also: what the reader recovers from `export`'s files equals the probe waveform
//! within a/2, for ASCII 1999 and BINARY 2013.

use std::path::Path;

use reports::comtrade_read;
use sim_core::synth::SampleBlock;

use super::{assert_code, gridloop, path_arg, stdout};

const SAG: &str = "../scenarios/library/sags-swells/sag-75pct-12-cycles.yaml";

fn scratch(test: &str) -> std::path::PathBuf {
    super::scratch(&format!("replay-{test}"))
}

/// (label, passed) of every expectation of the one scenario in a `--json` document.
fn verdicts(json: &Path) -> Vec<(String, bool)> {
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    doc["scenarios"][0]["expectations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["label"].as_str().unwrap().to_owned(),
                e["passed"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// The original scenario's text with its name changed and its events replaced by one
/// replay of `cfg` at 0 s; everything else (grid, meters, expectations) as written.
fn replaying(original: &str, cfg: &str) -> String {
    let head = &original[..original.find("\nevents:\n").unwrap()];
    let expect = &original[original.find("\nexpect:\n").unwrap()..];
    let head = head.replace(
        "name: sag-75pct-12-cycles",
        "name: sag-75pct-12-cycles-replayed",
    );
    format!(
        "{head}\nevents:\n  - at: 0s\n    replay:\n      comtrade: {cfg}\n      \
         channels: {{ L1: VA, L2: VB, L3: VC }}{expect}"
    )
}

#[test]
fn export_then_replay_gives_the_same_verdicts() {
    let original =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(SAG)).unwrap();
    let dir = scratch("round-trip");
    let before = dir.join("original.json");
    let out = gridloop(&["run", SAG, "--quiet", "--json", path_arg(&before)]);
    assert_code(&out, 0);
    let want = verdicts(&before);
    assert_eq!(want.len(), 7);
    assert!(want.iter().all(|(_, p)| *p), "{want:?}");

    for (format, rev) in [("ascii", "1999"), ("binary", "2013")] {
        let sub = dir.join(format);
        let out = gridloop(&[
            "export",
            SAG,
            "--comtrade",
            path_arg(&sub),
            "--format",
            format,
            "--rev",
            rev,
        ]);
        assert_code(&out, 0);
        let yaml = sub.join("replayed.yaml");
        let text = replaying(&original, "sag-75pct-12-cycles.cfg");
        assert!(!text.contains("sag: {"), "no synthesized sag left:\n{text}");
        std::fs::write(&yaml, text).unwrap();
        let json = sub.join("replayed.json");
        let out = gridloop(&["run", path_arg(&yaml), "--json", path_arg(&json)]);
        assert_code(&out, 0);
        assert!(
            stdout(&out).contains("1 scenario, 7 expectations: 7 passed, 0 failed"),
            "{}",
            stdout(&out)
        );
        assert_eq!(verdicts(&json), want, "{format}");
    }
}

#[test]
fn the_reader_recovers_the_exported_waveform_within_half_a_step() {
    let scenario = scenarios::load_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join(SAG)).unwrap();
    let mut synth = sim_core::harness::probe_synthesizer(&scenario, 0);
    let n = 38_400;
    let mut block = SampleBlock::new(3, n, 12_800.0, false);
    synth.fill(&mut block, n);
    for (format, rev) in [("ascii", "1999"), ("binary", "2013")] {
        let dir = scratch(&format!("read-{format}"));
        let out = gridloop(&[
            "export",
            SAG,
            "--comtrade",
            path_arg(&dir),
            "--format",
            format,
            "--rev",
            rev,
        ]);
        assert_code(&out, 0);
        let data = comtrade_read::read(&dir.join("sag-75pct-12-cycles.cfg")).unwrap();
        let cfg = &data.config;
        assert_eq!(cfg.revision.to_string(), rev);
        assert_eq!(
            (cfg.samples, cfg.uniform_rate()),
            (n as u64, Some(12_800.0))
        );
        assert_eq!(cfg.line_frequency, 60.0);
        // Trigger: the sag's point-on-wave onset (1 s + a quarter cycle), to the µs.
        assert!((cfg.trigger.since(&cfg.start) - (1.0 + 0.25 / 60.0)).abs() < 1e-6);
        for (ch, info) in cfg.analog.iter().enumerate() {
            assert_eq!(info.id, ["VA", "VB", "VC"][ch]);
            let worst = data.values[ch]
                .iter()
                .zip(&block.voltage[ch][..n])
                .map(|(a, b)| (a - f64::from(*b)).abs())
                .fold(0.0, f64::max);
            assert!(
                worst <= info.a / 2.0 * (1.0 + 1e-9),
                "{format} {}: {worst}",
                info.id
            );
        }
        for (k, ts) in data.timestamps.iter().enumerate() {
            assert_eq!(*ts, Some((k as f64 / 12_800.0 * 1e6).round() as u64));
        }
    }
}
