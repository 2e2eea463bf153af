//! Judging expectations against a run's observations: one verdict per expectation, with what
//! was expected and what was measured in words and numbers.

use crate::grid::Phase;
use crate::harness::{
    attribute_onset, attribution_lag, latency_summary, voltage_onsets, Observations, Window,
};
use crate::outcome::ExpectationOutcome;
use crate::scenario::{EventCode, Expectation, PqEventKind, Quantity, Scenario, Tolerance};
use crate::time::Seconds;

/// At most this many offending meters are named in a failure's detail.
const DETAIL_MAX: usize = 5;

/// Judge every expectation of `scenario` on `obs`.
pub fn evaluate(scenario: &Scenario, obs: &Observations) -> Vec<ExpectationOutcome> {
    scenario
        .expectations
        .iter()
        .enumerate()
        .map(|(index, e)| {
            let mut outcome = judge(scenario, obs, e);
            outcome.index = index;
            outcome
        })
        .collect()
}

/// `1 trip`, `2 trips`.
fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn ms(t: Seconds) -> String {
    format!("{:.1} ms", t * 1e3)
}

fn group_name(scenario: &Scenario, g: usize) -> &str {
    scenario.groups.get(g).map_or("?", |x| x.name.as_str())
}

fn verdict(
    kind: &'static str,
    label: String,
    passed: bool,
    expected: String,
    measured: String,
) -> ExpectationOutcome {
    ExpectationOutcome {
        index: 0,
        kind,
        label,
        passed,
        expected,
        measured,
        detail: None,
    }
}

fn judge(scenario: &Scenario, obs: &Observations, e: &Expectation) -> ExpectationOutcome {
    match e {
        Expectation::Trip {
            code,
            group,
            phase,
            within,
        } => judge_trip(scenario, obs, *code, *group, *phase, *within),
        Expectation::NoTrip { group, code } => {
            let name = group_name(scenario, *group);
            let label = match code {
                Some(c) => format!("no {} in {name}", c.name()),
                None => format!("no trip in {name}"),
            };
            let mut offenders = Vec::new();
            let mut trips_total = 0_u64;
            for m in obs.meters.iter().filter(|m| m.group == *group) {
                let trips: Vec<_> = m
                    .events
                    .iter()
                    .filter(|(_, ev)| ev.code.is_trip() && code.is_none_or(|c| c == ev.code))
                    .collect();
                trips_total += trips.len() as u64;
                if let Some((t, ev)) = trips.first() {
                    if offenders.len() < DETAIL_MAX {
                        offenders.push(format!(
                            "{name}/{}: {} on {} at {:.4} s (value {:.2} V, limit {:.2} V)",
                            m.index,
                            ev.code.name(),
                            ev.phase,
                            t,
                            ev.value,
                            ev.limit
                        ));
                    }
                }
            }
            let mut v = verdict(
                "no_trip",
                label,
                trips_total == 0,
                "0 trips".into(),
                count(trips_total, "trip"),
            );
            if trips_total > 0 {
                v.detail = Some(offenders.join("\n"));
            }
            v
        }
        Expectation::AlarmLatency { p50, p99, max } => {
            let lat: Vec<Seconds> = obs.trip_alarms.iter().map(|a| a.latency()).collect();
            let s = latency_summary(&lat);
            let mut expected = Vec::new();
            let mut measured = Vec::new();
            let mut passed = s.count > 0;
            for (name, limit, value) in [
                ("p50", p50, s.p50),
                ("p99", p99, s.p99),
                ("max", max, s.max),
            ] {
                if let Some(limit) = limit {
                    expected.push(format!("{name} ≤ {}", ms(*limit)));
                    measured.push(format!("{name} {}", ms(value)));
                    passed &= value <= *limit + 1e-12;
                }
            }
            let measured = if s.count == 0 {
                "no trip alarms reached the head-end".to_string()
            } else {
                format!("{} over {} alarms", measured.join(", "), s.count)
            };
            verdict(
                "alarm_latency",
                "onset-to-alarm latency at the head-end".into(),
                passed,
                expected.join(", "),
                measured,
            )
        }
        Expectation::NoFlapping {
            max_trips_per_meter,
        } => {
            let mut worst = (0_u64, None);
            for m in &obs.meters {
                let trips = m.events.iter().filter(|(_, ev)| ev.code.is_trip()).count() as u64;
                if trips > worst.0 {
                    worst = (trips, Some(m));
                }
            }
            let measured = match worst.1 {
                Some(m) => format!(
                    "at most {} (meter {}/{})",
                    count(worst.0, "trip"),
                    group_name(scenario, m.group),
                    m.index
                ),
                None => "no trips".to_string(),
            };
            verdict(
                "no_flapping",
                format!(
                    "at most {} per meter",
                    count(u64::from(*max_trips_per_meter), "trip")
                ),
                worst.0 <= u64::from(*max_trips_per_meter),
                format!(
                    "≤ {} per meter",
                    count(u64::from(*max_trips_per_meter), "trip")
                ),
                measured,
            )
        }
        Expectation::Delivered { lost, duplicates } => {
            let s = &obs.stats;
            let measured_lost = s.produced.saturating_sub(s.delivered + s.buffered_at_end);
            let mut passed =
                measured_lost == *lost && s.unexplained_loss == 0 && measured_lost == s.overflowed;
            let mut expected = format!("lost = {lost} (ring overflow only)");
            let mut measured = format!(
                "lost {measured_lost} of {} (ring overflow {}, unexplained {}), {} buffered at end",
                s.produced, s.overflowed, s.unexplained_loss, s.buffered_at_end
            );
            if let Some(d) = duplicates {
                passed &= s.duplicates == *d;
                expected.push_str(&format!(", duplicates = {d}"));
                measured.push_str(&format!(", {} duplicates", s.duplicates));
            }
            verdict(
                "delivered",
                "end-to-end delivery".into(),
                passed,
                expected,
                measured,
            )
        }
        Expectation::Measurement {
            quantity,
            group,
            phase,
            at,
            expected,
            tolerance,
        } => judge_measurement(
            scenario, obs, *quantity, *group, *phase, *at, *expected, *tolerance,
        ),
        Expectation::PqEvent {
            kind,
            group,
            phase,
            residual,
            residual_tolerance,
            duration,
            duration_tolerance,
        } => judge_pq(
            scenario,
            obs,
            *kind,
            *group,
            *phase,
            *residual,
            *residual_tolerance,
            *duration,
            *duration_tolerance,
        ),
    }
}

fn judge_trip(
    scenario: &Scenario,
    obs: &Observations,
    code: EventCode,
    group: usize,
    phase: Option<Phase>,
    within: Seconds,
) -> ExpectationOutcome {
    let name = group_name(scenario, group);
    let label = format!(
        "{} on {} in {name} within {}",
        code.name(),
        phase.map_or("any phase".to_string(), |p| p.to_string()),
        ms(within)
    );
    let mut onsets: [Option<Vec<Window>>; 3] = [None, None, None];
    let lag = attribution_lag(scenario);
    let mut worst: Option<(Seconds, u32)> = None;
    let mut missing = Vec::new();
    let mut late = Vec::new();
    let mut meters = 0;
    for m in obs.meters.iter().filter(|m| m.group == group) {
        meters += 1;
        let first = m
            .events
            .iter()
            .find(|(_, ev)| ev.code == code && phase.is_none_or(|p| p == ev.phase));
        match first {
            None => missing.push(m.index),
            Some((t, ev)) => {
                let os = onsets[ev.phase.index()]
                    .get_or_insert_with(|| voltage_onsets(scenario, group, ev.phase));
                let delay = t - attribute_onset(os, *t, lag);
                if worst.is_none_or(|(w, _)| delay > w) {
                    worst = Some((delay, m.index));
                }
                if delay > within + 1e-12 {
                    late.push(format!("{name}/{}: {} after onset", m.index, ms(delay)));
                }
            }
        }
    }
    let passed = meters > 0 && missing.is_empty() && late.is_empty();
    let mut measured = match worst {
        Some((d, i)) => format!("worst {} (meter {name}/{i})", ms(d)),
        None => "no trip".to_string(),
    };
    if !missing.is_empty() {
        measured.push_str(&format!(
            ", {} of {meters} meters never tripped",
            missing.len()
        ));
    }
    let mut v = verdict(
        "trip",
        label,
        passed,
        format!("every meter ≤ {}", ms(within)),
        measured,
    );
    if !passed {
        let mut detail: Vec<String> = late.into_iter().take(DETAIL_MAX).collect();
        if !missing.is_empty() {
            let shown: Vec<String> = missing
                .iter()
                .take(DETAIL_MAX)
                .map(|i| format!("{name}/{i}"))
                .collect();
            detail.push(format!("never tripped: {}", shown.join(", ")));
        }
        if meters == 0 {
            detail.push(format!("group {name} has no meters"));
        }
        v.detail = Some(detail.join("\n"));
    }
    v
}

#[allow(clippy::too_many_arguments)]
fn judge_measurement(
    scenario: &Scenario,
    obs: &Observations,
    quantity: Quantity,
    group: usize,
    phase: Phase,
    at: Seconds,
    expected: f64,
    tolerance: Tolerance,
) -> ExpectationOutcome {
    let unit = quantity.unit();
    let label = format!(
        "{} on {phase} of {}/0 at {:.3} s",
        quantity.name(),
        group_name(scenario, group),
        at
    );
    let tol = match tolerance {
        Tolerance::Absolute(a) => format!("± {a} {unit}"),
        Tolerance::Percent(p) => format!("± {p} %"),
    };
    let expected_text = format!("{expected} {unit} {tol}");
    let found = obs.probes.get(group).and_then(|ps| {
        ps.iter()
            .find(|p| p.quantity == quantity && p.ch == phase.index() && p.at == at)
    });
    match found.and_then(|p| p.value) {
        Some((value, t0, t1)) => {
            let passed = tolerance.allows(expected, value);
            let mut v = verdict(
                "measurement",
                label,
                passed,
                expected_text,
                format!("{value:.4} {unit} (window {t0:.4}–{t1:.4} s)"),
            );
            if !passed {
                v.detail = Some(format!("off by {:+.4} {unit}", value - expected));
            }
            v
        }
        None => verdict(
            "measurement",
            label,
            false,
            expected_text,
            format!("no {} value covers t = {at} s", quantity.name()),
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn judge_pq(
    scenario: &Scenario,
    obs: &Observations,
    kind: PqEventKind,
    group: usize,
    phase: Option<Phase>,
    residual: f64,
    residual_tolerance: Tolerance,
    duration: Seconds,
    duration_tolerance: Seconds,
) -> ExpectationOutcome {
    let udin = scenario.grid.nominal;
    let label = format!(
        "{} on {} of {}/0",
        kind.name(),
        phase.map_or("all phases (polyphase)".to_string(), |p| p.to_string()),
        group_name(scenario, group)
    );
    let tol = match residual_tolerance {
        Tolerance::Absolute(a) => format!("± {:.2} % Udin", a * 100.0),
        Tolerance::Percent(p) => format!("± {p} %"),
    };
    let what = if kind == PqEventKind::Swell {
        "magnitude"
    } else {
        "residual"
    };
    let expected = format!(
        "{what} {:.2} % Udin {tol}, duration {} ± {}",
        residual * 100.0,
        ms(duration),
        ms(duration_tolerance)
    );
    let candidates: Vec<_> = obs
        .pq_events
        .get(group)
        .map(|es| {
            es.iter()
                .filter(|e| e.kind == kind && e.phase == phase)
                .collect()
        })
        .unwrap_or_default();
    let judge_one = |e: &crate::measure::PqEvent| {
        let pu = e.extreme / udin;
        residual_tolerance.allows(residual, pu)
            && (e.duration() - duration).abs() <= duration_tolerance + 1e-9
    };
    // The event that matches best: a passing one if any, else the first.
    let chosen = candidates
        .iter()
        .find(|e| judge_one(e))
        .or(candidates.first());
    match chosen {
        Some(e) => {
            let passed = judge_one(e);
            let mut v = verdict(
                "event",
                label,
                passed,
                expected,
                format!(
                    "{what} {:.2} % Udin, duration {} (start {:.4} s; {} detected)",
                    e.extreme / udin * 100.0,
                    ms(e.duration()),
                    e.start,
                    count(candidates.len() as u64, kind.name())
                ),
            );
            if !passed {
                v.detail = Some(format!(
                    "{what} off by {:+.3} % Udin, duration off by {:+.2} ms",
                    (e.extreme / udin - residual) * 100.0,
                    (e.duration() - duration) * 1e3
                ));
            }
            v
        }
        None => verdict(
            "event",
            label,
            false,
            expected,
            format!("no {} detected", kind.name()),
        ),
    }
}
