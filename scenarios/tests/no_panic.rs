//! Robustness: mutated and random YAML never panics, and every diagnostic has a position.

use std::path::Path;

use proptest::prelude::*;
use scenarios::{load_str, LoadError};

use crate::design_sketch::SKETCH;

fn check(src: &str) {
    match load_str(src, Path::new("fuzz.yaml")) {
        Ok(_) => {}
        Err(LoadError::Invalid(diags)) => {
            assert!(!diags.is_empty());
            let lines = src.lines().count().max(1) + 1;
            for d in diags {
                assert!(d.line >= 1 && d.column >= 1, "{d}");
                assert!(
                    d.line <= lines,
                    "{d} is beyond the {lines} lines of:\n{src}"
                );
            }
        }
        Err(e) => panic!("load_str must not do I/O: {e}"),
    }
}

const PIECES: &[&str] = &[
    ":",
    " ",
    "\n",
    "-",
    "{",
    "}",
    "[",
    "]",
    ",",
    "#",
    "'",
    "\"",
    "&a",
    "*a",
    "!!str",
    "<<",
    "0",
    "-1",
    "1e999",
    ".nan",
    "~",
    "null",
    "true",
    "10cycles",
    "L4",
    "µ",
    "\t",
    "? ",
    "feeder-a",
    "sag:",
    "at:",
    "residual:",
    "|",
    ">",
    "%",
    "...",
    "---",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn mutated_sketches_never_panic(
        edits in prop::collection::vec((0usize..2000, 0usize..12, 0usize..PIECES.len()), 1..6)
    ) {
        let mut src = SKETCH.to_string();
        for (pos, del, piece) in edits {
            let at = pos % (src.len() + 1);
            let at = (0..=at).rev().find(|i| src.is_char_boundary(*i)).unwrap_or(0);
            let end = (at..=src.len()).find(|i| *i >= at + del && src.is_char_boundary(*i)).unwrap_or(src.len());
            src.replace_range(at..end, PIECES[piece]);
        }
        check(&src);
    }

    #[test]
    fn random_text_never_panics(src in "[ -~\\n\\t]{0,300}") {
        check(&src);
    }

    #[test]
    fn line_shuffles_never_panic(order in prop::collection::vec(0usize..25, 0..40)) {
        let lines: Vec<&str> = SKETCH.lines().collect();
        let src: Vec<&str> = order.iter().map(|i| lines[i % lines.len()]).collect();
        check(&src.join("\n"));
    }
}

#[test]
fn odd_documents_give_diagnostics() {
    for src in [
        "",
        "---\n...\n",
        "[1, 2]",
        "just a string",
        "schema: 1\n---\nschema: 1\n",
        "a: *nope\n",
        "\u{feff}schema: 1",
    ] {
        let r = load_str(src, Path::new("odd.yaml"));
        assert!(
            matches!(r, Err(LoadError::Invalid(_))),
            "{src:?} gave {r:?}"
        );
        check(src);
    }
}
