#!/usr/bin/env python3
"""A third-party Modbus meter for the HIL bridge's interop tests: a pymodbus server (not gridloop
code) whose holding registers hold float32 ABCD voltages 230.1 / 231.2 / 229.9 V at 0x0024 /
0x0026 / 0x0028 and 50.0 Hz at 0x0030 (docs/register-map.md), served as device id 1 either over
Modbus TCP (--tcp PORT, on 127.0.0.1) or over Modbus RTU on a serial device (--rtu PATH, e.g. one
end of a socat pseudo-terminal pair). Addresses outside 0x0024-0x0031 answer exception 0x02.

Prints "ready" on stdout once serving; the test kills the process when it is done.
"""

import argparse
import asyncio
import logging
import struct
import sys

from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

BLOCK_START = 0x0024
VALUES = {0x0024: 230.1, 0x0026: 231.2, 0x0028: 229.9, 0x0030: 50.0}
BLOCK_LEN = 0x0032 - BLOCK_START


def registers() -> list[int]:
    regs = [0] * BLOCK_LEN
    for addr, value in VALUES.items():
        hi, lo = struct.unpack(">HH", struct.pack(">f", value))  # ABCD: R0 = AB, R1 = CD
        regs[addr - BLOCK_START] = hi
        regs[addr - BLOCK_START + 1] = lo
    return regs


async def serve(args: argparse.Namespace) -> None:
    device = SimDevice(
        id=1,
        simdata=[SimData(address=BLOCK_START, values=registers(), datatype=DataType.REGISTERS)],
    )
    if args.tcp is not None:
        server = ModbusTcpServer(device, address=("127.0.0.1", args.tcp))
    else:
        server = ModbusSerialServer(
            device, port=args.rtu, baudrate=args.baud, bytesize=8, parity="N", stopbits=1
        )
    # Binds the listener / opens the serial device before returning (raises if it cannot).
    await server.serve_forever(background=True)
    print("ready", flush=True)
    await asyncio.Event().wait()  # serve until killed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--tcp", type=int, metavar="PORT", help="serve Modbus TCP on 127.0.0.1:PORT")
    mode.add_argument("--rtu", metavar="PATH", help="serve Modbus RTU on this serial device")
    parser.add_argument("--baud", type=int, default=115200, help="RTU baud rate (8N1)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
