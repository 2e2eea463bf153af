//! Register value encodings as pure functions: IEEE-754 float32 in four word orders and scaled
//! integers (STANDARDS.md §9.5–9.6). Decoding mismatches must be detectable by callers.

/// Order of the float's bytes A B C D (A most significant) across two 16-bit registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WordOrder {
    /// R0 = AB, R1 = CD (big-endian, high word first).
    Abcd,
    /// R0 = CD, R1 = AB (word-swapped).
    Cdab,
    /// R0 = BA, R1 = DC (byte-swapped within words).
    Badc,
    /// R0 = DC, R1 = BA (little-endian).
    Dcba,
}

/// How one value is laid out in holding registers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RegisterEncoding {
    /// float32 over two registers.
    Float32(WordOrder),
    /// Signed 16-bit integer, value = raw × scale (e.g. scale 0.1 V/LSB).
    Int16 { scale: f64 },
    /// Unsigned 32-bit over two registers, value = raw × scale.
    Uint32 { scale: f64, word_order: WordOrder },
}

impl Default for RegisterEncoding {
    fn default() -> Self {
        RegisterEncoding::Float32(WordOrder::Abcd)
    }
}

/// Why a value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodingError {
    #[error("value {value} is outside the range of {encoding}")]
    OutOfRange { value: f64, encoding: &'static str },
    #[error("expected {expected} registers, got {got}")]
    WrongLength { expected: usize, got: usize },
    #[error("decoded value is not finite")]
    NotFinite,
}

/// Registers one value occupies: 1 for `Int16`, 2 otherwise.
pub fn register_count(enc: RegisterEncoding) -> usize {
    match enc {
        RegisterEncoding::Int16 { .. } => 1,
        RegisterEncoding::Float32(_) | RegisterEncoding::Uint32 { .. } => 2,
    }
}

/// Split a 32-bit word (bytes A B C D, A most significant) into two registers in `order`.
fn split_u32(bits: u32, order: WordOrder) -> [u16; 2] {
    let [a, b, c, d] = bits.to_be_bytes();
    let reg = |hi: u8, lo: u8| u16::from_be_bytes([hi, lo]);
    match order {
        WordOrder::Abcd => [reg(a, b), reg(c, d)],
        WordOrder::Cdab => [reg(c, d), reg(a, b)],
        WordOrder::Badc => [reg(b, a), reg(d, c)],
        WordOrder::Dcba => [reg(d, c), reg(b, a)],
    }
}

/// Inverse of [`split_u32`].
fn join_u32(regs: [u16; 2], order: WordOrder) -> u32 {
    let [r0h, r0l] = regs[0].to_be_bytes();
    let [r1h, r1l] = regs[1].to_be_bytes();
    let [a, b, c, d] = match order {
        WordOrder::Abcd => [r0h, r0l, r1h, r1l],
        WordOrder::Cdab => [r1h, r1l, r0h, r0l],
        WordOrder::Badc => [r0l, r0h, r1l, r1h],
        WordOrder::Dcba => [r1l, r1h, r0l, r0h],
    };
    u32::from_be_bytes([a, b, c, d])
}

/// IEEE-754 float32 across two registers in `order` (STANDARDS.md §9.5).
pub fn encode_f32(value: f32, order: WordOrder) -> [u16; 2] {
    split_u32(value.to_bits(), order)
}

/// Inverse of [`encode_f32`]; bit-exact for every value including NaN payloads.
pub fn decode_f32(regs: [u16; 2], order: WordOrder) -> f32 {
    f32::from_bits(join_u32(regs, order))
}

/// `value / scale` rounded to the nearest integer, if it lies in `lo..=hi`.
fn scaled(
    value: f64,
    scale: f64,
    lo: f64,
    hi: f64,
    encoding: &'static str,
) -> Result<f64, EncodingError> {
    let raw = (value / scale).round();
    if raw.is_finite() && scale.is_finite() && scale != 0.0 && (lo..=hi).contains(&raw) {
        Ok(raw)
    } else {
        Err(EncodingError::OutOfRange { value, encoding })
    }
}

/// Lay `value` out in registers. Scaled integers round `value / scale` to the nearest integer
/// and fail when it does not fit; float32 fails for non-finite values and values beyond the
/// float32 range (they would silently become infinite).
pub fn encode(value: f64, enc: RegisterEncoding) -> Result<Vec<u16>, EncodingError> {
    match enc {
        RegisterEncoding::Float32(order) => {
            let v = value as f32;
            if !value.is_finite() || !v.is_finite() {
                return Err(EncodingError::OutOfRange {
                    value,
                    encoding: "float32",
                });
            }
            Ok(encode_f32(v, order).to_vec())
        }
        RegisterEncoding::Int16 { scale } => {
            let raw = scaled(
                value,
                scale,
                f64::from(i16::MIN),
                f64::from(i16::MAX),
                "int16",
            )?;
            // In range by the check above, so the casts are exact.
            Ok(vec![raw as i16 as u16])
        }
        RegisterEncoding::Uint32 { scale, word_order } => {
            let raw = scaled(value, scale, 0.0, f64::from(u32::MAX), "uint32")?;
            Ok(split_u32(raw as u32, word_order).to_vec())
        }
    }
}

/// Read a value back from registers laid out as `enc`. Fails on the wrong register count and on
/// non-finite results (e.g. the float32 "not implemented" NaN).
pub fn decode(regs: &[u16], enc: RegisterEncoding) -> Result<f64, EncodingError> {
    let expected = register_count(enc);
    if regs.len() != expected {
        return Err(EncodingError::WrongLength {
            expected,
            got: regs.len(),
        });
    }
    let value = match enc {
        RegisterEncoding::Float32(order) => f64::from(decode_f32([regs[0], regs[1]], order)),
        RegisterEncoding::Int16 { scale } => f64::from(regs[0] as i16) * scale,
        RegisterEncoding::Uint32 { scale, word_order } => {
            f64::from(join_u32([regs[0], regs[1]], word_order)) * scale
        }
    };
    if value.is_finite() {
        Ok(value)
    } else {
        Err(EncodingError::NotFinite)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ORDERS: [WordOrder; 4] = [
        WordOrder::Abcd,
        WordOrder::Cdab,
        WordOrder::Badc,
        WordOrder::Dcba,
    ];

    #[test]
    fn standards_table_230_volts() {
        // STANDARDS.md §9.5: 230.0 f = 0x43660000.
        assert_eq!(230.0_f32.to_bits(), 0x4366_0000);
        assert_eq!(encode_f32(230.0, WordOrder::Abcd), [0x4366, 0x0000]);
        assert_eq!(encode_f32(230.0, WordOrder::Cdab), [0x0000, 0x4366]);
        assert_eq!(encode_f32(230.0, WordOrder::Badc), [0x6643, 0x0000]);
        assert_eq!(encode_f32(230.0, WordOrder::Dcba), [0x0000, 0x6643]);
        for order in ORDERS {
            assert_eq!(decode_f32(encode_f32(230.0, order), order), 230.0);
        }
    }

    #[test]
    fn standards_more_vectors() {
        for (v, bits) in [
            (120.0_f32, 0x42F0_0000_u32),
            (240.0, 0x4370_0000),
            (277.0, 0x438A_8000),
        ] {
            let ab = (bits >> 16) as u16;
            let cd = (bits & 0xFFFF) as u16;
            assert_eq!(encode_f32(v, WordOrder::Abcd), [ab, cd]);
            assert_eq!(encode_f32(v, WordOrder::Cdab), [cd, ab]);
            assert_eq!(
                encode_f32(v, WordOrder::Badc),
                [ab.swap_bytes(), cd.swap_bytes()]
            );
            assert_eq!(
                encode_f32(v, WordOrder::Dcba),
                [cd.swap_bytes(), ab.swap_bytes()]
            );
            for order in ORDERS {
                let regs = encode(f64::from(v), RegisterEncoding::Float32(order)).unwrap();
                assert_eq!(
                    decode(&regs, RegisterEncoding::Float32(order)).unwrap(),
                    f64::from(v)
                );
            }
        }
        // 277.0 has a non-zero low word: spell out one swapped layout literally.
        assert_eq!(encode_f32(277.0, WordOrder::Badc), [0x8A43, 0x0080]);
        assert_eq!(encode_f32(277.0, WordOrder::Dcba), [0x0080, 0x8A43]);
    }

    #[test]
    fn scaled_integers() {
        let int16 = RegisterEncoding::Int16 { scale: 0.1 };
        assert_eq!(encode(230.04, int16).unwrap(), vec![2300]);
        assert_eq!(encode(230.06, int16).unwrap(), vec![2301]);
        assert_eq!(encode(-12.3, int16).unwrap(), vec![(-123_i16) as u16]);
        assert!((decode(&[2301], int16).unwrap() - 230.1).abs() < 1e-9);
        assert!((decode(&[0xFF85], int16).unwrap() + 12.3).abs() < 1e-9);
        assert!(matches!(
            encode(3276.8, int16),
            Err(EncodingError::OutOfRange { .. })
        ));
        assert_eq!(encode(3276.7, int16).unwrap(), vec![32767]);
        assert!(encode(f64::NAN, int16).is_err());
        assert!(encode(1.0, RegisterEncoding::Int16 { scale: 0.0 }).is_err());

        let uint32 = RegisterEncoding::Uint32 {
            scale: 0.001,
            word_order: WordOrder::Cdab,
        };
        // 230.5 V = 230 500 = 0x0003_8464 → CDAB = [0x8464, 0x0003].
        assert_eq!(encode(230.5, uint32).unwrap(), vec![0x8464, 0x0003]);
        assert!((decode(&[0x8464, 0x0003], uint32).unwrap() - 230.5).abs() < 1e-9);
        assert!(encode(-0.1, uint32).is_err());
        assert!(encode(4_294_967.296, uint32).is_err());
    }

    #[test]
    fn wrong_lengths_and_non_finite() {
        let f = RegisterEncoding::Float32(WordOrder::Abcd);
        assert_eq!(
            decode(&[1], f),
            Err(EncodingError::WrongLength {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            decode(&[1, 2], RegisterEncoding::Int16 { scale: 1.0 }),
            Err(EncodingError::WrongLength {
                expected: 1,
                got: 2
            })
        );
        assert_eq!(decode(&[0x7FC0, 0x0000], f), Err(EncodingError::NotFinite));
        assert!(encode(f64::INFINITY, f).is_err());
        assert!(encode(1e39, f).is_err());
        assert_eq!(register_count(f), 2);
        assert_eq!(register_count(RegisterEncoding::Int16 { scale: 0.1 }), 1);
    }

    /// A head-end that assumes the wrong layout reads a value nowhere near the truth, so the
    /// encoding handshake can catch it.
    #[test]
    fn mismatched_decoding_is_detectable() {
        for v in [120.0_f32, 230.0, 240.0, 277.0] {
            let truth = f64::from(v);
            let regs = encode_f32(v, WordOrder::Abcd);
            // float32 high word read as int16 at 0.1 V/LSB.
            let as_int16 = decode(&regs[..1], RegisterEncoding::Int16 { scale: 0.1 }).unwrap();
            assert!(
                (as_int16 - truth).abs() > truth,
                "{v}: int16 reading {as_int16}"
            );
            for wrong in ORDERS.into_iter().filter(|o| *o != WordOrder::Abcd) {
                let read = f64::from(decode_f32(regs, wrong));
                // Either a denormal/tiny value or astronomically large: never within 50 %.
                assert!(
                    !read.is_finite() || (read - truth).abs() > 0.5 * truth,
                    "{v} read as {wrong:?} gives {read}"
                );
            }
        }
    }

    fn any_order() -> impl Strategy<Value = WordOrder> {
        prop::sample::select(ORDERS.to_vec())
    }

    proptest! {
        #[test]
        fn f32_round_trip_bit_exact(bits in any::<u32>(), order in any_order()) {
            let v = f32::from_bits(bits);
            prop_assert_eq!(decode_f32(encode_f32(v, order), order).to_bits(), bits);
        }

        #[test]
        fn float32_encoding_round_trip(v in -1.0e6_f64..1.0e6, order in any_order()) {
            let enc = RegisterEncoding::Float32(order);
            let back = decode(&encode(v, enc).unwrap(), enc).unwrap();
            prop_assert_eq!(back, f64::from(v as f32));
        }

        #[test]
        fn int16_round_trip(raw in any::<i16>(), scale in prop::sample::select(vec![0.01, 0.1, 1.0, 10.0])) {
            let enc = RegisterEncoding::Int16 { scale };
            let v = f64::from(raw) * scale;
            let regs = encode(v, enc).unwrap();
            prop_assert_eq!(regs.clone(), vec![raw as u16]);
            let back = decode(&regs, enc).unwrap();
            prop_assert!((back - v).abs() <= 1e-9 * v.abs().max(1.0));
        }

        #[test]
        fn uint32_round_trip(raw in any::<u32>(), order in any_order(), scale in prop::sample::select(vec![0.001, 0.1, 1.0])) {
            let enc = RegisterEncoding::Uint32 { scale, word_order: order };
            let v = f64::from(raw) * scale;
            let regs = encode(v, enc).unwrap();
            prop_assert_eq!(join_u32([regs[0], regs[1]], order), raw);
            let back = decode(&regs, enc).unwrap();
            prop_assert!((back - v).abs() <= 1e-9 * v.abs().max(1.0));
        }

        #[test]
        fn int16_rounds_to_nearest(v in -3000.0_f64..3000.0) {
            let enc = RegisterEncoding::Int16 { scale: 0.1 };
            let back = decode(&encode(v, enc).unwrap(), enc).unwrap();
            prop_assert!((back - v).abs() <= 0.05 + 1e-9);
        }
    }
}
