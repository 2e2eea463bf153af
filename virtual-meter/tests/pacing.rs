//! The pacing loop on tokio's paused clock: grid time follows the clock, no sleeps.

use std::time::Duration;

use tokio::time::Instant;
use virtual_meter::pacing::{run_paced, DEFAULT_STEP};

use crate::common::{default_map, meter, scenario, SAG};

#[tokio::test(start_paused = true)]
async fn meters_follow_the_clock_until_the_scenario_ends() {
    let sc = scenario(SAG);
    let map = default_map();
    let meters = vec![meter(&sc, 0, map.clone()), meter(&sc, 1, map)];
    let start = Instant::now();
    let task = {
        let meters = meters.clone();
        tokio::spawn(async move {
            let mut stats = Default::default();
            run_paced(&meters, start, DEFAULT_STEP, 3.0, &mut stats).await;
            stats
        })
    };
    // Let the loop run to 0.5 s of paused time, then look.
    tokio::time::sleep_until(start + Duration::from_millis(505)).await;
    for m in &meters {
        let t = m.lock().unwrap().time();
        assert!((t - 0.5).abs() < 0.0101, "t = {t}");
    }
    let stats: virtual_meter::pacing::PacingStats = task.await.unwrap();
    assert_eq!(stats.sim_time, 3.0);
    // The paused clock does not move while the meters compute: no overruns.
    assert_eq!(stats.overruns, 0);
    assert_eq!(stats.steps, 300);
    for m in &meters {
        let m = m.lock().unwrap();
        assert!(m.is_finished());
        assert_eq!(m.image().state().trip_count, 1);
    }
    assert_eq!(Instant::now() - start, Duration::from_secs(3));
}
