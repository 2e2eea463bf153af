//! Measurement pipeline throughput: front end + aggregator on a 3-phase 60 Hz signal sampled at
//! 12.8 kHz, in samples per second per core (each channel's sample counts).

use std::f64::consts::PI;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use sim_core::measure::{MeasureConfig, MeasureEvent, Measurement};
use sim_core::scenario::PqThresholds;
use sim_core::synth::SampleBlock;

const FS: f64 = 12_800.0;
const SECONDS: usize = 4;
const BLOCK: usize = 4096;

/// Precomputed blocks: 120 V, 3 % 5th harmonic and a little deterministic noise.
fn blocks() -> Vec<SampleBlock> {
    let n = SECONDS * FS as usize;
    let mut noise_state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let len = BLOCK.min(n - start);
        let mut b = SampleBlock::new(3, BLOCK, FS, false);
        b.start = start as u64;
        b.len = len;
        for ch in 0..3 {
            let shift = 2.0 * PI * ch as f64 / 3.0;
            for i in 0..len {
                let t = (start + i) as f64 / FS;
                let th = 2.0 * PI * 60.0 * t - shift;
                noise_state = noise_state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                let noise = ((noise_state >> 40) as f64 / (1u64 << 24) as f64 - 0.5) * 0.2;
                b.voltage[ch][i] = (169.7 * (th.sin() + 0.03 * (5.0 * th).sin()) + noise) as f32;
            }
        }
        out.push(b);
        start += len;
    }
    out
}

fn config(thd: bool) -> MeasureConfig {
    MeasureConfig {
        nominal: 120.0,
        frequency: 60.0,
        sample_rate: FS,
        channels: 3,
        thd,
        power: false,
        pq: PqThresholds::default(),
    }
}

fn bench_measure(c: &mut Criterion) {
    let mut blocks = blocks();
    let per_channel = (SECONDS as f64 * FS) as u64;
    let samples: u64 = blocks.iter().map(|b| (b.len * b.channels()) as u64).sum();
    let mut group = c.benchmark_group("measure_3ph_60hz_12k8");
    group.throughput(Throughput::Elements(samples));
    for thd in [false, true] {
        let name = if thd {
            "front_end+aggregator+thd"
        } else {
            "front_end+aggregator"
        };
        let cfg = config(thd);
        let mut out: Vec<MeasureEvent> = Vec::with_capacity(1 << 16);
        // Steady state: one long stream (the signal is periodic over the buffer, so the blocks
        // are replayed with advancing sample indices).
        let mut m = Measurement::new(&cfg);
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                for blk in blocks.iter_mut() {
                    m.push(black_box(blk), &mut out);
                    blk.start += per_channel;
                }
                black_box(out.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_measure);
criterion_main!(benches);
