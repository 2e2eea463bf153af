//! A validated, lowered scenario: what the harness runs. The `scenarios` crate builds it from
//! YAML; tests build it directly.

use crate::disturbance::Disturbance;
use crate::encoding::RegisterEncoding;
use crate::grid::{GridSpec, Phase};
use crate::time::Seconds;

/// How a meter group is simulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fidelity {
    /// Sample-level synthesis and measurement.
    Waveform,
    /// Per-half-cycle mean squares computed from the disturbance model, no samples.
    Rms,
}

/// The spec's threshold/hysteresis trip settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// `VOLT_UPPER_LIMIT`, V (default 252.0).
    pub upper: f64,
    /// `VOLT_LOWER_LIMIT`, V (default 210.0).
    pub lower: f64,
    /// `VOLT_HYSTERESIS`, V (default 2.0).
    pub hysteresis: f64,
    /// The condition must hold this long before a trip is declared (default 0).
    pub min_duration: Seconds,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            upper: 252.0,
            lower: 210.0,
            hysteresis: 2.0,
            min_duration: 0.0,
        }
    }
}

/// Report-by-exception settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RbeSpec {
    /// Report when any phase moved by at least this many volts since the last report.
    /// `None` disables report-by-exception: every reading is sent.
    pub delta: Option<f64>,
    /// Report at least this often even without change.
    pub heartbeat: Seconds,
    /// How often the meter takes a reading (latest 10/12-cycle RMS per phase).
    pub interval: Seconds,
}

impl Default for RbeSpec {
    fn default() -> Self {
        RbeSpec {
            delta: Some(1.0),
            heartbeat: 60.0,
            interval: 1.0,
        }
    }
}

/// Meter front-end: calibration gain per phase and ADC quantization.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrontEnd {
    /// Multiplicative calibration gain per phase (1.0 = ideal).
    pub gain: [f64; 3],
    /// ADC resolution in bits (`None` = ideal, no quantization).
    pub adc_bits: Option<u32>,
    /// ADC full scale, V peak (symmetric ±full_scale).
    pub adc_full_scale: f64,
}

impl Default for FrontEnd {
    fn default() -> Self {
        FrontEnd {
            gain: [1.0; 3],
            adc_bits: None,
            adc_full_scale: 1000.0,
        }
    }
}

/// Per-group network link (sim mode's model of the backhaul).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkSpec {
    /// One-way latency, s.
    pub latency: Seconds,
    /// Uniform jitter added to the latency, 0..jitter s.
    pub jitter: Seconds,
    /// Probability that one transmission attempt is lost (QoS 1 retries it).
    pub loss: f64,
    /// Retransmission timeout for a lost attempt, s.
    pub retry: Seconds,
}

impl Default for LinkSpec {
    fn default() -> Self {
        LinkSpec {
            latency: 0.005,
            jitter: 0.0,
            loss: 0.0,
            retry: 1.0,
        }
    }
}

/// Payload encoding on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFormat {
    Json,
    Cbor,
}

/// A group of identical meters on one feeder.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterGroup {
    pub name: String,
    pub count: u32,
    pub substation: String,
    pub fidelity: Fidelity,
    pub thresholds: Thresholds,
    pub rbe: RbeSpec,
    /// Store-and-forward ring capacity in messages.
    pub buffer_capacity: usize,
    pub front_end: FrontEnd,
    pub payload: PayloadFormat,
    pub registers: RegisterEncoding,
    pub link: LinkSpec,
}

/// A network fault on the timeline.
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkEventKind {
    /// The groups' backhaul is down (RF loss): nothing is delivered, meters buffer.
    RfLoss,
    /// Extra one-way latency for the window.
    Latency { extra: Seconds, jitter: Seconds },
    /// Extra loss probability for the window.
    Loss { probability: f64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkEvent {
    pub at: Seconds,
    pub duration: Seconds,
    /// Group indices; empty = all.
    pub groups: Vec<usize>,
    pub kind: NetworkEventKind,
}

/// Meter event codes of the spec, and their clears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventCode {
    UvTrip,
    OvTrip,
    UvClear,
    OvClear,
}

impl EventCode {
    /// Numeric code on the wire and in the event log.
    pub fn code(self) -> u8 {
        match self {
            EventCode::UvTrip => 0x01,
            EventCode::OvTrip => 0x02,
            EventCode::UvClear => 0x81,
            EventCode::OvClear => 0x82,
        }
    }

    /// The spec's name, e.g. `UV_TRIP_0x01`.
    pub fn name(self) -> &'static str {
        match self {
            EventCode::UvTrip => "UV_TRIP_0x01",
            EventCode::OvTrip => "OV_TRIP_0x02",
            EventCode::UvClear => "UV_CLEAR_0x81",
            EventCode::OvClear => "OV_CLEAR_0x82",
        }
    }

    pub fn parse(name: &str) -> Option<EventCode> {
        [
            EventCode::UvTrip,
            EventCode::OvTrip,
            EventCode::UvClear,
            EventCode::OvClear,
        ]
        .into_iter()
        .find(|c| c.name().eq_ignore_ascii_case(name))
    }

    pub fn is_trip(self) -> bool {
        matches!(self, EventCode::UvTrip | EventCode::OvTrip)
    }
}

/// Quantities a `measurement` expectation can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    /// IEC 61000-4-30 10/12-cycle RMS, V.
    Rms10Cycle,
    /// 150/180-cycle aggregate, V.
    Rms150Cycle,
    /// Urms(1/2), V.
    UrmsHalfCycle,
    /// THD to the 50th order, % of the fundamental.
    Thd,
    /// Frequency, Hz.
    Frequency,
    /// Active power per phase, W (needs `grid.load`).
    ActivePower,
    /// Active energy per phase since start, Wh (needs `grid.load`).
    Energy,
}

impl Quantity {
    pub fn name(self) -> &'static str {
        match self {
            Quantity::Rms10Cycle => "rms_10cycle",
            Quantity::Rms150Cycle => "rms_150cycle",
            Quantity::UrmsHalfCycle => "urms_half_cycle",
            Quantity::Thd => "thd",
            Quantity::Frequency => "frequency",
            Quantity::ActivePower => "active_power",
            Quantity::Energy => "energy",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Quantity::Rms10Cycle | Quantity::Rms150Cycle | Quantity::UrmsHalfCycle => "V",
            Quantity::Thd => "%",
            Quantity::Frequency => "Hz",
            Quantity::ActivePower => "W",
            Quantity::Energy => "Wh",
        }
    }
}

/// A tolerance: absolute in the quantity's unit, or relative in percent of the expected value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    Absolute(f64),
    Percent(f64),
}

impl Tolerance {
    pub fn allows(self, expected: f64, measured: f64) -> bool {
        let band = match self {
            Tolerance::Absolute(a) => a,
            Tolerance::Percent(p) => expected.abs() * p / 100.0,
        };
        // A hair of slack so that a value exactly on the band edge is not lost to rounding.
        (measured - expected).abs() <= band * (1.0 + 1e-9) + 1e-12
    }
}

/// Kinds of IEC 61000-4-30 power-quality event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PqEventKind {
    Dip,
    Swell,
    Interruption,
}

impl PqEventKind {
    pub fn name(self) -> &'static str {
        match self {
            PqEventKind::Dip => "dip",
            PqEventKind::Swell => "swell",
            PqEventKind::Interruption => "interruption",
        }
    }
}

/// What the run must show.
#[derive(Debug, Clone, PartialEq)]
pub enum Expectation {
    /// Every meter of `group` raises `code` on `phase` no later than `within` after the onset
    /// of the voltage disturbance that causes it.
    Trip {
        code: EventCode,
        group: usize,
        phase: Option<Phase>,
        within: Seconds,
    },
    /// No trip (or none with `code`) in `group`.
    NoTrip {
        group: usize,
        code: Option<EventCode>,
    },
    /// Onset-to-alarm latency percentiles at the head-end.
    AlarmLatency {
        p50: Option<Seconds>,
        p99: Option<Seconds>,
        max: Option<Seconds>,
    },
    NoFlapping {
        max_trips_per_meter: u32,
    },
    /// End-to-end loss must equal `lost` exactly and be fully explained by ring overflow.
    Delivered {
        lost: u64,
        duplicates: Option<u64>,
    },
    Measurement {
        quantity: Quantity,
        group: usize,
        phase: Phase,
        at: Seconds,
        expected: f64,
        tolerance: Tolerance,
    },
    PqEvent {
        kind: PqEventKind,
        group: usize,
        /// `None` = the polyphase event.
        phase: Option<Phase>,
        /// Expected residual (dip, interruption) or magnitude (swell) in pu of Udin.
        residual: f64,
        residual_tolerance: Tolerance,
        duration: Seconds,
        duration_tolerance: Seconds,
    },
}

/// IEC 61000-4-30 event-detection settings, in % of Udin (= nominal).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PqThresholds {
    pub dip: f64,
    pub swell: f64,
    pub interruption: f64,
    pub hysteresis: f64,
}

impl Default for PqThresholds {
    fn default() -> Self {
        PqThresholds {
            dip: 90.0,
            swell: 110.0,
            interruption: 10.0,
            hysteresis: 2.0,
        }
    }
}

/// Head-end settings for sim mode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadEndSpec {
    /// A meter whose newest source timestamp is older than this is stale, s.
    pub stale_after: Seconds,
}

impl Default for HeadEndSpec {
    fn default() -> Self {
        HeadEndSpec { stale_after: 180.0 }
    }
}

/// A complete, validated scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    pub seed: u64,
    pub duration: Seconds,
    pub grid: GridSpec,
    pub pq: PqThresholds,
    pub groups: Vec<MeterGroup>,
    pub disturbances: Vec<Disturbance>,
    pub network: Vec<NetworkEvent>,
    pub head_end: HeadEndSpec,
    pub expectations: Vec<Expectation>,
}
