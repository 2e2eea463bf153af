//! The durable alarm store: an append-only JSON Lines file, one alarm per line, synced to disk
//! (`fdatasync`) before the head-end acknowledges the MQTT messages that raised them.
//!
//! Why this and not a database: the head-end is its only writer, alarms are only ever
//! appended, and a restart needs them all back once (to know which (meter, seq) it already
//! handled). An append-only file gives that with one `write` + one sync per batch, no
//! dependency, and a file a person can `grep` or `jq`. A crash can tear only the last line;
//! opening the store drops a torn last line (it was never acknowledged, so the broker
//! redelivers its message) and refuses any other bad line with file:line.
//!
//! Beside it, `<file>.published` holds how many of its alarms the broker has acknowledged on
//! the alarm topic (replaced by rename; a lag only means a re-publish). A restarted head-end
//! publishes the rest again — at least once, never lost between the store and the topic. A
//! store without that file (older than it) counts as all published.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::alarm::AlarmRecord;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {why}")]
    Io { path: PathBuf, why: std::io::Error },
    #[error("{path}:{line}: not an alarm record: {why}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        why: String,
    },
}

/// An open alarm store.
#[derive(Debug)]
pub struct AlarmStore {
    path: PathBuf,
    file: File,
    written: u64,
    buf: Vec<u8>,
    /// Alarms in the file (read back plus appended).
    total: u64,
    /// Of those, acknowledged on the alarm topic (the sidecar's count).
    published: u64,
    /// The alarms after `published` read back at open, to publish again.
    unpublished: Vec<AlarmRecord>,
}

/// `<store>.published`.
fn sidecar(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".published");
    PathBuf::from(name)
}

impl AlarmStore {
    /// Open (or create) the store at `path` and read back every alarm in it.
    pub fn open(path: &Path) -> Result<(AlarmStore, Vec<AlarmRecord>), StoreError> {
        let io = |why| StoreError::Io {
            path: path.to_owned(),
            why,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        let mut records = Vec::new();
        let mut good_len = 0u64;
        let mut torn = None;
        {
            let mut reader = BufReader::new(&mut file);
            let mut line = Vec::new();
            let mut n = 0usize;
            loop {
                line.clear();
                let read = reader.read_until(b'\n', &mut line).map_err(io)?;
                if read == 0 {
                    break;
                }
                n += 1;
                let complete = line.last() == Some(&b'\n');
                let text = String::from_utf8_lossy(&line);
                let text = text.trim();
                if text.is_empty() {
                    good_len += read as u64;
                    continue;
                }
                match serde_json::from_str::<AlarmRecord>(text) {
                    Ok(r) if complete => {
                        records.push(r);
                        good_len += read as u64;
                    }
                    // The last line without its newline: a write torn by a crash.
                    Ok(_) => {
                        torn = Some(n);
                        break;
                    }
                    Err(e) => {
                        let at_end = !complete || reader.fill_buf().map_err(io)?.is_empty();
                        if at_end {
                            torn = Some(n);
                            break;
                        }
                        return Err(StoreError::Corrupt {
                            path: path.to_owned(),
                            line: n,
                            why: e.to_string(),
                        });
                    }
                }
            }
        }
        if let Some(line) = torn {
            tracing::warn!(
                path = %path.display(),
                line,
                "alarm store: dropping a torn last line (never acknowledged; the broker redelivers it)"
            );
            file.set_len(good_len).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        let side = sidecar(path);
        let total = records.len() as u64;
        let published = match std::fs::read_to_string(&side) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|e| StoreError::Corrupt {
                    path: side.clone(),
                    line: 1,
                    why: format!("not a count of published alarms: {e}"),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => total,
            Err(why) => return Err(StoreError::Io { path: side, why }),
        }
        .min(total);
        let mut store = AlarmStore {
            path: path.to_owned(),
            file,
            written: 0,
            buf: Vec::new(),
            total,
            published,
            unpublished: records[published as usize..].to_vec(),
        };
        // A new store gets its sidecar at once: from now on its absence means "older store".
        store.write_published(published)?;
        Ok((store, records))
    }

    /// How many alarms the broker has acknowledged on the alarm topic.
    pub fn published(&self) -> u64 {
        self.published
    }

    /// The alarms read back at open that were never acknowledged on the alarm topic (a crash
    /// between the store sync and the publish), oldest first; taken once.
    pub fn take_unpublished(&mut self) -> Vec<AlarmRecord> {
        std::mem::take(&mut self.unpublished)
    }

    /// The first `n` alarms of the store are acknowledged on the alarm topic (clamped to what
    /// the store holds; never goes back).
    pub fn mark_published(&mut self, n: u64) -> Result<(), StoreError> {
        let n = n.min(self.total);
        if n > self.published {
            self.write_published(n)?;
        }
        Ok(())
    }

    fn write_published(&mut self, n: u64) -> Result<(), StoreError> {
        let side = sidecar(&self.path);
        let mut tmp = side.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, format!("{n}\n"))
            .and_then(|()| std::fs::rename(&tmp, &side))
            .map_err(|why| StoreError::Io { path: side, why })?;
        self.published = n;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append `records` and sync them to disk; when this returns Ok they survive a crash.
    pub fn append(&mut self, records: &[AlarmRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let io = |why| StoreError::Io {
            path: self.path.clone(),
            why,
        };
        self.buf.clear();
        for r in records {
            serde_json::to_writer(&mut self.buf, r).map_err(|e| io(std::io::Error::other(e)))?;
            self.buf.push(b'\n');
        }
        self.file.write_all(&self.buf).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.written += records.len() as u64;
        self.total += records.len() as u64;
        Ok(())
    }

    /// Alarms appended through this handle.
    pub fn written(&self) -> u64 {
        self.written
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::alarm::Kind;

    fn rec(meter: u32, seq: u64) -> AlarmRecord {
        AlarmRecord {
            kind: Kind::Trip,
            code: Some("UV_TRIP_0x01".into()),
            meter,
            name: format!("m{meter}"),
            substation: "s".into(),
            group: "g".into(),
            seq: Some(seq),
            phase: Some("L1".into()),
            value: Some(180.0),
            limit: Some(210.0),
            dropped: None,
            overflow: None,
            source_ms: Some(1000),
            receive_ms: 1010,
            latency_ms: Some(10),
            detail: None,
            instance: "he".into(),
        }
    }

    #[test]
    fn survives_reopen_and_drops_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alarms.jsonl");
        let (mut s, old) = AlarmStore::open(&path).unwrap();
        assert!(old.is_empty());
        s.append(&[rec(1, 3), rec(2, 4)]).unwrap();
        drop(s);
        // A crash mid-write: half a line at the end.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"kind":"TRIP","meter":3,"#).unwrap();
        drop(f);
        let (mut s, back) = AlarmStore::open(&path).unwrap();
        assert_eq!(back, vec![rec(1, 3), rec(2, 4)]);
        s.append(&[rec(5, 6)]).unwrap();
        drop(s);
        let (_, back) = AlarmStore::open(&path).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[2], rec(5, 6));
    }

    #[test]
    fn unpublished_alarms_come_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alarms.jsonl");
        let (mut s, _) = AlarmStore::open(&path).unwrap();
        assert_eq!(s.published(), 0);
        s.append(&[rec(1, 1), rec(2, 2), rec(3, 3)]).unwrap();
        s.mark_published(1).unwrap();
        drop(s); // a crash: alarms 2 and 3 stored, never acknowledged on the topic
        let (mut s, all) = AlarmStore::open(&path).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(s.published(), 1);
        assert_eq!(s.take_unpublished(), vec![rec(2, 2), rec(3, 3)]);
        assert!(s.take_unpublished().is_empty());
        s.mark_published(99).unwrap();
        assert_eq!(s.published(), 3, "clamped to the store");
        s.mark_published(2).unwrap();
        assert_eq!(s.published(), 3, "never goes back");
        // An older store without the count: everything counts as published.
        std::fs::remove_file(dir.path().join("alarms.jsonl.published")).unwrap();
        let (mut s, _) = AlarmStore::open(&path).unwrap();
        assert!(s.take_unpublished().is_empty());
        // A garbled count names the file.
        std::fs::write(dir.path().join("alarms.jsonl.published"), "x").unwrap();
        let e = AlarmStore::open(&path).unwrap_err().to_string();
        assert!(e.contains("alarms.jsonl.published:1"), "{e}");
    }

    #[test]
    fn a_bad_line_in_the_middle_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alarms.jsonl");
        let good = serde_json::to_string(&rec(1, 1)).unwrap();
        std::fs::write(&path, format!("{good}\nnot json\n{good}\n")).unwrap();
        let e = AlarmStore::open(&path).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("alarms.jsonl:2:"), "{text}");
    }
}
