//! `gridloop export`: a scenario group's probe-meter waveform as COMTRADE files
//! (IEEE C37.111-1999 or -2013, ASCII or BINARY `.dat`).
//!
//! The samples are those the harness feeds the group's meter 0: the same supply model (the
//! group's disturbances, point-on-wave onsets resolved) and the same noise seed
//! ([`sim_core::harness::probe_synthesizer`]), at the supply terminals, before the meter's own
//! front end (calibration gain, ADC quantization). Two passes over the (deterministic)
//! synthesizer: the first finds each channel's range for the scaling, the second writes.
//! Timestamps start at the fixed epoch [`reports::comtrade::EPOCH`] = scenario time 0; the
//! trigger is the first disturbance onset in the window (noise does not count), else the start.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use reports::comtrade::{
    AnalogChannel, ChannelRange, ComtradeError, DatWriter, DataFormat, Recording, Revision,
};
use sim_core::disturbance::DisturbanceKind;
use sim_core::grid::PhaseSystem;
use sim_core::synth::SampleBlock;
use sim_core::{Scenario, Seconds};

use crate::exit::{CommandResult, Failure, OrExit, ENVIRONMENT, INVALID_INPUT, SUCCESS};
use crate::load;
use crate::staged::StagedFile;

/// Most samples per channel one export writes.
pub const MAX_SAMPLES: u64 = 50_000_000;
/// Samples per channel per synthesis block.
const BLOCK: usize = 4096;

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Exit codes:\n  0  files written\n  2  invalid scenario or flags \
(bad window, unknown group, more than 50 M samples per channel)\n  3  the files cannot be written"
)]
pub struct ExportArgs {
    /// Scenario file
    #[arg(value_name = "SCENARIO")]
    pub scenario: PathBuf,

    /// Write DIR/<scenario-name>.cfg and DIR/<scenario-name>.dat (DIR is created if missing)
    #[arg(long, value_name = "DIR")]
    pub comtrade: PathBuf,

    /// Meter group whose probe meter (meter 0) is recorded [default: the first group]
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,

    /// Encoding of the .dat file
    #[arg(long, value_enum, default_value_t = ExportFormat::Ascii)]
    pub format: ExportFormat,

    /// COMTRADE revision (IEEE C37.111-1999 or -2013)
    #[arg(long, value_enum, default_value_t = ExportRevision::Rev1999)]
    pub rev: ExportRevision,

    /// Start of the window, scenario time with a unit (`900ms`, `1.5s`, `30cycles`) [default: 0s]
    #[arg(long, value_name = "T")]
    pub from: Option<String>,

    /// End of the window (exclusive), scenario time with a unit [default: the scenario's end]
    #[arg(long, value_name = "T")]
    pub to: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Ascii,
    Binary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportRevision {
    #[value(name = "1999")]
    Rev1999,
    #[value(name = "2013")]
    Rev2013,
}

/// The sample indices `[first, end)` of scenario time `[from, to)`, on the harness's grid
/// (sample k at k / fs; the scenario has round(duration · fs) samples).
pub fn sample_window(
    duration: Seconds,
    sample_rate: f64,
    from: Seconds,
    to: Seconds,
) -> Result<(u64, u64), String> {
    if from.is_nan() || to.is_nan() || from >= to {
        return Err(format!("--from ({from} s) must be before --to ({to} s)"));
    }
    if to > duration + 1e-9 {
        return Err(format!(
            "--to ({to} s) is after the scenario's end ({duration} s)"
        ));
    }
    let total = (duration * sample_rate).round() as u64;
    // First sample at or after t; a millionth of a sample of slack absorbs decimal-to-binary
    // error (0.1 s · 3000 Hz = 300.00000000000006).
    let index = |t: Seconds| ((t * sample_rate - 1e-6).ceil().max(0.0) as u64).min(total);
    let (first, end) = (index(from), index(to));
    if end <= first {
        return Err(format!(
            "the window {from} s .. {to} s holds no sample at {sample_rate} Hz"
        ));
    }
    Ok((first, end))
}

/// (ch_id, ph) of each voltage channel, then each current channel when there is a load.
pub fn channel_names(system: PhaseSystem, with_current: bool) -> Vec<(String, String, String)> {
    let phases = &["A", "B", "C"][..system.channels()];
    let mut v: Vec<(String, String, String)> = phases
        .iter()
        .map(|p| (format!("V{p}"), (*p).to_owned(), "V".to_owned()))
        .collect();
    if with_current {
        v.extend(
            phases
                .iter()
                .map(|p| (format!("I{p}"), (*p).to_owned(), "A".to_owned())),
        );
    }
    v
}

/// Call `f` with every sample `first..end` of the group's probe waveform: voltages, then
/// currents when the grid has a load.
fn for_each_sample<E>(
    scenario: &Scenario,
    group: usize,
    (first, end): (u64, u64),
    mut f: impl FnMut(&[f64]) -> Result<(), E>,
) -> Result<(), E> {
    let mut synth = sim_core::harness::probe_synthesizer(scenario, group);
    let channels = scenario.grid.channels();
    let with_current = scenario.grid.load.is_some();
    let mut block = SampleBlock::new(channels, BLOCK, scenario.grid.sample_rate, with_current);
    let mut values = vec![0.0; block.voltage.len() + block.current.len()];
    let mut pos = 0_u64;
    while pos < end {
        let n = (end - pos).min(BLOCK as u64) as usize;
        synth.fill(&mut block, n);
        let skip = first.saturating_sub(pos).min(n as u64) as usize;
        for i in skip..n {
            for (v, ch) in values
                .iter_mut()
                .zip(block.voltage.iter().chain(&block.current))
            {
                *v = f64::from(ch[i]);
            }
            f(&values)?;
        }
        pos += n as u64;
    }
    Ok(())
}

/// A file name from a scenario name: anything but letters, digits, `.`, `_`, `-` becomes `_`.
pub fn file_stem(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("scenario{s}")
    } else {
        s
    }
}

pub fn export(args: &ExportArgs) -> CommandResult {
    let path = &args.scenario;
    let meta = std::fs::metadata(path)
        .or_exit(INVALID_INPUT, || format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        return Err(Failure::msg(
            INVALID_INPUT,
            format!("{} is not a scenario file", path.display()),
        ));
    }
    if args.comtrade.is_file() {
        return Err(Failure::msg(
            INVALID_INPUT,
            format!(
                "--comtrade {} is a file; give the folder to write the .cfg and .dat into",
                args.comtrade.display()
            ),
        ));
    }
    let loaded = load::load_valid(std::slice::from_ref(path)).map_err(|mut f| {
        f.code = INVALID_INPUT;
        f
    })?;
    let Some(scenario) = loaded.into_iter().next().map(|l| l.scenario) else {
        return Err(Failure::msg(INVALID_INPUT, "no scenario loaded"));
    };

    let group = match &args.group {
        None if scenario.groups.is_empty() => {
            return Err(Failure::msg(
                INVALID_INPUT,
                "the scenario has no meter group",
            ))
        }
        None => 0,
        Some(name) => scenario
            .groups
            .iter()
            .position(|g| &g.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = scenario.groups.iter().map(|g| g.name.as_str()).collect();
                Failure::msg(
                    INVALID_INPUT,
                    format!("no meter group `{name}`; groups: {}", names.join(", ")),
                )
            })?,
    };

    let f = scenario.grid.frequency;
    let time = |flag: &str, text: &Option<String>, default: Seconds| -> Result<Seconds, Failure> {
        match text {
            None => Ok(default),
            Some(t) => scenarios::duration::parse_duration(t)
                .map(|d| d.seconds(f))
                .map_err(|e| Failure::msg(INVALID_INPUT, format!("{flag}: {e}"))),
        }
    };
    let from = time("--from", &args.from, 0.0)?;
    let to = time("--to", &args.to, scenario.duration)?;
    let fs = scenario.grid.sample_rate;
    let window = sample_window(scenario.duration, fs, from, to)
        .map_err(|e| Failure::msg(INVALID_INPUT, e))?;
    let samples = window.1 - window.0;
    if samples > MAX_SAMPLES {
        return Err(Failure::msg(
            INVALID_INPUT,
            format!(
                "the window holds {samples} samples per channel ({} s at {fs} Hz); an export \
                 takes at most {MAX_SAMPLES}: narrow it with --from/--to",
                samples as f64 / fs
            ),
        ));
    }

    // Pass 1: each channel's range.
    let with_current = scenario.grid.load.is_some();
    let names = channel_names(scenario.grid.system, with_current);
    let mut ranges = vec![ChannelRange::default(); names.len()];
    for_each_sample::<()>(&scenario, group, window, |values| {
        for (r, v) in ranges.iter_mut().zip(values) {
            r.push(*v);
        }
        Ok(())
    })
    .ok();

    let group_name = scenario.groups[group].name.clone();
    let start = window.0 as f64 / fs;
    let end = window.1 as f64 / fs;
    let model = sim_core::harness::probe_synthesizer(&scenario, group);
    let trigger = model
        .model()
        .disturbances
        .iter()
        .filter(|d| !matches!(d.kind, DisturbanceKind::Noise { .. }))
        .map(|d| d.onset())
        .filter(|t| (start..end).contains(t))
        .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.min(t))))
        .unwrap_or(start);
    let recording = Recording {
        station_name: scenario.name.clone(),
        device_id: format!(
            "gridloop {group_name} meter {}",
            sim_core::harness::probe_meter_id(&scenario, group)
        ),
        revision: match args.rev {
            ExportRevision::Rev1999 => Revision::Rev1999,
            ExportRevision::Rev2013 => Revision::Rev2013,
        },
        format: match args.format {
            ExportFormat::Ascii => DataFormat::Ascii,
            ExportFormat::Binary => DataFormat::Binary,
        },
        line_frequency: f,
        sample_rate: fs,
        samples,
        start,
        trigger,
        channels: names
            .iter()
            .zip(&ranges)
            .map(|((id, ph, unit), r)| AnalogChannel {
                id: id.clone(),
                phase: ph.clone(),
                circuit: group_name.clone(),
                unit: unit.clone(),
                scaling: r.scaling(),
            })
            .collect(),
    };
    let cfg_text = recording
        .cfg_text()
        .map_err(|e| Failure::new(INVALID_INPUT, e))?;

    // Pass 2: the files, each written to a temporary beside it; the .dat is renamed into
    // place first and the .cfg last, only once both are complete, so a failure leaves the
    // old pair (if any) as it was.
    let dir = &args.comtrade;
    let stem = file_stem(&scenario.name);
    let dat_path = dir.join(format!("{stem}.dat"));
    let cfg_path = dir.join(format!("{stem}.cfg"));
    for (ext, out) in [("dat", &dat_path), ("cfg", &cfg_path)] {
        if crate::staged::same_file(out, path) {
            return Err(Failure::msg(
                INVALID_INPUT,
                format!(
                    "the .{ext} file {} names the scenario file; export into another folder",
                    out.display()
                ),
            ));
        }
    }
    std::fs::create_dir_all(dir).or_exit(ENVIRONMENT, || {
        format!("cannot create the folder {}", dir.display())
    })?;
    let stage = |p: &Path| {
        StagedFile::create(p).or_exit(ENVIRONMENT, || format!("cannot create {}", p.display()))
    };
    let (dat_staged, dat) = stage(&dat_path)?;
    let (cfg_staged, mut cfg) = stage(&cfg_path)?;
    let mut writer = DatWriter::new(&recording, BufWriter::with_capacity(1 << 20, dat))
        .map_err(|e| cannot_write(&dat_path, e))?;
    for_each_sample(&scenario, group, window, |values| {
        writer.write_sample(values)
    })
    .map_err(|e| cannot_write(&dat_path, e))?;
    drop(writer.finish().map_err(|e| cannot_write(&dat_path, e))?);
    cfg.write_all(cfg_text.as_bytes())
        .and_then(|()| cfg.flush())
        .or_exit(ENVIRONMENT, || {
            format!("cannot write {}", cfg_path.display())
        })?;
    drop(cfg);
    dat_staged.commit().or_exit(ENVIRONMENT, || {
        format!("cannot write {}", dat_path.display())
    })?;
    cfg_staged.commit().or_exit(ENVIRONMENT, || {
        format!("cannot write {}", cfg_path.display())
    })?;

    let mut summary = format!(
        "wrote {} and {}: {samples} samples × {} channels at {fs} Hz from {start} s to {end} s \
         (probe meter of group {group_name}), {} {}\n",
        cfg_path.display(),
        dat_path.display(),
        recording.channels.len(),
        recording.format.name(),
        recording.revision.year(),
    );
    for c in &recording.channels {
        summary.push_str(&format!(
            "  {:<3} {}  a = {} {u}/count  b = {} {u}  precision ±{:.3e} {u}\n",
            c.id,
            c.unit,
            c.scaling.a,
            c.scaling.b,
            c.scaling.precision(),
            u = c.unit
        ));
    }
    std::io::stdout()
        .lock()
        .write_all(summary.as_bytes())
        .or_exit(ENVIRONMENT, || "cannot write to stdout".into())?;
    Ok(SUCCESS)
}

/// A writer error as a failure: I/O is the environment (3), anything else invalid input (2).
fn cannot_write(path: &Path, e: ComtradeError) -> Failure {
    let code = match e {
        ComtradeError::Io(_) => ENVIRONMENT,
        _ => INVALID_INPUT,
    };
    Failure::new(
        code,
        anyhow::Error::new(e).context(format!("cannot write {}", path.display())),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn windows_on_the_sample_grid() {
        assert_eq!(sample_window(3.0, 12_800.0, 0.0, 3.0), Ok((0, 38_400)));
        assert_eq!(sample_window(3.0, 12_800.0, 1.0, 1.5), Ok((12_800, 19_200)));
        // 0.1 s at 3 kHz: 300 exactly, despite 0.1 · 3000 = 300.00000000000006.
        assert_eq!(sample_window(1.0, 3000.0, 0.1, 0.2), Ok((300, 600)));
        // Between samples: the first at or after.
        assert_eq!(sample_window(1.0, 10.0, 0.05, 0.26), Ok((1, 3)));
        assert!(sample_window(3.0, 12_800.0, 2.0, 1.0).is_err());
        assert!(sample_window(3.0, 12_800.0, 1.0, 3.5).is_err());
        assert!(sample_window(1.0, 10.0, 0.01, 0.02).is_err());
    }

    #[test]
    fn channel_names_per_system() {
        let ids = |s, c| {
            channel_names(s, c)
                .into_iter()
                .map(|(id, ph, u)| format!("{id}/{ph}/{u}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(PhaseSystem::Single, false), ["VA/A/V"]);
        assert_eq!(ids(PhaseSystem::SplitPhase, false), ["VA/A/V", "VB/B/V"]);
        assert_eq!(
            ids(PhaseSystem::ThreePhase, true),
            ["VA/A/V", "VB/B/V", "VC/C/V", "IA/A/A", "IB/B/A", "IC/C/A"]
        );
    }

    #[test]
    fn file_stems() {
        assert_eq!(file_stem("sag-75pct-12-cycles"), "sag-75pct-12-cycles");
        assert_eq!(file_stem("a b/c"), "a_b_c");
        assert_eq!(file_stem(""), "scenario");
        assert_eq!(file_stem(".."), "scenario..");
    }
}
