//! Lab profiles: the shipped emulated profile parses, and every kind of bad field is an error
//! that names the file, the line and the field (files in tests/bad-labs/).

use std::path::{Path, PathBuf};

use hil_bridge::lab::{InstrumentTransport, Lab, LabError, MeterTransport};
use hil_bridge::source::Dialect;
use sim_core::encoding::{RegisterEncoding, WordOrder};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_shipped_emulated_lab_parses() {
    let lab = Lab::load(&root().join("../lab/emulated.yaml")).expect("lab/emulated.yaml");
    assert_eq!(lab.safety.max_volts, 264.0);
    assert_eq!((lab.safety.min_freq, lab.safety.max_freq), (45.0, 65.0));
    assert_eq!(lab.instruments.len(), 1);
    let source = &lab.instruments[0];
    assert_eq!(source.dialect, Dialect::Chroma);
    assert_eq!(source.transport, InstrumentTransport::Emulated);
    assert_eq!(lab.meters.len(), 1);
    let meter = &lab.meters[0];
    assert_eq!(
        meter.transport,
        MeterTransport::Emulated {
            serves: RegisterEncoding::Float32(WordOrder::Abcd)
        }
    );
    assert_eq!(meter.unit, 1);
    assert_eq!(
        meter.feed.as_ref().map(|f| f.instrument.as_str()),
        Some("source")
    );
}

/// (file, line, field, words the message must contain)
const BAD: &[(&str, usize, &str, &[&str])] = &[
    (
        "unknown-key.yaml",
        6,
        "instruments[0]",
        &["unknown field `colour`"],
    ),
    (
        "bad-dialect.yaml",
        4,
        "instruments[0].dialect",
        &["keysight", "chroma", "ametek"],
    ),
    (
        "bad-duration.yaml",
        6,
        "instruments[0].timeout",
        &["2 hours", "500ms"],
    ),
    (
        "bad-encoding.yaml",
        5,
        "meters[0].registers",
        &["float64", "int16:SCALE"],
    ),
    ("missing-safety.yaml", 1, ".", &["missing field `safety`"]),
    (
        "two-transports.yaml",
        5,
        "meters[0].modbus_rtu",
        &["exactly one transport", "modbus_tcp and modbus_rtu"],
    ),
    (
        "unknown-feed.yaml",
        10,
        "meters[0].feed.instrument",
        &["`source-2`", "instruments: src"],
    ),
    (
        "bad-port.yaml",
        5,
        "instruments[0].tcp",
        &["10.0.0.5:99999", "port"],
    ),
    (
        "bad-parity.yaml",
        6,
        "meters[0].modbus_rtu.parity",
        &["mark", "none", "even", "odd"],
    ),
    (
        "unsafe-limit.yaml",
        2,
        "safety.max_volts",
        &["-5 V", "positive"],
    ),
    ("bad-unit.yaml", 4, "meters[0].unit", &["1–247"]),
];

#[test]
fn every_bad_lab_names_file_line_and_field() {
    for (file, want_line, want_field, words) in BAD {
        let path = root().join("tests/bad-labs").join(file);
        let err = Lab::load(&path).expect_err(file);
        let text = err.to_string();
        let LabError::Invalid {
            path: p,
            line,
            field,
            message,
            ..
        } = &err
        else {
            panic!("{file}: {text}");
        };
        assert_eq!(p, &path, "{file}: {text}");
        assert_eq!(line, want_line, "{file}: {text}");
        assert_eq!(field, want_field, "{file}: {text}");
        for w in *words {
            assert!(message.contains(w), "{file}: `{w}` not in {text}");
        }
        let prefix = format!("{}:{line}:", path.display());
        assert!(text.starts_with(&prefix), "{file}: {text}");
    }
}

#[test]
fn a_missing_file_names_itself() {
    let err = Lab::load(Path::new("/nonexistent/lab.yaml")).expect_err("missing");
    assert!(matches!(err, LabError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with("/nonexistent/lab.yaml: cannot read"),
        "{err}"
    );
}
