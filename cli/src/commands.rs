//! The small commands: `validate`, `list` and `schema`.

use std::io::Write;

use crate::args::{ListArgs, PathArgs};
use crate::exit::{
    CommandResult, Failure, OrExit, ENVIRONMENT, INVALID_INPUT, NOTHING_RAN, SUCCESS,
};
use crate::load::{self, LoadedScenario};

/// `gridloop validate`: `ok  <file>  <name>` per valid file on stdout, diagnostics on stderr.
pub fn validate(args: &PathArgs) -> CommandResult {
    let files = load::discover(&args.paths)?;
    let total = files.len();
    let results = load::load_all(&files);
    let mut out = std::io::stdout().lock();
    let mut invalid = 0;
    for (path, result) in results {
        match result {
            Ok(scenario) => writeln!(out, "ok  {}  {}", path.display(), scenario.name)
                .or_exit(ENVIRONMENT, || "cannot write to stdout".into())?,
            Err(e) => {
                invalid += load::report_problems(vec![(path, Err(e))]).1;
            }
        }
    }
    if invalid > 0 {
        return Err(Failure::msg(
            INVALID_INPUT,
            format!(
                "{invalid} of {total} scenario {} invalid",
                if total == 1 { "file is" } else { "files are" }
            ),
        ));
    }
    Ok(SUCCESS)
}

/// `gridloop list`: a table of name, tags, grid time, meters, groups and file.
pub fn list(args: &ListArgs) -> CommandResult {
    let loaded = load::load_valid(&args.paths.paths)?;
    let total = loaded.len();
    let shown: Vec<&LoadedScenario> = loaded
        .iter()
        .filter(|l| args.filter.accepts(&l.scenario.tags))
        .collect();
    if shown.is_empty() {
        return Err(Failure::msg(
            NOTHING_RAN,
            format!(
                "no scenario has any of the tags {} ({total} loaded)",
                args.filter.describe()
            ),
        ));
    }
    let mut out = std::io::stdout().lock();
    out.write_all(list_table(&shown).as_bytes())
        .or_exit(ENVIRONMENT, || "cannot write to stdout".into())?;
    Ok(SUCCESS)
}

/// The `list` table, columns aligned, no trailing spaces.
pub fn list_table(scenarios: &[&LoadedScenario]) -> String {
    let mut rows =
        vec![["NAME", "TAGS", "GRID TIME", "METERS", "GROUPS", "FILE"].map(String::from)];
    for l in scenarios {
        let s = &l.scenario;
        let meters: u64 = s.groups.iter().map(|g| u64::from(g.count)).sum();
        let groups: Vec<&str> = s.groups.iter().map(|g| g.name.as_str()).collect();
        rows.push([
            s.name.clone(),
            s.tags.join(","),
            reports::format_duration(s.duration),
            meters.to_string(),
            groups.join(","),
            l.display.clone(),
        ]);
    }
    let mut widths = [0_usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// `gridloop schema`: the JSON Schema of scenario files on stdout.
pub fn schema() -> CommandResult {
    let mut schema = scenarios::json_schema();
    if !schema.ends_with('\n') {
        schema.push('\n');
    }
    std::io::stdout()
        .lock()
        .write_all(schema.as_bytes())
        .or_exit(ENVIRONMENT, || "cannot write to stdout".into())?;
    Ok(SUCCESS)
}
