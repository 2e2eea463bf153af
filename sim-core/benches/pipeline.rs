//! End-to-end throughput of one meter's chain: synthesis + front end (half cycles at zero
//! crossings) + Urms(1/2) + 10/12-cycle RMS, in samples per second per core (each channel's
//! sample counts), and of the `rms` fidelity in meter-seconds per second.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sim_core::disturbance::{Disturbance, DisturbanceKind, RmsVariation};
use sim_core::grid::{GridSpec, PhaseSet, PhaseSystem};
use sim_core::measure::{Aggregator, MeasureConfig, MeasureEvent, Measurement};
use sim_core::rms_model::RmsFidelity;
use sim_core::scenario::PqThresholds;
use sim_core::synth::{SampleBlock, SupplyModel, Synthesizer};

const BLOCK: usize = 4096;
const SECONDS: f64 = 10.0;

fn grid() -> GridSpec {
    GridSpec {
        nominal: 240.0,
        frequency: 60.0,
        system: PhaseSystem::ThreePhase,
        sample_rate: 12_800.0,
        load: None,
    }
}

fn config(g: &GridSpec) -> MeasureConfig {
    MeasureConfig {
        nominal: g.nominal,
        frequency: g.frequency,
        sample_rate: g.sample_rate,
        channels: g.channels(),
        thd: false,
        power: false,
        pq: PqThresholds::default(),
    }
}

fn sags() -> Vec<Disturbance> {
    (0..5)
        .map(|i| Disturbance {
            at: 1.0 + 2.0 * f64::from(i),
            point_on_wave_deg: None,
            phases: PhaseSet::ALL,
            groups: vec![],
            kind: DisturbanceKind::Sag(RmsVariation {
                level: 0.7,
                duration: 0.2,
                ramp: 0.002,
                phase_jump_deg: 0.0,
            }),
        })
        .collect()
}

fn pipeline(c: &mut Criterion) {
    let g = grid();
    let cfg = config(&g);
    let total = (SECONDS * g.sample_rate) as usize;
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements((total * g.channels()) as u64));
    group.sample_size(10);
    for (name, ds) in [("steady", vec![]), ("five-sags", sags())] {
        group.bench_function(format!("synth+urms_half+rms10/3ph-60Hz-12k8/{name}"), |b| {
            b.iter(|| {
                let mut synth = Synthesizer::new(SupplyModel::new(&g, ds.clone()), 7);
                let mut m = Measurement::new(&cfg);
                let mut block = SampleBlock::new(g.channels(), BLOCK, g.sample_rate, false);
                let mut out: Vec<MeasureEvent> = Vec::with_capacity(1024);
                let mut done = 0;
                let mut acc = 0.0;
                while done < total {
                    let n = (total - done).min(BLOCK);
                    synth.fill(&mut block, n);
                    out.clear();
                    m.push(&block, &mut out);
                    if let Some(MeasureEvent::UrmsHalf { value, .. }) = out.last() {
                        acc += value;
                    }
                    done += n;
                }
                acc
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("rms-fidelity");
    const METER_SECONDS: f64 = 60.0;
    group.throughput(Throughput::Elements(METER_SECONDS as u64));
    group.sample_size(10);
    group.bench_function("meter-seconds/3ph-60Hz/five-sags", |b| {
        b.iter(|| {
            let mut rms = RmsFidelity::new(SupplyModel::new(&g, sags()), &cfg, 7);
            let mut agg = Aggregator::new(&cfg);
            let mut front = Vec::with_capacity(1024);
            let mut out = Vec::with_capacity(1024);
            let mut t = 0.0;
            while t < METER_SECONDS {
                t += 0.25;
                front.clear();
                out.clear();
                rms.advance(t, &mut front);
                for ev in &front {
                    if let MeasureEvent::HalfCycle {
                        ch,
                        t_start,
                        t_end,
                        ms,
                    } = *ev
                    {
                        agg.push_half_cycle(ch, t_start, t_end, ms, &mut out);
                    }
                }
            }
            out.len()
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
