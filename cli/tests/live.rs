//! `run --mode live` against sim mode: the same scenarios judged both ways must give the same
//! verdicts and the same local meter events, and an RF-loss outage on a spawned Mosquitto must
//! be ridden out by store-and-forward (docs/live-mode.md says what may differ and by how much).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gridloop::live::{live_outcome, observe_live, LiveOptions};
use gridloop::mqtt_links::MqttArgs;
use sim_core::harness::{simulate, Observations};
use sim_core::head_end::AlarmKind;
use sim_core::outcome::{ExpectationOutcome, ScenarioOutcome};
use sim_core::scenario::{EventCode, LinkSpec};
use sim_core::Scenario;
use virtual_meter::broker::{find_program, BrokerUrl};

/// Live runs are timed on real sockets: one at a time, so two of them never compete for the
/// two cores (the latency verdicts are the part that CPU contention could change).
/// Live and HIL runs take turns: they share two cores with real-time pacing.
pub(crate) static LIVE: Mutex<()> = Mutex::new(());

/// The library scenarios of the agreement test: no hardware, a few seconds of real time each,
/// covering sags, swells, interruptions, a sag that must not trip, the minimum-duration filter,
/// split-phase service and harmonics.
const LIBRARY_SUBSET: &[&str] = &[
    "sags-swells/sag-75pct-12-cycles.yaml",
    "sags-swells/swell-120pct-10-cycles.yaml",
    "sags-swells/interruption-momentary.yaml",
    "sags-swells/sag-above-limit-no-trip.yaml",
    "spec/min-duration-filter.yaml",
    "spec/split-phase-c84-range-a.yaml",
    "harmonics/thd-3rd-5th.yaml",
];

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn load(path: &Path) -> Scenario {
    scenarios::load_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Live options as `gridloop run --mode live` builds them from its defaults (10 ms pacing step,
/// 10 s drain, reconnect back-off capped at 50 ms).
pub(crate) fn live_options(broker: BrokerUrl, alarm_store: Option<PathBuf>) -> LiveOptions {
    use clap::Parser;
    #[derive(Parser)]
    struct Defaults {
        #[command(flatten)]
        mqtt: MqttArgs,
    }
    let mqtt = Defaults::parse_from(["gridloop"]).mqtt;
    LiveOptions {
        broker,
        step: Duration::from_millis(10),
        drain: Duration::from_secs(10),
        mqtt: MqttArgs {
            reconnect_max_ms: Some(50),
            ..mqtt
        },
        alarm_store,
        head_ends: None,
        poll: Some(Duration::from_secs(1)),
    }
}

/// Run `scenario` live (one live run at a time), returning its observations and outcome.
fn run_live(
    scenario: &Scenario,
    file: &str,
    opts: &LiveOptions,
) -> (Observations, ScenarioOutcome, Duration) {
    let _one_at_a_time = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let obs = observe_live(scenario, opts)
        .unwrap_or_else(|why| panic!("{file}: the live run did not take place: {why}"));
    let wall = started.elapsed();
    let outcome = live_outcome(scenario, file, Ok(obs.clone()));
    (obs, outcome, wall)
}

/// Every meter's local trip and clear events: (meter id, code, phase, source time).
type MeterEvents = Vec<(u32, EventCode, sim_core::grid::Phase, f64)>;

fn meter_events(obs: &Observations) -> MeterEvents {
    let mut events: MeterEvents = obs
        .meters
        .iter()
        .flat_map(|m| {
            m.events
                .iter()
                .map(move |(t, e)| (m.id, e.code, e.phase, *t))
        })
        .collect();
    events.sort_by(|a, b| (a.0, a.3).partial_cmp(&(b.0, b.3)).unwrap());
    events
}

/// Trip alarms at the head-end: (meter, code, phase, source time rounded to the ms). Live
/// messages carry millisecond source timestamps.
fn trip_alarms(obs: &Observations) -> Vec<(u32, EventCode, Option<sim_core::grid::Phase>, i64)> {
    let mut alarms: Vec<_> = obs
        .trip_alarms
        .iter()
        .filter_map(|a| match a.alarm.kind {
            AlarmKind::Trip(code) => Some((
                a.alarm.meter,
                code,
                a.alarm.phase,
                (a.alarm.source_time * 1000.0).round() as i64,
            )),
            _ => None,
        })
        .collect();
    alarms.sort_by_key(|a| (a.0, a.3));
    alarms
}

/// Sim and live agree on `scenario`: the same verdict for every expectation, the same local
/// events on every meter (live meters use sim mode's seeds), the same trip alarms at the
/// head-end. Returns the live run's wall time and observations.
///
/// Alarm latency is measured on real sockets on a shared two-core machine: a run whose only
/// disagreement is an `alarm_latency` verdict is run once more (and says so on stderr); a
/// disagreement that persists, or any other, fails.
fn assert_agree(file: &str, scenario: &Scenario, opts: &LiveOptions) -> (Duration, Observations) {
    let sim = simulate(scenario);
    let sim_verdicts = sim_core::expect::evaluate(scenario, &sim);
    // The library's scenarios all pass in sim mode: agreeing means passing live too.
    assert!(sim_verdicts.iter().all(|e| e.passed), "{file}: sim failed");
    let (live, outcome, wall) = run_agreeing(file, scenario, opts, &sim_verdicts);
    assert_eq!(outcome.mode, "live");

    let (sim_events, live_events) = (meter_events(&sim), meter_events(&live));
    assert_eq!(live.meters.len(), sim.meters.len(), "{file}");
    assert_eq!(live_events, sim_events, "{file}: meter event logs differ");
    // Every meter's whole log, values and limits included, is the same.
    for (l, s) in live.meters.iter().zip(&sim.meters) {
        assert_eq!((l.id, &l.events), (s.id, &s.events), "{file}");
        assert_eq!(l.produced, s.produced, "{file}: meter {}", l.id);
    }

    let (sim_alarms, live_alarms) = (trip_alarms(&sim), trip_alarms(&live));
    assert_eq!(live_alarms, sim_alarms, "{file}: trip alarms differ");
    (wall, live)
}

/// Every trip alarm of a scenario whose meters connect straight to the broker reached the
/// head-end within one pacing step plus the stack, with a margin for a loaded machine: not
/// ~40 ms late behind a Nagle-delayed segment of the broker (docs/live-mode.md), which hit a
/// meter's second and third phase when the head-end also published its alarms.
fn assert_prompt_alarms(file: &str, live: &Observations) {
    for a in &live.trip_alarms {
        let wait = a.alarm.receive_time - a.alarm.source_time;
        assert!(
            (0.0..0.035).contains(&wait),
            "{file}: meter {} {:?}: source {:.3} s, received {:.1} ms later",
            a.alarm.meter,
            a.alarm.phase,
            a.alarm.source_time,
            wait * 1000.0
        );
    }
}

/// The live run of [`assert_agree`], with its one retry on an `alarm_latency`-only disagreement.
fn run_agreeing(
    file: &str,
    scenario: &Scenario,
    opts: &LiveOptions,
    sim_verdicts: &[ExpectationOutcome],
) -> (Observations, ScenarioOutcome, Duration) {
    const ATTEMPTS: usize = 2;
    for attempt in 1..=ATTEMPTS {
        let (live, outcome, wall) = run_live(scenario, file, opts);
        let differ: Vec<(&ExpectationOutcome, &ExpectationOutcome)> = outcome
            .expectations
            .iter()
            .zip(sim_verdicts)
            .filter(|(l, s)| (l.index, &l.label, l.passed) != (s.index, &s.label, s.passed))
            .collect();
        let only_latency = differ.iter().all(|(l, _)| l.kind == "alarm_latency");
        if differ.is_empty() && outcome.expectations.len() == sim_verdicts.len() {
            return (live, outcome, wall);
        }
        if attempt < ATTEMPTS && only_latency && !differ.is_empty() {
            for (l, s) in &differ {
                eprintln!(
                    "{file}: attempt {attempt}: alarm latency live {} / sim {} ({}): running again",
                    l.measured, s.measured, l.expected
                );
            }
            continue;
        }
        panic!(
            "{file}: verdicts differ (attempt {attempt})\nlive: {:#?}\nsim: {sim_verdicts:#?}",
            outcome.expectations
        );
    }
    unreachable!("the last attempt returns or panics")
}

#[test]
fn sim_and_live_agree_on_a_representative_subset() {
    let opts = live_options(BrokerUrl::parse("embedded").unwrap(), None);
    let library = manifest().join("../scenarios/library");
    let mut files: Vec<PathBuf> = LIBRARY_SUBSET.iter().map(|f| library.join(f)).collect();
    // packet-loss-qos1, shortened: a lossy backhaul through the impairment proxy.
    files.push(manifest().join("tests/live-fixtures/packet-loss-short.yaml"));
    let mut walls = Vec::new();
    for path in &files {
        let file = path.display().to_string();
        let scenario = load(path);
        let (wall, live) = assert_agree(&file, &scenario, &opts);
        if scenario
            .groups
            .iter()
            .all(|g| g.link == LinkSpec::default())
            && scenario.network.is_empty()
        {
            assert_prompt_alarms(&file, &live);
        }
        // Real time: the run lasts the scenario plus start-up and drain, not much longer.
        assert!(
            wall.as_secs_f64() >= scenario.duration - 0.05,
            "{file}: {wall:?} for {} s",
            scenario.duration
        );
        walls.push((scenario.name, wall));
    }
    eprintln!("live wall times: {walls:?}");
}

/// The short RF-loss fixture: feeder-rf's backhaul is down over [3 s, 8 s), a sag at 5 s.
const RF_FIXTURE: &str = "tests/live-fixtures/rf-loss-short.yaml";
const OUTAGE: (f64, f64) = (3.0, 8.0);

#[test]
fn rf_loss_live_on_mosquitto_trips_locally_and_delivers_after_recovery() {
    if find_program("mosquitto").is_none() {
        assert!(
            std::env::var_os("GRIDLOOP_REQUIRE_PEERS").is_none(),
            "GRIDLOOP_REQUIRE_PEERS is set but mosquitto is not installed"
        );
        eprintln!("skipped: mosquitto is not installed");
        return;
    }
    let store = super::scratch("live-rf-loss");
    let opts = live_options(
        BrokerUrl::parse("spawn:mosquitto").unwrap(),
        Some(store.clone()),
    );
    let path = manifest().join(RF_FIXTURE);
    let scenario = load(&path);
    let rf = scenario
        .groups
        .iter()
        .position(|g| g.name == "feeder-rf")
        .unwrap();
    let ok = scenario
        .groups
        .iter()
        .position(|g| g.name == "feeder-ok")
        .unwrap();
    let (live, outcome, _) = run_live(&scenario, RF_FIXTURE, &opts);

    // Every expectation passes, delivery with nothing lost among them.
    for e in &outcome.expectations {
        assert!(e.passed, "{}: {} — {}", e.label, e.expected, e.measured);
    }
    let delivered = outcome
        .expectations
        .iter()
        .find(|e| e.kind == "delivered")
        .unwrap();
    assert!(
        delivered.measured.starts_with("lost 0 of "),
        "{delivered:?}"
    );

    // The meters tripped locally during the outage (the sag starts at 5 s).
    let sag_trips = |group: usize| -> Vec<(u32, sim_core::grid::Phase, f64)> {
        live.meters
            .iter()
            .filter(|m| m.group == group)
            .flat_map(|m| {
                m.events
                    .iter()
                    .filter(|(_, e)| e.code == EventCode::UvTrip)
                    .map(move |(t, e)| (m.id, e.phase, *t))
            })
            .collect()
    };
    let rf_trips = sag_trips(rf);
    assert_eq!(
        rf_trips.len(),
        5 * 3,
        "every phase of every meter: {rf_trips:?}"
    );
    for &(meter, _, t) in &rf_trips {
        assert!(
            (5.0..5.0 + 0.0167).contains(&t) && t < OUTAGE.1 && t >= OUTAGE.0,
            "meter {meter} tripped at {t} s"
        );
    }

    // Their alarms reached the head-end after the outage, with the meters' source timestamps.
    for &(meter, phase, t) in &rf_trips {
        let alarm = live
            .trip_alarms
            .iter()
            .find(|a| a.alarm.meter == meter && a.alarm.phase == Some(phase))
            .unwrap_or_else(|| panic!("no trip alarm of meter {meter} {phase:?}"));
        assert!(
            alarm.alarm.receive_time >= OUTAGE.1,
            "meter {meter} {phase:?}: received at {} s, inside the outage",
            alarm.alarm.receive_time
        );
        assert!(
            (alarm.alarm.source_time - t).abs() <= 0.0005 + 1e-9,
            "meter {meter} {phase:?}: source time {} s, tripped at {t} s",
            alarm.alarm.source_time
        );
    }
    // The healthy feeder's alarms (straight to the broker) did not wait for the outage to end:
    // one pacing step plus the stack, with a margin for a loaded machine.
    let ok_trips = sag_trips(ok);
    assert_eq!(ok_trips.len(), 2 * 3, "{ok_trips:?}");
    for &(meter, phase, t) in &ok_trips {
        let alarm = live
            .trip_alarms
            .iter()
            .find(|a| a.alarm.meter == meter && a.alarm.phase == Some(phase))
            .unwrap_or_else(|| panic!("no trip alarm of meter {meter} {phase:?}"));
        let wait = alarm.alarm.receive_time - t;
        assert!(
            (0.0..0.035).contains(&wait),
            "meter {meter} {phase:?}: tripped at {t} s, received {:.1} ms later",
            wait * 1000.0
        );
    }

    // The stored alarm records agree: one trip per meter and phase, original source times.
    // One store per head-end instance: `<scenario>.<instance>.alarms.jsonl`.
    let mut text = String::new();
    for entry in std::fs::read_dir(&store).expect("the alarm store directory is kept") {
        let path = entry.expect("a directory entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.starts_with(&format!("{}.", scenario.name)) && name.ends_with(".alarms.jsonl") {
            text.push_str(&std::fs::read_to_string(&path).expect("a store reads"));
        }
    }
    assert!(!text.is_empty(), "no alarm store in {}", store.display());
    let records: Vec<head_end::AlarmRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let stored_trips: Vec<&head_end::AlarmRecord> = records
        .iter()
        .filter(|r| r.kind == head_end::Kind::Trip)
        .collect();
    assert_eq!(stored_trips.len(), (5 + 2) * 3, "{text}");
    let rf_ids: Vec<u32> = rf_trips.iter().map(|t| t.0).collect();
    for r in stored_trips.iter().filter(|r| rf_ids.contains(&r.meter)) {
        let source = r.source_ms.unwrap();
        assert!(
            r.receive_ms >= source + 2_900,
            "{r:?}: arrived before recovery"
        );
    }

    // The outcome's timeline shows the outage.
    let down = outcome
        .timeline
        .iter()
        .find(|e| {
            e.what
                .starts_with("live: feeder-rf backhaul down until 8.000 s")
        })
        .unwrap_or_else(|| panic!("{:#?}", outcome.timeline));
    assert_eq!(down.at, OUTAGE.0);
    assert!(!down.what.contains("0 connections cut"), "{}", down.what);

    // And sim mode judges the same.
    let sim = simulate(&scenario);
    let sim_verdicts = sim_core::expect::evaluate(&scenario, &sim);
    assert_eq!(
        sim_verdicts.iter().map(|e| e.passed).collect::<Vec<_>>(),
        outcome
            .expectations
            .iter()
            .map(|e| e.passed)
            .collect::<Vec<_>>()
    );
    assert_eq!(meter_events(&live), meter_events(&sim));
    assert_eq!(trip_alarms(&live), trip_alarms(&sim));
}
