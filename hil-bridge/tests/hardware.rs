//! The hardware test: runs only with `GRIDLOOP_HIL=1` and `GRIDLOOP_LAB=lab.yaml`; otherwise it
//! prints `skipped: no hardware (…)` and returns — never a silent pass. With hardware it probes
//! every real instrument (`*IDN?`, an empty error queue) and reads every real meter (plausible
//! voltages and frequency); emulated entries of the profile are left to `gridloop hil probe`.

use std::io::Write;

use hil_bridge::lab::{hardware_lab, InstrumentTransport, MeterTransport};
use hil_bridge::reader::MeterReader;

#[tokio::test]
async fn hardware_probe() {
    let lab = match hardware_lab() {
        Ok(lab) => lab,
        Err(skip) if skip.is_skip() => {
            // Straight to the process's stderr, past libtest's capture of `print!`/`eprint!`:
            // the skip shows in every `cargo test` log, with or without --nocapture.
            let _ = writeln!(std::io::stderr(), "hardware_probe: {skip}");
            return;
        }
        Err(e) => panic!("hardware requested but unusable: {e}"),
    };
    let hardware = lab
        .instruments
        .iter()
        .filter(|i| i.transport != InstrumentTransport::Emulated)
        .count()
        + lab
            .meters
            .iter()
            .filter(|m| !matches!(m.transport, MeterTransport::Emulated { .. }))
            .count();
    assert!(
        hardware > 0,
        "{} has no hardware: every instrument and meter is emulated (probe it with \
         `gridloop hil probe --lab`)",
        lab.file.display()
    );
    for inst in &lab.instruments {
        if inst.transport == InstrumentTransport::Emulated {
            eprintln!("instrument {}: emulated, not hardware: left out", inst.name);
            continue;
        }
        let probe = inst.probe(None).await;
        let (identity, queue) = probe
            .result
            .unwrap_or_else(|e| panic!("instrument {} not reached: {e}", inst.name));
        eprintln!("instrument {} at {}: {identity}", inst.name, probe.addr);
        queue.unwrap_or_else(|e| panic!("instrument {}: {e}", inst.name));
    }
    for meter in &lab.meters {
        if matches!(meter.transport, MeterTransport::Emulated { .. }) {
            eprintln!("meter {}: emulated, not hardware: left out", meter.name);
            continue;
        }
        let client = meter
            .client(None)
            .await
            .unwrap_or_else(|e| panic!("meter {} not reached: {e}", meter.name));
        let reading = MeterReader::new(client, meter.register_map()).read().await;
        let hz = reading
            .frequency
            .clone()
            .unwrap_or_else(|e| panic!("meter {}: {e}", meter.name));
        assert!((45.0..=65.0).contains(&hz), "meter {}: {hz} Hz", meter.name);
        eprintln!("meter {}: {reading:?}", meter.name);
    }
}
