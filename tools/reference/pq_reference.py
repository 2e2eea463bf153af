#!/usr/bin/env python3
"""Independent reference implementation of gridloop's synthesis and IEC 61000-4-30 measurement.

Written from the *definitions* only (docs/scenario-format.md, the doc comments of
sim-core/src/disturbance.rs, /work/shared/STANDARDS.md §4, §5, §7, §8); no code is shared with
sim-core. For every scenario it synthesizes the probe meter's waveform (meter 0 of the group an
expectation names, default the first group) in float64 at the grid's sample rate, measures it
(half-cycle boundaries, Urms(1/2), 10/12-cycle windows, THD with subgroups, frequency, dips,
swells, interruptions, trips, active power, energy) and compares with the scenario's
`expect` items.

Usage:
    pq_reference.py [--json] [--verbose] FILE_OR_DIR...

Exit code 1 if any check fails, 0 otherwise (2 on a file that cannot be read).

Assumptions where the definitions are ambiguous are marked "ASSUMPTION" in the comments.
Things not modelled: noise (a scenario with noise is checked against its noise-free values with
the file's tolerance, nothing widened), ADC quantization (warned), network events (ignored: they
do not change the measured waveform).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field

import numpy as np
import yaml

# --------------------------------------------------------------------------------------------
# Units and parsing
# --------------------------------------------------------------------------------------------

_DUR_RE = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|min|h|cycles)\s*$")


def parse_duration(value, f0: float) -> float:
    """Duration string with a unit -> seconds (cycles are of the nominal frequency)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError(f"duration without a unit: {value!r}")
    m = _DUR_RE.match(str(value))
    if not m:
        raise ValueError(f"bad duration {value!r}")
    x = float(m.group(1))
    unit = m.group(2)
    return {"ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "cycles": 1.0 / f0}[unit] * x


def parse_tolerance(tol, base: float) -> float:
    """Tolerance: a number in the quantity's unit, or "x%" of `base`."""
    if isinstance(tol, str) and tol.strip().endswith("%"):
        return abs(base) * float(tol.strip()[:-1]) / 100.0
    return float(tol)


PHASE_NAMES = ["L1", "L2", "L3"]

VOLTAGE_KINDS = {
    "sag", "swell", "interruption", "harmonics", "interharmonic", "flicker",
    "oscillatory_transient", "impulsive_transient", "notch", "dc_offset", "noise",
    "frequency", "unbalance", "thermal_drift",
}
NETWORK_KINDS = {"rf_loss", "latency", "packet_loss"}


@dataclass
class Grid:
    nominal: float
    f0: float
    phases: list  # channel names
    offsets_deg: list  # fundamental angle offset per channel
    fs: float
    load: dict | None

    @property
    def vpk(self) -> float:
        return math.sqrt(2.0) * self.nominal


@dataclass
class Event:
    kind: str
    at: float  # as written
    onset: float  # after point_on_wave
    p: dict  # parameters (seconds already converted where the field is a duration)
    phases: list  # channel names affected
    groups: list  # group names; empty = all

    def applies(self, group: str, phase: str) -> bool:
        if self.groups and group not in self.groups:
            return False
        return phase in self.phases

    @property
    def end(self) -> float:
        d = self.p.get("duration", 0.0)
        if self.kind in ("sag", "swell", "interruption"):
            return self.onset + d + self.p.get("ramp", 0.0)
        return self.onset + d


@dataclass
class Group:
    name: str
    thresholds: dict
    calibration: dict
    adc: dict | None
    fidelity: str


@dataclass
class Scenario:
    path: str
    name: str
    duration: float
    grid: Grid
    pq: dict
    groups: list
    events: list
    expect: list
    raw: dict = field(default_factory=dict)


def onset_with_point_on_wave(at: float, pow_deg, f0: float) -> float:
    """Next t >= at where L1's nominal-frequency angle 360·f0·t equals pow_deg (mod 360)."""
    if pow_deg is None:
        return at
    frac = (float(pow_deg) % 360.0) / 360.0
    k = math.ceil(at * f0 - frac - 1e-9)
    return (k + frac) / f0


def load_scenario(path: str) -> Scenario:
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    g = raw["grid"]
    f0 = float(g.get("frequency", 60.0))
    ph = g.get("phases", 3)
    if ph in (1, "1"):
        names, offs = ["L1"], [0.0]
    elif ph in (2, "2", "split"):
        names, offs = ["L1", "L2"], [0.0, 180.0]
    else:
        names, offs = ["L1", "L2", "L3"], [0.0, -120.0, 120.0]
    grid = Grid(
        nominal=float(g["nominal"]),
        f0=f0,
        phases=names,
        offsets_deg=offs,
        fs=float(g.get("sample_rate", 12800)),
        load=g.get("load"),
    )
    pq = {"dip": 90.0, "swell": 110.0, "interruption": 10.0, "hysteresis": 2.0}
    pq.update({k: float(v) for k, v in (raw.get("pq") or {}).items()})

    groups = []
    for m in raw["meters"]:
        th = {"upper": 252.0, "lower": 210.0, "hysteresis": 2.0, "min_duration": 0.0}
        for k, v in (m.get("thresholds") or {}).items():
            th[k] = parse_duration(v, f0) if k == "min_duration" else float(v)
        cal = {"L1": 1.0, "L2": 1.0, "L3": 1.0}
        cal.update({k: float(v) for k, v in (m.get("calibration") or {}).items()})
        groups.append(Group(m["group"], th, cal, m.get("adc"), m.get("fidelity", "waveform")))

    dur_fields = {"duration", "ramp", "tau", "rise", "fall", "width", "extra", "jitter"}
    events = []
    for e in raw.get("events") or []:
        at = parse_duration(e["at"], f0)
        kinds = [k for k in e if k != "at"]
        if len(kinds) != 1:
            raise ValueError(f"{path}: event with kinds {kinds}")
        kind = kinds[0]
        body = dict(e[kind] or {})
        phases = body.pop("phases", None)
        groups_ = body.pop("groups", None) or []
        p = {}
        for k, v in body.items():
            p[k] = parse_duration(v, f0) if k in dur_fields else v
        if kind == "frequency":
            phases = None  # applies to all phases
        phases = list(phases) if phases else list(names)
        pow_deg = p.get("point_on_wave")
        onset = onset_with_point_on_wave(at, pow_deg, f0)
        events.append(Event(kind, at, onset, p, phases, list(groups_)))
    return Scenario(
        path=path,
        name=raw.get("name", os.path.basename(path)),
        duration=parse_duration(raw["duration"], f0),
        grid=grid,
        pq=pq,
        groups=groups,
        events=events,
        expect=raw.get("expect") or [],
        raw=raw,
    )


# --------------------------------------------------------------------------------------------
# Synthesis
# --------------------------------------------------------------------------------------------


def _window(t, t0, t1):
    return (t >= t0) & (t < t1)


def rms_variation_level(t, onset, level, duration, ramp):
    """Envelope factor of a sag/swell/interruption (disturbance.rs RmsVariation):
    from `onset` the level moves linearly 1 -> level over `ramp`, holds until onset+duration
    (the recovery start), then moves back to 1 over `ramp` (ends at onset+duration+ramp)."""
    f = np.ones_like(t)
    if ramp > 0:
        m = _window(t, onset, onset + ramp)
        f[m] = 1.0 + (level - 1.0) * (t[m] - onset) / ramp
        m = _window(t, onset + ramp, onset + duration)
        f[m] = level
        m = _window(t, onset + duration, onset + duration + ramp)
        f[m] = level + (1.0 - level) * (t[m] - onset - duration) / ramp
    else:
        f[_window(t, onset, onset + duration)] = level
    return f


def freq_integral(t, onset, dev, ramp, duration, ret):
    """∫ (f(t) - f0) dt from 0 to t for the trapezoidal excursion (Hz·s).
    Ramp up over `ramp`, hold, ramp back over `ramp` ending at onset+duration.
    ASSUMPTION: with return=false the frequency ramps once and then stays at nominal+deviation
    until the end of the scenario (not only until the end of the window)."""
    u = t - onset
    g = np.zeros_like(t)
    r = ramp
    if not ret:
        if r > 0:
            m = (u >= 0) & (u < r)
            g[m] = u[m] ** 2 / (2 * r)
            m = u >= r
            g[m] = r / 2 + (u[m] - r)
        else:
            m = u >= 0
            g[m] = u[m]
        return dev * g
    D = duration
    if r > 0:
        m = (u >= 0) & (u < r)
        g[m] = u[m] ** 2 / (2 * r)
        m = (u >= r) & (u < D - r)
        g[m] = r / 2 + (u[m] - r)
        m = (u >= D - r) & (u < D)
        w = u[m] - (D - r)
        g[m] = r / 2 + (D - 2 * r) + w - w ** 2 / (2 * r)
        m = u >= D
        g[m] = D - r
    else:
        m = (u >= 0) & (u < D)
        g[m] = u[m]
        g[u >= D] = D
    return dev * g


def thermal_factor(t, ev: Event, nominal: float):
    """(V − ΔV)/V of the first-order conductor heating model (STANDARDS.md §8, disturbance.rs):
    τ dT/dt = I²R(T)·R_th − (T − T_amb), R(T) = R20(1 + α(T − 20)), ΔV = I(R cos φ + X sin φ).
    The ODE is linear in T, so it is solved in closed form:
      k = I²·R20·R_th, a = 1 − k·α, T∞ = (k(1 − 20α) + T_amb)/a, T(u) = T∞ + (T0 − T∞)e^(−a·u/τ).
    The current steps from 0 to I at onset; outside [onset, onset+duration) the factor is 1."""
    p = ev.p
    alpha = 0.00393 if str(p.get("conductor", "copper")).lower().startswith("c") else 0.00403
    r20 = float(p["r20"])
    x = float(p.get("x", 0.0))
    cur = float(p["current"])
    pf = float(p.get("power_factor", 1.0))
    amb = float(p.get("ambient", 25.0))
    t_init = float(p.get("initial", amb))
    rth = float(p["thermal_resistance"])
    tau = float(p["tau"])
    k = cur * cur * r20 * rth
    a = 1.0 - k * alpha
    t_inf = (k * (1.0 - 20.0 * alpha) + amb) / a
    f = np.ones_like(t)
    m = _window(t, ev.onset, ev.onset + p["duration"])
    u = t[m] - ev.onset
    temp = t_inf + (t_init - t_inf) * np.exp(-a * u / tau)
    r = r20 * (1.0 + alpha * (temp - 20.0))
    dv = cur * (r * pf + x * math.sqrt(max(0.0, 1.0 - pf * pf)))
    f[m] = (nominal - dv) / nominal
    return f


def thermal_temperature(u, ev: Event):
    p = ev.p
    alpha = 0.00393 if str(p.get("conductor", "copper")).lower().startswith("c") else 0.00403
    amb = float(p.get("ambient", 25.0))
    k = float(p["current"]) ** 2 * float(p["r20"]) * float(p["thermal_resistance"])
    a = 1.0 - k * alpha
    t_inf = (k * (1.0 - 20.0 * alpha) + amb) / a
    return t_inf + (float(p.get("initial", amb)) - t_inf) * np.exp(-a * u / float(p["tau"]))


def channel_parts(scn: Scenario, group: str, ci: int, t: np.ndarray):
    """Angle θ_ch(t) (rad) and envelope env(t) of one channel, plus the harmonic list."""
    grid = scn.grid
    ph = grid.phases[ci]
    theta = 2 * math.pi * grid.f0 * t + math.radians(grid.offsets_deg[ci])
    env = np.ones_like(t)
    for ev in scn.events:
        if ev.kind == "frequency" and (not ev.groups or group in ev.groups):
            theta = theta + 2 * math.pi * freq_integral(
                t, ev.onset, float(ev.p["deviation"]), ev.p.get("ramp", 0.0), ev.p["duration"],
                bool(ev.p.get("return", True)))
        if not ev.applies(group, ph):
            continue
        if ev.kind in ("sag", "swell", "interruption"):
            if ev.kind == "sag":
                level = float(ev.p["residual"])
            elif ev.kind == "swell":
                level = float(ev.p["magnitude"])
            else:
                level = float(ev.p.get("residual", 0.0))
            env = env * rms_variation_level(t, ev.onset, level, ev.p["duration"], ev.p.get("ramp", 0.0))
            jump = float(ev.p.get("phase_jump", 0.0))
            if jump:
                # ASSUMPTION: the phase jump is a step applied for the whole event window
                # [onset, onset + duration + ramp) ("while the event lasts"), not ramped.
                theta = theta + math.radians(jump) * _window(t, ev.onset, ev.end)
        elif ev.kind == "flicker":
            m = _window(t, ev.onset, ev.end)
            s = np.sin(2 * math.pi * float(ev.p["frequency"]) * (t[m] - ev.onset))
            if str(ev.p.get("shape", "sine")) == "square":
                s = np.sign(s)
            f = np.ones_like(t)
            f[m] = 1.0 + float(ev.p["depth"]) / 2.0 * s
            env = env * f
        elif ev.kind == "unbalance":
            m = _window(t, ev.onset, ev.end)
            mag = float((ev.p.get("magnitudes") or {}).get(ph, 1.0))
            ang = float((ev.p.get("angles") or {}).get(ph, 0.0))
            f = np.ones_like(t)
            f[m] = mag
            env = env * f
            theta = theta + math.radians(ang) * m
        elif ev.kind == "thermal_drift":
            env = env * thermal_factor(t, ev, grid.nominal)
    return theta, env


def synth(scn: Scenario, group: str, t: np.ndarray, with_current=False):
    """Samples (n_channels × len(t)) of the probe meter at times t (float64)."""
    grid = scn.grid
    vpk = grid.vpk
    g = next(x for x in scn.groups if x.name == group)
    out = np.empty((len(grid.phases), len(t)))
    cur = np.empty_like(out) if with_current else None
    for ci, ph in enumerate(grid.phases):
        theta, env = channel_parts(scn, group, ci, t)
        carrier = np.sin(theta)
        add = np.zeros_like(t)
        notches = []
        for ev in scn.events:
            if not ev.applies(group, ph):
                continue
            m = _window(t, ev.onset, ev.end)
            if ev.kind == "harmonics":
                comps = {int(k): float(v) for k, v in (ev.p.get("orders") or {}).items()}
                ends = {int(k): float(v) for k, v in (ev.p.get("to") or {}).items()}
                angs = {int(k): float(v) for k, v in (ev.p.get("angles") or {}).items()}
                dur = ev.p["duration"]
                for h in sorted(set(comps) | set(ends)):
                    a0 = comps.get(h, 0.0)
                    a1 = ends.get(h, a0)
                    a = a0 + (a1 - a0) * (t[m] - ev.onset) / dur
                    carrier[m] += a * np.sin(h * theta[m] + math.radians(angs.get(h, 0.0)))
            elif ev.kind == "interharmonic":
                # As specified: magnitude·Vpk·sin(2πf(t − at) + angle); ASSUMPTION: no channel
                # offset (the same term on every affected phase).
                add[m] += float(ev.p["magnitude"]) * vpk * np.sin(
                    2 * math.pi * float(ev.p["frequency"]) * (t[m] - ev.onset)
                    + math.radians(float(ev.p.get("angle", 0.0))))
            elif ev.kind == "oscillatory_transient":
                u = t[m] - ev.onset
                add[m] += float(ev.p["magnitude"]) * vpk * np.exp(-u / ev.p["tau"]) * np.sin(
                    2 * math.pi * float(ev.p["frequency"]) * u + math.radians(float(ev.p.get("angle", 0.0))))
            elif ev.kind == "impulsive_transient":
                rise, fall = ev.p["rise"], ev.p["fall"]
                tpk = math.log(fall / rise) * rise * fall / (fall - rise)
                k = 1.0 / (math.exp(-tpk / fall) - math.exp(-tpk / rise))
                u = t[m] - ev.onset
                add[m] += k * float(ev.p["magnitude"]) * vpk * (np.exp(-u / fall) - np.exp(-u / rise))
            elif ev.kind == "dc_offset":
                add[m] += float(ev.p["magnitude"]) * vpk
            elif ev.kind == "notch":
                notches.append((ev, m, theta))
            elif ev.kind == "noise":
                pass  # not modelled: checked against noise-free values
        v = vpk * env * carrier + add
        for ev, m, th in notches:
            # Notch windows: per_cycle windows of `width` s, the k-th starting at the channel's
            # fundamental angle `angle` + k·360/per_cycle. ASSUMPTION: the angle is the channel's
            # own fundamental angle θ_ch (offset and frequency deviation included); the window
            # length in angle is 360·f0·width. The sample is pulled towards zero by depth·Vpk
            # without crossing it: sign(v)·max(|v| − depth·Vpk, 0).
            pc = int(ev.p["per_cycle"])
            spacing = 2 * math.pi / pc
            rel = np.mod(th[m] - math.radians(float(ev.p.get("angle", 0.0))), spacing)
            # A sample exactly on a window start (it happens: at 12800 Hz / 60 Hz every 320th
            # sample lands on a multiple of 30°) must not depend on float rounding: windows are
            # half-open [start, start + width), so rel within 1e-9 rad below `spacing` is 0.
            rel = np.where(rel > spacing - 1e-9, 0.0, rel)
            inside = rel < 2 * math.pi * grid.f0 * ev.p["width"]
            idx = np.nonzero(m)[0][inside]
            d = float(ev.p["depth"]) * vpk
            v[idx] = np.sign(v[idx]) * np.maximum(np.abs(v[idx]) - d, 0.0)
        out[ci] = v * g.calibration.get(ph, 1.0)
        if with_current and grid.load:
            pf = float(grid.load.get("power_factor", 1.0))
            amps = float(grid.load["current"])
            # ASSUMPTION: the load current is a pure sinusoid of the channel's fundamental angle,
            # lagging by acos(pf), constant amplitude (it does not follow voltage disturbances).
            cur[ci] = math.sqrt(2) * amps * np.sin(theta - math.acos(pf))
    return out, cur


def envelope_rms(scn: Scenario, group: str, t: np.ndarray):
    """Slow RMS estimate nominal·env(t) per channel (used to find where to look in long runs)."""
    res = np.empty((len(scn.grid.phases), len(t)))
    for ci in range(len(scn.grid.phases)):
        _, env = channel_parts(scn, group, ci, t)
        res[ci] = scn.grid.nominal * env
    return res


# --------------------------------------------------------------------------------------------
# Measurement (IEC 61000-4-30)
# --------------------------------------------------------------------------------------------


def zero_crossings(x: np.ndarray, t0: float, fs: float) -> np.ndarray:
    """Interpolated times of sign changes between consecutive non-zero samples.
    ASSUMPTION: exact-zero samples (an interruption to 0) carry no sign and are skipped, so a
    step into or out of a zero interval is not a crossing unless the sign differs across it."""
    nz = np.nonzero(x != 0.0)[0]
    if len(nz) < 2:
        return np.empty(0)
    s = np.signbit(x[nz])
    ch = np.nonzero(s[:-1] != s[1:])[0]
    i0, i1 = nz[ch], nz[ch + 1]
    xa, xb = x[i0], x[i1]
    return t0 + (i0 + (-xa) / (xb - xa) * (i1 - i0)) / fs


def half_cycle_boundaries(crossings: np.ndarray, f0: float, t_end: float):
    """Boundaries from zero crossings: reject a crossing closer than 0.7 nominal half periods to
    the previous boundary; after 1.3 half periods without a crossing insert free-running
    boundaries one nominal half period apart. ASSUMPTION (resync): a crossing rejected only
    because it falls < 0.7 h after a *free-running* boundary replaces that boundary (if it is
    still >= 0.7 h after the one before), so the detector re-locks onto the returning wave."""
    h = 0.5 / f0
    b: list = []
    free: list = []
    for c in crossings:
        if not b:
            b.append(c)
            free.append(False)
            continue
        while c - b[-1] > 1.3 * h:
            b.append(b[-1] + h)
            free.append(True)
        if c - b[-1] >= 0.7 * h:
            b.append(c)
            free.append(False)
        elif free[-1] and len(b) >= 2 and c - b[-2] >= 0.7 * h:
            b[-1] = c
            free[-1] = False
    if b:
        while t_end - b[-1] > 1.3 * h:
            b.append(b[-1] + h)
            free.append(True)
    return np.array(b)


@dataclass
class ChannelMeasure:
    bounds: np.ndarray  # half-cycle boundaries
    hc_ms: np.ndarray  # mean square per half cycle
    urms_start: np.ndarray  # Urms(1/2) window start
    urms_end: np.ndarray  # Urms(1/2) window end (time stamp)
    urms: np.ndarray
    win_start: np.ndarray  # 10/12-cycle windows
    win_end: np.ndarray
    win_rms: np.ndarray
    win_thd: np.ndarray
    win_freq: np.ndarray
    win_power: np.ndarray


def measure_channel(x, cur, t0, fs, f0, n_cyc, align=None) -> ChannelMeasure:
    """align: (reference first boundary, nominal half period) to align the 2N-half-cycle windows
    to the global series in segment mode; None = windows start at the first crossing."""
    t_end = t0 + len(x) / fs
    b = half_cycle_boundaries(zero_crossings(x, t0, fs), f0, t_end)
    idx = np.ceil((b - t0) * fs - 1e-9).astype(np.int64)
    idx = np.clip(idx, 0, len(x))
    x2 = x * x
    n = np.diff(idx)
    ok = n > 0
    sums = np.zeros(len(n))
    if len(n):
        red = np.add.reduceat(x2, idx[:-1][ok]) if ok.any() else np.zeros(0)
        # reduceat's last entry runs to the end of the array; fix it to the real end
        if ok.any():
            last = np.nonzero(ok)[0][-1]
            red[-1] = x2[idx[last]:idx[last + 1]].sum()
        sums[ok] = red
    d = np.diff(b)
    if ESTIMATOR == "mean":
        # plain sample mean per half cycle (biased by the ±1 sample count mismatch)
        ms = np.where(n > 0, sums / np.maximum(n, 1), 0.0)
    else:
        # integral estimate: Σx²·Δt over the samples in [b_k, b_{k+1}) divided by the
        # interpolated duration d_k (the edge samples sit next to zero crossings, so the
        # fractional-sample error is second order)
        ms = np.where(d > 0, sums / fs / np.where(d > 0, d, 1.0), 0.0)
    if len(ms) >= 2:
        # Urms(1/2): one full cycle (two half cycles), refreshed each half cycle, duration
        # weighted: sqrt((ms_k·d_k + ms_{k+1}·d_{k+1}) / (d_k + d_{k+1})).
        urms = np.sqrt((ms[:-1] * d[:-1] + ms[1:] * d[1:]) / (d[:-1] + d[1:]))
        u_s, u_e = b[:-2], b[2:]
    else:
        urms = u_s = u_e = np.empty(0)
    # 10/12-cycle windows: 2N consecutive half cycles.
    two_n = 2 * n_cyc
    s0 = 0
    if align is not None and len(b):
        ref, h = align
        gidx = np.rint((b - ref) / h).astype(np.int64)
        cand = np.nonzero(gidx % two_n == 0)[0]
        s0 = int(cand[0]) if len(cand) else 0
    ws, we, wr, wt, wf, wp = [], [], [], [], [], []
    k = s0
    while k + two_n < len(b):
        i, j = idx[k], idx[k + two_n]
        seg = x[i:j]
        ws.append(b[k])
        we.append(b[k + two_n])
        if ESTIMATOR == "mean":
            wr.append(math.sqrt(np.mean(seg * seg)))
        else:
            wr.append(math.sqrt(float(np.sum(seg * seg)) / fs / (b[k + two_n] - b[k])))
        wt.append(thd_subgroup(seg, n_cyc))
        wf.append(n_cyc / (b[k + two_n] - b[k]))
        if cur is None:
            wp.append(float("nan"))
        elif ESTIMATOR == "mean":
            wp.append(float(np.mean(seg * cur[i:j])))
        else:
            wp.append(float(np.sum(seg * cur[i:j])) / fs / (b[k + two_n] - b[k]))
        k += two_n
    return ChannelMeasure(b, ms, np.asarray(u_s), np.asarray(u_e), urms, np.array(ws), np.array(we),
                          np.array(wr), np.array(wt), np.array(wf), np.array(wp))


def thd_subgroup(seg: np.ndarray, n_cyc: int) -> float:
    """THD (%) with harmonic subgroups: G_h² = C_{Nh−1}² + C_{Nh}² + C_{Nh+1}², h = 2..50
    (limited to the bins below Nyquist), over the rectangular window (IEC 61000-4-7)."""
    spec = np.abs(np.fft.rfft(seg)) ** 2
    nb = len(spec)

    def g2(h):
        k = n_cyc * h
        lo, hi = max(k - 1, 1), min(k + 1, nb - 1)
        return float(spec[lo:hi + 1].sum()) if lo <= hi else 0.0

    g1 = g2(1)
    if g1 <= 0:
        return float("nan")
    hmax = min(50, (nb - 2) // n_cyc)
    return 100.0 * math.sqrt(sum(g2(h) for h in range(2, hmax + 1)) / g1)


# --------------------------------------------------------------------------------------------
# Events and trips on Urms(1/2)
# --------------------------------------------------------------------------------------------


def channel_events(ts, us, kind, pq, nominal):
    """Per-channel dip/swell/interruption intervals: start = time stamp (window end) of the first
    Urms(1/2) beyond the threshold; end = time stamp of the first one back past threshold ±
    hysteresis. Returns [(start, end or None, extreme value)]."""
    hyst = pq["hysteresis"] / 100 * nominal
    if kind == "dip":
        thr = pq["dip"] / 100 * nominal
        beyond, back, worse = (lambda u: u < thr), (lambda u: u >= thr + hyst), min
    elif kind == "interruption":
        thr = pq["interruption"] / 100 * nominal
        beyond, back, worse = (lambda u: u < thr), (lambda u: u >= thr + hyst), min
    else:
        thr = pq["swell"] / 100 * nominal
        beyond, back, worse = (lambda u: u > thr), (lambda u: u <= thr - hyst), max
    out = []
    cur = None
    for t, u in zip(ts, us):
        if cur is None:
            if beyond(u):
                cur = [t, None, u]
        elif back(u):
            cur[1] = t
            out.append(tuple(cur))
            cur = None
        else:
            cur[2] = worse(cur[2], u)
    if cur is not None:
        out.append(tuple(cur))
    return out


def polyphase_events(per_ch, kind, t_end):
    """Dip/swell: union of channel intervals (starts when any channel is in the event, ends when
    all are out). Interruption: intersection (starts when all are in, ends when any is out)."""
    worse = max if kind == "swell" else min
    ivs = [[(s, e if e is not None else math.inf, v) for (s, e, v) in evs] for evs in per_ch]
    if kind != "interruption":
        allv = sorted(x for evs in ivs for x in evs)
        out = []
        for s, e, v in allv:
            if out and s <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], e), worse(out[-1][2], v))
            else:
                out.append((s, e, v))
        return [(s, None if e == math.inf else e, v) for s, e, v in out]
    # intersection across channels
    acc = ivs[0]
    for other in ivs[1:]:
        nxt = []
        for s1, e1, v1 in acc:
            for s2, e2, v2 in other:
                s, e = max(s1, s2), min(e1, e2)
                if s < e:
                    nxt.append((s, e, min(v1, v2)))
        acc = nxt
    # ASSUMPTION: the residual of a polyphase interruption is the lowest Urms(1/2) of any
    # channel during each channel's own interruption (the minima are not re-clipped in time).
    return [(s, None if e == math.inf else e, v) for s, e, v in acc]


def trips(ts, us, code, th):
    """Trip times of one channel: UV below `lower`, clears at >= lower + hysteresis; OV above
    `upper`, clears at <= upper − hysteresis. ASSUMPTION for min_duration: the condition
    (strictly beyond the limit) must hold on every Urms(1/2) value from the first one beyond the
    limit until a value whose time stamp is >= first + min_duration; the trip time is that
    value's time stamp."""
    if code.startswith("UV"):
        beyond = lambda u: u < th["lower"]  # noqa: E731
        clear = lambda u: u >= th["lower"] + th["hysteresis"]  # noqa: E731
    else:
        beyond = lambda u: u > th["upper"]  # noqa: E731
        clear = lambda u: u <= th["upper"] - th["hysteresis"]  # noqa: E731
    md = th.get("min_duration", 0.0)
    out = []
    tripped = False
    first = None
    for t, u in zip(ts, us):
        if tripped:
            if clear(u):
                tripped = False
            continue
        if beyond(u):
            if first is None:
                first = t
            if t - first >= md - 1e-12:
                out.append(t)
                tripped = True
                first = None
        else:
            first = None
    return out


# --------------------------------------------------------------------------------------------
# Running a scenario
# --------------------------------------------------------------------------------------------

LONG_SAMPLES = 3.0e7  # above this many samples (all channels) use segment mode
ESTIMATOR = "integral"  # or "mean" (--estimator)


@dataclass
class GroupResult:
    ch: dict  # phase -> ChannelMeasure (possibly several segments merged)
    segments: list
    energy: dict  # phase -> (times, cumulative Wh) or None
    notes: list


def _merge(segs):
    segs = sorted(segs)
    out = []
    for s, e in segs:
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _concat(ms: list) -> ChannelMeasure:
    if len(ms) == 1:
        return ms[0]
    cat = lambda a: np.concatenate([getattr(m, a) for m in ms])  # noqa: E731
    return ChannelMeasure(cat("bounds"), cat("hc_ms"), cat("urms_start"), cat("urms_end"), cat("urms"),
                          cat("win_start"), cat("win_end"), cat("win_rms"), cat("win_thd"),
                          cat("win_freq"), cat("win_power"))


def run_group(scn: Scenario, group: str, verbose=False) -> GroupResult:
    grid = scn.grid
    fs, f0 = grid.fs, grid.f0
    n_cyc = 10 if abs(f0 - 50.0) < 1e-9 else 12
    nch = len(grid.phases)
    total = scn.duration * fs * nch
    notes = []
    g = next(x for x in scn.groups if x.name == group)
    if g.adc:
        notes.append("adc quantization not modelled")
    if any(e.kind == "noise" and (not e.groups or group in e.groups) for e in scn.events):
        notes.append("noise not modelled: checked against noise-free values, tolerances not widened")
    if total <= LONG_SAMPLES:
        segments = [(0.0, scn.duration)]
        align = None
    else:
        if any(e.kind == "frequency" for e in scn.events):
            raise NotImplementedError("segment mode assumes a nominal-frequency phase reference")
        # Segment mode: find where anything can happen from the slow RMS envelope on a
        # half-cycle grid, then synthesize only windows around those instants.
        h = 0.5 / f0
        tg = np.arange(0.0, scn.duration, h)
        envr = envelope_rms(scn, group, tg)
        levels = [g.thresholds["lower"], g.thresholds["lower"] + g.thresholds["hysteresis"],
                  g.thresholds["upper"], g.thresholds["upper"] - g.thresholds["hysteresis"]]
        for k in ("dip", "swell", "interruption"):
            base = scn.pq[k] / 100 * grid.nominal
            hy = scn.pq["hysteresis"] / 100 * grid.nominal
            levels += [base, base + hy, base - hy]
        cand = set()
        for ci in range(nch):
            for lv in levels:
                s = np.signbit(envr[ci] - lv)
                for i in np.nonzero(s[:-1] != s[1:])[0]:
                    cand.add(float(tg[i]))
        for e in scn.events:
            cand.add(e.onset)
            cand.add(e.end)
        for x in scn.expect:
            if "measurement" in x:
                cand.add(parse_duration(x["measurement"]["at"], f0))
        segs = [(0.0, min(scn.duration, 2.0))]
        for c in sorted(cand):
            segs.append((max(0.0, c - 1.0), min(scn.duration, c + 1.0)))
        segments = _merge(segs)
        notes.append("segment mode: envelope scan on a half-cycle grid, then waveform synthesis "
                     f"in {len(segments)} segments ({sum(e - s for s, e in segments):.1f} s of "
                     f"{scn.duration:.0f} s)")
        align = {}
    per = {ph: [] for ph in grid.phases}
    energy = {ph: ([], []) for ph in grid.phases} if grid.load else None
    chunk = 20.0
    for s, e in segments:
        # synthesize the segment (in chunks of `chunk` s to bound memory)
        n0 = int(math.ceil(s * fs - 1e-9))
        n1 = int(math.ceil(e * fs - 1e-9))
        xs, cs = [], []
        for a in range(n0, n1, int(chunk * fs)):
            b_ = min(n1, a + int(chunk * fs))
            t = np.arange(a, b_) / fs
            v, c = synth(scn, group, t, with_current=bool(grid.load))
            xs.append(v)
            cs.append(c)
        x = np.concatenate(xs, axis=1)
        cur = np.concatenate(cs, axis=1) if grid.load else None
        for ci, ph in enumerate(grid.phases):
            al = None
            if align is not None:
                if ph not in align:
                    cr = zero_crossings(x[ci][: int(fs)], n0 / fs, fs)
                    align[ph] = (float(cr[0]), 0.5 / f0)
                al = align[ph]
            m = measure_channel(x[ci], cur[ci] if cur is not None else None, n0 / fs, fs, f0, n_cyc, al)
            per[ph].append(m)
            if energy is not None:
                p = x[ci] * cur[ci] / fs / 3600.0
                energy[ph][0].append(np.arange(n0, n1) / fs)
                energy[ph][1].append(np.cumsum(p))
    ch = {ph: _concat(ms) for ph, ms in per.items()}
    if energy is not None:
        energy = {ph: (np.concatenate(a), np.concatenate(b)) for ph, (a, b) in energy.items()}
        if len(segments) > 1:
            notes.append("energy in segment mode is not continuous")
    return GroupResult(ch, segments, energy, notes)


def group_events(scn: Scenario, res: GroupResult):
    nominal = scn.grid.nominal
    out = {}
    for kind in ("dip", "swell", "interruption"):
        per = {}
        for ph, m in res.ch.items():
            per[ph] = channel_events(m.urms_end, m.urms, kind, scn.pq, nominal)
        per["poly"] = polyphase_events([per[ph] for ph in scn.grid.phases], kind, scn.duration)
        out[kind] = per
    return out


def onsets_for(scn: Scenario, group: str, phase: str):
    return sorted(e.onset for e in scn.events
                  if e.kind in VOLTAGE_KINDS and e.kind != "noise" and e.applies(group, phase))


def _fmt(x, nd=4):
    if x is None:
        return "—"
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        return f"{x:.{nd}f}"
    return str(x)


def measure_value(res, q, ph, at):
    """Reference value of `q` on phase `ph` for the window containing `at` -> (value, note)."""
    m = res.ch[ph]
    val, note = None, ""
    if q in ("rms_10cycle", "thd", "frequency", "active_power", "rms_150cycle"):
        k = np.nonzero((m.win_start <= at) & (at < m.win_end))[0]
        if len(k):
            k = int(k[0])
            note = f"window [{m.win_start[k]:.5f}, {m.win_end[k]:.5f}) s"
            if q == "rms_10cycle":
                val = float(m.win_rms[k])
            elif q == "thd":
                val = float(m.win_thd[k])
            elif q == "frequency":
                val = float(m.win_freq[k])
            elif q == "active_power":
                val = float(m.win_power[k])
            else:
                # 150/180-cycle: RMS of 15 consecutive basic windows (aligned from the
                # first one of the run)
                blk = k // 15 * 15
                vals = m.win_rms[blk:blk + 15]
                val = float(np.sqrt(np.mean(vals ** 2))) if len(vals) == 15 else None
                note = f"block of windows {blk}..{blk + 14}"
    elif q == "urms_half_cycle":
        # ASSUMPTION: "the window containing at" = the Urms(1/2) window that starts at the
        # last half-cycle boundary <= at.
        k = np.nonzero((m.urms_start <= at) & (at < m.urms_end))[0]
        if len(k):
            k = int(k[-1])
            val = float(m.urms[k])
            note = f"Urms(1/2) window [{m.urms_start[k]:.5f}, {m.urms_end[k]:.5f}) s"
    elif q == "energy":
        if res.energy is not None:
            ts, cum = res.energy[ph]
            i = int(np.searchsorted(ts, at, side="left"))
            val = float(cum[i - 1]) if i > 0 else 0.0
            # also the value at the end of the 10/12-cycle window holding `at`
            k = np.nonzero((m.win_start <= at) & (at < m.win_end))[0]
            if len(k):
                j = int(np.searchsorted(ts, m.win_end[k[0]], side="left"))
                note = (f"∫p dt over [0, at); at the end of the window holding at "
                        f"({m.win_end[k[0]]:.4f} s): {float(cum[j - 1]):.4f} Wh")
    return val, note


def check_scenario(scn: Scenario, verbose=False, probes=()):
    f0 = scn.grid.f0
    nominal = scn.grid.nominal
    first_group = scn.groups[0].name
    cache = {}

    def res_for(group):
        if group not in cache:
            r = run_group(scn, group, verbose)
            cache[group] = (r, group_events(scn, r))
        return cache[group]

    checks = []
    for item in scn.expect:
        (kind, body), = item.items()
        body = body or {}
        group = body.get("group", first_group)
        if kind == "measurement":
            res, _ = res_for(group)
            q = body["quantity"]
            ph = body.get("phase", "L1")
            at = parse_duration(body["at"], f0)
            exp = float(body["expected"])
            tol = parse_tolerance(body["tolerance"], exp)
            val, note = measure_value(res, q, ph, at)
            ok = val is not None and not math.isnan(val) and abs(val - exp) <= tol + 1e-12
            checks.append(dict(check="measurement", quantity=q, group=group, phase=ph, at=at,
                               expected=exp, reference=val, tolerance=tol,
                               diff=None if val is None else val - exp, passed=bool(ok), note=note))
        elif kind == "event":
            res, evs = res_for(group)
            ek = body["kind"]
            ph = body.get("phase")
            exp_r = float(body["residual"])
            rtol = parse_tolerance(body.get("tolerance", "0.2%"), 1.0)  # % of Udin -> pu
            exp_d = parse_duration(body["duration"], f0)
            dtol = parse_duration(body.get("duration_tolerance", "1cycles"), f0)
            found = evs[ek][ph if ph else "poly"]
            best = None
            for s, e, v in found:
                d = (e - s) if e is not None else math.inf
                r = v / nominal
                score = abs(r - exp_r) / max(rtol, 1e-9) + abs(d - exp_d) / max(dtol, 1e-9)
                if best is None or score < best[0]:
                    best = (score, s, e, d, r)
            if best is None:
                checks.append(dict(check="event", kind=ek, group=group, phase=ph or "poly",
                                   expected=dict(residual=exp_r, duration=exp_d), reference=None,
                                   passed=False, note="no such event detected"))
                continue
            _, s, e, d, r = best
            ok = abs(r - exp_r) <= rtol + 1e-12 and abs(d - exp_d) <= dtol + 1e-12
            checks.append(dict(check="event", kind=ek, group=group, phase=ph or "poly",
                               expected=dict(residual=exp_r, duration=exp_d),
                               reference=dict(residual=r, duration=d, start=s, end=e,
                                              residual_volts=r * nominal, count=len(found)),
                               tolerance=dict(residual=rtol, duration=dtol),
                               diff=dict(residual=r - exp_r, duration=d - exp_d), passed=bool(ok)))
        elif kind == "trip":
            res, _ = res_for(group)
            g = next(x for x in scn.groups if x.name == group)
            code = body["code"]
            within = parse_duration(body["within"], f0)
            phs = [body["phase"]] if body.get("phase") else list(scn.grid.phases)
            lat = []
            for ph in phs:
                m = res.ch[ph]
                ons = onsets_for(scn, group, ph)
                for tt in trips(m.urms_end, m.urms, code, g.thresholds):
                    prior = [o for o in ons if o <= tt]
                    lat.append((ph, tt, prior[-1] if prior else None,
                                tt - prior[-1] if prior else None))
            ok = bool(lat) and all(x[3] is not None and x[3] <= within + 1e-9 for x in lat)
            checks.append(dict(check="trip", code=code, group=group, phase=body.get("phase"),
                               expected=within,
                               reference=max((x[3] for x in lat if x[3] is not None), default=None),
                               trips=[dict(phase=p, time=t, onset=o, latency=d) for p, t, o, d in lat],
                               passed=ok,
                               note="" if lat else "no trip on the probe meter"))
        elif kind in ("no_trip", "no_flapping"):
            # Not asked for, but cheap: evaluated on the probe meter only (noise-free).
            res, _ = res_for(group)
            g = next(x for x in scn.groups if x.name == group)
            codes = [body["code"]] if kind == "no_trip" and body.get("code") else ["UV_TRIP_0x01", "OV_TRIP_0x02"]
            all_trips = []
            for ph, m in res.ch.items():
                for c in codes:
                    all_trips += [(ph, c, t) for t in trips(m.urms_end, m.urms, c, g.thresholds)]
            if kind == "no_trip":
                ok = not all_trips
                exp = 0
            else:
                exp = int(body["max_trips_per_meter"])
                ok = len(all_trips) <= exp
            checks.append(dict(check=kind, group=group, expected=exp, reference=len(all_trips),
                               trips=[dict(phase=p, code=c, time=t) for p, c, t in all_trips],
                               passed=bool(ok), note="probe meter only"))
        # alarm_latency, delivered: network behaviour, not in the reference's scope
    probe_out = []
    for q, ph, at_s, grp in probes:
        grp = grp or first_group
        if ph not in scn.grid.phases or grp not in [g.name for g in scn.groups]:
            continue
        at = parse_duration(at_s, f0)
        if at >= scn.duration:
            continue
        res, _ = res_for(grp)
        val, note = measure_value(res, q, ph, at)
        probe_out.append(dict(quantity=q, phase=ph, at=at, group=grp, reference=val, note=note))
    if verbose:
        # make sure the first group is measured so its Urms(1/2) extremes can be listed
        res_for(first_group)
    notes = []
    detected = {}
    for grp, (res, evs) in cache.items():
        notes += [f"[{grp}] {n}" for n in res.notes]
        detected[grp] = {k: {ph: [dict(start=s, end=e, value=v, value_pu=v / nominal,
                                       duration=None if e is None else e - s)
                                  for s, e, v in lst] for ph, lst in per.items()}
                         for k, per in evs.items()}
    extremes = {}
    for grp, (res, _) in cache.items():
        extremes[grp] = {}
        for ph, m in res.ch.items():
            if len(m.urms):
                i, j = int(np.argmin(m.urms)), int(np.argmax(m.urms))
                extremes[grp][ph] = dict(min=float(m.urms[i]), min_at=float(m.urms_end[i]),
                                         max=float(m.urms[j]), max_at=float(m.urms_end[j]))
    return dict(scenario=scn.name, file=scn.path, checks=checks, notes=notes, probes=probe_out,
                urms_half_cycle_extremes=extremes,
                detected_events=detected,
                onsets=[dict(kind=e.kind, at=e.at, onset=e.onset, end=e.end) for e in scn.events],
                passed=all(c["passed"] for c in checks))


def print_result(r, verbose=False):
    print(f"== {r['scenario']}  ({r['file']})")
    for n in r["notes"]:
        print(f"   note: {n}")
    for c in r["checks"]:
        st = "PASS" if c["passed"] else "FAIL"
        if c["check"] == "measurement":
            d = c["diff"]
            print(f"   {st} measurement {c['quantity']} {c['phase']} @ {c['at']:g}s: expected "
                  f"{c['expected']:g} ± {c['tolerance']:.4g}, reference {_fmt(c['reference'], 5)}"
                  f" (diff {_fmt(d, 5)})  {c['note']}")
        elif c["check"] == "event":
            e = c["expected"]
            if c["reference"] is None:
                print(f"   {st} event {c['kind']} {c['phase']}: expected residual {e['residual']:g} "
                      f"duration {e['duration']:.5f}s: {c['note']}")
                continue
            rf = c["reference"]
            tl = c["tolerance"]
            print(f"   {st} event {c['kind']} {c['phase']}: expected residual {e['residual']:g}±{tl['residual']:.4g} pu, "
                  f"duration {e['duration']:.5f}±{tl['duration']:.5f} s; reference residual "
                  f"{rf['residual']:.5f} pu ({rf['residual_volts']:.3f} V), duration {rf['duration']:.5f} s "
                  f"[{rf['start']:.5f} → {_fmt(rf['end'], 5)}] (Δres {c['diff']['residual']:+.5f} pu, "
                  f"Δdur {c['diff']['duration'] * 1e3:+.2f} ms; {rf['count']} detected)")
        elif c["check"] == "trip":
            tr = "; ".join(f"{t['phase']} trip {t['time']:.5f}s onset {_fmt(t['onset'], 5)} latency "
                           f"{_fmt(None if t['latency'] is None else t['latency'] * 1e3, 2)} ms"
                           for t in c["trips"])
            print(f"   {st} trip {c['code']} {c['phase'] or 'any'} within {c['expected'] * 1e3:.2f} ms: "
                  f"{tr or c['note']}")
        else:
            tr = ", ".join(f"{t['phase']} {t['code'][:2]} {t['time']:.4f}s" for t in c["trips"])
            print(f"   {st} {c['check']}: expected ≤ {c['expected']}, reference {c['reference']} "
                  f"trips on the probe meter {('(' + tr + ')') if tr else ''}")
    for pr in r.get("probes", []):
        print(f"   probe {pr['quantity']} {pr['phase']} @ {pr['at']:g}s [{pr['group']}]: "
              f"{_fmt(pr['reference'], 5)}  {pr['note']}")
    if verbose:
        for grp, per in r.get("urms_half_cycle_extremes", {}).items():
            for ph, e in per.items():
                print(f"   Urms(1/2) [{grp}] {ph}: min {e['min']:.4f} V (window ending {e['min_at']:.5f} s), "
                      f"max {e['max']:.4f} V (window ending {e['max_at']:.5f} s)")
        for grp, per in r["detected_events"].items():
            for k, d in per.items():
                for ph, lst in d.items():
                    for e in lst:
                        print(f"   detected [{grp}] {k} {ph}: start {e['start']:.5f} end "
                              f"{_fmt(e['end'], 5)} dur {_fmt(e['duration'], 5)} value "
                              f"{e['value']:.4f} V ({e['value_pu']:.5f} pu)")


def collect(paths):
    files = []
    for p in paths:
        if os.path.isdir(p):
            for root, _, names in os.walk(p):
                files += [os.path.join(root, n) for n in names if n.endswith((".yaml", ".yml"))]
        else:
            files.append(p)
    return sorted(files)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--json", action="store_true", help="machine-readable results on stdout")
    ap.add_argument("--verbose", "-v", action="store_true", help="also list detected events")
    ap.add_argument("--estimator", choices=["integral", "mean"], default="integral",
                    help="mean square per half cycle / window: Σx²·Δt ÷ interpolated duration "
                         "(integral, default) or plain sample mean (mean)")
    ap.add_argument("--probe", action="append", default=[], metavar="QTY:PHASE:AT[:GROUP]",
                    help="also print a reference value without an expectation, e.g. thd:L1:1.0s")
    a = ap.parse_args(argv)
    global ESTIMATOR
    ESTIMATOR = a.estimator
    probes = []
    for pr in a.probe:
        parts = pr.split(":")
        probes.append((parts[0], parts[1], parts[2], parts[3] if len(parts) > 3 else None))
    results = []
    failed = False
    for f in collect(a.paths):
        try:
            scn = load_scenario(f)
            r = check_scenario(scn, a.verbose, probes)
        except Exception as exc:  # report and continue with the others
            r = dict(scenario=os.path.basename(f), file=f, checks=[], notes=[], passed=False,
                     error=f"{type(exc).__name__}: {exc}")
            if not a.json:
                print(f"== {f}: ERROR {r['error']}")
            failed = True
            results.append(r)
            continue
        failed |= not r["passed"]
        results.append(r)
        if not a.json:
            print_result(r, a.verbose)
    if a.json:
        def clean(o):
            if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
                return None
            if isinstance(o, dict):
                return {k: clean(v) for k, v in o.items()}
            if isinstance(o, list):
                return [clean(v) for v in o]
            if isinstance(o, (np.floating, np.integer)):
                return clean(o.item())
            return o
        json.dump(clean(dict(results=results, passed=not failed)), sys.stdout, indent=1)
        print()
    else:
        n_c = sum(len(r["checks"]) for r in results)
        n_f = sum(1 for r in results for c in r["checks"] if not c["passed"])
        print(f"\n{len(results)} scenarios, {n_c} checks, {n_f} failed"
              f"{', errors in ' + str(sum(1 for r in results if 'error' in r)) if any('error' in r for r in results) else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
