#!/usr/bin/env python3
"""Interop check of `gridloop meter` against a third-party Modbus/TCP client (pymodbus).

Starts the meter on 127.0.0.1 with port 0 (the bound address is read from its first stdout
line), and with pymodbus:
  1. reads VOLTAGE_L1/L2/L3 (0x0024/0x0026/0x0028) as float32 ABCD before the sag: ~240 V;
  2. polls until the sag is over and checks the latched UV trip bit of L1 and the trip count;
  3. writes VOLT_UPPER_LIMIT_REG (FC16), reads it back, and checks IllegalDataValue for an
     out-of-range write;
  4. checks IllegalDataAddress for an unmapped address and for a read that splits a float32;
  5. reads the device identification (FC43 / MEI 14);
  6. runs the meter again to grid time 1.1 s (inside the sag) with each float32 word order and
     with scaled int16, decodes the voltages in Python (struct) and checks them against the
     ABCD reading within 0.1 %, and Urms(1/2) of L1 against the library's 180 V within 0.1 %;
  7. stops the meter with SIGINT and expects exit code 0.
Every wait is a bounded poll with a total timeout; exits non-zero on the first failure.
Loopback only.

Usage: python3 tools/modbus_interop.py [--bin target/release/gridloop] [--scenario FILE]
"""
import argparse
import os
import re
import selectors
import signal
import struct
import subprocess
import sys
import time

from pymodbus.client import ModbusTcpClient

VOLTAGE_L1_REG, VOLTAGE_L2_REG, VOLTAGE_L3_REG = 0x0024, 0x0026, 0x0028
STATUS_REG, TRIP_COUNT_REG, SOURCE_TIME_REG = 0x0048, 0x004A, 0x0050
URMS_HALF_L1_REG = 0x0042
UPPER_LIMIT_REG = 0x0100
SAG_URMS = 180.0
UV_LATCHED_L1, VALID = 1 << 8, 1 << 15
LATCHED_MASK = 0b111 << 8 | 0b111 << 11
ILLEGAL_DATA_ADDRESS, ILLEGAL_DATA_VALUE = 0x02, 0x03
NOMINAL = 240.0
DEFAULT_SCENARIO = "scenarios/library/sags-swells/sag-75pct-12-cycles.yaml"
TIMEOUT = 30.0

checks = 0


def check(cond, what):
    global checks
    if not cond:
        print(f"FAIL  {what}", flush=True)
        sys.exit(1)
    checks += 1
    print(f"ok    {what}", flush=True)


def word_bytes(regs, order):
    """The float's bytes A B C D from two registers laid out in `order`."""
    r0, r1 = (r.to_bytes(2, "big") for r in regs)
    return {
        "abcd": r0 + r1,
        "cdab": r1 + r0,
        "badc": r0[::-1] + r1[::-1],
        "dcba": r1[::-1] + r0[::-1],
    }[order]


def f32(regs, order="abcd"):
    return struct.unpack(">f", word_bytes(regs, order))[0]


def u32(regs, order="abcd"):
    return struct.unpack(">I", word_bytes(regs, order))[0]


class Meter:
    """A `gridloop meter` process and a pymodbus client connected to it."""

    def __init__(self, binary, scenario, extra):
        cmd = [binary, "meter", scenario, "--listen", "127.0.0.1:0", "--wait-for-client"] + extra
        print("+ " + " ".join(cmd), flush=True)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self._first_line(15.0)
        m = re.search(r"listening on (127\.0\.0\.1):(\d+)", line)
        if not m:
            self.kill()
            check(False, f"meter printed its address (got {line!r})")
        self.host, self.port = m.group(1), int(m.group(2))
        self.client = ModbusTcpClient(self.host, port=self.port, timeout=3, retries=0)
        check(self.client.connect(), f"pymodbus connected to {self.host}:{self.port}")

    def _first_line(self, timeout):
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            self.kill()
            check(False, f"meter printed its address within {timeout} s")
        return self.proc.stdout.readline()

    def read(self, address, count, fc=3):
        f = self.client.read_holding_registers if fc == 3 else self.client.read_input_registers
        rr = f(address, count=count, device_id=1)
        if rr.isError():
            raise RuntimeError(f"read 0x{address:04X}×{count}: exception {getattr(rr, 'exception_code', rr)}")
        return rr.registers

    def exception_of(self, rr):
        return getattr(rr, "exception_code", None) if rr.isError() else None

    def poll(self, what, cond, timeout=TIMEOUT):
        """Read the status block until cond(block) holds; returns the block."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            block = self.read(STATUS_REG, SOURCE_TIME_REG + 2 - STATUS_REG)
            if cond(block):
                return block
            time.sleep(0.02)  # an external process on a wall clock: polling is the only way
        check(False, f"{what} within {timeout} s")

    def stop(self):
        self.client.close()
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            check(False, "meter exits within 10 s of SIGINT")
        check(self.proc.returncode == 0, f"meter exit code 0 (got {self.proc.returncode}; {err.strip()})")
        return err

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def source_ms(block, order="abcd"):
    return u32(block[SOURCE_TIME_REG - STATUS_REG:][:2], order)


def main_run(binary, scenario):
    m = Meter(binary, scenario, ["--linger", "30s"])
    try:
        # 1. Before the sag (at 1 s): the 10/12-cycle RMS of every phase ~240 V.
        block = m.poll("first 10/12-cycle values", lambda b: b[0] & VALID)
        regs = m.read(VOLTAGE_L1_REG, 6)
        t_ms = source_ms(m.read(STATUS_REG, SOURCE_TIME_REG + 2 - STATUS_REG))
        check(t_ms < 1000, f"read before the sag (source time {t_ms} ms)")
        for i, name in enumerate(["L1", "L2", "L3"]):
            v = f32(regs[2 * i:2 * i + 2])
            check(abs(v - NOMINAL) < 0.01 * NOMINAL, f"VOLTAGE_{name}_REG float32 ABCD = {v:.3f} V (~240 V)")
        check(block[0] & LATCHED_MASK == 0, "no trip latched before the sag")
        check(len(m.read(VOLTAGE_L1_REG, 6, fc=4)) == 6, "FC04 reads the voltage registers too")
        # An int16 reading of the float32 register is off by orders of magnitude (detectable).
        raw = struct.unpack(">h", regs[0].to_bytes(2, "big"))[0]
        check(raw / NOMINAL > 50, f"0x0024 read as int16 gives {raw} (vs ~240): detectable mismatch")

        # 2. After the sag: UV on L1 tripped (latched), once.
        block = m.poll("source time past the sag (1.3 s)", lambda b: source_ms(b) >= 1300)
        check(block[0] & UV_LATCHED_L1, f"UV trip latched on L1 (STATUS_REG 0x{block[0]:04X})")
        check(block[0] & LATCHED_MASK == UV_LATCHED_L1, "nothing else latched")
        trips = u32(block[TRIP_COUNT_REG - STATUS_REG:][:2])
        check(trips == 1, f"TRIP_COUNT_REG = {trips}")

        # 3. Write a threshold and read it back; an out-of-range value is refused.
        new = struct.unpack(">HH", struct.pack(">f", 250.0))
        rr = m.client.write_registers(UPPER_LIMIT_REG, list(new), device_id=1)
        check(not rr.isError(), "FC16 write VOLT_UPPER_LIMIT_REG = 250.0")
        back = f32(m.read(UPPER_LIMIT_REG, 2))
        check(back == 250.0, f"VOLT_UPPER_LIMIT_REG reads back {back}")
        bad = struct.unpack(">HH", struct.pack(">f", 5000.0))
        rr = m.client.write_registers(UPPER_LIMIT_REG, list(bad), device_id=1)
        check(m.exception_of(rr) == ILLEGAL_DATA_VALUE, f"out-of-range write: exception {m.exception_of(rr)}")
        check(f32(m.read(UPPER_LIMIT_REG, 2)) == 250.0, "refused write changed nothing")

        # 4. Unmapped address and a split float32.
        rr = m.client.read_holding_registers(0x0000, count=2, device_id=1)
        check(m.exception_of(rr) == ILLEGAL_DATA_ADDRESS, f"unmapped 0x0000: exception {m.exception_of(rr)}")
        rr = m.client.read_holding_registers(0x0025, count=2, device_id=1)
        check(m.exception_of(rr) == ILLEGAL_DATA_ADDRESS, f"split float32 at 0x0025: exception {m.exception_of(rr)}")

        # 5. Device identification.
        rr = m.client.read_device_information(read_code=1, object_id=0, device_id=1)
        check(not rr.isError(), "FC43 / MEI 14 read device identification")
        info = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in rr.information.items()}
        check(info.get(0) == "gridloop" and info.get(1) == "GL-VM" and re.fullmatch(r"\d+\.\d+\.\d+", info.get(2, "")),
              f"identification objects {info}")
    except Exception:
        m.kill()
        raise
    err = m.stop()
    check("interrupted" in err, "meter reports the interruption on stderr")


def encodings_run(binary, scenario):
    """The same frozen state (grid time 1.1 s, inside the sag) read in every encoding."""
    values = {}
    for enc in ["float32:abcd", "float32:cdab", "float32:badc", "float32:dcba", "int16:0.1"]:
        m = Meter(binary, scenario, ["--encoding", enc, "--duration", "1.1s", "--linger", "30s"])
        try:
            order = enc.split(":")[1] if enc.startswith("float32") else "abcd"
            m.poll(f"{enc}: grid time 1.1 s reached", lambda b: source_ms(b, order) >= 1100)
            volts = []
            for reg in (VOLTAGE_L1_REG, VOLTAGE_L2_REG, VOLTAGE_L3_REG, URMS_HALF_L1_REG):
                if enc.startswith("int16"):
                    raw = struct.unpack(">h", m.read(reg, 1)[0].to_bytes(2, "big"))[0]
                    volts.append(raw * 0.1)
                else:
                    volts.append(f32(m.read(reg, 2), order))
            values[enc] = volts
        except Exception:
            m.kill()
            raise
        m.stop()
    ref = values["float32:abcd"]
    names = ["VOLTAGE_L1_REG", "VOLTAGE_L2_REG", "VOLTAGE_L3_REG", "URMS_HALF_L1_REG"]
    # The library's expectation: Urms(1/2) of L1 at 1.1 s is 180.0 V within 0.1 %.
    check(abs(ref[3] - SAG_URMS) <= 0.001 * SAG_URMS, f"URMS_HALF_L1_REG at 1.1 s = {ref[3]:.3f} V (180 V ± 0.1 %)")
    for i in (1, 2):
        check(abs(ref[i] - NOMINAL) <= 0.001 * NOMINAL, f"{names[i]} at 1.1 s = {ref[i]:.3f} V (240 V ± 0.1 %)")
    # The last 12-cycle window that ended by 1.1 s caught the sag's first cycle only.
    check(ref[0] < NOMINAL - 0.5, f"VOLTAGE_L1_REG at 1.1 s = {ref[0]:.3f} V (window caught the sag's onset)")
    for enc, volts in values.items():
        for name, v, r in zip(names, volts, ref):
            check(abs(v - r) <= 0.001 * r, f"{enc}: {name} = {v:.3f} V (ABCD {r:.3f} V, within 0.1 %)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default="target/release/gridloop")
    ap.add_argument("--scenario", default=DEFAULT_SCENARIO)
    args = ap.parse_args()
    if not os.path.exists(args.bin):
        print(f"FAIL  {args.bin} not found (build it with cargo build --release)")
        sys.exit(1)
    t0 = time.monotonic()
    main_run(args.bin, args.scenario)
    encodings_run(args.bin, args.scenario)
    print(f"modbus interop: all {checks} checks passed in {time.monotonic() - t0:.1f} s")


if __name__ == "__main__":
    main()
