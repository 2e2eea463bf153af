//! `gridloop hil probe --lab FILE`: identify a lab's AC sources (`*IDN?`, `SYST:ERR?`) and
//! meters (firmware register, voltages, frequency, and head-end's encoding handshake), printing
//! one line each: what was found, or what could not be reached. Emulated entries are started
//! in-process on 127.0.0.1 first: the SCPI emulator for sources, a virtual meter running a
//! built-in steady 240 V 60 Hz scenario for meters.
//!
//! Two layers stay distinct in every line: `NOT REACHED: …` is a failed link; `ERROR: …` (the
//! instrument's error queue) and `device exception …` are answers from a device that was reached.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use head_end::handshake::{self, Limits, Probe, Verdict};
use hil_bridge::emulator::{Emulator, Instrument};
use hil_bridge::lab::{InstrumentTransport, Lab, MeterProfile, MeterTransport};
use hil_bridge::reader::RegisterRead;
use hil_bridge::rtu::{exception_name, Answer, LinkError, ReadRequest, RegisterKind};
use hil_bridge::source::Dialect;
use sim_core::encoding::{register_count, RegisterEncoding};
use sim_core::Phase;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use virtual_meter::registers::{MapOptions, Point};
use virtual_meter::{LiveMeter, MeterRef, RegisterMap, Units};

use crate::args::{HilArgs, HilCommand, HilProbeArgs};
use crate::exit::{
    CommandResult, Failure, OrExit, ENVIRONMENT, EXPECTATION_FAILED, INVALID_INPUT, SUCCESS,
};

/// The emulated source's own voltage range (a Chroma 61511's high range).
const EMULATED_RANGE_VOLTS: f64 = 300.0;

/// Grid time the virtual meter runs before it is served, so its registers hold measured values
/// (several 10/12-cycle windows).
const EMULATED_WARMUP_S: f64 = 0.5;

/// The built-in scenario of an emulated meter: one meter on a steady 240 V 60 Hz supply.
const EMULATED_SCENARIO: &str = "\
schema: 1
name: hil-probe-emulated-meter
duration: 1h
grid: { nominal: 240.0, frequency: 60.0, phases: 3, sample_rate: 12800 }
meters:
  - group: lab
    count: 1
";

/// Run `gridloop hil …`.
pub fn hil(args: &HilArgs) -> CommandResult {
    match &args.command {
        HilCommand::Probe(a) => probe(a),
    }
}

fn probe(args: &HilProbeArgs) -> CommandResult {
    // A missing or unreadable file is a bad path (usage), like a bad profile: exit 2.
    let lab = Lab::load(&args.lab).map_err(|e| Failure::new(INVALID_INPUT, e))?;
    // Register maps are read before anything starts: a bad one is a bad lab (exit 2).
    let maps = lab
        .meters
        .iter()
        .map(|m| meter_map(m).map_err(|e| Failure::msg(INVALID_INPUT, e)))
        .collect::<Result<Vec<_>, _>>()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .or_exit(ENVIRONMENT, || "cannot start the tokio runtime".into())?;
    runtime.block_on(probe_lab(&lab, &maps))
}

/// The virtual-meter register map of a meter: its map file, or the documented map, in the
/// encoding the lab expects (for an emulated meter: the encoding it serves).
fn meter_map(m: &MeterProfile) -> Result<RegisterMap, String> {
    let analog = match m.transport {
        MeterTransport::Emulated { serves } => serves,
        _ => m.registers,
    };
    let options = MapOptions::with_analog(analog);
    match &m.map {
        None => Ok(RegisterMap::default_map(options)),
        Some(file) => RegisterMap::load(file, options)
            .map_err(|e| format!("meter {}: register map: {e}", m.name)),
    }
}

/// What one line reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// Reached, but something is wrong (errors, exceptions, encoding).
    Failed,
    NotReached,
}

async fn probe_lab(lab: &Lab, maps: &[RegisterMap]) -> CommandResult {
    // Emulators first: they live until the probe is done.
    let mut emulators: Vec<Option<Emulator>> = Vec::new();
    for inst in &lab.instruments {
        emulators.push(match inst.transport {
            InstrumentTransport::Emulated => Some(
                Emulator::bind(
                    "127.0.0.1:0",
                    Instrument::new(inst.dialect, EMULATED_RANGE_VOLTS),
                )
                .await
                .or_exit(ENVIRONMENT, || {
                    format!("cannot start the emulator of instrument {}", inst.name)
                })?,
            ),
            _ => None,
        });
    }
    let mut virtual_meters: Vec<Option<VirtualMeter>> = Vec::new();
    for (m, map) in lab.meters.iter().zip(maps) {
        virtual_meters.push(match m.transport {
            MeterTransport::Emulated { .. } => Some(VirtualMeter::start(m, map.clone()).await?),
            _ => None,
        });
    }

    let mut outcomes = Vec::new();
    let mut out = std::io::stdout().lock();
    let mut print = |line: String| {
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .or_exit(ENVIRONMENT, || "cannot write to stdout".into())
    };
    for (inst, emu) in lab.instruments.iter().zip(&emulators) {
        let probe = inst.probe(emu.as_ref().map(Emulator::local_addr)).await;
        let dialect = match inst.dialect {
            Dialect::Chroma => "chroma",
            Dialect::Ametek => "ametek",
        };
        let head = format!("instrument {} ({dialect}) at {}", inst.name, probe.addr);
        let (outcome, what) = match probe.result {
            Err(e) => (Outcome::NotReached, format!("NOT REACHED: {e}")),
            Ok((id, queue)) => {
                let who = format!(
                    "{} {} serial {} firmware {}",
                    id.manufacturer, id.model, id.serial, id.firmware
                );
                match queue {
                    Ok(()) => (Outcome::Ok, format!("{who}; error queue empty")),
                    Err(e) => (Outcome::Failed, format!("{who}; ERROR: {e}")),
                }
            }
        };
        outcomes.push(outcome);
        print(format!("{head}: {what}"))?;
    }
    for ((m, map), vm) in lab.meters.iter().zip(maps).zip(&virtual_meters) {
        let at = vm.as_ref().map(|v| v.addr);
        let addr = at.map_or_else(|| m.transport.describe(), |a| a.to_string());
        let head = format!("meter {} at {addr} unit {}", m.name, m.unit);
        let (outcome, what) = probe_meter(m, map, at).await;
        outcomes.push(outcome);
        print(format!("{head}: {what}"))?;
    }
    for vm in virtual_meters.into_iter().flatten() {
        vm.stop().await;
    }
    drop(emulators);
    Ok(if outcomes.contains(&Outcome::NotReached) {
        ENVIRONMENT
    } else if outcomes.contains(&Outcome::Failed) {
        EXPECTATION_FAILED
    } else {
        SUCCESS
    })
}

/// A virtual meter served over Modbus/TCP on 127.0.0.1.
struct VirtualMeter {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

impl VirtualMeter {
    async fn start(m: &MeterProfile, map: RegisterMap) -> Result<VirtualMeter, Failure> {
        let scenario =
            scenarios::load_str(EMULATED_SCENARIO, Path::new("<built-in emulated meter>"))
                .map_err(|e| Failure::msg(ENVIRONMENT, format!("built-in scenario: {e}")))?;
        let which = MeterRef { group: 0, index: 0 };
        let mut meter = LiveMeter::new(&scenario, which, Arc::new(map));
        meter.advance_to(EMULATED_WARMUP_S);
        let units = Arc::new(Units::Single(Arc::new(Mutex::new(meter))));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .or_exit(ENVIRONMENT, || {
                format!("cannot listen for the virtual meter {}", m.name)
            })?;
        let addr = listener
            .local_addr()
            .or_exit(ENVIRONMENT, || "cannot read the bound address".into())?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(virtual_meter::service::serve(
            listener,
            units,
            Box::pin(async move {
                let _ = stopped.await;
            }),
        ));
        Ok(VirtualMeter { addr, stop, server })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "virtual meter server failed"),
            Err(e) => tracing::warn!(error = %e, "virtual meter server task failed"),
        }
    }
}

/// Reads the firmware register and the analog points the way head-end's poller does at first
/// contact, and judges the encoding with [`handshake::verify`].
async fn probe_meter(
    m: &MeterProfile,
    map: &RegisterMap,
    at: Option<SocketAddr>,
) -> (Outcome, String) {
    let mut client = match m.client(at).await {
        Ok(c) => c,
        Err(e) => return (Outcome::NotReached, not_reached(&e)),
    };
    let addr = |p: Point, default: u16| map.address(p).unwrap_or(default);
    let firmware_reg = addr(Point::FirmwareVersion, handshake::FIRMWARE_VERSION_REG);
    let points = [
        (
            "L1",
            addr(Point::Voltage(Phase::L1), handshake::VOLTAGE_L1_REG),
        ),
        (
            "L2",
            addr(Point::Voltage(Phase::L2), handshake::VOLTAGE_L2_REG),
        ),
        (
            "L3",
            addr(Point::Voltage(Phase::L3), handshake::VOLTAGE_L3_REG),
        ),
        (
            "frequency",
            addr(Point::Frequency, handshake::FREQUENCY_REG),
        ),
    ];
    let mut exceptions = Vec::new();
    let result: Result<Probe, LinkError> = async {
        let firmware = match read(&mut client, firmware_reg, 1).await? {
            Answer::Value(w) => w.first().copied(),
            Answer::Exception(e) => {
                exceptions.push(format!(
                    "firmware register {firmware_reg:#06X}: device exception 0x{:02X} ({})",
                    e.code,
                    exception_name(e.code)
                ));
                None
            }
        };
        let width = register_count(m.registers) as u16;
        let other = 3 - width;
        let mut words: [Option<Vec<u16>>; 4] = Default::default();
        let mut one_register_refused = [false; 4];
        for (k, (name, reg)) in points.iter().enumerate() {
            let first = read(&mut client, *reg, width).await?;
            let refused = is_illegal_address(&first);
            one_register_refused[k] = if width == 1 {
                refused
            } else {
                // A map refuses a 1-register read where a 32-bit value starts.
                is_illegal_address(&read(&mut client, *reg, 1).await?)
            };
            words[k] = match first {
                Answer::Value(w) => Some(w),
                Answer::Exception(_) if refused => match read(&mut client, *reg, other).await? {
                    Answer::Value(w) => Some(w),
                    Answer::Exception(_) => None,
                },
                Answer::Exception(e) => {
                    exceptions.push(format!(
                        "{name} register {reg:#06X}: device exception 0x{:02X} ({})",
                        e.code,
                        exception_name(e.code)
                    ));
                    None
                }
            };
        }
        let [l1, l2, l3, f] = words;
        Ok(Probe {
            firmware,
            voltages: [l1, l2, l3],
            frequency: f,
            one_register_refused,
        })
    }
    .await;
    let probe = match result {
        Ok(p) => p,
        Err(e) => return (Outcome::NotReached, not_reached(&e)),
    };
    let mut parts = vec![match probe.firmware {
        Some(f) => format!("firmware {}.{}", f >> 8, f & 0xFF),
        None => "firmware unknown".to_string(),
    }];
    let verdict = handshake::verify(&probe, m.registers, &Limits::default());
    if verdict.is_verified() {
        for (k, phase) in ["L1", "L2", "L3"].iter().enumerate() {
            parts.push(value(probe.voltages[k].as_deref(), m.registers, |v| {
                format!("{phase} {v:.1} V")
            }));
        }
        parts.push(value(probe.frequency.as_deref(), m.registers, |v| {
            format!("{v:.2} Hz")
        }));
    }
    let (mut outcome, judged) = match verdict {
        Verdict::Verified { .. } => (Outcome::Ok, "encoding verified".to_string()),
        Verdict::Mismatch { detail } => (Outcome::Failed, format!("encoding MISMATCH: {detail}")),
        Verdict::Ambiguous { detail } => (Outcome::Failed, format!("encoding AMBIGUOUS: {detail}")),
        Verdict::Undetermined { detail } => {
            (Outcome::Failed, format!("encoding UNDETERMINED: {detail}"))
        }
    };
    parts.push(judged);
    if !exceptions.is_empty() {
        outcome = Outcome::Failed;
        parts.push(exceptions.join("; "));
    }
    (outcome, parts.join(", "))
}

fn value(words: Option<&[u16]>, enc: RegisterEncoding, show: impl Fn(f64) -> String) -> String {
    match words.and_then(|w| handshake::decode_value(w, enc)) {
        Some(v) => show(v),
        None => show(f64::NAN).replace("NaN", "—"),
    }
}

fn not_reached(e: &LinkError) -> String {
    format!("NOT REACHED: link failed: {e}")
}

fn is_illegal_address(a: &Answer<Vec<u16>>) -> bool {
    matches!(a, Answer::Exception(e) if e.code == 0x02)
}

async fn read(
    client: &mut impl RegisterRead,
    start: u16,
    count: u16,
) -> Result<Answer<Vec<u16>>, LinkError> {
    let request = ReadRequest::new(RegisterKind::Holding, start, count).map_err(|e| {
        LinkError::Unexpected {
            peer: format!("register {start:#06X}"),
            detail: e.to_string(),
        }
    })?;
    client.read_registers(request).await
}
