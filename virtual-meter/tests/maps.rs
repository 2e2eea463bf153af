//! Register map files: the shipped YAML equivalent of the default map, and one bad file per
//! error kind with the exact message (file:line:column: field: problem).

use std::path::PathBuf;

use virtual_meter::registers::{MapErrorKind, RegisterMap};
use virtual_meter::MapOptions;

fn fixture(name: &str) -> PathBuf {
    crate::common::repo_path(&format!("virtual-meter/tests/fixtures/{name}"))
}

#[test]
fn yaml_default_map_equals_the_built_in_one() {
    let options = MapOptions::default();
    let loaded = RegisterMap::load(&fixture("default-map.yaml"), options).unwrap();
    assert_eq!(loaded, RegisterMap::default_map(options));
}

#[test]
fn each_bad_yaml_file_names_where_and_what() {
    let cases = [
        (
            "bad-unknown-name.yaml",
            ":3:1: VOLTAGE_L4_REG: unknown register name `VOLTAGE_L4_REG`",
        ),
        (
            "bad-address.yaml",
            ":2:12: VOLTAGE_L1_REG.address: bad address `0x1_0000`",
        ),
        (
            "bad-duplicate.yaml",
            ":3:1: VOLTAGE_L1_REG: `VOLTAGE_L1_REG` is already defined on line 1",
        ),
        (
            "bad-overlap.yaml",
            ":2:13: STATUS_REG: `STATUS_REG` at 0x0025 overlaps `VOLTAGE_L1_REG` (line 1)",
        ),
        (
            "bad-alignment.yaml",
            ":1:16: FREQUENCY_REG: `FREQUENCY_REG` is a 32-bit value and must start at an even address",
        ),
        (
            "bad-encoding.yaml",
            ":1:46: VOLTAGE_L1_REG.encoding: bad encoding `int16:0`",
        ),
        (
            "bad-not-a-mapping.yaml",
            ":1:1: expected a mapping of register names to addresses",
        ),
    ];
    for (file, expected) in cases {
        let path = fixture(file);
        let e = RegisterMap::load(&path, MapOptions::default()).unwrap_err();
        let text = e.to_string();
        let want = format!("{}{expected}", path.display());
        assert!(
            text.starts_with(&want),
            "{file}:\n  got  {text}\n  want {want}"
        );
        assert!(!matches!(e.kind, MapErrorKind::Io(_)));
    }
}
