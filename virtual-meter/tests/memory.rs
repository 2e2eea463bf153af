//! Memory per live meter: an `rms` meter's heap is small, fixed once running, and does not grow
//! with grid time (a fleet meter runs for days); sharing the group's model changes nothing.

use std::sync::Arc;

use virtual_meter::live::group_model;
use virtual_meter::{LiveMeter, MeterRef};

use crate::common::{default_map, scenario};

const FLEET: &str = "scenarios/library/network/grid-wide-sag-fleet.yaml";
/// Heap an `rms` meter of the fleet scenario may own alone (state, ring, log, strings).
const RMS_HEAP_BUDGET: usize = 3 * 1024;

#[test]
fn rms_meter_heap_is_bounded_and_does_not_grow_with_grid_time() {
    let mut sc = scenario(FLEET);
    // The library scenario stops at 8 s; run on to a minute.
    sc.duration = 70.0;
    let map = default_map();
    let model = group_model(&sc, 1);
    let mut meters: Vec<LiveMeter> = (0..4)
        .map(|index| {
            let which = MeterRef { group: 1, index };
            LiveMeter::with_model(&sc, which, Arc::clone(&map), Arc::clone(&model))
        })
        .collect();
    // One built alone, with its own model: the same meter as index 0.
    let mut alone = LiveMeter::new(&sc, MeterRef { group: 1, index: 0 }, Arc::clone(&map));
    let mut heap = Vec::new();
    let mut t = 0.0;
    for checkpoint in [10.0, 60.0] {
        while t < checkpoint {
            // Uneven steps, as a pacing loop gives them.
            t = f64::min(t + 0.173, checkpoint);
            for m in meters.iter_mut().chain([&mut alone]) {
                m.advance_to(t);
            }
        }
        heap.push(meters.iter().map(LiveMeter::heap_bytes).collect::<Vec<_>>());
    }
    for (i, m) in meters.iter().enumerate() {
        // The sag at 3 s trips and clears all three phases: 6 log entries, all before 10 s.
        assert_eq!(m.meter().event_log().len(), 6, "meter {i}");
        assert_eq!(
            heap[1][i], heap[0][i],
            "meter {i}: heap grew from 10 s to 60 s"
        );
        assert!(
            heap[1][i] <= RMS_HEAP_BUDGET,
            "meter {i}: {} heap bytes",
            heap[1][i]
        );
    }
    // Sharing the model changes no result.
    assert_eq!(alone.meter().event_log(), meters[0].meter().event_log());
    assert_eq!(alone.produced(), meters[0].produced());
    // (Debug text: unmeasured values are NaN.)
    assert_eq!(
        format!("{:?}", alone.image().state()),
        format!("{:?}", meters[0].image().state())
    );
    // The shared model is held by the four meters (and this test), not copied.
    assert_eq!(Arc::strong_count(&model), 5);
}
