//! End-to-end tests of `gridloop export --comtrade`: the files it writes, its window and its
//! exit codes.

use std::path::Path;
use std::process::Output;

use super::{assert_code, gridloop};

const SAG: &str = "tests/fixtures/pass/sag-trips.yaml";

/// A fresh scratch directory, named apart from the other modules' ones.
fn scratch(test: &str) -> std::path::PathBuf {
    super::scratch(&format!("export-{test}"))
}

/// (a, b) per channel, and the sample count, from a `.cfg`.
fn parse_cfg(text: &str) -> (Vec<(String, f64, f64)>, u64) {
    let lines: Vec<&str> = text.split("\r\n").collect();
    let n: usize = lines[1]
        .split(',')
        .nth(1)
        .unwrap()
        .trim_end_matches('A')
        .parse()
        .unwrap();
    let channels = lines[2..2 + n]
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[1].to_owned(),
                f[5].parse().unwrap(),
                f[6].parse().unwrap(),
            )
        })
        .collect();
    let samples = lines[2 + n + 2].split(',').nth(1).unwrap().parse().unwrap();
    (channels, samples)
}

/// Decoded values per channel of an ASCII `.dat`.
fn read_ascii(dat: &str, scaling: &[(String, f64, f64)]) -> Vec<Vec<f64>> {
    let mut out = vec![Vec::new(); scaling.len()];
    for (k, line) in dat.split("\r\n").filter(|l| !l.is_empty()).enumerate() {
        let f: Vec<i64> = line.split(',').map(|x| x.parse().unwrap()).collect();
        assert_eq!(f[0], k as i64 + 1);
        for (c, (_, a, b)) in scaling.iter().enumerate() {
            out[c].push(a * f[2 + c] as f64 + b);
        }
    }
    out
}

fn rms(x: &[f64]) -> f64 {
    (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt()
}

fn export(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["export", SAG, "--comtrade", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    gridloop(&args)
}

#[test]
fn ascii_export_recovers_the_waveform_and_is_deterministic() {
    let dir = scratch("ascii");
    let out = export(&dir, &[]);
    assert_code(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("9600 samples × 3 channels at 3200 Hz"));
    let cfg = std::fs::read_to_string(dir.join("fixture-sag-trips.cfg")).unwrap();
    assert!(cfg.starts_with("fixture-sag-trips,gridloop feeder-a meter 0,1999\r\n3,3A,0D\r\n"));
    // Trigger: the sag at 1 s; start: the epoch.
    assert!(cfg.contains(
        "\r\n3200,9600\r\n01/01/2000,00:00:00.000000\r\n01/01/2000,00:00:01.000000\r\nASCII\r\n1.0\r\n"
    ));
    let (scaling, samples) = parse_cfg(&cfg);
    assert_eq!(samples, 9600);
    assert_eq!(
        scaling.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        ["VA", "VB", "VC"]
    );
    let dat = std::fs::read_to_string(dir.join("fixture-sag-trips.dat")).unwrap();
    let v = read_ascii(&dat, &scaling);
    assert_eq!(v[0].len(), 9600);
    let a = scaling[0].1;
    // After the noise (2 s .. 3 s = 60 whole cycles): exactly nominal within a/2.
    let steady = rms(&v[0][6400..9600]);
    assert!((steady - 240.0).abs() <= a / 2.0 + 1e-4, "{steady}");
    // The sag: 10 cycles at 0.7 pu from 1 s (samples 3200..3733 are whole cycles: 160/3
    // samples per cycle, so take 9 cycles = 480 samples), noise 0.002 pu in quadrature.
    let sag = rms(&v[0][3200..3680]);
    let want = (168.0_f64.powi(2) + 0.48_f64.powi(2)).sqrt();
    assert!((sag / want - 1.0).abs() < 2e-3, "{sag}");
    let vb = rms(&v[1][3200..3680]);
    assert!((vb / 240.0 - 1.0).abs() < 2e-3, "{vb}");

    let again = scratch("ascii-again");
    assert_code(&export(&again, &[]), 0);
    assert_eq!(
        std::fs::read(again.join("fixture-sag-trips.dat")).unwrap(),
        dat.as_bytes()
    );
    assert_eq!(
        std::fs::read_to_string(again.join("fixture-sag-trips.cfg")).unwrap(),
        cfg
    );
}

#[test]
fn binary_window_matches_the_whole_export() {
    let whole = scratch("whole");
    assert_code(&export(&whole, &[]), 0);
    let cfg = std::fs::read_to_string(whole.join("fixture-sag-trips.cfg")).unwrap();
    let (scaling, _) = parse_cfg(&cfg);
    let all = read_ascii(
        &std::fs::read_to_string(whole.join("fixture-sag-trips.dat")).unwrap(),
        &scaling,
    );

    let dir = scratch("window");
    let out = export(
        &dir,
        &[
            "--format", "binary", "--rev", "2013", "--from", "1s", "--to", "90cycles",
        ],
    );
    assert_code(&out, 0);
    let wcfg = std::fs::read_to_string(dir.join("fixture-sag-trips.cfg")).unwrap();
    assert!(wcfg.contains("\r\n3200,1600\r\n01/01/2000,00:00:01.000000\r\n"));
    assert!(wcfg.ends_with("\r\nBINARY\r\n1.0\r\n0,0\r\nF,0\r\n"));
    let (wscaling, samples) = parse_cfg(&wcfg);
    assert_eq!(samples, 1600);
    let bytes = std::fs::read(dir.join("fixture-sag-trips.dat")).unwrap();
    assert_eq!(bytes.len(), 1600 * (4 + 4 + 3 * 2));
    for (k, row) in bytes.chunks_exact(14).enumerate() {
        let n = u32::from_le_bytes(row[0..4].try_into().unwrap());
        let t = u32::from_le_bytes(row[4..8].try_into().unwrap());
        assert_eq!(n as usize, k + 1);
        assert_eq!(t, (k as f64 / 3200.0 * 1e6).round() as u32);
        for c in 0..3 {
            let x = i16::from_le_bytes(row[8 + 2 * c..10 + 2 * c].try_into().unwrap());
            let got = wscaling[c].1 * f64::from(x) + wscaling[c].2;
            let want = all[c][3200 + k];
            let tol = (scaling[c].1 + wscaling[c].1) / 2.0 + 1e-9;
            assert!((got - want).abs() <= tol, "k {k} ch {c}: {got} vs {want}");
        }
    }
}

#[test]
fn invalid_requests_exit_2() {
    let dir = scratch("invalid");
    let d = dir.to_str().unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "schema: 1\nname: x\n").unwrap();
    for (args, needle) in [
        (
            vec!["export", SAG, "--comtrade", d, "--group", "nope"],
            "no meter group `nope`",
        ),
        (
            vec!["export", SAG, "--comtrade", d, "--from", "1"],
            "--from",
        ),
        (
            vec!["export", SAG, "--comtrade", d, "--from", "2s", "--to", "1s"],
            "before",
        ),
        (
            vec!["export", SAG, "--comtrade", d, "--to", "4s"],
            "after the scenario's end",
        ),
        (
            vec!["export", "tests/fixtures", "--comtrade", d],
            "not a scenario file",
        ),
        (
            vec!["export", bad.to_str().unwrap(), "--comtrade", d],
            "invalid",
        ),
        (
            vec![
                "export",
                "../scenarios/library/drift/thermal-drift-8h.yaml",
                "--comtrade",
                d,
            ],
            "at most 50000000",
        ),
        (
            vec!["export", SAG, "--comtrade", d, "--format", "csv"],
            "csv",
        ),
        (
            vec!["export", SAG, "--comtrade", d, "--rev", "1991"],
            "1991",
        ),
    ] {
        let out = gridloop(&args);
        assert_code(&out, 2);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // Nothing was written.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}

#[test]
fn an_unwritable_folder_exits_3() {
    let dir = scratch("unwritable");
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = gridloop(&[
        "export",
        SAG,
        "--comtrade",
        file.join("sub").to_str().unwrap(),
    ]);
    assert_code(&out, 3);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot create the folder"));
}

#[test]
fn a_comtrade_path_that_is_a_file_is_a_usage_error() {
    let dir = scratch("comtrade-file");
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = export(&file, &[]);
    assert_code(&out, 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is a file"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
}

#[test]
fn a_failed_export_leaves_the_old_pair_untouched() {
    let dir = scratch("keep-old");
    let dat = dir.join("fixture-sag-trips.dat");
    let cfg = dir.join("fixture-sag-trips.cfg");
    std::fs::write(&dat, "old dat").unwrap();
    // The .cfg cannot be written (a folder is in its way): nothing is replaced.
    std::fs::create_dir(&cfg).unwrap();
    let out = export(&dir, &[]);
    assert_code(&out, 3);
    assert_eq!(std::fs::read_to_string(&dat).unwrap(), "old dat");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["fixture-sag-trips.cfg", "fixture-sag-trips.dat"]);

    // Once the way is clear both are replaced, and no temporary is left.
    std::fs::remove_dir(&cfg).unwrap();
    std::fs::write(&cfg, "old cfg").unwrap();
    let out = export(&dir, &[]);
    assert_code(&out, 0);
    assert!(std::fs::read_to_string(&cfg)
        .unwrap()
        .starts_with("fixture-sag-trips,"));
    assert_eq!(std::fs::read_to_string(&dat).unwrap().lines().count(), 9600);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
}

#[test]
fn an_export_over_its_scenario_file_is_a_usage_error() {
    let dir = scratch("over-scenario");
    let original = std::fs::read_to_string(SAG).unwrap();
    for ext in ["dat", "cfg"] {
        // A scenario file whose name the export would give its output.
        let scenario = dir.join(format!("fixture-sag-trips.{ext}"));
        std::fs::write(&scenario, &original).unwrap();
        let out = gridloop(&[
            "export",
            scenario.to_str().unwrap(),
            "--comtrade",
            dir.join(".").to_str().unwrap(),
        ]);
        assert_code(&out, 2);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("names the scenario file"), "{err}");
        assert_eq!(std::fs::read_to_string(&scenario).unwrap(), original);
        std::fs::remove_file(&scenario).unwrap();
    }
}

#[test]
fn a_missing_scenario_exits_2_like_run() {
    let dir = scratch("missing");
    for cmd in [
        vec![
            "export",
            "tests/no/such.yaml",
            "--comtrade",
            dir.to_str().unwrap(),
        ],
        vec!["run", "tests/no/such.yaml"],
    ] {
        let out = gridloop(&cmd);
        assert_code(&out, 2);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cannot read tests/no/such.yaml"),
            "{cmd:?}: {err}"
        );
    }
}
