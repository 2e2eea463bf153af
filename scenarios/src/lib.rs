//! Scenario files: the v1 YAML format, validation with file:line:column diagnostics, lowering
//! into `sim_core::Scenario`, and the JSON Schema for editors.
//!
//! Modules: `dto` (the format's shape), `duration` (values with units), `spans` (path → line
//! and column), `parse` (the pipeline), `validate` (ranges, references, lowering), `schema`.

use std::path::{Path, PathBuf};

pub mod dto;
pub mod duration;
mod parse;
mod schema;
pub mod spans;
mod validate;

pub use parse::SCHEMA_VERSION;
pub use validate::drift_temperature;

/// One problem in a scenario file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Field path, e.g. `events[2].sag.residual` (empty for syntax errors at top level).
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Why scenarios could not be loaded: one or more diagnostics, or an I/O problem.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Load and validate one scenario file.
pub fn load_file(path: &Path) -> Result<sim_core::Scenario, LoadError> {
    let src = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    load_str(&src, path)
}

/// Parse and validate scenario text; `file` names it in diagnostics.
pub fn load_str(src: &str, file: &Path) -> Result<sim_core::Scenario, LoadError> {
    parse::load(src, file).map_err(LoadError::Invalid)
}

/// Expand files and folders (recursively, `*.yaml`/`*.yml`, sorted) into scenario files.
///
/// Files named explicitly are kept whatever their extension; each folder's findings are
/// sorted by path; the arguments keep their order. Symlinked folders are not followed.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut out = Vec::new();
    for p in paths {
        let io = |source| LoadError::Io {
            path: p.clone(),
            source,
        };
        let meta = std::fs::metadata(p).map_err(io)?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found)?;
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let io = |source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io)?;
        if kind.is_dir() {
            walk(&path, out)?;
        } else if path.is_file() && path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}

/// JSON Schema of the scenario format (pretty-printed).
pub fn json_schema() -> String {
    schema::json_schema()
}
