//! `discover` expands folders recursively and deterministically.

use std::path::PathBuf;

use scenarios::{discover, LoadError};

#[test]
fn folders_expand_to_sorted_yaml_files() {
    let root = std::env::temp_dir().join(format!("gridloop-discover-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("b/deep")).unwrap();
    std::fs::create_dir_all(root.join("a")).unwrap();
    for f in [
        "b/deep/z.yml",
        "b/x.yaml",
        "a/y.yaml",
        "a/notes.txt",
        "c.yaml",
    ] {
        std::fs::write(root.join(f), "").unwrap();
    }
    let found = discover(std::slice::from_ref(&root)).unwrap();
    let rel: Vec<String> = found
        .iter()
        .map(|p| {
            p.strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect();
    assert_eq!(rel, ["a/y.yaml", "b/deep/z.yml", "b/x.yaml", "c.yaml"]);

    let explicit = discover(&[root.join("a/notes.txt"), root.join("a")]).unwrap();
    assert_eq!(
        explicit,
        vec![root.join("a/notes.txt"), root.join("a/y.yaml")]
    );

    let missing = discover(&[PathBuf::from("/definitely/not/here")]);
    assert!(matches!(missing, Err(LoadError::Io { .. })));
    std::fs::remove_dir_all(&root).unwrap();
}
