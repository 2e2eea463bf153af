//! `gridloop run --report DIR`: the report directory with `summary.md` (Markdown for a CI job
//! summary or a pull-request comment), `results.json`, `junit.xml`, the self-contained
//! `index.html`, and `plots/` with each scenario's plots, each as SVG and PNG (per group: the RMS trend, the
//! alarm-latency CDF when trip alarms were raised, THD over time when it is not 0 and the
//! waveform around each of the first disturbance onsets; per fleet, trips over time). Plots an
//! earlier run left there and this one did not draw are removed.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use reports::{HtmlReporter, JsonReporter, JunitReporter, MarkdownReporter, Reporter, RunSummary};

use crate::exit::{Failure, OrExit, ENVIRONMENT};
use crate::staged::StagedFile;

/// File name of the Markdown summary inside the report directory.
pub const SUMMARY_MD: &str = "summary.md";
/// File name of the JSON results document inside the report directory.
pub const RESULTS_JSON: &str = "results.json";
/// File name of the JUnit XML inside the report directory.
pub const JUNIT_XML: &str = "junit.xml";
/// File name of the HTML report inside the report directory.
pub const INDEX_HTML: &str = "index.html";
/// Folder of the SVG and PNG plots inside the report directory.
pub const PLOTS_DIR: &str = reports::html::PLOTS_DIR;

/// Extensions of the plot files in [`PLOTS_DIR`] (the ones a stale-plot prune removes).
pub const PLOT_EXTENSIONS: [&str; 2] = ["svg", "png"];

/// A reporter and the path it writes, for error messages.
pub type FileReporter = (String, Box<dyn Reporter>);

/// Reporters writing staged files: the files replace the real paths only when every
/// [`StagedFile`] is committed after the run; dropped, they leave the old files as they were.
#[derive(Default)]
pub struct StagedReporters {
    pub reporters: Vec<FileReporter>,
    pub files: Vec<StagedFile>,
    /// A plots folder whose `*.svg` and `*.png` files that this run did not write are removed on commit
    /// (plots of scenarios or groups an earlier run had), so the folder matches the report.
    pub prune_plots: Option<PathBuf>,
}

impl std::fmt::Debug for StagedReporters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let paths: Vec<&str> = self.reporters.iter().map(|(p, _)| p.as_str()).collect();
        f.debug_struct("StagedReporters")
            .field("reporters", &paths)
            .field("files", &self.files)
            .field("prune_plots", &self.prune_plots)
            .finish()
    }
}

impl StagedReporters {
    /// Stage `path` (see [`StagedFile::create`]) and add the reporter `make` builds on it; a
    /// path that cannot be staged is exit 3 naming it.
    pub fn add<R: Reporter + 'static>(
        &mut self,
        path: &Path,
        what: &str,
        make: impl FnOnce(BufWriter<File>) -> R,
    ) -> Result<(), Failure> {
        let (staged, file) = StagedFile::create(path).or_exit(ENVIRONMENT, || {
            format!("cannot create the {what} file {}", path.display())
        })?;
        self.reporters.push((
            path.display().to_string(),
            Box::new(make(BufWriter::new(file))),
        ));
        self.files.push(staged);
        Ok(())
    }

    /// Drop the reporters (each has flushed its writer at `RunFinished`), rename every file
    /// into place, then remove stale plots (see [`StagedReporters::prune_plots`]); exit 3
    /// naming the first file that cannot be written or removed.
    pub fn commit(self) -> Result<(), Failure> {
        drop(self.reporters);
        let mut written = HashSet::new();
        for staged in self.files {
            let dest = staged.dest().to_path_buf();
            staged
                .commit()
                .or_exit(ENVIRONMENT, || format!("cannot write {}", dest.display()))?;
            written.insert(dest);
        }
        if let Some(folder) = &self.prune_plots {
            remove_stale_plots(folder, &written)?;
        }
        Ok(())
    }
}

/// Remove the `*.svg` and `*.png` files directly in `folder` that are not in `keep` (other
/// files and folders are the user's and stay). A missing folder has nothing to remove.
fn remove_stale_plots(folder: &Path, keep: &HashSet<PathBuf>) -> Result<(), Failure> {
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(e).or_exit(ENVIRONMENT, || format!("cannot list {}", folder.display()))
        }
    };
    for entry in entries {
        let path = entry
            .or_exit(ENVIRONMENT, || format!("cannot list {}", folder.display()))?
            .path();
        let is_plot = path
            .extension()
            .is_some_and(|e| PLOT_EXTENSIONS.iter().any(|x| e == *x))
            && path.is_file();
        if is_plot && !keep.contains(&path) {
            std::fs::remove_file(&path).or_exit(ENVIRONMENT, || {
                format!("cannot remove the stale plot {}", path.display())
            })?;
        }
    }
    Ok(())
}

/// Create `dir` (and its parents) and stage its report files, before anything runs:
/// any failure is exit 3 naming the directory or file.
pub fn open(dir: &Path, into: &mut StagedReporters) -> Result<(), Failure> {
    std::fs::create_dir_all(dir).or_exit(ENVIRONMENT, || {
        format!("cannot create the report directory {}", dir.display())
    })?;
    into.add(
        &dir.join(SUMMARY_MD),
        "Markdown summary",
        MarkdownReporter::new,
    )?;
    into.add(&dir.join(RESULTS_JSON), "JSON", JsonReporter::new)?;
    into.add(&dir.join(JUNIT_XML), "JUnit", JunitReporter::new)?;
    into.add(&dir.join(INDEX_HTML), "HTML", HtmlReporter::new)?;
    into.prune_plots = Some(dir.join(PLOTS_DIR));
    Ok(())
}

/// Stage every scenario's plots as `DIR/plots/<name>.svg` and `DIR/plots/<name>.png` (renamed into place with the other
/// files by [`StagedReporters::commit`]); exit 3 naming the folder or file that cannot be
/// written.
pub fn stage_plots(
    dir: &Path,
    summary: &RunSummary,
    into: &mut StagedReporters,
) -> Result<(), Failure> {
    let plots = reports::html::run_plots_with_png(summary)
        .or_exit(ENVIRONMENT, || "cannot draw the plots".to_owned())?;
    if plots.iter().all(Vec::is_empty) {
        return Ok(());
    }
    let folder = dir.join(PLOTS_DIR);
    std::fs::create_dir_all(&folder).or_exit(ENVIRONMENT, || {
        format!("cannot create the plots folder {}", folder.display())
    })?;
    for plot in plots.iter().flatten() {
        stage_file(&folder.join(&plot.name), plot.svg.as_bytes(), into)?;
        if let Some(png) = &plot.png {
            stage_file(&folder.join(plot.png_name()), png, into)?;
        }
    }
    Ok(())
}

/// Stage `bytes` as `path` (renamed into place by [`StagedReporters::commit`]).
fn stage_file(path: &Path, bytes: &[u8], into: &mut StagedReporters) -> Result<(), Failure> {
    let what = || format!("cannot write the plot {}", path.display());
    let (staged, file) = StagedFile::create(path).or_exit(ENVIRONMENT, what)?;
    into.files.push(staged);
    let mut out = BufWriter::new(file);
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .or_exit(ENVIRONMENT, what)
}

/// This process's command line as a shell would take it back: `gridloop` and every argument,
/// quoted where needed. Reports show it as the command that reproduces the run.
pub fn command_line() -> String {
    quoted_command(
        std::env::args_os()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned()),
    )
}

/// `gridloop` followed by `args`, each shell-quoted.
pub fn quoted_command(args: impl IntoIterator<Item = String>) -> String {
    let mut words = vec!["gridloop".to_owned()];
    words.extend(args.into_iter().map(|a| reports::shell_quote(&a)));
    words.join(" ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_quoted_for_a_shell() {
        let args = [
            "run",
            "my scenarios/a.yaml",
            "--seed",
            "7",
            "--report",
            "out",
        ];
        assert_eq!(
            quoted_command(args.map(String::from)),
            "gridloop run 'my scenarios/a.yaml' --seed 7 --report out"
        );
        assert_eq!(quoted_command(Vec::new()), "gridloop");
    }
}
