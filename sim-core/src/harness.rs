//! The virtual-time harness: runs a scenario's meters, links and head-end and collects what
//! the expectations are judged on.
//!
//! Data flow per meter (meters are independent, so they run in parallel and in any order
//! without changing a single bit of the result):
//! supply model → samples (`waveform`) or half-cycle mean squares (`rms`) → measurement →
//! meter logic (trips, readings, store-and-forward ring) → link (latency, loss, outages).
//! Meters advance in slices of grid time; after each slice the head-end ingests, in
//! (delivery time, meter, seq) order, every delivery that no later slice can precede.

use std::sync::Arc;

use rayon::prelude::*;

use crate::disturbance::Disturbance;
use crate::expect;
use crate::grid::Phase;
use crate::head_end::{Alarm, AlarmKind, HeadEnd};
use crate::measure::{Aggregator, MeasureConfig, MeasureEvent, Measurement, PqEvent};
use crate::meter::{self, Message, Meter, MeterConfig, MeterEvent};
use crate::network::Link;
use crate::outcome::{
    EventWaveform, GroupPlot, LatencySummary, PlotData, PlotEvent, RunStats, ScenarioOutcome,
    TimelineEntry, EVENTS_PLOT_MAX, EVENT_WAVEFORMS_MAX, EVENT_WAVEFORM_NOISE_DRAWS_MAX,
    EVENT_WAVEFORM_SAMPLES_MAX, LATENCIES_PLOT_MAX, RMS_PLOT_MAX, TRIP_BUCKETS,
};
use crate::rms_model::RmsFidelity;
use crate::scenario::{
    EventCode, Expectation, Fidelity, MeterGroup, NetworkEventKind, Quantity, Scenario,
};
use crate::synth::{resolve_point_on_wave, SampleBlock, SupplyModel, Synthesizer};
use crate::time::Seconds;

/// Samples per channel per synthesis block (0.32 s at 12.8 kHz): large enough to amortise
/// per-block work, small enough to stay in L2 cache.
const BLOCK: usize = 4096;
/// Grid time per step of the `rms` fidelity.
const RMS_STEP: Seconds = 0.25;
/// Longest timeline kept in an outcome.
const TIMELINE_MAX: usize = 200;
/// Grid time the meters advance between two head-end ingestions. Memory holds one slice of
/// deliveries, not the whole run's.
const SLICE: Seconds = 10.0;
/// Deliveries up to this long before the end of a slice are final: a meter releases every
/// message with an earlier delivery time by the time it has been advanced to the slice end
/// (measurement holds events back by at most ~1.3 half cycles).
const SLICE_MARGIN: Seconds = 1.0;
// Slices must not move the rms fidelity's step boundaries: 10 s is 40 steps of 0.25 s.
const _: () = assert!(SLICE / RMS_STEP == 40.0);

/// A value the expectations want from a group's probe meter (meter 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub quantity: Quantity,
    pub ch: usize,
    pub at: Seconds,
    /// The value of the window that contains `at`, with that window's bounds.
    pub value: Option<(f64, Seconds, Seconds)>,
}

/// What one meter did.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterRecord {
    pub id: u32,
    pub group: usize,
    /// Index within its group.
    pub index: u32,
    /// The meter's local event log: trips and clears with source timestamps.
    pub events: Vec<(Seconds, MeterEvent)>,
    pub produced: u64,
    pub overflowed: u64,
    pub buffered_at_end: u64,
}

/// A trip alarm at the head-end, attributed to the disturbance onset that caused it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmRecord {
    pub alarm: Alarm,
    pub group: usize,
    /// Onset of the voltage disturbance the trip is attributed to (0 = scenario start).
    pub onset: Seconds,
}

impl AlarmRecord {
    /// Onset-to-alarm latency.
    pub fn latency(&self) -> Seconds {
        self.alarm.receive_time - self.onset
    }
}

/// Everything a run observed; expectations are judged on this alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Observations {
    pub meters: Vec<MeterRecord>,
    /// Probe values per group (meter 0 of each group).
    pub probes: Vec<Vec<Probe>>,
    /// Power-quality events of each group's probe meter.
    pub pq_events: Vec<Vec<PqEvent>>,
    /// Trip alarms raised by the head-end (first delivery of each trip event).
    pub trip_alarms: Vec<AlarmRecord>,
    pub stats: RunStats,
    pub timeline: Vec<TimelineEntry>,
    /// Series for plots: each group's probe RMS, trips and clears, and alarm latencies.
    pub plots: PlotData,
}

/// Run `scenario` in sim mode. `file` is the path shown in reports.
pub fn run(scenario: &Scenario, file: &str) -> ScenarioOutcome {
    let obs = simulate(scenario);
    let expectations = expect::evaluate(scenario, &obs);
    ScenarioOutcome {
        name: scenario.name.clone(),
        file: file.to_string(),
        description: scenario.description.clone(),
        tags: scenario.tags.clone(),
        seed: scenario.seed,
        mode: "sim",
        duration: scenario.duration,
        stats: obs.stats,
        expectations,
        timeline: obs.timeline,
        plots: obs.plots,
    }
}

/// (onset, end) of a disturbance.
pub type Window = (Seconds, Seconds);

/// Windows (onset, end) of the voltage disturbances that apply to `group` and `phase`, sorted by
/// onset ([`Disturbance::onset`]: a replay's is its recording's trigger). Network faults and
/// noise are not onsets.
pub fn voltage_onsets(scenario: &Scenario, group: usize, phase: Phase) -> Vec<Window> {
    let mut windows: Vec<Window> = resolved_disturbances(scenario, group)
        .iter()
        .filter(|d| d.kind.is_voltage_onset() && d.phases.contains(phase))
        .map(|d| (d.onset(), d.end()))
        .collect();
    windows.sort_by(|a, b| a.0.total_cmp(&b.0));
    windows
}

/// The onset a trip at `t` is attributed to: the latest onset of a disturbance still active at
/// `t`, or one that ended less than `lag` before it (Urms(1/2) trails the wave by up to a
/// cycle); failing that, the latest onset before `t`; failing that, the scenario start
/// (power-on).
pub fn attribute_onset(windows: &[Window], t: Seconds, lag: Seconds) -> Seconds {
    let started = |w: &&Window| w.0 <= t + 1e-12;
    let active = |w: &&Window| t <= w.1 + lag;
    let latest = |it: &mut dyn Iterator<Item = &Window>| it.map(|w| w.0).reduce(f64::max);
    latest(&mut windows.iter().filter(started).filter(active))
        .or_else(|| latest(&mut windows.iter().filter(started)))
        .unwrap_or(0.0)
}

/// How long after a disturbance ends a trip is still attributed to it: two nominal cycles.
pub fn attribution_lag(scenario: &Scenario) -> Seconds {
    2.0 / scenario.grid.frequency
}

/// The disturbances that apply to `group`, with point-on-wave onsets resolved: what the
/// group's supply model is built from.
pub fn resolved_disturbances(scenario: &Scenario, group: usize) -> Vec<Disturbance> {
    let mut ds: Vec<Disturbance> = scenario
        .disturbances
        .iter()
        .filter(|d| d.applies_to_group(group))
        .cloned()
        .collect();
    resolve_point_on_wave(&scenario.grid, &mut ds);
    ds
}

/// Noise seed of meter `meter`'s waveform (both fidelities): stream 1 of [`derive_seed`].
pub fn synthesis_seed(scenario_seed: u64, meter: u32) -> u64 {
    derive_seed(scenario_seed, meter, 1)
}

/// Id of group `group`'s probe meter (its meter 0): ids count meters in group order.
pub fn probe_meter_id(scenario: &Scenario, group: usize) -> u32 {
    scenario.groups.iter().take(group).map(|g| g.count).sum()
}

/// The synthesizer of group `group`'s probe meter, exactly as [`simulate`] builds it: the
/// group's disturbances with point-on-wave onsets resolved, and that meter's noise seed. Its
/// samples are the supply at the meter's terminals, before the meter's front end.
pub fn probe_synthesizer(scenario: &Scenario, group: usize) -> Synthesizer {
    let model = SupplyModel::new(&scenario.grid, resolved_disturbances(scenario, group));
    Synthesizer::new(
        model,
        synthesis_seed(scenario.seed, probe_meter_id(scenario, group)),
    )
}

/// Deterministic per-meter seed: SplitMix64 of the scenario seed, the meter id and a stream tag.
/// Stream 1 seeds a meter's supply noise and stream 2 its link; live meters use the same, so a
/// meter served over Modbus sees the waveform sim mode simulated for it.
pub fn derive_seed(seed: u64, meter: u32, stream: u64) -> u64 {
    let mut z = seed
        ^ (u64::from(meter).wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Simulate every meter and the head-end, and gather observations.
///
/// Meters advance slice by slice (in parallel), and after each slice the head-end ingests every
/// delivery that is final, in (delivery time, meter, seq) order — the same order a single sort
/// of the whole run would give, with memory bounded by one slice.
pub fn simulate(scenario: &Scenario) -> Observations {
    simulate_in_slices(scenario, SLICE)
}

/// [`simulate`] with a given slice length (a whole number of `rms` steps). The result does not
/// depend on it; tests check that.
pub fn simulate_in_slices(scenario: &Scenario, slice: Seconds) -> Observations {
    debug_assert!(
        slice > 0.0 && (slice / RMS_STEP).fract() == 0.0,
        "a slice is a whole number of rms steps, so step boundaries do not move"
    );
    let mut sims: Vec<MeterSim> = Vec::new();
    let mut next_id = 0_u32;
    // One model per group, shared by its `rms` meters.
    let group_models: Vec<Arc<SupplyModel>> = (0..scenario.groups.len())
        .map(|g| {
            Arc::new(SupplyModel::new(
                &scenario.grid,
                resolved_disturbances(scenario, g),
            ))
        })
        .collect();
    for (g, group) in scenario.groups.iter().enumerate() {
        for index in 0..group.count {
            sims.push(MeterSim::new(scenario, g, index, next_id, &group_models[g]));
            next_id += 1;
        }
    }

    let mut head_end = HeadEnd::new(scenario.head_end);
    // Every meter is expected from the start, so one that never gets through goes stale too.
    for sim in &sims {
        head_end.expect_meter(sim.id, 0.0);
    }
    // Staleness is checked on a grid of a tenth of the stale time (at least 1 s), and only
    // within the scenario: deliveries after the end are still ingested, not judged stale.
    let stale_step = (scenario.head_end.stale_after / 10.0).max(1.0);
    let mut stale_checks = (1..)
        .map(|k| f64::from(k) * stale_step)
        .take_while(|t| *t <= scenario.duration)
        .peekable();
    let mut pending: Vec<(Seconds, Message)> = Vec::new();
    let mut t = 0.0;
    let mut ingested_up_to = f64::NEG_INFINITY;
    loop {
        let until = (t + slice).min(scenario.duration);
        let last = until >= scenario.duration;
        sims.par_iter_mut().for_each(|sim| {
            sim.advance_to(until);
            if last {
                sim.finish();
            }
        });
        for sim in &mut sims {
            // Ingestion order equals a single sort of the whole run only if nothing new lands
            // at or before what was already ingested.
            debug_assert!(
                sim.sink.deliveries.iter().all(|(d, _)| *d > ingested_up_to),
                "a delivery at or before the last ingested horizon {ingested_up_to}"
            );
            pending.append(&mut sim.sink.deliveries);
        }
        pending.sort_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then(a.1.meter.cmp(&b.1.meter))
                .then(a.1.seq.cmp(&b.1.seq))
        });
        let horizon = if last {
            f64::INFINITY
        } else {
            until - SLICE_MARGIN
        };
        let ready = pending.partition_point(|(d, _)| *d <= horizon);
        ingested_up_to = horizon;
        for (d, msg) in pending.drain(..ready) {
            while let Some(check) = stale_checks.next_if(|c| *c <= d) {
                head_end.check_stale(check);
            }
            head_end.receive(d, &msg);
        }
        if last {
            break;
        }
        t = until;
    }
    for check in stale_checks {
        head_end.check_stale(check);
    }

    let mut records = Vec::with_capacity(sims.len());
    let mut probes = vec![ProbeRecord::default(); scenario.groups.len()];
    let (mut samples, mut half_cycles) = (0, 0);
    for sim in sims {
        records.push(sim.record());
        samples += sim.samples * sim.cfg.channels as u64;
        half_cycles += sim.sink.half_cycles;
        if let Some(tap) = sim.sink.tap {
            probes[sim.group] = tap.finish();
        }
    }
    observe(
        scenario,
        RunFacts {
            meters: records,
            probes,
            alarms: head_end.alarms(),
            samples,
            half_cycles,
            delivered: head_end.unique(),
            duplicates: head_end.duplicates(),
            missing: &|meter, produced| head_end.missing(meter, produced),
        },
    )
}

/// What a run gathered before judging — sim mode from its simulated meters, links and
/// head-end, live mode from its virtual meters and the live head-end.
#[allow(missing_debug_implementations)]
pub struct RunFacts<'a> {
    /// Every meter's record, in id order.
    pub meters: Vec<MeterRecord>,
    /// Per group: what its probe meter (meter 0) recorded.
    pub probes: Vec<ProbeRecord>,
    /// Every alarm the head-end raised, times in grid seconds.
    pub alarms: &'a [Alarm],
    /// Samples synthesized (all channels) and half-cycle values evaluated.
    pub samples: u64,
    pub half_cycles: u64,
    /// Distinct (meter, seq) the head-end received, and duplicates it discarded.
    pub delivered: u64,
    pub duplicates: u64,
    /// How many of seqs `0..produced` of a meter never reached the head-end.
    pub missing: &'a dyn Fn(u32, u64) -> u64,
}

/// Gather [`Observations`] from what a run saw: trip alarms attributed to their disturbance
/// onsets, run statistics, the loss balance per meter, timeline and plots.
pub fn observe(scenario: &Scenario, facts: RunFacts<'_>) -> Observations {
    let RunFacts {
        meters: records,
        probes: mut probe_records,
        alarms,
        samples,
        half_cycles,
        delivered,
        duplicates,
        missing,
    } = facts;
    let group_of: std::collections::HashMap<u32, usize> =
        records.iter().map(|r| (r.id, r.group)).collect();
    let mut onset_cache: Vec<[Option<Vec<Window>>; 3]> =
        vec![[None, None, None]; scenario.groups.len()];
    let lag = attribution_lag(scenario);
    let mut trip_alarms = Vec::new();
    for alarm in alarms {
        if let (AlarmKind::Trip(_), Some(phase)) = (&alarm.kind, alarm.phase) {
            let group = group_of.get(&alarm.meter).copied().unwrap_or(0);
            let onsets = onset_cache[group][phase.index()]
                .get_or_insert_with(|| voltage_onsets(scenario, group, phase));
            let onset = attribute_onset(onsets, alarm.source_time, lag);
            trip_alarms.push(AlarmRecord {
                alarm: alarm.clone(),
                group,
                onset,
            });
        }
    }

    let mut stats = RunStats {
        meters: records.len() as u64,
        samples,
        half_cycles,
        ..RunStats::default()
    };
    let mut meters = Vec::with_capacity(records.len());
    let mut probes = vec![Vec::new(); scenario.groups.len()];
    let mut pq_events = vec![Vec::new(); scenario.groups.len()];
    let mut plot_groups: Vec<Option<GroupPlot>> = vec![None; scenario.groups.len()];
    let trip_bucket = scenario.duration / TRIP_BUCKETS as f64;
    let mut trip_counts = vec![vec![0_u64; TRIP_BUCKETS]; scenario.groups.len()];
    for record in records {
        for (t, ev) in &record.events {
            if ev.code.is_trip() && trip_bucket > 0.0 {
                let k = ((t / trip_bucket).floor().max(0.0) as usize).min(TRIP_BUCKETS - 1);
                trip_counts[record.group][k] += 1;
            }
        }
        stats.produced += record.produced;
        stats.overflowed += record.overflowed;
        stats.buffered_at_end += record.buffered_at_end;
        for (_, ev) in &record.events {
            if ev.code.is_trip() {
                stats.trips += 1;
            } else {
                stats.clears += 1;
            }
        }
        // Every message never delivered must be a ring overflow or still in the ring; any
        // difference either way is a defect somewhere and fails `delivered`.
        let missing = missing(record.id, record.produced);
        stats.unexplained_loss += missing.abs_diff(record.overflowed + record.buffered_at_end);
        if record.index == 0 {
            let group = &scenario.groups[record.group];
            let probe = std::mem::take(&mut probe_records[record.group]);
            let (waveforms, omitted) =
                event_waveforms_within(scenario, record.group, EVENT_WAVEFORM_NOISE_DRAWS_MAX);
            plot_groups[record.group] = Some(GroupPlot {
                name: group.name.clone(),
                thresholds: group.thresholds,
                nominal: scenario.grid.nominal,
                rms: probe.rms,
                events: record
                    .events
                    .iter()
                    .take(EVENTS_PLOT_MAX)
                    .map(|(at, ev)| PlotEvent {
                        at: *at,
                        code: ev.code,
                        phase: ev.phase,
                        value: ev.value,
                    })
                    .collect(),
                alarm_latencies: plot_latencies(&trip_alarms, record.group),
                meters: group.count,
                trips: Vec::new(),
                thd: probe.thd,
                event_waveforms: waveforms,
                event_waveforms_omitted: omitted,
            });
            probes[record.group] = probe.probes;
            pq_events[record.group] = probe.pq_events;
        }
        meters.push(record);
    }
    for (plot, counts) in plot_groups.iter_mut().zip(&trip_counts) {
        if let Some(plot) = plot {
            plot.trips = counts
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| ((k + 1) as f64 * trip_bucket, *n))
                .collect();
        }
    }
    stats.delivered = delivered;
    stats.duplicates = duplicates;
    stats.alarms = alarms.len() as u64;
    let latencies: Vec<Seconds> = trip_alarms.iter().map(AlarmRecord::latency).collect();
    stats.alarm_latency = latency_summary(&latencies);

    let timeline = timeline(scenario, &meters, &trip_alarms);
    Observations {
        meters,
        probes,
        pq_events,
        trip_alarms,
        stats,
        timeline,
        plots: PlotData {
            groups: plot_groups.into_iter().flatten().collect(),
        },
    }
}

/// p50 / p99 / max by the nearest-rank method.
pub fn latency_summary(latencies: &[Seconds]) -> LatencySummary {
    if latencies.is_empty() {
        return LatencySummary::default();
    }
    let mut sorted = latencies.to_vec();
    sorted.sort_by(f64::total_cmp);
    LatencySummary {
        count: sorted.len() as u64,
        p50: percentile(&sorted, 50.0),
        p99: percentile(&sorted, 99.0),
        max: sorted[sorted.len() - 1],
    }
}

/// Nearest-rank percentile of sorted, non-empty data.
pub fn percentile(sorted: &[Seconds], p: f64) -> Seconds {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn probe_requests(scenario: &Scenario, group: usize) -> Vec<Probe> {
    scenario
        .expectations
        .iter()
        .filter_map(|e| match e {
            Expectation::Measurement {
                quantity,
                group: g,
                phase,
                at,
                ..
            } if *g == group => Some(Probe {
                quantity: *quantity,
                ch: phase.index(),
                at: *at,
                value: None,
            }),
            _ => None,
        })
        .collect()
}

/// Measurement settings of one meter. THD and power cost an FFT and current synthesis per
/// window, and only the group's probe meter (meter 0) measures them (THD always, for its plot
/// over time; power when an expectation asks for it).
fn measure_config(scenario: &Scenario, group: usize, probe: bool) -> MeasureConfig {
    let wants = |q: Quantity| {
        probe
            && scenario.expectations.iter().any(|e| {
            matches!(e, Expectation::Measurement { quantity, group: g, .. } if *quantity == q && *g == group)
        })
    };
    MeasureConfig {
        nominal: scenario.grid.nominal,
        frequency: scenario.grid.frequency,
        sample_rate: scenario.grid.sample_rate,
        channels: scenario.grid.channels(),
        // The probe meter always measures THD: its plot over time is drawn from it.
        thd: probe,
        power: scenario.grid.load.is_some()
            && (wants(Quantity::ActivePower) || wants(Quantity::Energy)),
        pq: scenario.pq,
    }
}

/// Where a meter's measurement events come from.
#[derive(Debug)]
enum Source {
    Waveform {
        synth: Box<Synthesizer>,
        measurement: Box<Measurement>,
        /// Samples per channel to synthesize in all.
        total: u64,
        ideal_front_end: bool,
    },
    Rms {
        rms: Box<RmsFidelity>,
        aggregator: Box<Aggregator>,
        /// Grid time simulated so far.
        t: Seconds,
    },
}

/// One meter's simulation state, advanced slice by slice.
#[derive(Debug)]
struct MeterSim<'a> {
    scenario: &'a Scenario,
    group: usize,
    index: u32,
    id: u32,
    cfg: MeasureConfig,
    meter: Meter,
    link: Link,
    sink: MeterSink,
    source: Source,
    /// Samples per channel synthesized so far (waveform fidelity).
    samples: u64,
    buffered_at_end: u64,
}

impl<'a> MeterSim<'a> {
    fn new(
        scenario: &'a Scenario,
        g: usize,
        index: u32,
        id: u32,
        model: &Arc<SupplyModel>,
    ) -> Self {
        let group: &MeterGroup = &scenario.groups[g];
        let probe = index == 0;
        let cfg = measure_config(scenario, g, probe);
        let meter = Meter::new(MeterConfig {
            id,
            channels: cfg.channels,
            thresholds: group.thresholds,
            rbe: group.rbe,
            buffer_capacity: group.buffer_capacity,
        });
        let windows = scenario
            .network
            .iter()
            .filter(|n| n.groups.is_empty() || n.groups.contains(&g));
        let link = Link::new(
            group.link,
            windows.cloned().collect(),
            derive_seed(scenario.seed, id, 2),
        );
        let seed = synthesis_seed(scenario.seed, id);
        let source = match group.fidelity {
            Fidelity::Waveform => Source::Waveform {
                synth: Box::new(Synthesizer::new(SupplyModel::clone(model), seed)),
                measurement: Box::new(Measurement::new(&cfg)),
                total: (scenario.duration * scenario.grid.sample_rate).round() as u64,
                ideal_front_end: group.front_end == crate::scenario::FrontEnd::default(),
            },
            Fidelity::Rms => Source::Rms {
                rms: Box::new(RmsFidelity::new(Arc::clone(model), &cfg, seed)),
                aggregator: Box::new(Aggregator::new(&cfg)),
                t: 0.0,
            },
        };
        MeterSim {
            scenario,
            group: g,
            index,
            id,
            cfg,
            meter,
            link,
            sink: MeterSink {
                deliveries: Vec::new(),
                scratch: Vec::new(),
                half_cycles: 0,
                last_t: 0.0,
                tap: probe.then(|| Box::new(ProbeTap::new(scenario, g))),
            },
            source,
            samples: 0,
            buffered_at_end: 0,
        }
    }

    /// Simulate grid time up to `until` (the waveform fidelity may run up to one block past
    /// it). Buffers are allocated per call, so idle meters of a large fleet hold no samples.
    fn advance_to(&mut self, until: Seconds) {
        let group = &self.scenario.groups[self.group];
        let mut events: Vec<MeasureEvent> = Vec::with_capacity(1024);
        match &mut self.source {
            Source::Waveform {
                synth,
                measurement,
                total,
                ideal_front_end,
            } => {
                let fs = self.scenario.grid.sample_rate;
                let target = ((until * fs).ceil() as u64).min(*total);
                if self.samples >= target {
                    return;
                }
                let mut block = SampleBlock::new(self.cfg.channels, BLOCK, fs, self.cfg.power);
                while self.samples < target {
                    let n = (*total - self.samples).min(BLOCK as u64) as usize;
                    synth.fill(&mut block, n);
                    if !*ideal_front_end {
                        meter::apply_front_end(&group.front_end, &mut block, n);
                    }
                    events.clear();
                    measurement.push(&block, &mut events);
                    self.samples += n as u64;
                    self.sink
                        .consume(&mut events, &mut self.meter, &mut self.link);
                }
            }
            Source::Rms { rms, aggregator, t } => {
                let mut front: Vec<MeasureEvent> = Vec::with_capacity(1024);
                let end = until.min(self.scenario.duration);
                while *t < end {
                    let step_end = (*t + RMS_STEP).min(end);
                    front.clear();
                    rms.advance(step_end, &mut front);
                    events.clear();
                    crate::rms_model::measure_step(
                        &group.front_end,
                        &mut front,
                        aggregator,
                        &mut events,
                    );
                    self.sink
                        .consume(&mut events, &mut self.meter, &mut self.link);
                    *t = step_end;
                }
            }
        }
    }

    /// End of the scenario: close open measurements, take the readings due, flush what the link
    /// lets through; what stays in the ring is buffered at the end.
    fn finish(&mut self) {
        let end = self.scenario.duration;
        let mut events: Vec<MeasureEvent> = Vec::new();
        match &mut self.source {
            Source::Waveform { measurement, .. } => measurement.finish(end, &mut events),
            Source::Rms { aggregator, .. } => aggregator.finish(end, &mut events),
        }
        self.sink
            .consume(&mut events, &mut self.meter, &mut self.link);
        self.sink.catch_up(end, &mut self.meter, &mut self.link);
        self.meter.advance(end);
        self.sink.flush(end, &mut self.meter, &mut self.link);
        self.buffered_at_end = self.meter.buffered() as u64;
    }

    fn record(&self) -> MeterRecord {
        MeterRecord {
            id: self.id,
            group: self.group,
            index: self.index,
            events: self.meter.event_log().to_vec(),
            produced: self.meter.produced(),
            overflowed: self.meter.overflowed(),
            buffered_at_end: self.buffered_at_end,
        }
    }
}

/// Routes one meter's measurement events to the meter, the probes and the link.
#[derive(Debug)]
struct MeterSink {
    deliveries: Vec<(Seconds, Message)>,
    scratch: Vec<Seconds>,
    half_cycles: u64,
    /// Time of the last event handled.
    last_t: Seconds,
    /// What the group's probe meter records (none for other meters).
    tap: Option<Box<ProbeTap>>,
}

/// What a group's probe meter (meter 0) records beyond its meter's own log: the values the
/// expectations probe, its power-quality events, and its RMS and THD over time for plots. Sim
/// mode's harness and live mode's meters feed it the same measurement events.
#[derive(Debug, Clone)]
pub struct ProbeTap {
    probes: Vec<Probe>,
    pq_events: Vec<PqEvent>,
    /// 10/12-cycle RMS per channel.
    rms_trace: Vec<RmsTrace>,
    /// THD (%) per 10/12-cycle window per channel.
    thd_trace: Vec<RmsTrace>,
}

/// What a [`ProbeTap`] recorded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeRecord {
    pub probes: Vec<Probe>,
    pub pq_events: Vec<PqEvent>,
    pub rms: Vec<Vec<(Seconds, f64)>>,
    pub thd: Vec<Vec<(Seconds, f64)>>,
}

impl ProbeTap {
    /// The tap of `group`'s probe meter: the probes its expectations ask for.
    pub fn new(scenario: &Scenario, group: usize) -> ProbeTap {
        let traces = || {
            (0..scenario.grid.channels())
                .map(|_| RmsTrace::new(scenario.duration))
                .collect()
        };
        ProbeTap {
            probes: probe_requests(scenario, group),
            pq_events: Vec::new(),
            rms_trace: traces(),
            thd_trace: traces(),
        }
    }

    /// One measurement event.
    pub fn offer(&mut self, ev: &MeasureEvent) {
        match ev {
            MeasureEvent::Pq(pq) => self.pq_events.push(pq.clone()),
            MeasureEvent::Rms10 {
                ch, t_end, value, ..
            } => {
                if let Some(trace) = self.rms_trace.get_mut(*ch) {
                    trace.push(*t_end, *value);
                }
            }
            MeasureEvent::Thd {
                ch, t_end, percent, ..
            } => {
                if let Some(trace) = self.thd_trace.get_mut(*ch) {
                    trace.push(*t_end, *percent);
                }
            }
            _ => {}
        }
        for probe in &mut self.probes {
            probe.offer(ev);
        }
    }

    pub fn finish(self) -> ProbeRecord {
        ProbeRecord {
            probes: self.probes,
            pq_events: self.pq_events,
            rms: self.rms_trace.into_iter().map(RmsTrace::finish).collect(),
            thd: self.thd_trace.into_iter().map(RmsTrace::finish).collect(),
        }
    }
}

/// One channel's 10/12-cycle RMS for plots, bounded: time is cut into `RMS_PLOT_MAX / 2` equal
/// buckets over the scenario and each bucket keeps its minimum and maximum (in time order), so
/// a run with at most two windows per bucket keeps every window. Depends only on the windows,
/// not on how the run was sliced.
#[derive(Debug, Clone)]
struct RmsTrace {
    bucket: Seconds,
    points: Vec<(Seconds, f64)>,
    /// (bucket index, minimum, maximum) of the bucket being filled.
    open: Option<OpenBucket>,
}

/// (bucket index, (t, minimum), (t, maximum)).
type OpenBucket = (usize, (Seconds, f64), (Seconds, f64));

impl RmsTrace {
    const BUCKETS: usize = RMS_PLOT_MAX / 2;

    fn new(duration: Seconds) -> Self {
        let bucket = duration / Self::BUCKETS as f64;
        RmsTrace {
            bucket: if bucket.is_finite() && bucket > 0.0 {
                bucket
            } else {
                1.0
            },
            points: Vec::new(),
            open: None,
        }
    }

    fn push(&mut self, t: Seconds, v: f64) {
        if !t.is_finite() || !v.is_finite() {
            return;
        }
        // Windows may end a little after the scenario: they share the last bucket.
        let k = ((t / self.bucket).floor().max(0.0) as usize).min(Self::BUCKETS - 1);
        match &mut self.open {
            Some((open, lo, hi)) if *open == k => {
                if v < lo.1 {
                    *lo = (t, v);
                }
                if v > hi.1 {
                    *hi = (t, v);
                }
            }
            _ => {
                self.close();
                self.open = Some((k, (t, v), (t, v)));
            }
        }
    }

    fn close(&mut self) {
        if let Some((_, lo, hi)) = self.open.take() {
            let (a, b) = if lo.0 <= hi.0 { (lo, hi) } else { (hi, lo) };
            self.points.push(a);
            if b.0 != a.0 {
                self.points.push(b);
            }
        }
    }

    fn finish(mut self) -> Vec<(Seconds, f64)> {
        self.close();
        self.points
    }
}

/// The probe meter's supply around the first [`EVENT_WAVEFORMS_MAX`] voltage-disturbance onsets
/// of `group` (distinct, sorted): from 2 cycles before to 6 cycles after each, clamped to the
/// scenario, from [`probe_synthesizer`] (skipped to each window with
/// [`Synthesizer::skip_to`], so the samples are exactly the ones the probe meter saw before
/// its front end). Drawn for both fidelities: an `rms` group's supply is the same model.
/// Decimated to at most [`EVENT_WAVEFORM_SAMPLES_MAX`] samples per phase. Onsets that would
/// need more than [`EVENT_WAVEFORM_NOISE_DRAWS_MAX`] noise draws are left out: see
/// [`event_waveforms_within`].
pub fn event_waveforms(scenario: &Scenario, group: usize) -> Vec<EventWaveform> {
    event_waveforms_within(scenario, group, EVENT_WAVEFORM_NOISE_DRAWS_MAX).0
}

/// [`event_waveforms`] replaying at most `max_draws` noise draws in all to reach the windows;
/// also the onsets left out for that, with the draws reaching each would have needed.
/// Cost: skipping a window's lead-in costs one step per 512-sample chunk (about 0.7 M steps
/// for 8 h at 12.8 kHz) plus one normal draw per sample and phase where noise is active.
pub fn event_waveforms_within(
    scenario: &Scenario,
    group: usize,
    max_draws: u64,
) -> (Vec<EventWaveform>, Vec<(Seconds, u64)>) {
    let mut onsets: Vec<Seconds> = resolved_disturbances(scenario, group)
        .iter()
        .filter(|d| d.kind.is_voltage_onset())
        .map(|d| d.onset())
        .filter(|t| t.is_finite() && *t >= 0.0 && *t < scenario.duration)
        .collect();
    onsets.sort_by(f64::total_cmp);
    onsets.dedup();
    onsets.truncate(EVENT_WAVEFORMS_MAX);
    let mut out = Vec::with_capacity(onsets.len());
    let mut omitted = Vec::new();
    if onsets.is_empty() {
        return (out, omitted);
    }
    let fs = scenario.grid.sample_rate;
    let cycle = 1.0 / scenario.grid.frequency;
    let total = (scenario.duration * fs).round() as u64;
    let mut synth = probe_synthesizer(scenario, group);
    let channels = scenario.grid.channels();
    let mut block = SampleBlock::new(channels, BLOCK, fs, false);
    for onset in onsets {
        let first = ((onset - 2.0 * cycle).max(0.0) * fs).ceil() as u64;
        let end = (((onset + 6.0 * cycle) * fs).floor() as u64 + 1).min(total);
        if end <= first {
            continue;
        }
        let len = (end - first) as usize;
        let every = len.div_ceil(EVENT_WAVEFORM_SAMPLES_MAX).max(1);
        let mut samples = vec![Vec::with_capacity(len / every + 1); channels];
        // Windows of successive onsets may overlap: restart the stream when needed.
        if synth.position() > first {
            synth = probe_synthesizer(scenario, group);
        }
        // The cap is per onset (at most EVENT_WAVEFORMS_MAX of them): `needed` counts from the
        // stream's start when an overlap made it restart, as the report says.
        match synth.skip_to(first, max_draws) {
            Ok(_) => {}
            Err(needed) => {
                omitted.push((onset, needed));
                continue;
            }
        }
        while synth.position() < end {
            let pos = synth.position();
            let n = (end - pos).min(BLOCK as u64) as usize;
            synth.fill(&mut block, n);
            for (ch, kept) in samples.iter_mut().enumerate() {
                for i in 0..n {
                    if (pos - first + i as u64) % every as u64 == 0 {
                        kept.push(block.voltage[ch][i]);
                    }
                }
            }
        }
        out.push(EventWaveform {
            onset,
            start: first as f64 / fs,
            step: every as f64 / fs,
            samples,
        });
    }
    (out, omitted)
}

/// (receive time, latency) of `group`'s trip alarms in receive order; beyond
/// [`LATENCIES_PLOT_MAX`], evenly spaced order statistics of the latency (smallest and largest
/// included), so a CDF drawn from them keeps its shape.
fn plot_latencies(trip_alarms: &[AlarmRecord], group: usize) -> Vec<(Seconds, Seconds)> {
    let mut all: Vec<(Seconds, Seconds)> = trip_alarms
        .iter()
        .filter(|a| a.group == group)
        .map(|a| (a.alarm.receive_time, a.latency()))
        .collect();
    if all.len() <= LATENCIES_PLOT_MAX {
        return all;
    }
    all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.total_cmp(&b.0)));
    let last = all.len() - 1;
    let mut kept: Vec<(Seconds, Seconds)> = (0..LATENCIES_PLOT_MAX)
        .map(|i| all[i * last / (LATENCIES_PLOT_MAX - 1)])
        .collect();
    kept.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    kept
}

impl MeterSink {
    fn consume(&mut self, events: &mut [MeasureEvent], meter: &mut Meter, link: &mut Link) {
        // Channels interleave within a block; the meter needs one time order.
        events.sort_by(|a, b| a.time().total_cmp(&b.time()));
        for ev in events.iter() {
            self.catch_up(ev.time(), meter, link);
            if let MeasureEvent::HalfCycle { .. } = ev {
                self.half_cycles += 1;
            }
            if let Some(tap) = &mut self.tap {
                tap.offer(ev);
            }
            meter.on_measure(ev);
            self.flush(ev.time(), meter, link);
        }
    }

    /// Hand the link every buffered message it could have carried by `now`, oldest first: one
    /// taken while the link was up leaves when it was taken, one taken during an outage leaves
    /// when the link came back. The first that still waits for the link stops the flush (the
    /// ring is in time order, so all later ones wait too).
    fn flush(&mut self, now: Seconds, meter: &mut Meter, link: &mut Link) {
        while let Some(source_time) = meter.peek_transmit().map(|m| m.source_time) {
            let send_at = link.next_up(source_time).max(source_time);
            if send_at > now {
                break;
            }
            let Some(msg) = meter.poll_transmit() else {
                break;
            };
            self.scratch.clear();
            link.transmit(send_at, &mut self.scratch);
            for &t in &self.scratch {
                self.deliveries.push((t, msg.clone()));
            }
        }
    }

    /// The link came back between the previous event and `t`: drain the ring at that instant,
    /// before the meter takes the readings due from then on (a reading due exactly at recovery
    /// goes into an emptied ring, not into a full one).
    fn catch_up(&mut self, t: Seconds, meter: &mut Meter, link: &mut Link) {
        let up_at = link.next_up(self.last_t);
        if up_at > self.last_t && up_at <= t {
            meter.advance(up_at - 1e-6);
            self.flush(up_at, meter, link);
        }
        self.last_t = t;
    }
}

impl Probe {
    /// Take the value of the window that contains `at` from a measurement event.
    pub fn offer(&mut self, ev: &MeasureEvent) {
        // Urms(1/2) windows overlap by half a cycle: the one that starts at the last half-cycle
        // boundary before `at` wins, so keep offering those; other windows tile time.
        if self.value.is_some() && self.quantity != Quantity::UrmsHalfCycle {
            return;
        }
        let hit =
            |ch: usize, t0: Seconds, t1: Seconds| ch == self.ch && t0 <= self.at && self.at < t1;
        let v = match (self.quantity, ev) {
            (
                Quantity::Rms10Cycle,
                MeasureEvent::Rms10 {
                    ch,
                    t_start,
                    t_end,
                    value,
                    ..
                },
            )
            | (
                Quantity::Rms150Cycle,
                MeasureEvent::Rms150 {
                    ch,
                    t_start,
                    t_end,
                    value,
                    ..
                },
            )
            | (
                Quantity::UrmsHalfCycle,
                MeasureEvent::UrmsHalf {
                    ch,
                    t_start,
                    t_end,
                    value,
                },
            )
            | (
                Quantity::Thd,
                MeasureEvent::Thd {
                    ch,
                    t_start,
                    t_end,
                    percent: value,
                },
            )
            | (
                Quantity::ActivePower,
                MeasureEvent::Power {
                    ch,
                    t_start,
                    t_end,
                    watts: value,
                    ..
                },
            ) => hit(*ch, *t_start, *t_end).then_some((*value, *t_start, *t_end)),
            (
                Quantity::Energy,
                MeasureEvent::Power {
                    ch,
                    t_start,
                    t_end,
                    energy_wh,
                    ..
                },
            ) => (*ch == self.ch && self.at < *t_end).then_some((*energy_wh, *t_start, *t_end)),
            (Quantity::Frequency, MeasureEvent::Frequency { t_start, t_end, hz }) => {
                (*t_start <= self.at && self.at < *t_end).then_some((*hz, *t_start, *t_end))
            }
            _ => None,
        };
        if v.is_some() {
            self.value = v;
        }
    }
}

fn timeline(
    scenario: &Scenario,
    meters: &[MeterRecord],
    trip_alarms: &[AlarmRecord],
) -> Vec<TimelineEntry> {
    let mut entries = Vec::new();
    let group_names = |groups: &[usize]| {
        if groups.is_empty() {
            "all groups".to_string()
        } else {
            groups
                .iter()
                .filter_map(|g| scenario.groups.get(*g).map(|x| x.name.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let mut ds = scenario.disturbances.clone();
    resolve_point_on_wave(&scenario.grid, &mut ds);
    for d in &ds {
        let phases: Vec<&str> = d.phases.iter().map(Phase::name).collect();
        entries.push(TimelineEntry {
            at: d.at,
            what: format!(
                "{} on {} ({}) for {:.3} s",
                d.kind.name(),
                phases.join("/"),
                group_names(&d.groups),
                d.kind.duration()
            ),
        });
    }
    for n in &scenario.network {
        let kind = match n.kind {
            NetworkEventKind::RfLoss => "rf_loss".to_string(),
            NetworkEventKind::Latency { extra, .. } => format!("latency +{:.1} ms", extra * 1e3),
            NetworkEventKind::Loss { probability } => format!("packet_loss {probability}"),
        };
        entries.push(TimelineEntry {
            at: n.at,
            what: format!(
                "{kind} on {} for {:.3} s",
                group_names(&n.groups),
                n.duration
            ),
        });
    }
    // First trip of each (group, code, phase) at any meter, and the first alarm for it.
    let mut firsts: Vec<(usize, EventCode, Phase, Seconds, u32)> = Vec::new();
    for m in meters {
        for (t, ev) in &m.events {
            let key = (m.group, ev.code, ev.phase);
            match firsts.iter_mut().find(|f| (f.0, f.1, f.2) == key) {
                Some(f) if *t < f.3 => {
                    f.3 = *t;
                    f.4 = m.index;
                }
                Some(_) => {}
                None => firsts.push((m.group, ev.code, ev.phase, *t, m.index)),
            }
        }
    }
    for (g, code, phase, t, index) in firsts {
        let name = &scenario.groups[g].name;
        entries.push(TimelineEntry {
            at: t,
            what: format!("first {} on {phase} at {name}/{index}", code.name()),
        });
    }
    let mut first_alarm: Vec<(usize, Seconds, u32)> = Vec::new();
    for a in trip_alarms {
        match first_alarm.iter_mut().find(|f| f.0 == a.group) {
            Some(f) if a.alarm.receive_time < f.1 => {
                f.1 = a.alarm.receive_time;
                f.2 = a.alarm.meter;
            }
            Some(_) => {}
            None => first_alarm.push((a.group, a.alarm.receive_time, a.alarm.meter)),
        }
    }
    for (g, t, meter) in first_alarm {
        entries.push(TimelineEntry {
            at: t,
            what: format!(
                "first trip alarm at the head-end for {} (meter #{meter})",
                scenario.groups[g].name
            ),
        });
    }
    entries.sort_by(|a, b| a.at.total_cmp(&b.at).then_with(|| a.what.cmp(&b.what)));
    entries.truncate(TIMELINE_MAX);
    entries
}
