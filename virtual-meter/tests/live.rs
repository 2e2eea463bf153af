//! `LiveMeter` against sim mode: same seeds, same trips, whatever the step size.

use sim_core::scenario::EventCode;
use virtual_meter::{LiveMeter, MeterRef, Point};

use crate::common::{default_map, scenario, SAG};

#[test]
fn live_meter_trips_exactly_like_sim_mode() {
    let sc = scenario(SAG);
    let obs = sim_core::harness::simulate(&sc);
    let sim_events = &obs.meters[1].events;
    assert_eq!(sim_events.len(), 2, "{sim_events:?}");
    assert_eq!(sim_events[0].1.code, EventCode::UvTrip);

    // Meter index 1 of the group, advanced in 10 ms steps as the pacing loop does.
    let mut live = LiveMeter::new(&sc, MeterRef { group: 0, index: 1 }, default_map());
    let mut k = 0;
    while !live.is_finished() {
        k += 1;
        live.advance_to(f64::from(k) * 0.01);
    }
    assert_eq!(live.meter().event_log(), &sim_events[..]);
    assert_eq!(live.meter().produced(), obs.meters[1].produced);
    assert_eq!(live.time(), sc.duration);
}

#[test]
fn image_follows_the_sag() {
    let sc = scenario(SAG);
    let mut live = LiveMeter::new(&sc, MeterRef { group: 0, index: 0 }, default_map());
    live.advance_to(0.9);
    let img = live.image();
    for p in sim_core::Phase::ALL {
        let v = img.value(Point::Voltage(p));
        assert!((v - 240.0).abs() < 0.5, "{p}: {v}");
    }
    assert_eq!(img.state().trip_count, 0);
    // 1.1 s is inside the 12-cycle sag to 0.75 pu: Urms(1/2) = 180 V (the library's number).
    live.advance_to(1.1);
    let urms = live.image().value(Point::UrmsHalf(sim_core::Phase::L1));
    assert!((urms - 180.0).abs() < 0.18, "urms {urms}");
    assert_eq!(live.image().state().trip_count, 1);
    live.advance_to(2.0);
    assert!(
        live.image().state().trip[0].is_none(),
        "cleared after the sag"
    );
    assert_eq!(live.image().state().clear_count, 1);
    // THD and frequency of a clean supply.
    let thd = live.image().value(Point::ThdV(sim_core::Phase::L2));
    assert!((0.0..0.1).contains(&thd), "thd {thd}");
    let hz = live.image().value(Point::Frequency);
    assert!((hz - 60.0).abs() < 0.01, "hz {hz}");
}
