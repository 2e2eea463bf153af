//! The lab profile: a YAML file naming the bench's AC sources (SCPI over TCP or serial, or the
//! in-process emulator), its meters (Modbus TCP or RTU, or an in-process virtual meter), the
//! register encoding they serve, the safety limits every program is checked against, and which
//! source feeds which meter phases. This is the bridge's own format; it knows nothing of
//! scenario files.
//!
//! Unknown keys are errors, and every error names `file:line:column` and the field
//! (`instruments[0].timeout: …`): serde_yaml's location for what serde sees, and the item's or
//! the key's line found in the text for the checks made after parsing.
//!
//! Hardware tests are gated by [`hardware_lab`]: `GRIDLOOP_HIL=1` plus `GRIDLOOP_LAB=FILE`, and
//! [`Skip::NoHardware`] (printed, never a silent pass) otherwise.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use sim_core::encoding::{RegisterEncoding, WordOrder};
use sim_core::Phase;

use crate::reader::{RegisterMap, RegisterRead, RtuClient, RtuConfig, SerialConfig, TcpReader};
use crate::rtu::{Answer, LinkError, Parity, ReadRequest};
use crate::scpi::{self, Identity, InstrumentError, LinkFailed, LinkFailure, ScpiLink};
use crate::source::{Dialect, SafetyLimits};

/// Modbus/TCP's port when `modbus_tcp:` names only a host.
pub const MODBUS_TCP_PORT: u16 = 502;
/// The default per-query SCPI timeout.
pub const DEFAULT_INSTRUMENT_TIMEOUT: Duration = Duration::from_secs(2);
/// The default Modbus request timeout.
pub const DEFAULT_METER_TIMEOUT: Duration = Duration::from_millis(500);
/// Default Modbus retries after a link error.
pub const DEFAULT_RETRIES: u32 = 2;
/// The environment variable that enables hardware tests (`1`).
pub const HIL_ENV: &str = "GRIDLOOP_HIL";
/// The environment variable naming the hardware lab profile.
pub const LAB_ENV: &str = "GRIDLOOP_LAB";

/// A parsed, checked lab profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Lab {
    /// The file it was read from (errors and relative map paths refer to it).
    pub file: PathBuf,
    pub safety: SafetyLimits,
    pub instruments: Vec<InstrumentProfile>,
    pub meters: Vec<MeterProfile>,
}

/// One programmable AC source.
#[derive(Debug, Clone, PartialEq)]
pub struct InstrumentProfile {
    pub name: String,
    pub dialect: Dialect,
    pub transport: InstrumentTransport,
    /// Per-query timeout.
    pub timeout: Duration,
    /// Wait after `*RST` (default: the dialect's [`Dialect::default_rst_delay`]).
    pub rst_delay: Duration,
}

/// How an AC source is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstrumentTransport {
    /// Raw SCPI socket, `HOST:PORT` (port 5025 when the file gave only a host).
    Tcp { addr: String },
    /// SCPI over a serial line.
    Serial(SerialConfig),
    /// The in-process SCPI emulator ([`crate::emulator`]), started by whoever runs the lab.
    Emulated,
}

/// One meter.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterProfile {
    pub name: String,
    pub transport: MeterTransport,
    /// Modbus unit id.
    pub unit: u8,
    /// The analog encoding the lab expects the meter to serve.
    pub registers: RegisterEncoding,
    /// A register-map file (resolved against the lab file's directory; its format belongs to
    /// whoever loads it — the CLI reads virtual-meter's `register_map.conf` / YAML maps).
    pub map: Option<PathBuf>,
    pub timeout: Duration,
    pub retries: u32,
    /// Which source feeds which of its phases.
    pub feed: Option<Feed>,
}

/// How a meter is reached.
#[derive(Debug, Clone, PartialEq)]
pub enum MeterTransport {
    /// Modbus/TCP, `HOST:PORT` (port 502 when the file gave only a host).
    ModbusTcp { addr: String },
    /// Modbus RTU on a serial line.
    ModbusRtu(SerialConfig),
    /// An in-process virtual meter serving `serves` (default: the expected `registers`; a
    /// different value makes a meter that disagrees with the lab, for tests).
    Emulated { serves: RegisterEncoding },
}

/// A source feeding meter phases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feed {
    pub instrument: String,
    pub phases: Vec<Phase>,
}

/// A lab profile that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{}: cannot read the lab profile: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {field}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        /// The field path, e.g. `instruments[0].timeout` (`.` for the whole file).
        field: String,
        message: String,
    },
}

impl Lab {
    /// Reads and checks a lab profile.
    pub fn load(path: &Path) -> Result<Lab, LabError> {
        let text = std::fs::read_to_string(path).map_err(|source| LabError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Lab::parse(&text, path)
    }

    /// Parses and checks `text`; `file` names it in errors and anchors relative map paths.
    pub fn parse(text: &str, file: &Path) -> Result<Lab, LabError> {
        let raw: RawLab = serde_yaml::from_str(text).map_err(|e| yaml_error(&e, file))?;
        Checker {
            file,
            text: Locator::new(text),
        }
        .check(raw)
    }

    pub fn instrument(&self, name: &str) -> Option<&InstrumentProfile> {
        self.instruments.iter().find(|i| i.name == name)
    }

    pub fn meter(&self, name: &str) -> Option<&MeterProfile> {
        self.meters.iter().find(|m| m.name == name)
    }
}

impl InstrumentTransport {
    /// How the transport is named in messages: the address, `PATH @ BAUD`, or `emulated`.
    pub fn describe(&self) -> String {
        match self {
            InstrumentTransport::Tcp { addr } => addr.clone(),
            InstrumentTransport::Serial(s) => format!("{} @ {}", s.path, s.baud),
            InstrumentTransport::Emulated => "emulated".into(),
        }
    }
}

impl MeterTransport {
    /// How the transport is named in messages.
    pub fn describe(&self) -> String {
        match self {
            MeterTransport::ModbusTcp { addr } => addr.clone(),
            MeterTransport::ModbusRtu(s) => format!("{} @ {}", s.path, s.baud),
            MeterTransport::Emulated { .. } => "emulated".into(),
        }
    }
}

/// An SCPI link over whichever transport the profile names.
pub type AnyScpiLink = ScpiLink<Box<dyn scpi::ScpiTransport>>;

impl InstrumentProfile {
    /// Connects: `emulated_at` is where the caller started this instrument's emulator (required
    /// for [`InstrumentTransport::Emulated`], ignored otherwise).
    pub async fn connect(
        &self,
        emulated_at: Option<SocketAddr>,
    ) -> Result<AnyScpiLink, LinkFailed> {
        match &self.transport {
            InstrumentTransport::Tcp { addr } => {
                let (io, addr) = ScpiLink::connect_tcp(addr, self.timeout)
                    .await?
                    .into_inner();
                Ok(ScpiLink::new(Box::new(io) as Box<_>, addr, self.timeout))
            }
            InstrumentTransport::Emulated => {
                let Some(at) = emulated_at else {
                    return Err(LinkFailed {
                        addr: "emulated".into(),
                        command: "connect".into(),
                        failure: LinkFailure::Io(format!(
                            "the emulator of instrument {} was not started",
                            self.name
                        )),
                    });
                };
                let addr = at.to_string();
                let (io, addr) = ScpiLink::connect_tcp(&addr, self.timeout)
                    .await?
                    .into_inner();
                Ok(ScpiLink::new(Box::new(io) as Box<_>, addr, self.timeout))
            }
            InstrumentTransport::Serial(serial) => {
                let io = serial.open().map_err(|e| LinkFailed {
                    addr: serial.path.clone(),
                    command: "open".into(),
                    failure: LinkFailure::Io(e.to_string()),
                })?;
                Ok(ScpiLink::new(
                    Box::new(io) as Box<_>,
                    serial.path.clone(),
                    self.timeout,
                ))
            }
        }
    }

    /// Connects, asks `*IDN?` and drains `SYST:ERR?`: the identity and the error queue's
    /// verdict (the instrument's layer), or the link failure (the link's layer).
    pub async fn probe(&self, emulated_at: Option<SocketAddr>) -> InstrumentProbe {
        let mut addr = match (&self.transport, emulated_at) {
            (InstrumentTransport::Emulated, Some(at)) => at.to_string(),
            (t, _) => t.describe(),
        };
        let result = async {
            let mut link = self.connect(emulated_at).await?;
            addr = link.addr().to_string();
            let identity = link.identify().await?;
            let queue = link.check_errors("probing (*IDN?)").await?;
            Ok((identity, queue))
        }
        .await;
        InstrumentProbe { addr, result }
    }
}

/// What [`InstrumentProfile::probe`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct InstrumentProbe {
    /// The address used.
    pub addr: String,
    /// The identity and the error queue (`Err` when it was not empty), or the link failure.
    pub result: Result<(Identity, Result<(), InstrumentError>), LinkFailed>,
}

/// A Modbus client over whichever transport a meter profile names.
#[derive(Debug)]
pub enum MeterClient {
    Tcp(TcpReader),
    Rtu(RtuClient<tokio_serial::SerialStream>),
}

impl RegisterRead for MeterClient {
    async fn read_registers(
        &mut self,
        request: ReadRequest,
    ) -> Result<Answer<Vec<u16>>, LinkError> {
        match self {
            MeterClient::Tcp(c) => c.read_registers(request).await,
            MeterClient::Rtu(c) => c.read_registers(request).await,
        }
    }
}

impl MeterProfile {
    /// The reader's map: the documented addresses in the lab's expected encoding.
    pub fn register_map(&self) -> RegisterMap {
        RegisterMap {
            encoding: self.registers,
            ..RegisterMap::default()
        }
    }

    /// A client for this meter: `emulated_at` is where the caller serves its virtual meter
    /// (required for [`MeterTransport::Emulated`]). TCP connects lazily, on the first read.
    pub async fn client(&self, emulated_at: Option<SocketAddr>) -> Result<MeterClient, LinkError> {
        let tcp = |addr: SocketAddr| {
            MeterClient::Tcp(TcpReader::new(addr, self.unit, self.timeout, self.retries))
        };
        match &self.transport {
            MeterTransport::ModbusTcp { addr } => {
                let io = |detail: String| LinkError::Io {
                    peer: format!("modbus tcp {addr} unit {}", self.unit),
                    detail,
                };
                let resolved = tokio::time::timeout(self.timeout, tokio::net::lookup_host(addr))
                    .await
                    .map_err(|_| io("name resolution timed out".into()))?
                    .map_err(|e| io(format!("cannot resolve: {e}")))?
                    .next()
                    .ok_or_else(|| io("resolves to no address".into()))?;
                Ok(tcp(resolved))
            }
            MeterTransport::Emulated { .. } => match emulated_at {
                Some(at) => Ok(tcp(at)),
                None => Err(LinkError::Io {
                    peer: format!("emulated meter {}", self.name),
                    detail: "the virtual meter was not started".into(),
                }),
            },
            MeterTransport::ModbusRtu(serial) => {
                let config = RtuConfig {
                    unit: self.unit,
                    format: serial.format(),
                    timeout: self.timeout,
                    retries: self.retries,
                };
                Ok(MeterClient::Rtu(RtuClient::open_serial(serial, config)?))
            }
        }
    }
}

/// Why a hardware test does not run on hardware. Only [`Skip::NoHardware`] is a skip; the others
/// mean hardware was asked for but cannot be used, and a test must fail on them.
#[derive(Debug, thiserror::Error)]
pub enum Skip {
    #[error("skipped: no hardware (set {HIL_ENV}=1 and {LAB_ENV}=lab.yaml)")]
    NoHardware,
    #[error("{HIL_ENV}={0:?}: expected 1 (or unset to skip hardware tests)")]
    BadFlag(String),
    #[error(
        "{HIL_ENV}=1 but {LAB_ENV} is not set: name the lab profile (e.g. {LAB_ENV}=lab.yaml)"
    )]
    NoLab,
    #[error(transparent)]
    BadLab(LabError),
}

impl Skip {
    /// Whether this is a plain "no hardware" skip (anything else must fail the test).
    pub fn is_skip(&self) -> bool {
        matches!(self, Skip::NoHardware)
    }
}

/// The hardware lab named by `GRIDLOOP_HIL=1` and `GRIDLOOP_LAB=FILE`.
pub fn hardware_lab() -> Result<Lab, Skip> {
    let hil = std::env::var(HIL_ENV).ok();
    let lab = std::env::var_os(LAB_ENV).map(PathBuf::from);
    hardware_lab_from(hil.as_deref(), lab.as_deref())
}

/// [`hardware_lab`] with the two variables' values given.
pub fn hardware_lab_from(hil: Option<&str>, lab: Option<&Path>) -> Result<Lab, Skip> {
    match hil.map(str::trim) {
        None | Some("") | Some("0") => return Err(Skip::NoHardware),
        Some("1") => {}
        Some(other) => return Err(Skip::BadFlag(other.to_string())),
    }
    let lab = lab
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or(Skip::NoLab)?;
    Lab::load(lab).map_err(Skip::BadLab)
}

// ---------------------------------------------------------------------------------------------
// Parsing.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLab {
    safety: RawSafety,
    #[serde(default)]
    instruments: Vec<RawInstrument>,
    #[serde(default)]
    meters: Vec<RawMeter>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSafety {
    max_volts: f64,
    min_freq: f64,
    max_freq: f64,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawDialect {
    Chroma,
    Ametek,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstrument {
    name: String,
    dialect: RawDialect,
    tcp: Option<String>,
    serial: Option<RawSerial>,
    #[serde(default)]
    emulated: bool,
    timeout: Option<Dur>,
    rst_delay: Option<Dur>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawParity {
    #[default]
    None,
    Even,
    Odd,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSerial {
    path: String,
    #[serde(default = "default_baud")]
    baud: u32,
    #[serde(default)]
    parity: RawParity,
    #[serde(default = "default_stop_bits")]
    stop_bits: u8,
    #[serde(default = "default_data_bits")]
    data_bits: u8,
    /// Modbus RTU only.
    unit: Option<u8>,
}

fn default_baud() -> u32 {
    115_200
}
fn default_stop_bits() -> u8 {
    1
}
fn default_data_bits() -> u8 {
    8
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeter {
    name: String,
    modbus_tcp: Option<String>,
    modbus_rtu: Option<RawSerial>,
    #[serde(default)]
    emulated: bool,
    /// Emulated meters only: what the virtual meter serves (default: `registers`).
    emulated_serves: Option<Enc>,
    unit: Option<u8>,
    registers: Option<Enc>,
    map: Option<PathBuf>,
    timeout: Option<Dur>,
    retries: Option<u32>,
    feed: Option<RawFeed>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeed {
    instrument: String,
    #[serde(default = "all_phases")]
    phases: Vec<RawPhase>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
enum RawPhase {
    #[serde(alias = "l1")]
    L1,
    #[serde(alias = "l2")]
    L2,
    #[serde(alias = "l3")]
    L3,
}

fn all_phases() -> Vec<RawPhase> {
    vec![RawPhase::L1, RawPhase::L2, RawPhase::L3]
}

/// A duration string: `2s`, `500ms`, `1.5s`, `1min`.
#[derive(Debug, Clone, Copy)]
struct Dur(Duration);

/// Parses `2s`, `500ms`, `1.5s`, `1min`, `250us` (a number and a unit, no sign).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "min" => value * 60.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as `2s` or `500ms`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                parse_duration(s).map(Dur).ok_or_else(|| {
                    E::custom(format!(
                        "bad duration `{s}`: expected a number and a unit (us, ms, s, min), \
                         e.g. `2s` or `500ms`"
                    ))
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// A register encoding string.
#[derive(Debug, Clone, Copy)]
struct Enc(RegisterEncoding);

/// `float32[:ORDER]`, `int16:SCALE`, `uint32:SCALE[:ORDER]` (ORDER: abcd, cdab, badc, dcba) —
/// the spelling virtual-meter's register maps and `--encoding` use.
pub fn parse_encoding(text: &str) -> Option<RegisterEncoding> {
    let order = |s: Option<&str>| -> Option<WordOrder> {
        Some(match s.map(str::to_ascii_lowercase).as_deref() {
            None | Some("abcd") => WordOrder::Abcd,
            Some("cdab") => WordOrder::Cdab,
            Some("badc") => WordOrder::Badc,
            Some("dcba") => WordOrder::Dcba,
            Some(_) => return None,
        })
    };
    let scale = |s: Option<&str>| -> Option<f64> {
        let v: f64 = s?.parse().ok()?;
        (v.is_finite() && v > 0.0).then_some(v)
    };
    let mut parts = text.trim().split(':');
    let enc = match parts.next()?.to_ascii_lowercase().as_str() {
        "float32" => RegisterEncoding::Float32(order(parts.next())?),
        "int16" => RegisterEncoding::Int16 {
            scale: scale(parts.next())?,
        },
        "uint32" => RegisterEncoding::Uint32 {
            scale: scale(parts.next())?,
            word_order: order(parts.next())?,
        },
        _ => return None,
    };
    parts.next().is_none().then_some(enc)
}

impl<'de> Deserialize<'de> for Enc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Enc;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a register encoding such as `float32:abcd` or `int16:0.1`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Enc, E> {
                parse_encoding(s).map(Enc).ok_or_else(|| {
                    E::custom(format!(
                        "bad encoding `{s}`: expected float32[:ORDER], int16:SCALE or \
                         uint32:SCALE[:ORDER] (ORDER: abcd, cdab, badc, dcba)"
                    ))
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// serde_yaml's `path: message at line L column C` → file:line:column, field, message.
fn yaml_error(e: &serde_yaml::Error, file: &Path) -> LabError {
    let (line, column) = e
        .location()
        .map_or((1, 1), |l| (l.line().max(1), l.column().max(1)));
    let mut text = e.to_string();
    if let Some(at) = text.rfind(" at line ") {
        text.truncate(at);
    }
    let (field, message) = match text.split_once(": ") {
        Some((path, msg)) if !path.contains(' ') => (path.to_string(), msg.to_string()),
        _ => (".".to_string(), text),
    };
    LabError::Invalid {
        path: file.to_path_buf(),
        line,
        column,
        field,
        message,
    }
}

/// Finds the lines of list items and keys in the text, for the errors of checks made after
/// serde (which has no spans left by then). Block-style YAML is located precisely; anything
/// else falls back to the list's line.
#[derive(Debug)]
struct Locator<'a> {
    lines: Vec<&'a str>,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

impl<'a> Locator<'a> {
    fn new(text: &'a str) -> Self {
        Locator {
            lines: text.lines().collect(),
        }
    }

    /// The 0-based line of the top-level key `key:`.
    fn top_key(&self, key: &str) -> Option<usize> {
        let prefix = format!("{key}:");
        self.lines
            .iter()
            .position(|l| indent(l) == 0 && l.starts_with(&prefix))
    }

    /// Lines `[start, end)` of item `index` of the top-level list `list`.
    fn item(&self, list: &str, index: usize) -> Option<(usize, usize)> {
        let head = self.top_key(list)?;
        let mut starts = Vec::new();
        let mut dash = None;
        let mut end = self.lines.len();
        for (n, line) in self.lines.iter().enumerate().skip(head + 1) {
            if !is_content(line) {
                continue;
            }
            let i = indent(line);
            let item_start = line.trim_start().starts_with('-');
            if i == 0 && !item_start {
                end = n;
                break;
            }
            match dash {
                None if item_start => dash = Some(i),
                None => {}
                Some(d) if i < d => {
                    end = n;
                    break;
                }
                Some(_) => {}
            }
            if item_start && dash == Some(i) {
                starts.push(n);
            }
        }
        let start = *starts.get(index)?;
        let stop = starts.get(index + 1).copied().unwrap_or(end);
        Some((start, stop))
    }

    /// 1-based line and column of `key` inside item `index` of `list` (the item's line when
    /// `key` is `None` or absent; the list's line when the item cannot be found).
    fn at(&self, list: &str, index: Option<usize>, key: Option<&str>) -> (usize, usize) {
        let fallback = self.top_key(list).map_or((1, 1), |n| (n + 1, 1));
        let Some(index) = index else {
            return match (self.top_key(list), key) {
                (Some(head), Some(key)) => self.find_key(head, self.lines.len(), key),
                _ => None,
            }
            .unwrap_or(fallback);
        };
        let Some((start, stop)) = self.item(list, index) else {
            return fallback;
        };
        let item = (start + 1, indent(self.lines[start]) + 1);
        match key {
            None => item,
            Some(key) => self.find_key(start, stop, key).unwrap_or(item),
        }
    }

    fn find_key(&self, start: usize, stop: usize, key: &str) -> Option<(usize, usize)> {
        // `key:` at the start of a block entry or inside a flow mapping (`{ a: 1, key: 2 }`).
        let pattern = format!("{key}:");
        (start..stop.min(self.lines.len())).find_map(|n| {
            let l = self.lines[n];
            let code = l.split(" #").next().unwrap_or(l);
            code.match_indices(&pattern).find_map(|(at, _)| {
                let before = code[..at].trim_end_matches(' ').chars().last();
                matches!(before, None | Some('-' | '{' | ',')).then_some((n + 1, at + 1))
            })
        })
    }
}

/// The checks serde cannot make, with located errors.
struct Checker<'a> {
    file: &'a Path,
    text: Locator<'a>,
}

impl Checker<'_> {
    fn err(
        &self,
        list: &str,
        index: Option<usize>,
        key: Option<&str>,
        message: impl Into<String>,
    ) -> LabError {
        let (line, column) = self.text.at(list, index, key);
        let field = match (index, key) {
            (Some(i), Some(k)) => format!("{list}[{i}].{k}"),
            (Some(i), None) => format!("{list}[{i}]"),
            (None, Some(k)) => format!("{list}.{k}"),
            (None, None) => list.to_string(),
        };
        LabError::Invalid {
            path: self.file.to_path_buf(),
            line,
            column,
            field,
            message: message.into(),
        }
    }

    /// [`Checker::err`] located at `key` but naming the field `parent.key`.
    fn nested(
        &self,
        list: &str,
        index: usize,
        parent: &str,
        key: &str,
        message: impl Into<String>,
    ) -> LabError {
        match self.err(list, Some(index), Some(key), message) {
            LabError::Invalid {
                path,
                line,
                column,
                message,
                ..
            } => LabError::Invalid {
                path,
                line,
                column,
                field: format!("{list}[{index}].{parent}.{key}"),
                message,
            },
            other => other,
        }
    }

    fn check(&self, raw: RawLab) -> Result<Lab, LabError> {
        let s = &raw.safety;
        if !(s.max_volts.is_finite() && s.max_volts > 0.0) {
            return Err(self.err(
                "safety",
                None,
                Some("max_volts"),
                format!("{} V: must be a positive number of volts", s.max_volts),
            ));
        }
        if !(s.min_freq.is_finite() && s.min_freq > 0.0) {
            return Err(self.err(
                "safety",
                None,
                Some("min_freq"),
                format!("{} Hz: must be a positive frequency", s.min_freq),
            ));
        }
        if !(s.max_freq.is_finite() && s.max_freq > s.min_freq) {
            return Err(self.err(
                "safety",
                None,
                Some("max_freq"),
                format!(
                    "{} Hz: must be above min_freq ({} Hz)",
                    s.max_freq, s.min_freq
                ),
            ));
        }
        let safety = SafetyLimits {
            max_volts: s.max_volts,
            min_freq: s.min_freq,
            max_freq: s.max_freq,
        };
        let mut names = HashSet::new();
        let mut instruments = Vec::new();
        for (i, r) in raw.instruments.into_iter().enumerate() {
            instruments.push(self.instrument(i, r, &mut names)?);
        }
        let mut names = HashSet::new();
        let mut meters = Vec::new();
        for (i, r) in raw.meters.into_iter().enumerate() {
            let m = self.meter(i, r, &mut names)?;
            if let Some(feed) = &m.feed {
                if !instruments.iter().any(|x| x.name == feed.instrument) {
                    let known: Vec<&str> = instruments.iter().map(|x| x.name.as_str()).collect();
                    return Err(self.nested(
                        "meters",
                        i,
                        "feed",
                        "instrument",
                        format!(
                            "feed names instrument `{}`, which the lab does not have \
                             (instruments: {})",
                            feed.instrument,
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    ));
                }
            }
            meters.push(m);
        }
        Ok(Lab {
            file: self.file.to_path_buf(),
            safety,
            instruments,
            meters,
        })
    }

    fn name(
        &self,
        list: &str,
        i: usize,
        name: &str,
        names: &mut HashSet<String>,
    ) -> Result<(), LabError> {
        if name.trim().is_empty() {
            return Err(self.err(list, Some(i), Some("name"), "must not be empty"));
        }
        if !names.insert(name.to_string()) {
            return Err(self.err(
                list,
                Some(i),
                Some("name"),
                format!("`{name}` is used twice"),
            ));
        }
        Ok(())
    }

    fn positive(&self, list: &str, i: usize, key: &str, d: Option<Dur>) -> Result<(), LabError> {
        match d {
            Some(Dur(d)) if d.is_zero() => {
                Err(self.err(list, Some(i), Some(key), "must be longer than 0"))
            }
            _ => Ok(()),
        }
    }

    fn serial(
        &self,
        list: &str,
        i: usize,
        key: &str,
        r: &RawSerial,
    ) -> Result<SerialConfig, LabError> {
        if r.path.trim().is_empty() {
            return Err(self.nested(list, i, key, "path", "must name a serial device"));
        }
        if r.baud == 0 {
            return Err(self.nested(list, i, key, "baud", "must be above 0"));
        }
        if !matches!(r.stop_bits, 1 | 2) {
            return Err(self.nested(
                list,
                i,
                key,
                "stop_bits",
                format!("{}: must be 1 or 2", r.stop_bits),
            ));
        }
        if !(5..=8).contains(&r.data_bits) {
            return Err(self.nested(
                list,
                i,
                key,
                "data_bits",
                format!("{}: must be 5, 6, 7 or 8", r.data_bits),
            ));
        }
        Ok(SerialConfig {
            path: r.path.clone(),
            baud: r.baud,
            parity: match r.parity {
                RawParity::None => Parity::None,
                RawParity::Even => Parity::Even,
                RawParity::Odd => Parity::Odd,
            },
            stop_bits: r.stop_bits,
            data_bits: r.data_bits,
        })
    }

    /// `HOST` or `HOST:PORT` (`[v6]:PORT`) → `HOST:PORT`.
    fn address(
        &self,
        list: &str,
        i: usize,
        key: &str,
        text: &str,
        default_port: u16,
    ) -> Result<String, LabError> {
        let t = text.trim();
        let bad = |why: &str| self.err(list, Some(i), Some(key), format!("`{t}`: {why}"));
        if t.is_empty() {
            return Err(bad("expected HOST or HOST:PORT"));
        }
        if t.parse::<SocketAddr>().is_ok() {
            return Ok(t.to_string());
        }
        if t.parse::<std::net::Ipv6Addr>().is_ok() {
            return Ok(format!("[{t}]:{default_port}"));
        }
        match t.rsplit_once(':') {
            Some((host, port)) => {
                if host.is_empty() || host.contains(':') {
                    return Err(bad("expected HOST or HOST:PORT"));
                }
                port.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad("the port must be a number 1–65535"))?;
                Ok(t.to_string())
            }
            None if t.contains(char::is_whitespace) => Err(bad("expected HOST or HOST:PORT")),
            None => Ok(format!("{t}:{default_port}")),
        }
    }

    fn instrument(
        &self,
        i: usize,
        r: RawInstrument,
        names: &mut HashSet<String>,
    ) -> Result<InstrumentProfile, LabError> {
        const L: &str = "instruments";
        self.name(L, i, &r.name, names)?;
        let chosen: Vec<&str> = [
            r.tcp.as_ref().map(|_| "tcp"),
            r.serial.as_ref().map(|_| "serial"),
            r.emulated.then_some("emulated"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let transport = match (chosen.as_slice(), &r.tcp, &r.serial) {
            (["tcp"], Some(addr), _) => InstrumentTransport::Tcp {
                addr: self.address(L, i, "tcp", addr, scpi::DEFAULT_PORT)?,
            },
            (["serial"], _, Some(s)) => {
                InstrumentTransport::Serial(self.serial(L, i, "serial", s)?)
            }
            (["emulated"], _, _) => InstrumentTransport::Emulated,
            _ => {
                return Err(self.transport_error(
                    L,
                    i,
                    &["tcp", "serial", "emulated: true"],
                    &chosen,
                ))
            }
        };
        if let Some(s) = &r.serial {
            if s.unit.is_some() {
                return Err(self.nested(
                    L,
                    i,
                    "serial",
                    "unit",
                    "an instrument's serial line has no unit id",
                ));
            }
        }
        self.positive(L, i, "timeout", r.timeout)?;
        let dialect = match r.dialect {
            RawDialect::Chroma => Dialect::Chroma,
            RawDialect::Ametek => Dialect::Ametek,
        };
        Ok(InstrumentProfile {
            name: r.name,
            dialect,
            transport,
            timeout: r.timeout.map_or(DEFAULT_INSTRUMENT_TIMEOUT, |d| d.0),
            rst_delay: r.rst_delay.map_or(dialect.default_rst_delay(), |d| d.0),
        })
    }

    fn transport_error(&self, list: &str, i: usize, keys: &[&str], chosen: &[&str]) -> LabError {
        let found = if chosen.is_empty() {
            "none given".to_string()
        } else {
            format!("given: {}", chosen.join(" and "))
        };
        self.err(
            list,
            Some(i),
            chosen.get(1).copied(),
            format!(
                "exactly one transport is required, one of {} ({found})",
                keys.iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    }

    fn meter(
        &self,
        i: usize,
        r: RawMeter,
        names: &mut HashSet<String>,
    ) -> Result<MeterProfile, LabError> {
        const L: &str = "meters";
        self.name(L, i, &r.name, names)?;
        let chosen: Vec<&str> = [
            r.modbus_tcp.as_ref().map(|_| "modbus_tcp"),
            r.modbus_rtu.as_ref().map(|_| "modbus_rtu"),
            r.emulated.then_some("emulated"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let registers = r.registers.map_or(RegisterEncoding::default(), |e| e.0);
        if r.emulated_serves.is_some() && !r.emulated {
            return Err(self.err(
                L,
                Some(i),
                Some("emulated_serves"),
                "only an emulated meter (`emulated: true`) has `emulated_serves`",
            ));
        }
        let mut unit = r.unit;
        let transport = match (chosen.as_slice(), &r.modbus_tcp, &r.modbus_rtu) {
            (["modbus_tcp"], Some(addr), _) => MeterTransport::ModbusTcp {
                addr: self.address(L, i, "modbus_tcp", addr, MODBUS_TCP_PORT)?,
            },
            (["modbus_rtu"], _, Some(s)) => {
                if let (Some(a), Some(b)) = (r.unit, s.unit) {
                    if a != b {
                        return Err(self.err(
                            L,
                            Some(i),
                            Some("unit"),
                            format!("unit {a} contradicts modbus_rtu.unit {b}: give it once"),
                        ));
                    }
                }
                unit = unit.or(s.unit);
                if matches!(unit, Some(0) | Some(248..)) {
                    return Err(self.err(
                        L,
                        Some(i),
                        Some("unit"),
                        format!("{}: a Modbus RTU unit id is 1–247", unit.unwrap_or(0)),
                    ));
                }
                MeterTransport::ModbusRtu(self.serial(L, i, "modbus_rtu", s)?)
            }
            (["emulated"], _, _) => MeterTransport::Emulated {
                serves: r.emulated_serves.map_or(registers, |e| e.0),
            },
            _ => {
                return Err(self.transport_error(
                    L,
                    i,
                    &["modbus_tcp", "modbus_rtu", "emulated: true"],
                    &chosen,
                ))
            }
        };
        self.positive(L, i, "timeout", r.timeout)?;
        let map = match r.map {
            None => None,
            Some(p) => {
                let resolved = if p.is_relative() {
                    self.file.parent().unwrap_or(Path::new("")).join(&p)
                } else {
                    p.clone()
                };
                if !resolved.is_file() {
                    return Err(self.err(
                        L,
                        Some(i),
                        Some("map"),
                        format!("register map {} is not a readable file", resolved.display()),
                    ));
                }
                Some(resolved)
            }
        };
        let feed = match r.feed {
            None => None,
            Some(f) => {
                if f.phases.is_empty() {
                    return Err(self.nested(L, i, "feed", "phases", "names no phase"));
                }
                let mut seen = HashSet::new();
                if let Some(dup) = f.phases.iter().find(|p| !seen.insert(**p)) {
                    return Err(self.nested(
                        L,
                        i,
                        "feed",
                        "phases",
                        format!("{dup:?} is named twice"),
                    ));
                }
                Some(Feed {
                    instrument: f.instrument,
                    phases: f
                        .phases
                        .into_iter()
                        .map(|p| match p {
                            RawPhase::L1 => Phase::L1,
                            RawPhase::L2 => Phase::L2,
                            RawPhase::L3 => Phase::L3,
                        })
                        .collect(),
                })
            }
        };
        Ok(MeterProfile {
            name: r.name,
            transport,
            unit: unit.unwrap_or(1),
            registers,
            map,
            timeout: r.timeout.map_or(DEFAULT_METER_TIMEOUT, |d| d.0),
            retries: r.retries.unwrap_or(DEFAULT_RETRIES),
            feed,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &str = "\
safety: { max_volts: 264, min_freq: 45, max_freq: 65 }
instruments:
  # a comment
  - name: src
    dialect: ametek
    tcp: 192.168.0.20
    timeout: 1500ms
  - name: emu
    dialect: chroma
    emulated: true
meters:
  - name: m1
    modbus_rtu: { path: /dev/ttyUSB0, baud: 9600, parity: even, unit: 7 }
    registers: int16:0.1
    feed: { instrument: src, phases: [L1, l2] }
  - name: m2
    modbus_tcp: meter.lab:1502
    unit: 3
";

    fn bad(text: &str) -> (usize, usize, String, String) {
        match Lab::parse(text, Path::new("lab.yaml")).unwrap_err() {
            LabError::Invalid {
                line,
                column,
                field,
                message,
                ..
            } => (line, column, field, message),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn a_good_profile_parses_with_defaults() {
        let lab = Lab::parse(GOOD, Path::new("lab.yaml")).unwrap();
        assert_eq!(lab.safety.max_volts, 264.0);
        let src = &lab.instruments[0];
        assert_eq!(src.dialect, Dialect::Ametek);
        assert_eq!(
            src.transport,
            InstrumentTransport::Tcp {
                addr: "192.168.0.20:5025".into()
            }
        );
        assert_eq!(src.timeout, Duration::from_millis(1500));
        assert_eq!(src.rst_delay, Duration::from_secs(3));
        let emu = &lab.instruments[1];
        assert_eq!(emu.transport, InstrumentTransport::Emulated);
        assert_eq!(emu.rst_delay, Duration::from_secs(7));
        assert_eq!(emu.timeout, DEFAULT_INSTRUMENT_TIMEOUT);
        let m1 = &lab.meters[0];
        assert_eq!(m1.unit, 7);
        assert_eq!(m1.registers, RegisterEncoding::Int16 { scale: 0.1 });
        let MeterTransport::ModbusRtu(s) = &m1.transport else {
            panic!("{:?}", m1.transport)
        };
        assert_eq!((s.baud, s.parity, s.stop_bits), (9600, Parity::Even, 1));
        assert_eq!(
            m1.feed,
            Some(Feed {
                instrument: "src".into(),
                phases: vec![Phase::L1, Phase::L2]
            })
        );
        let m2 = &lab.meters[1];
        assert_eq!(
            m2.transport,
            MeterTransport::ModbusTcp {
                addr: "meter.lab:1502".into()
            }
        );
        assert_eq!(m2.unit, 3);
        assert_eq!(m2.registers, RegisterEncoding::Float32(WordOrder::Abcd));
    }

    #[test]
    fn durations_and_encodings() {
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1min"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        for bad in ["2", "s", "-1s", "2 hours", ""] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(
            parse_encoding("uint32:0.01:cdab"),
            Some(RegisterEncoding::Uint32 {
                scale: 0.01,
                word_order: WordOrder::Cdab
            })
        );
        assert_eq!(
            parse_encoding("FLOAT32:DCBA"),
            Some(RegisterEncoding::Float32(WordOrder::Dcba))
        );
        for bad in [
            "int16",
            "int16:0",
            "float32:xyzw",
            "float32:abcd:1",
            "double",
        ] {
            assert_eq!(parse_encoding(bad), None, "{bad}");
        }
    }

    #[test]
    fn errors_after_serde_name_the_item_line_and_field() {
        let dup = GOOD.replace("name: emu", "name: src");
        assert_eq!(
            bad(&dup),
            (
                8,
                5,
                "instruments[1].name".into(),
                "`src` is used twice".into()
            )
        );
        let both = GOOD.replace("    emulated: true\n", "    emulated: true\n    tcp: h\n");
        let (line, _, field, message) = bad(&both);
        assert_eq!((line, field.as_str()), (10, "instruments[1].emulated"));
        assert!(message.contains("given: tcp and emulated"), "{message}");
        let feed = GOOD.replace("instrument: src", "instrument: nope");
        let (line, _, field, message) = bad(&feed);
        assert_eq!((line, field.as_str()), (15, "meters[0].feed.instrument"));
        assert!(
            message.contains("`nope`") && message.contains("src, emu"),
            "{message}"
        );
        let (line, col, field, _) = bad(&GOOD.replace("max_freq: 65", "max_freq: 40"));
        assert_eq!((line, col, field.as_str()), (1, 41, "safety.max_freq"));
    }

    #[test]
    fn the_hardware_gate() {
        assert!(matches!(
            hardware_lab_from(None, None),
            Err(Skip::NoHardware)
        ));
        assert!(matches!(
            hardware_lab_from(Some("0"), Some(Path::new("x.yaml"))),
            Err(Skip::NoHardware)
        ));
        assert!(matches!(
            hardware_lab_from(Some("1"), None),
            Err(Skip::NoLab)
        ));
        assert!(matches!(
            hardware_lab_from(Some("yes"), None),
            Err(Skip::BadFlag(_))
        ));
        let missing = hardware_lab_from(Some("1"), Some(Path::new("/nonexistent/lab.yaml")));
        assert!(matches!(missing, Err(Skip::BadLab(LabError::Read { .. }))));
        assert!(!missing.unwrap_err().is_skip());
        assert_eq!(
            Skip::NoHardware.to_string(),
            "skipped: no hardware (set GRIDLOOP_HIL=1 and GRIDLOOP_LAB=lab.yaml)"
        );
    }
}
