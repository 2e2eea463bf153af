//! End-to-end throughput of one meter's chain: synthesis + front end (half cycles at zero
//! crossings) + Urms(1/2) + 10/12-cycle RMS, in samples per second per core (each channel's
//! sample counts), and of the `rms` fidelity in meter-seconds per second.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sim_core::disturbance::{Disturbance, DisturbanceKind, Harmonic, RmsVariation};
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

/// The workload of `shared/peers/waveform/numpy_pipeline.py`, for a side-by-side ratio: 230 V
/// 50 Hz 12.8 kHz, 3rd/5th/7th/11th/13th at 5/4/3/2/1.5 %, a 0.5 pu 100 ms sag, Gaussian noise of
/// 0.5 V, with THD per 10-cycle window.
fn numpy_peer_workload() -> (GridSpec, Vec<Disturbance>) {
    let g = GridSpec {
        nominal: 230.0,
        frequency: 50.0,
        ..grid()
    };
    let all = PhaseSet::ALL;
    let harmonics = [(3, 0.05), (5, 0.04), (7, 0.03), (11, 0.02), (13, 0.015)]
        .into_iter()
        .map(|(order, magnitude)| Harmonic {
            order,
            magnitude,
            phase_deg: 0.0,
        })
        .collect();
    let d = |at: f64, kind| Disturbance {
        at,
        point_on_wave_deg: None,
        phases: all,
        groups: vec![],
        kind,
    };
    let ds = vec![
        d(
            0.0,
            DisturbanceKind::Harmonics {
                components: harmonics,
                end: None,
                duration: SECONDS,
            },
        ),
        d(
            0.0,
            DisturbanceKind::Noise {
                rms: 0.5 / 230.0,
                duration: SECONDS,
            },
        ),
        d(
            4.0,
            DisturbanceKind::Sag(RmsVariation {
                level: 0.5,
                duration: 0.1,
                ramp: 0.0,
                phase_jump_deg: 0.0,
            }),
        ),
    ];
    (g, ds)
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
    let (pg, pds) = numpy_peer_workload();
    let pcfg = MeasureConfig {
        thd: true,
        ..config(&pg)
    };
    group.bench_function("synth+urms_half+rms10+thd/numpy-peer-workload", |b| {
        b.iter(|| {
            let mut synth = Synthesizer::new(SupplyModel::new(&pg, pds.clone()), 7);
            let mut m = Measurement::new(&pcfg);
            let mut block = SampleBlock::new(pg.channels(), BLOCK, pg.sample_rate, false);
            let mut out: Vec<MeasureEvent> = Vec::with_capacity(1024);
            let mut done = 0;
            while done < total {
                let n = (total - done).min(BLOCK);
                synth.fill(&mut block, n);
                out.clear();
                m.push(&block, &mut out);
                done += n;
            }
            out.len()
        })
    });
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
