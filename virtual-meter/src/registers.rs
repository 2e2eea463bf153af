//! The register map: which meter quantity lives at which holding-register address and how it
//! is encoded, the documented default map (`docs/register-map.md`) and the `register_map.conf`
//! loader (`NAME = 0x0024` lines) with errors that name the file and line.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use sim_core::encoding::{RegisterEncoding, WordOrder};
use sim_core::Phase;

/// The spec's voltage registers (DESIGN.md, wire contracts).
pub const VOLTAGE_L1_REG: u16 = 0x0024;
pub const VOLTAGE_L2_REG: u16 = 0x0026;
pub const VOLTAGE_L3_REG: u16 = 0x0028;
/// Start of the writable settings block in the default map.
pub const SETTINGS_BASE: u16 = 0x0100;
/// Calibrations that changed a gain (uint32, read-only), after the gains.
pub const CAL_COUNT_REG: u16 = 0x010C;
/// Calibration reference voltage (analog encoding, V, writable).
pub const CAL_REFERENCE_REG: u16 = 0x010E;
/// Calibration command (uint16, writable): 1 all, 2 L1, 3 L2, 4 L3. Right after the
/// reference, so one FC16 of 3 registers at `CAL_REFERENCE_REG` sets both and runs it.
pub const CAL_COMMAND_REG: u16 = 0x0110;

/// Bits of `STATUS_REG`. Active bits follow the meter's trip state; latched bits are set by
/// every trip and stay set until a client writes a 1 to them (write-1-to-clear).
pub mod status {
    /// Under-voltage trip active on phase i (i = 0, 1, 2).
    pub const UV_ACTIVE: u16 = 1 << 0;
    /// Over-voltage trip active on phase i.
    pub const OV_ACTIVE: u16 = 1 << 3;
    /// Under-voltage trip seen on phase i since the latch was last cleared.
    pub const UV_LATCHED: u16 = 1 << 8;
    /// Over-voltage trip seen on phase i since the latch was last cleared.
    pub const OV_LATCHED: u16 = 1 << 11;
    /// Every latched bit (the only bits a write can change).
    pub const LATCHED_MASK: u16 = 0b111 << 8 | 0b111 << 11;
    /// A 10/12-cycle value exists for every phase (the voltage registers are real readings).
    pub const VALID: u16 = 1 << 15;
}

/// A quantity the meter exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Point {
    /// Latest 10/12-cycle RMS voltage, V.
    Voltage(Phase),
    /// THD of the voltage over the latest 10/12-cycle window, % of the fundamental.
    ThdV(Phase),
    /// Frequency over the latest 10/12-cycle window, Hz.
    Frequency,
    /// RMS load current, A.
    Current(Phase),
    /// Active power, W.
    ActivePower(Phase),
    /// Sum of the phases' active power, W.
    ActivePowerTotal,
    /// Active energy since start, all phases, Wh.
    Energy,
    /// Latest Urms(1/2) (one cycle, refreshed every half cycle), V.
    UrmsHalf(Phase),
    /// Trip bits ([`status`]).
    Status,
    /// Firmware version, major in the high byte, minor in the low byte.
    FirmwareVersion,
    /// Trips (UV and OV) since start.
    TripCount,
    /// Clears since start.
    ClearCount,
    /// Completed power-quality events (dips, swells, interruptions) since start.
    PqEventCount,
    /// Source (scenario) time of the image, ms.
    SourceTime,
    /// Over-voltage trip limit, V (writable).
    UpperLimit,
    /// Under-voltage trip limit, V (writable).
    LowerLimit,
    /// Trip hysteresis, V (writable).
    Hysteresis,
    /// Calibration gain of the voltage channel (writable, 1.0 = none).
    Gain(Phase),
    /// Calibrations that changed at least one gain since start.
    CalCount,
    /// Reference voltage of the calibration command, V (writable, 90–480 V).
    CalReference,
    /// Calibration command (writable): 1 = all phases, 2 = L1, 3 = L2, 4 = L3; writing one
    /// runs the calibration against `CalReference`; 0 does nothing; reads as 0.
    CalCommand,
}

/// How a point's registers are laid out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PointEncoding {
    /// A numeric value through `sim_core::encoding` (float32 or scaled int16/uint32).
    Value(RegisterEncoding),
    /// One register of raw bits.
    Uint16,
}

impl PointEncoding {
    /// Registers the point occupies.
    pub fn registers(self) -> u16 {
        match self {
            PointEncoding::Value(enc) => sim_core::encoding::register_count(enc) as u16,
            PointEncoding::Uint16 => 1,
        }
    }
}

/// Read-only, writable, or write-1-to-clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
    /// Writing a 1 to a latched bit clears it; other bits ignore writes.
    WriteOneToClear,
}

/// What kind of value a point holds: decides its default encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A measured or configured real number: the map's analog encoding (float32 by default).
    Analog,
    /// A count: uint32, scale 1, in the map's word order.
    Counter,
    /// Raw bits in one register.
    Bits,
}

const P: [Phase; 3] = Phase::ALL;

impl Point {
    /// Every point, in default-map order.
    pub const ALL: [Point; 33] = [
        Point::Voltage(P[0]),
        Point::Voltage(P[1]),
        Point::Voltage(P[2]),
        Point::ThdV(P[0]),
        Point::ThdV(P[1]),
        Point::ThdV(P[2]),
        Point::Frequency,
        Point::Current(P[0]),
        Point::Current(P[1]),
        Point::Current(P[2]),
        Point::ActivePower(P[0]),
        Point::ActivePower(P[1]),
        Point::ActivePower(P[2]),
        Point::ActivePowerTotal,
        Point::Energy,
        Point::UrmsHalf(P[0]),
        Point::UrmsHalf(P[1]),
        Point::UrmsHalf(P[2]),
        Point::Status,
        Point::FirmwareVersion,
        Point::TripCount,
        Point::ClearCount,
        Point::PqEventCount,
        Point::SourceTime,
        Point::UpperLimit,
        Point::LowerLimit,
        Point::Hysteresis,
        Point::Gain(P[0]),
        Point::Gain(P[1]),
        Point::Gain(P[2]),
        Point::CalCount,
        Point::CalReference,
        Point::CalCommand,
    ];

    /// Every point, in default-map order.
    pub fn all() -> &'static [Point] {
        &Self::ALL
    }

    /// The name used in `register_map.conf` and the docs, e.g. `VOLTAGE_L1_REG`.
    pub fn name(self) -> String {
        let phase = |base: &str, p: Phase| format!("{base}_{}_REG", p.name());
        match self {
            Point::Voltage(p) => phase("VOLTAGE", p),
            Point::ThdV(p) => phase("THD_V", p),
            Point::Frequency => "FREQUENCY_REG".into(),
            Point::Current(p) => phase("CURRENT", p),
            Point::ActivePower(p) => phase("ACTIVE_POWER", p),
            Point::ActivePowerTotal => "ACTIVE_POWER_TOTAL_REG".into(),
            Point::Energy => "ENERGY_REG".into(),
            Point::UrmsHalf(p) => phase("URMS_HALF", p),
            Point::Status => "STATUS_REG".into(),
            Point::FirmwareVersion => "FIRMWARE_VERSION_REG".into(),
            Point::TripCount => "TRIP_COUNT_REG".into(),
            Point::ClearCount => "CLEAR_COUNT_REG".into(),
            Point::PqEventCount => "PQ_EVENT_COUNT_REG".into(),
            Point::SourceTime => "SOURCE_TIME_REG".into(),
            Point::UpperLimit => "VOLT_UPPER_LIMIT_REG".into(),
            Point::LowerLimit => "VOLT_LOWER_LIMIT_REG".into(),
            Point::Hysteresis => "VOLT_HYSTERESIS_REG".into(),
            Point::Gain(p) => phase("CAL_GAIN", p),
            Point::CalCount => "CAL_COUNT_REG".into(),
            Point::CalReference => "CAL_REFERENCE_REG".into(),
            Point::CalCommand => "CAL_COMMAND_REG".into(),
        }
    }

    /// The point called `name` (case-sensitive, as in the docs).
    pub fn from_name(name: &str) -> Option<Point> {
        Point::all().iter().copied().find(|p| p.name() == name)
    }

    /// Unit for the docs.
    pub fn unit(self) -> &'static str {
        match self {
            Point::Voltage(_)
            | Point::UrmsHalf(_)
            | Point::UpperLimit
            | Point::LowerLimit
            | Point::Hysteresis
            | Point::CalReference => "V",
            Point::ThdV(_) => "%",
            Point::Frequency => "Hz",
            Point::Current(_) => "A",
            Point::ActivePower(_) | Point::ActivePowerTotal => "W",
            Point::Energy => "Wh",
            Point::SourceTime => "ms",
            Point::Gain(_) => "ratio",
            Point::Status | Point::FirmwareVersion | Point::CalCommand => "bits",
            Point::TripCount | Point::ClearCount | Point::PqEventCount | Point::CalCount => "count",
        }
    }

    pub fn access(self) -> Access {
        match self {
            Point::UpperLimit
            | Point::LowerLimit
            | Point::Hysteresis
            | Point::Gain(_)
            | Point::CalReference
            | Point::CalCommand => Access::ReadWrite,
            Point::Status => Access::WriteOneToClear,
            _ => Access::Read,
        }
    }

    fn kind(self) -> Kind {
        match self {
            Point::Status | Point::FirmwareVersion | Point::CalCommand => Kind::Bits,
            Point::TripCount
            | Point::ClearCount
            | Point::PqEventCount
            | Point::SourceTime
            | Point::CalCount => Kind::Counter,
            _ => Kind::Analog,
        }
    }

    /// Address in the default map (documented in `docs/register-map.md`).
    pub fn default_address(self) -> u16 {
        let ph = |base: u16, p: Phase| base + 2 * p.index() as u16;
        match self {
            Point::Voltage(p) => ph(VOLTAGE_L1_REG, p),
            Point::ThdV(p) => ph(0x002A, p),
            Point::Frequency => 0x0030,
            Point::Current(p) => ph(0x0032, p),
            Point::ActivePower(p) => ph(0x0038, p),
            Point::ActivePowerTotal => 0x003E,
            Point::Energy => 0x0040,
            Point::UrmsHalf(p) => ph(0x0042, p),
            Point::Status => 0x0048,
            Point::FirmwareVersion => 0x0049,
            Point::TripCount => 0x004A,
            Point::ClearCount => 0x004C,
            Point::PqEventCount => 0x004E,
            Point::SourceTime => 0x0050,
            Point::UpperLimit => SETTINGS_BASE,
            Point::LowerLimit => SETTINGS_BASE + 2,
            Point::Hysteresis => SETTINGS_BASE + 4,
            Point::Gain(p) => ph(SETTINGS_BASE + 6, p),
            Point::CalCount => CAL_COUNT_REG,
            Point::CalReference => CAL_REFERENCE_REG,
            Point::CalCommand => CAL_COMMAND_REG,
        }
    }
}

/// One mapped point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry {
    pub point: Point,
    pub address: u16,
    pub encoding: PointEncoding,
}

impl Entry {
    pub fn registers(&self) -> u16 {
        self.encoding.registers()
    }

    /// Last register the entry occupies.
    pub fn last(&self) -> u32 {
        u32::from(self.address) + u32::from(self.registers()) - 1
    }
}

/// Where a register falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Index into [`RegisterMap::entries`].
    pub entry: usize,
    /// Register offset within the entry (0 or 1).
    pub offset: u16,
}

/// Map-wide encoding choices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapOptions {
    /// Encoding of analog points (voltages, THD, frequency, currents, power, energy,
    /// thresholds, gains) unless a conf line overrides it.
    pub analog: RegisterEncoding,
    /// Word order of uint32 counters.
    pub counter_word_order: WordOrder,
}

impl Default for MapOptions {
    fn default() -> Self {
        MapOptions {
            analog: RegisterEncoding::Float32(WordOrder::Abcd),
            counter_word_order: WordOrder::Abcd,
        }
    }
}

impl MapOptions {
    /// Options with `analog` as given and counters in its word order (ABCD for int16).
    pub fn with_analog(analog: RegisterEncoding) -> Self {
        let counter_word_order = match analog {
            RegisterEncoding::Float32(o) => o,
            RegisterEncoding::Uint32 { word_order, .. } => word_order,
            RegisterEncoding::Int16 { .. } => WordOrder::Abcd,
        };
        MapOptions {
            analog,
            counter_word_order,
        }
    }

    fn encoding_of(&self, point: Point) -> PointEncoding {
        match point.kind() {
            Kind::Analog => PointEncoding::Value(self.analog),
            Kind::Counter => PointEncoding::Value(RegisterEncoding::Uint32 {
                scale: 1.0,
                word_order: self.counter_word_order,
            }),
            Kind::Bits => PointEncoding::Uint16,
        }
    }
}

/// A complete register map: entries sorted by address, with an address index.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterMap {
    entries: Vec<Entry>,
    /// First address covered by `index`.
    base: u16,
    /// `index[a - base]` = entry index + 1 covering register a, or 0 if unmapped.
    index: Vec<u16>,
}

/// A register map file problem, naming the file, the 1-based line, and for YAML the column
/// and the field: `map.conf:3: …`, `map.yaml:3:17: VOLTAGE_L2_REG.address: …`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}{}: {}{kind}", column.map(|c| format!(":{c}")).unwrap_or_default(), field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct MapError {
    pub file: String,
    pub line: usize,
    /// 1-based column (YAML maps only).
    pub column: Option<u32>,
    /// The field at fault, e.g. `VOLTAGE_L2_REG.encoding` (YAML maps only).
    pub field: Option<Box<str>>,
    pub kind: MapErrorKind,
}

impl MapError {
    fn at(file: &str, at: Loc, kind: MapErrorKind) -> MapError {
        MapError {
            file: file.to_string(),
            line: at.line,
            column: at.column,
            field: at.field.map(String::into_boxed_str),
            kind,
        }
    }
}

/// Where an item of a map file sits.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Loc {
    line: usize,
    column: Option<u32>,
    field: Option<String>,
}

impl Loc {
    fn line(line: usize) -> Loc {
        Loc {
            line,
            column: None,
            field: None,
        }
    }
}

/// One `NAME = ADDRESS [ENCODING]` of either file format, with where each part sits.
#[derive(Debug)]
struct Item {
    name: (String, Loc),
    address: (String, Loc),
    encoding: Option<(String, Loc)>,
}

fn read_map(path: &Path) -> Result<(String, String), MapError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| MapError::at(&file, Loc::line(0), MapErrorKind::Io(e.to_string())))?;
    Ok((text, file))
}

/// What is wrong with a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapErrorKind {
    #[error("expected `NAME = ADDRESS [ENCODING]`, found `{0}`")]
    Syntax(String),
    #[error("unknown register name `{0}`")]
    UnknownName(String),
    #[error("bad address `{0}`: expected 0x0000–0xFFFF in hex (0x…) or decimal")]
    BadNumber(String),
    #[error("bad encoding `{0}`: expected float32[:ORDER], int16:SCALE or uint32:SCALE[:ORDER]")]
    BadEncoding(String),
    #[error("`{name}` is already defined on line {first}")]
    Duplicate { name: String, first: usize },
    #[error("`{name}` at 0x{address:04X} overlaps `{other}` (line {other_line})")]
    Overlap {
        name: String,
        address: u16,
        other: String,
        other_line: usize,
    },
    #[error("`{name}` is a 32-bit value and must start at an even address, not 0x{address:04X}")]
    OddAlignment { name: String, address: u16 },
    #[error("`{name}` at 0x{address:04X} runs past register 0xFFFF")]
    PastEnd { name: String, address: u16 },
    #[error("the map defines no registers")]
    Empty,
    #[error("cannot read the file: {0}")]
    Io(String),
    /// A YAML map that is not YAML, or not a mapping of names to addresses.
    #[error("{0}")]
    Yaml(String),
}

impl RegisterMap {
    /// The documented default map with `options`' encodings.
    pub fn default_map(options: MapOptions) -> RegisterMap {
        let entries = Point::all()
            .iter()
            .map(|&point| Entry {
                point,
                address: point.default_address(),
                encoding: options.encoding_of(point),
            })
            .collect();
        // The default map is checked by tests to be valid.
        Self::build(entries)
    }

    /// Build from entries known not to overlap.
    fn build(mut entries: Vec<Entry>) -> RegisterMap {
        entries.sort_by_key(|e| e.address);
        let base = entries.first().map_or(0, |e| e.address);
        let end = entries.iter().map(Entry::last).max().unwrap_or(0);
        let len = (end + 1).saturating_sub(u32::from(base)) as usize;
        let mut index = vec![0_u16; len];
        for (i, e) in entries.iter().enumerate() {
            for a in u32::from(e.address)..=e.last() {
                index[(a - u32::from(base)) as usize] = i as u16 + 1;
            }
        }
        RegisterMap {
            entries,
            base,
            index,
        }
    }

    /// Parse `register_map.conf` text: `NAME = ADDRESS [ENCODING]` lines, `#` comments and
    /// blank lines. Only the names listed are mapped. `ENCODING` overrides the map's analog
    /// encoding for that point: `float32[:abcd|cdab|badc|dcba]`, `int16:SCALE`,
    /// `uint32:SCALE[:ORDER]`. `file` is used in error messages.
    pub fn parse_conf(
        text: &str,
        file: &str,
        options: MapOptions,
    ) -> Result<RegisterMap, MapError> {
        let mut items = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let syntax =
                || MapError::at(file, Loc::line(line_no), MapErrorKind::Syntax(line.into()));
            let Some((name, rest)) = line.split_once('=') else {
                return Err(syntax());
            };
            let name = name.trim();
            let mut words = rest.split_whitespace();
            let (Some(number), enc, None) = (words.next(), words.next(), words.next()) else {
                return Err(syntax());
            };
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(syntax());
            }
            let at = Loc::line(line_no);
            items.push(Item {
                name: (name.to_string(), at.clone()),
                address: (number.to_string(), at.clone()),
                encoding: enc.map(|e| (e.to_string(), at)),
            });
        }
        Self::from_items(items, file, options)
    }

    /// Validate items (from either file format) in file order and build the map.
    fn from_items(
        items: Vec<Item>,
        file: &str,
        options: MapOptions,
    ) -> Result<RegisterMap, MapError> {
        let err = |at: &Loc, kind: MapErrorKind| MapError::at(file, at.clone(), kind);
        // (entry, line, name)
        let mut seen: Vec<(Entry, usize, String)> = Vec::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for Item {
            name: (name, name_at),
            address: (number, address_at),
            encoding: enc,
        } in items
        {
            let point = Point::from_name(&name)
                .ok_or_else(|| err(&name_at, MapErrorKind::UnknownName(name.clone())))?;
            let address = parse_address(&number)
                .ok_or_else(|| err(&address_at, MapErrorKind::BadNumber(number.clone())))?;
            let encoding = match enc {
                None => options.encoding_of(point),
                Some((e, at)) if point.kind() == Kind::Bits => {
                    return Err(err(&at, MapErrorKind::BadEncoding(e)))
                }
                Some((e, at)) => PointEncoding::Value(
                    parse_encoding(&e).ok_or_else(|| err(&at, MapErrorKind::BadEncoding(e)))?,
                ),
            };
            if let Some(&first) = by_name.get(&name) {
                return Err(err(&name_at, MapErrorKind::Duplicate { name, first }));
            }
            let entry = Entry {
                point,
                address,
                encoding,
            };
            if entry.registers() == 2 && address % 2 == 1 {
                return Err(err(
                    &address_at,
                    MapErrorKind::OddAlignment { name, address },
                ));
            }
            if entry.last() > u32::from(u16::MAX) {
                return Err(err(&address_at, MapErrorKind::PastEnd { name, address }));
            }
            if let Some((_, other_line, other_name)) = seen.iter().find(|(o, _, _)| {
                u32::from(o.address) <= entry.last() && u32::from(entry.address) <= o.last()
            }) {
                return Err(err(
                    &address_at,
                    MapErrorKind::Overlap {
                        name,
                        address,
                        other: other_name.clone(),
                        other_line: *other_line,
                    },
                ));
            }
            by_name.insert(name.clone(), name_at.line);
            seen.push((entry, name_at.line, name));
        }
        if seen.is_empty() {
            return Err(MapError::at(file, Loc::line(0), MapErrorKind::Empty));
        }
        Ok(Self::build(seen.into_iter().map(|(e, _, _)| e).collect()))
    }

    /// Parse a YAML register map: a mapping from register name to its address, or to
    /// `{ address: ADDRESS, encoding: ENCODING }` — the same names, numbers, encodings and
    /// checks as `register_map.conf`, e.g.
    ///
    /// ```yaml
    /// VOLTAGE_L1_REG: 0x0024
    /// VOLTAGE_L2_REG: { address: 0x0026, encoding: "float32:cdab" }
    /// ```
    ///
    /// Errors name `file:line:column` and the field (`VOLTAGE_L2_REG.address`).
    pub fn parse_yaml(
        text: &str,
        file: &str,
        options: MapOptions,
    ) -> Result<RegisterMap, MapError> {
        let items = yaml_map::items(text)
            .map_err(|(at, message)| MapError::at(file, at, MapErrorKind::Yaml(message)))?;
        if items.is_empty() {
            return Err(MapError::at(file, Loc::line(0), MapErrorKind::Empty));
        }
        Self::from_items(items, file, options)
    }

    /// Read and parse a YAML register map file ([`RegisterMap::parse_yaml`]).
    pub fn load_yaml(path: &Path, options: MapOptions) -> Result<RegisterMap, MapError> {
        let (text, file) = read_map(path)?;
        Self::parse_yaml(&text, &file, options)
    }

    /// Read a register map file, YAML for `.yaml` / `.yml`, else `register_map.conf` syntax.
    pub fn load(path: &Path, options: MapOptions) -> Result<RegisterMap, MapError> {
        let yaml = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
        if yaml {
            Self::load_yaml(path, options)
        } else {
            Self::load_conf(path, options)
        }
    }

    /// Read and parse a `register_map.conf` file.
    pub fn load_conf(path: &Path, options: MapOptions) -> Result<RegisterMap, MapError> {
        let (text, file) = read_map(path)?;
        Self::parse_conf(&text, &file, options)
    }

    /// Entries in address order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry of `point`, if mapped.
    pub fn entry(&self, point: Point) -> Option<&Entry> {
        self.entries.iter().find(|e| e.point == point)
    }

    /// Address of `point`, if mapped.
    pub fn address(&self, point: Point) -> Option<u16> {
        self.entry(point).map(|e| e.address)
    }

    /// The entry and offset covering register `address`.
    #[inline]
    pub fn slot(&self, address: u16) -> Option<Slot> {
        let i = usize::from(address.checked_sub(self.base)?);
        match *self.index.get(i)? {
            0 => None,
            n => {
                let entry = usize::from(n - 1);
                Some(Slot {
                    entry,
                    offset: address - self.entries[entry].address,
                })
            }
        }
    }

    /// The map as `register_map.conf` text (round-trips through [`RegisterMap::parse_conf`]).
    pub fn to_conf(&self) -> String {
        let mut out = String::from("# gridloop register map: NAME = ADDRESS [ENCODING]\n");
        for e in &self.entries {
            let enc = match e.encoding {
                PointEncoding::Uint16 => String::new(),
                PointEncoding::Value(v) => format!(" {}", encoding_name(v)),
            };
            out.push_str(&format!("{} = 0x{:04X}{enc}\n", e.point.name(), e.address));
        }
        out
    }
}

/// `0x0024`, `0X24` or decimal `36`.
fn parse_address(s: &str) -> Option<u16> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u16::from_str_radix(hex, 16).ok()
    } else {
        s.parse().ok()
    }
}

/// Word order from its name (`abcd`, `cdab`, `badc`, `dcba`, any case).
pub fn parse_word_order(s: &str) -> Option<WordOrder> {
    match s.to_ascii_lowercase().as_str() {
        "abcd" => Some(WordOrder::Abcd),
        "cdab" => Some(WordOrder::Cdab),
        "badc" => Some(WordOrder::Badc),
        "dcba" => Some(WordOrder::Dcba),
        _ => None,
    }
}

/// `float32[:ORDER]`, `int16:SCALE`, `uint32:SCALE[:ORDER]`.
pub fn parse_encoding(s: &str) -> Option<RegisterEncoding> {
    let mut parts = s.split(':');
    let kind = parts.next()?;
    let scale = |p: Option<&str>| -> Option<f64> {
        let v: f64 = p?.parse().ok()?;
        (v.is_finite() && v > 0.0).then_some(v)
    };
    let enc = match kind.to_ascii_lowercase().as_str() {
        "float32" => RegisterEncoding::Float32(match parts.next() {
            None => WordOrder::Abcd,
            Some(o) => parse_word_order(o)?,
        }),
        "int16" => RegisterEncoding::Int16 {
            scale: scale(parts.next())?,
        },
        "uint32" => RegisterEncoding::Uint32 {
            scale: scale(parts.next())?,
            word_order: match parts.next() {
                None => WordOrder::Abcd,
                Some(o) => parse_word_order(o)?,
            },
        },
        _ => return None,
    };
    parts.next().is_none().then_some(enc)
}

fn order_name(o: WordOrder) -> &'static str {
    match o {
        WordOrder::Abcd => "abcd",
        WordOrder::Cdab => "cdab",
        WordOrder::Badc => "badc",
        WordOrder::Dcba => "dcba",
    }
}

/// The conf spelling of an encoding (inverse of [`parse_encoding`]).
pub fn encoding_name(enc: RegisterEncoding) -> String {
    match enc {
        RegisterEncoding::Float32(o) => format!("float32:{}", order_name(o)),
        RegisterEncoding::Int16 { scale } => format!("int16:{scale}"),
        RegisterEncoding::Uint32 { scale, word_order } => {
            format!("uint32:{scale}:{}", order_name(word_order))
        }
    }
}

/// The YAML register map: yaml-rust2's marked events walked into [`Item`]s, so every error
/// has a position (serde would collapse duplicate keys and lose positions).
mod yaml_map {
    use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
    use yaml_rust2::scanner::Marker;

    use super::{Item, Loc};

    type Problem = (Loc, String);

    #[derive(Default)]
    struct Events(Vec<(Event, Marker)>);

    impl MarkedEventReceiver for Events {
        fn on_event(&mut self, ev: Event, mark: Marker) {
            self.0.push((ev, mark));
        }
    }

    fn loc(m: &Marker, field: Option<&str>) -> Loc {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Loc {
            line: m.line().max(1),
            column: Some(u32::try_from(m.col() + 1).unwrap_or(u32::MAX)),
            field: field.map(str::to_string),
        }
    }

    /// The map's items in file order.
    pub(super) fn items(text: &str) -> Result<Vec<Item>, Problem> {
        let mut events = Events::default();
        Parser::new_from_str(text)
            .load(&mut events, true)
            .map_err(|e| (loc(e.marker(), None), format!("invalid YAML: {}", e.info())))?;
        let mut it = events.0.into_iter().peekable();
        let mut items = Vec::new();
        let mut documents = 0;
        while let Some((ev, mark)) = it.next() {
            match ev {
                Event::MappingStart(..) => {
                    documents += 1;
                    if documents > 1 {
                        return Err((loc(&mark, None), "expected one YAML document".into()));
                    }
                    mapping(&mut it, &mut items)?;
                }
                Event::Scalar(ref v, ..) if v.is_empty() || v == "~" => {} // empty document
                Event::Scalar(..) | Event::SequenceStart(..) | Event::Alias(_) => {
                    return Err((
                        loc(&mark, None),
                        "expected a mapping of register names to addresses".into(),
                    ))
                }
                _ => {}
            }
        }
        Ok(items)
    }

    type Stream = std::iter::Peekable<std::vec::IntoIter<(Event, Marker)>>;

    /// Entries of the top-level mapping, up to its end.
    fn mapping(it: &mut Stream, items: &mut Vec<Item>) -> Result<(), Problem> {
        loop {
            let Some((ev, mark)) = it.next() else {
                return Ok(());
            };
            let name = match ev {
                Event::MappingEnd => return Ok(()),
                Event::Scalar(name, ..) => name,
                _ => return Err((loc(&mark, None), "expected a register name".into())),
            };
            let name_at = loc(&mark, Some(&name));
            let Some((value, vmark)) = it.next() else {
                return Err((name_at, "missing address".into()));
            };
            let item = match value {
                Event::Scalar(address, ..) => Item {
                    name: (name.clone(), name_at),
                    address: (address, loc(&vmark, Some(&name))),
                    encoding: None,
                },
                Event::MappingStart(..) => {
                    let (address, encoding) = fields(it, &name, &vmark)?;
                    Item {
                        name: (name, name_at),
                        address,
                        encoding,
                    }
                }
                _ => {
                    return Err((
                        loc(&vmark, Some(&name)),
                        "expected an address or `{ address, encoding }`".into(),
                    ))
                }
            };
            items.push(item);
        }
    }

    type Part = (String, Loc);

    /// `{ address: …, encoding: … }` of register `name`, up to its end.
    fn fields(
        it: &mut Stream,
        name: &str,
        start: &Marker,
    ) -> Result<(Part, Option<Part>), Problem> {
        let mut address: Option<Part> = None;
        let mut encoding: Option<Part> = None;
        while let Some((ev, mark)) = it.next() {
            let key = match ev {
                Event::MappingEnd => break,
                Event::Scalar(key, ..) => key,
                _ => {
                    return Err((
                        loc(&mark, Some(name)),
                        "expected `address` or `encoding`".into(),
                    ))
                }
            };
            let field = format!("{name}.{key}");
            let key_at = loc(&mark, Some(&field));
            let value = match it.next() {
                Some((Event::Scalar(v, ..), m)) => (v, loc(&m, Some(&field))),
                Some((_, m)) => return Err((loc(&m, Some(&field)), "expected a scalar".into())),
                None => return Err((key_at, "missing value".into())),
            };
            let slot = match key.as_str() {
                "address" => &mut address,
                "encoding" => &mut encoding,
                _ => {
                    return Err((
                        key_at,
                        format!("unknown field `{key}` (expected `address` or `encoding`)"),
                    ))
                }
            };
            if slot.is_some() {
                return Err((key_at, format!("`{key}` is given twice")));
            }
            *slot = Some(value);
        }
        let address =
            address.ok_or_else(|| (loc(start, Some(name)), "missing `address`".into()))?;
        Ok((address, encoding))
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RegisterMap, MapError> {
        RegisterMap::parse_conf(text, "register_map.conf", MapOptions::default())
    }

    fn kind(text: &str) -> (usize, MapErrorKind) {
        let e = parse(text).unwrap_err();
        assert_eq!(e.file, "register_map.conf");
        (e.line, e.kind)
    }

    #[test]
    fn default_map_follows_the_spec_and_is_valid() {
        let map = RegisterMap::default_map(MapOptions::default());
        assert_eq!(map.entries().len(), Point::all().len());
        assert_eq!(map.address(Point::Voltage(Phase::L1)), Some(0x0024));
        assert_eq!(map.address(Point::Voltage(Phase::L2)), Some(0x0026));
        assert_eq!(map.address(Point::Voltage(Phase::L3)), Some(0x0028));
        // Sorted, non-overlapping, 32-bit values even-aligned.
        for w in map.entries().windows(2) {
            assert!(w[0].last() < u32::from(w[1].address), "{w:?}");
        }
        for e in map.entries() {
            if e.registers() == 2 {
                assert_eq!(e.address % 2, 0, "{e:?}");
            }
        }
        // The measurement block 0x0024..=0x0051 and the settings block are gap-free.
        for a in 0x0024..=0x0051 {
            assert!(map.slot(a).is_some(), "0x{a:04X}");
        }
        for a in 0x0100..=0x0110 {
            assert!(map.slot(a).is_some(), "0x{a:04X}");
        }
        assert_eq!(map.address(Point::CalCount), Some(0x010C));
        assert_eq!(map.address(Point::CalReference), Some(0x010E));
        assert_eq!(map.address(Point::CalCommand), Some(0x0110));
        assert_eq!(
            map.entry(Point::CalCommand).unwrap().encoding,
            PointEncoding::Uint16
        );
        assert_eq!(map.entry(Point::CalCount).unwrap().registers(), 2);
        assert_eq!(Point::CalCount.access(), Access::Read);
        assert_eq!(map.slot(0x0023), None);
        assert_eq!(map.slot(0x0052), None);
        assert_eq!(map.slot(0x0111), None);
        assert_eq!(map.slot(0xFFFF), None);
        assert_eq!(
            map.slot(0x0027),
            Some(Slot {
                entry: 1,
                offset: 1
            })
        );
        // Names are unique and round-trip.
        for p in Point::all() {
            assert_eq!(Point::from_name(&p.name()), Some(*p));
        }
        assert_eq!(parse(&map.to_conf()).unwrap(), map);
    }

    #[test]
    fn conf_with_comments_blank_lines_decimal_and_encodings() {
        let map = parse(
            "# a meter that keeps only voltages\n\n\
             VOLTAGE_L1_REG = 0x0024   # float32 ABCD by default\n\
             VOLTAGE_L2_REG=38 int16:0.1\n\
             VOLTAGE_L3_REG = 0X0030 float32:cdab\n\
             STATUS_REG = 0x0027\n",
        )
        .unwrap();
        assert_eq!(map.entries().len(), 4);
        let l2 = map.entry(Point::Voltage(Phase::L2)).unwrap();
        assert_eq!(l2.address, 38);
        assert_eq!(
            l2.encoding,
            PointEncoding::Value(RegisterEncoding::Int16 { scale: 0.1 })
        );
        assert_eq!(
            map.entry(Point::Voltage(Phase::L3)).unwrap().encoding,
            PointEncoding::Value(RegisterEncoding::Float32(WordOrder::Cdab))
        );
        assert_eq!(map.address(Point::Frequency), None);
        // A 16-bit value may sit at an odd address.
        assert_eq!(map.address(Point::Status), Some(0x0027));
    }

    #[test]
    fn unknown_name_names_the_line() {
        let (line, k) = kind("VOLTAGE_L1_REG = 0x0024\n\nVOLTAGE_L4_REG = 0x0026\n");
        assert_eq!(line, 3);
        assert_eq!(k, MapErrorKind::UnknownName("VOLTAGE_L4_REG".into()));
        let e = parse("# x\nFOO = 1\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "register_map.conf:2: unknown register name `FOO`"
        );
    }

    #[test]
    fn bad_numbers() {
        for bad in ["0x10000", "0xZZ", "-1", "65536", "0x", "2.5"] {
            let (line, k) = kind(&format!("# c\nVOLTAGE_L1_REG = {bad}\n"));
            assert_eq!(line, 2);
            assert_eq!(k, MapErrorKind::BadNumber(bad.into()), "{bad}");
        }
    }

    #[test]
    fn duplicate_name() {
        let (line, k) = kind("VOLTAGE_L1_REG = 0x0024\nVOLTAGE_L1_REG = 0x0040\n");
        assert_eq!(line, 2);
        assert_eq!(
            k,
            MapErrorKind::Duplicate {
                name: "VOLTAGE_L1_REG".into(),
                first: 1
            }
        );
    }

    #[test]
    fn overlapping_registers() {
        // L2 at 0x0025 would be odd; put a 16-bit value inside a 32-bit one instead.
        let (line, k) = kind("VOLTAGE_L1_REG = 0x0024\n# gap\nSTATUS_REG = 0x0025\n");
        assert_eq!(line, 3);
        assert_eq!(
            k,
            MapErrorKind::Overlap {
                name: "STATUS_REG".into(),
                address: 0x0025,
                other: "VOLTAGE_L1_REG".into(),
                other_line: 1
            }
        );
        // Two 32-bit values at the same address.
        let (line, k) = kind("VOLTAGE_L1_REG = 0x0024\nVOLTAGE_L2_REG = 0x0024\n");
        assert_eq!(line, 2);
        assert!(matches!(k, MapErrorKind::Overlap { .. }));
        // Adjacent is fine.
        assert!(parse("VOLTAGE_L1_REG = 0x0024\nSTATUS_REG = 0x0026\n").is_ok());
    }

    #[test]
    fn odd_alignment_of_32_bit_values() {
        let (line, k) = kind("\nVOLTAGE_L1_REG = 0x0025\n");
        assert_eq!(line, 2);
        assert_eq!(
            k,
            MapErrorKind::OddAlignment {
                name: "VOLTAGE_L1_REG".into(),
                address: 0x0025
            }
        );
        // As int16 it is one register and may be odd.
        assert!(parse("VOLTAGE_L1_REG = 0x0025 int16:0.1\n").is_ok());
        // A 32-bit value at 0xFFFE fits; counters are uint32 too.
        assert!(parse("TRIP_COUNT_REG = 0xFFFE\n").is_ok());
        assert_eq!(
            kind("TRIP_COUNT_REG = 0xFFFF\n").1,
            MapErrorKind::OddAlignment {
                name: "TRIP_COUNT_REG".into(),
                address: 0xFFFF
            }
        );
    }

    #[test]
    fn syntax_encoding_and_empty_errors() {
        assert!(matches!(
            kind("VOLTAGE_L1_REG 0x0024\n").1,
            MapErrorKind::Syntax(_)
        ));
        assert!(matches!(kind("= 0x0024\n").1, MapErrorKind::Syntax(_)));
        assert!(matches!(
            kind("VOLTAGE_L1_REG = 0x0024 float32 extra\n").1,
            MapErrorKind::Syntax(_)
        ));
        for bad in [
            "float64",
            "int16",
            "int16:0",
            "int16:-1",
            "float32:xyzw",
            "uint32:1:abcd:x",
        ] {
            assert_eq!(
                kind(&format!("VOLTAGE_L1_REG = 0x0024 {bad}\n")).1,
                MapErrorKind::BadEncoding(bad.into())
            );
        }
        // Raw-bit registers take no encoding.
        assert!(matches!(
            kind("STATUS_REG = 0x0010 float32\n").1,
            MapErrorKind::BadEncoding(_)
        ));
        assert_eq!(kind("# nothing\n\n").1, MapErrorKind::Empty);
        let e = RegisterMap::load_conf(Path::new("/nonexistent/map.conf"), MapOptions::default())
            .unwrap_err();
        assert!(matches!(e.kind, MapErrorKind::Io(_)));
        assert!(e
            .to_string()
            .starts_with("/nonexistent/map.conf:0: cannot read"));
    }

    #[test]
    fn options_set_analog_and_counter_encodings() {
        let map = RegisterMap::default_map(MapOptions::with_analog(RegisterEncoding::Float32(
            WordOrder::Cdab,
        )));
        assert_eq!(
            map.entry(Point::Frequency).unwrap().encoding,
            PointEncoding::Value(RegisterEncoding::Float32(WordOrder::Cdab))
        );
        assert_eq!(
            map.entry(Point::TripCount).unwrap().encoding,
            PointEncoding::Value(RegisterEncoding::Uint32 {
                scale: 1.0,
                word_order: WordOrder::Cdab
            })
        );
        assert_eq!(
            map.entry(Point::Status).unwrap().encoding,
            PointEncoding::Uint16
        );
        // int16 analog values take one register at the same addresses (the second is unmapped).
        let map = RegisterMap::default_map(MapOptions::with_analog(RegisterEncoding::Int16 {
            scale: 0.1,
        }));
        assert_eq!(map.entry(Point::Voltage(Phase::L1)).unwrap().registers(), 1);
        assert_eq!(map.slot(0x0025), None);
    }

    fn yaml_err(text: &str) -> MapError {
        let e = RegisterMap::parse_yaml(text, "map.yaml", MapOptions::default()).unwrap_err();
        assert_eq!(e.file, "map.yaml");
        e
    }

    /// (line, column, field, kind) of a YAML error.
    fn yaml_at(text: &str) -> (usize, Option<u32>, Option<String>, MapErrorKind) {
        let e = yaml_err(text);
        (e.line, e.column, e.field.map(String::from), e.kind)
    }

    #[test]
    fn yaml_map_equals_the_conf_map() {
        let yaml = "# voltages\nVOLTAGE_L1_REG: 0x0024\nVOLTAGE_L2_REG: { address: 38, encoding: \"int16:0.1\" }\n\
                    VOLTAGE_L3_REG:\n  address: 0X0030\n  encoding: float32:cdab\nSTATUS_REG: 0x0027\n";
        let conf = "VOLTAGE_L1_REG = 0x0024\nVOLTAGE_L2_REG=38 int16:0.1\n\
                    VOLTAGE_L3_REG = 0X0030 float32:cdab\nSTATUS_REG = 0x0027\n";
        let a = RegisterMap::parse_yaml(yaml, "map.yaml", MapOptions::default()).unwrap();
        assert_eq!(a, parse(conf).unwrap());
        assert_eq!(a.entries().len(), 4);
    }

    #[test]
    fn yaml_errors_name_line_column_and_field() {
        // Unknown name: at the key.
        assert_eq!(
            yaml_at("VOLTAGE_L1_REG: 0x0024\n  \nVOLTAGE_L4_REG: 0x0026\n"),
            (
                3,
                Some(1),
                Some("VOLTAGE_L4_REG".into()),
                MapErrorKind::UnknownName("VOLTAGE_L4_REG".into())
            )
        );
        // Bad address: at the value, in both forms.
        assert_eq!(
            yaml_at("VOLTAGE_L1_REG: 0x10000\n"),
            (
                1,
                Some(17),
                Some("VOLTAGE_L1_REG".into()),
                MapErrorKind::BadNumber("0x10000".into())
            )
        );
        let e = yaml_err("VOLTAGE_L1_REG: 0x0024\nVOLTAGE_L2_REG: { address: -1 }\n");
        assert_eq!((e.line, e.column), (2, Some(28)));
        assert_eq!(e.field.as_deref(), Some("VOLTAGE_L2_REG.address"));
        assert_eq!(
            e.to_string(),
            "map.yaml:2:28: VOLTAGE_L2_REG.address: bad address `-1`: expected 0x0000–0xFFFF in hex (0x…) or decimal"
        );
        // Duplicate key (serde would keep the last silently).
        assert_eq!(
            yaml_at("VOLTAGE_L1_REG: 0x0024\nVOLTAGE_L1_REG: 0x0040\n"),
            (
                2,
                Some(1),
                Some("VOLTAGE_L1_REG".into()),
                MapErrorKind::Duplicate {
                    name: "VOLTAGE_L1_REG".into(),
                    first: 1
                }
            )
        );
        // Overlap: at the address.
        assert_eq!(
            yaml_at("VOLTAGE_L1_REG: 0x0024\nSTATUS_REG:   0x0025\n"),
            (
                2,
                Some(15),
                Some("STATUS_REG".into()),
                MapErrorKind::Overlap {
                    name: "STATUS_REG".into(),
                    address: 0x25,
                    other: "VOLTAGE_L1_REG".into(),
                    other_line: 1
                }
            )
        );
        // 32-bit alignment.
        assert_eq!(
            yaml_at("TRIP_COUNT_REG:\n  address: 0x0031\n").3,
            MapErrorKind::OddAlignment {
                name: "TRIP_COUNT_REG".into(),
                address: 0x31
            }
        );
        assert_eq!(yaml_at("TRIP_COUNT_REG:\n  address: 0x0031\n").0, 2);
        // Past the end.
        assert!(matches!(
            yaml_at("VOLTAGE_L1_REG: { address: 0xFFFF, encoding: \"uint32:1\" }\n").3,
            MapErrorKind::OddAlignment { .. }
        ));
        // Encoding: bad spelling, and any encoding on a raw-bit register.
        let e = yaml_err("VOLTAGE_L1_REG:\n  address: 0x0024\n  encoding: float64\n");
        assert_eq!((e.line, e.column), (3, Some(13)));
        assert_eq!(e.field.as_deref(), Some("VOLTAGE_L1_REG.encoding"));
        assert_eq!(e.kind, MapErrorKind::BadEncoding("float64".into()));
        assert_eq!(
            yaml_at("STATUS_REG: { address: 0x10, encoding: float32 }\n").3,
            MapErrorKind::BadEncoding("float32".into())
        );
    }

    #[test]
    fn yaml_structure_errors() {
        let cases: [(&str, usize, &str); 8] = [
            ("VOLTAGE_L1_REG: [0x24]\n", 1, "expected an address"),
            ("- VOLTAGE_L1_REG\n", 1, "expected a mapping"),
            (
                "VOLTAGE_L1_REG: { adress: 0x24 }\n",
                1,
                "unknown field `adress`",
            ),
            (
                "VOLTAGE_L1_REG: { encoding: float32 }\n",
                1,
                "missing `address`",
            ),
            (
                "VOLTAGE_L1_REG: { address: 1, address: 2 }\n",
                1,
                "given twice",
            ),
            (
                "VOLTAGE_L1_REG: { address: { x: 1 } }\n",
                1,
                "expected a scalar",
            ),
            ("a: 1\n---\nb: 2\n", 3, "one YAML document"),
            ("VOLTAGE_L1_REG: [0x24\nX: 1\n", 2, "invalid YAML"),
        ];
        for (text, line, message) in cases {
            let e = yaml_err(text);
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.column.is_some(), "{text:?}: {e}");
            assert!(
                matches!(&e.kind, MapErrorKind::Yaml(m) if m.contains(message)),
                "{text:?}: {e}"
            );
        }
        assert_eq!(yaml_err("# nothing\n").kind, MapErrorKind::Empty);
        assert_eq!(yaml_err("{}\n").kind, MapErrorKind::Empty);
        assert_eq!(yaml_err("").kind, MapErrorKind::Empty);
    }

    #[test]
    fn load_chooses_the_format_by_extension() {
        let dir = std::env::temp_dir().join(format!("gridloop-map-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let map = RegisterMap::default_map(MapOptions::default());
        let conf = dir.join("register_map.conf");
        std::fs::write(&conf, map.to_conf()).unwrap();
        assert_eq!(
            RegisterMap::load(&conf, MapOptions::default()).unwrap(),
            map
        );
        for name in ["map.yaml", "map.YML"] {
            let yaml = dir.join(name);
            std::fs::write(&yaml, "VOLTAGE_L1_REG: 0x0024\n").unwrap();
            let m = RegisterMap::load(&yaml, MapOptions::default()).unwrap();
            assert_eq!(m.entries().len(), 1);
            // The same text as conf is a syntax error: the extension decided.
            std::fs::write(&yaml, "VOLTAGE_L1_REG = 0x0024\n").unwrap();
            let e = RegisterMap::load(&yaml, MapOptions::default()).unwrap_err();
            assert!(matches!(e.kind, MapErrorKind::Yaml(_)), "{e}");
        }
        let e = RegisterMap::load(&dir.join("missing.yaml"), MapOptions::default()).unwrap_err();
        assert!(matches!(e.kind, MapErrorKind::Io(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
