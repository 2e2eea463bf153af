//! `gridloop run --report DIR`: the report directory with `summary.md` (Markdown for a CI job
//! summary or a pull-request comment), `results.json` and `junit.xml`.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use reports::{JsonReporter, JunitReporter, MarkdownReporter, Reporter};

use crate::exit::{Failure, OrExit, ENVIRONMENT};

/// File name of the Markdown summary inside the report directory.
pub const SUMMARY_MD: &str = "summary.md";
/// File name of the JSON results document inside the report directory.
pub const RESULTS_JSON: &str = "results.json";
/// File name of the JUnit XML inside the report directory.
pub const JUNIT_XML: &str = "junit.xml";

/// A reporter and the path it writes, for error messages.
pub type FileReporter = (String, Box<dyn Reporter>);

/// Create `dir` (and its parents) and open its three report files, before anything runs:
/// any failure is exit 3 naming the directory or file.
pub fn open(dir: &Path) -> Result<Vec<FileReporter>, Failure> {
    std::fs::create_dir_all(dir).or_exit(ENVIRONMENT, || {
        format!("cannot create the report directory {}", dir.display())
    })?;
    let create = |name: &str, what: &str| {
        let path = dir.join(name);
        File::create(&path)
            .map(|f| (path.display().to_string(), BufWriter::new(f)))
            .or_exit(ENVIRONMENT, || {
                format!("cannot create the {what} file {}", path.display())
            })
    };
    let (md_path, md) = create(SUMMARY_MD, "Markdown summary")?;
    let (json_path, json) = create(RESULTS_JSON, "JSON")?;
    let (junit_path, junit) = create(JUNIT_XML, "JUnit")?;
    Ok(vec![
        (md_path, Box::new(MarkdownReporter::new(md))),
        (json_path, Box::new(JsonReporter::new(json))),
        (junit_path, Box::new(JunitReporter::new(junit))),
    ])
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
