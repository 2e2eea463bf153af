//! `gridloop hil probe --lab FILE` end to end: the shipped emulated lab (exit 0, one line per
//! instrument and meter), unreachable addresses (exit 3, NOT REACHED), a meter serving another
//! encoding than the lab expects (exit 1, the mismatch named) and a bad lab file (exit 2).

use super::*;

fn probe(lab: &str) -> Output {
    gridloop(&["hil", "probe", "--lab", lab])
}

fn lines_starting<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn the_emulated_lab_is_reached_and_verified() {
    let out = probe("../lab/emulated.yaml");
    let text = stdout(&out);
    assert_eq!(code(&out), i32::from(exit::SUCCESS), "{out:?}");
    let inst = lines_starting(&text, "instrument source (chroma) at 127.0.0.1:");
    assert_eq!(inst.len(), 1, "{text}");
    assert!(
        inst[0].ends_with(
            ": Chroma ATE 61511 serial EMU0001 firmware 1.00-emulated; error queue empty"
        ),
        "{text}"
    );
    let meter = lines_starting(&text, "meter meter at 127.0.0.1:");
    assert_eq!(meter.len(), 1, "{text}");
    // The built-in scenario is a steady 240 V 60 Hz supply on three phases.
    assert!(
        meter[0].ends_with(
            " unit 1: firmware 0.1, L1 240.0 V, L2 240.0 V, L3 240.0 V, 60.00 Hz, \
             encoding verified"
        ),
        "{text}"
    );
    assert_eq!(text.lines().count(), 2, "{text}");
}

#[test]
fn unreachable_addresses_are_not_reached_and_exit_3() {
    let out = probe("tests/labs/unreachable.yaml");
    let text = stdout(&out);
    assert_eq!(code(&out), i32::from(exit::ENVIRONMENT), "{out:?}");
    let inst = lines_starting(
        &text,
        "instrument gone (ametek) at 127.0.0.1:1: NOT REACHED: ",
    );
    assert_eq!(inst.len(), 1, "{text}");
    assert!(inst[0].contains("during \"connect\""), "{text}");
    let absent = lines_starting(
        &text,
        "meter absent at 127.0.0.1:1 unit 4: NOT REACHED: link failed: ",
    );
    assert_eq!(absent.len(), 1, "{text}");
    // The reachable meter beside them is still probed and verified.
    let here = lines_starting(&text, "meter here at 127.0.0.1:");
    assert_eq!(here.len(), 1, "{text}");
    assert!(here[0].ends_with("encoding verified"), "{text}");
}

#[test]
fn a_meter_serving_int16_where_the_lab_expects_float32_is_a_mismatch() {
    let out = probe("tests/labs/int16-meter.yaml");
    let text = stdout(&out);
    assert_eq!(code(&out), i32::from(exit::EXPECTATION_FAILED), "{out:?}");
    assert_eq!(
        lines_starting(&text, "instrument source (ametek) at 127.0.0.1:").len(),
        1,
        "{text}"
    );
    let wrong = lines_starting(&text, "meter wrong at 127.0.0.1:");
    assert_eq!(wrong.len(), 1, "{text}");
    let line = wrong[0];
    assert!(
        line.contains("encoding MISMATCH: expected float32 ABCD"),
        "{text}"
    );
    // 240.0 V at ×0.1 is 2400 = 0x0960; 60.0 Hz is 600 = 0x0258.
    assert!(line.contains("VOLTAGE_L1_REG 0x0024 = [0x0960]"), "{text}");
    assert!(line.contains("FREQUENCY_REG 0x0030 = [0x0258]"), "{text}");
    assert!(line.contains("plausible as int16 ×0.1"), "{text}");
    assert!(
        !line.contains("NOT REACHED") && !line.contains("verified"),
        "{text}"
    );
}

#[test]
fn a_bad_lab_file_exits_2_naming_file_line_and_field() {
    let out = probe("tests/labs/bad.yaml");
    assert_eq!(code(&out), i32::from(exit::INVALID_INPUT), "{out:?}");
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert!(
        err.contains("tests/labs/bad.yaml:5:15: instruments[0].emulated: invalid type"),
        "{err}"
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn a_meter_map_file_moves_the_addresses_probed() {
    // The map puts every point away from the documented addresses (0x0024…): only a probe that
    // reads where the map says finds 240 V and 60 Hz, in the word order the lab names.
    let out = probe("tests/labs/mapped-meter.yaml");
    let text = stdout(&out);
    assert_eq!(code(&out), i32::from(exit::SUCCESS), "{out:?}");
    let line = lines_starting(&text, "meter mapped at 127.0.0.1:");
    assert_eq!(line.len(), 1, "{text}");
    assert!(
        line[0].ends_with(
            " unit 1: firmware 0.1, L1 240.0 V, L2 240.0 V, L3 240.0 V, 60.00 Hz, \
             encoding verified"
        ),
        "{text}"
    );
}
