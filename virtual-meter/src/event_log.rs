//! The meter's event log file (the spec's `voltage_events.log`): one line per trip and clear,
//! in `sim_core::meter::event_log_line`'s format, appended as the meters produce them. One file
//! may hold many meters; every line names its meter.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use sim_core::meter::event_log_line;

use crate::live::LiveMeter;
use crate::service::SharedMeter;

/// Appends every new entry of each meter's `Meter::event_log()` since the last call.
#[derive(Debug)]
pub struct EventLogWriter<W: Write> {
    out: W,
    /// Entries already written, by meter name.
    written: HashMap<String, usize>,
    lines: u64,
}

impl EventLogWriter<BufWriter<File>> {
    /// Open `path` for appending (created if missing; earlier runs' lines are kept).
    pub fn append_to(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(EventLogWriter::new(BufWriter::new(file)))
    }
}

impl<W: Write> EventLogWriter<W> {
    pub fn new(out: W) -> Self {
        EventLogWriter {
            out,
            written: HashMap::new(),
            lines: 0,
        }
    }

    /// Write `meter`'s entries not written yet (no flush). Returns how many.
    pub fn write_meter(&mut self, meter: &LiveMeter) -> io::Result<usize> {
        let mut lines = Vec::new();
        self.take_new(meter, &mut lines);
        for line in &lines {
            writeln!(self.out, "{line}")?;
        }
        Ok(lines.len())
    }

    /// Format `meter`'s entries not taken yet into `lines` and mark them taken.
    fn take_new(&mut self, meter: &LiveMeter, lines: &mut Vec<String>) {
        let log = meter.meter().event_log();
        let done = self.written.get(meter.name()).copied().unwrap_or(0);
        let new = log.get(done..).unwrap_or(&[]);
        lines.extend(
            new.iter()
                .map(|(t, ev)| event_log_line(meter.name(), *t, ev)),
        );
        if !new.is_empty() {
            self.written.insert(meter.name().to_string(), log.len());
            self.lines += new.len() as u64;
        }
    }

    /// Write every meter's new entries, in the order given, and flush. The lines are formatted
    /// under each meter's lock and written after it is released, so a slow file never holds
    /// up the pacing loop or a Modbus request. A meter whose lock is poisoned is skipped.
    /// Returns how many lines were written.
    pub fn append(&mut self, meters: &[SharedMeter]) -> io::Result<usize> {
        let mut lines = Vec::new();
        for m in meters {
            if let Ok(m) = m.lock() {
                self.take_new(&m, &mut lines);
            }
        }
        for line in &lines {
            writeln!(self.out, "{line}")?;
        }
        self.out.flush()?;
        Ok(lines.len())
    }

    /// Lines written so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// The writer underneath.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}
