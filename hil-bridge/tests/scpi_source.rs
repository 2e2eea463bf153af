//! The SCPI AC-source path: exact dialect command lines, the safety refusal, and the driver
//! against the emulator (and a silent peer) over real TCP on loopback.

#![allow(clippy::unwrap_used)]

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hil_bridge::emulator::{Emulator, Instrument};
use hil_bridge::scpi::{LinkFailure, ScpiLink};
use hil_bridge::source::{
    AcSource, AcSourceError, Dialect, Dwell, ListPoint, Program, ProgramError, SafetyLimits,
};
use proptest::prelude::*;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

const LIMITS: SafetyLimits = SafetyLimits {
    max_volts: 253.0,
    max_freq: 65.0,
    min_freq: 45.0,
};

/// Bounded wait for anything that happens over loopback.
const WITHIN: Duration = Duration::from_secs(5);

fn fixed() -> Program {
    Program::Fixed {
        volts: 230.0,
        freq: 50.0,
    }
}

/// STANDARDS.md §11.3's recipe: 100 %, 50 % for 5 cycles, 100 %, phase-synced at 90°.
fn sag_list() -> Program {
    let pt = |v, n| ListPoint {
        volts_start: v,
        volts_end: v,
        freq: 60.0,
        dwell: Dwell::Cycles(n),
    };
    Program::List {
        points: vec![pt(230.0, 5), pt(115.0, 5), pt(230.0, 10)],
        count: 1,
        phase_deg: Some(90.0),
    }
}

fn pulse() -> Program {
    Program::Pulse {
        base_volts: 230.0,
        pulse_volts: 115.0,
        freq: 50.0,
        width_cycles: 5,
        period_cycles: 50,
        start_phase_deg: 90.0,
        count: 3,
    }
}

fn lines(d: Dialect, p: &Program) -> (Vec<String>, Vec<String>) {
    let r = d.render(p, &LIMITS).unwrap();
    (r.program, r.start)
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn chroma_command_lines() {
    assert_eq!(
        lines(Dialect::Chroma, &fixed()),
        (
            s(&[
                "SYST:REM",
                "SOUR:VOLT:LIM:AC 253",
                "OUTP:MODE FIXED",
                "SOUR:FREQ 50",
                "SOUR:VOLT:AC 230"
            ]),
            s(&["OUTP ON"])
        )
    );
    assert_eq!(
        lines(Dialect::Chroma, &sag_list()),
        (
            s(&[
                "SYST:REM",
                "SOUR:VOLT:LIM:AC 253",
                "SOUR:FREQ 60",
                "SOUR:VOLT:AC 230",
                "OUTP:MODE LIST",
                "LIST:BASE CYCLE",
                "LIST:POIN 3",
                "LIST:VOLT:AC:STAR 230,115,230",
                "LIST:VOLT:AC:END 230,115,230",
                "LIST:FREQ:STAR 60,60,60",
                "LIST:FREQ:END 60,60,60",
                "LIST:DWEL 5,5,10",
                "LIST:COUN 1",
                "LIST:SPH 90",
            ]),
            s(&["OUTP ON", "TRIG ON"])
        )
    );
    assert_eq!(
        lines(Dialect::Chroma, &pulse()),
        (
            s(&[
                "SYST:REM",
                "SOUR:VOLT:LIM:AC 253",
                "SOUR:FREQ 50",
                "SOUR:VOLT:AC 230",
                "OUTP:MODE PULSE",
                "PULS:VOLT:AC 115",
                "PULS:FREQ 50",
                "PULS:PER 1",
                "PULS:DCYC 10",
                "PULS:COUN 3",
                "PULS:SPH 90",
            ]),
            s(&["OUTP ON", "TRIG ON"])
        )
    );
}

#[test]
fn ametek_command_lines() {
    assert_eq!(
        lines(Dialect::Ametek, &fixed()),
        (
            s(&["VOLT:MODE FIX", "FREQ:MODE FIX", "FREQ 50", "VOLT 230"]),
            s(&["OUTP ON"])
        )
    );
    assert_eq!(
        lines(Dialect::Ametek, &sag_list()),
        (
            s(&[
                "FREQ 60",
                "VOLT 230",
                "VOLT:MODE LIST",
                "FREQ:MODE LIST",
                "LIST:VOLT 230,115,230",
                "LIST:FREQ 60,60,60",
                "LIST:DWEL 0.083333,0.083333,0.166667",
                "LIST:COUN 1",
                "LIST:STEP AUTO",
                "TRIG:SYNC:SOUR PHAS",
                "TRIG:SYNC:PHAS 90",
            ]),
            s(&["OUTP ON", "INIT"])
        )
    );
    assert_eq!(
        lines(Dialect::Ametek, &pulse()),
        (
            s(&[
                "FREQ:MODE FIX",
                "FREQ 50",
                "VOLT 230",
                "VOLT:MODE PULS",
                "VOLT:TRIG 115",
                "PULS:HOLD WIDT",
                "PULS:WIDT 0.1",
                "PULS:PER 1",
                "PULS:COUN 3",
                "TRIG:SYNC:SOUR PHAS",
                "TRIG:SYNC:PHAS 90",
            ]),
            s(&["OUTP ON", "INIT"])
        )
    );
    // 33 points: refused with the limit named; a ramping point is not an AMETEK list point.
    let pt = ListPoint {
        volts_start: 230.0,
        volts_end: 230.0,
        freq: 50.0,
        dwell: Dwell::Seconds(0.1),
    };
    let long = Program::List {
        points: vec![pt; 33],
        count: 1,
        phase_deg: None,
    };
    let e = Dialect::Ametek.render(&long, &LIMITS).unwrap_err();
    assert_eq!(
        e.to_string(),
        "AMETEK/CI Sequoia lists hold at most 32 points, the program has 33"
    );
    assert!(Dialect::Chroma.render(&long, &LIMITS).is_ok());
    let ramp = Program::List {
        points: vec![ListPoint {
            volts_end: 200.0,
            ..pt
        }],
        count: 1,
        phase_deg: None,
    };
    assert!(matches!(
        Dialect::Ametek.render(&ramp, &LIMITS),
        Err(ProgramError::DialectUnsupported { .. })
    ));
}

/// A transport that records every byte written and never has anything to read.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<u8>>>);

impl AsyncWrite for Recorder {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Recorder {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

#[tokio::test]
async fn unsafe_programs_are_refused_before_any_byte_is_sent() {
    for dialect in [Dialect::Chroma, Dialect::Ametek] {
        let rec = Recorder::default();
        let link = ScpiLink::new(rec.clone(), "mock", Duration::from_millis(100));
        let mut src = AcSource::new(link, dialect, LIMITS);
        let p = Program::Pulse {
            base_volts: 230.0,
            pulse_volts: 276.0,
            freq: 50.0,
            width_cycles: 5,
            period_cycles: 50,
            start_phase_deg: 0.0,
            count: 1,
        };
        let e = src.program(&p).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "refusing pulse pulse_volts = 276: outside the lab's safety limit 0..=253 V"
        );
        assert!(rec.0.lock().unwrap().is_empty(), "{dialect:?} sent bytes");
        src.shutdown().await.unwrap();
        assert_eq!(
            String::from_utf8(rec.0.lock().unwrap().clone()).unwrap(),
            if dialect == Dialect::Chroma {
                "OUTP OFF\n"
            } else {
                "ABOR\nOUTP OFF\n"
            }
        );
    }
}

async fn driver(emu: &Emulator, dialect: Dialect, limits: SafetyLimits) -> AcSource<TcpStream> {
    let link = ScpiLink::connect_tcp(&emu.local_addr().to_string(), WITHIN)
        .await
        .unwrap();
    let mut src = AcSource::new(link, dialect, limits);
    src.rst_delay = Duration::ZERO;
    src
}

#[tokio::test]
async fn driver_runs_a_sag_list_on_the_emulator_in_both_dialects() {
    for (dialect, maker) in [
        (Dialect::Chroma, "Chroma ATE"),
        (Dialect::Ametek, "AMETEK Programmable Power"),
    ] {
        let emu = Emulator::bind("127.0.0.1:0", Instrument::new(dialect, 300.0))
            .await
            .unwrap();
        let mut src = driver(&emu, dialect, LIMITS).await;
        let id = src.identify().await.unwrap();
        assert_eq!(id.manufacturer, maker);
        src.reset().await.unwrap();
        src.program(&sag_list()).await.unwrap();
        assert!(!emu.output().output_on);
        src.start().await.unwrap();
        // start() drained SYST:ERR? after the trigger, so the emulator has handled it all.
        let out = emu.output();
        assert!(out.output_on, "{dialect:?}");
        assert!(emu.instrument().errors().is_empty());
        assert_eq!(out.rms_at(2.5 / 60.0), 230.0, "{dialect:?}");
        assert_eq!(out.rms_at(7.5 / 60.0), 115.0, "{dialect:?}");
        assert_eq!(out.rms_at(12.5 / 60.0), 230.0, "{dialect:?}");
        assert_eq!(out.freq_at(7.5 / 60.0), 60.0);
        // Synced at 90°: the list starts on the positive peak.
        assert!((out.volts_at(0.0) - 230.0 * 2f64.sqrt()).abs() < 1e-6);
        let rendered = dialect.render(&sag_list(), &LIMITS).unwrap();
        let got = emu.received();
        let after_rst = &got[got.iter().position(|l| l == "*CLS").unwrap() + 2..];
        let mut expected = rendered.program.clone();
        expected.push("SYST:ERR?".into());
        expected.extend(rendered.start.clone());
        expected.push("SYST:ERR?".into());
        assert_eq!(after_rst, expected.as_slice(), "{dialect:?}");
        src.shutdown().await.unwrap();
        assert!(emu.wait_for(WITHIN, |i, _| !i.output().output_on).await);
    }
}

#[tokio::test]
async fn instrument_errors_surface_typed_and_leave_the_output_off() {
    // The wrong dialect: Chroma's SYST:REM is an undefined header on an AMETEK unit.
    let emu = Emulator::bind("127.0.0.1:0", Instrument::new(Dialect::Ametek, 300.0))
        .await
        .unwrap();
    let addr = emu.local_addr().to_string();
    let mut src = driver(&emu, Dialect::Chroma, LIMITS).await;
    let e = src.program(&fixed()).await.unwrap_err();
    let AcSourceError::Instrument(ie) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(ie.addr, addr);
    assert_eq!(ie.errors[0].code, -113);
    assert_eq!(ie.errors[0].message, "Undefined header");
    assert!(
        e.to_string()
            .starts_with(&format!("instrument {addr} reported")),
        "{e}"
    );
    // The off command needs no reply: wait (bounded) until the emulator has handled it.
    let off = s(&["SYST:ERR?", "OUTP OFF"]);
    assert!(
        emu.wait_for(WITHIN, |i, r| r.ends_with(&off) && !i.output().output_on)
            .await
    );
    drop(src);

    // Running, then a level inside the lab's limits but beyond the unit's 250 V range: -222,
    // and the running output is switched off.
    let emu = Emulator::bind("127.0.0.1:0", Instrument::new(Dialect::Ametek, 250.0))
        .await
        .unwrap();
    let limits = SafetyLimits {
        max_volts: 280.0,
        ..LIMITS
    };
    let mut src = driver(&emu, Dialect::Ametek, limits).await;
    src.program(&fixed()).await.unwrap();
    src.start().await.unwrap();
    assert!(emu.output().output_on);
    let e = src
        .program(&Program::Fixed {
            volts: 270.0,
            freq: 50.0,
        })
        .await
        .unwrap_err();
    let AcSourceError::Instrument(ie) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(
        ie.errors.iter().map(|e| e.code).collect::<Vec<_>>(),
        vec![-222]
    );
    let off = s(&["SYST:ERR?", "ABOR", "OUTP OFF"]);
    assert!(
        emu.wait_for(WITHIN, |i, r| r.ends_with(&off) && !i.output().output_on)
            .await
    );
    src.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_silent_instrument_is_a_link_failure_naming_it_and_output_off_is_attempted() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let peer = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut r = BufReader::new(stream);
        let mut line = String::new();
        // Reads and never answers; ends when the driver closes.
        while r.read_line(&mut line).await.unwrap_or(0) > 0 {
            let _ = tx.send(line.trim_end().to_string());
            line.clear();
        }
    });
    let link = ScpiLink::connect_tcp(&addr, WITHIN).await.unwrap();
    let link = ScpiLink::new(
        link.into_inner().0,
        addr.clone(),
        Duration::from_millis(300),
    );
    let mut src = AcSource::new(link, Dialect::Ametek, LIMITS);
    let e = src.program(&fixed()).await.unwrap_err();
    let AcSourceError::LinkFailed(lf) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(lf.addr, addr);
    assert_eq!(lf.command, "SYST:ERR?");
    assert_eq!(lf.failure, LinkFailure::Timeout(Duration::from_millis(300)));
    assert!(e.to_string().contains(&addr), "{e}");
    let mut seen = Vec::new();
    let got_off = tokio::time::timeout(WITHIN, async {
        while let Some(l) = rx.recv().await {
            let off = l == "OUTP OFF";
            seen.push(l);
            if off {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(got_off, "{seen:?}");
    assert_eq!(
        seen[seen.len() - 3..],
        s(&["SYST:ERR?", "ABOR", "OUTP OFF"])
    );
    drop(src);
    tokio::time::timeout(WITHIN, peer).await.unwrap().unwrap();
}

#[tokio::test]
async fn dropping_a_running_source_switches_its_output_off() {
    let emu = Emulator::bind("127.0.0.1:0", Instrument::new(Dialect::Chroma, 300.0))
        .await
        .unwrap();
    let mut src = driver(&emu, Dialect::Chroma, LIMITS).await;
    src.program(&sag_list()).await.unwrap();
    src.start().await.unwrap();
    assert!(emu.output().output_on);
    drop(src);
    assert!(emu.wait_for(WITHIN, |i, _| !i.output().output_on).await);
    assert_eq!(emu.received().last().map(String::as_str), Some("OUTP OFF"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_emulator_never_panics_on_arbitrary_lines(
        lines in proptest::collection::vec(
            prop_oneof![
                any::<String>(),
                "[:*]?[A-Za-z:]{0,24}[?]?( [-+0-9.,eEa-zA-Z ]{0,30})?",
                Just("LIST:DWEL 1e-300".to_string()),
                Just("LIST:COUN 200000000".to_string()),
                Just("TRIG ON".to_string()),
                Just("INIT".to_string()),
                Just("OUTP ON".to_string()),
            ],
            0..24,
        ),
    ) {
        for dialect in [Dialect::Chroma, Dialect::Ametek] {
            let mut i = Instrument::new(dialect, 300.0);
            for l in &lines {
                if let Some(r) = i.handle_line(l) {
                    prop_assert!(!r.contains('\n'));
                }
            }
            let out = i.output();
            for t in [-1.0, 0.0, 0.013, 1.0, 1e6] {
                prop_assert!(out.rms_at(t).is_finite() && out.volts_at(t).is_finite());
            }
        }
    }
}
