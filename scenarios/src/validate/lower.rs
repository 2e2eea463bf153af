//! Lowering: applies the documented defaults, checks every range and cross-reference, resolves
//! durations (cycles at the nominal frequency) and group names, and builds sim-core types.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use sim_core::disturbance::{
    Conductor, Disturbance, DisturbanceKind, FlickerShape, Harmonic, Replay, RmsVariation,
    ThermalDrift,
};
use sim_core::encoding::{RegisterEncoding, WordOrder};
use sim_core::grid::{GridSpec, LoadSpec, Phase, PhaseSet, PhaseSystem};
use sim_core::scenario::{
    EventCode, Expectation, Fidelity, FrontEnd, HeadEndSpec, LinkSpec, MeterGroup, NetworkEvent,
    NetworkEventKind, PayloadFormat, PqEventKind, PqThresholds, Quantity, RbeSpec, Scenario,
    Thresholds, Tolerance,
};
use sim_core::Seconds;

use crate::dto::*;
use crate::duration::parse_duration;
use crate::spans::SpanIndex;
use crate::Diagnostic;

/// Validate `dto` and lower it; `Err` carries every problem found.
pub fn lower(
    dto: &ScenarioDto,
    spans: &SpanIndex,
    file: &Path,
) -> Result<Scenario, Vec<Diagnostic>> {
    let mut cx = Cx {
        spans,
        file,
        diags: Vec::new(),
        frequency: 60.0,
        system: PhaseSystem::ThreePhase,
        duration: f64::INFINITY,
        nominal: 230.0,
        has_load: false,
        groups: Vec::new(),
        fidelities: Vec::new(),
        total_meters: 0,
        packet_losses: Vec::new(),
    };
    let scenario = cx.scenario(dto);
    if cx.diags.is_empty() {
        Ok(scenario)
    } else {
        cx.diags.sort_by_key(|d| (d.line, d.column));
        Err(cx.diags)
    }
}

struct Cx<'a> {
    spans: &'a SpanIndex,
    file: &'a Path,
    diags: Vec<Diagnostic>,
    frequency: f64,
    system: PhaseSystem,
    duration: Seconds,
    /// Grid nominal voltage, V.
    nominal: f64,
    /// `grid.load` is given (currents, power and energy are synthesized).
    has_load: bool,
    groups: Vec<String>,
    /// Fidelity of each group, by index.
    fidelities: Vec<Fidelity>,
    /// Meters over all groups so far.
    total_meters: u64,
    /// `packet_loss` events, for the loss budget.
    packet_losses: Vec<PacketLoss>,
}

/// One `packet_loss` event, for the loss budget.
struct PacketLoss {
    /// Index in `events`.
    event: usize,
    /// Groups it applies to (empty: all).
    groups: Vec<usize>,
    probability: f64,
    at: Seconds,
    duration: Seconds,
}

/// A and B of the thermal model written as τ·dT/dt = A − B·T: with k = I²·R20·R_th,
/// A = T_amb + k·(1 − 20α) and B = 1 − kα.
fn thermal_coefficients(t: &ThermalDrift, alpha: f64) -> (f64, f64) {
    let k = t.current * t.current * t.r20 * t.thermal_resistance;
    (t.ambient + k * (1.0 - 20.0 * alpha), 1.0 - k * alpha)
}

/// Conductor temperature `elapsed` seconds after the onset of `t`, °C, in closed form: the model
/// τ·dT/dt = I²·R(T)·R_th − (T − T_amb), R(T) = R20·(1 + α(T − 20)) is linear, τ·dT/dt = A − B·T
/// (see `thermal_coefficients`), so from T0 = `initial`
/// T = T0 + (A − B·T0)·(1 − e^(−B·t/τ))/B (B = 0: T0 + A·t/τ). It approaches A/B for B > 0
/// and grows exponentially for B < 0; either way it is monotone in t. Not finite when it
/// overflows.
pub fn drift_temperature(t: &ThermalDrift, elapsed: Seconds) -> f64 {
    let (a, b) = thermal_coefficients(t, t.conductor.alpha20());
    let x = elapsed / t.tau;
    let growth = if b == 0.0 { x } else { -(-b * x).exp_m1() / b };
    t.initial + (a - b * t.initial) * growth
}

/// Seconds after onset at which a rising drift reaches `limit` °C (None if it never does).
fn time_to_temperature(t: &ThermalDrift, limit: f64) -> Option<Seconds> {
    let (a, b) = thermal_coefficients(t, t.conductor.alpha20());
    let rate = a - b * t.initial;
    if !(rate > 0.0 && limit >= t.initial) {
        return None;
    }
    // Invert T(t) above: B·(limit − T0)/rate = 1 − e^(−B·t/τ).
    let s = if b == 0.0 {
        (limit - t.initial) / rate * t.tau
    } else {
        let y = b * (limit - t.initial) / rate;
        if y >= 1.0 {
            return None;
        }
        -t.tau / b * (-y).ln_1p()
    };
    s.is_finite().then_some(s)
}

/// Upper limits of durations, s.
const DAY: Seconds = 86_400.0;
const HOUR: Seconds = 3_600.0;
const MAX_SCENARIO_DURATION: Seconds = 30.0 * DAY;
const MAX_LINK_DELAY: Seconds = 60.0;
/// Most meters in a scenario, over all groups; also the largest ring buffer.
const MAX_METERS: u64 = 10_000_000;
const MAX_BUFFER_CAPACITY: u64 = 10_000_000;
/// Largest loss probability a group may see at any instant (link loss plus the packet_loss
/// windows active then).
const MAX_LOSS: f64 = 0.9;
/// Hottest conductor temperature accepted over a thermal drift, °C.
const MAX_CONDUCTOR_TEMPERATURE: f64 = 250.0;

/// Seconds for messages: at most 6 decimals, no trailing zeros.
fn secs(x: f64) -> String {
    let s = format!("{x:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}s")
}

/// The last segment of a field path (`meters[0].link.latency` → `latency`).
fn field_name(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

impl Cx<'_> {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        let pos = self.spans.locate(path);
        self.diags.push(Diagnostic {
            file: self.file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// Check `ok`; on failure report `what, got value`.
    fn check(&mut self, path: &str, value: f64, ok: bool, what: &str) -> f64 {
        if !ok || !value.is_finite() {
            self.err(path, format!("{what}, got {value}"));
        }
        value
    }

    /// lo < v < hi.
    fn open(&mut self, path: &str, v: f64, lo: f64, hi: f64) -> f64 {
        self.check(
            path,
            v,
            v > lo && v < hi,
            &format!("must be between {lo} and {hi} (exclusive)"),
        )
    }

    /// lo ≤ v ≤ hi.
    fn closed(&mut self, path: &str, v: f64, lo: f64, hi: f64) -> f64 {
        self.check(
            path,
            v,
            v >= lo && v <= hi,
            &format!("must be between {lo} and {hi}"),
        )
    }

    /// lo < v ≤ hi.
    fn left_open(&mut self, path: &str, v: f64, lo: f64, hi: f64) -> f64 {
        self.check(
            path,
            v,
            v > lo && v <= hi,
            &format!("must be greater than {lo} and at most {hi}"),
        )
    }

    fn positive(&mut self, path: &str, v: f64) -> f64 {
        self.check(path, v, v > 0.0, "must be greater than 0")
    }

    fn opt_closed(&mut self, path: &str, v: Option<f64>, default: f64, lo: f64, hi: f64) -> f64 {
        v.map_or(default, |v| self.closed(path, v, lo, hi))
    }

    /// A duration in seconds (0 on error so lowering can go on).
    fn dur(&mut self, path: &str, d: &DurationDto) -> Seconds {
        let parsed = match &d.0 {
            Scalar::Str(s) => parse_duration(s),
            Scalar::Num(n) => Err(format!(
                "duration needs a unit (us, ms, s, min, h, cycles), e.g. `{n}s`; got the bare number {n}"
            )),
            other => Err(format!("expected a duration such as `40s`, got {other}")),
        };
        match parsed {
            Ok(v) => v.seconds(self.frequency),
            Err(m) => {
                self.err(path, m);
                0.0
            }
        }
    }

    fn dur_or(&mut self, path: &str, d: Option<&DurationDto>, default: Seconds) -> Seconds {
        d.map_or(default, |d| self.dur(path, d))
    }

    /// A duration that must be > 0.
    fn pos_dur(&mut self, path: &str, d: &DurationDto) -> Seconds {
        let before = self.diags.len();
        let s = self.dur(path, d);
        if self.diags.len() == before && s <= 0.0 {
            self.err(path, "must be longer than 0");
        }
        s
    }

    /// Check a duration against its upper limit `max` (`limit` spells it for the message).
    fn at_most(&mut self, path: &str, s: Seconds, max: Seconds, limit: &str) -> Seconds {
        if s > max {
            self.err(
                path,
                format!(
                    "`{}` must be at most {limit}, got {}",
                    field_name(path),
                    secs(s)
                ),
            );
        }
        s
    }

    fn scenario(&mut self, d: &ScenarioDto) -> Scenario {
        if d.schema != 1 {
            self.err(
                "schema",
                format!(
                    "unsupported schema version {}; this gridloop reads schema 1",
                    d.schema
                ),
            );
        }
        if d.name.trim().is_empty() {
            self.err("name", "must not be empty");
        }
        let grid = self.grid(&d.grid);
        let duration = self.pos_dur("duration", &d.duration);
        self.at_most(
            "duration",
            duration,
            MAX_SCENARIO_DURATION,
            "30 days (720h)",
        );
        self.duration = if duration > 0.0 {
            duration
        } else {
            f64::INFINITY
        };
        let pq = self.pq(d.pq.as_ref());
        let head_end = match &d.head_end {
            Some(h) => {
                let stale_after = match &h.stale_after {
                    Some(s) => {
                        let s = self.pos_dur("head_end.stale_after", s);
                        self.at_most("head_end.stale_after", s, DAY, "1 day (24h)")
                    }
                    None => HeadEndSpec::default().stale_after,
                };
                HeadEndSpec { stale_after }
            }
            None => HeadEndSpec::default(),
        };

        if d.meters.is_empty() {
            self.err("meters", "needs at least one meter group");
        }
        // Names first, so events and expectations can refer to any group.
        self.groups = d.meters.iter().map(|m| m.group.clone()).collect();
        let groups: Vec<MeterGroup> = d
            .meters
            .iter()
            .enumerate()
            .map(|(i, m)| self.meter(i, m, &grid))
            .collect();
        self.fidelities = groups.iter().map(|g| g.fidelity).collect();

        let mut disturbances = Vec::new();
        let mut network = Vec::new();
        for (i, ev) in d.events.iter().flatten().enumerate() {
            self.event(i, ev, &mut disturbances, &mut network);
        }
        self.loss_budget(&groups);
        let expectations = d
            .expect
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, e)| self.expectation(i, e))
            .collect();

        Scenario {
            name: d.name.clone(),
            description: d.description.clone().unwrap_or_default(),
            tags: d.tags.clone().unwrap_or_default(),
            seed: d.seed.unwrap_or(0),
            duration,
            grid,
            pq,
            groups,
            disturbances,
            network,
            head_end,
            expectations,
        }
    }

    fn grid(&mut self, g: &GridDto) -> GridSpec {
        let nominal = self.closed("grid.nominal", g.nominal, 90.0, 480.0);
        self.nominal = nominal;
        self.has_load = g.load.is_some();
        let frequency = g.frequency.unwrap_or(60.0);
        if frequency != 50.0 && frequency != 60.0 {
            self.err(
                "grid.frequency",
                format!("must be 50 or 60 (Hz), got {frequency}"),
            );
        } else {
            self.frequency = frequency;
        }
        let system = match &g.phases {
            None => PhaseSystem::ThreePhase,
            Some(p) => match &p.0 {
                Scalar::Num(n) if *n == 1.0 => PhaseSystem::Single,
                Scalar::Num(n) if *n == 2.0 => PhaseSystem::SplitPhase,
                Scalar::Num(n) if *n == 3.0 => PhaseSystem::ThreePhase,
                Scalar::Str(s) if s == "single" || s == "1" => PhaseSystem::Single,
                Scalar::Str(s) if s == "split" || s == "2" => PhaseSystem::SplitPhase,
                Scalar::Str(s) if s == "three" || s == "3" => PhaseSystem::ThreePhase,
                other => {
                    self.err(
                        "grid.phases",
                        format!("must be 1 (single phase), 2 or `split` (split phase) or 3 (three phase), got {other}"),
                    );
                    PhaseSystem::ThreePhase
                }
            },
        };
        self.system = system;
        let sample_rate = g.sample_rate.unwrap_or(12_800.0);
        self.check(
            "grid.sample_rate",
            sample_rate,
            sample_rate >= 1.0,
            "must be at least 1 (Hz)",
        );
        let load = g.load.as_ref().map(|l| LoadSpec {
            current: self.positive("grid.load.current", l.current),
            power_factor: self.left_open("grid.load.power_factor", l.power_factor, 0.0, 1.0),
        });
        GridSpec {
            nominal,
            frequency: self.frequency,
            system,
            sample_rate,
            load,
        }
    }

    fn pq(&mut self, pq: Option<&PqDto>) -> PqThresholds {
        let def = PqThresholds::default();
        let Some(p) = pq else { return def };
        let t = PqThresholds {
            dip: self.opt_closed("pq.dip", p.dip, def.dip, 0.0, 100.0),
            swell: self.opt_closed("pq.swell", p.swell, def.swell, 100.0, 200.0),
            interruption: self.opt_closed(
                "pq.interruption",
                p.interruption,
                def.interruption,
                0.0,
                100.0,
            ),
            hysteresis: self.opt_closed("pq.hysteresis", p.hysteresis, def.hysteresis, 0.0, 10.0),
        };
        // A dip or swell ends when the value is back past its threshold by the hysteresis: that
        // level must be reachable (below 100 % for dips, above for swells), or events never end.
        let h = t.hysteresis;
        if !(t.dip + h < 100.0 && 100.0 < t.swell - h) {
            self.err(
                "pq",
                format!(
                    "thresholds must satisfy dip + hysteresis < 100 and swell − hysteresis > 100 (else dips or swells never end), got dip {}, swell {}, hysteresis {h}",
                    t.dip, t.swell
                ),
            );
        }
        // Sanity: an interruption is a deeper dip, so its band (with the hysteresis it ends at)
        // lies below the dip threshold.
        if t.interruption + h >= t.dip {
            self.err(
                "pq",
                format!(
                    "the interruption band must lie below the dip threshold: interruption + hysteresis < dip, got interruption {}, hysteresis {h}, dip {}",
                    t.interruption, t.dip
                ),
            );
        }
        t
    }

    fn meter(&mut self, i: usize, m: &MeterDto, grid: &GridSpec) -> MeterGroup {
        let path = format!("meters[{i}]");
        if m.group.trim().is_empty() {
            self.err(&format!("{path}.group"), "group name must not be empty");
        } else if let Some(first) = self.groups[..i].iter().position(|g| *g == m.group) {
            self.err(
                &format!("{path}.group"),
                format!(
                    "duplicate group name `{}` (already used by meters[{first}])",
                    m.group
                ),
            );
        }
        let count = m.count.unwrap_or(1);
        if !(1..=1_000_000).contains(&count) {
            self.err(
                &format!("{path}.count"),
                format!("must be between 1 and 1000000, got {count}"),
            );
        } else {
            let before = self.total_meters;
            self.total_meters += u64::from(count);
            if before <= MAX_METERS && self.total_meters > MAX_METERS {
                self.err(
                    &format!("{path}.count"),
                    format!(
                        "the scenario has at most {MAX_METERS} meters over all groups; this group brings the total to {}",
                        self.total_meters
                    ),
                );
            }
        }
        let fidelity = match m.fidelity.unwrap_or(FidelityDto::Waveform) {
            FidelityDto::Waveform => {
                if grid.sample_rate < 20.0 * grid.frequency {
                    let p = if m.fidelity.is_some() {
                        format!("{path}.fidelity")
                    } else {
                        path.clone()
                    };
                    self.err(
                        &p,
                        format!(
                            "waveform fidelity needs grid.sample_rate ≥ 20 × frequency ({} Hz), got {} Hz; raise the sample rate or use `fidelity: rms`",
                            20.0 * grid.frequency,
                            grid.sample_rate
                        ),
                    );
                }
                Fidelity::Waveform
            }
            FidelityDto::Rms => Fidelity::Rms,
        };
        let thresholds = self.thresholds(&path, m.thresholds.as_ref());
        let rbe = self.rbe(&path, m.rbe.as_ref());
        let buffer_capacity = match m.buffer.as_ref().and_then(|b| b.capacity) {
            None => 4096,
            Some(0) => {
                self.err(
                    &format!("{path}.buffer.capacity"),
                    "must be at least 1, got 0",
                );
                1
            }
            Some(c) if c > MAX_BUFFER_CAPACITY => {
                self.err(
                    &format!("{path}.buffer.capacity"),
                    format!("must be at most {MAX_BUFFER_CAPACITY} (messages), got {c}"),
                );
                1
            }
            Some(c) => usize::try_from(c).unwrap_or(1),
        };
        let (payload, registers) = self.encoding(&path, m.encoding.as_ref());
        let mut front_end = FrontEnd::default();
        if let Some(c) = &m.calibration {
            for (k, v) in [c.L1, c.L2, c.L3].into_iter().enumerate() {
                if let Some(v) = v {
                    let p = format!("{path}.calibration.L{}", k + 1);
                    if k >= self.system.channels() {
                        self.err(
                            &p,
                            format!(
                                "phase L{} does not exist on a {} grid",
                                k + 1,
                                self.system_name()
                            ),
                        );
                    }
                    front_end.gain[k] = self.closed(&p, v, 0.5, 1.5);
                }
            }
        }
        if let Some(a) = &m.adc {
            if !(8..=24).contains(&a.bits) {
                self.err(
                    &format!("{path}.adc.bits"),
                    format!("must be between 8 and 24, got {}", a.bits),
                );
            }
            front_end.adc_bits = Some(a.bits);
            front_end.adc_full_scale =
                self.positive(&format!("{path}.adc.full_scale"), a.full_scale);
        }
        let link = self.link(&path, m.link.as_ref());
        MeterGroup {
            name: m.group.clone(),
            count,
            substation: m.substation.clone().unwrap_or_else(|| "sub-01".into()),
            fidelity,
            thresholds,
            rbe,
            buffer_capacity,
            front_end,
            payload,
            registers,
            link,
        }
    }

    fn thresholds(&mut self, path: &str, t: Option<&ThresholdsDto>) -> Thresholds {
        let def = Thresholds::default();
        let Some(t) = t else { return def };
        let p = format!("{path}.thresholds");
        let upper = self.check(
            &format!("{p}.upper"),
            t.upper.unwrap_or(def.upper),
            true,
            "must be a number",
        );
        let lower = self.check(
            &format!("{p}.lower"),
            t.lower.unwrap_or(def.lower),
            true,
            "must be a number",
        );
        let hysteresis = t.hysteresis.unwrap_or(def.hysteresis);
        if lower >= upper {
            let at = if t.lower.is_some() {
                format!("{p}.lower")
            } else {
                format!("{p}.upper")
            };
            self.err(
                &at,
                format!("lower limit ({lower} V) must be below the upper limit ({upper} V)"),
            );
        } else if !(hysteresis >= 0.0 && hysteresis < upper - lower) {
            self.err(
                &format!("{p}.hysteresis"),
                format!(
                    "must be ≥ 0 and smaller than upper − lower ({} V), got {hysteresis}",
                    upper - lower
                ),
            );
        }
        let min_duration = self.dur_or(&format!("{p}.min_duration"), t.min_duration.as_ref(), 0.0);
        Thresholds {
            upper,
            lower,
            hysteresis,
            min_duration,
        }
    }

    fn rbe(&mut self, path: &str, r: Option<&RbeDto>) -> RbeSpec {
        let def = RbeSpec::default();
        let Some(r) = r else { return def };
        let p = format!("{path}.rbe");
        let delta = match r.delta {
            None => def.delta,
            Some(d) => {
                self.check(
                    &format!("{p}.delta"),
                    d,
                    d >= 0.0,
                    "must be ≥ 0 (V; 0 = report every reading)",
                );
                (d > 0.0).then_some(d)
            }
        };
        let heartbeat = match &r.heartbeat {
            Some(h) => {
                let hp = format!("{p}.heartbeat");
                let s = self.pos_dur(&hp, h);
                self.at_most(&hp, s, DAY, "1 day (24h)")
            }
            None => def.heartbeat,
        };
        let interval = match &r.interval {
            Some(h) => {
                let ip = format!("{p}.interval");
                let s = self.pos_dur(&ip, h);
                self.at_most(&ip, s, DAY, "1 day (24h)")
            }
            None => def.interval,
        };
        RbeSpec {
            delta,
            heartbeat,
            interval,
        }
    }

    fn encoding(
        &mut self,
        path: &str,
        e: Option<&EncodingDto>,
    ) -> (PayloadFormat, RegisterEncoding) {
        let Some(e) = e else {
            return (PayloadFormat::Json, RegisterEncoding::default());
        };
        let payload = match e.payload.unwrap_or(PayloadDto::Json) {
            PayloadDto::Json => PayloadFormat::Json,
            PayloadDto::Cbor => PayloadFormat::Cbor,
        };
        let word_order = match e.word_order.unwrap_or(WordOrderDto::Abcd) {
            WordOrderDto::Abcd => WordOrder::Abcd,
            WordOrderDto::Cdab => WordOrder::Cdab,
            WordOrderDto::Badc => WordOrder::Badc,
            WordOrderDto::Dcba => WordOrder::Dcba,
        };
        let scale_path = format!("{path}.encoding.scale");
        let scale = e.scale.map_or(0.1, |s| self.positive(&scale_path, s));
        let registers = match e.registers.unwrap_or(RegistersDto::Float32) {
            RegistersDto::Float32 => {
                if e.scale.is_some() {
                    self.err(
                        &scale_path,
                        "scale applies only to `registers: int16` or `uint32`",
                    );
                }
                RegisterEncoding::Float32(word_order)
            }
            RegistersDto::Int16 => {
                if e.word_order.is_some() {
                    self.err(
                        &format!("{path}.encoding.word_order"),
                        "int16 uses one register; word_order does not apply",
                    );
                }
                RegisterEncoding::Int16 { scale }
            }
            RegistersDto::Uint32 => RegisterEncoding::Uint32 { scale, word_order },
        };
        (payload, registers)
    }

    fn link(&mut self, path: &str, l: Option<&LinkDto>) -> LinkSpec {
        let def = LinkSpec::default();
        let Some(l) = l else { return def };
        let p = format!("{path}.link");
        let (lp, jp, rp) = (
            format!("{p}.latency"),
            format!("{p}.jitter"),
            format!("{p}.retry"),
        );
        let latency = self.dur_or(&lp, l.latency.as_ref(), def.latency);
        let jitter = self.dur_or(&jp, l.jitter.as_ref(), def.jitter);
        let retry = match &l.retry {
            Some(r) => self.pos_dur(&rp, r),
            None => def.retry,
        };
        LinkSpec {
            latency: self.at_most(&lp, latency, MAX_LINK_DELAY, "60s"),
            jitter: self.at_most(&jp, jitter, MAX_LINK_DELAY, "60s"),
            loss: self.opt_closed(&format!("{p}.loss"), l.loss, def.loss, 0.0, MAX_LOSS),
            retry: self.at_most(&rp, retry, HOUR, "1h"),
        }
    }

    fn grid_phases(&self) -> PhaseSet {
        PhaseSet::of(&Phase::ALL[..self.system.channels()])
    }

    fn system_name(&self) -> &'static str {
        match self.system {
            PhaseSystem::Single => "single-phase",
            PhaseSystem::SplitPhase => "split-phase",
            PhaseSystem::ThreePhase => "three-phase",
        }
    }

    fn phase(&mut self, path: &str, p: &PhaseName) -> Option<Phase> {
        let phase = match p.0.to_ascii_uppercase().as_str() {
            "L1" => Phase::L1,
            "L2" => Phase::L2,
            "L3" => Phase::L3,
            _ => {
                self.err(
                    path,
                    format!("unknown phase `{}`; expected L1, L2 or L3", p.0),
                );
                return None;
            }
        };
        if phase.index() >= self.system.channels() {
            let have: Vec<&str> = self.grid_phases().iter().map(Phase::name).collect();
            self.err(
                path,
                format!(
                    "phase {phase} does not exist on a {} grid (phases: {})",
                    self.system_name(),
                    have.join(", ")
                ),
            );
            return None;
        }
        Some(phase)
    }

    fn phases(&mut self, path: &str, list: &Option<Vec<PhaseName>>) -> PhaseSet {
        match list {
            None => self.grid_phases(),
            Some(l) if l.is_empty() => {
                self.err(
                    &format!("{path}.phases"),
                    "must name at least one phase (omit it for all phases)",
                );
                self.grid_phases()
            }
            Some(l) => {
                let ps: Vec<Phase> = l
                    .iter()
                    .enumerate()
                    .filter_map(|(k, p)| self.phase(&format!("{path}.phases[{k}]"), p))
                    .collect();
                PhaseSet::of(&ps)
            }
        }
    }

    fn group_index(&mut self, path: &str, name: &str) -> Option<usize> {
        let found = self.groups.iter().position(|g| g == name);
        if found.is_none() {
            let known: Vec<String> = self.groups.iter().map(|g| format!("`{g}`")).collect();
            self.err(
                path,
                format!("unknown group `{name}`; known groups: {}", known.join(", ")),
            );
        }
        found
    }

    /// `groups:` of an event; `None` (all groups) lowers to an empty list.
    fn group_list(&mut self, path: &str, groups: &Option<Vec<String>>) -> Vec<usize> {
        let Some(groups) = groups else {
            return Vec::new();
        };
        if groups.is_empty() {
            self.err(
                &format!("{path}.groups"),
                "must name at least one group (omit `groups` for all groups)",
            );
            return Vec::new();
        }
        let set: BTreeSet<usize> = groups
            .iter()
            .enumerate()
            .filter_map(|(k, g)| self.group_index(&format!("{path}.groups[{k}]"), g))
            .collect();
        set.into_iter().collect()
    }

    /// `group:` of an expectation that needs one group; optional when there is exactly one.
    fn required_group(&mut self, path: &str, group: &Option<String>) -> usize {
        match group {
            Some(g) => self.group_index(&format!("{path}.group"), g).unwrap_or(0),
            None if self.groups.len() <= 1 => 0,
            None => {
                let known: Vec<String> = self.groups.iter().map(|g| format!("`{g}`")).collect();
                self.err(
                    path,
                    format!(
                        "`group` is required when there are several meter groups ({})",
                        known.join(", ")
                    ),
                );
                0
            }
        }
    }

    fn event(
        &mut self,
        i: usize,
        ev: &EventDto,
        dist: &mut Vec<Disturbance>,
        net: &mut Vec<NetworkEvent>,
    ) {
        let path = format!("events[{i}]");
        let present: Vec<&str> = [
            ev.sag.is_some(),
            ev.swell.is_some(),
            ev.interruption.is_some(),
            ev.harmonics.is_some(),
            ev.interharmonic.is_some(),
            ev.flicker.is_some(),
            ev.oscillatory_transient.is_some(),
            ev.impulsive_transient.is_some(),
            ev.notch.is_some(),
            ev.dc_offset.is_some(),
            ev.noise.is_some(),
            ev.frequency.is_some(),
            ev.unbalance.is_some(),
            ev.thermal_drift.is_some(),
            ev.rf_loss.is_some(),
            ev.latency.is_some(),
            ev.packet_loss.is_some(),
            ev.replay.is_some(),
        ]
        .into_iter()
        .zip(EVENT_KINDS)
        .filter_map(|(on, k)| on.then_some(k))
        .collect();
        let at = self.dur(&format!("{path}.at"), &ev.at);
        if at >= self.duration {
            self.err(
                &format!("{path}.at"),
                format!(
                    "onset {} is not before the end of the scenario ({})",
                    secs(at),
                    secs(self.duration)
                ),
            );
        }
        match present.len() {
            1 => {}
            0 => {
                self.err(
                    &path,
                    format!(
                        "needs exactly one kind key besides `at`; one of: {}",
                        EVENT_KINDS.join(", ")
                    ),
                );
                return;
            }
            _ => {
                self.err(
                    &path,
                    format!(
                        "has several kinds ({}); write one event per kind",
                        present.join(", ")
                    ),
                );
                return;
            }
        }
        let kp = format!("{path}.{}", present[0]);
        let f = |name: &str| format!("{kp}.{name}");
        let mut d = |cx: &mut Self,
                     phases: &Option<Vec<PhaseName>>,
                     groups: &Option<Vec<String>>,
                     pow: Option<f64>,
                     kind: DisturbanceKind| {
            let phases = cx.phases(&kp, phases);
            let groups = cx.group_list(&kp, groups);
            dist.push(Disturbance {
                at,
                point_on_wave_deg: pow,
                phases,
                groups,
                kind,
            });
        };
        if let Some(s) = &ev.sag {
            let level = self.open(&f("residual"), s.residual, 0.0, 1.0);
            let v = self.rms_variation(&kp, level, &s.duration, s.ramp.as_ref(), s.phase_jump);
            let pow = self.point_on_wave(&f("point_on_wave"), s.point_on_wave);
            d(self, &s.phases, &s.groups, pow, DisturbanceKind::Sag(v));
        } else if let Some(s) = &ev.swell {
            let level = self.left_open(&f("magnitude"), s.magnitude, 1.0, 2.0);
            let v = self.rms_variation(&kp, level, &s.duration, s.ramp.as_ref(), s.phase_jump);
            let pow = self.point_on_wave(&f("point_on_wave"), s.point_on_wave);
            d(self, &s.phases, &s.groups, pow, DisturbanceKind::Swell(v));
        } else if let Some(s) = &ev.interruption {
            let level = s.residual.map_or(0.0, |r| {
                self.check(
                    &f("residual"),
                    r,
                    (0.0..0.1).contains(&r),
                    "must be ≥ 0 and below 0.1",
                )
            });
            let v = self.rms_variation(&kp, level, &s.duration, s.ramp.as_ref(), None);
            let pow = self.point_on_wave(&f("point_on_wave"), s.point_on_wave);
            d(
                self,
                &s.phases,
                &s.groups,
                pow,
                DisturbanceKind::Interruption(v),
            );
        } else if let Some(h) = &ev.harmonics {
            let kind = self.harmonics(&kp, h);
            d(self, &h.phases, &h.groups, None, kind);
        } else if let Some(h) = &ev.interharmonic {
            let kind = DisturbanceKind::Interharmonic {
                frequency: self.positive(&f("frequency"), h.frequency),
                magnitude: self.left_open(&f("magnitude"), h.magnitude, 0.0, 0.5),
                phase_deg: self.angle(&f("angle"), h.angle),
                duration: self.pos_dur(&f("duration"), &h.duration),
            };
            d(self, &h.phases, &h.groups, None, kind);
        } else if let Some(x) = &ev.flicker {
            let kind = DisturbanceKind::Flicker {
                depth: self.left_open(&f("depth"), x.depth, 0.0, 0.2),
                frequency: self.closed(&f("frequency"), x.frequency, 0.05, 40.0),
                shape: match x.shape.unwrap_or(FlickerShapeDto::Sine) {
                    FlickerShapeDto::Sine => FlickerShape::Sine,
                    FlickerShapeDto::Square => FlickerShape::Square,
                },
                duration: self.pos_dur(&f("duration"), &x.duration),
            };
            d(self, &x.phases, &x.groups, None, kind);
        } else if let Some(x) = &ev.oscillatory_transient {
            let kind = DisturbanceKind::OscillatoryTransient {
                magnitude: self.left_open(&f("magnitude"), x.magnitude, 0.0, 8.0),
                frequency: self.positive(&f("frequency"), x.frequency),
                tau: self.pos_dur(&f("tau"), &x.tau),
                phase_deg: self.angle(&f("angle"), x.angle),
                duration: self.pos_dur(&f("duration"), &x.duration),
            };
            d(self, &x.phases, &x.groups, None, kind);
        } else if let Some(x) = &ev.impulsive_transient {
            let m = x.magnitude;
            self.check(
                &f("magnitude"),
                m,
                m != 0.0 && m.abs() <= 10.0,
                "must be non-zero with |magnitude| ≤ 10 (pu)",
            );
            let tau_rise = match &x.rise {
                Some(r) => self.pos_dur(&f("rise"), r),
                None => 1e-4,
            };
            let tau_fall = match &x.fall {
                Some(r) => self.pos_dur(&f("fall"), r),
                None => 1e-3,
            };
            if tau_fall <= tau_rise {
                self.err(
                    &f("fall"),
                    format!(
                        "fall ({}) must be longer than rise ({})",
                        secs(tau_fall),
                        secs(tau_rise)
                    ),
                );
            }
            let duration = match &x.duration {
                Some(r) => self.pos_dur(&f("duration"), r),
                None => 5.0 * tau_fall,
            };
            let kind = DisturbanceKind::ImpulsiveTransient {
                magnitude: m,
                tau_rise,
                tau_fall,
                duration,
            };
            d(self, &x.phases, &x.groups, None, kind);
        } else if let Some(x) = &ev.notch {
            let per_cycle = x.per_cycle.unwrap_or(2);
            if ![1, 2, 4, 6].contains(&per_cycle) {
                self.err(
                    &f("per_cycle"),
                    format!("must be 1, 2, 4 or 6, got {per_cycle}"),
                );
            }
            let width = self.pos_dur(&f("width"), &x.width);
            let spacing = 1.0 / (self.frequency * f64::from(per_cycle.max(1)));
            if width >= spacing {
                self.err(
                    &f("width"),
                    format!(
                        "must be shorter than the notch spacing ({}), got {}",
                        secs(spacing),
                        secs(width)
                    ),
                );
            }
            let kind = DisturbanceKind::Notch {
                depth: self.left_open(&f("depth"), x.depth, 0.0, 1.0),
                width,
                per_cycle,
                angle_deg: self.angle(&f("angle"), x.angle),
                duration: self.pos_dur(&f("duration"), &x.duration),
            };
            d(self, &x.phases, &x.groups, None, kind);
        } else if let Some(x) = &ev.dc_offset {
            let kind = DisturbanceKind::DcOffset {
                magnitude: self.closed(&f("magnitude"), x.magnitude, -0.1, 0.1),
                duration: self.pos_dur(&f("duration"), &x.duration),
            };
            d(self, &x.phases, &x.groups, None, kind);
        } else if let Some(x) = &ev.noise {
            let kind = DisturbanceKind::Noise {
                rms: self.left_open(&f("rms"), x.rms, 0.0, 0.1),
                duration: self.pos_dur(&f("duration"), &x.duration),
            };
            d(self, &x.phases, &x.groups, None, kind);
        } else if let Some(x) = &ev.frequency {
            let deviation = self.closed(&f("deviation"), x.deviation, -5.0, 5.0);
            let ramp = self.dur_or(&f("ramp"), x.ramp.as_ref(), 0.0);
            let duration = self.pos_dur(&f("duration"), &x.duration);
            let return_to_nominal = x.return_to_nominal.unwrap_or(true);
            if return_to_nominal && 2.0 * ramp > duration {
                self.err(
                    &f("ramp"),
                    format!(
                        "two ramps ({} each) do not fit in the duration ({})",
                        secs(ramp),
                        secs(duration)
                    ),
                );
            }
            let kind = DisturbanceKind::Frequency {
                deviation,
                ramp,
                duration,
                return_to_nominal,
            };
            d(self, &None, &x.groups, None, kind);
        } else if let Some(x) = &ev.unbalance {
            let mut magnitudes = [1.0; 3];
            let mut angles_deg = [0.0; 3];
            for (field, dst, lo, hi) in [
                ("magnitudes", &mut magnitudes, 0.0, 2.0),
                ("angles", &mut angles_deg, -180.0, 180.0),
            ] {
                let src = if field == "magnitudes" {
                    &x.magnitudes
                } else {
                    &x.angles
                };
                if let Some(pp) = src {
                    for (k, v) in [pp.L1, pp.L2, pp.L3].into_iter().enumerate() {
                        let Some(v) = v else { continue };
                        let p = format!("{kp}.{field}.L{}", k + 1);
                        if k >= self.system.channels() {
                            self.err(
                                &p,
                                format!(
                                    "phase L{} does not exist on a {} grid",
                                    k + 1,
                                    self.system_name()
                                ),
                            );
                        }
                        dst[k] = self.closed(&p, v, lo, hi);
                    }
                }
            }
            let duration = self.pos_dur(&f("duration"), &x.duration);
            let kind = DisturbanceKind::Unbalance {
                magnitudes,
                angles_deg,
                duration,
            };
            d(self, &x.phases, &x.groups, None, kind);
        } else if let Some(x) = &ev.thermal_drift {
            let before = self.diags.len();
            let ambient = self.opt_closed(&f("ambient"), x.ambient, 25.0, -50.0, 60.0);
            let t = ThermalDrift {
                conductor: match x.conductor.unwrap_or(ConductorDto::Copper) {
                    ConductorDto::Copper => Conductor::Copper,
                    ConductorDto::Aluminium => Conductor::Aluminium,
                },
                r20: self.positive(&f("r20"), x.r20),
                x: x.x
                    .map_or(0.0, |v| self.check(&f("x"), v, v >= 0.0, "must be ≥ 0 (Ω)")),
                current: self.positive(&f("current"), x.current),
                power_factor: x
                    .power_factor
                    .map_or(1.0, |v| self.left_open(&f("power_factor"), v, 0.0, 1.0)),
                ambient,
                initial: self.opt_closed(&f("initial"), x.initial, ambient, -50.0, 250.0),
                thermal_resistance: self.positive(&f("thermal_resistance"), x.thermal_resistance),
                tau: self.pos_dur(&f("tau"), &x.tau),
                duration: self.pos_dur(&f("duration"), &x.duration),
            };
            if self.diags.len() == before {
                self.thermal_range(i, at, &t);
            }
            d(
                self,
                &x.phases,
                &x.groups,
                None,
                DisturbanceKind::ThermalDrift(t),
            );
        } else if let Some(x) = &ev.replay {
            let groups = self.group_list(&kp, &x.groups);
            if let Some((phases, replay)) = self.replay(&kp, x, &groups) {
                dist.push(Disturbance {
                    at,
                    point_on_wave_deg: None,
                    phases,
                    groups,
                    kind: DisturbanceKind::Replay(replay),
                });
            }
        } else if let Some(x) = &ev.rf_loss {
            let duration = self.pos_dur(&f("duration"), &x.duration);
            let groups = self.group_list(&kp, &x.groups);
            net.push(NetworkEvent {
                at,
                duration,
                groups,
                kind: NetworkEventKind::RfLoss,
            });
        } else if let Some(x) = &ev.latency {
            let extra = self.dur(&f("extra"), &x.extra);
            let extra = self.at_most(&f("extra"), extra, MAX_LINK_DELAY, "60s");
            let jitter = self.dur_or(&f("jitter"), x.jitter.as_ref(), 0.0);
            let jitter = self.at_most(&f("jitter"), jitter, MAX_LINK_DELAY, "60s");
            let duration = self.pos_dur(&f("duration"), &x.duration);
            let groups = self.group_list(&kp, &x.groups);
            net.push(NetworkEvent {
                at,
                duration,
                groups,
                kind: NetworkEventKind::Latency { extra, jitter },
            });
        } else if let Some(x) = &ev.packet_loss {
            let probability = self.closed(&f("probability"), x.probability, 0.0, MAX_LOSS);
            let duration = self.pos_dur(&f("duration"), &x.duration);
            let groups = self.group_list(&kp, &x.groups);
            // `groups: []` is an error already; it must not count as "all groups" here.
            if x.groups.as_ref().is_none_or(|g| !g.is_empty()) {
                self.packet_losses.push(PacketLoss {
                    event: i,
                    groups: groups.clone(),
                    probability,
                    at,
                    duration,
                });
            }
            net.push(NetworkEvent {
                at,
                duration,
                groups,
                kind: NetworkEventKind::Loss { probability },
            });
        }
    }

    /// A `replay`: refuse `rms` groups, check the phase map against the grid, read the
    /// recording (path relative to the scenario file) and lower the mapped channels to volts.
    fn replay(&mut self, kp: &str, x: &ReplayDto, groups: &[usize]) -> Option<(PhaseSet, Replay)> {
        let before = self.diags.len();
        let rms: Vec<String> = (0..self.groups.len())
            .filter(|g| groups.is_empty() || groups.contains(g))
            .filter(|&g| self.fidelities.get(g) == Some(&Fidelity::Rms))
            .map(|g| format!("`{}`", self.groups[g]))
            .collect();
        if !rms.is_empty() {
            self.err(
                kp,
                format!(
                    "group {} has `fidelity: rms`, which cannot replay a recording (its \
                     half-cycle values come from the disturbance model, not from samples); \
                     use `fidelity: waveform` or name the waveform groups in `groups`",
                    rms.join(", ")
                ),
            );
        }
        let scale = x.scale.map_or(1.0, |v| {
            self.left_open(&format!("{kp}.scale"), v, 0.0, 10_000.0)
        });
        let wanted: Vec<(Phase, &String)> = [&x.channels.L1, &x.channels.L2, &x.channels.L3]
            .into_iter()
            .zip(Phase::ALL)
            .filter_map(|(c, p)| c.as_ref().map(|c| (p, c)))
            .collect();
        if wanted.is_empty() {
            self.err(
                &format!("{kp}.channels"),
                "must map at least one phase to a recording channel, e.g. `{ L1: VA }`",
            );
        }
        let mut mapped = Vec::new();
        for (p, c) in &wanted {
            if p.index() >= self.system.channels() {
                let have: Vec<&str> = self.grid_phases().iter().map(Phase::name).collect();
                self.err(
                    &format!("{kp}.channels.{p}"),
                    format!(
                        "phase {p} does not exist on a {} grid (phases: {})",
                        self.system_name(),
                        have.join(", ")
                    ),
                );
            } else {
                mapped.push((*p, c.as_str()));
            }
        }
        let cfg_path = self
            .file
            .parent()
            .unwrap_or(Path::new(""))
            .join(&x.comtrade);
        let comtrade = format!("{kp}.comtrade");
        let data = match reports::comtrade_read::read(&cfg_path) {
            Ok(d) => d,
            Err(e) => {
                self.err(&comtrade, format!("cannot replay the recording: {e}"));
                return None;
            }
        };
        let cfg = &data.config;
        let shown = cfg_path.display();
        let Some(rate) = cfg.uniform_rate() else {
            // The `nrates` line follows the station, count, channel and frequency lines.
            let line = 4 + cfg.analog.len() + cfg.digital;
            self.err(
                &comtrade,
                format!(
                    "cannot replay the recording: {shown}:{line}: nrates: {} sampling rates; a \
                     replay needs a single rate",
                    cfg.rates.len()
                ),
            );
            return None;
        };
        let mut channels: [Option<Arc<[f32]>>; 3] = [None, None, None];
        for (p, id) in mapped {
            let path = format!("{kp}.channels.{p}");
            let Some(i) = cfg.analog_index(id) else {
                let ids: Vec<&str> = cfg.analog.iter().map(|c| c.id.as_str()).collect();
                self.err(
                    &path,
                    format!(
                        "no analog channel `{id}` in {shown}; its channels: {}",
                        ids.join(", ")
                    ),
                );
                continue;
            };
            let info = &cfg.analog[i];
            // The analog lines start on line 3.
            let line = 3 + i;
            // Case matters: `MV` would be megavolts, not millivolts, so it is refused.
            let unit = match info.unit.trim() {
                "V" | "v" => 1.0,
                "kV" | "KV" | "kv" => 1000.0,
                "mV" => 0.001,
                _ => {
                    self.err(
                        &path,
                        format!(
                            "{shown}:{line}: uu: channel `{id}` is in `{}`, not volts (V, kV or mV)",
                            info.unit
                        ),
                    );
                    continue;
                }
            };
            let values = &data.values[i];
            if let Some(k) = values.iter().position(|v| !v.is_finite()) {
                self.err(
                    &path,
                    format!(
                        "{}: channel `{id}` has no value at sample {} (a missing-value \
                         marker); a replay needs every sample",
                        reports::comtrade_read::dat_path(&cfg_path).display(),
                        k + 1
                    ),
                );
                continue;
            }
            let k = unit * scale;
            // Scaled, every sample must still be a plausible voltage (and an f32 at all).
            let limit = 100.0 * self.nominal * std::f64::consts::SQRT_2;
            if let Some(j) = values.iter().position(|v| {
                let x = v * k;
                !x.is_finite() || x.abs() > limit
            }) {
                self.err(
                    &path,
                    format!(
                        "{}: channel `{id}` sample {} is {} V after unit and scale, beyond \
                         100 × the nominal peak ({limit:.0} V)",
                        reports::comtrade_read::dat_path(&cfg_path).display(),
                        j + 1,
                        values[j] * k
                    ),
                );
                continue;
            }
            channels[p.index()] = Some(values.iter().map(|v| (v * k) as f32).collect());
        }
        if self.diags.len() != before {
            return None;
        }
        let phases = PhaseSet::of(
            &Phase::ALL
                .into_iter()
                .filter(|p| channels[p.index()].is_some())
                .collect::<Vec<_>>(),
        );
        let trigger = cfg.trigger.since(&cfg.start);
        Some((
            phases,
            Replay::new(channels, rate, trigger, cfg_path.display().to_string()),
        ))
    }

    /// The hottest temperature of a thermal drift over its effective length (its duration,
    /// cut at the end of the scenario), from the closed form of the model (see
    /// [`drift_temperature`]; the temperature is monotone, so the hottest is at an end), must
    /// stay ≤ 250 °C (the linear R(T) model's range), and the drop at that temperature must stay
    /// below 0.9 × nominal. The temperature error is reported at `duration` (what to shorten),
    /// the drop error at the drift as a whole.
    fn thermal_range(&mut self, i: usize, at: Seconds, t: &ThermalDrift) {
        let alpha = t.conductor.alpha20();
        let span = t.duration.min(self.duration - at).max(0.0);
        let end = drift_temperature(t, span);
        let hottest = end.max(t.initial);
        let (a, b) = thermal_coefficients(t, alpha);
        let settle = if b > 0.0 {
            format!("it would settle at {:.1} °C", a / b)
        } else {
            "it has no steady state and grows without bound".to_string()
        };
        if hottest > MAX_CONDUCTOR_TEMPERATURE || !hottest.is_finite() {
            let reach = time_to_temperature(t, MAX_CONDUCTOR_TEMPERATURE)
                .map(|s| format!("; it reaches {MAX_CONDUCTOR_TEMPERATURE} °C after {}, so shorten `duration` below that", secs((s * 1e3).floor() / 1e3)))
                .unwrap_or_default();
            let temp = if hottest.is_finite() {
                format!("{hottest:.1} °C")
            } else {
                "an unbounded temperature".to_string()
            };
            self.err(
                &format!("events[{i}].thermal_drift.duration"),
                format!(
                    "the conductor reaches {temp} after {} of drift ({settle}), above {MAX_CONDUCTOR_TEMPERATURE} °C (the linear R(T) model's range){reach}; or lower current, r20 or thermal_resistance",
                    secs(span)
                ),
            );
            return;
        }
        let r = t.r20 * (1.0 + alpha * (hottest - 20.0));
        let pf = t.power_factor.clamp(0.0, 1.0);
        let drop = t.current * (r * pf + t.x * (1.0 - pf * pf).sqrt());
        let limit = 0.9 * self.nominal;
        if drop >= limit || !drop.is_finite() {
            self.err(
                &format!("events[{i}].thermal_drift"),
                format!("the voltage drop along the conductor reaches {drop:.1} V at {hottest:.1} °C (the hottest over {} of drift), not below 0.9 × nominal ({limit:.1} V); lower current, r20, x or duration", secs(span)),
            );
        }
    }

    /// Link loss plus the `packet_loss` windows active at the same instant (as the link adds
    /// them, windows `[at, at + duration)`) stays ≤ 0.9 for every group: beyond that, QoS 1
    /// retries give up and messages are lost. Swept per group over the window starts (the sum
    /// only rises at a start); the error is reported at every window active at the peak.
    fn loss_budget(&mut self, groups: &[MeterGroup]) {
        let mut found: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (g, group) in groups.iter().enumerate() {
            let wins: Vec<&PacketLoss> = self
                .packet_losses
                .iter()
                .filter(|w| (w.groups.is_empty() || w.groups.contains(&g)) && w.duration > 0.0)
                .collect();
            // Boundaries in time order, ends before starts at the same instant (half-open).
            let mut edges: Vec<(f64, bool, f64)> = wins
                .iter()
                .flat_map(|w| {
                    [
                        (w.at, true, w.probability),
                        (w.at + w.duration, false, w.probability),
                    ]
                })
                .collect();
            edges.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
            let mut sum = 0.0;
            let mut peak: Option<(f64, f64)> = None;
            for (time, start, p) in edges {
                if start {
                    sum += p;
                    if peak.is_none_or(|(best, _)| sum > best) {
                        peak = Some((sum, time));
                    }
                } else {
                    sum -= p;
                }
            }
            let Some((_, when)) = peak else { continue };
            let active: Vec<&PacketLoss> = wins
                .into_iter()
                .filter(|w| w.at <= when && when < w.at + w.duration)
                .collect();
            let total = group.link.loss + active.iter().map(|w| w.probability).sum::<f64>();
            if total <= MAX_LOSS + 1e-9 {
                continue;
            }
            let names: Vec<String> = active
                .iter()
                .map(|w| format!("events[{}]", w.event))
                .collect();
            let what = format!(
                "on group `{}` the link loss {} plus the packet_loss windows active at {} ({}) add up to {total:.3}",
                group.name,
                group.link.loss,
                secs(when),
                names.join(", ")
            );
            for w in active {
                found.entry(w.event).or_default().push(what.clone());
            }
        }
        for (i, over) in found {
            self.err(
                &format!("events[{i}].packet_loss.probability"),
                format!(
                    "{}, more than {MAX_LOSS}; QoS 1 would give up and lose messages",
                    over.join("; ")
                ),
            );
        }
    }

    fn rms_variation(
        &mut self,
        kp: &str,
        level: f64,
        duration: &DurationDto,
        ramp: Option<&DurationDto>,
        jump: Option<f64>,
    ) -> RmsVariation {
        let duration = self.pos_dur(&format!("{kp}.duration"), duration);
        let ramp = self.dur_or(&format!("{kp}.ramp"), ramp, 0.0);
        let phase_jump_deg = jump.map_or(0.0, |j| {
            self.closed(&format!("{kp}.phase_jump"), j, -180.0, 180.0)
        });
        RmsVariation {
            level,
            duration,
            ramp,
            phase_jump_deg,
        }
    }

    fn point_on_wave(&mut self, path: &str, v: Option<f64>) -> Option<f64> {
        v.map(|a| {
            self.check(
                path,
                a,
                (0.0..360.0).contains(&a),
                "must be ≥ 0 and below 360 (degrees)",
            )
        })
    }

    fn angle(&mut self, path: &str, v: Option<f64>) -> f64 {
        v.map_or(0.0, |a| self.closed(path, a, -360.0, 360.0))
    }

    fn harmonics(&mut self, kp: &str, h: &HarmonicsDto) -> DisturbanceKind {
        if h.orders.is_empty() {
            self.err(&format!("{kp}.orders"), "needs at least one harmonic order");
        }
        let check_orders = |cx: &mut Self, field: &str, map: &BTreeMap<u32, f64>| {
            for (&order, &mag) in map {
                let p = format!("{kp}.{field}.{order}");
                if !(2..=50).contains(&order) {
                    cx.err(
                        &p,
                        format!("harmonic order must be between 2 and 50, got {order}"),
                    );
                }
                cx.closed(&p, mag, 0.0, 0.5);
            }
        };
        check_orders(self, "orders", &h.orders);
        if let Some(to) = &h.to {
            check_orders(self, "to", to);
        }
        let orders: BTreeSet<u32> = h
            .orders
            .keys()
            .chain(h.to.iter().flat_map(|t| t.keys()))
            .copied()
            .collect();
        let angle = |cx: &mut Self, order: u32| -> f64 {
            h.angles
                .as_ref()
                .and_then(|a| a.get(&order))
                .map_or(0.0, |&a| {
                    cx.closed(&format!("{kp}.angles.{order}"), a, -360.0, 360.0)
                })
        };
        if let Some(a) = &h.angles {
            for order in a.keys().filter(|o| !orders.contains(o)) {
                self.err(
                    &format!("{kp}.angles.{order}"),
                    format!("order {order} has an angle but no magnitude in `orders` or `to`"),
                );
            }
        }
        let mut components = Vec::new();
        let mut end = Vec::new();
        for &order in &orders {
            let phase_deg = angle(self, order);
            let start = h.orders.get(&order).copied().unwrap_or(0.0);
            components.push(Harmonic {
                order,
                magnitude: start,
                phase_deg,
            });
            let stop =
                h.to.as_ref()
                    .map_or(start, |t| t.get(&order).copied().unwrap_or(start));
            end.push(Harmonic {
                order,
                magnitude: stop,
                phase_deg,
            });
        }
        let duration = self.pos_dur(&format!("{kp}.duration"), &h.duration);
        DisturbanceKind::Harmonics {
            components,
            end: h.to.as_ref().map(|_| end),
            duration,
        }
    }

    fn expectation(&mut self, i: usize, e: &ExpectDto) -> Option<Expectation> {
        let path = format!("expect[{i}]");
        let present: Vec<&str> = [
            e.trip.is_some(),
            e.no_trip.is_some(),
            e.alarm_latency.is_some(),
            e.no_flapping.is_some(),
            e.delivered.is_some(),
            e.measurement.is_some(),
            e.event.is_some(),
        ]
        .into_iter()
        .zip(EXPECT_KINDS)
        .filter_map(|(on, k)| on.then_some(k))
        .collect();
        match present.len() {
            1 => {}
            0 => {
                self.err(
                    &path,
                    format!(
                        "needs exactly one kind key; one of: {}",
                        EXPECT_KINDS.join(", ")
                    ),
                );
                return None;
            }
            _ => {
                self.err(
                    &path,
                    format!(
                        "has several kinds ({}); write one expectation per kind",
                        present.join(", ")
                    ),
                );
                return None;
            }
        }
        let kp = format!("{path}.{}", present[0]);
        let f = |name: &str| format!("{kp}.{name}");
        if let Some(t) = &e.trip {
            let code = self.trip_code(&f("code"), &t.code);
            let group = self.required_group(&kp, &t.group);
            let phase = t.phase.as_ref().and_then(|p| self.phase(&f("phase"), p));
            let within = self.pos_dur(&f("within"), &t.within);
            Some(Expectation::Trip {
                code: code?,
                group,
                phase,
                within,
            })
        } else if let Some(t) = &e.no_trip {
            let code = match &t.code {
                Some(c) => Some(self.trip_code(&f("code"), c)?),
                None => None,
            };
            let group = self.required_group(&kp, &t.group);
            Some(Expectation::NoTrip { group, code })
        } else if let Some(a) = &e.alarm_latency {
            if a.p50.is_none() && a.p99.is_none() && a.max.is_none() {
                self.err(&kp, "give at least one of p50, p99, max");
            }
            Some(Expectation::AlarmLatency {
                p50: a.p50.as_ref().map(|d| self.dur(&f("p50"), d)),
                p99: a.p99.as_ref().map(|d| self.dur(&f("p99"), d)),
                max: a.max.as_ref().map(|d| self.dur(&f("max"), d)),
            })
        } else if let Some(n) = &e.no_flapping {
            Some(Expectation::NoFlapping {
                max_trips_per_meter: n.max_trips_per_meter,
            })
        } else if let Some(d) = &e.delivered {
            Some(Expectation::Delivered {
                lost: d.lost,
                duplicates: d.duplicates,
            })
        } else if let Some(m) = &e.measurement {
            let group = self.default_group(&f("group"), &m.group);
            let phase = m
                .phase
                .as_ref()
                .map_or(Some(Phase::L1), |p| self.phase(&f("phase"), p));
            let before = self.diags.len();
            let at = self.dur(&f("at"), &m.at);
            let at_ok = self.diags.len() == before;
            let expected = self.check(&f("expected"), m.expected, true, "must be a finite number");
            let tolerance = self.tolerance(&f("tolerance"), &m.tolerance)?;
            let cycle = 1.0 / self.frequency;
            // Window of each quantity: a value is emitted when its window ends, and a window
            // that ends after the scenario is never emitted.
            let (quantity, name, window) = match m.quantity {
                QuantityDto::Rms10Cycle => (Quantity::Rms10Cycle, "rms_10cycle", 0.2),
                QuantityDto::Rms150Cycle => (Quantity::Rms150Cycle, "rms_150cycle", 3.0),
                QuantityDto::UrmsHalfCycle => (Quantity::UrmsHalfCycle, "urms_half_cycle", cycle),
                QuantityDto::Thd => (Quantity::Thd, "thd", 0.2),
                QuantityDto::Frequency => (Quantity::Frequency, "frequency", 0.2),
                QuantityDto::ActivePower => (Quantity::ActivePower, "active_power", 0.2),
                QuantityDto::Energy => (Quantity::Energy, "energy", 0.2),
            };
            // Windows are aligned on zero crossings, not on t = 0: with one cycle of margin the
            // window containing `at` ends by at + window + one cycle.
            let latest = self.duration - window - cycle;
            if at_ok && at > latest {
                let hint = if latest >= 0.0 {
                    format!("use at ≤ {}", secs((latest * 1e6).floor() / 1e6))
                } else {
                    format!(
                        "the scenario is too short for one (it needs at least {})",
                        secs(window + cycle)
                    )
                };
                self.err(
                    &f("at"),
                    format!(
                        "no complete {name} window contains t = {} before the scenario ends at {}; {hint}",
                        secs(at),
                        secs(self.duration)
                    ),
                );
            }
            if matches!(quantity, Quantity::ActivePower | Quantity::Energy) {
                let name = match quantity {
                    Quantity::Energy => "energy",
                    _ => "active_power",
                };
                if !self.has_load {
                    self.err(
                        &f("quantity"),
                        format!(
                            "{name} needs `grid.load` (currents are synthesized only with a load)"
                        ),
                    );
                } else if self.fidelities.get(group) == Some(&Fidelity::Rms) {
                    self.err(
                        &f("quantity"),
                        format!(
                            "{name} is not measured by group `{}`: `fidelity: rms` computes no power; use `fidelity: waveform`",
                            self.groups[group]
                        ),
                    );
                }
            }
            Some(Expectation::Measurement {
                quantity,
                group,
                phase: phase?,
                at,
                expected,
                tolerance,
            })
        } else if let Some(v) = &e.event {
            let group = self.default_group(&f("group"), &v.group);
            let phase = v.phase.as_ref().and_then(|p| self.phase(&f("phase"), p));
            let residual = self.closed(&f("residual"), v.residual, 0.0, 2.0);
            let residual_tolerance = match &v.tolerance {
                None => Tolerance::Absolute(0.002),
                Some(t) => match self.tolerance(&f("tolerance"), t)? {
                    // ± p % of Udin, expressed in pu.
                    Tolerance::Percent(p) => Tolerance::Absolute(p / 100.0),
                    abs => abs,
                },
            };
            let duration = self.pos_dur(&f("duration"), &v.duration);
            let duration_tolerance = self.dur_or(
                &f("duration_tolerance"),
                v.duration_tolerance.as_ref(),
                1.0 / self.frequency,
            );
            let kind = match v.kind {
                PqEventKindDto::Dip => PqEventKind::Dip,
                PqEventKindDto::Swell => PqEventKind::Swell,
                PqEventKindDto::Interruption => PqEventKind::Interruption,
            };
            Some(Expectation::PqEvent {
                kind,
                group,
                phase,
                residual,
                residual_tolerance,
                duration,
                duration_tolerance,
            })
        } else {
            None
        }
    }

    fn default_group(&mut self, path: &str, group: &Option<String>) -> usize {
        group
            .as_ref()
            .and_then(|g| self.group_index(path, g))
            .unwrap_or(0)
    }

    fn trip_code(&mut self, path: &str, name: &str) -> Option<EventCode> {
        match EventCode::parse(name.trim()) {
            Some(c) if c.is_trip() => Some(c),
            Some(c) => {
                self.err(path, format!("`{}` is a clear code; expectations name trips: UV_TRIP_0x01 or OV_TRIP_0x02", c.name()));
                None
            }
            None => {
                self.err(
                    path,
                    format!("unknown event code `{name}`; expected UV_TRIP_0x01 or OV_TRIP_0x02"),
                );
                None
            }
        }
    }

    fn tolerance(&mut self, path: &str, t: &ToleranceDto) -> Option<Tolerance> {
        let parsed = match &t.0 {
            Scalar::Num(n) if *n >= 0.0 && n.is_finite() => Ok(Tolerance::Absolute(*n)),
            Scalar::Str(s) => match s.trim().strip_suffix('%').map(|n| n.trim().parse::<f64>()) {
                Some(Ok(p)) if p >= 0.0 && p.is_finite() => Ok(Tolerance::Percent(p)),
                _ => Err(format!("malformed tolerance `{s}`; write a number (absolute) or a percentage such as `0.5%`")),
            },
            other => Err(format!("tolerance must be a non-negative number or a percentage such as `0.5%`, got {other}")),
        };
        match parsed {
            Ok(t) => Some(t),
            Err(m) => {
                self.err(path, m);
                None
            }
        }
    }
}
