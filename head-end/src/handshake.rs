//! The encoding handshake (sans-io, pure): at first contact the poller reads the firmware
//! version, the three voltages and the frequency, and [`verify`] decides whether the meter
//! really serves the analog encoding the head-end expects (float32 in one of four word orders,
//! scaled int16 or scaled uint32). A wrong guess skews readings by orders of magnitude, so the
//! verdict is built from plausibility: the grid's frequency (45–65 Hz) is the sharpest check —
//! it barely moves and no wrong layout of it lands in that band by chance — and the voltages
//! (90–480 V AC) back it up.
//!
//! Evidence rules (per point, under a candidate encoding):
//! - words that are all zero read as 0 in *every* encoding, and the "not implemented"
//!   sentinels (float32 NaN, int16 0x8000, uint32 0xFFFFFFFF) carry no value: **no evidence**
//!   (a meter with no supply yet shows 0 V; its frequency still decides);
//! - a frequency in range, or a voltage in range, **supports** the candidate;
//! - with a plausible frequency, a voltage outside the nominal range but believable for a sag
//!   or swell (1 V – 2 × the upper limit) is tolerated; without a frequency it leaves the
//!   verdict [`Verdict::Undetermined`] rather than raising a false alarm;
//! - anything else (denormals, 1e30, 1722 Hz, an integer reading 0 from words that are not
//!   all zero, a register count the encoding cannot have — fewer registers than it needs, or
//!   int16 where the meter refused a 1-register read) **contradicts** it.
//!
//! The expected encoding is verified when it fits and no other candidate fits with at least
//! as many supporting points and different values; a candidate with *more* supporting points
//! (the expected reading needed a sag or swell to be believed) makes it a mismatch.
//!
//! Genuinely indistinguishable cases, reported and never silently accepted:
//! - all-zero words and sentinels everywhere: nothing to judge → [`Verdict::Undetermined`];
//! - words whose bytes read the same under two layouts (e.g. `[w, w]` for float32 ABCD and
//!   CDAB) decode to the *same* values, so either reading is right → [`Verdict::Verified`];
//! - words that two layouts decode to *different* plausible values → [`Verdict::Ambiguous`]:
//!   a float32 whose low word is itself a plausible high word (`[0x4366, 0x4370]` = 230.26 V
//!   as ABCD, 240.26 V as CDAB) with a frequency ambiguous the same way; a lone uint32
//!   frequency (no supply yet) that another scale and order also read as 45–65 Hz; and uint32
//!   whose raw values fit the low word, read with each word's bytes swapped (ABCD/BADC,
//!   CDAB/DCBA) and another scale — measured at ≤ 1 % of random plausible values, the only
//!   family the property tests find. The poller stores nothing and asks again at the next
//!   poll (the values move; a meter that stays ambiguous stays unread, counted in
//!   `PollerReport::undecided`).
//!
//! Outside those, every other candidate encoding applied to a meter's plausible values is a
//! [`Verdict::Mismatch`] (property-tested over float32 × 4 orders, int16 ×0.1/×0.01/×1 and
//! uint32 ×0.1/×0.01/×0.001 × 4 orders).

use std::fmt::Write as _;

use sim_core::encoding::{self, register_count, RegisterEncoding, WordOrder};

/// `VOLTAGE_L1_REG` (docs/register-map.md); L2 and L3 follow every 2 registers.
pub const VOLTAGE_L1_REG: u16 = 0x0024;
pub const VOLTAGE_L2_REG: u16 = 0x0026;
pub const VOLTAGE_L3_REG: u16 = 0x0028;
pub const FREQUENCY_REG: u16 = 0x0030;
pub const STATUS_REG: u16 = 0x0048;
/// uint16, `major << 8 | minor`.
pub const FIRMWARE_VERSION_REG: u16 = 0x0049;
/// uint32 ms of grid time, in the counters' word order.
pub const SOURCE_TIME_REG: u16 = 0x0050;

/// The analog points the handshake reads, with their names for messages.
pub const POINTS: [(&str, u16); 4] = [
    ("VOLTAGE_L1_REG", VOLTAGE_L1_REG),
    ("VOLTAGE_L2_REG", VOLTAGE_L2_REG),
    ("VOLTAGE_L3_REG", VOLTAGE_L3_REG),
    ("FREQUENCY_REG", FREQUENCY_REG),
];

const ORDERS: [WordOrder; 4] = [
    WordOrder::Abcd,
    WordOrder::Cdab,
    WordOrder::Badc,
    WordOrder::Dcba,
];

/// What the grid's values may be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Nominal voltage range, V AC (spec: 90–480).
    pub volts: (f64, f64),
    /// Frequency range, Hz (spec: 45–65).
    pub hz: (f64, f64),
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            volts: (90.0, 480.0),
            hz: (45.0, 65.0),
        }
    }
}

/// The raw registers read at first contact. Each analog point holds the registers the meter
/// served at its address: the expected encoding's width, or — after the meter refused that
/// width — the other width (1 or 2); `None` when it served neither.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Probe {
    pub firmware: Option<u16>,
    /// L1, L2, L3.
    pub voltages: [Option<Vec<u16>>; 3],
    pub frequency: Option<Vec<u16>>,
    /// L1, L2, L3, frequency: the meter refused a 1-register read at the point (exception
    /// 0x02, as a map does where a 32-bit value starts), so it is not an int16 point.
    pub one_register_refused: [bool; 4],
}

impl Probe {
    /// The probe a virtual meter serving `enc` gives for these values: a value `enc` cannot
    /// carry reads as its sentinel, and a two-register encoding refuses 1-register reads.
    pub fn encoded(firmware: u16, volts: [f64; 3], hz: f64, enc: RegisterEncoding) -> Probe {
        let words = |v: f64| Some(encoding::encode(v, enc).unwrap_or_else(|_| sentinel(enc)));
        Probe {
            firmware: Some(firmware),
            voltages: volts.map(words),
            frequency: words(hz),
            one_register_refused: [register_count(enc) == 2; 4],
        }
    }

    fn point(&self, i: usize) -> Option<&[u16]> {
        match i {
            0..=2 => self.voltages[i].as_deref(),
            _ => self.frequency.as_deref(),
        }
    }
}

/// The "not implemented" value of `enc` (STANDARDS.md §9.6).
pub fn sentinel(enc: RegisterEncoding) -> Vec<u16> {
    match enc {
        RegisterEncoding::Float32(o) => encoding::encode_f32(f32::NAN, o).to_vec(),
        RegisterEncoding::Int16 { .. } => vec![0x8000],
        RegisterEncoding::Uint32 { .. } => vec![0xFFFF, 0xFFFF],
    }
}

/// The handshake's verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The values are plausible in the expected encoding and in no encoding that would read
    /// them differently.
    Verified { firmware: Option<u16> },
    /// The values are implausible in the expected encoding; `detail` names what was expected,
    /// the raw words, what they decode to, and which encodings would make them plausible.
    Mismatch { detail: String },
    /// Plausible in the expected encoding, but as plausible (with other values) in another.
    Ambiguous { detail: String },
    /// Nothing to judge yet (no supply and no frequency, values not measured yet).
    Undetermined { detail: String },
}

impl Verdict {
    pub fn is_verified(&self) -> bool {
        matches!(self, Verdict::Verified { .. })
    }
}

/// How an encoding is named in messages: `float32 ABCD`, `int16 ×0.1`, `uint32 ×0.01 CDAB`.
pub fn describe(enc: RegisterEncoding) -> String {
    fn order(o: WordOrder) -> &'static str {
        match o {
            WordOrder::Abcd => "ABCD",
            WordOrder::Cdab => "CDAB",
            WordOrder::Badc => "BADC",
            WordOrder::Dcba => "DCBA",
        }
    }
    match enc {
        RegisterEncoding::Float32(o) => format!("float32 {}", order(o)),
        RegisterEncoding::Int16 { scale } => format!("int16 ×{scale}"),
        RegisterEncoding::Uint32 { scale, word_order } => {
            format!("uint32 ×{scale} {}", order(word_order))
        }
    }
}

/// Word order of the uint32 counters (`SOURCE_TIME_REG`) on a meter whose analog encoding is
/// `enc`: the analog word order, ABCD for int16 (virtual-meter's `MapOptions::with_analog`).
pub fn counter_order(enc: RegisterEncoding) -> WordOrder {
    match enc {
        RegisterEncoding::Float32(o) => o,
        RegisterEncoding::Uint32 { word_order, .. } => word_order,
        RegisterEncoding::Int16 { .. } => WordOrder::Abcd,
    }
}

/// The value `words` hold in `enc`; `None` for the "not implemented" sentinels, non-finite
/// values and a register count `enc` cannot read (int16 reads the first of two registers, as
/// from a meter that maps both).
pub fn decode_value(words: &[u16], enc: RegisterEncoding) -> Option<f64> {
    let n = register_count(enc);
    if words.len() < n {
        return None;
    }
    let words = &words[..n];
    if words == sentinel(enc).as_slice() {
        return None;
    }
    encoding::decode(words, enc).ok()
}

/// The encodings a meter might really use: float32 in four word orders, int16 ×0.1/×0.01/×1,
/// uint32 ×0.1/×0.01/×0.001 in four word orders, and `expected` itself.
pub fn candidates(expected: RegisterEncoding) -> Vec<RegisterEncoding> {
    let mut all: Vec<RegisterEncoding> =
        ORDERS.into_iter().map(RegisterEncoding::Float32).collect();
    for scale in [0.1, 0.01, 1.0] {
        all.push(RegisterEncoding::Int16 { scale });
    }
    for scale in [0.1, 0.01, 0.001] {
        for word_order in ORDERS {
            all.push(RegisterEncoding::Uint32 { scale, word_order });
        }
    }
    if !all.contains(&expected) {
        all.push(expected);
    }
    all
}

/// One point's standing under a candidate encoding.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Class {
    /// All zero, a sentinel, or not served.
    NoValue,
    Plausible(f64),
    /// A voltage outside the nominal range but believable in a sag or swell.
    Sane(f64),
    Implausible(f64),
    /// The meter serves a register count this encoding cannot have.
    WrongWidth,
    /// Decodes to nothing finite (e.g. a NaN that is not this layout's sentinel).
    NotFinite,
}

fn classify(
    words: Option<&[u16]>,
    one_refused: bool,
    enc: RegisterEncoding,
    frequency: bool,
    lim: &Limits,
) -> Class {
    let Some(words) = words else {
        return Class::NoValue;
    };
    if words.len() < register_count(enc) || (one_refused && register_count(enc) == 1) {
        return Class::WrongWidth;
    }
    if words.iter().all(|&w| w == 0) {
        return Class::NoValue;
    }
    let head = &words[..register_count(enc)];
    if head == sentinel(enc).as_slice() {
        return Class::NoValue;
    }
    let Some(v) = decode_value(words, enc) else {
        return Class::NotFinite;
    };
    let (lo, hi) = if frequency { lim.hz } else { lim.volts };
    if (lo..=hi).contains(&v) {
        Class::Plausible(v)
    } else if !frequency && (1.0..=2.0 * lim.volts.1).contains(&v) {
        Class::Sane(v)
    } else if v == 0.0 && matches!(enc, RegisterEncoding::Float32(_)) {
        // -0.0. (An integer reading 0 from words that are not all zero — an int16 reading the
        // zero high word of a two-register value — is evidence against it.)
        Class::NoValue
    } else {
        Class::Implausible(v)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fit {
    /// Consistent, with this many points in the nominal ranges.
    Fits(usize),
    Unsure,
    Contradicts,
}

fn judge(probe: &Probe, enc: RegisterEncoding, lim: &Limits) -> (Fit, [Class; 4]) {
    let classes: [Class; 4] = std::array::from_fn(|i| {
        classify(
            probe.point(i),
            probe.one_register_refused[i],
            enc,
            i == 3,
            lim,
        )
    });
    let bad = |c: &Class| {
        matches!(
            c,
            Class::Implausible(_) | Class::WrongWidth | Class::NotFinite
        )
    };
    if classes.iter().any(bad) {
        return (Fit::Contradicts, classes);
    }
    let support = classes
        .iter()
        .filter(|c| matches!(c, Class::Plausible(_)))
        .count();
    let freq_ok = matches!(classes[3], Class::Plausible(_));
    let sane = classes.iter().any(|c| matches!(c, Class::Sane(_)));
    let fit = if support == 0 || (!freq_ok && sane) {
        Fit::Unsure
    } else {
        Fit::Fits(support)
    };
    (fit, classes)
}

fn value_of(c: Class) -> Option<f64> {
    match c {
        Class::Plausible(v) | Class::Sane(v) | Class::Implausible(v) => Some(v),
        _ => None,
    }
}

/// Whether two readings of the same words agree (to float32 precision).
fn same_values(a: &[Class; 4], b: &[Class; 4]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| match (value_of(*x), value_of(*y)) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1.0),
            (None, None) => true,
            _ => false,
        })
}

fn words_text(words: Option<&[u16]>) -> String {
    match words {
        None => "refused".to_owned(),
        Some(w) => {
            let list: Vec<String> = w.iter().map(|x| format!("0x{x:04X}")).collect();
            format!("[{}]", list.join(", "))
        }
    }
}

fn unit(i: usize) -> &'static str {
    if i == 3 {
        "Hz"
    } else {
        "V"
    }
}

fn range_text(i: usize, lim: &Limits) -> String {
    if i == 3 {
        format!("{}–{} Hz", lim.hz.0, lim.hz.1)
    } else {
        format!("{}–{} V AC", lim.volts.0, lim.volts.1)
    }
}

/// `describe(enc) (240.0 V, 240.0 V, –, 50.0 Hz)`.
fn reading_text(enc: RegisterEncoding, classes: &[Class; 4]) -> String {
    let vals: Vec<String> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| match value_of(*c) {
            Some(v) => format!("{v:.1} {}", unit(i)),
            None => "–".to_owned(),
        })
        .collect();
    format!("{} ({})", describe(enc), vals.join(", "))
}

/// `1725.4`, or `2.418e-41` for values too small or large to read in fixed point.
fn number(v: f64) -> String {
    if v == 0.0 || (1e-2..1e6).contains(&v.abs()) {
        format!("{v:.1}")
    } else {
        format!("{v:.3e}")
    }
}

fn firmware_text(fw: Option<u16>) -> String {
    match fw {
        Some(f) => format!("firmware {}.{}", f >> 8, f & 0xFF),
        None => "firmware unknown".to_owned(),
    }
}

/// Decide whether `probe` was served in `expected` (see the module doc for the rules).
pub fn verify(probe: &Probe, expected: RegisterEncoding, lim: &Limits) -> Verdict {
    let (fit, classes) = judge(probe, expected, lim);
    // Other encodings that fit, with their support.
    let others: Vec<(RegisterEncoding, [Class; 4], usize)> = candidates(expected)
        .into_iter()
        .filter(|c| *c != expected)
        .filter_map(|c| match judge(probe, c, lim) {
            (Fit::Fits(n), cl) => Some((c, cl, n)),
            _ => None,
        })
        .collect();
    let mut detail = format!("expected {}; ", describe(expected));
    match fit {
        Fit::Contradicts => {
            let mut parts = Vec::new();
            for (i, c) in classes.iter().enumerate() {
                let (name, addr) = POINTS[i];
                let words = probe.point(i);
                let head = format!("{name} 0x{addr:04X} = {}", words_text(words));
                match c {
                    Class::Implausible(v) => parts.push(format!(
                        "{head} decodes to {} {} (implausible, {})",
                        number(*v),
                        unit(i),
                        range_text(i, lim)
                    )),
                    Class::WrongWidth => parts.push(format!(
                        "{head}: the meter serves {} register(s) where {} needs {} (the \
                         {}-register read was refused)",
                        words.map_or(0, <[u16]>::len),
                        describe(expected),
                        register_count(expected),
                        register_count(expected)
                    )),
                    Class::NotFinite => parts.push(format!("{head} decodes to no finite value")),
                    _ => {}
                }
            }
            detail.push_str(&parts.join("; "));
            if others.is_empty() {
                detail.push_str("; no known encoding makes these values plausible");
            } else {
                let mut others = others;
                others.sort_by_key(|o| std::cmp::Reverse(o.2));
                let alts: Vec<String> = others
                    .iter()
                    .map(|(c, cl, _)| reading_text(*c, cl))
                    .collect();
                let _ = write!(detail, "; plausible as {}", alts.join(" or "));
            }
            let _ = write!(detail, "; {}", firmware_text(probe.firmware));
            Verdict::Mismatch { detail }
        }
        Fit::Unsure => {
            let _ = write!(
                detail,
                "nothing to judge yet: {}; {}",
                reading_text(expected, &classes),
                firmware_text(probe.firmware)
            );
            Verdict::Undetermined { detail }
        }
        Fit::Fits(support) => {
            // Other encodings that read the words as different values, and how well.
            let differing: Vec<&(RegisterEncoding, [Class; 4], usize)> = others
                .iter()
                .filter(|(_, cl, _)| !same_values(&classes, cl))
                .collect();
            // One that puts more points in the nominal ranges explains the meter better: the
            // expected reading needed a sag or swell to be believed.
            let better: Vec<String> = differing
                .iter()
                .filter(|(_, _, n)| *n > support)
                .map(|(c, cl, _)| reading_text(*c, cl))
                .collect();
            if !better.is_empty() {
                let _ = write!(
                    detail,
                    "reads {} with only {support} value(s) in range; plausible as {}; {}",
                    reading_text(expected, &classes),
                    better.join(" or "),
                    firmware_text(probe.firmware)
                );
                return Verdict::Mismatch { detail };
            }
            // One that explains the words as well, with other values: the verdict would be a
            // guess.
            let rivals: Vec<String> = differing
                .iter()
                .filter(|(_, _, n)| *n == support)
                .map(|(c, cl, _)| reading_text(*c, cl))
                .collect();
            if rivals.is_empty() {
                Verdict::Verified {
                    firmware: probe.firmware,
                }
            } else {
                let _ = write!(
                    detail,
                    "plausible as {} but also as {}; {}",
                    reading_text(expected, &classes),
                    rivals.join(" or "),
                    firmware_text(probe.firmware)
                );
                Verdict::Ambiguous { detail }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const F_ABCD: RegisterEncoding = RegisterEncoding::Float32(WordOrder::Abcd);
    const F_CDAB: RegisterEncoding = RegisterEncoding::Float32(WordOrder::Cdab);
    const I16_01: RegisterEncoding = RegisterEncoding::Int16 { scale: 0.1 };

    fn lim() -> Limits {
        Limits::default()
    }

    #[test]
    fn the_issues_example_int16_served_float32_expected() {
        // A meter that maps both registers (a real one might): int16 ×0.1 in the first.
        let probe = Probe {
            firmware: Some(0x0102),
            voltages: [
                Some(vec![0x0960, 0x0000]),
                Some(vec![0x0960, 0x0000]),
                Some(vec![0x0960, 0x0000]),
            ],
            frequency: Some(vec![500, 0]),
            one_register_refused: [false; 4],
        };
        let Verdict::Mismatch { detail } = verify(&probe, F_ABCD, &lim()) else {
            panic!("not a mismatch")
        };
        assert!(detail.starts_with("expected float32 ABCD; "), "{detail}");
        assert!(
            detail.contains(
                "VOLTAGE_L1_REG 0x0024 = [0x0960, 0x0000] decodes to 2.696e-33 V (implausible, 90–480 V AC)"
            ),
            "{detail}"
        );
        assert!(
            detail.contains("plausible as int16 ×0.1 (240.0 V, 240.0 V, 240.0 V, 50.0 Hz)"),
            "{detail}"
        );
        assert!(detail.ends_with("firmware 1.2"), "{detail}");
    }

    #[test]
    fn a_refused_width_is_a_mismatch_naming_it() {
        // The virtual meter's int16 map: one register per point, the 2-register read refused.
        let probe = Probe::encoded(0x0001, [230.0; 3], 50.0, I16_01);
        assert_eq!(probe.voltages[0], Some(vec![2300]));
        let Verdict::Mismatch { detail } = verify(&probe, F_ABCD, &lim()) else {
            panic!()
        };
        assert!(
            detail.contains("VOLTAGE_L1_REG 0x0024 = [0x08FC]: the meter serves 1 register(s) where float32 ABCD needs 2"),
            "{detail}"
        );
        assert!(
            detail.contains("plausible as int16 ×0.1 (230.0 V"),
            "{detail}"
        );
    }

    #[test]
    fn word_order_cdab_served_abcd_expected() {
        let probe = Probe::encoded(0x0001, [231.5, 229.0, 240.2], 49.98, F_CDAB);
        let Verdict::Mismatch { detail } = verify(&probe, F_ABCD, &lim()) else {
            panic!()
        };
        assert!(
            detail.contains("plausible as float32 CDAB (231.5 V, 229.0 V, 240.2 V, 50.0 Hz)"),
            "{detail}"
        );
        assert!(!detail.contains("int16"), "{detail}");
    }

    #[test]
    fn no_supply_yet_verifies_by_frequency() {
        for enc in candidates(F_ABCD) {
            let probe = Probe::encoded(0x0001, [0.0; 3], 50.0, enc);
            let v = verify(&probe, enc, &lim());
            match enc {
                // A lone frequency in uint32 can read plausibly under another scale and
                // order (500 ×0.1 ABCD = 50 Hz, [0x0000, 0x01F4] as ×0.001 BADC = 62.5 Hz).
                RegisterEncoding::Uint32 { .. } if matches!(v, Verdict::Ambiguous { .. }) => {}
                _ => assert_eq!(
                    v,
                    Verdict::Verified { firmware: Some(1) },
                    "{}",
                    describe(enc)
                ),
            }
        }
    }

    #[test]
    fn nothing_measured_or_all_zero_is_undetermined() {
        for enc in candidates(F_ABCD) {
            let nan = Probe::encoded(1, [f64::NAN; 3], f64::NAN, enc);
            assert!(
                matches!(verify(&nan, enc, &lim()), Verdict::Undetermined { .. }),
                "{}",
                describe(enc)
            );
            // All-zero words are 0 in every encoding: no evidence about the layout of the
            // value — but the register count still is (int16 serves one, the others two).
            let zero = Probe::encoded(1, [0.0; 3], 0.0, enc);
            assert!(matches!(
                verify(&zero, enc, &lim()),
                Verdict::Undetermined { .. }
            ));
            let v = verify(&zero, F_ABCD, &lim());
            if register_count(enc) == 2 {
                assert!(matches!(v, Verdict::Undetermined { .. }), "{v:?}");
            } else {
                assert!(matches!(v, Verdict::Mismatch { .. }), "{v:?}");
            }
        }
    }

    #[test]
    fn a_sag_at_first_contact_is_no_false_alarm() {
        // 30 V on L1 (a deep sag) with a good frequency: verified.
        let probe = Probe::encoded(1, [30.0, 120.0, 120.0], 60.0, F_ABCD);
        assert!(verify(&probe, F_ABCD, &lim()).is_verified());
        // Without a frequency the same sag cannot be told from a scale error: undetermined.
        let probe = Probe::encoded(1, [30.0, 120.0, 120.0], f64::NAN, F_ABCD);
        assert!(matches!(
            verify(&probe, F_ABCD, &lim()),
            Verdict::Undetermined { .. }
        ));
    }

    #[test]
    fn same_words_under_two_orders_read_the_same_and_verify() {
        // [w, w]: ABCD and CDAB give identical bits, so either is right.
        let w = (230.26_f32.to_bits() >> 16) as u16;
        let probe = Probe {
            firmware: Some(1),
            voltages: [Some(vec![w, w]), Some(vec![w, w]), Some(vec![w, w])],
            frequency: Some(encoding::encode_f32(50.0, WordOrder::Abcd).to_vec()),
            one_register_refused: [false; 4],
        };
        assert!(verify(&probe, F_ABCD, &lim()).is_verified());
    }

    #[test]
    fn genuinely_ambiguous_words_are_reported_not_accepted() {
        // Low words that are themselves plausible high words: ABCD and CDAB read different,
        // equally plausible values for every point.
        let pair =
            |hi: f32, lo: f32| vec![(hi.to_bits() >> 16) as u16, (lo.to_bits() >> 16) as u16];
        let probe = Probe {
            firmware: Some(1),
            voltages: [
                Some(pair(230.0, 240.0)),
                Some(pair(231.0, 241.0)),
                Some(pair(232.0, 242.0)),
            ],
            frequency: Some(pair(50.0, 60.0)),
            one_register_refused: [false; 4],
        };
        for expected in [F_ABCD, F_CDAB] {
            let Verdict::Ambiguous { detail } = verify(&probe, expected, &lim()) else {
                panic!("{}", describe(expected))
            };
            assert!(detail.contains("but also as float32"), "{detail}");
        }
    }

    #[test]
    fn describes_encodings() {
        assert_eq!(describe(F_CDAB), "float32 CDAB");
        assert_eq!(describe(I16_01), "int16 ×0.1");
        assert_eq!(
            describe(RegisterEncoding::Uint32 {
                scale: 0.01,
                word_order: WordOrder::Dcba
            }),
            "uint32 ×0.01 DCBA"
        );
        assert_eq!(candidates(F_ABCD).len(), 4 + 3 + 12);
        assert_eq!(
            candidates(RegisterEncoding::Int16 { scale: 0.05 }).len(),
            20
        );
    }

    fn any_encoding() -> impl Strategy<Value = RegisterEncoding> {
        prop::sample::select(candidates(F_ABCD))
    }

    /// Values an encoding can carry to its resolution and that do not sit on the range edge
    /// after rounding.
    fn plausible() -> impl Strategy<Value = ([f64; 3], f64)> {
        (prop::array::uniform3(95.0_f64..470.0), 46.0_f64..64.0)
    }

    /// Two encodings read the same words the same way (both word orders of a palindrome…):
    /// then accepting either is right.
    fn reads_same(probe: &Probe, a: RegisterEncoding, b: RegisterEncoding) -> bool {
        (0..4).all(|i| {
            let w = probe.point(i);
            let x = w.and_then(|w| decode_value(w, a));
            let y = w.and_then(|w| decode_value(w, b));
            match (x, y) {
                (Some(x), Some(y)) => (x - y).abs() <= 1e-6 * x.abs().max(1.0),
                (None, None) => true,
                _ => false,
            }
        })
    }

    /// uint32 in orders that differ only by the bytes within each word (ABCD/BADC, CDAB/DCBA).
    fn byte_swap_pair(a: RegisterEncoding, b: RegisterEncoding) -> bool {
        use WordOrder::*;
        matches!(
            (a, b),
            (
                RegisterEncoding::Uint32 { word_order: x, .. },
                RegisterEncoding::Uint32 { word_order: y, .. },
            ) if matches!((x, y), (Abcd, Badc) | (Badc, Abcd) | (Cdab, Dcba) | (Dcba, Cdab))
        )
    }

    #[test]
    fn a_uint32_byte_swap_can_be_genuinely_ambiguous() {
        // A raw value in the low word, its two bytes swapped, is another 16-bit number; ×0.01
        // instead of ×0.1 puts some of them back in range. Find one and check it is reported.
        let served = RegisterEncoding::Uint32 {
            scale: 0.1,
            word_order: WordOrder::Abcd,
        };
        let expected = RegisterEncoding::Uint32 {
            scale: 0.01,
            word_order: WordOrder::Badc,
        };
        let mut found = None;
        'search: for v in 950..4700_u32 {
            for hz in 460..640_u32 {
                let volts = [f64::from(v) / 10.0; 3];
                let probe = Probe::encoded(1, volts, f64::from(hz) / 10.0, served);
                if let Verdict::Ambiguous { detail } = verify(&probe, expected, &lim()) {
                    found = Some(detail);
                    break 'search;
                }
            }
        }
        let detail = found.expect("an ambiguous case exists");
        assert!(detail.contains("but also as uint32 ×0.1 ABCD"), "{detail}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn the_right_encoding_verifies(
            enc in any_encoding(), (volts, hz) in plausible(), fw in any::<u16>()
        ) {
            let probe = Probe::encoded(fw, volts, hz, enc);
            let v = verify(&probe, enc, &lim());
            // Never a false alarm; ambiguity (reported) is allowed, acceptance is the rule.
            prop_assert!(!matches!(v, Verdict::Mismatch { .. } | Verdict::Undetermined { .. }), "{v:?}");
            if let Verdict::Ambiguous { detail } = &v {
                // Only float32 / uint32 word orders can collide on plausible values.
                prop_assert!(!matches!(enc, RegisterEncoding::Int16 { .. }), "{detail}");
            }
        }

        #[test]
        fn a_wrong_encoding_is_never_silently_accepted(
            served in any_encoding(), expected in any_encoding(), (volts, hz) in plausible()
        ) {
            prop_assume!(served != expected);
            // Widths as the poller's fall-back reads them: int16 meters serve one register,
            // the others two (an int16 expectation then reads the first of them).
            let probe = Probe::encoded(1, volts, hz, served);
            let v = verify(&probe, expected, &lim());
            if reads_same(&probe, served, expected) {
                // Both read the very same values: accepting either is right.
                return Ok(());
            }
            match &v {
                Verdict::Mismatch { .. } => {}
                // The one genuinely indistinguishable family (measured: ≤ 1 % of plausible
                // values): uint32 whose raw value fits the low word, read with the bytes of
                // each word swapped, lands in range under another scale too.
                Verdict::Ambiguous { .. } if byte_swap_pair(served, expected) => {}
                _ => prop_assert!(false, "{} read as {}: {v:?}", describe(served), describe(expected)),
            }
        }
    }

    /// How often plausible float32 values are ambiguous between word orders, measured.
    #[test]
    fn ambiguity_is_rare_for_measured_values() {
        let mut ambiguous = 0;
        let n = 20_000;
        let mut x = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        for _ in 0..n {
            let volts = [0; 3].map(|_| 200.0 + 60.0 * next());
            let hz = 49.5 + next();
            let probe = Probe::encoded(1, volts, hz, F_ABCD);
            match verify(&probe, F_ABCD, &lim()) {
                Verdict::Verified { .. } => {}
                Verdict::Ambiguous { .. } => ambiguous += 1,
                v => panic!("{v:?}"),
            }
        }
        assert!(ambiguous * 1000 < n, "{ambiguous} of {n} ambiguous");
    }
}
