//! `LiveMeter`: one scenario meter (supply model → waveform or `rms` fidelity → measurement →
//! sim-core meter) whose register image follows it. Still sans-io: the caller says how far to
//! advance; [`crate::pacing`] ties that to the clock.

use std::cell::RefCell;
use std::sync::Arc;

use sim_core::harness::{derive_seed, resolved_disturbances, ProbeRecord, ProbeTap};
use sim_core::measure::{Aggregator, MeasureConfig, MeasureEvent, Measurement};
use sim_core::meter::{self, Meter, MeterConfig};
use sim_core::rms_model::RmsFidelity;
use sim_core::scenario::{Fidelity, FrontEnd};
use sim_core::synth::{SampleBlock, SupplyModel, Synthesizer};
use sim_core::{Scenario, Seconds};

use crate::image::{CalSelector, Calibration, DeviceIdentity, MeterImage, Refusal, Settings};
use crate::registers::RegisterMap;

/// Most samples per channel synthesized at once (the harness's block size).
const BLOCK: usize = 4096;
/// Longest stretch of grid time the `rms` fidelity advances at once.
const RMS_STEP: Seconds = 0.25;

thread_local! {
    /// Event buffers reused by every meter advanced on this thread (always cleared before
    /// use, so no meter sees another's events): a meter holds no per-step scratch of its own.
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

#[derive(Debug, Default)]
struct Scratch {
    /// The `rms` fidelity's half cycles, THD and frequency of one step.
    front: Vec<MeasureEvent>,
    /// Measurement events of one block or step, fed to the meter and the image.
    events: Vec<MeasureEvent>,
}

/// Which meter of a scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeterRef {
    /// Index of the group in `scenario.groups`.
    pub group: usize,
    /// Index of the meter within the group.
    pub index: u32,
}

impl MeterRef {
    /// The fleet-wide meter id sim mode gives this meter (groups numbered in file order).
    pub fn id(self, scenario: &Scenario) -> u32 {
        let before: u32 = scenario.groups[..self.group.min(scenario.groups.len())]
            .iter()
            .map(|g| g.count)
            .sum();
        before + self.index
    }
}

#[derive(Debug)]
enum Source {
    Waveform {
        synth: Box<Synthesizer>,
        measurement: Box<Measurement>,
        block: SampleBlock,
        /// Samples per channel in the whole scenario.
        total: u64,
        /// Samples per channel synthesized so far.
        done: u64,
    },
    Rms {
        rms: Box<RmsFidelity>,
        aggregator: Box<Aggregator>,
    },
}

/// One meter running its scenario, with its register image.
#[derive(Debug)]
pub struct LiveMeter {
    name: String,
    duration: Seconds,
    sample_rate: f64,
    source: Source,
    front_end: FrontEnd,
    meter: Meter,
    image: MeterImage,
    /// Grid time simulated so far.
    t: Seconds,
    finished: bool,
    /// Messages drained from the ring while no outbox is attached.
    drained: u64,
    /// Set by [`LiveMeter::attach_outbox`]: messages stay in the meter's ring for a link.
    outbox: Option<Outbox>,
    /// Set by [`LiveMeter::tap_probes`] on a group's probe meter in live mode.
    tap: Option<Box<ProbeTap>>,
}

/// Wake-up for a link taking messages from a [`LiveMeter`]'s ring: called (with the meter
/// locked, so it must be quick) whenever `advance_to` queued new messages.
#[derive(Clone)]
pub struct Outbox(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outbox")
    }
}

/// Group `group`'s supply model, as sim mode builds it (disturbances with point-on-wave onsets
/// resolved), for [`LiveMeter::with_model`].
pub fn group_model(scenario: &Scenario, group: usize) -> Arc<SupplyModel> {
    Arc::new(SupplyModel::new(
        &scenario.grid,
        resolved_disturbances(scenario, group),
    ))
}

impl LiveMeter {
    /// Meter `which` of `scenario`, serving `map`. Same seeds as sim mode, so its waveform and
    /// trips are the ones `gridloop run` simulates for it.
    pub fn new(scenario: &Scenario, which: MeterRef, map: Arc<RegisterMap>) -> LiveMeter {
        let model = group_model(scenario, which.group);
        LiveMeter::with_model(scenario, which, map, model)
    }

    /// [`LiveMeter::new`] with the group's supply model built once by [`group_model`] and
    /// shared by the group's meters (an `rms` meter keeps only the `Arc`). `model` must be
    /// `group_model(scenario, which.group)`.
    pub fn with_model(
        scenario: &Scenario,
        which: MeterRef,
        map: Arc<RegisterMap>,
        model: Arc<SupplyModel>,
    ) -> LiveMeter {
        let group = &scenario.groups[which.group];
        let id = which.id(scenario);
        let channels = scenario.grid.channels();
        let cfg = MeasureConfig {
            nominal: scenario.grid.nominal,
            frequency: scenario.grid.frequency,
            sample_rate: scenario.grid.sample_rate,
            channels,
            thd: true,
            power: scenario.grid.load.is_some(),
            pq: scenario.pq,
        };
        let seed = derive_seed(scenario.seed, id, 1);
        let source = match group.fidelity {
            Fidelity::Waveform => Source::Waveform {
                synth: Box::new(Synthesizer::new(Arc::unwrap_or_clone(model), seed)),
                measurement: Box::new(Measurement::new(&cfg)),
                block: SampleBlock::new(channels, BLOCK, cfg.sample_rate, cfg.power),
                total: (scenario.duration * scenario.grid.sample_rate).round() as u64,
                done: 0,
            },
            Fidelity::Rms => Source::Rms {
                rms: Box::new(RmsFidelity::new(model, &cfg, seed)),
                aggregator: Box::new(Aggregator::new(&cfg)),
            },
        };
        let meter = Meter::new(MeterConfig {
            id,
            channels,
            thresholds: group.thresholds,
            rbe: group.rbe,
            buffer_capacity: group.buffer_capacity,
        });
        let name = format!("{}/{}", group.name, which.index);
        let settings = Settings {
            thresholds: group.thresholds,
            gains: group.front_end.gain,
        };
        let image = MeterImage::new(
            map,
            DeviceIdentity::gridloop(&name),
            channels,
            scenario.grid.nominal,
            scenario.grid.load,
            settings,
        );
        LiveMeter {
            name,
            duration: scenario.duration,
            sample_rate: scenario.grid.sample_rate,
            source,
            front_end: group.front_end,
            meter,
            image,
            t: 0.0,
            finished: false,
            drained: 0,
            outbox: None,
            tap: None,
        }
    }

    /// `group/index`, e.g. `feeder-a/0`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Grid time simulated so far.
    pub fn time(&self) -> Seconds {
        self.t
    }

    pub fn duration(&self) -> Seconds {
        self.duration
    }

    /// The scenario has been simulated to its end.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    pub fn image(&self) -> &MeterImage {
        &self.image
    }

    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// Messages drained from the ring so far (all it produced, less ring overflow, while no
    /// outbox is attached; `meter().produced()` counts every message).
    pub fn produced(&self) -> u64 {
        self.drained
    }

    /// Simulate grid time up to `until` (clamped to the scenario's end; finishing it there).
    /// Results do not depend on how the time is split into calls.
    pub fn advance_to(&mut self, until: Seconds) {
        if self.finished {
            return;
        }
        SCRATCH.with_borrow_mut(|scratch| self.advance_with(until, scratch));
    }

    fn advance_with(&mut self, until: Seconds, scratch: &mut Scratch) {
        let Scratch { front, events } = scratch;
        let until = until.min(self.duration);
        let produced_before = self.meter.produced();
        match &mut self.source {
            Source::Waveform {
                synth,
                measurement,
                block,
                total,
                done,
            } => {
                let target = ((until * self.sample_rate).floor() as u64).min(*total);
                while *done < target {
                    let n = (target - *done).min(BLOCK as u64) as usize;
                    synth.fill(block, n);
                    if self.front_end != FrontEnd::default() {
                        meter::apply_front_end(&self.front_end, block, n);
                    }
                    events.clear();
                    measurement.push(block, events);
                    *done += n as u64;
                    feed(
                        events,
                        &mut self.meter,
                        &mut self.image,
                        self.tap.as_deref_mut(),
                    );
                }
            }
            Source::Rms { rms, aggregator } => {
                let mut t = self.t;
                while t < until {
                    let step_end = (t + RMS_STEP).min(until);
                    front.clear();
                    rms.advance(step_end, front);
                    events.clear();
                    sim_core::rms_model::measure_step(&self.front_end, front, aggregator, events);
                    feed(
                        events,
                        &mut self.meter,
                        &mut self.image,
                        self.tap.as_deref_mut(),
                    );
                    t = step_end;
                }
            }
        }
        self.t = self.t.max(until);
        if self.t >= self.duration {
            self.finish(events);
        }
        self.meter.advance(self.t);
        self.image.on_meter(&self.meter, self.t);
        match &self.outbox {
            Some(outbox) => {
                if self.meter.produced() > produced_before {
                    (outbox.0)();
                }
            }
            None => {
                while self.meter.poll_transmit().is_some() {
                    self.drained += 1;
                }
            }
        }
    }

    /// Record what sim mode's probe meter records (the expectations' probe values, power-quality
    /// events, RMS and THD for plots), from now on: call it before the first `advance_to` on
    /// meter 0 of `group` so live mode judges the same values.
    pub fn tap_probes(&mut self, scenario: &Scenario, group: usize) {
        self.tap = Some(Box::new(ProbeTap::new(scenario, group)));
    }

    /// What the tap recorded (once; `None` without a tap).
    pub fn take_probe_record(&mut self) -> Option<ProbeRecord> {
        self.tap.take().map(|t| t.finish())
    }

    /// Keep the meter's messages in its store-and-forward ring for a link (MQTT) instead of
    /// draining them, and call `outbox` whenever new ones are queued. While the link is down the
    /// ring fills and overflows (counted) as the meter's own would.
    pub fn attach_outbox(&mut self, outbox: Outbox) {
        self.outbox = Some(outbox);
    }

    /// Back to draining (no link): the ring is emptied on the next `advance_to`.
    pub fn detach_outbox(&mut self) {
        self.outbox = None;
    }

    /// The oldest message waiting in the meter's ring (for the link, while it is up).
    pub fn poll_transmit(&mut self) -> Option<meter::Message> {
        self.meter.poll_transmit()
    }

    fn finish(&mut self, events: &mut Vec<MeasureEvent>) {
        events.clear();
        match &mut self.source {
            Source::Waveform { measurement, .. } => measurement.finish(self.duration, events),
            Source::Rms { aggregator, .. } => aggregator.finish(self.duration, events),
        }
        feed(
            events,
            &mut self.meter,
            &mut self.image,
            self.tap.as_deref_mut(),
        );
        self.finished = true;
    }

    /// Heap bytes this meter owns alone (not the shared register map or supply model, nor the
    /// per-thread event buffers): its `rms` or waveform state, the meter (ring and event log)
    /// and its name and identity strings. Between events it does not grow with grid time.
    pub fn heap_bytes(&self) -> usize {
        let source = match &self.source {
            Source::Rms { rms, aggregator } => {
                size_of::<RmsFidelity>()
                    + rms.heap_bytes()
                    + size_of::<Aggregator>()
                    + aggregator.heap_bytes()
            }
            // Not itemised: the waveform path holds its sample block and the measurement's
            // fixed windows.
            Source::Waveform { .. } => size_of::<Synthesizer>() + size_of::<Measurement>(),
        };
        let id = self.image.identity();
        let strings = self.name.capacity()
            + [
                &id.vendor,
                &id.product_code,
                &id.revision,
                &id.vendor_url,
                &id.product_name,
                &id.model_name,
            ]
            .iter()
            .map(|s| s.capacity())
            .sum::<usize>();
        source + self.meter.heap_bytes() + strings
    }

    /// FC03/FC04 on this meter's image.
    pub fn read(&self, address: u16, quantity: u16) -> Result<Vec<u16>, Refusal> {
        self.image.read(address, quantity)
    }

    /// FC06/FC16: validate and apply; thresholds go to the meter's `HysteresisTrip`s and gains
    /// to its front end. Idempotent: the same write twice changes nothing the second time.
    pub fn write(&mut self, address: u16, values: &[u16]) -> Result<(), Refusal> {
        if self.image.write(address, values)? {
            let s = self.image.settings();
            self.meter.set_thresholds(s.thresholds);
            self.front_end.gain = s.gains;
        }
        Ok(())
    }
}

impl LiveMeter {
    /// The calibration command ([`MeterImage::calibrate`]): gains that make the selected
    /// phases read `reference`, applied to the front end from the next sample on. Idempotent:
    /// the same reference again changes nothing.
    pub fn calibrate(
        &mut self,
        reference: f64,
        selector: CalSelector,
    ) -> Result<Calibration, Refusal> {
        let cal = self.image.calibrate(reference, selector)?;
        if cal.changed {
            self.front_end.gain = self.image.settings().gains;
        }
        Ok(cal)
    }
}

/// Hand measurement events to the meter and the image in time order.
fn feed(
    events: &mut [MeasureEvent],
    meter: &mut Meter,
    image: &mut MeterImage,
    mut tap: Option<&mut ProbeTap>,
) {
    events.sort_by(|a, b| a.time().total_cmp(&b.time()));
    for ev in events.iter() {
        meter.on_measure(ev);
        image.on_measure(ev);
        if let Some(tap) = tap.as_deref_mut() {
            tap.offer(ev);
        }
    }
}
