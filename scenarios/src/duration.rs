//! Durations with units (`250ms`, `1.5 s`, `2min`, `8h`, `10cycles`), as written in scenario
//! files. Cycles are kept symbolic until the grid's nominal frequency is known.

use sim_core::Seconds;

/// Units a duration may carry, as listed in error messages.
pub const UNITS: &str = "us, ms, s, min, h, cycles";

/// A parsed, non-negative duration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DurationValue {
    Seconds(Seconds),
    /// Whole or fractional cycles of the nominal frequency.
    Cycles(f64),
}

impl DurationValue {
    /// The duration in seconds at nominal frequency `frequency` Hz.
    pub fn seconds(self, frequency: f64) -> Seconds {
        match self {
            DurationValue::Seconds(s) => s,
            DurationValue::Cycles(c) => c / frequency,
        }
    }
}

/// Parse `"<number><unit>"` (whitespace between the two allowed). Errors are messages that
/// read after the field path.
pub fn parse_duration(text: &str) -> Result<DurationValue, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("duration is empty; write e.g. `40s` or `10cycles`".into());
    }
    // The unit is the trailing run of letters (`µ` included); the rest is the number. An
    // exponent such as `1e-3s` keeps its `e` because digits follow it.
    let split = t
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_alphabetic())
        .last()
        .map_or(t.len(), |(i, _)| i);
    let (number, unit) = (t[..split].trim(), &t[split..]);
    if number.is_empty() {
        return Err(format!("duration `{t}` has no number; write e.g. `40s`"));
    }
    if unit.is_empty() {
        return Err(format!(
            "duration needs a unit ({UNITS}), e.g. `{number}s`; got `{t}`"
        ));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("duration `{t}`: `{number}` is not a number"))?;
    if !value.is_finite() {
        return Err(format!("duration `{t}` is not finite"));
    }
    if value < 0.0 {
        return Err(format!("duration must not be negative, got `{t}`"));
    }
    let scale = match unit {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "min" => 60.0,
        "h" => 3600.0,
        "cycle" | "cycles" => return Ok(DurationValue::Cycles(value)),
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{t}`; use one of {UNITS}"
            ))
        }
    };
    let seconds = value * scale;
    if !seconds.is_finite() {
        return Err(format!(
            "duration `{t}` is too long (not a finite number of seconds)"
        ));
    }
    Ok(DurationValue::Seconds(seconds))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn secs(text: &str) -> f64 {
        parse_duration(text).unwrap().seconds(60.0)
    }

    #[test]
    fn units_scale_to_seconds() {
        assert_eq!(secs("40s"), 40.0);
        assert_eq!(secs("1.5 s"), 1.5);
        assert_eq!(secs("250ms"), 0.25);
        assert_eq!(secs("2min"), 120.0);
        assert_eq!(secs("8h"), 28_800.0);
        assert!((secs("50us") - 5e-5).abs() < 1e-18);
        assert_eq!(secs("1e-3s"), 0.001);
        assert_eq!(secs("0s"), 0.0);
    }

    #[test]
    fn cycles_resolve_at_the_nominal_frequency() {
        let ten = parse_duration("10cycles").unwrap();
        assert_eq!(ten, DurationValue::Cycles(10.0));
        assert!((ten.seconds(60.0) - 1.0 / 6.0).abs() < 1e-15);
        assert!((ten.seconds(50.0) - 0.2).abs() < 1e-15);
        assert_eq!(parse_duration("1 cycle").unwrap().seconds(50.0), 0.02);
    }

    #[test]
    fn bad_durations_say_why() {
        let e = |t: &str| parse_duration(t).unwrap_err();
        assert!(e("40").contains("needs a unit"), "{}", e("40"));
        assert!(e("-5s").contains("negative"));
        assert!(e("5parsecs").contains("unknown duration unit `parsecs`"));
        assert!(e("s").contains("no number"));
        assert!(e("").contains("empty"));
        assert!(e("1.2.3s").contains("not a number"));
        assert!(e("infs").contains("no number") || e("infs").contains("unknown"));
        // Finite as a number, infinite once scaled to seconds.
        assert!(e("1e308h").contains("too long"), "{}", e("1e308h"));
        assert!(e("1e307min").contains("too long"));
        assert_eq!(secs("1e300h"), 3.6e303);
    }
}
