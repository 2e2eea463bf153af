#!/usr/bin/env python3
"""Interop check of `gridloop export --comtrade` against the PyPI `comtrade` reader.

For two library scenarios (ASCII 1999 and BINARY 2013) and one windowed export, it runs the
release binary, loads the files with `comtrade` 0.2.0 (the reader CI pins), and checks:

- the header: revision, file type, line frequency, one sample rate, sample count
  (round(duration · fs)), channel ids, phases and units, start and trigger times;
- every sample against an independent float64 recomputation of the waveform
  (tools/reference/pq_reference.py's `synth`, which shares no code with sim-core): the error
  must stay within the channel's declared precision a/2 plus a small synthesis allowance;
- RMS over whole cycles of the steady part equals the nominal within a/2, and the sag's RMS its
  residual (sag-75pct: 180 V within a/2, and ± 0.2 %); for the loaded grid the RMS current and
  the active power (240 V × 10 A × 0.8 = 1920 W) within the bound the quantization allows;
- the BINARY layout as raw bytes (row size, sample numbers, µs timestamps).

Usage: python3 tools/comtrade_interop.py   (from anywhere; builds the binary if needed)
Exit code 1 if a check fails.
"""

from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
import tempfile
import warnings

import comtrade
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))
import pq_reference as ref  # noqa: E402  (independent numpy model of the waveforms)

BIN = os.path.join(ROOT, "target", "release", "gridloop")
LIB = os.path.join(ROOT, "scenarios", "library")
# Synthesis allowance on top of a/2, relative to a channel's peak: gridloop stores f32 samples
# (half an ulp is 6e-8 relative) computed from f64 phasor rotations.
SYNTH_REL = 1e-7

failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("  ok    " if ok else "  FAIL  ") + what)
    if not ok:
        failures.append(what)


def build() -> None:
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "gridloop"], cwd=ROOT,
                   check=True)


def export(scenario: str, out: str, *flags: str) -> None:
    cmd = [BIN, "export", scenario, "--comtrade", out, *flags]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    print(r.stdout, end="")


def load(cfg: str):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a reader warning is a defect of ours
        return comtrade.load(cfg, use_numpy_arrays=True, use_double_precision=True)


def cycles_rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def check_header(rec, scn, *, rev: str, ft: str, first: int, n: int, with_current: bool,
                 trigger: float) -> None:
    cfg = rec.cfg
    fs = scn.grid.fs
    check(rec.rev_year == rev, f"rev_year {rec.rev_year!r} == {rev!r}")
    check(rec.ft == ft, f"file type {rec.ft!r} == {ft!r}")
    check(rec.frequency == scn.grid.f0, f"line frequency {rec.frequency} == {scn.grid.f0}")
    check(cfg.nrates == 1 and cfg.sample_rates == [[fs, n]],
          f"sample rates {cfg.sample_rates} == [[{fs}, {n}]]")
    check(rec.total_samples == n, f"total samples {rec.total_samples} == {n}")
    letters = "ABC"[: len(scn.grid.phases)]
    ids = [f"V{p}" for p in letters] + ([f"I{p}" for p in letters] if with_current else [])
    units = ["V"] * len(letters) + (["A"] * len(letters) if with_current else [])
    check(rec.analog_channel_ids == ids, f"channel ids {rec.analog_channel_ids} == {ids}")
    got_units = [c.uu for c in cfg.analog_channels]
    check(got_units == units, f"units {got_units} == {units}")
    check(rec.analog_phases == list(letters) * (2 if with_current else 1),
          f"phases {rec.analog_phases}")
    check(rec.status_count == 0, "no status channels")
    start = (rec.start_timestamp - rec.start_timestamp.replace(hour=0, minute=0, second=0,
                                                             microsecond=0)).total_seconds()
    check(rec.start_timestamp.year == 2000 and abs(start - first / fs) <= 1e-6,
          f"start {rec.start_timestamp} == epoch + {first / fs} s")
    check(abs(rec.trigger_time - (trigger - first / fs)) <= 1e-6,
          f"trigger {rec.trigger_time:.6f} s after start == {trigger - first / fs:.6f} s")
    t = np.asarray(rec.time)
    check(np.allclose(t, np.arange(n) / fs, rtol=0, atol=1e-9), "sample times k/fs")


def check_samples(rec, scn, group: str, first: int, n: int, with_current: bool) -> list:
    """Per-sample comparison with the reference model; returns the decoded arrays."""
    fs = scn.grid.fs
    t = (first + np.arange(n)) / fs
    v, i = ref.synth(scn, group, t, with_current=with_current)
    want = list(v) + (list(i) if with_current else [])
    got = [np.asarray(x) for x in rec.analog]
    for c, (g, w) in enumerate(zip(got, want)):
        a = rec.cfg.analog_channels[c].a
        eps = SYNTH_REL * float(np.max(np.abs(w)))
        err = float(np.max(np.abs(g - w)))
        check(err <= a / 2 + eps,
              f"{rec.analog_channel_ids[c]}: max |sample − reference| {err:.4e} ≤ a/2 {a / 2:.4e}"
              f" (+{eps:.1e})")
    return got


def sag_case(tmp: str) -> None:
    path = os.path.join(LIB, "sags-swells", "sag-75pct-12-cycles.yaml")
    scn = ref.load_scenario(path)
    fs, f0 = scn.grid.fs, scn.grid.f0
    n = round(scn.duration * fs)
    sag = next(e for e in scn.events if e.kind == "sag")
    print(f"sag-75pct-12-cycles, ASCII 1999 ({n} samples at {fs:g} Hz, sag onset {sag.onset:.6f} s)")
    out = os.path.join(tmp, "ascii")
    export(path, out, "--format", "ascii", "--rev", "1999")
    rec = load(os.path.join(out, "sag-75pct-12-cycles.cfg"))
    check_header(rec, scn, rev="1999", ft="ASCII", first=0, n=n, with_current=False,
                 trigger=sag.onset)
    got = check_samples(rec, scn, scn.groups[0].name, 0, n, False)

    a = rec.cfg.analog_channels[0].a
    per_s = round(fs)  # 1 s = 60 whole cycles = 12800 samples
    steady = cycles_rms(got[0][:per_s])
    check(abs(steady - scn.grid.nominal) <= a / 2 + SYNTH_REL * scn.grid.vpk,
          f"VA RMS over the 60 cycles before the sag {steady:.5f} V == {scn.grid.nominal} V ± a/2")
    k0 = math.ceil(sag.onset * fs - 1e-6)
    k1 = k0 + round(sag.p["duration"] * fs)  # 12 cycles = 2560 samples, all inside the sag
    residual = float(sag.p["residual"]) * scn.grid.nominal
    in_sag = cycles_rms(got[0][k0:k1])
    check(abs(in_sag - residual) <= a / 2 + SYNTH_REL * scn.grid.vpk,
          f"VA RMS over the sag's 12 cycles {in_sag:.5f} V == {residual} V ± a/2 ({a / 2:.2e} V)")
    check(abs(in_sag / residual - 1) <= 0.002, f"VA sag RMS within 0.2 % of {residual} V")
    for c in (1, 2):
        r = cycles_rms(got[c][k0:k1])
        tol = rec.cfg.analog_channels[c].a / 2 + SYNTH_REL * scn.grid.vpk
        check(abs(r - scn.grid.nominal) <= tol,
              f"{rec.analog_channel_ids[c]} RMS during the sag {r:.5f} V == {scn.grid.nominal} V")

    # The same waveform through a window, BINARY 2013: same samples within both precisions.
    out_w = os.path.join(tmp, "window")
    export(path, out_w, "--format", "binary", "--rev", "2013", "--from", "0.9s", "--to", "78cycles")
    w = load(os.path.join(out_w, "sag-75pct-12-cycles.cfg"))
    w0, w1 = round(0.9 * fs), round(78 / f0 * fs)
    check(w.total_samples == w1 - w0, f"window 0.9 s .. 78 cycles: {w.total_samples} == {w1 - w0}")
    check_header(w, scn, rev="2013", ft="BINARY", first=w0, n=w1 - w0, with_current=False,
                 trigger=sag.onset)
    for c in range(3):
        tol = (rec.cfg.analog_channels[c].a + w.cfg.analog_channels[c].a) / 2
        err = float(np.max(np.abs(np.asarray(w.analog[c]) - got[c][w0:w1])))
        check(err <= tol + 1e-9, f"window {w.analog_channel_ids[c]} matches the full export: "
                                 f"{err:.3e} ≤ {tol:.3e}")


def energy_case(tmp: str) -> None:
    path = os.path.join(LIB, "distortion", "energy-pf-0.8.yaml")
    scn = ref.load_scenario(path)
    fs = scn.grid.fs
    n = round(scn.duration * fs)
    print(f"energy-pf-0.8, BINARY 2013 ({n} samples at {fs:g} Hz, 3 V + 3 I channels)")
    out = os.path.join(tmp, "binary")
    export(path, out, "--format", "binary", "--rev", "2013")
    cfg_path = os.path.join(out, "energy-pf-0.8.cfg")
    rec = load(cfg_path)
    check_header(rec, scn, rev="2013", ft="BINARY", first=0, n=n, with_current=True, trigger=0.0)
    check((rec.cfg._time_code, rec.cfg._local_code) == ("0", "0"), "time_code,local_code 0,0")
    got = check_samples(rec, scn, scn.groups[0].name, 0, n, True)

    # Raw layout: u32 n, u32 µs timestamp, 6 × i16, little-endian.
    with open(os.path.join(out, "energy-pf-0.8.dat"), "rb") as f:
        raw = f.read()
    row = 4 + 4 + 2 * 6
    check(len(raw) == n * row, f"BINARY size {len(raw)} == {n} × {row}")
    rows = np.frombuffer(raw, dtype=np.dtype([("n", "<u4"), ("t", "<u4"), ("x", "<i2", 6)]))
    check(bool(np.all(rows["n"] == np.arange(1, n + 1))), "sample numbers 1..n")
    # Rounded half away from zero (numpy's round is half to even).
    want_t = np.floor(np.arange(n) / fs * 1e6 + 0.5)
    bad_t = int(np.count_nonzero(rows["t"] != want_t))
    check(bad_t == 0, f"timestamps round(k/fs) µs ({bad_t} differ)")
    check(int(np.abs(rows["x"]).max()) <= 32767, "no value outside ±32767")

    v_nom, amps = scn.grid.nominal, float(scn.grid.load["current"])
    pf = float(scn.grid.load["power_factor"])
    for c in range(3):
        av, ai = rec.cfg.analog_channels[c].a, rec.cfg.analog_channels[c + 3].a
        rv, ri = cycles_rms(got[c]), cycles_rms(got[c + 3])  # 61 s = 3660 whole cycles
        check(abs(rv - v_nom) <= av / 2 + SYNTH_REL * scn.grid.vpk,
              f"V{'ABC'[c]} RMS {rv:.5f} V == {v_nom} V ± a/2 ({av / 2:.2e})")
        check(abs(ri - amps) <= ai / 2 + SYNTH_REL * math.sqrt(2) * amps,
              f"I{'ABC'[c]} RMS {ri:.6f} A == {amps} A ± a/2 ({ai / 2:.2e})")
        p = float(np.mean(got[c] * got[c + 3]))
        bound = (ai / 2) * math.sqrt(2) * v_nom + (av / 2) * math.sqrt(2) * amps + av * ai / 4
        want = v_nom * amps * pf
        check(abs(p - want) <= bound + 1e-3,
              f"P{'ABC'[c]} {p:.4f} W == {want:.1f} W ± {bound:.3f} W (quantization bound)")


def main() -> int:
    if not os.environ.get("GRIDLOOP_NO_BUILD"):
        build()
    with tempfile.TemporaryDirectory(prefix="gridloop-comtrade-") as tmp:
        sag_case(tmp)
        energy_case(tmp)
    if failures:
        print(f"\n{len(failures)} check(s) failed:")
        for f in failures:
            print(f"  {f}")
        return 1
    print("\nall COMTRADE interop checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
