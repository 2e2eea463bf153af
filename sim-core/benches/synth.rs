//! Criterion benchmarks of waveform synthesis (samples/s over all channels) and of the `rms`
//! fidelity (meter-seconds of grid time per second).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sim_core::disturbance::{
    Conductor, Disturbance, DisturbanceKind, FlickerShape, Harmonic, RmsVariation, ThermalDrift,
};
use sim_core::measure::{MeasureConfig, MeasureEvent};
use sim_core::rms_model::RmsFidelity;
use sim_core::scenario::PqThresholds;
use sim_core::synth::{SampleBlock, SupplyModel, Synthesizer};
use sim_core::{GridSpec, PhaseSet, PhaseSystem};

const FS: f64 = 12_800.0;
const BLOCK: usize = 12_800;

fn grid() -> GridSpec {
    GridSpec {
        nominal: 120.0,
        frequency: 60.0,
        system: PhaseSystem::ThreePhase,
        sample_rate: FS,
        load: None,
    }
}

fn always(kind: DisturbanceKind) -> Disturbance {
    Disturbance {
        at: 0.0,
        point_on_wave_deg: None,
        phases: PhaseSet::ALL,
        groups: vec![],
        kind,
    }
}

fn cases() -> Vec<(&'static str, Vec<Disturbance>)> {
    let long = 1e7;
    vec![
        ("plain", vec![]),
        (
            "sag",
            vec![always(DisturbanceKind::Sag(RmsVariation {
                level: 0.7,
                duration: long,
                ramp: 0.0,
                phase_jump_deg: 0.0,
            }))],
        ),
        (
            "harmonics_3_5",
            vec![always(DisturbanceKind::Harmonics {
                components: vec![
                    Harmonic {
                        order: 3,
                        magnitude: 0.05,
                        phase_deg: 0.0,
                    },
                    Harmonic {
                        order: 5,
                        magnitude: 0.04,
                        phase_deg: 0.0,
                    },
                ],
                end: None,
                duration: long,
            })],
        ),
        (
            "noise",
            vec![always(DisturbanceKind::Noise {
                rms: 0.01,
                duration: long,
            })],
        ),
        (
            "flicker",
            vec![always(DisturbanceKind::Flicker {
                depth: 0.05,
                frequency: 8.8,
                shape: FlickerShape::Sine,
                duration: long,
            })],
        ),
        (
            "frequency_ramp",
            vec![always(DisturbanceKind::Frequency {
                deviation: 1.0,
                ramp: long,
                duration: long,
                return_to_nominal: false,
            })],
        ),
        (
            "thermal_drift",
            vec![always(DisturbanceKind::ThermalDrift(ThermalDrift {
                conductor: Conductor::Copper,
                r20: 0.1,
                x: 0.02,
                current: 60.0,
                power_factor: 0.9,
                ambient: 25.0,
                initial: 25.0,
                thermal_resistance: 0.2,
                tau: 600.0,
                duration: 8.0 * 3600.0,
            }))],
        ),
    ]
}

fn synthesis(c: &mut Criterion) {
    let g = grid();
    let mut group = c.benchmark_group("synth_3ph_60Hz_12k8");
    group.throughput(Throughput::Elements((BLOCK * g.channels()) as u64));
    for (name, dist) in cases() {
        let mut syn = Synthesizer::new(SupplyModel::new(&g, dist), 1);
        let mut block = SampleBlock::new(g.channels(), BLOCK, FS, false);
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                syn.fill(&mut block, BLOCK);
                black_box(&block.voltage[0][BLOCK - 1]);
            })
        });
    }
    group.finish();
}

fn rms_fidelity(c: &mut Criterion) {
    let g = grid();
    let cfg = MeasureConfig {
        nominal: g.nominal,
        frequency: g.frequency,
        sample_rate: g.sample_rate,
        channels: g.channels(),
        thd: true,
        power: false,
        pq: PqThresholds::default(),
    };
    let seconds = 60.0;
    let mut group = c.benchmark_group("rms_fidelity_3ph_meter_seconds");
    group.throughput(Throughput::Elements(seconds as u64));
    for (name, dist) in cases() {
        let model = SupplyModel::new(&g, dist);
        let mut out: Vec<MeasureEvent> = Vec::with_capacity(20_000);
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                out.clear();
                let mut r = RmsFidelity::new(model.clone(), &cfg, 1);
                r.advance(seconds, &mut out);
                black_box(out.len());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, synthesis, rms_fidelity);
criterion_main!(benches);
