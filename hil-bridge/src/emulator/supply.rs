//! What an emulated AC source puts out, as sim-core disturbances: the supply a
//! device-under-test fed by it sees.
//!
//! [`EmulatedOutput::to_disturbances`] converts one source's output (fixed settings, a
//! triggered list or pulse train repeated `count` times, the level it holds afterwards) on
//! the phases it feeds, with the trigger at grid time `t0`, into disturbances such that
//! `SupplyModel::new(&grid, disturbances)` reproduces its RMS envelope and frequency over
//! `[0, until)`. A three-phase device fed by one single-phase source per phase is
//! [`outputs_to_disturbances`] over one output per phase.
//!
//! The mapping, piece by piece of the output (RMS level v, nominal N):
//! - a constant piece at v ≠ N → a sag (v < N), swell (v > N) or interruption (v = 0) of
//!   level v/N lasting the piece (adjacent pieces at the same level merge into one);
//! - a ramp N → v, an optional hold at v, and a ramp v → N of the same length → one
//!   disturbance with that `ramp` (sim-core's trapezoid); any other ramp is refused;
//! - a frequency f ≠ nominal → a frequency step of deviation f − nominal for the piece (steps
//!   only: a frequency ramp is refused);
//! - the output switched off → an interruption over the whole window.
//!
//! Angles come from the grid: the output's phase at the trigger (its phase-sync angle, 0°
//! without sync) must equal L1's angle at `t0` — L1 being the point-on-wave reference of
//! sim-core and of [`crate::source::envelope_program`] — so that onsets land on the same
//! angles; otherwise the conversion is refused.

use sim_core::disturbance::{Disturbance, DisturbanceKind, RmsVariation};
use sim_core::{GridSpec, PhaseSet, Seconds};

use super::EmulatedOutput;

/// Most pieces (list points × passes) converted; a longer output is refused.
pub const MAX_PIECES: usize = 100_000;

/// Volts below this are "zero" (an interruption); levels closer than this are equal.
const VOLTS_EPS: f64 = 1e-5;
/// Times closer than this are equal (rendered dwells carry 6 decimals).
const TIME_EPS: f64 = 2e-6;
const FREQ_EPS: f64 = 1e-6;
const ANGLE_EPS_DEG: f64 = 1e-6;

/// An output that has no sim-core equivalent, or bad arguments.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConvertError {
    #[error("the source output at {at} s (grid time) cannot be converted: {what}")]
    Unsupported { at: Seconds, what: String },
    #[error(
        "the output's phase at the trigger is {start_phase_deg}° but L1 is at {expected_deg}° at \
         t0 = {t0} s: onsets would land on other angles than in sim mode"
    )]
    PhaseMismatch {
        start_phase_deg: f64,
        expected_deg: f64,
        t0: Seconds,
    },
    #[error("the output has more than {max} pieces before {until} s")]
    TooManyPieces { max: usize, until: Seconds },
    #[error("outputs for {first} and {second} disagree on the frequency (it is system-wide in sim-core)")]
    FrequencyDisagrees { first: String, second: String },
    #[error("two outputs feed {phases}")]
    PhasesOverlap { phases: String },
    #[error("invalid conversion: {0}")]
    Invalid(String),
}

/// One piece of the output in grid time: linear in volts and frequency.
#[derive(Debug, Clone, Copy)]
struct Piece {
    start: Seconds,
    end: Seconds,
    v0: f64,
    v1: f64,
    f0: f64,
    f1: f64,
}

fn phase_names(p: PhaseSet) -> String {
    let names: Vec<&str> = p.iter().map(|ph| ph.name()).collect();
    if names.is_empty() {
        "no phase".into()
    } else {
        names.join("+")
    }
}

fn rv(level: f64, duration: Seconds, ramp: Seconds) -> DisturbanceKind {
    let v = RmsVariation {
        level,
        duration,
        ramp,
        phase_jump_deg: 0.0,
    };
    if level <= VOLTS_EPS {
        DisturbanceKind::Interruption(RmsVariation { level: 0.0, ..v })
    } else if level < 1.0 {
        DisturbanceKind::Sag(v)
    } else {
        DisturbanceKind::Swell(v)
    }
}

impl EmulatedOutput {
    /// The pieces of the output over `[0, until)`, the trigger at `t0`.
    fn pieces(&self, t0: Seconds, until: Seconds) -> Result<Vec<Piece>, ConvertError> {
        let fixed = |start: f64, end: f64, (v, f): (f64, f64)| Piece {
            start,
            end,
            v0: v,
            v1: v,
            f0: f,
            f1: f,
        };
        let Some(tr) = &self.transient else {
            return Ok(vec![fixed(0.0, until, self.fixed)]);
        };
        let mut out = Vec::new();
        if t0 > 0.0 {
            out.push(fixed(0.0, t0, self.fixed));
        }
        let pass: f64 = tr.segments.iter().map(|s| s.duration).sum();
        if !(pass.is_finite() && pass > 0.0)
            || tr
                .segments
                .iter()
                .any(|s| s.duration.is_nan() || s.duration <= 0.0)
        {
            return Err(ConvertError::Unsupported {
                at: t0,
                what: format!("a transient whose segments last {pass} s in all"),
            });
        }
        let mut t = t0;
        'passes: for _ in 0..tr.count {
            for s in &tr.segments {
                if t >= until {
                    break 'passes;
                }
                if out.len() >= MAX_PIECES {
                    return Err(ConvertError::TooManyPieces {
                        max: MAX_PIECES,
                        until,
                    });
                }
                out.push(Piece {
                    start: t,
                    end: t + s.duration,
                    v0: s.volts_start,
                    v1: s.volts_end,
                    f0: s.freq_start,
                    f1: s.freq_end,
                });
                t += s.duration;
            }
        }
        if t < until {
            out.push(fixed(t, until, tr.end));
        }
        Ok(out)
    }

    /// The RMS-variation and frequency disturbances, kept apart.
    fn convert(
        &self,
        grid: &GridSpec,
        phases: PhaseSet,
        t0: Seconds,
        until: Seconds,
    ) -> Result<(Vec<Disturbance>, Vec<Disturbance>), ConvertError> {
        let n = grid.nominal;
        if !(n.is_finite() && n > 0.0 && grid.frequency.is_finite() && grid.frequency > 0.0) {
            return Err(ConvertError::Invalid(format!(
                "grid nominal {n} V / {} Hz",
                grid.frequency
            )));
        }
        if !(t0.is_finite() && t0 >= 0.0 && until.is_finite() && until > t0) {
            return Err(ConvertError::Invalid(format!(
                "need 0 ≤ t0 < until, got t0 = {t0} s, until = {until} s"
            )));
        }
        let dist = |at: Seconds, phases: PhaseSet, kind: DisturbanceKind| Disturbance {
            at,
            point_on_wave_deg: None,
            phases,
            groups: vec![],
            kind,
        };
        if !self.output_on {
            return Ok((vec![dist(0.0, phases, rv(0.0, until, 0.0))], vec![]));
        }
        if let Some(tr) = &self.transient {
            let expected = (360.0 * grid.frequency * t0).rem_euclid(360.0);
            let got = tr.start_phase_deg.rem_euclid(360.0);
            let diff = (got - expected).abs();
            if diff.min(360.0 - diff) > ANGLE_EPS_DEG {
                return Err(ConvertError::PhaseMismatch {
                    start_phase_deg: tr.start_phase_deg,
                    expected_deg: expected,
                    t0,
                });
            }
        }
        let pieces = self.pieces(t0, until)?;
        let bad = |p: &Piece, what: String| ConvertError::Unsupported { at: p.start, what };
        let mut freq = Vec::new();
        for p in &pieces {
            if ![p.v0, p.v1, p.f0, p.f1].iter().all(|x| x.is_finite()) {
                return Err(bad(p, "a non-finite level or frequency".into()));
            }
            if (p.f0 - p.f1).abs() > FREQ_EPS {
                return Err(bad(
                    p,
                    format!(
                        "a frequency ramp {} → {} Hz (only steps convert)",
                        p.f0, p.f1
                    ),
                ));
            }
            let dev = p.f0 - grid.frequency;
            if dev.abs() > FREQ_EPS {
                freq.push(dist(
                    p.start,
                    PhaseSet::ALL,
                    DisturbanceKind::Frequency {
                        deviation: dev,
                        ramp: 0.0,
                        duration: p.end - p.start,
                        return_to_nominal: true,
                    },
                ));
            }
        }
        let at_nominal = |v: f64| (v - n).abs() <= VOLTS_EPS;
        let same = |a: f64, b: f64| (a - b).abs() <= VOLTS_EPS;
        let mut volts = Vec::new();
        let mut i = 0;
        while i < pieces.len() {
            let p = pieces[i];
            if same(p.v0, p.v1) {
                // Merge the run of constant pieces at this level.
                let mut end = p.end;
                let mut j = i + 1;
                while j < pieces.len() && same(pieces[j].v0, p.v0) && same(pieces[j].v1, p.v0) {
                    end = pieces[j].end;
                    j += 1;
                }
                if !at_nominal(p.v0) {
                    volts.push(dist(p.start, phases, rv(p.v0 / n, end - p.start, 0.0)));
                }
                i = j;
                continue;
            }
            // A ramp: it must open a trapezoid N → v (hold at v) v → N with equal ramps.
            let level = p.v1;
            let ramp = p.end - p.start;
            let mut j = i + 1;
            let mut hold = 0.0;
            while j < pieces.len() && same(pieces[j].v0, level) && same(pieces[j].v1, level) {
                hold += pieces[j].end - pieces[j].start;
                j += 1;
            }
            let down = pieces.get(j);
            let trapezoid = at_nominal(p.v0)
                && !at_nominal(level)
                && down.is_some_and(|d| {
                    same(d.v0, level)
                        && at_nominal(d.v1)
                        && ((d.end - d.start) - ramp).abs() <= TIME_EPS
                });
            if !trapezoid {
                return Err(bad(
                    &p,
                    format!(
                        "a ramp {} → {} V over {ramp} s that is not the edge of a trapezoid from \
                         and back to nominal {n} V with equal ramps",
                        p.v0, p.v1
                    ),
                ));
            }
            volts.push(dist(p.start, phases, rv(level / n, ramp + hold, ramp)));
            i = j + 1;
        }
        Ok((volts, freq))
    }

    /// The disturbances on `phases` that make `SupplyModel::new(grid, disturbances)` reproduce
    /// this output over `[0, until)`, the trigger at grid time `t0` (see the module doc for
    /// the mapping). `groups` is left empty (all groups); `point_on_wave_deg` is `None`, onsets
    /// are already on their angles.
    pub fn to_disturbances(
        &self,
        grid: &GridSpec,
        phases: PhaseSet,
        t0: Seconds,
        until: Seconds,
    ) -> Result<Vec<Disturbance>, ConvertError> {
        let (mut v, f) = self.convert(grid, phases, t0, until)?;
        v.extend(f);
        Ok(v)
    }
}

/// The supply of a device fed by several sources, one per set of phases (e.g. one single-phase
/// source per phase of a three-phase meter), all triggered at `t0`. The sets must not overlap;
/// frequency is system-wide in sim-core, so the outputs must agree on it (it is taken once).
pub fn outputs_to_disturbances(
    grid: &GridSpec,
    outputs: &[(PhaseSet, &EmulatedOutput)],
    t0: Seconds,
    until: Seconds,
) -> Result<Vec<Disturbance>, ConvertError> {
    let mut all = Vec::new();
    let mut seen = PhaseSet::NONE;
    let mut freq: Option<(PhaseSet, Vec<Disturbance>)> = None;
    for (phases, out) in outputs {
        let overlap = PhaseSet::of(
            &phases
                .iter()
                .filter(|p| seen.contains(*p))
                .collect::<Vec<_>>(),
        );
        if !overlap.is_empty() {
            return Err(ConvertError::PhasesOverlap {
                phases: phase_names(overlap),
            });
        }
        seen = PhaseSet::of(&seen.iter().chain(phases.iter()).collect::<Vec<_>>());
        let (v, f) = out.convert(grid, *phases, t0, until)?;
        all.extend(v);
        match &freq {
            None => freq = Some((*phases, f)),
            Some((first, f0)) => {
                let agree = f0.len() == f.len()
                    && f0.iter().zip(&f).all(|(a, b)| {
                        (a.at - b.at).abs() <= TIME_EPS
                            && match (&a.kind, &b.kind) {
                                (
                                    DisturbanceKind::Frequency {
                                        deviation: da,
                                        duration: ta,
                                        ..
                                    },
                                    DisturbanceKind::Frequency {
                                        deviation: db,
                                        duration: tb,
                                        ..
                                    },
                                ) => (da - db).abs() <= FREQ_EPS && (ta - tb).abs() <= TIME_EPS,
                                _ => false,
                            }
                    });
                if !agree {
                    return Err(ConvertError::FrequencyDisagrees {
                        first: phase_names(*first),
                        second: phase_names(*phases),
                    });
                }
            }
        }
    }
    all.extend(freq.map(|(_, f)| f).unwrap_or_default());
    Ok(all)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::emulator::{Instrument, Segment, Transient};
    use crate::source::Dialect;
    use sim_core::synth::SupplyModel;
    use sim_core::{Phase, PhaseSystem};

    fn grid() -> GridSpec {
        GridSpec {
            nominal: 230.0,
            frequency: 50.0,
            system: PhaseSystem::ThreePhase,
            sample_rate: 10_000.0,
            load: None,
        }
    }

    fn seg(start: f64, duration: f64, v0: f64, v1: f64, f: f64) -> Segment {
        Segment {
            start,
            duration,
            volts_start: v0,
            volts_end: v1,
            freq_start: f,
            freq_end: f,
        }
    }

    fn out(segments: Vec<Segment>, count: u32, end: (f64, f64)) -> EmulatedOutput {
        EmulatedOutput {
            output_on: true,
            fixed: (230.0, 50.0),
            transient: Some(Transient {
                segments,
                count,
                start_phase_deg: 0.0,
                end,
            }),
        }
    }

    /// The sim-core supply built from the conversion equals the emulator's own output at
    /// every sample (avoiding the exact edges, where both step).
    fn assert_reproduces(o: &EmulatedOutput, ch: usize, t0: f64, until: f64) {
        let g = grid();
        let ds = o
            .to_disturbances(
                &g,
                PhaseSet::of(&[Phase::from_index(ch).unwrap()]),
                t0,
                until,
            )
            .unwrap();
        let m = SupplyModel::new(&g, ds);
        let mut t = 0.000_37;
        while t < until {
            let want = o.rms_at(t - t0);
            let got = 230.0 * m.envelope(ch, t);
            assert!((got - want).abs() < 1e-6, "t = {t}: {got} vs {want}");
            assert!((m.frequency(t) - o.freq_at(t - t0)).abs() < 1e-9, "t = {t}");
            for other in (0..3).filter(|c| *c != ch) {
                assert_eq!(m.envelope(other, t), 1.0);
            }
            t += 0.001_13;
        }
    }

    #[test]
    fn list_levels_become_sags_swells_interruptions_and_frequency_steps() {
        let o = out(
            vec![
                seg(0.0, 0.1, 230.0, 230.0, 50.0),
                seg(0.1, 0.2, 172.5, 172.5, 50.0),
                seg(0.3, 0.1, 172.5, 172.5, 50.0),
                seg(0.4, 0.1, 0.0, 0.0, 50.0),
                seg(0.5, 0.1, 276.0, 276.0, 51.0),
            ],
            2,
            (230.0, 50.0),
        );
        let ds = o.to_disturbances(&grid(), PhaseSet::ALL, 0.0, 1.5).unwrap();
        let kinds: Vec<(&str, f64)> = ds.iter().map(|d| (d.kind.name(), d.at)).collect();
        // Two passes; the two adjacent 172.5 V points merge into one 0.3 s sag.
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        let want = [
            ("sag", 0.1),
            ("interruption", 0.4),
            ("swell", 0.5),
            ("sag", 0.7),
            ("interruption", 1.0),
            ("swell", 1.1),
            ("frequency", 0.5),
            ("frequency", 1.1),
        ];
        assert_eq!(kinds.len(), want.len(), "{kinds:?}");
        for ((k, at), (wk, wat)) in kinds.iter().zip(want) {
            assert!(*k == wk && close(*at, wat), "{kinds:?}");
        }
        match &ds[0].kind {
            DisturbanceKind::Sag(v) => {
                assert!(close(v.level, 0.75) && close(v.duration, 0.3) && v.ramp == 0.0)
            }
            k => panic!("{k:?}"),
        }
        assert_reproduces(&o, 0, 0.0, 1.5);
        // Triggered later, on an L1 zero crossing (t0 = 7 cycles).
        assert_reproduces(&o, 1, 0.14, 1.5);
    }

    #[test]
    fn symmetric_ramps_become_one_trapezoid_and_others_are_refused() {
        let o = out(
            vec![
                seg(0.0, 0.5, 230.0, 230.0, 50.0),
                seg(0.5, 0.02, 230.0, 200.0, 50.0),
                seg(0.52, 0.3, 200.0, 200.0, 50.0),
                seg(0.82, 0.02, 200.0, 230.0, 50.0),
                // Up and straight down again, no hold.
                seg(0.84, 0.01, 230.0, 250.0, 50.0),
                seg(0.85, 0.01, 250.0, 230.0, 50.0),
            ],
            1,
            (230.0, 50.0),
        );
        let ds = o.to_disturbances(&grid(), PhaseSet::ALL, 0.0, 1.0).unwrap();
        assert_eq!(ds.len(), 2, "{ds:?}");
        match &ds[0].kind {
            DisturbanceKind::Sag(v) => assert!(
                (v.ramp - 0.02).abs() < 1e-12 && (v.duration - 0.32).abs() < 1e-12,
                "{v:?}"
            ),
            k => panic!("{k:?}"),
        }
        assert_reproduces(&o, 2, 0.0, 1.0);

        let lopsided = out(
            vec![
                seg(0.0, 0.02, 230.0, 200.0, 50.0),
                seg(0.02, 0.1, 200.0, 200.0, 50.0),
                seg(0.12, 0.04, 200.0, 230.0, 50.0),
            ],
            1,
            (230.0, 50.0),
        );
        let e = lopsided
            .to_disturbances(&grid(), PhaseSet::ALL, 0.0, 1.0)
            .unwrap_err();
        assert!(
            matches!(e, ConvertError::Unsupported { at, .. } if at == 0.0),
            "{e}"
        );
        assert!(e.to_string().contains("230 → 200 V"), "{e}");
        // A ramp that never comes back.
        let open = out(vec![seg(0.0, 0.02, 230.0, 200.0, 50.0)], 1, (200.0, 50.0));
        assert!(open
            .to_disturbances(&grid(), PhaseSet::ALL, 0.0, 1.0)
            .is_err());
    }

    #[test]
    fn fixed_off_frequency_ramps_and_phase_mismatches() {
        let g = grid();
        let fixed = EmulatedOutput {
            output_on: true,
            fixed: (207.0, 49.5),
            transient: None,
        };
        let ds = fixed.to_disturbances(&g, PhaseSet::ALL, 0.0, 10.0).unwrap();
        assert_eq!(ds.len(), 2);
        assert!(
            matches!(ds[0].kind, DisturbanceKind::Sag(v) if (v.level - 0.9).abs() < 1e-12 && v.duration == 10.0)
        );
        assert!(
            matches!(ds[1].kind, DisturbanceKind::Frequency { deviation, .. } if (deviation + 0.5).abs() < 1e-12)
        );
        let nominal = EmulatedOutput {
            fixed: (230.0, 50.0),
            ..fixed.clone()
        };
        assert_eq!(
            nominal.to_disturbances(&g, PhaseSet::ALL, 0.0, 10.0),
            Ok(vec![])
        );
        let off = EmulatedOutput {
            output_on: false,
            ..fixed.clone()
        };
        let ds = off.to_disturbances(&g, PhaseSet::ALL, 0.0, 10.0).unwrap();
        assert!(
            matches!(ds.as_slice(), [d] if matches!(d.kind, DisturbanceKind::Interruption(v) if v.level == 0.0 && v.duration == 10.0))
        );

        let mut ramp = out(vec![seg(0.0, 0.1, 230.0, 230.0, 50.0)], 1, (230.0, 50.0));
        if let Some(tr) = ramp.transient.as_mut() {
            tr.segments[0].freq_end = 52.0;
        }
        let e = ramp
            .to_disturbances(&g, PhaseSet::ALL, 0.0, 1.0)
            .unwrap_err();
        assert!(e.to_string().contains("frequency ramp 50 → 52 Hz"), "{e}");

        let mut synced = out(vec![seg(0.0, 0.1, 100.0, 100.0, 50.0)], 1, (230.0, 50.0));
        if let Some(tr) = synced.transient.as_mut() {
            tr.start_phase_deg = 90.0;
        }
        // 90° is L1's angle a quarter cycle in, not at 0.
        assert!(matches!(
            synced.to_disturbances(&g, PhaseSet::ALL, 0.0, 1.0),
            Err(ConvertError::PhaseMismatch { .. })
        ));
        assert!(synced
            .to_disturbances(&g, PhaseSet::ALL, 0.005, 1.0)
            .is_ok());
        assert!(matches!(
            synced.to_disturbances(&g, PhaseSet::ALL, 2.0, 1.0),
            Err(ConvertError::Invalid(_))
        ));
    }

    #[test]
    fn one_source_per_phase() {
        let g = grid();
        let sag = out(vec![seg(0.0, 0.2, 115.0, 115.0, 50.0)], 1, (230.0, 50.0));
        let nominal = EmulatedOutput {
            output_on: true,
            fixed: (230.0, 50.0),
            transient: None,
        };
        let l = |p: Phase| PhaseSet::of(&[p]);
        let ds = outputs_to_disturbances(
            &g,
            &[
                (l(Phase::L1), &sag),
                (l(Phase::L2), &nominal),
                (l(Phase::L3), &sag),
            ],
            0.0,
            1.0,
        )
        .unwrap();
        let m = SupplyModel::new(&g, ds);
        assert_eq!(
            [m.envelope(0, 0.1), m.envelope(1, 0.1), m.envelope(2, 0.1)],
            [0.5, 1.0, 0.5]
        );
        assert_eq!(
            outputs_to_disturbances(&g, &[(PhaseSet::ALL, &sag), (l(Phase::L2), &sag)], 0.0, 1.0),
            Err(ConvertError::PhasesOverlap {
                phases: "L2".into()
            })
        );
        let fast = EmulatedOutput {
            fixed: (230.0, 51.0),
            ..nominal.clone()
        };
        assert!(matches!(
            outputs_to_disturbances(
                &g,
                &[(l(Phase::L1), &nominal), (l(Phase::L2), &fast)],
                0.0,
                1.0
            ),
            Err(ConvertError::FrequencyDisagrees { .. })
        ));
    }

    #[test]
    fn an_instrument_list_converts() {
        let mut i = Instrument::new(Dialect::Chroma, 300.0);
        for l in [
            "SOUR:VOLT:AC 230",
            "SOUR:FREQ 50",
            "OUTP:MODE LIST",
            "LIST:BASE CYCLE",
            "LIST:VOLT:AC:STAR 230,115",
            "LIST:VOLT:AC:END 230,115",
            "LIST:FREQ:STAR 50,50",
            "LIST:FREQ:END 50,50",
            "LIST:DWEL 5,10",
            "LIST:COUN 3",
            "OUTP ON",
            "TRIG ON",
        ] {
            i.handle_line(l);
        }
        assert!(i.errors().is_empty());
        assert_reproduces(&i.output(), 0, 0.0, 1.2);
    }

    #[test]
    fn an_instrument_pulse_train_converts_to_repeated_sags() {
        let mut i = Instrument::new(Dialect::Ametek, 300.0);
        for l in [
            "FREQ 50",
            "VOLT 230",
            "VOLT:MODE PULS",
            "VOLT:TRIG 161",
            "PULS:HOLD WIDT",
            "PULS:WIDT 0.1",
            "PULS:PER 0.5",
            "PULS:COUN 3",
            "OUTP ON",
            "INIT",
        ] {
            i.handle_line(l);
        }
        assert!(i.errors().is_empty());
        let o = i.output();
        let ds = o.to_disturbances(&grid(), PhaseSet::ALL, 0.0, 2.0).unwrap();
        let ats: Vec<f64> = ds.iter().map(|d| d.at).collect();
        assert_eq!(ats, vec![0.0, 0.5, 1.0]);
        assert!(ds
            .iter()
            .all(|d| matches!(d.kind, DisturbanceKind::Sag(v) if (v.level - 0.7).abs() < 1e-12 && (v.duration - 0.1).abs() < 1e-12)));
        assert_reproduces(&o, 2, 0.0, 2.0);
    }
}
