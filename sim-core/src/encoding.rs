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
