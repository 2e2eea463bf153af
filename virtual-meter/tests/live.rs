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

fn f32_regs(v: f32) -> Vec<u16> {
    sim_core::encoding::encode_f32(v, sim_core::encoding::WordOrder::Abcd).to_vec()
}

/// Settings written over the register interface reach the meter: a lower UV limit before
/// the sag means no trip; a calibration gain scales what the meter measures.
#[test]
fn written_settings_change_what_the_meter_does() {
    let sc = scenario(SAG);
    let mut live = LiveMeter::new(&sc, MeterRef { group: 0, index: 0 }, default_map());
    live.advance_to(0.5);
    // VOLT_LOWER_LIMIT_REG = 170 V (below the sag's 180 V), twice: idempotent.
    live.write(0x0102, &f32_regs(170.0)).unwrap();
    live.write(0x0102, &f32_regs(170.0)).unwrap();
    assert_eq!(live.meter().config().thresholds.lower, 170.0);
    // CAL_GAIN_L2_REG = 1.02.
    live.write(0x0108, &f32_regs(1.02)).unwrap();
    live.advance_to(2.0);
    assert_eq!(
        live.image().state().trip_count,
        0,
        "{:?}",
        live.meter().event_log()
    );
    let l2 = live.image().value(Point::Voltage(sim_core::Phase::L2));
    let l3 = live.image().value(Point::Voltage(sim_core::Phase::L3));
    assert!(
        (l2 / l3 - f64::from(1.02_f32)).abs() < 1e-4,
        "L2 {l2} L3 {l3}"
    );
    // Back to the spec's 210 V: the next sag-free second trips nothing either.
    live.write(0x0102, &f32_regs(210.0)).unwrap();
    live.advance_to(3.0);
    assert_eq!(live.image().state().trip_count, 0);
    assert!(live.is_finished());
}

#[test]
fn calibration_makes_the_next_readings_equal_the_reference_and_repeats_as_a_no_op() {
    use virtual_meter::{CalSelector, Refusal};
    let sc = scenario(SAG);
    let mut live = LiveMeter::new(&sc, MeterRef { group: 0, index: 2 }, default_map());
    assert_eq!(
        live.calibrate(230.0, CalSelector::All),
        Err(Refusal::IllegalDataValue),
        "no reading yet"
    );
    live.advance_to(0.5);
    let before: Vec<f64> = sim_core::Phase::ALL
        .iter()
        .map(|&p| live.image().value(Point::Voltage(p)))
        .collect();
    let cal = live.calibrate(230.0, CalSelector::All).unwrap();
    assert!(cal.changed);
    for (i, v) in before.iter().enumerate() {
        // The supply is 240 V: gain ≈ 230 / 240, exactly reference / latest reading.
        assert!((cal.new[i] - 230.0 / v).abs() < 1e-12, "{i}: {:?}", cal.new);
    }
    assert!(!live.calibrate(230.0, CalSelector::All).unwrap().changed);
    // Windows measured wholly under the new gains read the reference within 0.01 %.
    live.advance_to(0.9);
    for p in sim_core::Phase::ALL {
        let v = live.image().value(Point::Voltage(p));
        assert!((v - 230.0).abs() <= 230.0 * 1e-4, "{p}: {v}");
    }
    assert!(!live.calibrate(230.0, CalSelector::All).unwrap().changed);
    assert_eq!(live.image().cal_count(), 1);
}
