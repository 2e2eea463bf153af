//! Real-time pacing: advance meters to the time elapsed on tokio's clock, in small steps.
//! Falling behind is counted (overruns), never hidden. Tests drive it with tokio's paused
//! clock, so no test sleeps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use crate::service::SharedMeter;
use sim_core::Seconds;

/// Default pacing step: 10 ms of grid time per step (128 samples per channel at 12.8 kHz).
pub const DEFAULT_STEP: Duration = Duration::from_millis(10);

/// What the pacing loop did.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PacingStats {
    /// Steps taken.
    pub steps: u64,
    /// Steps whose work took longer than one step (the meters fell behind real time), plus
    /// ticks skipped because of that.
    pub overruns: u64,
    /// Longest time one step's work took.
    pub max_step_work: Duration,
    /// Grid time reached.
    pub sim_time: Seconds,
}

/// The pacing figures as they stand, readable while the loop runs (a status line), shared by
/// several pacing loops: steps and overruns add up, grid time is the furthest reached.
#[derive(Debug, Default)]
pub struct PacingProgress {
    pub steps: AtomicU64,
    pub overruns: AtomicU64,
    /// Grid time reached, µs.
    pub sim_us: AtomicU64,
}

/// [`run_paced`], also publishing every step's figures to `progress`.
pub async fn run_paced_with(
    meters: &[SharedMeter],
    start: Instant,
    step: Duration,
    end: Seconds,
    stats: &mut PacingStats,
    progress: &PacingProgress,
) {
    let mut seen = PacingStats::default();
    let report = |stats: &PacingStats, seen: &mut PacingStats| {
        progress
            .steps
            .fetch_add(stats.steps - seen.steps, Ordering::Relaxed);
        progress
            .overruns
            .fetch_add(stats.overruns - seen.overruns, Ordering::Relaxed);
        progress
            .sim_us
            .fetch_max((stats.sim_time * 1e6) as u64, Ordering::Relaxed);
        *seen = *stats;
    };
    paced(meters, start, step, end, stats, &mut |s| {
        report(s, &mut seen)
    })
    .await;
}

/// Advance every meter to the time elapsed since `start` (scaled by nothing: one grid second
/// per wall second), every `step`, until `end` seconds of grid time are simulated. Returns
/// when the scenario is over; drop the future to stop early (Ctrl-C): `stats` holds what was
/// done until then.
pub async fn run_paced(
    meters: &[SharedMeter],
    start: Instant,
    step: Duration,
    end: Seconds,
    stats: &mut PacingStats,
) {
    paced(meters, start, step, end, stats, &mut |_| {}).await;
}

async fn paced(
    meters: &[SharedMeter],
    start: Instant,
    step: Duration,
    end: Seconds,
    stats: &mut PacingStats,
    after_step: &mut (dyn FnMut(&PacingStats) + Send),
) {
    let step = step.max(Duration::from_millis(1));
    let mut ticker = tokio::time::interval_at(start + step, step);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut last_tick: Option<Instant> = None;
    loop {
        let tick = ticker.tick().await;
        if let Some(prev) = last_tick {
            // Skipped ticks mean the previous step's work overran.
            let skipped = (tick.saturating_duration_since(prev).as_nanos()
                / step.as_nanos().max(1))
            .saturating_sub(1);
            stats.overruns += skipped as u64;
        }
        last_tick = Some(tick);
        let t = Instant::now()
            .saturating_duration_since(start)
            .as_secs_f64()
            .min(end);
        let work_start = Instant::now();
        for m in meters {
            if let Ok(mut m) = m.lock() {
                m.advance_to(t);
            }
        }
        let work = work_start.elapsed();
        stats.max_step_work = stats.max_step_work.max(work);
        if work > step {
            stats.overruns += 1;
        }
        stats.steps += 1;
        stats.sim_time = t;
        after_step(stats);
        if t >= end {
            return;
        }
    }
}
