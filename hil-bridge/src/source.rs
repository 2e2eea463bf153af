//! Programmable AC sources: a pure program model, the lowering of a sim-core supply envelope
//! into programs, the safety check, the two SCPI dialects (Chroma 61500/61600/61800 and
//! AMETEK/California Instruments Sequoia, STANDARDS.md §11.2–§11.3) and the async driver.
//!
//! Everything up to [`Dialect::render`] is sans-io: a [`Program`] is checked against the lab's
//! [`SafetyLimits`] and rendered to exact command lines before a byte is sent. [`AcSource`]
//! is the IO shell. Its output is switched off on every error path; call
//! [`AcSource::shutdown`] at the end of a run (and on Ctrl-C), and if a source is dropped
//! without it, the drop spawns a best-effort `OUTP OFF` on the current tokio runtime.

use std::time::Duration;

use sim_core::disturbance::{Disturbance, DisturbanceKind};
use sim_core::synth::{resolve_point_on_wave, SupplyModel};
use sim_core::{GridSpec, Seconds};

use crate::scpi::{Identity, InstrumentError, LinkFailed, ScpiLink, ScpiTransport};

/// How long one list point lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dwell {
    /// Whole cycles of the point's frequency.
    Cycles(u32),
    Seconds(f64),
}

impl Dwell {
    /// The dwell in seconds at `freq`.
    pub fn seconds(self, freq: f64) -> f64 {
        match self {
            Dwell::Cycles(n) => f64::from(n) / freq,
            Dwell::Seconds(s) => s,
        }
    }
}

/// One list point: the RMS voltage ramps from `volts_start` to `volts_end` over the dwell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ListPoint {
    pub volts_start: f64,
    pub volts_end: f64,
    pub freq: f64,
    pub dwell: Dwell,
}

/// What a source is told to produce (RMS volts, Hz).
#[derive(Debug, Clone, PartialEq)]
pub enum Program {
    /// A steady output.
    Fixed { volts: f64, freq: f64 },
    /// A sequence of points run `count` times after the trigger; with `phase_deg` the start is
    /// synchronised to that angle of the output.
    List {
        points: Vec<ListPoint>,
        count: u32,
        phase_deg: Option<f64>,
    },
    /// `count` pulses of `pulse_volts` lasting `width_cycles`, one every `period_cycles`,
    /// starting at `start_phase_deg`, on a `base_volts` output.
    Pulse {
        base_volts: f64,
        pulse_volts: f64,
        freq: f64,
        width_cycles: u32,
        period_cycles: u32,
        start_phase_deg: f64,
        count: u32,
    },
}

/// The lab profile's limits; every program is checked against them before anything is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SafetyLimits {
    pub max_volts: f64,
    pub max_freq: f64,
    pub min_freq: f64,
}

/// A program that cannot or must not be sent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProgramError {
    #[error("refusing {what} = {value}: outside the lab's safety limit {limit}")]
    Unsafe {
        /// E.g. "list point 2 volts_end".
        what: String,
        value: f64,
        limit: String,
    },
    #[error("{disturbance} at {at} s cannot be programmed: {reason}")]
    Unsupported {
        disturbance: &'static str,
        at: Seconds,
        reason: String,
    },
    #[error("{dialect} cannot program {what}")]
    DialectUnsupported { dialect: &'static str, what: String },
    #[error("{dialect} lists hold at most {max} points, the program has {points}")]
    TooManyPoints {
        dialect: &'static str,
        points: usize,
        max: usize,
    },
    #[error("invalid program: {0}")]
    Invalid(String),
}

impl SafetyLimits {
    /// Checks every level and frequency of `p`; the error names the point and the value.
    pub fn check(&self, p: &Program) -> Result<(), ProgramError> {
        let volts = |what: String, v: f64| {
            if v.is_finite() && (0.0..=self.max_volts).contains(&v) {
                Ok(())
            } else {
                Err(ProgramError::Unsafe {
                    what,
                    value: v,
                    limit: format!("0..={} V", self.max_volts),
                })
            }
        };
        let freq = |what: String, f: f64| {
            if f.is_finite() && (self.min_freq..=self.max_freq).contains(&f) {
                Ok(())
            } else {
                Err(ProgramError::Unsafe {
                    what,
                    value: f,
                    limit: format!("{}..={} Hz", self.min_freq, self.max_freq),
                })
            }
        };
        match p {
            Program::Fixed { volts: v, freq: f } => {
                volts("fixed volts".into(), *v)?;
                freq("fixed freq".into(), *f)
            }
            Program::List {
                points,
                count,
                phase_deg,
            } => {
                if points.is_empty() || *count == 0 {
                    return Err(ProgramError::Invalid(
                        "a list needs at least one point and a count ≥ 1".into(),
                    ));
                }
                if phase_deg.is_some_and(|d| !d.is_finite()) {
                    return Err(ProgramError::Invalid("list phase is not finite".into()));
                }
                for (i, pt) in points.iter().enumerate() {
                    let n = i + 1;
                    volts(format!("list point {n} volts_start"), pt.volts_start)?;
                    volts(format!("list point {n} volts_end"), pt.volts_end)?;
                    freq(format!("list point {n} freq"), pt.freq)?;
                    let d = pt.dwell.seconds(pt.freq);
                    if !(d.is_finite() && d > 0.0) {
                        return Err(ProgramError::Invalid(format!(
                            "list point {n} dwell {d} s is not positive"
                        )));
                    }
                }
                Ok(())
            }
            Program::Pulse {
                base_volts,
                pulse_volts,
                freq: f,
                width_cycles,
                period_cycles,
                start_phase_deg,
                count,
            } => {
                volts("pulse base_volts".into(), *base_volts)?;
                volts("pulse pulse_volts".into(), *pulse_volts)?;
                freq("pulse freq".into(), *f)?;
                if *width_cycles == 0 || *period_cycles < *width_cycles || *count == 0 {
                    return Err(ProgramError::Invalid(format!(
                        "pulse width {width_cycles} / period {period_cycles} cycles / count {count}: need 0 < width ≤ period and count ≥ 1"
                    )));
                }
                if !start_phase_deg.is_finite() {
                    return Err(ProgramError::Invalid("pulse phase is not finite".into()));
                }
                Ok(())
            }
        }
    }
}

/// Lowers the supply envelope that `grid` + `disturbances` give meter group `group` on
/// channel `channel` (0 = L1) over `[0, until)` into one program, list time 0 = scenario
/// time 0 = the trigger.
///
/// Sags, swells and interruptions (with ramps, as ramping points) and frequency steps are
/// supported; everything else — harmonics included, which neither dialect's list carries —
/// is refused with [`ProgramError::Unsupported`] naming the disturbance. Point-on-wave onsets
/// are resolved as sim-core does (against L1 from t = 0) and the list is then started in
/// phase sync at 0°, so the onsets land on the same angles as in sim mode.
pub fn envelope_program(
    grid: &GridSpec,
    disturbances: &[Disturbance],
    group: usize,
    channel: usize,
    until: Seconds,
) -> Result<Program, ProgramError> {
    if !(until.is_finite() && until > 0.0) {
        return Err(ProgramError::Invalid(format!("program length {until} s")));
    }
    let mut ds: Vec<Disturbance> = disturbances
        .iter()
        .filter(|d| d.applies_to_group(group))
        .cloned()
        .collect();
    let phase_sync = ds.iter().any(|d| d.point_on_wave_deg.is_some());
    resolve_point_on_wave(grid, &mut ds);
    let mut edges = vec![0.0, until];
    for d in &ds {
        let unsupported = |reason: &str| ProgramError::Unsupported {
            disturbance: d.kind.name(),
            at: d.at,
            reason: reason.to_string(),
        };
        match &d.kind {
            DisturbanceKind::Sag(v)
            | DisturbanceKind::Swell(v)
            | DisturbanceKind::Interruption(v) => {
                if v.phase_jump_deg != 0.0 {
                    return Err(unsupported("phase jumps are not programmed by list mode"));
                }
                if !d.phases.contains_index(channel) {
                    continue;
                }
                edges.extend([
                    d.at,
                    d.at + v.ramp,
                    d.at + v.duration,
                    d.at + v.duration + v.ramp,
                ]);
            }
            DisturbanceKind::Frequency {
                ramp,
                duration,
                return_to_nominal,
                ..
            } => {
                if *ramp != 0.0 {
                    return Err(unsupported("only frequency steps (ramp 0) are programmed"));
                }
                edges.push(d.at);
                if *return_to_nominal {
                    edges.push(d.at + duration);
                }
            }
            DisturbanceKind::Harmonics { .. } => {
                return Err(unsupported(
                    "harmonics are not supported by the Chroma or AMETEK list programs here",
                ))
            }
            _ => return Err(unsupported("no AC-source program reproduces it")),
        }
    }
    edges.retain(|e| e.is_finite() && *e >= 0.0 && *e <= until);
    edges.sort_by(f64::total_cmp);
    edges.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    let model = SupplyModel::new(grid, ds);
    if edges.len() <= 2 {
        return Ok(Program::Fixed {
            volts: grid.nominal,
            freq: grid.frequency,
        });
    }
    let eps = 1e-9;
    let round = |v: f64| (v * 1e6).round() / 1e6;
    let points = edges
        .windows(2)
        .map(|w| {
            let (a, b) = (w[0], w[1]);
            let freq = round(model.frequency((a + b) / 2.0));
            let secs = b - a;
            let cycles = secs * freq;
            let dwell = if (cycles - cycles.round()).abs() < 1e-6 && cycles.round() >= 1.0 {
                Dwell::Cycles(cycles.round() as u32)
            } else {
                Dwell::Seconds(round(secs))
            };
            // The envelope is linear inside a segment: sample just inside both edges (the
            // edges themselves are discontinuities) and extrapolate to them.
            let (vs, ve) = (
                grid.nominal * model.envelope(channel, a + eps),
                grid.nominal * model.envelope(channel, b - eps),
            );
            let slope = (ve - vs) / (secs - 2.0 * eps);
            ListPoint {
                volts_start: round(vs - slope * eps),
                volts_end: round(ve + slope * eps),
                freq,
                dwell,
            }
        })
        .collect();
    Ok(Program::List {
        points,
        count: 1,
        phase_deg: phase_sync.then_some(0.0),
    })
}

/// The command lines of one program: sent by [`AcSource::program`], then `start` by
/// [`AcSource::start`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub program: Vec<String>,
    pub start: Vec<String>,
}

/// An SCPI command set for AC sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Chroma 61500/61600/61800 (STANDARDS.md §11.2). `LIST:POIN`, `LIST:DWEL`, `LIST:COUN`,
    /// `OUTP:MODE` and `TRIG ON` are \[R\]-grade there: to be checked against the unit's manual.
    /// The phase (`LIST:SPH`, `PULS:SPH`) and pulse (`PULS:*`) command names, and dwell in
    /// seconds under `LIST:BASE TIME`, are not in STANDARDS.md at all: unverified, to be
    /// checked against the unit's manual.
    Chroma,
    /// AMETEK / California Instruments Sequoia (STANDARDS.md §11.3). `TRIG:SYNC:SOUR PHAS`,
    /// `TRIG:SYNC:PHAS` and `VOLT:TRIG` are \[R\]-grade: to be checked against the unit's manual.
    Ametek,
}

/// AMETEK/CI list length limit (STANDARDS.md §11.3).
pub const AMETEK_MAX_LIST_POINTS: usize = 32;

/// Numbers as SCPI `<NRf>`: up to 6 decimals, no trailing zeros.
pub fn nrf(x: f64) -> String {
    let s = format!("{x:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

fn join(xs: impl IntoIterator<Item = f64>) -> String {
    xs.into_iter().map(nrf).collect::<Vec<_>>().join(",")
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Chroma => "Chroma 61500/61600/61800",
            Dialect::Ametek => "AMETEK/CI Sequoia",
        }
    }

    /// Default wait after `*RST` (STANDARDS.md §11.1: Chroma advises ~7 s for the 61500; no
    /// figure is recorded for AMETEK, 3 s is a guess — configure [`AcSource::rst_delay`]).
    pub fn default_rst_delay(self) -> Duration {
        match self {
            Dialect::Chroma => Duration::from_secs(7),
            Dialect::Ametek => Duration::from_secs(3),
        }
    }

    /// Lines that switch the output off (and leave any running transient).
    pub fn off_lines(self) -> Vec<String> {
        match self {
            Dialect::Chroma => vec!["OUTP OFF".into()],
            Dialect::Ametek => vec!["ABOR".into(), "OUTP OFF".into()],
        }
    }

    /// Checks `p` against `limits` and renders its exact command lines. Nothing is sent.
    pub fn render(self, p: &Program, limits: &SafetyLimits) -> Result<Rendered, ProgramError> {
        limits.check(p)?;
        match self {
            Dialect::Chroma => Ok(chroma(p, limits)),
            Dialect::Ametek => ametek(p),
        }
    }
}

fn chroma(p: &Program, limits: &SafetyLimits) -> Rendered {
    let mut l = vec![
        "SYST:REM".to_string(),
        format!("SOUR:VOLT:LIM:AC {}", nrf(limits.max_volts)),
    ];
    let start = match p {
        Program::Fixed { volts, freq } => {
            l.push("OUTP:MODE FIXED".into());
            l.push(format!("SOUR:FREQ {}", nrf(*freq)));
            l.push(format!("SOUR:VOLT:AC {}", nrf(*volts)));
            vec!["OUTP ON".to_string()]
        }
        Program::List {
            points,
            count,
            phase_deg,
        } => {
            let p0 = points[0];
            l.push(format!("SOUR:FREQ {}", nrf(p0.freq)));
            l.push(format!("SOUR:VOLT:AC {}", nrf(p0.volts_start)));
            l.push("OUTP:MODE LIST".into());
            let cycles = points.iter().all(|p| matches!(p.dwell, Dwell::Cycles(_)));
            l.push(format!(
                "LIST:BASE {}",
                if cycles { "CYCLE" } else { "TIME" }
            ));
            l.push(format!("LIST:POIN {}", points.len()));
            l.push(format!(
                "LIST:VOLT:AC:STAR {}",
                join(points.iter().map(|p| p.volts_start))
            ));
            l.push(format!(
                "LIST:VOLT:AC:END {}",
                join(points.iter().map(|p| p.volts_end))
            ));
            l.push(format!(
                "LIST:FREQ:STAR {}",
                join(points.iter().map(|p| p.freq))
            ));
            l.push(format!(
                "LIST:FREQ:END {}",
                join(points.iter().map(|p| p.freq))
            ));
            let dwells = points.iter().map(|p| match p.dwell {
                Dwell::Cycles(n) if cycles => f64::from(n),
                d => d.seconds(p.freq),
            });
            l.push(format!("LIST:DWEL {}", join(dwells)));
            l.push(format!("LIST:COUN {count}"));
            if let Some(deg) = phase_deg {
                l.push(format!("LIST:SPH {}", nrf(*deg)));
            }
            vec!["OUTP ON".to_string(), "TRIG ON".to_string()]
        }
        Program::Pulse {
            base_volts,
            pulse_volts,
            freq,
            width_cycles,
            period_cycles,
            start_phase_deg,
            count,
        } => {
            l.push(format!("SOUR:FREQ {}", nrf(*freq)));
            l.push(format!("SOUR:VOLT:AC {}", nrf(*base_volts)));
            l.push("OUTP:MODE PULSE".into());
            l.push(format!("PULS:VOLT:AC {}", nrf(*pulse_volts)));
            l.push(format!("PULS:FREQ {}", nrf(*freq)));
            l.push(format!(
                "PULS:PER {}",
                nrf(f64::from(*period_cycles) / freq)
            ));
            l.push(format!(
                "PULS:DCYC {}",
                nrf(100.0 * f64::from(*width_cycles) / f64::from(*period_cycles))
            ));
            l.push(format!("PULS:COUN {count}"));
            l.push(format!("PULS:SPH {}", nrf(*start_phase_deg)));
            vec!["OUTP ON".to_string(), "TRIG ON".to_string()]
        }
    };
    Rendered { program: l, start }
}

fn ametek(p: &Program) -> Result<Rendered, ProgramError> {
    let name = Dialect::Ametek.name();
    let mut l = Vec::new();
    let sync = |l: &mut Vec<String>, deg: f64| {
        l.push("TRIG:SYNC:SOUR PHAS".to_string());
        l.push(format!("TRIG:SYNC:PHAS {}", nrf(deg)));
    };
    let start = match p {
        Program::Fixed { volts, freq } => {
            l.push("VOLT:MODE FIX".into());
            l.push("FREQ:MODE FIX".into());
            l.push(format!("FREQ {}", nrf(*freq)));
            l.push(format!("VOLT {}", nrf(*volts)));
            vec!["OUTP ON".to_string()]
        }
        Program::List {
            points,
            count,
            phase_deg,
        } => {
            if points.len() > AMETEK_MAX_LIST_POINTS {
                return Err(ProgramError::TooManyPoints {
                    dialect: name,
                    points: points.len(),
                    max: AMETEK_MAX_LIST_POINTS,
                });
            }
            if let Some((i, _)) = points
                .iter()
                .enumerate()
                .find(|(_, p)| p.volts_start != p.volts_end)
            {
                return Err(ProgramError::DialectUnsupported {
                    dialect: name,
                    what: format!("a ramping list point (point {})", i + 1),
                });
            }
            let p0 = points[0];
            l.push(format!("FREQ {}", nrf(p0.freq)));
            l.push(format!("VOLT {}", nrf(p0.volts_start)));
            l.push("VOLT:MODE LIST".into());
            l.push("FREQ:MODE LIST".into());
            l.push(format!(
                "LIST:VOLT {}",
                join(points.iter().map(|p| p.volts_start))
            ));
            l.push(format!("LIST:FREQ {}", join(points.iter().map(|p| p.freq))));
            l.push(format!(
                "LIST:DWEL {}",
                join(points.iter().map(|p| p.dwell.seconds(p.freq)))
            ));
            l.push(format!("LIST:COUN {count}"));
            l.push("LIST:STEP AUTO".into());
            if let Some(deg) = phase_deg {
                sync(&mut l, *deg);
            }
            vec!["OUTP ON".to_string(), "INIT".to_string()]
        }
        Program::Pulse {
            base_volts,
            pulse_volts,
            freq,
            width_cycles,
            period_cycles,
            start_phase_deg,
            count,
        } => {
            l.push("FREQ:MODE FIX".into());
            l.push(format!("FREQ {}", nrf(*freq)));
            l.push(format!("VOLT {}", nrf(*base_volts)));
            l.push("VOLT:MODE PULS".into());
            l.push(format!("VOLT:TRIG {}", nrf(*pulse_volts)));
            l.push("PULS:HOLD WIDT".into());
            l.push(format!(
                "PULS:WIDT {}",
                nrf(f64::from(*width_cycles) / freq)
            ));
            l.push(format!(
                "PULS:PER {}",
                nrf(f64::from(*period_cycles) / freq)
            ));
            l.push(format!("PULS:COUN {count}"));
            sync(&mut l, *start_phase_deg);
            vec!["OUTP ON".to_string(), "INIT".to_string()]
        }
    };
    Ok(Rendered { program: l, start })
}

/// Any failure of the AC-source driver; the link and the instrument's own errors stay apart.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AcSourceError {
    #[error(transparent)]
    LinkFailed(#[from] LinkFailed),
    #[error(transparent)]
    Instrument(#[from] InstrumentError),
    #[error(transparent)]
    Program(#[from] ProgramError),
    #[error("the AC source was already shut down")]
    ShutDown,
}

/// The async driver of one programmable AC source.
///
/// Any error from [`AcSource::program`] or [`AcSource::start`] switches the output off before
/// it is returned. End every use with [`AcSource::shutdown`] (also from a Ctrl-C handler);
/// dropping the driver without it spawns a best-effort `OUTP OFF` on the current runtime.
pub struct AcSource<T: ScpiTransport + 'static> {
    link: Option<ScpiLink<T>>,
    dialect: Dialect,
    limits: SafetyLimits,
    /// The start lines of the last program that was accepted.
    armed: Option<Vec<String>>,
    /// Wait after `*RST` before the next command.
    pub rst_delay: Duration,
}

impl<T: ScpiTransport + 'static> std::fmt::Debug for AcSource<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcSource")
            .field("link", &self.link)
            .field("dialect", &self.dialect)
            .field("limits", &self.limits)
            .finish()
    }
}

impl<T: ScpiTransport + 'static> AcSource<T> {
    pub fn new(link: ScpiLink<T>, dialect: Dialect, limits: SafetyLimits) -> Self {
        AcSource {
            link: Some(link),
            dialect,
            limits,
            armed: None,
            rst_delay: dialect.default_rst_delay(),
        }
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    fn link(&mut self) -> Result<&mut ScpiLink<T>, AcSourceError> {
        self.link.as_mut().ok_or(AcSourceError::ShutDown)
    }

    /// `*IDN?`.
    pub async fn identify(&mut self) -> Result<Identity, AcSourceError> {
        Ok(self.link()?.identify().await?)
    }

    /// `*RST`, `*CLS`, the post-reset delay, then a clean error queue.
    pub async fn reset(&mut self) -> Result<(), AcSourceError> {
        let delay = self.rst_delay;
        let link = self.link()?;
        link.send("*RST").await?;
        tokio::time::sleep(delay).await;
        link.send("*CLS").await?;
        link.check_errors("*RST").await??;
        Ok(())
    }

    /// Checks `p` against the safety limits (nothing is sent when it fails), sends its lines,
    /// then drains `SYST:ERR?`; any error switches the output off before it is returned.
    pub async fn program(&mut self, p: &Program) -> Result<(), AcSourceError> {
        self.armed = None;
        let rendered = self.dialect.render(p, &self.limits)?;
        let r = self.send_checked(&rendered.program, "programming").await;
        self.off_on_error(r).await?;
        self.armed = Some(rendered.start);
        Ok(())
    }

    /// Switches the output on and triggers the last accepted program, then drains
    /// `SYST:ERR?`; any error switches the output off before it is returned.
    pub async fn start(&mut self) -> Result<(), AcSourceError> {
        let Some(lines) = self.armed.clone() else {
            return Err(ProgramError::Invalid("start before a program was accepted".into()).into());
        };
        let r = self.send_checked(&lines, "starting the output").await;
        self.off_on_error(r).await
    }

    /// Switches the output off (leaving any running transient first).
    pub async fn output_off(&mut self) -> Result<(), AcSourceError> {
        let lines = self.dialect.off_lines();
        let link = self.link()?;
        for l in &lines {
            link.send(l).await?;
        }
        Ok(())
    }

    /// Switches the output off and releases the link; the drop guard then stays quiet.
    pub async fn shutdown(mut self) -> Result<(), AcSourceError> {
        let r = self.output_off().await;
        self.link = None;
        r
    }

    async fn send_checked(&mut self, lines: &[String], context: &str) -> Result<(), AcSourceError> {
        let link = self.link()?;
        for l in lines {
            link.send(l).await?;
        }
        link.check_errors(context).await??;
        Ok(())
    }

    async fn off_on_error(&mut self, r: Result<(), AcSourceError>) -> Result<(), AcSourceError> {
        if let Err(e) = &r {
            tracing::warn!(error = %e, "switching the AC source output off after an error");
            if let Err(off) = self.output_off().await {
                tracing::error!(error = %off, "could not switch the AC source output off");
            }
        }
        r
    }
}

impl<T: ScpiTransport + 'static> Drop for AcSource<T> {
    fn drop(&mut self) {
        let Some(mut link) = self.link.take() else {
            return;
        };
        let lines = self.dialect.off_lines();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                tracing::warn!(
                    addr = link.addr(),
                    "AC source dropped without shutdown: sending OUTP OFF"
                );
                rt.spawn(async move {
                    for l in &lines {
                        if let Err(e) = link.send(l).await {
                            tracing::error!(error = %e, "could not switch the AC source output off");
                            return;
                        }
                    }
                });
            }
            Err(_) => tracing::error!(
                addr = link.addr(),
                "AC source dropped outside a tokio runtime: output may still be on"
            ),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sim_core::disturbance::{Harmonic, RmsVariation};
    use sim_core::{PhaseSet, PhaseSystem};

    fn grid() -> GridSpec {
        GridSpec {
            nominal: 230.0,
            frequency: 60.0,
            system: PhaseSystem::ThreePhase,
            sample_rate: 6000.0,
            load: None,
        }
    }

    fn dist(at: f64, pow: Option<f64>, phases: PhaseSet, kind: DisturbanceKind) -> Disturbance {
        Disturbance {
            at,
            point_on_wave_deg: pow,
            phases,
            groups: vec![],
            kind,
        }
    }

    fn sag(level: f64, duration: f64) -> DisturbanceKind {
        DisturbanceKind::Sag(RmsVariation {
            level,
            duration,
            ramp: 0.0,
            phase_jump_deg: 0.0,
        })
    }

    #[test]
    fn nrf_trims() {
        assert_eq!(nrf(230.0), "230");
        assert_eq!(nrf(0.083_333_333), "0.083333");
        assert_eq!(nrf(-0.0), "0");
        assert_eq!(nrf(59.5), "59.5");
    }

    #[test]
    fn a_point_on_wave_sag_becomes_a_phase_synced_list() {
        let d = dist(0.1, Some(90.0), PhaseSet::ALL, sag(0.5, 5.0 / 60.0));
        let p = envelope_program(&grid(), &[d], 0, 0, 0.5).unwrap();
        // Onset resolved to the next 90° of L1 after 0.1 s: 6.25 cycles = 0.104167 s.
        let pt = |v, dwell| ListPoint {
            volts_start: v,
            volts_end: v,
            freq: 60.0,
            dwell,
        };
        assert_eq!(
            p,
            Program::List {
                points: vec![
                    pt(230.0, Dwell::Seconds(0.104_167)),
                    pt(115.0, Dwell::Cycles(5)),
                    pt(230.0, Dwell::Seconds(0.3125)),
                ],
                count: 1,
                phase_deg: Some(0.0),
            }
        );
    }

    #[test]
    fn ramps_frequency_steps_other_phases_and_refusals() {
        let g = grid();
        let ramped = DisturbanceKind::Swell(RmsVariation {
            level: 1.2,
            duration: 0.1,
            ramp: 0.05,
            phase_jump_deg: 0.0,
        });
        let p =
            envelope_program(&g, &[dist(0.05, None, PhaseSet::ALL, ramped)], 0, 0, 0.25).unwrap();
        let Program::List {
            points, phase_deg, ..
        } = &p
        else {
            panic!("{p:?}")
        };
        assert_eq!(*phase_deg, None);
        let levels: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (p.volts_start, p.volts_end))
            .collect();
        assert_eq!(
            levels,
            vec![
                (230.0, 230.0),
                (230.0, 276.0),
                (276.0, 276.0),
                (276.0, 230.0),
                (230.0, 230.0)
            ]
        );
        assert_eq!(points[1].dwell, Dwell::Cycles(3));

        let step = DisturbanceKind::Frequency {
            deviation: -0.5,
            ramp: 0.0,
            duration: 0.5,
            return_to_nominal: true,
        };
        let p = envelope_program(&g, &[dist(0.5, None, PhaseSet::ALL, step)], 0, 2, 2.0).unwrap();
        let Program::List { points, .. } = &p else {
            panic!("{p:?}")
        };
        let f: Vec<f64> = points.iter().map(|p| p.freq).collect();
        assert_eq!(f, vec![60.0, 59.5, 60.0]);
        // 0.5 s at 59.5 Hz is 29.75 cycles: kept in seconds.
        assert_eq!(points[1].dwell, Dwell::Seconds(0.5));
        assert_eq!(points[0].dwell, Dwell::Cycles(30));
    }

    #[test]
    fn unsupported_disturbances_are_named_and_a_quiet_channel_is_fixed() {
        let g = grid();
        let h = DisturbanceKind::Harmonics {
            components: vec![Harmonic {
                order: 5,
                magnitude: 0.05,
                phase_deg: 0.0,
            }],
            end: None,
            duration: 1.0,
        };
        let e = envelope_program(&g, &[dist(0.2, None, PhaseSet::ALL, h)], 0, 0, 1.0).unwrap_err();
        assert!(
            matches!(
                e,
                ProgramError::Unsupported {
                    disturbance: "harmonics",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().starts_with("harmonics at 0.2 s"), "{e}");
        // A sag on L2 only leaves L1 fixed at nominal.
        let d = dist(
            0.1,
            None,
            PhaseSet::of(&[sim_core::Phase::L2]),
            sag(0.5, 0.1),
        );
        assert_eq!(
            envelope_program(&g, &[d], 0, 0, 1.0).unwrap(),
            Program::Fixed {
                volts: 230.0,
                freq: 60.0
            }
        );
    }

    #[test]
    fn safety_names_the_point_and_value() {
        let limits = SafetyLimits {
            max_volts: 253.0,
            max_freq: 65.0,
            min_freq: 45.0,
        };
        let pt = |v| ListPoint {
            volts_start: v,
            volts_end: v,
            freq: 60.0,
            dwell: Dwell::Cycles(5),
        };
        let p = Program::List {
            points: vec![pt(230.0), pt(276.0)],
            count: 1,
            phase_deg: None,
        };
        let e = Dialect::Chroma.render(&p, &limits).unwrap_err();
        assert_eq!(
            e.to_string(),
            "refusing list point 2 volts_start = 276: outside the lab's safety limit 0..=253 V"
        );
        let e = limits
            .check(&Program::Fixed {
                volts: 230.0,
                freq: f64::NAN,
            })
            .unwrap_err();
        assert!(
            matches!(e, ProgramError::Unsafe { ref what, .. } if what == "fixed freq"),
            "{e}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reset_waits_the_post_rst_delay_before_the_next_command() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let (client, server) = tokio::io::duplex(4096);
        let peer = tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut r = BufReader::new(server);
            let mut seen = Vec::new();
            let mut line = String::new();
            while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                let l = line.trim_end().to_string();
                line.clear();
                seen.push((l.clone(), start.elapsed()));
                if l == "SYST:ERR?" {
                    r.get_mut().write_all(b"0,\"No error\"\n").await.unwrap();
                }
            }
            seen
        });
        let link = ScpiLink::new(client, "pipe", Duration::from_secs(1));
        let mut src = AcSource::new(
            link,
            Dialect::Chroma,
            SafetyLimits {
                max_volts: 253.0,
                max_freq: 65.0,
                min_freq: 45.0,
            },
        );
        assert_eq!(src.rst_delay, Duration::from_secs(7));
        src.reset().await.unwrap();
        src.shutdown().await.unwrap();
        let seen = peer.await.unwrap();
        let names: Vec<&str> = seen.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(names, ["*RST", "*CLS", "SYST:ERR?", "OUTP OFF"]);
        assert!(seen[0].1 < Duration::from_secs(1));
        assert!(seen[1].1 >= Duration::from_secs(7), "{seen:?}");
    }
}
