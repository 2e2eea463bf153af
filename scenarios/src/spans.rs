//! A span index of a YAML document: field path (`events[2].sag.residual`) → where its key and
//! value start, built from yaml-rust2's marked event stream. Validation looks locations up here,
//! and the same walk finds duplicate keys, which serde would silently collapse in maps.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, column: 1 };

    fn of(m: Marker) -> Pos {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Pos {
            line: m.line().max(1),
            column: m.col() + 1,
        }
    }
}

/// Where one node sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The key that names the node (mapping entries only).
    pub key: Option<Pos>,
    /// The start of the node's value.
    pub value: Pos,
}

/// A key that occurs twice in one mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    pub path: String,
    pub key: String,
    pub first: Pos,
    pub second: Pos,
}

/// A YAML syntax error found while indexing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Paths to spans for one document.
#[derive(Debug, Default)]
pub struct SpanIndex {
    spans: HashMap<String, Span>,
    pub duplicates: Vec<DuplicateKey>,
}

impl SpanIndex {
    /// Index `src`; a syntax error stops the walk.
    pub fn build(src: &str) -> Result<SpanIndex, SyntaxError> {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(src);
        parser.load(&mut walker, true).map_err(|e| SyntaxError {
            pos: Pos::of(*e.marker()),
            message: e.info().to_string(),
        })?;
        Ok(walker.index)
    }

    pub fn get(&self, path: &str) -> Option<Span> {
        self.spans.get(path).copied()
    }

    /// The value position of `path`, or of its nearest ancestor that exists in the file
    /// (a defaulted field points at the mapping that would hold it).
    pub fn locate(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(s) = self.spans.get(p) {
                return s.value;
            }
            match parent(p) {
                Some(up) => p = up,
                None => return Pos::START,
            }
        }
    }

    /// The key position of `path` when it has one, else its value position.
    pub fn locate_key(&self, path: &str) -> Pos {
        match self.spans.get(path) {
            Some(Span { key: Some(k), .. }) => *k,
            _ => self.locate(path),
        }
    }
}

/// `a.b[2].c` → `a.b[2]` → `a.b` → `a` → `` → None.
pub fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

/// Join a mapping key onto a path.
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

#[derive(Debug)]
enum Frame {
    Map {
        path: String,
        /// The key just read, waiting for its value.
        pending: Option<(String, Pos)>,
        seen: HashMap<String, Pos>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Debug, Default)]
struct Walker {
    stack: Vec<Frame>,
    index: SpanIndex,
}

enum Slot {
    Key,
    Value { path: String, key: Option<Pos> },
}

impl Walker {
    /// Decide what the next node is: a mapping key, or a value at some path.
    fn slot(&mut self) -> Slot {
        match self.stack.last_mut() {
            None => Slot::Value {
                path: String::new(),
                key: None,
            },
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Slot::Value { path: p, key: None }
            }
            Some(Frame::Map { pending: None, .. }) => Slot::Key,
            Some(Frame::Map {
                path,
                pending: pending @ Some(_),
                ..
            }) => {
                let (key, pos) = pending.take().unwrap_or((String::new(), Pos::START));
                Slot::Value {
                    path: join(path, &key),
                    key: Some(pos),
                }
            }
        }
    }

    fn record_key(&mut self, key: String, pos: Pos) {
        if let Some(Frame::Map {
            path,
            pending,
            seen,
        }) = self.stack.last_mut()
        {
            if let Some(first) = seen.get(&key) {
                self.index.duplicates.push(DuplicateKey {
                    path: join(path, &key),
                    key: key.clone(),
                    first: *first,
                    second: pos,
                });
            } else {
                seen.insert(key.clone(), pos);
            }
            *pending = Some((key, pos));
        }
    }

    fn record_value(&mut self, path: &str, key: Option<Pos>, value: Pos) {
        // With duplicates the first occurrence keeps the span (serde reports the rest).
        self.index
            .spans
            .entry(path.to_string())
            .or_insert(Span { key, value });
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::of(mark);
        match ev {
            Event::Scalar(text, ..) => match self.slot() {
                Slot::Key => self.record_key(text, pos),
                Slot::Value { path, key } => self.record_value(&path, key, pos),
            },
            Event::Alias(_) => match self.slot() {
                Slot::Key => self.record_key("*alias".into(), pos),
                Slot::Value { path, key } => self.record_value(&path, key, pos),
            },
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let path = match self.slot() {
                    // A complex (non-scalar) key: give its contents a path nobody asks for.
                    Slot::Key => {
                        self.record_key("?".into(), pos);
                        "?complex-key".to_string()
                    }
                    Slot::Value { path, key } => {
                        self.record_value(&path, key, pos);
                        path
                    }
                };
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map {
                        path,
                        pending: None,
                        seen: HashMap::new(),
                    }
                } else {
                    Frame::Seq { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::DocumentStart => self.stack.clear(),
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DOC: &str = "schema: 1\nname: x\nevents:\n  - { at: 1s, sag: { residual: 0.7 } }\n  - at: 2s\n    swell:\n      magnitude: 1.2\n";

    #[test]
    fn paths_point_at_their_values() {
        let ix = SpanIndex::build(DOC).unwrap();
        assert_eq!(ix.get("schema").unwrap().value, Pos { line: 1, column: 9 });
        assert_eq!(
            ix.get("schema").unwrap().key,
            Some(Pos { line: 1, column: 1 })
        );
        assert_eq!(ix.get("events[0].sag.residual").unwrap().value.line, 4);
        let r = ix.get("events[0].sag.residual").unwrap().value;
        assert_eq!(
            &DOC.lines().nth(3).unwrap()[r.column - 1..r.column + 2],
            "0.7"
        );
        assert_eq!(
            ix.get("events[1].swell.magnitude").unwrap().value,
            Pos {
                line: 7,
                column: 18
            }
        );
        assert_eq!(ix.get("events[1].at").unwrap().value.line, 5);
    }

    #[test]
    fn missing_paths_fall_back_to_the_nearest_ancestor() {
        let ix = SpanIndex::build(DOC).unwrap();
        assert_eq!(
            ix.locate("events[1].swell.ramp"),
            ix.get("events[1].swell").unwrap().value
        );
        assert_eq!(ix.locate("nothing.here"), Pos::START.max(ix.locate("")));
        assert_eq!(parent("a.b[2].c"), Some("a.b[2]"));
        assert_eq!(parent("a.b[2]"), Some("a.b"));
        assert_eq!(parent("a"), Some(""));
        assert_eq!(parent(""), None);
    }

    #[test]
    fn duplicate_keys_are_found_with_both_positions() {
        let ix = SpanIndex::build("a: 1\nb:\n  c: 1\n  c: 2\n").unwrap();
        assert_eq!(ix.duplicates.len(), 1);
        let d = &ix.duplicates[0];
        assert_eq!(
            (d.path.as_str(), d.first.line, d.second.line),
            ("b.c", 3, 4)
        );
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let e = SpanIndex::build("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.pos.line >= 1 && e.pos.column >= 1, "{e:?}");
    }
}
