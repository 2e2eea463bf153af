#!/usr/bin/env python3
"""Interop check of `gridloop meter` against a third-party MQTT broker and client (Mosquitto).

Starts a Mosquitto (Debian `mosquitto`) on a free loopback port with a generated config, and a
`mosquitto_sub` on `gridloop/#` printing `retain topic hexpayload` (hex, so CBOR survives),
waited for until a probe published with `mosquitto_pub` comes back. Then:
  1. runs the library sag scenario to its end as meter 0 with `--payload json` (and the event
     log written to a file), then as the SAME meter 0 with `--payload cbor`, each against
     `--broker mqtt://127.0.0.1:PORT`, and checks per run: the topics are
     `gridloop/{substation}/{group}/{meter}/{telemetry|event|status}`; the data model's keys;
     seq 0..n contiguous and in order; as many messages as the meter says it published; the
     retained status `online` first and `offline` last (and a fresh subscriber sees the
     retained `offline`); `ts_ms - t*1000` constant (the run's wall-clock epoch);
     UV_TRIP_0x01 and UV_CLEAR_0x81 on L1 with value and limit, equal to the meter's event log
     (value to 0.01 V);
  2. compares the two runs message by message: the CBOR payloads (decoded with cbor2) equal
     the JSON ones (decoded with json) except `ts_ms`;
  3. last will: starts meter 2 with `--linger 30s`, waits for its online status, kills it with
     SIGKILL (the TCP connection closes without DISCONNECT) and checks that the offline will
     arrives within 1.5 × the 30 s keep-alive (Mosquitto publishes it at once on an unclean
     disconnect: a few ms here, reported; checked under 5 s, far below the keep-alive) and is
     retained;
  4. head-end: `gridloop head-end --broker mqtt://127.0.0.1:PORT --json-alarms` subscribed to the
     fleet while the sag scenario runs as meter 3, and a second `mosquitto_sub` on
     `gridloop-alarms/#`: every trip and clear in the meter's event log arrives there as an
     alarm (kind, code, phase, meter, seq, source time, receive time ≥ source time, latency =
     receive − source), equal to the alarms the head-end printed and stored in its JSON Lines
     store, each exactly once.
Every wait is bounded; exits non-zero on the first failed check. Loopback only.

Usage: python3 tools/mqtt_interop.py [target/release/gridloop] [--scenario FILE]
"""
import argparse
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import cbor2

DEFAULT_SCENARIO = "scenarios/library/sags-swells/sag-75pct-12-cycles.yaml"
SUBSTATION, GROUP = "sub-01", "feeder-a"
KEEP_ALIVE = 30.0  # LinkConfig::for_meter
PROBE_TOPIC = "interop/probe"
READING_KEYS = {"meter", "name", "seq", "kind", "t", "ts_ms", "volts", "overflow"}
EVENT_KEYS = {"meter", "name", "seq", "kind", "t", "ts_ms", "code", "code_num", "phase", "value", "limit"}
STATUS_KEYS = {"meter", "name", "status"}
TIMEOUT = 30.0

checks = 0
cleanup = []


def check(cond, what):
    global checks
    if not cond:
        print(f"FAIL  {what}", flush=True)
        for f in reversed(cleanup):
            f()
        sys.exit(1)
    checks += 1
    print(f"ok    {what}", flush=True)


def program(name):
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/local/sbin/{name}") if os.access(p, os.X_OK)), None)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Broker:
    """A Mosquitto on a free loopback port, persistence off."""

    def __init__(self, workdir):
        exe = program("mosquitto")
        check(exe is not None, "mosquitto is installed")
        self.port = free_port()
        conf = os.path.join(workdir, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "log_dest stderr\nlog_type error\nlog_type warning\n")
        self.proc = subprocess.Popen([exe, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        cleanup.append(lambda: stop_process(self.proc))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)  # an external process starting: polling is the only way
        check(self.proc.poll() is None, f"mosquitto {exe} accepts connections on 127.0.0.1:{self.port}")


class Subscriber:
    """`mosquitto_sub` on gridloop/# and the probe topic; lines collected by a reader thread."""

    def __init__(self, port, topic_filter="gridloop/#"):
        exe = program("mosquitto_sub")
        check(exe is not None, "mosquitto_sub is installed")
        self.port = port
        cmd = [exe, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-v", "-t", topic_filter, "-t", PROBE_TOPIC,
               "-F", "%r %t %x"]
        print("+ " + " ".join(cmd), flush=True)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        cleanup.append(lambda: stop_process(self.proc))
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), line.rstrip("\n")))

    def next(self, deadline):
        """The next (arrival time, retain, topic, payload bytes), or None at the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            at, line = self.lines.get(timeout=left)
        except queue.Empty:
            return None
        retain, topic, hexed = (line.split(" ", 2) + ["", ""])[:3]
        return at, retain == "1", topic, bytes.fromhex(hexed)

    def wait_subscribed(self):
        pub = program("mosquitto_pub")
        check(pub is not None, "mosquitto_pub is installed")
        deadline = time.monotonic() + 10
        token = f"probe-{os.getpid()}".encode()
        while time.monotonic() < deadline:
            subprocess.run([pub, "-h", "127.0.0.1", "-p", str(self.port), "-t", PROBE_TOPIC, "-q", "1",
                            "-m", token.decode()], check=True, timeout=5)
            wait_until = min(deadline, time.monotonic() + 0.5)
            while (m := self.next(wait_until)) is not None:
                if m[2] == PROBE_TOPIC and m[3] == token:
                    check(True, "mosquitto_sub is subscribed (its probe came back)")
                    return
        check(False, "mosquitto_sub subscribed within 10 s")

    def collect_until(self, topic, what, timeout=TIMEOUT, decode=json.loads):
        """Every message up to and including the first on `topic` whose decoded payload
        satisfies `what`; returns the list of (arrival, retain, topic, bytes)."""
        out = []
        deadline = time.monotonic() + timeout
        while (m := self.next(deadline)) is not None:
            if m[2] == PROBE_TOPIC:
                continue
            out.append(m)
            if m[2] == topic:
                try:
                    if what(decode(m[3])):
                        return out
                except ValueError:
                    pass
        return None


def topic(meter, kind):
    return f"gridloop/{SUBSTATION}/{GROUP}/{GROUP}-{meter:04d}/{kind}"


def run_meter(binary, scenario, port, payload, meter_id, event_log):
    cmd = [binary, "meter", scenario, "--listen", "127.0.0.1:0", "--broker", f"mqtt://127.0.0.1:{port}",
           "--payload", payload, "--id", str(meter_id), "--event-log", event_log]
    print("+ " + " ".join(cmd), flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        check(False, f"meter {meter_id} ({payload}) ends within {TIMEOUT} s")
    check(proc.returncode == 0, f"meter {meter_id} ({payload}) exit code 0 (got {proc.returncode}; {proc.stderr.strip()})")
    lines = proc.stdout.splitlines()
    check(len(lines) >= 2 and lines[0].startswith("modbus listening on ") and lines[1].startswith("broker: external"),
          f"meter stdout: modbus line then broker line ({lines[:2]})")
    m = re.search(r"mqtt: (\d+) messages published, (\d+) acknowledged, .*?(\d+) left undelivered", proc.stderr)
    check(m is not None, f"meter summary has the mqtt line ({proc.stderr.strip()!r})")
    published, acked, left = map(int, m.groups())
    check(published == acked and left == 0, f"meter: {published} published, {acked} acknowledged, {left} left undelivered")
    return published


def check_run(label, msgs, decode, meter_id, published):
    """Per-run checks; returns the decoded data messages (readings and events) in order."""
    tel, ev, st = (topic(meter_id, k) for k in ("telemetry", "event", "status"))
    topics = {m[2] for m in msgs}
    check(topics <= {tel, ev, st}, f"{label}: topics {sorted(topics)} are gridloop/{{substation}}/{{group}}/{{meter}}/…")
    decoded = [(m[2], decode(m[3])) for m in msgs]
    status = [d for t, d in decoded if t == st]
    check([s["status"] for s in status] == ["online", "offline"], f"{label}: status online then offline ({status})")
    for s in status:
        check(set(s) == STATUS_KEYS and s["meter"] == meter_id and s["name"] == f"{GROUP}-{meter_id:04d}",
              f"{label}: status payload {s}")
    check(decoded[0][0] == st and decoded[-1][0] == st, f"{label}: online is the first message, offline the last")
    data = [d for t, d in decoded if t != st]
    check(len(data) == published, f"{label}: {len(data)} data messages received = {published} the meter published")
    seqs = [d["seq"] for d in data]
    check(seqs == list(range(len(seqs))), f"{label}: seq 0..{len(seqs) - 1} contiguous and in order")
    readings = [d for t, d in decoded if t == tel]
    events = [d for t, d in decoded if t == ev]
    bad = [d for d in readings if set(d) != READING_KEYS or d["kind"] != "reading"
           or set(d["volts"]) != {"L1", "L2", "L3"} or d["overflow"] != 0 or d["meter"] != meter_id]
    check(readings and not bad, f"{label}: {len(readings)} readings on {tel}, each with the data model's keys, "
                                f"three phases, no overflow ({bad[:1]})")
    bad = [d for d in events if set(d) != EVENT_KEYS or d["kind"] != "event" or d["meter"] != meter_id]
    check(not bad, f"{label}: {len(events)} events on {ev}, each with the data model's keys ({bad[:1]})")
    offsets = {d["ts_ms"] - round(d["t"] * 1000) for d in data}
    check(len(offsets) == 1, f"{label}: ts_ms - t*1000 is constant (the run epoch {sorted(offsets)[:3]})")
    codes = [(e["code"], e["code_num"], e["phase"]) for e in events]
    check(("UV_TRIP_0x01", 1, "L1") in codes and ("UV_CLEAR_0x81", 129, "L1") in codes,
          f"{label}: UV_TRIP_0x01 and its clear on L1 ({codes})")
    trip = next(e for e in events if e["code"] == "UV_TRIP_0x01")
    clear = next(e for e in events if e["code"] == "UV_CLEAR_0x81")
    check(1.0 < trip["t"] < clear["t"] < 1.3 and trip["value"] < trip["limit"] == 210.0 and clear["value"] > clear["limit"] == 212.0,
          f"{label}: trip at {trip['t']:.4f} s ({trip['value']:.2f} V < {trip['limit']} V), "
          f"clear at {clear['t']:.4f} s ({clear['value']:.2f} V, limit {clear['limit']} V)")
    return data, events


def parse_event_log(path, name):
    pat = re.compile(r"t=([\d.]+)s meter=(\S+) code=(\S+) phase=(\S+) value=(-?[\d.]+)V limit=(-?[\d.]+)V")
    out = []
    with open(path) as f:
        for line in f:
            m = pat.fullmatch(line.strip())
            if m is None:
                check(False, f"event log line parses: {line.strip()!r}")
            if m.group(2) == name:
                out.append((float(m.group(1)), m.group(3), m.group(4), float(m.group(5)), float(m.group(6))))
    return out


def retained_status(port, meter_id):
    exe = program("mosquitto_sub")
    proc = subprocess.run([exe, "-h", "127.0.0.1", "-p", str(port), "-t", topic(meter_id, "status"), "--retained-only",
                           "-C", "1", "-W", "5", "-F", "%r %x"], capture_output=True, text=True, timeout=10)
    retain, _, hexed = proc.stdout.strip().partition(" ")
    return retain == "1", hexed


def equality_run(binary, scenario, sub, workdir):
    runs = {}
    log = os.path.join(workdir, "voltage_events.log")
    for payload, decode in (("json", json.loads), ("cbor", cbor2.loads)):
        published = run_meter(binary, scenario, sub.port, payload, 0, log if payload == "json" else "none")
        msgs = sub.collect_until(topic(0, "status"), lambda s: s.get("status") == "offline", decode=decode)
        check(msgs is not None, f"{payload}: the offline status arrived within {TIMEOUT} s")
        data, events = check_run(payload, msgs, decode, 0, published)
        runs[payload] = data
        retained, hexed = retained_status(sub.port, 0)
        check(retained and decode(bytes.fromhex(hexed)).get("status") == "offline",
              f"{payload}: a new subscriber gets the retained status offline")
        if payload == "json":
            logged = parse_event_log(log, f"{GROUP}-0000")
            if not logged:
                logged = parse_event_log(log, f"{GROUP}/0")
            check(len(logged) == len(events), f"event log holds {len(logged)} events of meter 0 = {len(events)} on MQTT")
            for e, (t, code, phase, value, limit) in zip(events, logged):
                check(abs(e["t"] - t) < 1e-6 and e["code"] == code and e["phase"] == phase
                      and abs(e["value"] - value) <= 0.01 and abs(e["limit"] - limit) <= 0.01,
                      f"MQTT {e['code']} {e['phase']} t={e['t']:.6f} value={e['value']:.4f} limit={e['limit']} "
                      f"= event log t={t:.6f} value={value:.2f} limit={limit:.2f}")
    j, c = runs["json"], runs["cbor"]
    check(len(j) == len(c), f"json and cbor runs carry as many messages ({len(j)}, {len(c)})")
    strip = lambda d: {k: v for k, v in d.items() if k != "ts_ms"}
    diff = [i for i, (a, b) in enumerate(zip(j, c)) if strip(a) != strip(b)]
    check(not diff, f"cbor2-decoded CBOR equals json-decoded JSON except ts_ms, message by message "
                    f"({len(j)} messages{'; first difference at ' + str(diff[0]) + ': ' + str(j[diff[0]]) + ' vs ' + str(c[diff[0]]) if diff else ''})")


def will_run(binary, scenario, sub):
    meter_id = 2
    cmd = [binary, "meter", scenario, "--listen", "127.0.0.1:0", "--broker", f"mqtt://127.0.0.1:{sub.port}",
           "--id", str(meter_id), "--linger", "30s", "--event-log", "none"]
    print("+ " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cleanup.append(lambda: stop_process(proc, signal.SIGKILL))
    st = topic(meter_id, "status")
    msgs = sub.collect_until(st, lambda s: s.get("status") == "online", timeout=15)
    check(msgs is not None, f"meter {meter_id}: online status within 15 s")
    check(proc.poll() is None, f"meter {meter_id} still running (pid {proc.pid})")
    killed = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    proc.wait(5)
    limit = 1.5 * KEEP_ALIVE
    msgs = sub.collect_until(st, lambda s: s.get("status") == "offline", timeout=limit)
    check(msgs is not None, f"meter {meter_id}: offline will within 1.5 × keep-alive ({limit:.0f} s) of SIGKILL")
    took = msgs[-1][0] - killed
    print(f"      last will arrived {took * 1000:.0f} ms after SIGKILL (keep-alive {KEEP_ALIVE:.0f} s)", flush=True)
    # Far under the keep-alive: the broker saw the socket close (an unclean disconnect) and did
    # not wait for the keep-alive to lapse. Typically a few ms; 5 s leaves room for a busy CI.
    check(took < 5.0, f"the will arrived in {took * 1000:.0f} ms: Mosquitto saw the unclean disconnect at once")
    will = json.loads(msgs[-1][3])
    check(will == {"meter": meter_id, "name": f"{GROUP}-{meter_id:04d}", "status": "offline"}, f"will payload {will}")
    retained, hexed = retained_status(sub.port, meter_id)
    check(retained and json.loads(bytes.fromhex(hexed)).get("status") == "offline", "the will is retained")


def headend_run(binary, scenario, port, workdir):
    meter_id = 3
    alarms_sub = Subscriber(port, "gridloop-alarms/#")
    alarms_sub.wait_subscribed()
    store = os.path.join(workdir, "alarms.jsonl")
    cmd = [binary, "head-end", "--broker", f"mqtt://127.0.0.1:{port}", "--client-id", "interop-head-end",
           "--substation", SUBSTATION, "--store", store, "--json-alarms", "--duration", "60s"]
    print("+ " + " ".join(cmd), flush=True)
    he = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    cleanup.append(lambda: stop_process(he))
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in he.stderr], daemon=True).start()
    deadline = time.monotonic() + 15
    ready = False
    while not ready and time.monotonic() < deadline:
        try:
            ready = "subscribed at" in lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
    check(ready, "gridloop head-end printed `subscribed at …` within 15 s")
    log = os.path.join(workdir, "voltage_events-3.log")
    run_meter(binary, scenario, port, "json", meter_id, log)
    logged = parse_event_log(log, f"{GROUP}-{meter_id:04d}") or parse_event_log(log, f"{GROUP}/{meter_id}")
    check(len(logged) >= 2, f"meter {meter_id} logged its trip and clear ({len(logged)} events)")
    got = []
    deadline = time.monotonic() + TIMEOUT
    while len(got) < len(logged) and (m := alarms_sub.next(deadline)) is not None:
        if m[2] != PROBE_TOPIC:
            got.append((m[2], json.loads(m[3])))
    check(len(got) == len(logged), f"mosquitto_sub received {len(got)} alarms on gridloop-alarms/# "
                                   f"for {len(logged)} logged events")
    stop_process(he, signal.SIGINT)
    printed = [json.loads(l) for l in he.stdout.read().splitlines() if l.startswith("{")]
    check(he.returncode == 0, f"head-end exit code 0 after Ctrl-C (got {he.returncode})")
    with open(store) as f:
        stored = [json.loads(l) for l in f if l.strip()]
    for (t, code, phase, value, limit), (tp, a) in zip(logged, got):
        kind = "TRIP" if "TRIP" in code else "CLEAR"
        check(tp == f"gridloop-alarms/{SUBSTATION}/interop-head-end", f"alarm topic {tp}")
        check(a["kind"] == kind and a["code"] == code and a["phase"] == phase and a["meter"] == meter_id
              and a["name"] == f"{GROUP}-{meter_id:04d}" and a["substation"] == SUBSTATION
              and abs(a["value"] - value) <= 0.01 and a["limit"] == limit,
              f"alarm {a['kind']} {a['code']} {a['phase']} of {a['name']} = logged {code} {phase} value {value:.2f}")
        check(a["receive_ms"] >= a["source_ms"] and a["latency_ms"] == a["receive_ms"] - a["source_ms"],
              f"alarm times: source {a['source_ms']}, receive {a['receive_ms']}, latency {a['latency_ms']} ms")
    keys = [(a["meter"], a["seq"]) for _, a in got]
    check(len(set(keys)) == len(keys), "each alarm exactly once on MQTT")
    mine = [a for a in stored if a["meter"] == meter_id]
    check(mine == [a for _, a in got], f"the store holds exactly the {len(got)} alarms published")
    check([a for a in printed if a["meter"] == meter_id] == mine, "the head-end printed the same alarms")
    lat = sorted(a["latency_ms"] for _, a in got)
    print(f"      head-end alarm latency (source to head-end): {lat} ms", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("binary", nargs="?", default=None, help="the gridloop binary [target/release/gridloop]")
    ap.add_argument("--bin", default=None, help="same as the positional binary")
    ap.add_argument("--scenario", default=DEFAULT_SCENARIO)
    args = ap.parse_args()
    binary = args.binary or args.bin or "target/release/gridloop"
    if not os.path.exists(binary):
        print(f"FAIL  {binary} not found (build it with cargo build --release)")
        sys.exit(1)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gridloop-mqtt-interop-") as workdir:
        broker = Broker(workdir)
        sub = Subscriber(broker.port)
        sub.wait_subscribed()
        equality_run(binary, args.scenario, sub, workdir)
        will_run(binary, args.scenario, sub)
        headend_run(binary, args.scenario, broker.port, workdir)
        for f in reversed(cleanup):
            f()
        cleanup.clear()
    print(f"mqtt interop: all {checks} checks passed in {time.monotonic() - t0:.1f} s")


if __name__ == "__main__":
    main()
