//! Modbus RTU framing, sans-io: request ADUs (unit id + PDU + CRC-16/MODBUS), decoding of
//! response bytes into a two-layer result, and the inter-frame silence for a serial format
//! (STANDARDS.md §9.1–9.4). No clocks, no sockets: `reader` owns the IO.
//!
//! The two layers stay distinct types: [`Answer::Exception`] means the device answered "no"
//! (FC | 0x80 + code); [`LinkError`] means no valid answer arrived (CRC, truncated frame,
//! unexpected echo, timeout, IO).

use std::time::Duration;

/// Largest RTU ADU: address (1) + PDU (253) + CRC (2).
pub const MAX_ADU: usize = 256;
/// FC03/FC04 quantity limit.
pub const MAX_READ_REGISTERS: u16 = 125;
/// FC16 quantity limit.
pub const MAX_WRITE_REGISTERS: u16 = 123;

/// Function codes this module frames.
pub const FC_READ_HOLDING: u8 = 0x03;
pub const FC_READ_INPUT: u8 = 0x04;
pub const FC_WRITE_SINGLE: u8 = 0x06;
pub const FC_WRITE_MULTIPLE: u8 = 0x10;

/// CRC-16/MODBUS: polynomial 0x8005 reflected (0xA001), init 0xFFFF, no final XOR. Sent low byte
/// first.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Which register table a read addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegisterKind {
    /// FC03.
    Holding,
    /// FC04.
    Input,
}

impl RegisterKind {
    /// The read function code.
    pub fn function(self) -> u8 {
        match self {
            RegisterKind::Holding => FC_READ_HOLDING,
            RegisterKind::Input => FC_READ_INPUT,
        }
    }
}

/// A request that cannot be framed (quantity outside the function's limits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("register count {count} is outside 1..={max} for function 0x{function:02X}")]
    Quantity {
        function: u8,
        count: usize,
        max: u16,
    },
    #[error("registers {start:#06X} + {count} run past 0xFFFF")]
    AddressOverflow { start: u16, count: usize },
}

fn check_quantity(function: u8, start: u16, count: usize, max: u16) -> Result<(), RequestError> {
    if count == 0 || count > usize::from(max) {
        return Err(RequestError::Quantity {
            function,
            count,
            max,
        });
    }
    if usize::from(start) + count > 0x1_0000 {
        return Err(RequestError::AddressOverflow { start, count });
    }
    Ok(())
}

/// A validated register read (FC03/FC04, 1–125 registers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequest {
    kind: RegisterKind,
    start: u16,
    count: u16,
}

impl ReadRequest {
    pub fn new(kind: RegisterKind, start: u16, count: u16) -> Result<Self, RequestError> {
        check_quantity(
            kind.function(),
            start,
            usize::from(count),
            MAX_READ_REGISTERS,
        )?;
        Ok(Self { kind, start, count })
    }
    pub fn kind(&self) -> RegisterKind {
        self.kind
    }
    pub fn start(&self) -> u16 {
        self.start
    }
    pub fn count(&self) -> u16 {
        self.count
    }
}

/// A request PDU this module frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Read(ReadRequest),
    /// FC06.
    WriteSingle {
        address: u16,
        value: u16,
    },
    /// FC16 (validated by [`Request::write_multiple`]).
    WriteMultiple {
        start: u16,
        values: Vec<u16>,
    },
}

impl Request {
    /// FC16 with 1–123 values.
    pub fn write_multiple(start: u16, values: Vec<u16>) -> Result<Self, RequestError> {
        check_quantity(FC_WRITE_MULTIPLE, start, values.len(), MAX_WRITE_REGISTERS)?;
        Ok(Request::WriteMultiple { start, values })
    }

    /// The function code.
    pub fn function(&self) -> u8 {
        match self {
            Request::Read(r) => r.kind.function(),
            Request::WriteSingle { .. } => FC_WRITE_SINGLE,
            Request::WriteMultiple { .. } => FC_WRITE_MULTIPLE,
        }
    }

    /// The PDU bytes (function code + data).
    pub fn pdu(&self) -> Vec<u8> {
        let mut pdu = vec![self.function()];
        match self {
            Request::Read(r) => {
                pdu.extend(r.start.to_be_bytes());
                pdu.extend(r.count.to_be_bytes());
            }
            Request::WriteSingle { address, value } => {
                pdu.extend(address.to_be_bytes());
                pdu.extend(value.to_be_bytes());
            }
            Request::WriteMultiple { start, values } => {
                pdu.extend(start.to_be_bytes());
                // Validated to ≤ 123 values, so these fit.
                pdu.extend((values.len() as u16).to_be_bytes());
                pdu.push((values.len() * 2) as u8);
                for v in values {
                    pdu.extend(v.to_be_bytes());
                }
            }
        }
        pdu
    }

    /// Length of the normal (non-exception) response ADU.
    pub fn response_len(&self) -> usize {
        match self {
            Request::Read(r) => 5 + 2 * usize::from(r.count),
            Request::WriteSingle { .. } | Request::WriteMultiple { .. } => 8,
        }
    }
}

/// The RTU ADU for `request` to `unit`: unit id, PDU, CRC low byte first.
pub fn encode_request(unit: u8, request: &Request) -> Vec<u8> {
    let mut adu = vec![unit];
    adu.extend(request.pdu());
    let crc = crc16(&adu);
    adu.extend(crc.to_le_bytes());
    adu
}

/// A normal response's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// FC03/FC04: the registers read, in order.
    Registers(Vec<u16>),
    /// FC06 echo.
    WroteSingle { address: u16, value: u16 },
    /// FC16 echo.
    WroteMultiple { start: u16, count: u16 },
}

/// The device answered with an exception (function | 0x80, code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error("device exception 0x{code:02X} ({}) to function 0x{function:02X}", exception_name(*.code))]
pub struct DeviceException {
    /// The request's function code (without the 0x80 bit).
    pub function: u8,
    /// The exception code (STANDARDS.md §9.3).
    pub code: u8,
}

/// The spec's name for an exception code.
pub fn exception_name(code: u8) -> &'static str {
    match code {
        0x01 => "illegal function",
        0x02 => "illegal data address",
        0x03 => "illegal data value",
        0x04 => "server device failure",
        0x05 => "acknowledge",
        0x06 => "server device busy",
        0x08 => "memory parity error",
        0x0A => "gateway path unavailable",
        0x0B => "gateway target device failed to respond",
        _ => "unknown exception code",
    }
}

/// The device's answer: a value, or an exception. Distinct from [`LinkError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    Value(T),
    Exception(DeviceException),
}

impl<T> Answer<T> {
    /// Map the value, keeping an exception.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Answer<U> {
        match self {
            Answer::Value(v) => Answer::Value(f(v)),
            Answer::Exception(e) => Answer::Exception(e),
        }
    }
    /// The value, or the exception as an error.
    pub fn into_result(self) -> Result<T, DeviceException> {
        match self {
            Answer::Value(v) => Ok(v),
            Answer::Exception(e) => Err(e),
        }
    }
}

/// The link failed: no valid answer from the device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("{peer}: CRC mismatch: frame carries {received:#06X}, computed {computed:#06X}")]
    Crc {
        peer: String,
        received: u16,
        computed: u16,
    },
    #[error("{peer}: truncated frame: {got} of {expected} bytes")]
    Truncated {
        peer: String,
        expected: usize,
        got: usize,
    },
    #[error("{peer}: unexpected response: {detail}")]
    Unexpected { peer: String, detail: String },
    #[error("{peer}: no response within {after:?}")]
    Timeout { peer: String, after: Duration },
    #[error("{peer}: {detail}")]
    Io { peer: String, detail: String },
}

/// Outcome of feeding received bytes to [`decode_response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The frame is not complete: `needed` bytes in total are expected so far.
    Incomplete { needed: usize },
    /// A complete, CRC-checked frame of `len` bytes.
    Complete {
        answer: Answer<Response>,
        len: usize,
    },
}

/// Decode the response to `request` from `unit` at the start of `buf` (the bytes received so
/// far). Never panics on any input. `peer` names the link in errors.
///
/// Checks, in order: enough bytes for the frame the header announces (else `Incomplete`), the
/// CRC, then the unit id and the function echo, then the payload's consistency with the request.
pub fn decode_response(
    unit: u8,
    request: &Request,
    buf: &[u8],
    peer: &str,
) -> Result<Decoded, LinkError> {
    let function = request.function();
    let unexpected = |detail: String| LinkError::Unexpected {
        peer: peer.to_owned(),
        detail,
    };
    if buf.len() < 2 {
        return Ok(Decoded::Incomplete { needed: 5 });
    }
    let needed = if buf[1] & 0x80 != 0 {
        5
    } else if request_is_read(request) && buf[1] == function {
        // unit, fc, byte count, data, crc
        if buf.len() < 3 {
            return Ok(Decoded::Incomplete { needed: 5 });
        }
        5 + usize::from(buf[2])
    } else {
        request.response_len()
    };
    if buf.len() < needed {
        return Ok(Decoded::Incomplete { needed });
    }
    let frame = &buf[..needed];
    let received = u16::from_le_bytes([frame[needed - 2], frame[needed - 1]]);
    let computed = crc16(&frame[..needed - 2]);
    if received != computed {
        return Err(LinkError::Crc {
            peer: peer.to_owned(),
            received,
            computed,
        });
    }
    if frame[0] != unit {
        return Err(unexpected(format!(
            "unit id {} answered, {} was asked",
            frame[0], unit
        )));
    }
    let fc = frame[1];
    if fc == function | 0x80 {
        return Ok(Decoded::Complete {
            answer: Answer::Exception(DeviceException {
                function,
                code: frame[2],
            }),
            len: needed,
        });
    }
    if fc != function {
        return Err(unexpected(format!(
            "function 0x{fc:02X} in the response to function 0x{function:02X}"
        )));
    }
    let be = |i: usize| u16::from_be_bytes([frame[i], frame[i + 1]]);
    let response = match request {
        Request::Read(r) => {
            let byte_count = usize::from(frame[2]);
            if byte_count != 2 * usize::from(r.count) {
                return Err(unexpected(format!(
                    "byte count {byte_count} for {} registers",
                    r.count
                )));
            }
            Response::Registers((0..usize::from(r.count)).map(|i| be(3 + 2 * i)).collect())
        }
        Request::WriteSingle { address, value } => {
            let (a, v) = (be(2), be(4));
            if (a, v) != (*address, *value) {
                return Err(unexpected(format!(
                    "write echo {a:#06X}={v:#06X}, sent {address:#06X}={value:#06X}"
                )));
            }
            Response::WroteSingle {
                address: a,
                value: v,
            }
        }
        Request::WriteMultiple { start, values } => {
            let (s, n) = (be(2), be(4));
            if s != *start || usize::from(n) != values.len() {
                return Err(unexpected(format!(
                    "write echo {s:#06X}+{n}, sent {start:#06X}+{}",
                    values.len()
                )));
            }
            Response::WroteMultiple { start: s, count: n }
        }
    };
    Ok(Decoded::Complete {
        answer: Answer::Value(response),
        len: needed,
    })
}

fn request_is_read(request: &Request) -> bool {
    matches!(request, Request::Read(_))
}

/// Decode one complete, silence-delimited frame: fewer bytes than the header announces is
/// [`LinkError::Truncated`].
pub fn decode_frame(
    unit: u8,
    request: &Request,
    frame: &[u8],
    peer: &str,
) -> Result<Answer<Response>, LinkError> {
    match decode_response(unit, request, frame, peer)? {
        Decoded::Complete { answer, .. } => Ok(answer),
        Decoded::Incomplete { needed } => Err(LinkError::Truncated {
            peer: peer.to_owned(),
            expected: needed,
            got: frame.len(),
        }),
    }
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

/// A serial character format: baud rate, data bits (5–8), parity, stop bits (1–2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SerialFormat {
    pub baud: u32,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: u8,
}

impl Default for SerialFormat {
    /// 115200 8N1.
    fn default() -> Self {
        Self {
            baud: 115_200,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
        }
    }
}

impl SerialFormat {
    /// Bits on the line per character: start + data + parity + stop.
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }

    /// Time one character takes on the line (zero baud is treated as 1 Bd, never a panic).
    pub fn char_time(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.bits_per_char()) / f64::from(self.baud.max(1)))
    }

    /// Inter-frame silence t3.5: 3.5 character times, fixed 1.75 ms above 19 200 Bd.
    pub fn inter_frame_silence(&self) -> Duration {
        if self.baud > 19_200 {
            Duration::from_micros(1750)
        } else {
            self.char_time().mul_f64(3.5)
        }
    }

    /// Inter-character limit t1.5: 1.5 character times, fixed 750 µs above 19 200 Bd.
    pub fn inter_char_timeout(&self) -> Duration {
        if self.baud > 19_200 {
            Duration::from_micros(750)
        } else {
            self.char_time().mul_f64(1.5)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    /// Table-driven CRC-16/MODBUS, written independently of the bitwise `crc16`.
    fn crc16_table(bytes: &[u8]) -> u16 {
        let table: Vec<u16> = (0u16..256)
            .map(|i| {
                (0..8).fold(i, |c, _| {
                    if c & 1 == 1 {
                        (c >> 1) ^ 0xA001
                    } else {
                        c >> 1
                    }
                })
            })
            .collect();
        bytes.iter().fold(0xFFFF, |crc, &b| {
            (crc >> 8) ^ table[usize::from((crc ^ u16::from(b)) & 0xFF)]
        })
    }

    fn read(start: u16, count: u16) -> Request {
        Request::Read(ReadRequest::new(RegisterKind::Holding, start, count).unwrap())
    }

    fn with_crc(mut bytes: Vec<u8>) -> Vec<u8> {
        let crc = crc16_table(&bytes);
        bytes.extend(crc.to_le_bytes());
        bytes
    }

    #[test]
    fn crc_check_values_from_the_spec() {
        assert_eq!(crc16(b"123456789"), 0x4B37);
        assert_eq!(crc16(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x0A]), 0xCDC5);
        assert_eq!(
            encode_request(1, &read(0, 10)),
            [0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xC5, 0xCD]
        );
    }

    proptest! {
        #[test]
        fn crc_matches_the_table(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(crc16(&bytes), crc16_table(&bytes));
        }

        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300),
                                 count in 1u16..=125) {
            let _ = decode_response(1, &read(0x24, count), &bytes, "p");
            let _ = decode_response(1, &Request::WriteSingle { address: 1, value: 2 }, &bytes, "p");
            let m = Request::write_multiple(0, vec![0; usize::from(count.min(123))]).unwrap();
            let _ = decode_response(1, &m, &bytes, "p");
        }
    }

    #[test]
    fn encodes_fc04_fc06_fc16() {
        let r = Request::Read(ReadRequest::new(RegisterKind::Input, 0x0030, 2).unwrap());
        assert_eq!(
            encode_request(7, &r),
            with_crc(vec![7, 0x04, 0x00, 0x30, 0x00, 0x02])
        );
        let w = Request::WriteSingle {
            address: 0x0101,
            value: 0xBEEF,
        };
        assert_eq!(
            encode_request(1, &w),
            with_crc(vec![1, 0x06, 0x01, 0x01, 0xBE, 0xEF])
        );
        let m = Request::write_multiple(0x10, vec![0x0102, 0x0304]).unwrap();
        assert_eq!(
            encode_request(1, &m),
            with_crc(vec![1, 0x10, 0x00, 0x10, 0x00, 0x02, 4, 1, 2, 3, 4])
        );
    }

    #[test]
    fn quantity_limits() {
        assert!(ReadRequest::new(RegisterKind::Holding, 0, 0).is_err());
        assert!(ReadRequest::new(RegisterKind::Holding, 0, 125).is_ok());
        assert_eq!(
            ReadRequest::new(RegisterKind::Holding, 0, 126),
            Err(RequestError::Quantity {
                function: 3,
                count: 126,
                max: 125
            })
        );
        assert!(ReadRequest::new(RegisterKind::Holding, 0xFFFF, 2).is_err());
        assert!(ReadRequest::new(RegisterKind::Holding, 0xFFFE, 2).is_ok());
        assert!(Request::write_multiple(0, vec![0; 124]).is_err());
        assert!(Request::write_multiple(0, vec![]).is_err());
    }

    #[test]
    fn decodes_registers_incrementally() {
        let req = read(0x24, 2);
        let frame = with_crc(vec![1, 3, 4, 0x43, 0x66, 0x19, 0x9A]);
        for cut in 0..frame.len() {
            let d = decode_response(1, &req, &frame[..cut], "p").unwrap();
            assert!(matches!(d, Decoded::Incomplete { .. }), "cut {cut}: {d:?}");
        }
        let mut stream = frame.clone();
        stream.extend([0xAA, 0xBB]); // trailing garbage is not part of this frame
        assert_eq!(
            decode_response(1, &req, &stream, "p").unwrap(),
            Decoded::Complete {
                answer: Answer::Value(Response::Registers(vec![0x4366, 0x199A])),
                len: 9
            }
        );
    }

    #[test]
    fn crc_error() {
        let mut frame = with_crc(vec![1, 3, 4, 0x43, 0x66, 0x19, 0x9A]);
        frame[4] ^= 0x01;
        let err = decode_frame(1, &read(0x24, 2), &frame, "/dev/ttyUSB0").unwrap_err();
        assert!(matches!(err, LinkError::Crc { .. }), "{err}");
        assert!(err.to_string().starts_with("/dev/ttyUSB0: CRC mismatch"));
    }

    #[test]
    fn truncated_frame() {
        let frame = with_crc(vec![1, 3, 4, 0x43, 0x66, 0x19, 0x9A]);
        assert_eq!(
            decode_frame(1, &read(0x24, 2), &frame[..6], "p"),
            Err(LinkError::Truncated {
                peer: "p".into(),
                expected: 9,
                got: 6
            })
        );
        assert!(matches!(
            decode_frame(1, &read(0x24, 2), &[1], "p"),
            Err(LinkError::Truncated { got: 1, .. })
        ));
    }

    #[test]
    fn wrong_unit_function_or_byte_count_is_unexpected() {
        let req = read(0x24, 2);
        let other_unit = with_crc(vec![2, 3, 4, 0x43, 0x66, 0x19, 0x9A]);
        let e = decode_frame(1, &req, &other_unit, "p").unwrap_err();
        assert!(
            e.to_string().contains("unit id 2 answered, 1 was asked"),
            "{e}"
        );
        let other_fc = with_crc(vec![1, 4, 4, 0x43, 0x66, 0x19, 0x9A]);
        // FC04 frame to an FC03 request: length taken from the request (9), CRC fits, echo wrong.
        let e = decode_frame(1, &req, &other_fc, "p").unwrap_err();
        assert!(e.to_string().contains("function 0x04"), "{e}");
        let short_count = with_crc(vec![1, 3, 2, 0x43, 0x66]);
        let e = decode_frame(1, &req, &short_count, "p").unwrap_err();
        assert!(
            e.to_string().contains("byte count 2 for 2 registers"),
            "{e}"
        );
        let wrong_exception = with_crc(vec![1, 0x84, 2]);
        assert!(matches!(
            decode_frame(1, &req, &wrong_exception, "p"),
            Err(LinkError::Unexpected { .. })
        ));
    }

    #[test]
    fn exception_is_an_answer_not_a_link_error() {
        let frame = with_crc(vec![1, 0x83, 0x02]);
        let answer = decode_frame(1, &read(0x0100, 2), &frame, "p").unwrap();
        let exc = DeviceException {
            function: 3,
            code: 2,
        };
        assert_eq!(answer, Answer::Exception(exc));
        assert_eq!(
            exc.to_string(),
            "device exception 0x02 (illegal data address) to function 0x03"
        );
    }

    #[test]
    fn write_echoes() {
        let w = Request::WriteSingle {
            address: 5,
            value: 9,
        };
        let echo = encode_request(1, &w);
        assert_eq!(
            decode_frame(1, &w, &echo, "p").unwrap(),
            Answer::Value(Response::WroteSingle {
                address: 5,
                value: 9
            })
        );
        let bad = with_crc(vec![1, 6, 0, 5, 0, 8]);
        assert!(matches!(
            decode_frame(1, &w, &bad, "p"),
            Err(LinkError::Unexpected { .. })
        ));
        let m = Request::write_multiple(0x10, vec![1, 2, 3]).unwrap();
        let echo = with_crc(vec![1, 0x10, 0, 0x10, 0, 3]);
        assert_eq!(
            decode_frame(1, &m, &echo, "p").unwrap(),
            Answer::Value(Response::WroteMultiple {
                start: 0x10,
                count: 3
            })
        );
    }

    #[test]
    fn inter_frame_silence_from_the_format() {
        let f = |baud, parity, stop_bits| SerialFormat {
            baud,
            data_bits: 8,
            parity,
            stop_bits,
        };
        // 9600 8E1: 11 bits per char = 1.145833 ms; t3.5 = 4.0104 ms; t1.5 = 1.71875 ms.
        let even = f(9600, Parity::Even, 1);
        assert_eq!(even.bits_per_char(), 11);
        assert!((even.inter_frame_silence().as_secs_f64() - 3.5 * 11.0 / 9600.0).abs() < 1e-8);
        assert!((even.inter_char_timeout().as_secs_f64() - 1.5 * 11.0 / 9600.0).abs() < 1e-8);
        // 9600 8N1: 10 bits; 19200 8N2: 11 bits, still computed (not above 19200).
        assert!(
            (f(9600, Parity::None, 1).inter_frame_silence().as_secs_f64() - 35.0 / 9600.0).abs()
                < 1e-8
        );
        assert!(
            (f(19_200, Parity::None, 2)
                .inter_frame_silence()
                .as_secs_f64()
                - 38.5 / 19_200.0)
                .abs()
                < 1e-8
        );
        // Above 19200: fixed values.
        assert_eq!(
            SerialFormat::default().inter_frame_silence(),
            Duration::from_micros(1750)
        );
        assert_eq!(
            f(38_400, Parity::Odd, 1).inter_char_timeout(),
            Duration::from_micros(750)
        );
        // Zero baud does not panic.
        assert!(f(0, Parity::None, 1).inter_frame_silence() > Duration::from_secs(1));
    }
}
