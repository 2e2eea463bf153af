//! Lab profiles: the shipped emulated profile parses, and every kind of bad field is an error
//! that names the file, the line and the field (files in tests/bad-labs/).

use std::path::{Path, PathBuf};

use hil_bridge::emulator::{Emulator, Instrument};
use hil_bridge::lab::{InstrumentTransport, Lab, LabError, MeterTransport};
use hil_bridge::source::Dialect;
use sim_core::encoding::{RegisterEncoding, WordOrder};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_shipped_emulated_lab_parses() {
    let lab = Lab::load(&root().join("../lab/emulated.yaml")).expect("lab/emulated.yaml");
    assert_eq!(lab.safety.max_volts, 300.0);
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

const ONE_SOURCE: &str = "\
safety: { max_volts: 264, min_freq: 45, max_freq: 65 }
instruments:
  - name: src
    dialect: ametek
    emulated: true
    timeout: 2s
";

#[tokio::test]
async fn probing_an_instrument_keeps_its_error_queue_apart_from_the_link() {
    let lab = Lab::parse(ONE_SOURCE, Path::new("one.yaml")).expect("parses");
    let profile = &lab.instruments[0];
    // An instrument that already holds an error: the probe reaches it, identifies it and
    // reports the queue as the instrument's answer, not as a link failure.
    let mut instrument = Instrument::new(Dialect::Ametek, 300.0);
    assert_eq!(instrument.handle_line("BOGUS:CMD"), None);
    let emulator = Emulator::bind("127.0.0.1:0", instrument)
        .await
        .expect("binds");
    let probe = profile.probe(Some(emulator.local_addr())).await;
    assert_eq!(probe.addr, emulator.local_addr().to_string());
    let (identity, queue) = probe.result.expect("reached");
    assert_eq!(identity.manufacturer, "AMETEK Programmable Power");
    assert_eq!(identity.serial, "EMU0002");
    let errors = queue.expect_err("the queued error").errors;
    assert_eq!(
        errors.iter().map(|e| e.code).collect::<Vec<_>>(),
        vec![-113]
    );
    // Drained: a second probe finds the queue empty.
    let again = profile.probe(Some(emulator.local_addr())).await;
    assert_eq!(again.result.expect("reached").1, Ok(()));

    // Nobody listening: a link failure naming the address and the step.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let addr = free.local_addr().expect("addr");
    drop(free);
    let gone = profile.probe(Some(addr)).await;
    let e = gone.result.expect_err("not reached");
    assert_eq!(e.addr, addr.to_string());
    assert_eq!(e.command, "connect");
    // An emulated instrument whose emulator was never started is not reached either.
    let e = profile.probe(None).await.result.expect_err("no emulator");
    assert!(
        e.to_string()
            .contains("emulator of instrument src was not started"),
        "{e}"
    );
}
