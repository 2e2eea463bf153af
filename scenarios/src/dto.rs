//! Version 1 of the scenario file format as serde DTOs: one struct per YAML mapping, unknown
//! keys rejected, no `untagged`/`flatten`. Optional fields are `Option` and get their documented
//! defaults in `lower`, which also checks ranges; the DTOs only fix the shape.
//!
//! Doc comments here become the descriptions of the JSON Schema, so they state units and
//! defaults.

use std::collections::BTreeMap;
use std::fmt;

use schemars::gen::SchemaGenerator;
use schemars::schema::Schema;
use schemars::JsonSchema;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Any YAML scalar, kept as written so validation can explain what is wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Str(s) => write!(f, "`{s}`"),
            Scalar::Num(n) => write!(f, "{n}"),
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Null => f.write_str("null"),
        }
    }
}

struct ScalarVisitor(&'static str);

impl Visitor<'_> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Num(v as f64))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Num(v as f64))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Num(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_string()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
}

fn schema_from(value: serde_json::Value) -> Schema {
    serde_json::from_value(value).unwrap_or(Schema::Bool(true))
}

macro_rules! scalar_newtype {
    ($(#[$m:meta])* $name:ident, $expecting:literal, $schema:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name(pub Scalar);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(ScalarVisitor($expecting)).map($name)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> String {
                stringify!($name).to_string()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                schema_from($schema)
            }
        }
    };
}

scalar_newtype!(
    /// A duration with a unit: `250ms`, `1.5 s`, `2min`, `8h`, `10cycles` (of the nominal
    /// frequency), `50us`.
    DurationDto,
    "a duration with a unit, such as `40s` or `10cycles`",
    serde_json::json!({
        "type": "string",
        "pattern": r"^\s*[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?\s*(us|µs|ms|s|min|h|cycles?)\s*$",
        "description": "A duration with a unit: us, ms, s, min, h or cycles (of the nominal frequency), e.g. `40s`, `250ms`, `10cycles`.",
        "examples": ["40s", "250ms", "10cycles", "1.5 s", "2min"]
    })
);

scalar_newtype!(
    /// The phase system: 1 (single phase, L1), 2 or `split` (120/240 V split phase, L1 and
    /// L2 at 180°), 3 (three phase).
    PhaseSystemDto,
    "1, 2, 3 or `split`",
    serde_json::json!({
        "description": "Phase system: 1 = single phase (L1), 2 or \"split\" = split phase (L1, L2 at 180°), 3 = three phase (default 3).",
        "oneOf": [
            { "type": "integer", "enum": [1, 2, 3] },
            { "type": "string", "enum": ["single", "split", "three"] }
        ]
    })
);

scalar_newtype!(
    /// A tolerance: a number (absolute) or a string with `%` (relative).
    ToleranceDto,
    "a number or a percentage such as `0.5%`",
    serde_json::json!({
        "description": "A number (absolute, in the quantity's unit) or a percentage string such as \"0.5%\".",
        "oneOf": [
            { "type": "number", "minimum": 0 },
            { "type": "string", "pattern": r"^\s*[0-9]*\.?[0-9]+\s*%\s*$" }
        ]
    })
);

/// A phase name, `L1`, `L2` or `L3`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct PhaseName(pub String);

impl JsonSchema for PhaseName {
    fn schema_name() -> String {
        "PhaseName".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schema_from(serde_json::json!({ "type": "string", "enum": ["L1", "L2", "L3"] }))
    }
}

/// A scenario file, format version 1.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "gridloop scenario (schema 1)")]
pub struct ScenarioDto {
    /// Format version; must be 1.
    pub schema: u64,
    /// Unique, non-empty scenario name.
    pub name: String,
    /// Free text (default "").
    pub description: Option<String>,
    /// Tags for `--filter` (default []).
    pub tags: Option<Vec<String>>,
    /// Seed of every random part (noise, jitter, loss); default 0.
    pub seed: Option<u64>,
    /// Length of the run.
    pub duration: DurationDto,
    pub grid: GridDto,
    /// IEC 61000-4-30 event detection thresholds.
    pub pq: Option<PqDto>,
    pub head_end: Option<HeadEndDto>,
    /// Meter groups (at least one).
    pub meters: Vec<MeterDto>,
    /// The disturbance and network timeline (default []).
    pub events: Option<Vec<EventDto>>,
    /// What the run must show (default []).
    pub expect: Option<Vec<ExpectDto>>,
}

/// The supply.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GridDto {
    /// Nominal RMS voltage per channel against neutral, V (90–480).
    pub nominal: f64,
    /// Nominal frequency, Hz: 50 or 60 (default 60).
    pub frequency: Option<f64>,
    pub phases: Option<PhaseSystemDto>,
    /// Synthesis sample rate for `waveform` meters, Hz (default 12800, ≥ 1).
    pub sample_rate: Option<f64>,
    /// The load that draws current (needed for power and energy).
    pub load: Option<LoadDto>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadDto {
    /// RMS current per phase at nominal voltage, A (> 0).
    pub current: f64,
    /// Displacement power factor, lagging (0 < pf ≤ 1).
    pub power_factor: f64,
}

/// Event detection thresholds in % of nominal.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PqDto {
    /// Dip threshold, % (default 90).
    pub dip: Option<f64>,
    /// Swell threshold, % (default 110).
    pub swell: Option<f64>,
    /// Interruption threshold, % (default 10).
    pub interruption: Option<f64>,
    /// Hysteresis, % (default 2).
    pub hysteresis: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeadEndDto {
    /// A meter silent for longer than this is stale (default 180s).
    pub stale_after: Option<DurationDto>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FidelityDto {
    /// Sample-level synthesis and measurement.
    Waveform,
    /// Per-half-cycle values from the disturbance envelope; for big fleets.
    Rms,
}

/// A group of identical meters.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MeterDto {
    /// Group name (unique, non-empty); events and expectations refer to it.
    pub group: String,
    /// Number of meters, 1..=1000000 (default 1).
    pub count: Option<u32>,
    /// Substation in MQTT topics (default "sub-01").
    pub substation: Option<String>,
    /// `waveform` (default) or `rms`.
    pub fidelity: Option<FidelityDto>,
    pub thresholds: Option<ThresholdsDto>,
    pub rbe: Option<RbeDto>,
    pub buffer: Option<BufferDto>,
    pub encoding: Option<EncodingDto>,
    pub calibration: Option<CalibrationDto>,
    pub adc: Option<AdcDto>,
    pub link: Option<LinkDto>,
}

/// Trip thresholds (the spec's VOLT_UPPER_LIMIT, VOLT_LOWER_LIMIT, VOLT_HYSTERESIS).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThresholdsDto {
    /// Over-voltage limit, V (default 252.0).
    pub upper: Option<f64>,
    /// Under-voltage limit, V (default 210.0; below `upper`).
    pub lower: Option<f64>,
    /// Hysteresis, V (default 2.0; 0 ≤ h < upper − lower).
    pub hysteresis: Option<f64>,
    /// The condition must hold this long before a trip (default 0s).
    pub min_duration: Option<DurationDto>,
}

/// Report by exception.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RbeDto {
    /// Report when a phase moved by this many volts (default 1.0; 0 = report every reading).
    pub delta: Option<f64>,
    /// Report at least this often (default 60s).
    pub heartbeat: Option<DurationDto>,
    /// Reading interval (default 1s, > 0).
    pub interval: Option<DurationDto>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BufferDto {
    /// Store-and-forward ring capacity in messages (default 4096, ≥ 1).
    pub capacity: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PayloadDto {
    Json,
    Cbor,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RegistersDto {
    Float32,
    Int16,
    Uint32,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WordOrderDto {
    Abcd,
    Cdab,
    Badc,
    Dcba,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncodingDto {
    /// MQTT payload: `json` (default) or `cbor`.
    pub payload: Option<PayloadDto>,
    /// Register encoding: `float32` (default), `int16` or `uint32`.
    pub registers: Option<RegistersDto>,
    /// Word order for float32/uint32: `abcd` (default), `cdab`, `badc`, `dcba`.
    pub word_order: Option<WordOrderDto>,
    /// Volts per LSB for int16/uint32 (default 0.1).
    pub scale: Option<f64>,
}

/// Calibration gain per phase (default 1.0, each 0.5–1.5).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct CalibrationDto {
    pub L1: Option<f64>,
    pub L2: Option<f64>,
    pub L3: Option<f64>,
}

/// ADC quantization (absent = ideal).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdcDto {
    /// Resolution, 8..=24 bits.
    pub bits: u32,
    /// Full scale, V peak (> 0).
    pub full_scale: f64,
}

/// The modelled backhaul of the group (sim mode).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkDto {
    /// One-way latency (default 5ms).
    pub latency: Option<DurationDto>,
    /// Uniform extra latency 0..jitter (default 0ms).
    pub jitter: Option<DurationDto>,
    /// Loss probability per attempt, 0–0.9 (default 0).
    pub loss: Option<f64>,
    /// Retransmission timeout (default 1s, > 0).
    pub retry: Option<DurationDto>,
}

/// One timeline entry: `at` plus exactly one kind key.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventDto {
    /// Onset (before the end of the scenario).
    pub at: DurationDto,
    pub sag: Option<SagDto>,
    pub swell: Option<SwellDto>,
    pub interruption: Option<InterruptionDto>,
    pub harmonics: Option<HarmonicsDto>,
    pub interharmonic: Option<InterharmonicDto>,
    pub flicker: Option<FlickerDto>,
    pub oscillatory_transient: Option<OscillatoryTransientDto>,
    pub impulsive_transient: Option<ImpulsiveTransientDto>,
    pub notch: Option<NotchDto>,
    pub dc_offset: Option<DcOffsetDto>,
    pub noise: Option<NoiseDto>,
    pub frequency: Option<FrequencyDto>,
    pub unbalance: Option<UnbalanceDto>,
    pub thermal_drift: Option<ThermalDriftDto>,
    pub rf_loss: Option<RfLossDto>,
    pub latency: Option<LatencyDto>,
    pub packet_loss: Option<PacketLossDto>,
    pub replay: Option<ReplayDto>,
}

/// The keys of `EventDto` that name a kind, in declaration order.
pub const EVENT_KINDS: [&str; 18] = [
    "sag",
    "swell",
    "interruption",
    "harmonics",
    "interharmonic",
    "flicker",
    "oscillatory_transient",
    "impulsive_transient",
    "notch",
    "dc_offset",
    "noise",
    "frequency",
    "unbalance",
    "thermal_drift",
    "rf_loss",
    "latency",
    "packet_loss",
    "replay",
];

/// Sag: the envelope drops to `residual` pu.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SagDto {
    /// Affected phases (default: every phase of the grid).
    pub phases: Option<Vec<PhaseName>>,
    /// Affected meter groups (default: all).
    pub groups: Option<Vec<String>>,
    /// Residual voltage, pu (0 < r < 1).
    pub residual: f64,
    pub duration: DurationDto,
    /// Slew time of each edge (default 0s).
    pub ramp: Option<DurationDto>,
    /// Start at this point-on-wave angle of L1, degrees (0 ≤ a < 360).
    pub point_on_wave: Option<f64>,
    /// Phase jump while the sag lasts, degrees (default 0, |j| ≤ 180).
    pub phase_jump: Option<f64>,
}

/// Swell: the envelope rises to `magnitude` pu.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SwellDto {
    pub phases: Option<Vec<PhaseName>>,
    pub groups: Option<Vec<String>>,
    /// Magnitude, pu (1 < m ≤ 2).
    pub magnitude: f64,
    pub duration: DurationDto,
    pub ramp: Option<DurationDto>,
    pub point_on_wave: Option<f64>,
    pub phase_jump: Option<f64>,
}

/// Interruption: the envelope drops below 0.1 pu.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InterruptionDto {
    pub phases: Option<Vec<PhaseName>>,
    pub groups: Option<Vec<String>>,
    /// Residual voltage, pu (default 0; 0 ≤ r < 0.1).
    pub residual: Option<f64>,
    pub duration: DurationDto,
    pub ramp: Option<DurationDto>,
    pub point_on_wave: Option<f64>,
}

/// Harmonic content, optionally changing linearly over the duration.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HarmonicsDto {
    pub phases: Option<Vec<PhaseName>>,
    pub groups: Option<Vec<String>>,
    /// Order → magnitude relative to the fundamental (order 2..=50, magnitude 0..=0.5).
    pub orders: BTreeMap<u32, f64>,
    /// Order → phase angle, degrees (default 0).
    pub angles: Option<BTreeMap<u32, f64>>,
    /// Order → magnitude at the end of the duration (harmonics that change over time).
    pub to: Option<BTreeMap<u32, f64>>,
    pub duration: DurationDto,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InterharmonicDto {
    pub phases: Option<Vec<PhaseName>>,
    pub groups: Option<Vec<String>>,
    /// Frequency, Hz (> 0).
    pub frequency: f64,
    /// Magnitude relative to the fundamental (0 < m ≤ 0.5).
    pub magnitude: f64,
    /// Phase angle, degrees (default 0).
    pub angle: Option<f64>,
    pub duration: DurationDto,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlickerShapeDto {
    Sine,
    Square,
}

/// Amplitude modulation.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlickerDto {
    pub phases: Option<Vec<PhaseName>>,
    pub groups: Option<Vec<String>>,
    /// ΔV/V peak to peak (0 < d ≤ 0.2).
    pub depth: f64,
    /// Modulation frequency, Hz (0.05–40).
    pub frequency: f64,
    /// `sine` (default) or `square`.
    pub shape: Option<FlickerShapeDto>,
    pub duration: DurationDto,
}

/// Damped ringing added to the wave.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OscillatoryTransientDto {
    pub phases: Option<Vec<PhaseName>>,
    pub groups: Option<Vec<String>>,
    /// Initial amplitude, pu of nominal peak (0 < m ≤ 8).
    pub magnitude: f64,
    /// Ringing frequency, Hz (> 0).
    pub frequency: f64,
    /// Decay time constant (> 0).
    pub tau: DurationDto,
    /// Phase angle, degrees (default 0).
    pub angle: Option<f64>,
    pub duration: DurationDto,
}

/// Double-exponential impulse added to the wave.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImpulsiveTransientDto {
    pub phases: Option<Vec<PhaseName>>,
    pub groups: Option<Vec<String>>,
    /// Peak, pu of nominal peak (≠ 0, |m| ≤ 10; negative pulls the wave down).
    pub magnitude: f64,
    /// Rise time constant (default 0.1ms, > 0).
    pub rise: Option<DurationDto>,
    /// Fall time constant (default 1ms, > rise).
    pub fall: Option<DurationDto>,
    /// Window (default 5 × fall).
    pub duration: Option<DurationDto>,
}

/// Commutation notches.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotchDto {
    pub phases: Option<Vec<PhaseName>>,
    pub groups: Option<Vec<String>>,
    /// Depth, pu (0 < d ≤ 1).
    pub depth: f64,
    /// Width of each notch (> 0, shorter than the spacing between notches).
    pub width: DurationDto,
    /// Notches per cycle: 1, 2, 4 or 6 (default 2).
    pub per_cycle: Option<u32>,
    /// Point-on-wave angle of the first notch, degrees (default 0).
    pub angle: Option<f64>,
    pub duration: DurationDto,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DcOffsetDto {
    pub phases: Option<Vec<PhaseName>>,
    pub groups: Option<Vec<String>>,
    /// Offset, pu of nominal peak (|m| ≤ 0.1).
    pub magnitude: f64,
    pub duration: DurationDto,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoiseDto {
    pub phases: Option<Vec<PhaseName>>,
    pub groups: Option<Vec<String>>,
    /// Gaussian noise RMS, pu of nominal RMS (0 < x ≤ 0.1).
    pub rms: f64,
    pub duration: DurationDto,
}

/// Frequency excursion of the whole supply (all phases).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FrequencyDto {
    pub groups: Option<Vec<String>>,
    /// Deviation from nominal, Hz (|d| ≤ 5).
    pub deviation: f64,
    /// Ramp time of each edge (default 0s).
    pub ramp: Option<DurationDto>,
    pub duration: DurationDto,
    /// Return to nominal at the end (default true); false = a lasting step/ramp.
    #[serde(rename = "return")]
    pub return_to_nominal: Option<bool>,
}

/// Per-phase value for unbalance.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct PerPhaseDto {
    pub L1: Option<f64>,
    pub L2: Option<f64>,
    pub L3: Option<f64>,
}

/// Phase unbalance.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnbalanceDto {
    pub phases: Option<Vec<PhaseName>>,
    pub groups: Option<Vec<String>>,
    /// Magnitude per phase, pu (default 1, 0–2).
    pub magnitudes: Option<PerPhaseDto>,
    /// Angle offset per phase, degrees (default 0, |a| ≤ 180).
    pub angles: Option<PerPhaseDto>,
    pub duration: DurationDto,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConductorDto {
    Copper,
    Aluminium,
}

/// A heating service conductor between source and meter.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThermalDriftDto {
    pub phases: Option<Vec<PhaseName>>,
    pub groups: Option<Vec<String>>,
    /// `copper` (default) or `aluminium`.
    pub conductor: Option<ConductorDto>,
    /// Loop resistance at 20 °C, Ω (> 0).
    pub r20: f64,
    /// Loop reactance, Ω (default 0, ≥ 0).
    pub x: Option<f64>,
    /// Load current after onset, A (> 0).
    pub current: f64,
    /// Load power factor (default 1.0; 0 < pf ≤ 1).
    pub power_factor: Option<f64>,
    /// Ambient temperature, °C (default 25).
    pub ambient: Option<f64>,
    /// Conductor temperature at onset, °C (default = ambient).
    pub initial: Option<f64>,
    /// Thermal resistance conductor→ambient, K/W (> 0).
    pub thermal_resistance: f64,
    /// Thermal time constant (> 0).
    pub tau: DurationDto,
    pub duration: DurationDto,
}

/// A recorded waveform (COMTRADE, IEEE C37.111-1991/1999/2013, ASCII or 16-bit BINARY
/// `.dat`) that replaces the synthesized voltage of the mapped phases from `at` for the
/// recording's length, interpolated linearly to the grid's sample rate. `waveform` groups
/// only. Trips are timed from the recording's trigger timestamp.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayDto {
    /// Path of the `.cfg`, relative to the scenario file; the `.dat` sits beside it.
    pub comtrade: String,
    /// The recording's channel (`ch_id` in the `.cfg`) that drives each phase, e.g.
    /// `{ L1: VA, L2: VB, L3: VC }`; at least one. Channels in V, kV or mV.
    pub channels: ReplayChannelsDto,
    /// Factor applied to the recorded values, e.g. a VT ratio for secondary values
    /// (default 1; 0 < scale ≤ 10000).
    pub scale: Option<f64>,
    pub groups: Option<Vec<String>>,
}

/// Recording channel per phase.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct ReplayChannelsDto {
    pub L1: Option<String>,
    pub L2: Option<String>,
    pub L3: Option<String>,
}

/// Backhaul outage: meters buffer, nothing is delivered.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RfLossDto {
    /// Affected groups (default: all).
    pub groups: Option<Vec<String>>,
    pub duration: DurationDto,
}

/// Extra latency on the backhaul.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LatencyDto {
    pub groups: Option<Vec<String>>,
    /// Extra one-way latency.
    pub extra: DurationDto,
    /// Extra uniform jitter (default 0s).
    pub jitter: Option<DurationDto>,
    pub duration: DurationDto,
}

/// Extra loss on the backhaul.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PacketLossDto {
    pub groups: Option<Vec<String>>,
    /// Loss probability per attempt, 0–0.9.
    pub probability: f64,
    pub duration: DurationDto,
}

/// One expectation: exactly one kind key.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectDto {
    pub trip: Option<TripDto>,
    pub no_trip: Option<NoTripDto>,
    pub alarm_latency: Option<AlarmLatencyDto>,
    pub no_flapping: Option<NoFlappingDto>,
    pub delivered: Option<DeliveredDto>,
    pub measurement: Option<MeasurementDto>,
    pub event: Option<PqEventDto>,
}

/// The keys of `ExpectDto`, in declaration order.
pub const EXPECT_KINDS: [&str; 7] = [
    "trip",
    "no_trip",
    "alarm_latency",
    "no_flapping",
    "delivered",
    "measurement",
    "event",
];

/// Every meter of the group trips within `within` of the disturbance onset.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TripDto {
    /// `UV_TRIP_0x01` or `OV_TRIP_0x02`.
    pub code: String,
    /// Meter group (optional when there is exactly one).
    pub group: Option<String>,
    /// Phase (default: any).
    pub phase: Option<PhaseName>,
    pub within: DurationDto,
}

/// No trip (or none with `code`) in the group.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoTripDto {
    /// Meter group (optional when there is exactly one).
    pub group: Option<String>,
    /// `UV_TRIP_0x01` or `OV_TRIP_0x02` (default: any trip).
    pub code: Option<String>,
}

/// Onset-to-alarm latency at the head-end (at least one bound).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlarmLatencyDto {
    pub p50: Option<DurationDto>,
    pub p99: Option<DurationDto>,
    pub max: Option<DurationDto>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoFlappingDto {
    pub max_trips_per_meter: u32,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveredDto {
    /// Readings lost end to end (exact).
    pub lost: u64,
    /// Duplicates seen by the head-end (exact, optional).
    pub duplicates: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuantityDto {
    #[serde(rename = "rms_10cycle")]
    Rms10Cycle,
    #[serde(rename = "rms_150cycle")]
    Rms150Cycle,
    UrmsHalfCycle,
    Thd,
    Frequency,
    ActivePower,
    Energy,
}

/// A measured value at a time.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MeasurementDto {
    pub quantity: QuantityDto,
    /// Meter group (default: the first).
    pub group: Option<String>,
    /// Phase (default L1).
    pub phase: Option<PhaseName>,
    /// When (≤ scenario duration).
    pub at: DurationDto,
    pub expected: f64,
    /// Number = absolute in the quantity's unit; "0.5%" = relative to `expected`.
    pub tolerance: ToleranceDto,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PqEventKindDto {
    Dip,
    Swell,
    Interruption,
}

/// An IEC 61000-4-30 dip, swell or interruption.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PqEventDto {
    pub kind: PqEventKindDto,
    /// Meter group (default: the first).
    pub group: Option<String>,
    /// Phase (default: the polyphase event).
    pub phase: Option<PhaseName>,
    /// Residual (dip, interruption) or magnitude (swell), pu of nominal.
    pub residual: f64,
    /// Number = ± pu; "0.5%" = ± 0.5 % of nominal (default "0.2%").
    pub tolerance: Option<ToleranceDto>,
    pub duration: DurationDto,
    /// Default 1cycles.
    pub duration_tolerance: Option<DurationDto>,
}
