//! Finding and loading scenario files: discovery, loading every file, and printing every
//! diagnostic before deciding anything (a run never starts on a partly invalid input).

use std::io::Write;
use std::path::PathBuf;

use rayon::prelude::*;
use scenarios::LoadError;
use sim_core::Scenario;

use crate::exit::{Failure, OrExit, INVALID_INPUT, NOTHING_RAN};

/// One loaded scenario and the file it came from.
#[derive(Debug, Clone)]
pub struct LoadedScenario {
    pub path: PathBuf,
    /// The path as shown in reports (as given on the command line or discovered under it).
    pub display: String,
    pub scenario: Scenario,
}

/// Expand `paths` into scenario files. A path that does not exist is invalid input (2);
/// finding no file at all means nothing can run (4).
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Failure> {
    for p in paths {
        std::fs::metadata(p).or_exit(INVALID_INPUT, || format!("cannot read {}", p.display()))?;
    }
    let files = match scenarios::discover(paths) {
        Ok(files) => files,
        Err(LoadError::Invalid(diagnostics)) => {
            print_diagnostics(&diagnostics);
            return Err(Failure::msg(INVALID_INPUT, "cannot search the given paths"));
        }
        Err(e @ LoadError::Io { .. }) => return Err(Failure::new(INVALID_INPUT, e)),
    };
    if files.is_empty() {
        let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(Failure::msg(
            NOTHING_RAN,
            format!(
                "no scenario files (*.yaml, *.yml) found in {}",
                shown.join(", ")
            ),
        ));
    }
    Ok(files)
}

/// Load every file (in parallel on the current rayon pool, results in input order).
pub fn load_all(files: &[PathBuf]) -> Vec<(PathBuf, Result<Scenario, LoadError>)> {
    files
        .par_iter()
        .map(|f| (f.clone(), scenarios::load_file(f)))
        .collect()
}

/// Split loaded results into scenarios and problems; print every problem to stderr.
/// Returns the scenarios and how many files were invalid.
pub fn report_problems(
    results: Vec<(PathBuf, Result<Scenario, LoadError>)>,
) -> (Vec<LoadedScenario>, usize) {
    let mut ok = Vec::with_capacity(results.len());
    let mut invalid = 0;
    for (path, result) in results {
        match result {
            Ok(scenario) => {
                let display = path.display().to_string();
                ok.push(LoadedScenario {
                    path,
                    display,
                    scenario,
                });
            }
            Err(LoadError::Invalid(diagnostics)) => {
                invalid += 1;
                if diagnostics.is_empty() {
                    // Never swallow a rejection, even one that came without a diagnostic.
                    print_stderr(&format!("{}: invalid scenario file", path.display()));
                }
                print_diagnostics(&diagnostics);
            }
            Err(e @ LoadError::Io { .. }) => {
                invalid += 1;
                print_stderr(&format!("error: {e}"));
            }
        }
    }
    (ok, invalid)
}

/// Discover and load; any invalid file is a failure with exit 2 after all are printed.
/// The one scenario `path` (given with `--scenario` or as SCENARIO) holds; exit 2 when none was
/// given, it is invalid, or it is a folder of several.
pub fn load_one(path: Option<&PathBuf>) -> Result<Scenario, Failure> {
    let path = path.ok_or_else(|| Failure::msg(INVALID_INPUT, "no scenario given"))?;
    let mut loaded = load_valid(std::slice::from_ref(path))?;
    if loaded.len() != 1 {
        return Err(Failure::msg(
            INVALID_INPUT,
            format!(
                "{} holds {} scenarios; give one file",
                path.display(),
                loaded.len()
            ),
        ));
    }
    Ok(loaded.remove(0).scenario)
}

pub fn load_valid(paths: &[PathBuf]) -> Result<Vec<LoadedScenario>, Failure> {
    let files = discover(paths)?;
    let total = files.len();
    let (ok, invalid) = report_problems(load_all(&files));
    if invalid > 0 {
        return Err(Failure::msg(
            INVALID_INPUT,
            format!(
                "{invalid} of {total} scenario {} invalid; nothing was run",
                if total == 1 { "file is" } else { "files are" }
            ),
        ));
    }
    Ok(ok)
}

pub fn print_diagnostics(diagnostics: &[scenarios::Diagnostic]) {
    for d in diagnostics {
        print_stderr(&d.to_string());
    }
}

fn print_stderr(line: &str) {
    let mut err = std::io::stderr().lock();
    // If stderr itself is gone there is nowhere left to complain.
    let _ = writeln!(err, "{line}");
}
