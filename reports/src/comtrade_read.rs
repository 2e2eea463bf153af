//! COMTRADE (IEEE C37.111-1991/1999/2013) reader: the `.cfg` configuration and its ASCII or
//! 16-bit BINARY `.dat`, into analog channels of engineering values (value = a·x + b, primary
//! or secondary as the file gives them: see [`AnalogInfo::ps`]).
//!
//! Parsing is sans-io ([`parse_cfg`], [`parse_dat`] take text and bytes); [`read`] is the one
//! function that opens files. Every error names the file, the 1-based line (a record number in
//! BINARY files) and the field; nothing here panics on any input (fuzzed in the tests).
//!
//! What is accepted:
//! - station line `station_name,rec_dev_id[,rev_year]` (no year = 1991; 1991, 1999, 2013);
//! - `TT,##A,##D` with TT = ##A + ##D;
//! - analog lines `An,ch_id,ph,ccbm,uu,a,b,skew,min,max[,primary,secondary,PS]` (10 fields in
//!   1991, 13 later), An counting 1, 2, …; digital lines `Dn,ch_id,[ph,ccbm,]y` (3 or 5 fields),
//!   whose data is checked for shape and otherwise ignored;
//! - line frequency, `nrates`, `nrates` lines `samp,endsamp` (or `nrates` = 0 and one line
//!   `0,endsamp`: timing from the timestamps), start and trigger timestamps
//!   `dd/mm/yyyy,hh:mm:ss.ssssss` (any number of fraction digits), file type `ASCII` or
//!   `BINARY`, `timemult` (optional in 1991 files), and the two 2013 lines
//!   `time_code,local_code` / `tmq_code,leapsec` when present.
//!
//! `.dat` rows are `n,timestamp,analog…,digital…`; sample numbers must increase; there must be
//! exactly `endsamp` samples (a `0x1A` end-of-file byte and blank trailing lines are ignored).
//! Missing values (`99999` in ASCII, −32768 in BINARY) read as NaN.

use std::path::{Path, PathBuf};

use crate::comtrade::DataFormat;

/// Where in a file an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// 1-based text line.
    Line(usize),
    /// 1-based record of a BINARY `.dat`, and its first byte's offset.
    Record { record: u64, offset: u64 },
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Line(l) => write!(f, "{l}"),
            Location::Record { record, offset } => write!(f, "record {record} (byte {offset})"),
        }
    }
}

/// Why a COMTRADE recording could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}:{at}: {field}: {message}", file.display())]
    Invalid {
        file: PathBuf,
        at: Location,
        /// The field, e.g. `analog channel 2: a` or `endsamp`.
        field: String,
        message: String,
    },
    #[error("{}: cannot read{}: {source}", file.display(), referenced_by.as_ref().map(|c| format!(" (the data file of {})", c.display())).unwrap_or_default())]
    Io {
        file: PathBuf,
        /// The `.cfg` whose `.dat` this is.
        referenced_by: Option<PathBuf>,
        source: std::io::Error,
    },
}

/// One analog channel's configuration line.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalogInfo {
    pub id: String,
    pub phase: String,
    pub circuit: String,
    pub unit: String,
    pub a: f64,
    pub b: f64,
    /// Skew from the sample instant, µs.
    pub skew: f64,
    pub min: f64,
    pub max: f64,
    /// Transformer ratio primary factor (1 in 1991 files).
    pub primary: f64,
    pub secondary: f64,
    /// `P` or `S`: whether a·x + b gives primary or secondary values (`P` in 1991 files).
    pub ps: char,
}

/// A timestamp as written: days since 1970-01-01 and seconds into the day.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timestamp {
    pub days: i64,
    pub seconds: f64,
}

impl Timestamp {
    /// `self − earlier`, s.
    pub fn since(&self, earlier: &Timestamp) -> f64 {
        (self.days - earlier.days) as f64 * 86_400.0 + (self.seconds - earlier.seconds)
    }
}

/// A parsed `.cfg`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub station_name: String,
    pub device_id: String,
    /// 1991, 1999 or 2013.
    pub revision: u32,
    pub analog: Vec<AnalogInfo>,
    /// Number of status (digital) channels.
    pub digital: usize,
    pub line_frequency: f64,
    /// `(samp, endsamp)` per rate; empty when `nrates` is 0 (timing from timestamps).
    pub rates: Vec<(f64, u64)>,
    /// Samples per channel: the last `endsamp`.
    pub samples: u64,
    pub start: Timestamp,
    pub trigger: Timestamp,
    pub format: DataFormat,
    pub time_multiplier: f64,
}

impl Config {
    /// Index of the analog channel `id` (exact match).
    pub fn analog_index(&self, id: &str) -> Option<usize> {
        self.analog.iter().position(|c| c.id == id)
    }

    /// The single sampling rate, Hz, when the file has exactly one (or several equal ones).
    pub fn uniform_rate(&self) -> Option<f64> {
        let first = self.rates.first()?.0;
        (first > 0.0 && self.rates.iter().all(|r| r.0 == first)).then_some(first)
    }

    /// BINARY record size, bytes.
    fn record_len(&self) -> usize {
        8 + 2 * self.analog.len() + 2 * self.digital.div_ceil(16)
    }
}

/// A whole recording: the configuration and each analog channel's values.
#[derive(Debug, Clone, PartialEq)]
pub struct ComtradeData {
    pub config: Config,
    /// `values[channel][sample]` = a·x + b (NaN for missing values).
    pub values: Vec<Vec<f64>>,
    /// Each sample's timestamp field (µs before `timemult`; `None` when missing).
    pub timestamps: Vec<Option<u64>>,
}

/// Most samples per channel [`parse_dat`] accepts (memory bound).
pub const MAX_SAMPLES: u64 = 50_000_000;

struct Cursor<'a> {
    file: &'a Path,
    lines: Vec<&'a str>,
    /// Index of the next line.
    next: usize,
}

impl<'a> Cursor<'a> {
    fn err(&self, line: usize, field: &str, message: impl Into<String>) -> ReadError {
        ReadError::Invalid {
            file: self.file.to_path_buf(),
            at: Location::Line(line),
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The next line's fields and its 1-based number; `what` names the line in errors.
    fn fields(&mut self, what: &str, counts: &[usize]) -> Result<(usize, Vec<&'a str>), ReadError> {
        let Some(line) = self.lines.get(self.next) else {
            return Err(self.err(
                self.next + 1,
                what,
                "missing: the file ends before this line",
            ));
        };
        self.next += 1;
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if !counts.contains(&fields.len()) {
            let want: Vec<String> = counts.iter().map(ToString::to_string).collect();
            return Err(self.err(
                self.next,
                what,
                format!(
                    "expected {} comma-separated fields, got {} in `{}`",
                    want.join(" or "),
                    fields.len(),
                    clip(line)
                ),
            ));
        }
        Ok((self.next, fields))
    }
}

/// At most 60 characters of `s`, for messages.
fn clip(s: &str) -> String {
    let mut t: String = s.chars().take(60).collect();
    if s.chars().count() > 60 {
        t.push('…');
    }
    t
}

fn num(cur: &Cursor<'_>, line: usize, field: &str, s: &str) -> Result<f64, ReadError> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(cur.err(line, field, format!("`{}` is not a number", clip(s)))),
    }
}

fn whole(cur: &Cursor<'_>, line: usize, field: &str, s: &str) -> Result<u64, ReadError> {
    s.parse::<u64>().map_err(|_| {
        cur.err(
            line,
            field,
            format!("`{}` is not a whole number ≥ 0", clip(s)),
        )
    })
}

/// `NNA` / `NND` of the channel-count line.
fn count_with_suffix(
    cur: &Cursor<'_>,
    line: usize,
    field: &str,
    s: &str,
    suffix: char,
) -> Result<usize, ReadError> {
    let digits = s
        .strip_suffix(suffix)
        .or_else(|| s.strip_suffix(suffix.to_ascii_lowercase()))
        .ok_or_else(|| cur.err(line, field, format!("`{}` must end in `{suffix}`", clip(s))))?;
    let n = whole(cur, line, field, digits)?;
    usize::try_from(n)
        .ok()
        .filter(|&n| n <= 999_999)
        .ok_or_else(|| cur.err(line, field, format!("{n} channels (at most 999999)")))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `dd/mm/yyyy` and `hh:mm:ss.ssssss`.
fn timestamp(
    cur: &Cursor<'_>,
    line: usize,
    field: &str,
    date: &str,
    time: &str,
) -> Result<Timestamp, ReadError> {
    let bad = |what: &str| {
        cur.err(
            line,
            field,
            format!("{what} in `{},{}`", clip(date), clip(time)),
        )
    };
    let d: Vec<&str> = date.split('/').collect();
    let t: Vec<&str> = time.split(':').collect();
    if d.len() != 3 || t.len() != 3 {
        return Err(bad("expected dd/mm/yyyy,hh:mm:ss.ssssss"));
    }
    let int = |s: &str| s.parse::<i64>().ok().filter(|v| *v >= 0);
    let (Some(day), Some(month), Some(year)) = (int(d[0]), int(d[1]), int(d[2])) else {
        return Err(bad("the date is not dd/mm/yyyy"));
    };
    let (Some(h), Some(m)) = (int(t[0]), int(t[1])) else {
        return Err(bad("the time is not hh:mm:ss.ssssss"));
    };
    let s = t[2]
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && (0.0..61.0).contains(s))
        .ok_or_else(|| bad("the seconds are not a number below 61"))?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || year > 9999 {
        return Err(bad("no such date"));
    }
    // Two-digit years (1991 files) are taken as 19yy / 20yy around 1970.
    let year = match year {
        0..=69 if d[2].len() <= 2 => 2000 + year,
        70..=99 if d[2].len() <= 2 => 1900 + year,
        y => y,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if day > month_days[(month - 1) as usize] {
        return Err(bad("no such date"));
    }
    if h > 23 || m > 59 {
        return Err(bad("no such time of day"));
    }
    Ok(Timestamp {
        days: days_from_civil(year, month, day),
        seconds: (h * 3600 + m * 60) as f64 + s,
    })
}

/// Parse a `.cfg` (`file` names it in errors).
pub fn parse_cfg(text: &str, file: &Path) -> Result<Config, ReadError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines: Vec<&str> = text.lines().collect();
    while lines
        .last()
        .is_some_and(|l| l.trim().is_empty() || l.trim() == "\u{1a}")
    {
        lines.pop();
    }
    let mut cur = Cursor {
        file,
        lines,
        next: 0,
    };

    let (l, f) = cur.fields("station line", &[2, 3])?;
    let revision = match f.get(2).copied() {
        None | Some("") | Some("1991") => 1991,
        Some("1999") => 1999,
        Some("2013") => 2013,
        Some(other) => {
            return Err(cur.err(
                l,
                "rev_year",
                format!(
                    "`{}` is not a known revision (1991, 1999 or 2013)",
                    clip(other)
                ),
            ))
        }
    };
    let (station_name, device_id) = (f[0].to_string(), f[1].to_string());

    let (l, f) = cur.fields("channel counts (TT,##A,##D)", &[3])?;
    let total = whole(&cur, l, "TT", f[0])?;
    let n_analog = count_with_suffix(&cur, l, "##A", f[1], 'A')?;
    let n_digital = count_with_suffix(&cur, l, "##D", f[2], 'D')?;
    if total != (n_analog + n_digital) as u64 {
        return Err(cur.err(
            l,
            "TT",
            format!("{total} channels in total but {n_analog}A + {n_digital}D"),
        ));
    }

    let mut analog = Vec::with_capacity(n_analog.min(4096));
    for i in 0..n_analog {
        let what = format!("analog channel {}", i + 1);
        let (l, f) = cur.fields(&what, &[10, 13])?;
        let field = |name: &str| format!("{what}: {name}");
        let an = whole(&cur, l, &field("An"), f[0])?;
        if an != (i + 1) as u64 {
            return Err(cur.err(
                l,
                &field("An"),
                format!("channel number {an}, expected {}", i + 1),
            ));
        }
        let a = num(&cur, l, &field("a"), f[5])?;
        if a == 0.0 {
            return Err(cur.err(l, &field("a"), "the multiplier is 0"));
        }
        let (primary, secondary, ps) = if f.len() == 13 {
            let primary = num(&cur, l, &field("primary"), f[10])?;
            let secondary = num(&cur, l, &field("secondary"), f[11])?;
            let ps = match f[12] {
                "P" | "p" => 'P',
                "S" | "s" => 'S',
                other => {
                    return Err(cur.err(
                        l,
                        &field("PS"),
                        format!("`{}` is neither P nor S", clip(other)),
                    ))
                }
            };
            (primary, secondary, ps)
        } else {
            (1.0, 1.0, 'P')
        };
        analog.push(AnalogInfo {
            id: f[1].to_string(),
            phase: f[2].to_string(),
            circuit: f[3].to_string(),
            unit: f[4].to_string(),
            a,
            b: num(&cur, l, &field("b"), f[6])?,
            skew: num(&cur, l, &field("skew"), f[7])?,
            min: num(&cur, l, &field("min"), f[8])?,
            max: num(&cur, l, &field("max"), f[9])?,
            primary,
            secondary,
            ps,
        });
    }
    for i in 0..n_digital {
        let what = format!("digital channel {}", i + 1);
        let (l, f) = cur.fields(&what, &[3, 5])?;
        let dn = whole(&cur, l, &format!("{what}: Dn"), f[0])?;
        if dn != (i + 1) as u64 {
            return Err(cur.err(
                l,
                &format!("{what}: Dn"),
                format!("channel number {dn}, expected {}", i + 1),
            ));
        }
    }

    let (l, f) = cur.fields("line frequency", &[1])?;
    let line_frequency = num(&cur, l, "lf", f[0])?;
    if line_frequency < 0.0 {
        return Err(cur.err(l, "lf", format!("{line_frequency} Hz is negative")));
    }
    let (l, f) = cur.fields("number of sampling rates", &[1])?;
    let nrates = whole(&cur, l, "nrates", f[0])?;
    if nrates > 999 {
        return Err(cur.err(l, "nrates", format!("{nrates} rates (at most 999)")));
    }
    let mut rates = Vec::new();
    let mut samples = 0_u64;
    for r in 0..nrates.max(1) {
        let (l, f) = cur.fields(&format!("sampling rate {}", r + 1), &[2])?;
        let samp = num(&cur, l, "samp", f[0])?;
        let endsamp = whole(&cur, l, "endsamp", f[1])?;
        if nrates == 0 {
            if samp != 0.0 {
                return Err(cur.err(l, "samp", "must be 0 when nrates is 0"));
            }
        } else {
            if samp <= 0.0 {
                return Err(cur.err(l, "samp", format!("{samp} Hz is not a sampling rate")));
            }
            rates.push((samp, endsamp));
        }
        if endsamp <= samples {
            return Err(cur.err(
                l,
                "endsamp",
                format!("{endsamp} does not follow the previous rate's last sample {samples}"),
            ));
        }
        samples = endsamp;
    }
    if samples > MAX_SAMPLES {
        return Err(cur.err(
            cur.next,
            "endsamp",
            format!("{samples} samples per channel (at most {MAX_SAMPLES})"),
        ));
    }
    let (l, f) = cur.fields("start timestamp", &[2])?;
    let start = timestamp(&cur, l, "start", f[0], f[1])?;
    let (l, f) = cur.fields("trigger timestamp", &[2])?;
    let trigger = timestamp(&cur, l, "trigger", f[0], f[1])?;
    let (l, f) = cur.fields("file type", &[1])?;
    let format = match f[0].to_ascii_uppercase().as_str() {
        "ASCII" => DataFormat::Ascii,
        "BINARY" => DataFormat::Binary,
        other => {
            return Err(cur.err(
                l,
                "ft",
                format!(
                    "unknown or unsupported file type `{}` (ASCII or BINARY)",
                    clip(other)
                ),
            ))
        }
    };
    let time_multiplier = if cur.next < cur.lines.len() || revision > 1991 {
        let (l, f) = cur.fields("time multiplier", &[1])?;
        let m = num(&cur, l, "timemult", f[0])?;
        if m <= 0.0 {
            return Err(cur.err(l, "timemult", format!("{m} is not positive")));
        }
        m
    } else {
        1.0
    };
    if revision >= 2013 {
        for what in ["time_code,local_code", "tmq_code,leapsec"] {
            if cur.next < cur.lines.len() {
                cur.fields(what, &[2])?;
            }
        }
    }
    if cur.next < cur.lines.len() {
        return Err(cur.err(
            cur.next + 1,
            "end of file",
            format!("unexpected line `{}`", clip(cur.lines[cur.next])),
        ));
    }
    Ok(Config {
        station_name,
        device_id,
        revision,
        analog,
        digital: n_digital,
        line_frequency,
        rates,
        samples,
        start,
        trigger,
        format,
        time_multiplier,
    })
}

/// Parse a `.dat` described by `config` (`file` names it in errors).
pub fn parse_dat(config: &Config, bytes: &[u8], file: &Path) -> Result<ComtradeData, ReadError> {
    // Reserve no more than the bytes can hold (each sample takes at least one byte per
    // channel and field), so a `.cfg` that promises much cannot make a tiny `.dat` allocate.
    let fit = bytes.len() / (config.analog.len() + 2);
    let n = usize::try_from(config.samples.min(MAX_SAMPLES))
        .unwrap_or(0)
        .min(fit);
    let mut values = vec![Vec::with_capacity(n); config.analog.len()];
    let mut timestamps = Vec::with_capacity(n);
    match config.format {
        DataFormat::Ascii => ascii_dat(config, bytes, file, &mut values, &mut timestamps)?,
        DataFormat::Binary => binary_dat(config, bytes, file, &mut values, &mut timestamps)?,
    }
    Ok(ComtradeData {
        config: config.clone(),
        values,
        timestamps,
    })
}

fn ascii_dat(
    config: &Config,
    bytes: &[u8],
    file: &Path,
    values: &mut [Vec<f64>],
    timestamps: &mut Vec<Option<u64>>,
) -> Result<(), ReadError> {
    let err = |line: usize, field: &str, message: String| ReadError::Invalid {
        file: file.to_path_buf(),
        at: Location::Line(line),
        field: field.to_string(),
        message,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        err(line, "text", "not valid UTF-8 text".into())
    })?;
    let fields_per_row = 2 + config.analog.len() + config.digital;
    let mut previous: Option<u64> = None;
    let mut count = 0_u64;
    let mut last_line = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let row = raw.trim();
        if row.is_empty() || row == "\u{1a}" {
            continue;
        }
        last_line = line;
        if count == config.samples {
            return Err(err(
                line,
                "n",
                format!("more samples than endsamp ({})", config.samples),
            ));
        }
        let f: Vec<&str> = row.split(',').map(str::trim).collect();
        if f.len() != fields_per_row {
            return Err(err(
                line,
                "row",
                format!(
                    "expected {fields_per_row} fields (n, timestamp, {} analog, {} digital), got {}",
                    config.analog.len(),
                    config.digital,
                    f.len()
                ),
            ));
        }
        let sample = f[0].parse::<u64>().map_err(|_| {
            err(
                line,
                "n",
                format!("`{}` is not a sample number", clip(f[0])),
            )
        })?;
        if previous.is_some_and(|p| sample <= p) {
            return Err(err(
                line,
                "n",
                format!(
                    "sample number {sample} does not increase (previous {})",
                    previous.unwrap_or(0)
                ),
            ));
        }
        previous = Some(sample);
        let ts = if f[1].is_empty() {
            None
        } else {
            Some(f[1].parse::<u64>().map_err(|_| {
                err(
                    line,
                    "timestamp",
                    format!("`{}` is not a whole number", clip(f[1])),
                )
            })?)
        };
        timestamps.push(ts);
        for (c, (info, out)) in config.analog.iter().zip(values.iter_mut()).enumerate() {
            let s = f[2 + c];
            let v = if s.is_empty() || s == "99999" {
                f64::NAN
            } else {
                match s.parse::<f64>() {
                    Ok(x) if x.is_finite() => info.a * x + info.b,
                    _ => {
                        return Err(err(
                            line,
                            &format!("analog channel {} ({})", c + 1, info.id),
                            format!("`{}` is not a number", clip(s)),
                        ))
                    }
                }
            };
            out.push(v);
        }
        for (d, s) in f[2 + config.analog.len()..].iter().enumerate() {
            if !matches!(*s, "0" | "1" | "") {
                return Err(err(
                    line,
                    &format!("digital channel {}", d + 1),
                    format!("`{}` is not 0 or 1", clip(s)),
                ));
            }
        }
        count += 1;
    }
    if count < config.samples {
        return Err(err(
            last_line + 1,
            "n",
            format!(
                "truncated: {count} samples but the .cfg declares endsamp {}",
                config.samples
            ),
        ));
    }
    Ok(())
}

fn binary_dat(
    config: &Config,
    bytes: &[u8],
    file: &Path,
    values: &mut [Vec<f64>],
    timestamps: &mut Vec<Option<u64>>,
) -> Result<(), ReadError> {
    let len = config.record_len();
    let err = |record: u64, field: &str, message: String| ReadError::Invalid {
        file: file.to_path_buf(),
        at: Location::Record {
            record,
            offset: (record.saturating_sub(1)).saturating_mul(len as u64),
        },
        field: field.to_string(),
        message,
    };
    // An MS-DOS end-of-file byte after the last record is tolerated.
    let body = match bytes.len() % len {
        1 if bytes.last() == Some(&0x1a) => &bytes[..bytes.len() - 1],
        _ => bytes,
    };
    let whole_records = (body.len() / len) as u64;
    if whole_records < config.samples {
        return Err(err(
            whole_records + 1,
            "record",
            format!(
                "truncated: {whole_records} whole records of {len} bytes{} but the .cfg declares endsamp {}",
                if body.len() % len != 0 {
                    format!(" and {} bytes more", body.len() % len)
                } else {
                    String::new()
                },
                config.samples
            ),
        ));
    }
    if whole_records > config.samples || body.len() % len != 0 {
        return Err(err(
            config.samples + 1,
            "record",
            format!(
                "{} bytes after the {} records the .cfg declares (records of {len} bytes)",
                body.len() as u64 - config.samples * len as u64,
                config.samples
            ),
        ));
    }
    let mut previous: Option<u32> = None;
    for (k, rec) in body.chunks_exact(len).enumerate() {
        let record = k as u64 + 1;
        let word = |i: usize| u32::from_le_bytes([rec[i], rec[i + 1], rec[i + 2], rec[i + 3]]);
        let sample = word(0);
        if previous.is_some_and(|p| sample <= p) {
            return Err(err(
                record,
                "n",
                format!(
                    "sample number {sample} does not increase (previous {})",
                    previous.unwrap_or(0)
                ),
            ));
        }
        previous = Some(sample);
        let ts = word(4);
        timestamps.push((ts != u32::MAX).then_some(u64::from(ts)));
        for (c, (info, out)) in config.analog.iter().zip(values.iter_mut()).enumerate() {
            let x = i16::from_le_bytes([rec[8 + 2 * c], rec[9 + 2 * c]]);
            out.push(if x == i16::MIN {
                f64::NAN
            } else {
                info.a * f64::from(x) + info.b
            });
        }
    }
    Ok(())
}

/// The `.dat` beside `cfg`: same stem, extension `.dat` (or `.DAT` when the `.cfg` is `.CFG`).
pub fn dat_path(cfg: &Path) -> PathBuf {
    let upper = cfg
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.chars().all(|c| c.is_ascii_uppercase()));
    cfg.with_extension(if upper { "DAT" } else { "dat" })
}

/// Read `cfg` and the `.dat` beside it ([`dat_path`]).
pub fn read(cfg: &Path) -> Result<ComtradeData, ReadError> {
    let bytes = std::fs::read(cfg).map_err(|source| ReadError::Io {
        file: cfg.to_path_buf(),
        referenced_by: None,
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let config = parse_cfg(&text, cfg)?;
    let dat = dat_path(cfg);
    let data = std::fs::read(&dat).map_err(|source| ReadError::Io {
        file: dat.clone(),
        referenced_by: Some(cfg.to_path_buf()),
        source,
    })?;
    parse_dat(&config, &data, &dat)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::comtrade::{AnalogChannel, DatWriter, Recording, Revision, Scaling};
    use proptest::prelude::*;

    fn recording(revision: Revision, format: DataFormat) -> Recording {
        Recording {
            station_name: "st".into(),
            device_id: "dev".into(),
            revision,
            format,
            line_frequency: 50.0,
            sample_rate: 1000.0,
            samples: 5,
            start: 1.0,
            trigger: 1.0025,
            channels: ["VA", "VB"]
                .iter()
                .map(|id| AnalogChannel {
                    id: (*id).into(),
                    phase: id[1..].into(),
                    circuit: "c".into(),
                    unit: "V".into(),
                    scaling: Scaling::covering(-400.0, 400.0),
                })
                .collect(),
        }
    }

    fn files(revision: Revision, format: DataFormat) -> (String, Vec<u8>, Vec<[f64; 2]>) {
        let rec = recording(revision, format);
        let rows: Vec<[f64; 2]> = (0..5)
            .map(|k| [100.0 * k as f64 - 200.0, 3.3 * k as f64])
            .collect();
        let mut w = DatWriter::new(&rec, Vec::new()).unwrap();
        for r in &rows {
            w.write_sample(r).unwrap();
        }
        (rec.cfg_text().unwrap(), w.finish().unwrap(), rows)
    }

    fn cfg_path() -> &'static Path {
        Path::new("x.cfg")
    }

    #[test]
    fn reads_what_the_writer_writes() {
        for rev in [Revision::Rev1999, Revision::Rev2013] {
            for fmt in [DataFormat::Ascii, DataFormat::Binary] {
                let (cfg, dat, rows) = files(rev, fmt);
                let c = parse_cfg(&cfg, cfg_path()).unwrap();
                assert_eq!(
                    c.revision,
                    if rev == Revision::Rev1999 { 1999 } else { 2013 }
                );
                assert_eq!(c.format, fmt);
                assert_eq!((c.samples, c.uniform_rate()), (5, Some(1000.0)));
                assert_eq!(c.analog_index("VB"), Some(1));
                assert!((c.trigger.since(&c.start) - 0.0025).abs() < 1e-9);
                // 01/01/2000 is day 10957 after 1970-01-01.
                assert_eq!(c.start.days, 10_957);
                let d = parse_dat(&c, &dat, Path::new("x.dat")).unwrap();
                let a = c.analog[0].a;
                for (k, r) in rows.iter().enumerate() {
                    for (values, want) in d.values.iter().zip(r) {
                        assert!((values[k] - want).abs() <= a / 2.0 * (1.0 + 1e-9));
                    }
                    assert_eq!(d.timestamps[k], Some(k as u64 * 1000));
                }
            }
        }
    }

    #[test]
    fn a_1991_file_with_digital_channels_and_multiple_rates() {
        let cfg = "s,d\n3,1A,2D\n1,IA,A,,A,0.5,1,0,-10,10\n1,trip,0\n2,close,1\n60\n2\n\
                   1000,2\n500,3\n05/11/1999,12:00:00.5\n05/11/1999,12:00:01\nascii\n";
        let c = parse_cfg(cfg, cfg_path()).unwrap();
        assert_eq!(c.revision, 1991);
        assert_eq!((c.digital, c.samples, c.uniform_rate()), (2, 3, None));
        assert_eq!(c.rates, vec![(1000.0, 2), (500.0, 3)]);
        assert_eq!(c.time_multiplier, 1.0);
        assert_eq!(c.trigger.since(&c.start), 0.5);
        let d = parse_dat(
            &c,
            b"1,0,4,0,1\n2,1000,,1,1\n5,3000,-2,0,0\n",
            Path::new("x.dat"),
        )
        .unwrap();
        assert_eq!(d.values[0][0], 3.0);
        assert!(d.values[0][1].is_nan());
        assert_eq!(d.values[0][2], 0.0);
    }

    fn cfg_err(text: &str) -> String {
        parse_cfg(text, cfg_path()).unwrap_err().to_string()
    }

    #[test]
    fn cfg_errors_name_line_and_field() {
        let (good, _, _) = files(Revision::Rev1999, DataFormat::Ascii);
        let lines: Vec<&str> = good.lines().collect();
        let with = |i: usize, s: &str| {
            let mut l = lines.clone();
            l[i] = s;
            l.join("\r\n")
        };
        assert_eq!(
            cfg_err(&with(1, "3,2A,0D")),
            "x.cfg:2: TT: 3 channels in total but 2A + 0D"
        );
        assert_eq!(
            cfg_err(&with(3, "2,VB,B,c,V,zero,0,0,-32767,32767,1,1,P")),
            "x.cfg:4: analog channel 2: a: `zero` is not a number"
        );
        assert_eq!(
            cfg_err(&with(3, "3,VB,B,c,V,1,0,0,-32767,32767,1,1,P")),
            "x.cfg:4: analog channel 2: An: channel number 3, expected 2"
        );
        assert!(cfg_err(&with(2, "1,VA,A,c,V,1,0")).starts_with(
            "x.cfg:3: analog channel 1: expected 10 or 13 comma-separated fields, got 7"
        ));
        assert_eq!(
            cfg_err(&with(9, "FLOAT64")),
            "x.cfg:10: ft: unknown or unsupported file type `FLOAT64` (ASCII or BINARY)"
        );
        assert_eq!(
            cfg_err(&with(7, "31/02/2000,00:00:00.5"))
                .split(" in ")
                .next()
                .unwrap(),
            "x.cfg:8: start: no such date"
        );
        assert_eq!(
            cfg_err(&with(6, "1000,0")),
            "x.cfg:7: endsamp: 0 does not follow the previous rate's last sample 0"
        );
        assert_eq!(
            cfg_err(&lines[..6].join("\n")),
            "x.cfg:7: sampling rate 1: missing: the file ends before this line"
        );
        assert_eq!(
            cfg_err(&format!("{good}extra\r\n")),
            "x.cfg:12: end of file: unexpected line `extra`"
        );
    }

    #[test]
    fn dat_errors_name_line_or_record() {
        let (cfg, dat, _) = files(Revision::Rev1999, DataFormat::Ascii);
        let c = parse_cfg(&cfg, cfg_path()).unwrap();
        let text = String::from_utf8(dat).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let e = |t: String| {
            parse_dat(&c, t.as_bytes(), Path::new("x.dat"))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e(lines[..3].join("\n")),
            "x.dat:4: n: truncated: 3 samples but the .cfg declares endsamp 5"
        );
        let mut l = lines.clone();
        l[2] = "2,2000,1,1";
        assert_eq!(
            e(l.join("\n")),
            "x.dat:3: n: sample number 2 does not increase (previous 2)"
        );
        l[2] = "3,2000,1.5e,1";
        assert_eq!(
            e(l.join("\n")),
            "x.dat:3: analog channel 1 (VA): `1.5e` is not a number"
        );
        l[2] = "3,2000,1";
        assert!(e(l.join("\n")).starts_with("x.dat:3: row: expected 4 fields"));
        let more = format!("{text}6,5000,0,0\r\n");
        assert_eq!(e(more), "x.dat:6: n: more samples than endsamp (5)");

        let (cfg, dat, _) = files(Revision::Rev2013, DataFormat::Binary);
        let c = parse_cfg(&cfg, cfg_path()).unwrap();
        let eb = |b: &[u8]| {
            parse_dat(&c, b, Path::new("x.dat"))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            eb(&dat[..30]),
            "x.dat:record 3 (byte 24): record: truncated: 2 whole records of 12 bytes and 6 bytes more but the .cfg declares endsamp 5"
        );
        let mut swapped = dat.clone();
        swapped[24] = 1;
        assert_eq!(
            eb(&swapped),
            "x.dat:record 3 (byte 24): n: sample number 1 does not increase (previous 2)"
        );
    }

    #[test]
    fn a_huge_declaration_with_little_data_is_an_error_not_an_allocation() {
        let cfg = "s,d,1999\n999999,999999A,0D\n";
        assert!(cfg_err(cfg).starts_with("x.cfg:3: analog channel 1: missing"));
        let mut lines = vec!["s,d,1999".to_string(), "5000,5000A,0D".to_string()];
        lines.extend((1..=5000).map(|i| format!("{i},V{i},A,,V,1,0,0,-1,1,1,1,P")));
        lines.extend(
            [
                "50",
                "1",
                "1000,50000000",
                "01/01/2000,00:00:00",
                "01/01/2000,00:00:00",
            ]
            .map(String::from),
        );
        lines.extend(["BINARY", "1"].map(String::from));
        let c = parse_cfg(&lines.join("\n"), cfg_path()).unwrap();
        assert_eq!(c.samples, 50_000_000);
        let e = parse_dat(&c, &[0; 100], Path::new("x.dat"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("x.dat:record 1 (byte 0): record: truncated: 0 whole records"),
            "{e}"
        );
    }

    #[test]
    fn missing_dat_names_both_files() {
        let dir = std::env::temp_dir().join(format!("gridloop-ct-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("only.cfg");
        std::fs::write(&cfg, files(Revision::Rev1999, DataFormat::Ascii).0).unwrap();
        let e = read(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("only.dat: cannot read (the data file of "),
            "{e}"
        );
        assert!(e.contains("only.cfg)"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(dat_path(Path::new("A.CFG")), Path::new("A.DAT"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn damaged_files_give_ok_or_an_error_never_a_panic(
            binary in any::<bool>(),
            on_cfg in any::<bool>(),
            cut in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            truncate in any::<bool>(),
        ) {
            let fmt = if binary { DataFormat::Binary } else { DataFormat::Ascii };
            let (cfg, dat, _) = files(Revision::Rev2013, fmt);
            let (mut cfg, mut dat) = (cfg.into_bytes(), dat);
            let target = if on_cfg { &mut cfg } else { &mut dat };
            for (i, b) in &flips {
                let i = i.index(target.len());
                target[i] = *b;
            }
            if truncate {
                let n = cut.index(target.len() + 1);
                target.truncate(n);
            }
            let text = String::from_utf8_lossy(&cfg);
            if let Ok(c) = parse_cfg(&text, cfg_path()) {
                if let Ok(d) = parse_dat(&c, &dat, Path::new("x.dat")) {
                    prop_assert_eq!(d.values.len(), c.analog.len());
                    for v in &d.values {
                        prop_assert_eq!(v.len() as u64, c.samples);
                    }
                }
            }
        }
    }
}
