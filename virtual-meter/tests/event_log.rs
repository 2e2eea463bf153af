//! `EventLogWriter`: the library sag scenario through `LiveMeter` writes the UV trip and clear
//! lines, in order, with the values sim mode produces; nothing is written twice.

use std::sync::Arc;

use sim_core::scenario::EventCode;
use virtual_meter::event_log::EventLogWriter;

use crate::common::{default_map, meter, scenario, SAG};

#[test]
fn sag_scenario_writes_trip_and_clear_lines_with_sim_mode_values() {
    let sc = scenario(SAG);
    let obs = sim_core::harness::simulate(&sc);
    let meters = vec![meter(&sc, 0, default_map()), meter(&sc, 1, default_map())];
    let mut log = EventLogWriter::new(Vec::new());
    let mut k = 0;
    while !meters[0].lock().unwrap().is_finished() {
        k += 1;
        for m in &meters {
            m.lock().unwrap().advance_to(f64::from(k) * 0.01);
        }
        log.append(&meters).unwrap();
    }
    // Calling again adds nothing.
    assert_eq!(log.append(&meters).unwrap(), 0);
    let text = String::from_utf8(log.into_inner()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");

    // Per meter, the lines are sim mode's events in order, formatted independently here.
    for (i, name) in ["feeder-a/0", "feeder-a/1"].iter().enumerate() {
        let mine: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.contains(&format!(" meter={name} ")))
            .collect();
        let sim = &obs.meters[i].events;
        assert_eq!(sim.len(), 2);
        assert_eq!(sim[0].1.code, EventCode::UvTrip);
        assert_eq!(sim[1].1.code, EventCode::UvClear);
        assert!(sim[0].0 < sim[1].0);
        let expected: Vec<String> = sim
            .iter()
            .map(|(t, ev)| {
                format!(
                    "t={t:.6}s meter={name} code={} phase=L1 value={:.2}V limit={:.2}V",
                    if ev.code == EventCode::UvTrip {
                        "UV_TRIP_0x01"
                    } else {
                        "UV_CLEAR_0x81"
                    },
                    ev.value,
                    ev.limit
                )
            })
            .collect();
        assert_eq!(mine, expected);
    }
    // The trip is below the 210 V limit; the clear at or above 210 + 2 V hysteresis.
    assert!(lines[0].contains("code=UV_TRIP_0x01") && lines[0].contains("limit=210.00V"));
    assert!(text.contains("code=UV_CLEAR_0x81"));
    // Both meters trip before either clears (the sag is 200 ms long), so trips come first.
    assert!(lines[0].contains("UV_TRIP") && lines[1].contains("UV_TRIP"));
}

#[test]
fn appends_to_a_file_across_writers() {
    let dir = std::env::temp_dir().join(format!("gridloop-evlog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("voltage_events.log");
    let _ = std::fs::remove_file(&path);
    let sc = scenario(SAG);
    let m = meter(&sc, 0, default_map());
    m.lock().unwrap().advance_to(1.1);
    let mut w = EventLogWriter::append_to(&path).unwrap();
    assert_eq!(w.append(std::slice::from_ref(&m)).unwrap(), 1);
    // Flushed per call: the line is in the file now.
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(
        text.starts_with("t=1.0") && text.contains("UV_TRIP_0x01"),
        "{text}"
    );
    drop(w);
    m.lock().unwrap().advance_to(3.0);
    let mut w = EventLogWriter::append_to(&path).unwrap();
    // A new writer knows nothing of what an earlier one wrote: it writes the whole log.
    assert_eq!(w.append(&[Arc::clone(&m)]).unwrap(), 2);
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}
