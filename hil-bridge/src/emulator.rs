//! An SCPI programmable-AC-source emulator for CI, in the Chroma and the AMETEK/CI dialect.
//!
//! [`Instrument`] is the sans-io model: one command line in, an optional reply line out. It
//! keeps the settings, list and pulse programs and an error queue (`-113,"Undefined header"`,
//! `-222,"Data out of range"`, `-221,"Settings conflict"`, …). Headers match in short or long
//! form, case-insensitively, with an optional leading colon and optional `[SOURce:]`.
//! [`Emulator`] serves it on a TCP listener. What the source puts out is
//! [`EmulatedOutput`]: a pure function of the time since the trigger, to be sampled or
//! turned into sim-core disturbances ([`EmulatedOutput::to_disturbances`],
//! [`outputs_to_disturbances`]) that feed the device-under-test's supply model.
//!
//! Modelling choices (not the real units' documented behaviour): after a list or pulse
//! train ends the output holds the last point's end level; `*RST` leaves the error queue
//! alone; only the queries the driver uses are implemented (others are -113).

use std::collections::VecDeque;
use std::f64::consts::{SQRT_2, TAU};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufStream};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::scpi::{read_line, ScpiError};
use crate::source::{nrf, Dialect};

mod supply;
pub use supply::{outputs_to_disturbances, ConvertError, MAX_PIECES};

/// Error-queue depth; further errors replace the last entry with -350.
pub const QUEUE_DEPTH: usize = 16;

/// One piece of a triggered transient.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    /// Seconds since the trigger (within one pass of the list).
    pub start: f64,
    pub duration: f64,
    pub volts_start: f64,
    pub volts_end: f64,
    pub freq_start: f64,
    pub freq_end: f64,
}

impl Segment {
    fn volts(&self, tau: f64) -> f64 {
        self.volts_start + (self.volts_end - self.volts_start) * (tau / self.duration)
    }
    fn freq(&self, tau: f64) -> f64 {
        self.freq_start + (self.freq_end - self.freq_start) * (tau / self.duration)
    }
    fn cycles(&self, tau: f64) -> f64 {
        self.freq_start * tau
            + (self.freq_end - self.freq_start) * tau * tau / (2.0 * self.duration)
    }
}

/// A triggered list or pulse train: `segments` (one pass) run `count` times, then the
/// output holds `end`.
#[derive(Debug, Clone, PartialEq)]
pub struct Transient {
    pub segments: Vec<Segment>,
    pub count: u32,
    /// Output angle at the trigger, degrees (the phase-sync angle, 0 without sync).
    pub start_phase_deg: f64,
    /// (RMS volts, Hz) after the last pass.
    pub end: (f64, f64),
}

impl Transient {
    fn pass(&self) -> f64 {
        self.segments.iter().map(|s| s.duration).sum()
    }

    /// The segment and offset in it at `t` ≥ 0 since the trigger, with the cycles elapsed
    /// before that segment's start; `None` once the transient has ended.
    fn locate(&self, t: f64) -> Option<(&Segment, f64, f64)> {
        let pass = self.pass();
        if pass.is_nan() || pass <= 0.0 || t >= pass * f64::from(self.count) {
            return None;
        }
        let k = (t / pass).floor();
        let pass_cycles: f64 = self.segments.iter().map(|s| s.cycles(s.duration)).sum();
        let mut tau = t - k * pass;
        let mut cycles = k * pass_cycles;
        for s in &self.segments {
            if tau < s.duration {
                return Some((s, tau, cycles));
            }
            tau -= s.duration;
            cycles += s.cycles(s.duration);
        }
        self.segments
            .last()
            .map(|s| (s, s.duration, cycles - s.cycles(s.duration)))
    }
}

/// The emulated source's output, as a pure function of time since the trigger (before the
/// trigger and without one: the fixed settings).
#[derive(Debug, Clone, PartialEq)]
pub struct EmulatedOutput {
    pub output_on: bool,
    /// (RMS volts, Hz) of the fixed settings.
    pub fixed: (f64, f64),
    pub transient: Option<Transient>,
}

impl EmulatedOutput {
    /// RMS level at `t` s since the trigger (0 with the output off).
    pub fn rms_at(&self, t: f64) -> f64 {
        if !self.output_on {
            return 0.0;
        }
        self.level(t).0
    }

    /// Frequency at `t` s since the trigger.
    pub fn freq_at(&self, t: f64) -> f64 {
        self.level(t).1
    }

    fn level(&self, t: f64) -> (f64, f64) {
        match &self.transient {
            Some(tr) if t >= 0.0 => match tr.locate(t) {
                Some((s, tau, _)) => (s.volts(tau), s.freq(tau)),
                None => tr.end,
            },
            _ => self.fixed,
        }
    }

    /// Instantaneous voltage at `t` s since the trigger: √2 · rms · sin(angle), the angle
    /// starting at the phase-sync angle and advancing with ∫f dt.
    pub fn volts_at(&self, t: f64) -> f64 {
        if !self.output_on {
            return 0.0;
        }
        let (rms, cycles, phase) = match &self.transient {
            Some(tr) if t >= 0.0 => {
                let ph = tr.start_phase_deg.to_radians();
                match tr.locate(t) {
                    Some((s, tau, before)) => (s.volts(tau), before + s.cycles(tau), ph),
                    None => {
                        let total = tr.pass() * f64::from(tr.count);
                        let all: f64 = tr
                            .segments
                            .iter()
                            .map(|s| s.cycles(s.duration))
                            .sum::<f64>()
                            * f64::from(tr.count);
                        (tr.end.0, all + tr.end.1 * (t - total), ph)
                    }
                }
            }
            Some(tr) => (
                self.fixed.0,
                self.fixed.1 * t,
                tr.start_phase_deg.to_radians(),
            ),
            None => (self.fixed.0, self.fixed.1 * t, 0.0),
        };
        SQRT_2 * rms * (TAU * (cycles - cycles.floor()) + phase).sin()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Fixed,
    List,
    Pulse,
    Step,
}

/// The sans-io emulated instrument.
#[derive(Debug, Clone)]
pub struct Instrument {
    dialect: Dialect,
    /// The unit's own voltage range; above it → -222.
    pub max_volts: f64,
    pub idn: String,
    errors: VecDeque<ScpiError>,
    remote: bool,
    volts: f64,
    freq: f64,
    volt_limit: f64,
    output_on: bool,
    volt_mode: Mode,
    freq_mode: Mode,
    list_cycles: bool,
    list_volt_start: Vec<f64>,
    list_volt_end: Vec<f64>,
    list_freq_start: Vec<f64>,
    list_freq_end: Vec<f64>,
    list_dwell: Vec<f64>,
    list_count: u32,
    list_phase: Option<f64>,
    pulse_volts: f64,
    pulse_period: f64,
    pulse_width: Option<f64>,
    pulse_dcyc: f64,
    pulse_count: u32,
    pulse_phase: Option<f64>,
    sync_phase: bool,
    sync_deg: f64,
    transient: Option<Transient>,
}

type Reply = Result<Option<String>, ScpiError>;

fn err(code: i32, message: &str) -> ScpiError {
    ScpiError {
        code,
        message: message.into(),
    }
}

fn undefined() -> ScpiError {
    err(-113, "Undefined header")
}
fn out_of_range() -> ScpiError {
    err(-222, "Data out of range")
}
fn conflict() -> ScpiError {
    err(-221, "Settings conflict")
}
fn data_type() -> ScpiError {
    err(-104, "Data type error")
}
fn missing() -> ScpiError {
    err(-109, "Missing parameter")
}

/// Does `header` (already split on ':') match `pattern` like `[SOURce:]LIST:VOLTage:AC:STARt`?
/// Upper-case letters of a pattern node are its short form.
fn header_matches(pattern: &str, header: &[&str]) -> bool {
    // Nodes are `NAME` or an optional `[NAME:]` / `[:NAME]`, separated by ':'.
    let mut nodes: Vec<(bool, &str)> = Vec::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let (inner, after) = r.split_once(']').unwrap_or((r, ""));
            nodes.push((true, inner.trim_matches(':')));
            rest = after;
        } else {
            let end = rest.find([':', '[']).unwrap_or(rest.len());
            if end > 0 {
                nodes.push((false, &rest[..end]));
            }
            rest = rest[end..].strip_prefix(':').unwrap_or(&rest[end..]);
        }
    }
    fn node_eq(node: &str, tok: &str) -> bool {
        let short: String = node
            .chars()
            .take_while(|c| !c.is_ascii_lowercase())
            .collect();
        tok.eq_ignore_ascii_case(node) || tok.eq_ignore_ascii_case(&short)
    }
    fn go(nodes: &[(bool, &str)], toks: &[&str]) -> bool {
        match (nodes.first(), toks.first()) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some((opt, n)), t) => {
                (t.is_some_and(|t| node_eq(n, t)) && go(&nodes[1..], &toks[1..]))
                    || (*opt && go(&nodes[1..], toks))
            }
        }
    }
    go(&nodes, header)
}

fn nums(args: &str) -> Result<Vec<f64>, ScpiError> {
    if args.trim().is_empty() {
        return Err(missing());
    }
    args.split(',')
        .map(|a| {
            a.trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(data_type)
        })
        .collect()
}

fn num(args: &str) -> Result<f64, ScpiError> {
    match nums(args)?.as_slice() {
        [x] => Ok(*x),
        _ => Err(data_type()),
    }
}

fn count(args: &str) -> Result<u32, ScpiError> {
    let x = num(args)?;
    if x.fract() != 0.0 || !(1.0..=2e8).contains(&x) {
        return Err(out_of_range());
    }
    Ok(x as u32)
}

fn word<'a>(args: &str, choices: &[&'a str]) -> Result<&'a str, ScpiError> {
    let a = args.trim();
    if a.is_empty() {
        return Err(missing());
    }
    choices
        .iter()
        .find(|c| header_matches(c, &[a]))
        .copied()
        .ok_or_else(data_type)
}

fn on_off(args: &str) -> Result<bool, ScpiError> {
    match word(args, &["ON", "OFF", "1", "0"])? {
        "ON" | "1" => Ok(true),
        _ => Ok(false),
    }
}

const MIN_FREQ: f64 = 15.0;
const MAX_FREQ: f64 = 1000.0;

impl Instrument {
    pub fn new(dialect: Dialect, max_volts: f64) -> Self {
        let idn = match dialect {
            Dialect::Chroma => "Chroma ATE,61511,EMU0001,1.00-emulated",
            Dialect::Ametek => "AMETEK Programmable Power,Sequoia SQ45,EMU0002,1.00-emulated",
        };
        Instrument::after_reset(dialect, max_volts, idn.to_string(), VecDeque::new(), false)
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// `*RST`: every setting back to its power-on value; identity, error queue and remote
    /// state are kept.
    fn reset(&mut self) {
        let idn = std::mem::take(&mut self.idn);
        let errors = std::mem::take(&mut self.errors);
        *self = Instrument::after_reset(self.dialect, self.max_volts, idn, errors, self.remote);
    }

    /// An instrument in its reset state.
    fn after_reset(
        dialect: Dialect,
        max_volts: f64,
        idn: String,
        errors: VecDeque<ScpiError>,
        remote: bool,
    ) -> Instrument {
        Instrument {
            dialect,
            max_volts,
            idn,
            errors,
            remote,
            volts: 0.0,
            freq: 50.0,
            volt_limit: max_volts,
            output_on: false,
            volt_mode: Mode::Fixed,
            freq_mode: Mode::Fixed,
            list_cycles: false,
            list_volt_start: vec![],
            list_volt_end: vec![],
            list_freq_start: vec![],
            list_freq_end: vec![],
            list_dwell: vec![],
            list_count: 1,
            list_phase: None,
            pulse_volts: 0.0,
            pulse_period: 0.0,
            pulse_width: None,
            pulse_dcyc: 50.0,
            pulse_count: 1,
            pulse_phase: None,
            sync_phase: false,
            sync_deg: 0.0,
            transient: None,
        }
    }

    /// The error queue, oldest first.
    pub fn errors(&self) -> Vec<ScpiError> {
        self.errors.iter().cloned().collect()
    }

    pub fn is_remote(&self) -> bool {
        self.remote
    }

    /// What the source puts out now.
    pub fn output(&self) -> EmulatedOutput {
        EmulatedOutput {
            output_on: self.output_on,
            fixed: (self.volts, self.freq),
            transient: self.transient.clone(),
        }
    }

    fn push_error(&mut self, e: ScpiError) {
        if self.errors.len() >= QUEUE_DEPTH {
            if let Some(last) = self.errors.back_mut() {
                *last = err(-350, "Queue overflow");
            }
        } else {
            self.errors.push_back(e);
        }
    }

    /// Handles one command line; returns the reply line of a query. Never panics.
    pub fn handle_line(&mut self, line: &str) -> Option<String> {
        let line = line.trim();
        if line.is_empty() {
            return None;
        }
        match self.dispatch(line) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(line, error = %e, "emulated instrument error");
                self.push_error(e);
                None
            }
        }
    }

    fn volts_ok(&self, v: f64) -> Result<f64, ScpiError> {
        let cap = match self.dialect {
            Dialect::Chroma => self.max_volts.min(self.volt_limit),
            Dialect::Ametek => self.max_volts,
        };
        if (0.0..=cap).contains(&v) {
            Ok(v)
        } else {
            Err(out_of_range())
        }
    }

    fn volts_list(&self, args: &str) -> Result<Vec<f64>, ScpiError> {
        let v = nums(args)?;
        for x in &v {
            self.volts_ok(*x)?;
        }
        Ok(v)
    }

    fn freq_ok(f: f64) -> Result<f64, ScpiError> {
        if (MIN_FREQ..=MAX_FREQ).contains(&f) {
            Ok(f)
        } else {
            Err(out_of_range())
        }
    }

    fn freq_list(args: &str) -> Result<Vec<f64>, ScpiError> {
        nums(args)?.into_iter().map(Self::freq_ok).collect()
    }

    fn dwell_list(args: &str) -> Result<Vec<f64>, ScpiError> {
        let d = nums(args)?;
        if d.iter().any(|x| !(*x > 0.0 && *x <= 1e6)) {
            return Err(out_of_range());
        }
        Ok(d)
    }

    fn dispatch(&mut self, line: &str) -> Reply {
        let (header, args) = match line.split_once(|c: char| c.is_ascii_whitespace()) {
            Some((h, a)) => (h, a.trim()),
            None => (line, ""),
        };
        let header = header.strip_prefix(':').unwrap_or(header);
        let (header, query) = match header.strip_suffix('?') {
            Some(h) => (h, true),
            None => (header, false),
        };
        if header.starts_with('*') {
            return self.common(&header.to_ascii_uppercase(), query);
        }
        let toks: Vec<&str> = header.split(':').collect();
        if toks.iter().any(|t| t.is_empty()) {
            return Err(undefined());
        }
        let is = |p: &str| header_matches(p, &toks);
        if query {
            return if is("SYSTem:ERRor[:NEXT]") {
                let e = self
                    .errors
                    .pop_front()
                    .unwrap_or_else(|| err(0, "No error"));
                Ok(Some(e.to_string()))
            } else if is("OUTPut[:STATe]") {
                Ok(Some(if self.output_on { "1" } else { "0" }.into()))
            } else if is("[SOURce:]FREQuency") {
                Ok(Some(nrf(self.freq)))
            } else if (self.dialect == Dialect::Chroma && is("[SOURce:]VOLTage:AC"))
                || (self.dialect == Dialect::Ametek && is("[SOURce:]VOLTage[:LEVel]"))
            {
                Ok(Some(nrf(self.volts)))
            } else {
                Err(undefined())
            };
        }
        if is("OUTPut[:STATe]") {
            self.output_on = on_off(args)?;
            if !self.output_on {
                self.transient = None;
            }
            return Ok(None);
        }
        if is("[SOURce:]FREQuency") {
            self.freq = Self::freq_ok(num(args)?)?;
            return Ok(None);
        }
        match self.dialect {
            Dialect::Chroma => self.chroma(&is, args),
            Dialect::Ametek => self.ametek(&is, args),
        }?;
        Ok(None)
    }

    fn common(&mut self, header: &str, query: bool) -> Reply {
        match (header, query) {
            ("*IDN", true) => Ok(Some(self.idn.clone())),
            ("*OPC", true) => Ok(Some("1".into())),
            ("*RST", false) => {
                self.reset();
                Ok(None)
            }
            ("*CLS", false) => {
                self.errors.clear();
                Ok(None)
            }
            ("*TRG", false) if self.dialect == Dialect::Ametek => {
                self.trigger_ametek()?;
                Ok(None)
            }
            _ => Err(undefined()),
        }
    }

    fn chroma(&mut self, is: &dyn Fn(&str) -> bool, args: &str) -> Result<(), ScpiError> {
        if is("SYSTem:REMote") {
            self.remote = true;
        } else if is("SYSTem:LOCal") {
            self.remote = false;
        } else if is("[SOURce:]VOLTage:AC") {
            self.volts = self.volts_ok(num(args)?)?;
        } else if is("[SOURce:]VOLTage:LIMit:AC") {
            let v = num(args)?;
            if !(0.0..=self.max_volts).contains(&v) {
                return Err(out_of_range());
            }
            self.volt_limit = v;
        } else if is("OUTPut:MODE") {
            self.volt_mode = match word(args, &["FIXED", "LIST", "PULSE", "STEP"])? {
                "FIXED" => Mode::Fixed,
                "LIST" => Mode::List,
                "PULSE" => Mode::Pulse,
                _ => Mode::Step,
            };
            self.transient = None;
        } else if is("[SOURce:]LIST:BASE") {
            self.list_cycles = word(args, &["TIME", "CYCLE"])? == "CYCLE";
        } else if is("[SOURce:]LIST:POINts") {
            let n = num(args)?;
            if n.fract() != 0.0 || !(1.0..=100.0).contains(&n) {
                return Err(out_of_range());
            }
        } else if is("[SOURce:]LIST:VOLTage:AC:STARt") {
            self.list_volt_start = self.volts_list(args)?;
        } else if is("[SOURce:]LIST:VOLTage:AC:END") {
            self.list_volt_end = self.volts_list(args)?;
        } else if is("[SOURce:]LIST:FREQuency:STARt") {
            self.list_freq_start = Self::freq_list(args)?;
        } else if is("[SOURce:]LIST:FREQuency:END") {
            self.list_freq_end = Self::freq_list(args)?;
        } else if is("[SOURce:]LIST:DWELl") {
            self.list_dwell = Self::dwell_list(args)?;
        } else if is("[SOURce:]LIST:COUNt") {
            self.list_count = count(args)?;
        } else if is("[SOURce:]LIST:SPHase") {
            self.list_phase = Some(num(args)?.rem_euclid(360.0));
        } else if is("[SOURce:]PULSe:VOLTage:AC") {
            self.pulse_volts = self.volts_ok(num(args)?)?;
        } else if is("[SOURce:]PULSe:FREQuency") {
            Self::freq_ok(num(args)?)?;
        } else if is("[SOURce:]PULSe:PERiod") {
            self.pulse_period = Self::dwell_list(args).and_then(|v| {
                if v.len() == 1 {
                    Ok(v[0])
                } else {
                    Err(data_type())
                }
            })?;
        } else if is("[SOURce:]PULSe:DCYCle") {
            let d = num(args)?;
            if !(d > 0.0 && d <= 100.0) {
                return Err(out_of_range());
            }
            self.pulse_dcyc = d;
        } else if is("[SOURce:]PULSe:COUNt") {
            self.pulse_count = count(args)?;
        } else if is("[SOURce:]PULSe:SPHase") {
            self.pulse_phase = Some(num(args)?.rem_euclid(360.0));
        } else if is("TRIGger") {
            if on_off(args)? {
                self.trigger_chroma()?;
            } else {
                self.transient = None;
            }
        } else {
            return Err(undefined());
        }
        Ok(())
    }

    fn trigger_chroma(&mut self) -> Result<(), ScpiError> {
        match self.volt_mode {
            Mode::List => {
                let n = self.list_volt_start.len();
                let lens = [
                    self.list_volt_end.len(),
                    self.list_freq_start.len(),
                    self.list_freq_end.len(),
                    self.list_dwell.len(),
                ];
                if n == 0 || lens.iter().any(|l| *l != n) {
                    return Err(conflict());
                }
                let mut t = 0.0;
                let mut segments = Vec::with_capacity(n);
                for i in 0..n {
                    let (fs, fe) = (self.list_freq_start[i], self.list_freq_end[i]);
                    let duration = if self.list_cycles {
                        // Cycles of a ramping frequency: n = ∫f dt = (fs + fe)/2 · d.
                        self.list_dwell[i] * 2.0 / (fs + fe)
                    } else {
                        self.list_dwell[i]
                    };
                    segments.push(Segment {
                        start: t,
                        duration,
                        volts_start: self.list_volt_start[i],
                        volts_end: self.list_volt_end[i],
                        freq_start: fs,
                        freq_end: fe,
                    });
                    t += duration;
                }
                let end = (self.list_volt_end[n - 1], self.list_freq_end[n - 1]);
                self.transient = Some(Transient {
                    segments,
                    count: self.list_count,
                    start_phase_deg: self.list_phase.unwrap_or(0.0),
                    end,
                });
                Ok(())
            }
            Mode::Pulse => {
                if self.pulse_period.is_nan() || self.pulse_period <= 0.0 {
                    return Err(conflict());
                }
                let width = self.pulse_period * self.pulse_dcyc / 100.0;
                self.transient = Some(self.pulse_train(width, self.pulse_phase.unwrap_or(0.0)));
                Ok(())
            }
            Mode::Fixed | Mode::Step => Err(conflict()),
        }
    }

    fn pulse_train(&self, width: f64, phase: f64) -> Transient {
        let (v, f) = (self.volts, self.freq);
        let seg = |start, duration, volts| Segment {
            start,
            duration,
            volts_start: volts,
            volts_end: volts,
            freq_start: f,
            freq_end: f,
        };
        let mut segments = vec![seg(0.0, width, self.pulse_volts)];
        if self.pulse_period > width {
            segments.push(seg(width, self.pulse_period - width, v));
        }
        Transient {
            segments,
            count: self.pulse_count,
            start_phase_deg: phase,
            end: (v, f),
        }
    }

    fn ametek(&mut self, is: &dyn Fn(&str) -> bool, args: &str) -> Result<(), ScpiError> {
        let mode = |args: &str| -> Result<Mode, ScpiError> {
            Ok(match word(args, &["FIXed", "LIST", "PULSe", "STEP"])? {
                "FIXed" => Mode::Fixed,
                "LIST" => Mode::List,
                "PULSe" => Mode::Pulse,
                _ => Mode::Step,
            })
        };
        if is("[SOURce:]VOLTage:MODE") {
            self.volt_mode = mode(args)?;
        } else if is("[SOURce:]FREQuency:MODE") {
            self.freq_mode = mode(args)?;
        } else if is("[SOURce:]VOLTage:TRIGgered") {
            self.pulse_volts = self.volts_ok(num(args)?)?;
        } else if is("[SOURce:]VOLTage[:LEVel]") {
            self.volts = self.volts_ok(num(args)?)?;
        } else if is("[SOURce:]LIST:VOLTage") {
            let v = self.volts_list(args)?;
            if v.len() > crate::source::AMETEK_MAX_LIST_POINTS {
                return Err(out_of_range());
            }
            self.list_volt_start = v;
        } else if is("[SOURce:]LIST:FREQuency") {
            self.list_freq_start = Self::freq_list(args)?;
        } else if is("[SOURce:]LIST:DWELl") {
            self.list_dwell = Self::dwell_list(args)?;
        } else if is("[SOURce:]LIST:COUNt") {
            self.list_count = count(args)?;
        } else if is("[SOURce:]LIST:STEP") {
            // Only dwell-paced lists are emulated.
            if word(args, &["AUTO", "ONCE"])? != "AUTO" {
                return Err(conflict());
            }
        } else if is("[SOURce:]PULSe:COUNt") {
            self.pulse_count = count(args)?;
        } else if is("[SOURce:]PULSe:WIDTh") {
            let w = num(args)?;
            if !(w > 0.0 && w <= 1e6) {
                return Err(out_of_range());
            }
            self.pulse_width = Some(w);
        } else if is("[SOURce:]PULSe:PERiod") {
            let p = num(args)?;
            if !(p > 0.0 && p <= 1e6) {
                return Err(out_of_range());
            }
            self.pulse_period = p;
        } else if is("[SOURce:]PULSe:DCYCle") {
            let d = num(args)?;
            if !(d > 0.0 && d <= 100.0) {
                return Err(out_of_range());
            }
            self.pulse_dcyc = d;
        } else if is("[SOURce:]PULSe:HOLD") {
            word(args, &["WIDTh", "DCYCle"])?;
        } else if is("TRIGger:SYNChronize:SOURce") {
            self.sync_phase = word(args, &["PHASe", "IMMediate"])? == "PHASe";
        } else if is("TRIGger:SYNChronize:PHASe") {
            self.sync_deg = num(args)?.rem_euclid(360.0);
        } else if is("INITiate[:IMMediate]") {
            self.trigger_ametek()?;
        } else if is("ABORt") {
            self.transient = None;
        } else {
            return Err(undefined());
        }
        Ok(())
    }

    fn trigger_ametek(&mut self) -> Result<(), ScpiError> {
        let phase = if self.sync_phase { self.sync_deg } else { 0.0 };
        let list = self.volt_mode == Mode::List || self.freq_mode == Mode::List;
        if list {
            let n = if self.volt_mode == Mode::List {
                self.list_volt_start.len()
            } else {
                self.list_freq_start.len()
            };
            let fits = |l: usize| l == n || l == 1;
            let freq_ok = self.freq_mode != Mode::List || fits(self.list_freq_start.len());
            if n == 0 || !freq_ok || !fits(self.list_dwell.len()) {
                return Err(conflict());
            }
            let pick =
                |v: &[f64], i: usize, dflt: f64| v.get(i).or(v.first()).copied().unwrap_or(dflt);
            let mut t = 0.0;
            let mut segments = Vec::with_capacity(n);
            for i in 0..n {
                let volts = if self.volt_mode == Mode::List {
                    pick(&self.list_volt_start, i, self.volts)
                } else {
                    self.volts
                };
                let freq = if self.freq_mode == Mode::List {
                    pick(&self.list_freq_start, i, self.freq)
                } else {
                    self.freq
                };
                let duration = pick(&self.list_dwell, i, 0.0);
                segments.push(Segment {
                    start: t,
                    duration,
                    volts_start: volts,
                    volts_end: volts,
                    freq_start: freq,
                    freq_end: freq,
                });
                t += duration;
            }
            let end = segments
                .last()
                .map_or((self.volts, self.freq), |s| (s.volts_end, s.freq_end));
            self.transient = Some(Transient {
                segments,
                count: self.list_count,
                start_phase_deg: phase,
                end,
            });
        } else if self.volt_mode == Mode::Pulse {
            let width = self
                .pulse_width
                .unwrap_or(self.pulse_period * self.pulse_dcyc / 100.0);
            if width.is_nan()
                || width <= 0.0
                || (self.pulse_period > 0.0 && width > self.pulse_period)
            {
                return Err(conflict());
            }
            let mut tr = self.pulse_train(width, phase);
            if self.pulse_period.is_nan() || self.pulse_period <= 0.0 {
                tr.count = 1;
            }
            self.transient = Some(tr);
        }
        Ok(())
    }
}

struct Shared {
    instrument: Mutex<Instrument>,
    received: Mutex<Vec<String>>,
    changed: watch::Sender<u64>,
}

/// The emulator on a TCP listener; every connection talks to the same instrument.
#[derive(Debug)]
pub struct Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Emulator {
    /// Binds `addr` (e.g. `127.0.0.1:0`) and serves `instrument`.
    pub async fn bind(addr: &str, instrument: Instrument) -> std::io::Result<Emulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            instrument: Mutex::new(instrument),
            received: Mutex::new(Vec::new()),
            changed: watch::channel(0).0,
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // E.g. out of file descriptors: back off instead of spinning.
                        tracing::warn!(error = %e, "emulated AC source: accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                tracing::debug!(%peer, "emulated AC source: connection");
                let s = s.clone();
                tokio::spawn(async move {
                    let mut io = BufStream::new(stream);
                    while let Ok(line) = read_line(&mut io).await {
                        let reply = lock(&s.instrument).handle_line(&line);
                        lock(&s.received).push(line);
                        s.changed.send_modify(|n| *n += 1);
                        if let Some(r) = reply {
                            let ok = io.write_all(r.as_bytes()).await.is_ok()
                                && io.write_all(b"\n").await.is_ok()
                                && io.flush().await.is_ok();
                            if !ok {
                                break;
                            }
                        }
                    }
                });
            }
        });
        Ok(Emulator { shared, addr, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The output now (a snapshot; a pure function of time since the trigger).
    pub fn output(&self) -> EmulatedOutput {
        lock(&self.shared.instrument).output()
    }

    /// A copy of the instrument's state.
    pub fn instrument(&self) -> Instrument {
        lock(&self.shared.instrument).clone()
    }

    /// Every command line received so far, in order.
    pub fn received(&self) -> Vec<String> {
        lock(&self.shared.received).clone()
    }

    /// Waits until `pred` holds for the instrument (checked after each handled line), at most
    /// `within`; returns whether it held.
    pub async fn wait_for(
        &self,
        within: Duration,
        pred: impl Fn(&Instrument, &[String]) -> bool,
    ) -> bool {
        let mut rx = self.shared.changed.subscribe();
        let check = || pred(&lock(&self.shared.instrument), &lock(&self.shared.received));
        tokio::time::timeout(within, async {
            loop {
                if check() {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return check();
                }
            }
        })
        .await
        .unwrap_or(false)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn codes(i: &Instrument) -> Vec<i32> {
        i.errors().iter().map(|e| e.code).collect()
    }

    #[test]
    fn headers_match_short_long_case_and_optional_nodes() {
        let p = "[SOURce:]LIST:VOLTage:AC:STARt";
        for h in [
            "SOUR:LIST:VOLT:AC:STAR",
            "source:list:voltage:ac:start",
            "LIST:VOLT:AC:STAR",
            "list:Volt:ac:start",
        ] {
            let toks: Vec<&str> = h.split(':').collect();
            assert!(header_matches(p, &toks), "{h}");
        }
        for h in [
            "SOUR:LIST:VOL:AC:STAR",
            "LIST:VOLT:AC",
            "SOUR:SOUR:LIST:VOLT:AC:STAR",
            "LIST:VOLTAGES:AC:STAR",
        ] {
            let toks: Vec<&str> = h.split(':').collect();
            assert!(!header_matches(p, &toks), "{h}");
        }
    }

    #[test]
    fn chroma_list_runs_in_cycles_and_errors_queue() {
        let mut i = Instrument::new(Dialect::Chroma, 300.0);
        for l in [
            ":SOURce:VOLTage:AC 230",
            "sour:freq 60",
            "OUTP:MODE LIST",
            "LIST:BASE CYCLE",
            "LIST:VOLT:AC:STAR 230,115,230",
            "LIST:VOLT:AC:END 230,115,230",
            "LIST:FREQ:STAR 60,60,60",
            "LIST:FREQ:END 60,60",
            "OUTP ON",
            "TRIG ON",
        ] {
            assert_eq!(i.handle_line(l), None, "{l}");
        }
        // FREQ:END and DWEL lengths disagree with the volts: settings conflict, no transient.
        assert_eq!(codes(&i), vec![-221]);
        assert_eq!(i.output().transient, None);
        i.handle_line("LIST:FREQ:END 60,60,60");
        i.handle_line("LIST:DWEL 5,5,10");
        i.handle_line("LIST:SPH 90");
        i.handle_line("TRIG ON");
        i.handle_line("SOUR:VOLT:AC 301");
        i.handle_line("SOUR:VOLTS:AC 1");
        assert_eq!(
            i.handle_line("SYST:ERR?").as_deref(),
            Some("-221,\"Settings conflict\"")
        );
        assert_eq!(
            i.handle_line("SYST:ERR?").as_deref(),
            Some("-222,\"Data out of range\"")
        );
        assert_eq!(
            i.handle_line("syst:err?").as_deref(),
            Some("-113,\"Undefined header\"")
        );
        assert_eq!(
            i.handle_line("SYST:ERR?").as_deref(),
            Some("0,\"No error\"")
        );
        let out = i.output();
        assert!(out.output_on);
        assert_eq!(out.rms_at(-1.0), 230.0);
        assert_eq!(out.rms_at(4.9 / 60.0), 230.0);
        assert_eq!(out.rms_at(5.1 / 60.0), 115.0);
        assert_eq!(out.rms_at(9.9 / 60.0), 115.0);
        assert_eq!(out.rms_at(10.1 / 60.0), 230.0);
        assert_eq!(out.rms_at(100.0), 230.0);
        // Phase-synced at 90°: the trigger instant is the positive peak; 5.25 cycles later
        // (a quarter cycle into the dip) the wave crosses zero going negative.
        assert!((out.volts_at(0.0) - 230.0 * SQRT_2).abs() < 1e-9);
        assert!((out.volts_at(5.0 / 60.0) - 115.0 * SQRT_2).abs() < 1e-6);
        assert!(out.volts_at(5.25 / 60.0).abs() < 1e-6);
        i.handle_line("OUTP OFF");
        assert_eq!(i.output().rms_at(1.0), 0.0);
    }

    #[test]
    fn ametek_list_single_dwell_pulse_and_dialect_mismatch() {
        let mut i = Instrument::new(Dialect::Ametek, 300.0);
        for l in [
            "VOLT 120",
            "FREQ 50",
            "VOLT:MODE LIST",
            "LIST:VOLT 120,0,120",
            "LIST:DWEL 0.1",
            "LIST:COUN 2",
            "OUTP ON",
            "INIT",
        ] {
            i.handle_line(l);
        }
        assert_eq!(codes(&i), Vec::<i32>::new());
        let out = i.output();
        assert_eq!(out.rms_at(0.15), 0.0);
        assert_eq!(out.rms_at(0.25), 120.0);
        assert_eq!(out.rms_at(0.45), 0.0); // second pass
        assert_eq!(out.rms_at(0.65), 120.0);
        assert_eq!(out.freq_at(0.15), 50.0);
        i.handle_line("ABOR");
        i.handle_line("VOLT:MODE PULS");
        i.handle_line("VOLT:TRIG 60");
        i.handle_line("PULS:WIDT 0.1");
        i.handle_line("PULS:PER 0.5");
        i.handle_line("PULS:COUN 2");
        i.handle_line("INIT:IMM");
        let out = i.output();
        assert_eq!(
            [
                out.rms_at(0.05),
                out.rms_at(0.2),
                out.rms_at(0.55),
                out.rms_at(0.7),
                out.rms_at(2.0)
            ],
            [60.0, 120.0, 60.0, 120.0, 120.0]
        );
        // Chroma-only headers are undefined here; 33 list points are out of range.
        i.handle_line("SYST:REM");
        i.handle_line(&format!("LIST:VOLT {}", vec!["1"; 33].join(",")));
        i.handle_line("VOLT abc");
        i.handle_line("VOLT");
        assert_eq!(codes(&i), vec![-113, -222, -104, -109]);
        i.handle_line("*CLS");
        assert_eq!(codes(&i), Vec::<i32>::new());
        assert!(i.handle_line("*IDN?").unwrap().starts_with("AMETEK"));
        i.handle_line("*RST");
        assert!(!i.output().output_on);
    }
}
