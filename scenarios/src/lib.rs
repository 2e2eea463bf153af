//! Scenario files: the v1 YAML format, validation with file:line:column diagnostics, lowering
//! into `sim_core::Scenario`, and the JSON Schema for editors.

use std::path::{Path, PathBuf};

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
    Io { path: PathBuf, source: std::io::Error },
}

/// Load and validate one scenario file.
pub fn load_file(_path: &Path) -> Result<sim_core::Scenario, LoadError> {
    unimplemented!("scenarios::load_file")
}

/// Parse and validate scenario text; `file` names it in diagnostics.
pub fn load_str(_src: &str, _file: &Path) -> Result<sim_core::Scenario, LoadError> {
    unimplemented!("scenarios::load_str")
}

/// Expand files and folders (recursively, `*.yaml`/`*.yml`, sorted) into scenario files.
pub fn discover(_paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    unimplemented!("scenarios::discover")
}

/// JSON Schema of the scenario format (pretty-printed).
pub fn json_schema() -> String {
    unimplemented!("scenarios::json_schema")
}
