//! COMTRADE (IEEE C37.111-1999 and -2013) writer: the `.cfg` configuration and the ASCII or
//! 16-bit BINARY `.dat` data file of a recording of analog channels, each to an `impl Write`.
//!
//! Sans-io and deterministic: nothing here reads a clock. Timestamps are a fixed epoch,
//! [`EPOCH`] (01/01/2000 00:00:00.000000), plus the recording's offsets in scenario time, so the
//! same recording always gives the same bytes.
//!
//! Scaling: every channel stores integers x in ±32767 (−32768 is BINARY's missing-value
//! marker) and a reader recovers value = a·x + b. [`Scaling::covering`] picks a and b so the
//! channel's whole min..max range fits; encoding rounds to nearest, so every stored value is
//! within a/2 ([`Scaling::precision`]) of the original.
//!
//! Lines end in CR/LF as the standard asks. No status (digital) channels are written.
//!
//! ```text
//! .cfg                                    .dat, ASCII            .dat, BINARY (little-endian)
//! station_name,rec_dev_id,rev_year        n,timestamp,x1,x2,…    u32 n, u32 timestamp,
//! TT,##A,0D                                                      i16 x1, i16 x2, …
//! An,ch_id,ph,ccbm,uu,a,b,skew,min,max,primary,secondary,PS   (one line per channel)
//! lf / nrates (1) / samp,endsamp / start / trigger / ft / timemult
//! time_code,local_code / tmq_code,leapsec                     (2013 only)
//! ```

use std::io::Write;

use sim_core::Seconds;

/// The fixed instant scenario time 0 maps to in `.cfg` timestamps (dd/mm/yyyy,hh:mm:ss.ssssss).
pub const EPOCH: &str = "01/01/2000,00:00:00.000000";
/// Largest magnitude of a stored integer; −32768 marks a missing value in BINARY files.
pub const INT_LIMIT: i16 = 32767;
/// BINARY missing-value marker (C37.111-1999 and later).
pub const BINARY_MISSING: i16 = i16::MIN;
/// ASCII missing-value marker (C37.111-1999 and later).
pub const ASCII_MISSING: &str = "99999";
/// Days from 1970-01-01 to [`EPOCH`]'s date.
const EPOCH_DAYS: i64 = 10_957;
/// Largest timestamp value: 0xFFFFFFFF means "missing" in BINARY files.
const TIMESTAMP_MAX: u64 = u32::MAX as u64 - 1;
/// Offsets beyond this (≈ year 9900) cannot be written as dd/mm/yyyy.
const OFFSET_MAX: Seconds = 2.5e11;

/// The standard revision written in the first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revision {
    Rev1999,
    /// Adds the `time_code,local_code` and `tmq_code,leapsec` lines.
    Rev2013,
}

impl Revision {
    pub fn year(self) -> &'static str {
        match self {
            Revision::Rev1999 => "1999",
            Revision::Rev2013 => "2013",
        }
    }
}

/// Encoding of the `.dat` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    /// One text line per sample: `n,timestamp,x1,…` (CR/LF).
    Ascii,
    /// Fixed rows: u32 n, u32 timestamp, one i16 per channel, little-endian.
    Binary,
}

impl DataFormat {
    /// The `ft` field of the `.cfg`.
    pub fn name(self) -> &'static str {
        match self {
            DataFormat::Ascii => "ASCII",
            DataFormat::Binary => "BINARY",
        }
    }
}

/// value = a·x + b for a stored integer x.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scaling {
    pub a: f64,
    pub b: f64,
}

impl Scaling {
    /// A scaling whose ±32767 range covers `min..=max`. When the range straddles zero almost
    /// symmetrically (|midpoint| ≤ 1 % of the half span), b = 0 and a covers the larger
    /// magnitude; otherwise b is the midpoint. a is rounded up to 6 significant digits so the
    /// `.cfg` stays readable; the value written is exactly the value used. A degenerate or
    /// non-finite range gets b = min (or 0) and a = 1/32767.
    pub fn covering(min: f64, max: f64) -> Scaling {
        if !(min.is_finite() && max.is_finite()) || max < min {
            return Scaling {
                a: 1.0 / f64::from(INT_LIMIT),
                b: 0.0,
            };
        }
        let mid = 0.5 * (min + max);
        let half = 0.5 * (max - min);
        let (b, reach) = if min < 0.0 && max > 0.0 && mid.abs() <= 0.01 * half {
            (0.0, (-min).max(max))
        } else {
            (mid, half)
        };
        let a = round_up_6(reach / f64::from(INT_LIMIT));
        if a > 0.0 && a.is_finite() {
            Scaling { a, b }
        } else {
            Scaling {
                a: 1.0 / f64::from(INT_LIMIT),
                b: mid,
            }
        }
    }

    /// The stored integer for `v`: round to nearest, clamped to ±32767; `None` for NaN/∞.
    pub fn encode(&self, v: f64) -> Option<i16> {
        if !v.is_finite() {
            return None;
        }
        let x = ((v - self.b) / self.a).round();
        let lim = f64::from(INT_LIMIT);
        Some(x.clamp(-lim, lim) as i16)
    }

    pub fn decode(&self, x: i16) -> f64 {
        self.a * f64::from(x) + self.b
    }

    /// Worst-case error of a value inside the covered range: a/2.
    pub fn precision(&self) -> f64 {
        self.a / 2.0
    }
}

/// `x` rounded up to 6 significant digits (as the f64 nearest that decimal).
fn round_up_6(x: f64) -> f64 {
    if !(x > 0.0 && x.is_finite()) {
        return x;
    }
    let text = format!("{x:.5e}");
    let rounded: f64 = text.parse().unwrap_or(x);
    if rounded >= x {
        return rounded;
    }
    // Bump the last digit: mantissa m.mmmmm → + 1e-5 · 10^exp.
    let exp = text
        .split_once('e')
        .and_then(|(_, e)| e.parse::<i32>().ok())
        .unwrap_or(0);
    let bumped = rounded + 10f64.powi(exp - 5);
    format!("{bumped:.5e}").parse().unwrap_or(bumped)
}

/// Running min/max of one channel's values (non-finite values are ignored).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChannelRange {
    pub min: f64,
    pub max: f64,
}

impl Default for ChannelRange {
    fn default() -> Self {
        ChannelRange {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl ChannelRange {
    pub fn push(&mut self, v: f64) {
        if v.is_finite() {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
    }

    /// [`Scaling::covering`] the values seen (a default scaling when none were finite).
    pub fn scaling(&self) -> Scaling {
        if self.min <= self.max {
            Scaling::covering(self.min, self.max)
        } else {
            Scaling::covering(0.0, 0.0)
        }
    }
}

/// One analog channel's description.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalogChannel {
    /// `ch_id`, e.g. `VA`.
    pub id: String,
    /// `ph`, e.g. `A` (at most 2 characters).
    pub phase: String,
    /// `ccbm`: the circuit component being monitored.
    pub circuit: String,
    /// `uu`: `V` or `A`.
    pub unit: String,
    pub scaling: Scaling,
}

/// What a recording is: its identity, channels, rate, length and times.
#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    pub station_name: String,
    pub device_id: String,
    pub revision: Revision,
    pub format: DataFormat,
    /// Nominal line frequency, Hz.
    pub line_frequency: f64,
    /// Samples per second (one rate for the whole file).
    pub sample_rate: f64,
    /// Samples per channel (`endsamp`).
    pub samples: u64,
    /// Scenario time of the first sample, s after [`EPOCH`].
    pub start: Seconds,
    /// Scenario time of the trigger, s after [`EPOCH`].
    pub trigger: Seconds,
    pub channels: Vec<AnalogChannel>,
}

/// Why a COMTRADE file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ComtradeError {
    #[error("failed to write COMTRADE data: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid COMTRADE recording: {0}")]
    Invalid(String),
    #[error("a sample has {got} values but the recording has {expected} analog channels")]
    ChannelCount { expected: usize, got: usize },
    #[error("{written} samples written but the .cfg declares {declared}")]
    SampleCount { declared: u64, written: u64 },
}

impl Recording {
    /// Check what the file format can express.
    pub fn validate(&self) -> Result<(), ComtradeError> {
        let bad = |m: String| Err(ComtradeError::Invalid(m));
        if self.channels.is_empty() {
            return bad("no analog channel".into());
        }
        if self.channels.len() > 999_999 {
            return bad(format!("{} channels (at most 999999)", self.channels.len()));
        }
        if !(self.sample_rate > 0.0 && self.sample_rate.is_finite()) {
            return bad(format!("sample rate {} Hz", self.sample_rate));
        }
        if !(self.line_frequency > 0.0 && self.line_frequency.is_finite()) {
            return bad(format!("line frequency {} Hz", self.line_frequency));
        }
        if self.samples == 0 || self.samples > u64::from(u32::MAX) {
            return bad(format!("{} samples (1 to {})", self.samples, u32::MAX));
        }
        for (what, t) in [("start", self.start), ("trigger", self.trigger)] {
            if !(0.0..=OFFSET_MAX).contains(&t) {
                return bad(format!("{what} offset {t} s"));
            }
        }
        for c in &self.channels {
            if !(c.scaling.a.is_finite() && c.scaling.a != 0.0 && c.scaling.b.is_finite()) {
                return bad(format!("channel {}: scaling {:?}", c.id, c.scaling));
            }
        }
        Ok(())
    }

    /// `timemult`: 1 unless the last sample's µs timestamp would not fit in 32 bits; then
    /// the smallest whole multiplier that makes it fit.
    pub fn time_multiplier(&self) -> u64 {
        let last_us = (self.samples.saturating_sub(1) as f64 / self.sample_rate * 1e6).round();
        let m = (last_us / TIMESTAMP_MAX as f64).ceil();
        if m.is_finite() && m > 1.0 {
            m as u64
        } else {
            1
        }
    }

    /// The whole `.cfg` text.
    pub fn cfg_text(&self) -> Result<String, ComtradeError> {
        self.validate()?;
        let mut s = String::new();
        let mut line = |l: String| {
            s.push_str(&l);
            s.push_str("\r\n");
        };
        line(format!(
            "{},{},{}",
            field(&self.station_name, 64),
            field(&self.device_id, 64),
            self.revision.year()
        ));
        let n = self.channels.len();
        line(format!("{n},{n}A,0D"));
        for (i, c) in self.channels.iter().enumerate() {
            line(format!(
                "{},{},{},{},{},{},{},0,{},{},1,1,P",
                i + 1,
                field(&c.id, 64),
                field(&c.phase, 2),
                field(&c.circuit, 64),
                field(&c.unit, 32),
                c.scaling.a,
                c.scaling.b,
                -INT_LIMIT,
                INT_LIMIT
            ));
        }
        line(format!("{}", self.line_frequency));
        line("1".into());
        line(format!("{},{}", self.sample_rate, self.samples));
        line(format_timestamp(self.start));
        line(format_timestamp(self.trigger));
        line(self.format.name().into());
        line(format!("{}.0", self.time_multiplier()));
        if self.revision == Revision::Rev2013 {
            // Timestamps are UTC; the clock is synthetic (tmq_code F: not traceable to a time
            // source), and no leap second is involved.
            line("0,0".into());
            line("F,0".into());
        }
        Ok(s)
    }
}

/// Write `recording`'s `.cfg` to `out`.
pub fn write_cfg(recording: &Recording, mut out: impl Write) -> Result<(), ComtradeError> {
    out.write_all(recording.cfg_text()?.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// `dd/mm/yyyy,hh:mm:ss.ssssss` of [`EPOCH`] + `offset` (rounded to the microsecond; offsets
/// outside 0..=2.5e11 s are clamped).
pub fn format_timestamp(offset: Seconds) -> String {
    let us = (offset.clamp(0.0, OFFSET_MAX) * 1e6).round() as u64;
    let day_us = 86_400_000_000_u64;
    let days = (us / day_us) as i64;
    let rem = us % day_us;
    let (y, m, d) = civil_from_days(EPOCH_DAYS + days);
    let secs = rem / 1_000_000;
    format!(
        "{d:02}/{m:02}/{y:04},{:02}:{:02}:{:02}.{:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        rem % 1_000_000
    )
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian; H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A text field: no separators or line breaks, at most `max` characters.
fn field(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| if c == ',' || c.is_control() { '_' } else { c })
        .take(max)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Streams the `.dat` rows of a [`Recording`], one sample (all channels) at a time.
#[derive(Debug)]
pub struct DatWriter<W: Write> {
    out: W,
    format: DataFormat,
    scalings: Vec<Scaling>,
    sample_rate: f64,
    time_multiplier: f64,
    declared: u64,
    written: u64,
    row: Vec<u8>,
}

impl<W: Write> DatWriter<W> {
    pub fn new(recording: &Recording, out: W) -> Result<Self, ComtradeError> {
        recording.validate()?;
        Ok(DatWriter {
            out,
            format: recording.format,
            scalings: recording.channels.iter().map(|c| c.scaling).collect(),
            sample_rate: recording.sample_rate,
            time_multiplier: recording.time_multiplier() as f64,
            declared: recording.samples,
            written: 0,
            row: Vec::with_capacity(16 + 8 * recording.channels.len()),
        })
    }

    /// Samples written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Write the next sample: one value per channel, in channel order (NaN/∞ are written as
    /// the format's missing-value marker).
    pub fn write_sample(&mut self, values: &[f64]) -> Result<(), ComtradeError> {
        if values.len() != self.scalings.len() {
            return Err(ComtradeError::ChannelCount {
                expected: self.scalings.len(),
                got: values.len(),
            });
        }
        if self.written >= self.declared {
            return Err(ComtradeError::SampleCount {
                declared: self.declared,
                written: self.written + 1,
            });
        }
        let k = self.written;
        let n = k + 1;
        let ts = (k as f64 / self.sample_rate * 1e6 / self.time_multiplier).round() as u64;
        let ts = ts.min(TIMESTAMP_MAX);
        self.row.clear();
        match self.format {
            DataFormat::Ascii => {
                write!(self.row, "{n},{ts}")?;
                for (v, s) in values.iter().zip(&self.scalings) {
                    match s.encode(*v) {
                        Some(x) => write!(self.row, ",{x}")?,
                        None => write!(self.row, ",{ASCII_MISSING}")?,
                    }
                }
                self.row.extend_from_slice(b"\r\n");
            }
            DataFormat::Binary => {
                // n ≤ u32::MAX and ts ≤ TIMESTAMP_MAX: validated and clamped above.
                self.row
                    .extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
                self.row
                    .extend_from_slice(&u32::try_from(ts).unwrap_or(u32::MAX).to_le_bytes());
                for (v, s) in values.iter().zip(&self.scalings) {
                    let x = s.encode(*v).unwrap_or(BINARY_MISSING);
                    self.row.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
        self.out.write_all(&self.row)?;
        self.written += 1;
        Ok(())
    }

    /// Check that every declared sample was written, flush, and hand back the writer.
    pub fn finish(mut self) -> Result<W, ComtradeError> {
        if self.written != self.declared {
            return Err(ComtradeError::SampleCount {
                declared: self.declared,
                written: self.written,
            });
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tiny(revision: Revision, format: DataFormat) -> Recording {
        Recording {
            station_name: "sag, test".into(),
            device_id: "gridloop feeder-a meter 0".into(),
            revision,
            format,
            line_frequency: 60.0,
            sample_rate: 1000.0,
            samples: 4,
            start: 0.5,
            trigger: 0.5015,
            channels: vec![
                AnalogChannel {
                    id: "VA".into(),
                    phase: "A".into(),
                    circuit: "feeder-a".into(),
                    unit: "V".into(),
                    scaling: Scaling::covering(-339.411, 339.411),
                },
                AnalogChannel {
                    id: "IA".into(),
                    phase: "A".into(),
                    circuit: "feeder-a".into(),
                    unit: "A".into(),
                    scaling: Scaling::covering(2.0, 12.0),
                },
            ],
        }
    }

    #[test]
    fn cfg_1999_ascii_text() {
        let rec = tiny(Revision::Rev1999, DataFormat::Ascii);
        // 339.411 / 32767 = 0.0103583… → 0.0103584; (12 − 2) / 2 / 32767 = 1.52592…e-4.
        let want = "sag_ test,gridloop feeder-a meter 0,1999\r\n\
                    2,2A,0D\r\n\
                    1,VA,A,feeder-a,V,0.0103584,0,0,-32767,32767,1,1,P\r\n\
                    2,IA,A,feeder-a,A,0.000152593,7,0,-32767,32767,1,1,P\r\n\
                    60\r\n\
                    1\r\n\
                    1000,4\r\n\
                    01/01/2000,00:00:00.500000\r\n\
                    01/01/2000,00:00:00.501500\r\n\
                    ASCII\r\n\
                    1.0\r\n";
        assert_eq!(rec.cfg_text().unwrap(), want);
        let mut buf = Vec::new();
        write_cfg(&rec, &mut buf).unwrap();
        assert_eq!(buf, want.as_bytes());
    }

    #[test]
    fn cfg_2013_binary_adds_the_time_lines() {
        let rec = tiny(Revision::Rev2013, DataFormat::Binary);
        let text = rec.cfg_text().unwrap();
        assert!(text.starts_with("sag_ test,gridloop feeder-a meter 0,2013\r\n"));
        assert!(
            text.ends_with("\r\nBINARY\r\n1.0\r\n0,0\r\nF,0\r\n"),
            "{text}"
        );
        // 11 lines of the 1999 layout for 2 channels, plus the two 2013 lines.
        assert_eq!(text.lines().count(), 13);
    }

    #[test]
    fn ascii_dat_rows() {
        let rec = tiny(Revision::Rev1999, DataFormat::Ascii);
        let mut w = DatWriter::new(&rec, Vec::new()).unwrap();
        w.write_sample(&[0.0, 7.0]).unwrap();
        w.write_sample(&[339.411, 12.0]).unwrap();
        w.write_sample(&[-100.0, f64::NAN]).unwrap();
        w.write_sample(&[1e9, 2.0]).unwrap();
        let text = String::from_utf8(w.finish().unwrap()).unwrap();
        // −100 / 0.0103584 = −9653.98 → −9654; 1e9 clamps to 32767.
        assert_eq!(
            text,
            "1,0,0,0\r\n2,1000,32767,32767\r\n3,2000,-9654,99999\r\n4,3000,32767,-32767\r\n"
        );
    }

    #[test]
    fn binary_dat_layout() {
        let rec = tiny(Revision::Rev2013, DataFormat::Binary);
        let mut w = DatWriter::new(&rec, Vec::new()).unwrap();
        w.write_sample(&[0.0, 7.0]).unwrap();
        w.write_sample(&[-339.411, f64::INFINITY]).unwrap();
        w.write_sample(&[1.0, 12.0]).unwrap();
        w.write_sample(&[0.0, 2.0]).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len(), 4 * (4 + 4 + 2 * 2));
        #[rustfmt::skip]
        let first_two: [u8; 24] = [
            1, 0, 0, 0,   0, 0, 0, 0,          0, 0,  0, 0,
            2, 0, 0, 0,   0xE8, 0x03, 0, 0,    0x01, 0x80,  0x00, 0x80,
        ];
        assert_eq!(bytes[..24], first_two);
        // Sample 3: 1 V → round(96.54) = 97 = 0x0061; 12 A → 32767 = 0x7FFF; t = 2000 µs.
        assert_eq!(
            bytes[24..36],
            [3, 0, 0, 0, 0xD0, 0x07, 0, 0, 0x61, 0, 0xFF, 0x7F]
        );
    }

    #[test]
    fn wrong_counts_are_errors() {
        let rec = tiny(Revision::Rev1999, DataFormat::Binary);
        let mut w = DatWriter::new(&rec, Vec::new()).unwrap();
        assert!(matches!(
            w.write_sample(&[1.0]),
            Err(ComtradeError::ChannelCount {
                expected: 2,
                got: 1
            })
        ));
        w.write_sample(&[1.0, 3.0]).unwrap();
        assert!(matches!(
            w.finish(),
            Err(ComtradeError::SampleCount {
                declared: 4,
                written: 1
            })
        ));
        let mut w = DatWriter::new(&rec, Vec::new()).unwrap();
        for _ in 0..4 {
            w.write_sample(&[1.0, 3.0]).unwrap();
        }
        assert!(w.write_sample(&[1.0, 3.0]).is_err());
        let mut bad = rec.clone();
        bad.channels.clear();
        assert!(matches!(bad.cfg_text(), Err(ComtradeError::Invalid(_))));
        bad = rec.clone();
        bad.sample_rate = 0.0;
        assert!(DatWriter::new(&bad, Vec::new()).is_err());
    }

    #[test]
    fn timestamps_count_from_the_fixed_epoch() {
        assert_eq!(format_timestamp(0.0), EPOCH);
        // 2000 is a leap year.
        assert_eq!(
            format_timestamp(59.0 * 86_400.0 + 0.000_000_4),
            "29/02/2000,00:00:00.000000"
        );
        assert_eq!(
            format_timestamp(366.0 * 86_400.0 + 3661.5),
            "01/01/2001,01:01:01.500000"
        );
        assert_eq!(
            format_timestamp(8.0 * 3600.0 - 1e-6),
            "01/01/2000,07:59:59.999999"
        );
        // 2000-01-01 + 10 000 days = 2027-05-19.
        assert_eq!(
            format_timestamp(10_000.0 * 86_400.0),
            "19/05/2027,00:00:00.000000"
        );
    }

    #[test]
    fn long_records_get_a_time_multiplier() {
        let mut rec = tiny(Revision::Rev1999, DataFormat::Binary);
        rec.sample_rate = 1.0;
        rec.samples = 4295;
        assert_eq!(rec.time_multiplier(), 1);
        rec.samples = 4296;
        assert_eq!(rec.time_multiplier(), 2);
        let mut w = DatWriter::new(&rec, Vec::new()).unwrap();
        for _ in 0..4296 {
            w.write_sample(&[0.0, 0.0]).unwrap();
        }
        let bytes = w.finish().unwrap();
        let last = &bytes[bytes.len() - 12..];
        assert_eq!(u32::from_le_bytes(last[0..4].try_into().unwrap()), 4296);
        assert_eq!(
            u32::from_le_bytes(last[4..8].try_into().unwrap()),
            4295 * 500_000
        );
        assert!(rec.cfg_text().unwrap().contains("\r\n2.0\r\n"));
    }

    #[test]
    fn scaling_edge_cases() {
        let s = Scaling::covering(3.0, 3.0);
        assert_eq!(s.decode(s.encode(3.0).unwrap()), 3.0);
        let s = Scaling::covering(-1.0, 3.0);
        assert_eq!(s.b, 1.0);
        assert_eq!(s.encode(3.0), Some(32767));
        assert_eq!(s.encode(-1.0), Some(-32767));
        assert_eq!(s.encode(f64::NAN), None);
        let mut r = ChannelRange::default();
        assert_eq!(r.scaling(), Scaling::covering(0.0, 0.0));
        for v in [2.0, f64::NAN, -5.0, 1.0] {
            r.push(v);
        }
        assert_eq!((r.min, r.max), (-5.0, 2.0));
        assert_eq!(round_up_6(1.0000001), 1.00001);
        assert_eq!(round_up_6(0.0103583), 0.0103583);
    }

    proptest! {
        #[test]
        fn round_trip_is_within_half_a_step(
            lo in -1e4f64..1e4,
            span in 1e-3f64..2e4,
            fractions in proptest::collection::vec(0.0f64..=1.0, 1..64),
        ) {
            let hi = lo + span;
            let s = Scaling::covering(lo, hi);
            prop_assert!(s.a > 0.0);
            // 6-digit rounding costs at most 1e-5 relative; the 1 %-symmetric rule ≤ 1 %.
            prop_assert!(s.a <= span / 2.0 / 32767.0 * 1.0201 + 1e-300);
            for f in fractions {
                let v = lo + f * span;
                let x = s.encode(v).unwrap();
                let err = (s.decode(x) - v).abs();
                prop_assert!(err <= s.precision() * (1.0 + 1e-9), "v {v} x {x} err {err} a {}", s.a);
            }
            for v in [lo, hi] {
                let err = (s.decode(s.encode(v).unwrap()) - v).abs();
                prop_assert!(err <= s.precision() * (1.0 + 1e-9));
            }
        }
    }
}
