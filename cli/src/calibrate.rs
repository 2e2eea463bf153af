//! `gridloop calibrate`: the calibration command sent to a meter over Modbus/TCP (tokio-modbus's
//! TCP client). Writes `CAL_REFERENCE_REG` and `CAL_COMMAND_REG`, and prints each selected
//! phase's gain before and after. Idempotent on the meter's side: the same reference again
//! changes nothing (`CAL_COUNT_REG` stays).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use sim_core::encoding;
use sim_core::Phase;
use tokio_modbus::client::{tcp, Client, Context, Reader, Writer};
use tokio_modbus::{ExceptionCode, Slave};
use virtual_meter::image::CAL_REFERENCE_RANGE;
use virtual_meter::registers::{parse_encoding, Entry, MapOptions, PointEncoding};
use virtual_meter::{CalSelector, Point, RegisterMap};

use crate::exit::{CommandResult, Failure, OrExit, ENVIRONMENT, INVALID_INPUT, SUCCESS};

/// How long one connect, read or write may take before the meter counts as unreachable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `gridloop calibrate`: set a meter's voltage gains from a reference voltage.
#[derive(Debug, Clone, Args)]
pub struct CalibrateArgs {
    /// The meter's Modbus/TCP address
    #[arg(long, value_name = "HOST:PORT")]
    pub modbus: String,

    /// Unit id (a gateway's meter i is unit i)
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub unit: u8,

    /// Reference voltage the selected phases should read, V (90–480)
    #[arg(long, value_name = "V")]
    pub reference: f64,

    /// Phases to calibrate: all, L1, L2 or L3
    #[arg(long, value_name = "PHASE", default_value = "all", value_parser = parse_selector)]
    pub phase: CalSelector,

    /// The meter's register map file (.conf or .yaml) [default: the documented map]
    #[arg(long, value_name = "FILE")]
    pub map: Option<PathBuf>,

    /// The meter's analog encoding: float32[:ORDER], int16:SCALE or uint32:SCALE[:ORDER]
    #[arg(long, value_name = "ENCODING", default_value = "float32:abcd")]
    pub encoding: String,
}

fn parse_selector(text: &str) -> Result<CalSelector, String> {
    CalSelector::parse(text).ok_or_else(|| format!("`{text}`: expected all, L1, L2 or L3"))
}

/// What a calibration did, as read back from the meter.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationReport {
    /// The phases calibrated.
    pub phases: Vec<Phase>,
    /// Gains of every phase before and after.
    pub old: [f64; 3],
    pub new: [f64; 3],
    /// `CAL_COUNT_REG` before and after (it counts calibrations that changed a gain).
    pub count_before: u64,
    pub count_after: u64,
}

impl CalibrationReport {
    /// One line per phase (`L1 gain 1.000000 -> 0.958333`) and the count.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for p in &self.phases {
            let (old, new) = (self.old[p.index()], self.new[p.index()]);
            let note = if old == new { " (unchanged)" } else { "" };
            out.push_str(&format!("{p} gain {old:.6} -> {new:.6}{note}\n"));
        }
        out.push_str(&format!(
            "CAL_COUNT {} -> {}\n",
            self.count_before, self.count_after
        ));
        out
    }
}

/// Run the command.
pub fn calibrate(args: &CalibrateArgs) -> CommandResult {
    let (lo, hi) = CAL_REFERENCE_RANGE;
    if !(lo..=hi).contains(&args.reference) {
        return Err(Failure::msg(
            INVALID_INPUT,
            format!("--reference {}: expected {lo}–{hi} V", args.reference),
        ));
    }
    let analog = parse_encoding(&args.encoding).ok_or_else(|| {
        Failure::msg(
            INVALID_INPUT,
            format!(
                "bad --encoding `{}`: expected float32[:ORDER], int16:SCALE or \
                 uint32:SCALE[:ORDER] (ORDER: abcd, cdab, badc, dcba)",
                args.encoding
            ),
        )
    })?;
    let options = MapOptions::with_analog(analog);
    let map = match &args.map {
        None => RegisterMap::default_map(options),
        Some(file) => {
            RegisterMap::load(file, options).map_err(|e| Failure::new(INVALID_INPUT, e))?
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .or_exit(ENVIRONMENT, || "cannot start the tokio runtime".into())?;
    let report = runtime.block_on(async {
        let addr = tokio::time::timeout(REQUEST_TIMEOUT, tokio::net::lookup_host(&args.modbus))
            .await
            .map_err(|_| Failure::msg(ENVIRONMENT, format!("cannot resolve {}", args.modbus)))?
            .or_exit(ENVIRONMENT, || format!("cannot resolve {}", args.modbus))?
            .next()
            .ok_or_else(|| Failure::msg(ENVIRONMENT, format!("{} has no address", args.modbus)))?;
        calibrate_remote(addr, args.unit, &map, args.reference, args.phase).await
    })?;
    std::io::stdout()
        .lock()
        .write_all(report.text().as_bytes())
        .or_exit(ENVIRONMENT, || "cannot write to stdout".into())?;
    Ok(SUCCESS)
}

/// Calibrate meter `unit` at `addr` (registers per `map`) to `reference` V. A link failure or
/// timeout is [`ENVIRONMENT`]; a Modbus exception from the meter (no reading yet, reference
/// out of range, a phase it lacks, a gain out of range) or a map without the calibration
/// registers is [`INVALID_INPUT`].
pub async fn calibrate_remote(
    addr: std::net::SocketAddr,
    unit: u8,
    map: &RegisterMap,
    reference: f64,
    selector: CalSelector,
) -> Result<CalibrationReport, Failure> {
    let peer = format!("{addr} unit {unit}");
    let entry = |point: Point| {
        map.entry(point)
            .copied()
            .ok_or_else(|| Failure::msg(INVALID_INPUT, format!("the register map has no {point}")))
    };
    let (reference_at, command_at, count_at) = (
        entry(Point::CalReference)?,
        entry(Point::CalCommand)?,
        entry(Point::CalCount)?,
    );
    let gains_at = [
        entry(Point::Gain(Phase::L1))?,
        entry(Point::Gain(Phase::L2))?,
        entry(Point::Gain(Phase::L3))?,
    ];
    let mut ctx = timed(&peer, "connect", tcp::connect_slave(addr, Slave(unit)))
        .await?
        .or_exit(ENVIRONMENT, || format!("cannot connect to {peer}"))?;

    let count_before = read_value(&mut ctx, &peer, &count_at).await?;
    let mut old = [f64::NAN; 3];
    for (g, at) in old.iter_mut().zip(&gains_at) {
        *g = read_value(&mut ctx, &peer, at).await?;
    }

    let PointEncoding::Value(enc) = reference_at.encoding else {
        return Err(Failure::msg(
            INVALID_INPUT,
            "CAL_REFERENCE_REG must be an analog encoding",
        ));
    };
    let mut words = encoding::encode(reference, enc)
        .map_err(|e| Failure::msg(INVALID_INPUT, format!("reference {reference} V: {e}")))?;
    let command = selector.command();
    if u32::from(command_at.address) == u32::from(reference_at.address) + words.len() as u32 {
        // Adjacent (the default map): reference and command in one FC16.
        words.push(command);
        let done = timed(
            &peer,
            "write",
            ctx.write_multiple_registers(reference_at.address, &words),
        )
        .await?;
        answer(done, &peer, "the calibration")?;
    } else {
        let done = timed(
            &peer,
            "write",
            ctx.write_multiple_registers(reference_at.address, &words),
        )
        .await?;
        answer(done, &peer, "the reference")?;
        let done = timed(
            &peer,
            "write",
            ctx.write_single_register(command_at.address, command),
        )
        .await?;
        answer(done, &peer, "the calibration")?;
    }

    let mut new = [f64::NAN; 3];
    for (g, at) in new.iter_mut().zip(&gains_at) {
        *g = read_value(&mut ctx, &peer, at).await?;
    }
    let count_after = read_value(&mut ctx, &peer, &count_at).await?;
    let _ = ctx.disconnect().await;
    let phases = match selector {
        CalSelector::All => Phase::ALL.to_vec(),
        CalSelector::Phase(p) => vec![p],
    };
    Ok(CalibrationReport {
        phases,
        old,
        new,
        count_before: count_before as u64,
        count_after: count_after as u64,
    })
}

async fn timed<T>(
    peer: &str,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, Failure> {
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .map_err(|_| {
            Failure::msg(
                ENVIRONMENT,
                format!("{peer}: no answer to {what} within {REQUEST_TIMEOUT:?}"),
            )
        })
}

/// The two-layer answer of one request: the link broke (environment) or the meter answered
/// with an exception (refused).
fn answer<T>(result: tokio_modbus::Result<T>, peer: &str, what: &str) -> Result<T, Failure> {
    match result {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(code)) => Err(Failure::msg(
            INVALID_INPUT,
            format!("{peer} refused {what}: {code}{}", hint(code)),
        )),
        Err(e) => Err(Failure::msg(
            ENVIRONMENT,
            format!("{peer}: {what} failed: {e}"),
        )),
    }
}

fn hint(code: ExceptionCode) -> &'static str {
    match code {
        ExceptionCode::IllegalDataValue => {
            " (no reading yet, a reference outside 90–480 V, a phase the meter lacks, or a gain \
             that would leave 0.5–2.0)"
        }
        ExceptionCode::IllegalDataAddress => " (does the --map/--encoding match the meter's?)",
        _ => "",
    }
}

async fn read_value(ctx: &mut Context, peer: &str, at: &Entry) -> Result<f64, Failure> {
    let regs = timed(
        peer,
        "read",
        ctx.read_holding_registers(at.address, at.registers()),
    )
    .await?;
    let regs = answer(regs, peer, &format!("reading {}", at.point))?;
    match at.encoding {
        PointEncoding::Uint16 => Ok(f64::from(regs.first().copied().unwrap_or(0))),
        PointEncoding::Value(enc) => encoding::decode(&regs, enc).map_err(|e| {
            Failure::msg(
                ENVIRONMENT,
                format!("{peer}: {} does not decode: {e}", at.point),
            )
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use tokio::net::TcpListener;
    use virtual_meter::service::serve;
    use virtual_meter::{LiveMeter, MeterRef, SharedMeter, Units};

    use super::*;

    const SAG: &str = "../scenarios/library/sags-swells/sag-75pct-12-cycles.yaml";

    async fn served(advance: f64) -> (std::net::SocketAddr, SharedMeter) {
        let sc = scenarios::load_file(Path::new(SAG)).unwrap();
        let map = Arc::new(RegisterMap::default_map(MapOptions::default()));
        let mut live = LiveMeter::new(&sc, MeterRef { group: 0, index: 0 }, map);
        live.advance_to(advance);
        let m = Arc::new(Mutex::new(live));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            Arc::new(Units::Single(m.clone())),
            Box::pin(std::future::pending()),
        ));
        (addr, m)
    }

    #[tokio::test]
    async fn calibrates_over_modbus_and_a_repeat_changes_nothing() {
        let (addr, m) = served(0.5).await;
        let map = RegisterMap::default_map(MapOptions::default());
        let volts: Vec<f64> = Phase::ALL
            .iter()
            .map(|&p| m.lock().unwrap().image().value(Point::Voltage(p)))
            .collect();
        let r = calibrate_remote(addr, 1, &map, 230.0, CalSelector::All)
            .await
            .unwrap();
        assert_eq!(r.old, [1.0; 3]);
        assert_eq!((r.count_before, r.count_after), (0, 1));
        for (i, v) in volts.iter().enumerate() {
            // float32 on the wire: the reference and the gain each carry 2^-24 relative error.
            let want = 230.0 / v;
            assert!(
                (r.new[i] - want).abs() < want * 1e-6,
                "{i}: {} vs {want}",
                r.new[i]
            );
        }
        // The meter itself holds the new gains.
        let gains = m.lock().unwrap().image().settings().gains;
        assert_eq!(gains.map(|g| g as f32), r.new.map(|g| g as f32));
        let again = calibrate_remote(addr, 1, &map, 230.0, CalSelector::All)
            .await
            .unwrap();
        assert_eq!(again.new, again.old);
        assert_eq!((again.count_before, again.count_after), (1, 1));
        assert!(again.text().contains("L1 gain "));
        assert!(again.text().contains("(unchanged)"));
        assert!(again.text().ends_with("CAL_COUNT 1 -> 1\n"));
        // One phase, another reference.
        let l2 = calibrate_remote(addr, 1, &map, 235.0, CalSelector::Phase(Phase::L2))
            .await
            .unwrap();
        assert_eq!(l2.phases, [Phase::L2]);
        assert_eq!(l2.new[0], l2.old[0]);
        assert_ne!(l2.new[1], l2.old[1]);
        assert_eq!(l2.count_after, 2);
    }

    #[tokio::test]
    async fn refusals_are_invalid_input_and_no_meter_is_environment() {
        let (addr, _m) = served(0.0).await;
        let map = RegisterMap::default_map(MapOptions::default());
        let e = calibrate_remote(addr, 1, &map, 230.0, CalSelector::All)
            .await
            .unwrap_err();
        assert_eq!(e.code, INVALID_INPUT);
        let text = format!("{:#}", e.error);
        assert!(text.contains("refused the calibration"), "{text}");
        assert!(text.contains("no reading yet"), "{text}");

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = closed.local_addr().unwrap();
        drop(closed);
        let e = calibrate_remote(gone, 1, &map, 230.0, CalSelector::All)
            .await
            .unwrap_err();
        assert_eq!(e.code, ENVIRONMENT);
        assert!(
            format!("{:#}", e.error).contains("cannot connect"),
            "{:#}",
            e.error
        );
    }
}
