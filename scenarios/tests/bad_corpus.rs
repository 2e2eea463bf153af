//! Every file in `tests/bad-scenarios/` (repo root) is rejected with a diagnostic at the
//! declared field and line: the first line reads `# expect: <path fragment> @ <line>`.

use std::path::{Path, PathBuf};

use scenarios::{discover, load_file, LoadError};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/bad-scenarios")
}

fn declared(src: &str, file: &Path) -> (String, usize) {
    let first = src.lines().next().unwrap_or_default();
    let spec = first.strip_prefix("# expect:").unwrap_or_else(|| {
        panic!(
            "{}: first line must be `# expect: <path> @ <line>`",
            file.display()
        )
    });
    let (frag, line) = spec.rsplit_once('@').unwrap();
    (frag.trim().to_string(), line.trim().parse().unwrap())
}

#[test]
fn every_bad_scenario_is_rejected_where_declared() {
    let files = discover(&[corpus()]).unwrap();
    assert!(files.len() >= 30, "only {} bad scenarios", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let src = std::fs::read_to_string(file).unwrap();
        let (fragment, line) = declared(&src, file);
        match load_file(file) {
            Ok(_) => failures.push(format!("{}: loaded without error", file.display())),
            Err(LoadError::Io { .. }) => failures.push(format!("{}: I/O error", file.display())),
            Err(LoadError::Invalid(diags)) => {
                for d in &diags {
                    assert!(d.line >= 1 && d.column >= 1, "{d}");
                    assert_eq!(d.file, *file);
                }
                let hit = diags
                    .iter()
                    .any(|d| d.path.contains(&fragment) && d.line == line);
                if !hit {
                    let got: Vec<String> = diags.iter().map(ToString::to_string).collect();
                    failures.push(format!(
                        "{}: wanted `{fragment}` @ {line}, got:\n  {}",
                        file.display(),
                        got.join("\n  ")
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `cargo test -p scenarios --test main -- --ignored --nocapture show_corpus` prints every
/// diagnostic of the corpus, for reviewing the messages.
#[test]
#[ignore]
fn show_corpus() {
    for file in discover(&[corpus()]).unwrap() {
        if let Err(e) = load_file(&file) {
            eprintln!("{e}");
        }
    }
}

/// Every file of the shipped library loads cleanly.
#[test]
fn the_library_loads_without_diagnostics() {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("library");
    let bad: Vec<String> = discover(&[lib])
        .unwrap()
        .iter()
        .filter_map(|f| load_file(f).err().map(|e| e.to_string()))
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Load every file under `$GRIDLOOP_CHECK_DIR` and print diagnostics (review aid).
#[test]
#[ignore]
fn check_dir() {
    let Ok(dir) = std::env::var("GRIDLOOP_CHECK_DIR") else {
        return;
    };
    for file in discover(&[PathBuf::from(dir)]).unwrap() {
        match load_file(&file) {
            Ok(_) => eprintln!("ok {}", file.display()),
            Err(e) => eprintln!("{e}"),
        }
    }
}
