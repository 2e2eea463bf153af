//! The loading pipeline for one file's text: span index (syntax errors, duplicate keys),
//! version check, serde into the DTOs (shape errors), then validation and lowering.

use std::path::Path;

use serde::Deserialize;

use crate::dto::ScenarioDto;
use crate::spans::{join, Pos, SpanIndex};
use crate::{validate, Diagnostic};

/// The only format version this crate reads.
pub const SCHEMA_VERSION: u64 = 1;

/// Parse, validate and lower `src`.
pub fn load(src: &str, file: &Path) -> Result<sim_core::Scenario, Vec<Diagnostic>> {
    let diag = |pos: Pos, path: &str, message: String| Diagnostic {
        file: file.to_path_buf(),
        line: pos.line,
        column: pos.column,
        path: path.to_string(),
        message,
    };
    let spans = SpanIndex::build(src)
        .map_err(|e| vec![diag(e.pos, "", format!("YAML syntax error: {}", e.message))])?;
    if !spans.duplicates.is_empty() {
        return Err(spans
            .duplicates
            .iter()
            .map(|d| {
                diag(
                    d.second,
                    &d.path,
                    format!(
                        "duplicate key `{}` (first given on line {})",
                        d.key, d.first.line
                    ),
                )
            })
            .collect());
    }
    check_version(src).map_err(|m| vec![diag(spans.locate("schema"), "schema", m)])?;
    let dto: ScenarioDto =
        serde_yaml::from_str(src).map_err(|e| vec![serde_diagnostic(&e, &spans, file)])?;
    validate::lower(&dto, &spans, file)
}

/// A file of another version gets one clear message rather than a pile of unknown keys.
fn check_version(src: &str) -> Result<(), String> {
    #[derive(Deserialize)]
    struct Probe {
        schema: Option<serde_yaml::Value>,
    }
    let Ok(Probe { schema: Some(v) }) = serde_yaml::from_str::<Probe>(src) else {
        return Ok(());
    };
    match v.as_u64() {
        Some(SCHEMA_VERSION) | None => Ok(()),
        Some(n) => Err(format!(
            "unsupported schema version {n}; this gridloop reads schema {SCHEMA_VERSION}"
        )),
    }
}

/// Turn a serde_yaml error into a diagnostic. Its text is `path: message at line L column C`
/// (the path is left out at the top level); the location comes from `location()`.
pub fn serde_diagnostic(e: &serde_yaml::Error, spans: &SpanIndex, file: &Path) -> Diagnostic {
    let mut text = e.to_string();
    if let Some(i) = text.rfind(" at line ") {
        let tail = &text[i + " at line ".len()..];
        let looks_like_mark = tail
            .split_once(" column ")
            .is_some_and(|(l, c)| l.parse::<usize>().is_ok() && c.parse::<usize>().is_ok());
        if looks_like_mark {
            text.truncate(i);
        }
    }
    let (mut path, mut message) = split_path(&text);
    // Name the offending field itself, not only the mapping that holds it.
    for prefix in ["unknown field `", "missing field `", "duplicate field `"] {
        if let Some(rest) = message.strip_prefix(prefix) {
            if let Some(field) = rest.split('`').next() {
                path = join(&path, field);
            }
        }
    }
    if message.starts_with("unknown field") {
        message = message.replacen("expected one of", "allowed keys are", 1);
        message = message.replacen(", expected ", ", the only allowed key is ", 1);
    }
    // serde names Rust types; say what the user should write instead.
    for (rust, plain) in [
        ("expected f64", "expected a number"),
        ("expected u32", "expected a whole number ≥ 0"),
        ("expected u64", "expected a whole number ≥ 0"),
        ("expected a string", "expected text"),
    ] {
        if message.ends_with(rust) {
            message.truncate(message.len() - rust.len());
            message.push_str(plain);
        }
    }
    let pos = match e.location() {
        Some(l) => Pos {
            line: l.line().max(1),
            column: l.column().max(1),
        },
        None => spans.locate(&path),
    };
    Diagnostic {
        file: file.to_path_buf(),
        line: pos.line,
        column: pos.column,
        path,
        message,
    }
}

/// Split `events[2].sag: unknown field ...` into path and message. A prefix only counts as a
/// path when it looks like one (serde's own messages such as `invalid type: …` have spaces).
fn split_path(text: &str) -> (String, String) {
    if let Some((head, tail)) = text.split_once(": ") {
        let is_path = !head.is_empty()
            && head
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '[' | ']' | '?'));
        if is_path {
            return (head.to_string(), tail.to_string());
        }
    }
    (String::new(), text.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn path_prefixes_are_split_off_only_when_they_look_like_paths() {
        assert_eq!(
            split_path("events[2].sag: unknown field `x`"),
            ("events[2].sag".into(), "unknown field `x`".into())
        );
        assert_eq!(
            split_path("invalid type: string \"a\", expected f64"),
            (
                String::new(),
                "invalid type: string \"a\", expected f64".into()
            )
        );
    }
}
