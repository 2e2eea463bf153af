//! `MeterImage`: the register values of one meter as a pure function of its state (sans-io).
//! Measurement events and the sim-core meter update the state; reads encode it through the
//! register map; writes validate settings (thresholds, hysteresis, calibration gains) and the
//! caller applies them to the meter.

use std::sync::Arc;

use sim_core::encoding::{self, RegisterEncoding, WordOrder};
use sim_core::grid::LoadSpec;
use sim_core::measure::MeasureEvent;
use sim_core::meter::Meter;
use sim_core::scenario::{EventCode, Thresholds};
use sim_core::{Phase, Seconds};

use crate::registers::{status, Access, Entry, Point, PointEncoding, RegisterMap};

/// Most registers one read may ask for (FC03/FC04, STANDARDS.md §9.2).
pub const MAX_READ: u16 = 125;
/// Most registers one FC16 write may carry.
pub const MAX_WRITE: u16 = 123;

/// Allowed setting ranges: a write outside them is an Illegal Data Value.
pub const LIMIT_RANGE: (f64, f64) = (0.0, 1000.0);
pub const HYSTERESIS_RANGE: (f64, f64) = (0.0, 100.0);
pub const GAIN_RANGE: (f64, f64) = (0.5, 2.0);
/// Allowed calibration reference voltages, V.
pub const CAL_REFERENCE_RANGE: (f64, f64) = (90.0, 480.0);
/// A phase whose calibrated reading is within this fraction of the reference (0.01 %) is left
/// alone by a calibration: that is what makes applying the same reference twice a no-op.
pub const CAL_DEADBAND: f64 = 1e-4;

/// Which phases a calibration adjusts (`CAL_COMMAND_REG`: 1 all, 2 L1, 3 L2, 4 L3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalSelector {
    /// Every phase the meter has.
    All,
    /// One phase.
    Phase(Phase),
}

impl CalSelector {
    /// The selector a `CAL_COMMAND_REG` value asks for (1–4); 0 and others are `None`.
    pub fn from_command(value: u16) -> Option<CalSelector> {
        match value {
            1 => Some(CalSelector::All),
            2..=4 => Phase::ALL
                .get(usize::from(value - 2))
                .copied()
                .map(CalSelector::Phase),
            _ => None,
        }
    }

    /// The `CAL_COMMAND_REG` value of this selector.
    pub fn command(self) -> u16 {
        match self {
            CalSelector::All => 1,
            CalSelector::Phase(p) => 2 + p.index() as u16,
        }
    }

    /// `all`, `L1`, `L2` or `L3` (any case).
    pub fn parse(text: &str) -> Option<CalSelector> {
        if text.eq_ignore_ascii_case("all") {
            return Some(CalSelector::All);
        }
        Phase::ALL
            .iter()
            .find(|p| p.name().eq_ignore_ascii_case(text))
            .map(|&p| CalSelector::Phase(p))
    }
}

/// What a calibration did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Gains before.
    pub old: [f64; 3],
    /// Gains after (equal to `old` where the phase was already within the deadband).
    pub new: [f64; 3],
    /// Whether any gain changed (and `CAL_COUNT_REG` was incremented).
    pub changed: bool,
}

/// Why a request was refused; maps one to one onto Modbus exception codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 0x02: an unmapped register, a range that splits a 32-bit value, or a write to a
    /// read-only register.
    #[error("illegal data address")]
    IllegalDataAddress,
    /// 0x03: a quantity outside 1–125 (read) or 1–123 (write), or a value out of range.
    #[error("illegal data value")]
    IllegalDataValue,
}

/// Who the meter says it is (FC43 / MEI 14 and `FIRMWARE_VERSION_REG`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub vendor: String,
    pub product_code: String,
    /// `major.minor[.patch]`.
    pub revision: String,
    pub vendor_url: String,
    pub product_name: String,
    pub model_name: String,
}

impl DeviceIdentity {
    /// gridloop's identity for meter `model_name` (e.g. `feeder-a/0`).
    pub fn gridloop(model_name: &str) -> DeviceIdentity {
        DeviceIdentity {
            vendor: "gridloop".into(),
            product_code: "GL-VM".into(),
            revision: env!("CARGO_PKG_VERSION").into(),
            vendor_url: "https://example.invalid/gridloop".into(),
            product_name: "gridloop virtual meter".into(),
            model_name: model_name.into(),
        }
    }

    /// The revision as `major << 8 | minor` (each clamped to 255).
    pub fn version_register(&self) -> u16 {
        let mut parts = self
            .revision
            .split('.')
            .map(|p| p.trim().parse::<u16>().unwrap_or(0).min(255));
        let major = parts.next().unwrap_or(0);
        let minor = parts.next().unwrap_or(0);
        major << 8 | minor
    }
}

/// The writable settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub thresholds: Thresholds,
    /// Calibration gain per voltage channel.
    pub gains: [f64; 3],
}

/// Everything the registers show, in engineering units. NaN = not measured yet.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterState {
    pub voltage: [f64; 3],
    pub urms_half: [f64; 3],
    pub thd: [f64; 3],
    pub frequency: f64,
    pub current: [f64; 3],
    pub power: [f64; 3],
    /// Active energy since start, all phases, Wh.
    pub energy_wh: f64,
    pub trip: [Option<EventCode>; 3],
    /// Latched bits of `STATUS_REG`.
    pub latched: u16,
    pub trip_count: u64,
    pub clear_count: u64,
    pub pq_events: u64,
    /// Scenario time the state is for.
    pub time: Seconds,
}

impl Default for MeterState {
    fn default() -> Self {
        MeterState {
            voltage: [f64::NAN; 3],
            urms_half: [f64::NAN; 3],
            thd: [f64::NAN; 3],
            frequency: f64::NAN,
            current: [f64::NAN; 3],
            power: [f64::NAN; 3],
            energy_wh: 0.0,
            trip: [None; 3],
            latched: 0,
            trip_count: 0,
            clear_count: 0,
            pq_events: 0,
            time: 0.0,
        }
    }
}

/// The register image of one meter.
#[derive(Debug, Clone)]
pub struct MeterImage {
    map: Arc<RegisterMap>,
    identity: DeviceIdentity,
    channels: usize,
    nominal: f64,
    load: Option<LoadSpec>,
    state: MeterState,
    settings: Settings,
    /// Power events come from the measurement; otherwise power is derived from the load.
    measured_power: bool,
    /// Latest cumulative energy per channel from the measurement, Wh.
    energy_by_channel: [f64; 3],
    /// Entries of the meter's event log already folded into the counters and latches.
    seen_log: usize,
    /// Calibration reference, V (NaN until written).
    cal_reference: f64,
    /// Calibrations that changed a gain.
    cal_count: u64,
    /// Uncalibrated 10/12-cycle RMS per phase: the latest reading measured wholly under the
    /// current gain, divided by that gain (NaN until the first one).
    raw_rms: [f64; 3],
    /// Image time since which each phase's current gain applies: windows starting earlier
    /// were (partly) measured with the previous gain and do not update `raw_rms`.
    gain_since: [Seconds; 3],
}

impl MeterImage {
    /// An image for a meter with `channels` voltage channels at `nominal` V, drawing `load`.
    pub fn new(
        map: Arc<RegisterMap>,
        identity: DeviceIdentity,
        channels: usize,
        nominal: f64,
        load: Option<LoadSpec>,
        settings: Settings,
    ) -> MeterImage {
        MeterImage {
            map,
            identity,
            channels: channels.clamp(1, 3),
            nominal,
            load,
            state: MeterState::default(),
            settings,
            measured_power: false,
            energy_by_channel: [0.0; 3],
            seen_log: 0,
            cal_reference: f64::NAN,
            cal_count: 0,
            raw_rms: [f64::NAN; 3],
            gain_since: [f64::NEG_INFINITY; 3],
        }
    }

    /// Calibrations that changed a gain so far (`CAL_COUNT_REG`).
    pub fn cal_count(&self) -> u64 {
        self.cal_count
    }

    /// The calibration reference last written, V (NaN if none).
    pub fn cal_reference(&self) -> f64 {
        self.cal_reference
    }

    /// The phase's reading as calibrated by the current gain: raw RMS × gain (NaN before the
    /// first 10/12-cycle value, or for a phase the meter lacks).
    pub fn calibrated_reading(&self, phase: Phase) -> f64 {
        let i = phase.index();
        if i < self.channels {
            self.raw_rms[i] * self.settings.gains[i]
        } else {
            f64::NAN
        }
    }

    /// The calibration command: set the reference and adjust the selected phases' gains so
    /// that their readings equal it (gain = reference / raw RMS). A phase already within
    /// [`CAL_DEADBAND`] of the reference keeps its gain, so the same reference twice changes
    /// nothing the second time. Refused (Illegal Data Value, nothing changed) for a reference
    /// outside [`CAL_REFERENCE_RANGE`], a selected phase without a reading yet or missing on
    /// this meter, or a gain that would leave [`GAIN_RANGE`].
    pub fn calibrate(
        &mut self,
        reference: f64,
        selector: CalSelector,
    ) -> Result<Calibration, Refusal> {
        if !in_range(reference, CAL_REFERENCE_RANGE) {
            return Err(Refusal::IllegalDataValue);
        }
        let old = self.settings.gains;
        let new = self.plan_calibration(old, reference, selector)?;
        self.cal_reference = reference;
        if self.note_gain_changes(old, new) {
            self.cal_count += 1;
        }
        self.settings.gains = new;
        Ok(Calibration {
            old,
            new,
            changed: new != old,
        })
    }

    /// The gains a calibration to `reference` would set, starting from `gains`.
    fn plan_calibration(
        &self,
        gains: [f64; 3],
        reference: f64,
        selector: CalSelector,
    ) -> Result<[f64; 3], Refusal> {
        if !in_range(reference, CAL_REFERENCE_RANGE) {
            return Err(Refusal::IllegalDataValue);
        }
        let phases = match selector {
            CalSelector::All => 0..self.channels,
            CalSelector::Phase(p) if p.index() < self.channels => p.index()..p.index() + 1,
            CalSelector::Phase(_) => return Err(Refusal::IllegalDataValue),
        };
        let mut next = gains;
        for i in phases {
            let raw = self.raw_rms[i];
            if !(raw.is_finite() && raw > 0.0) {
                return Err(Refusal::IllegalDataValue);
            }
            if (raw * gains[i] - reference).abs() <= CAL_DEADBAND * reference {
                continue;
            }
            let gain = reference / raw;
            if !in_range(gain, GAIN_RANGE) {
                return Err(Refusal::IllegalDataValue);
            }
            next[i] = gain;
        }
        Ok(next)
    }

    /// Note which gains change from `from` to `to` (new readings must be measured wholly
    /// under them); returns whether any did.
    fn note_gain_changes(&mut self, from: [f64; 3], to: [f64; 3]) -> bool {
        let mut changed = false;
        for (i, (new, old)) in to.iter().zip(from).enumerate() {
            if *new != old {
                self.gain_since[i] = self.state.time;
                changed = true;
            }
        }
        changed
    }

    pub fn map(&self) -> &RegisterMap {
        &self.map
    }

    pub fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    pub fn state(&self) -> &MeterState {
        &self.state
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Fold one measurement event into the state.
    pub fn on_measure(&mut self, ev: &MeasureEvent) {
        let n = self.channels;
        match *ev {
            MeasureEvent::Rms10 {
                ch,
                t_start,
                t_end,
                value,
                ..
            } if ch < n => {
                self.state.voltage[ch] = value;
                if t_start >= self.gain_since[ch] {
                    self.raw_rms[ch] = value / self.settings.gains[ch];
                }
                if let Some(load) = self.load {
                    // Constant impedance (grid.rs `LoadSpec`): I follows V.
                    let amps = load.current * value / self.nominal;
                    self.state.current[ch] = amps;
                    if !self.measured_power {
                        let watts = value * amps * load.power_factor;
                        self.state.power[ch] = watts;
                        self.state.energy_wh += watts * (t_end - t_start) / 3600.0;
                    }
                }
            }
            MeasureEvent::UrmsHalf { ch, value, .. } if ch < n => {
                self.state.urms_half[ch] = value;
            }
            MeasureEvent::Thd { ch, percent, .. } if ch < n => self.state.thd[ch] = percent,
            MeasureEvent::Frequency { hz, .. } => self.state.frequency = hz,
            MeasureEvent::Power {
                ch,
                watts,
                energy_wh,
                ..
            } if ch < n => {
                if !self.measured_power {
                    // From now on the measurement's energy counters are the truth.
                    self.measured_power = true;
                    self.state.energy_wh = 0.0;
                    self.state.power = [f64::NAN; 3];
                    self.state.power[..n].fill(0.0);
                }
                self.state.power[ch] = watts;
                // Energy is cumulative per channel: the total is the sum of the latest ones.
                self.energy_by_channel[ch] = energy_wh;
                self.state.energy_wh = self.energy_by_channel.iter().sum();
            }
            MeasureEvent::Pq(_) => self.state.pq_events += 1,
            _ => {}
        }
        self.state.time = self.state.time.max(ev.time());
    }

    /// Sync trip state, counters and latches from the sim-core meter, and the image time.
    pub fn on_meter(&mut self, meter: &Meter, now: Seconds) {
        for ch in 0..self.channels {
            self.state.trip[ch] = meter.trip_state(ch);
        }
        let log = meter.event_log();
        for (_, ev) in log.iter().skip(self.seen_log) {
            let i = ev.phase.index();
            match ev.code {
                EventCode::UvTrip => self.state.latched |= status::UV_LATCHED << i,
                EventCode::OvTrip => self.state.latched |= status::OV_LATCHED << i,
                EventCode::UvClear | EventCode::OvClear => {}
            }
        }
        self.seen_log = log.len();
        self.state.trip_count = meter.trip_count();
        self.state.clear_count = log.len() as u64 - meter.trip_count();
        self.state.time = self.state.time.max(now);
    }

    /// `STATUS_REG`'s value.
    pub fn status(&self) -> u16 {
        let mut bits = self.state.latched & status::LATCHED_MASK;
        for (i, t) in self.state.trip.iter().enumerate() {
            match t {
                Some(EventCode::UvTrip) => bits |= status::UV_ACTIVE << i,
                Some(EventCode::OvTrip) => bits |= status::OV_ACTIVE << i,
                _ => {}
            }
        }
        if self.state.voltage[..self.channels]
            .iter()
            .all(|v| v.is_finite())
        {
            bits |= status::VALID;
        }
        bits
    }

    /// The value of `point` in engineering units (NaN when not available, e.g. L3 of a
    /// single-phase meter).
    pub fn value(&self, point: Point) -> f64 {
        let s = &self.state;
        let ph = |a: &[f64; 3], p: Phase| {
            if p.index() < self.channels {
                a[p.index()]
            } else {
                f64::NAN
            }
        };
        match point {
            Point::Voltage(p) => ph(&s.voltage, p),
            Point::UrmsHalf(p) => ph(&s.urms_half, p),
            Point::ThdV(p) => ph(&s.thd, p),
            Point::Frequency => s.frequency,
            Point::Current(p) => ph(&s.current, p),
            Point::ActivePower(p) => ph(&s.power, p),
            Point::ActivePowerTotal => {
                let p = &s.power[..self.channels];
                if p.iter().all(|w| w.is_finite()) {
                    p.iter().sum()
                } else {
                    f64::NAN
                }
            }
            Point::Energy => {
                if self.load.is_some() {
                    s.energy_wh
                } else {
                    f64::NAN
                }
            }
            Point::Status => f64::from(self.status()),
            Point::FirmwareVersion => f64::from(self.identity.version_register()),
            Point::TripCount => s.trip_count as f64,
            Point::ClearCount => s.clear_count as f64,
            Point::PqEventCount => s.pq_events as f64,
            Point::SourceTime => (s.time * 1000.0).floor(),
            Point::UpperLimit => self.settings.thresholds.upper,
            Point::LowerLimit => self.settings.thresholds.lower,
            Point::Hysteresis => self.settings.thresholds.hysteresis,
            Point::Gain(p) => self.settings.gains[p.index()],
            Point::CalCount => self.cal_count as f64,
            Point::CalReference => self.cal_reference,
            // A command, not a state: reads as 0, and writing 0 back does nothing.
            Point::CalCommand => 0.0,
        }
    }

    /// The registers of one entry. A value its encoding cannot carry (not measured yet, out of
    /// range) reads as the "not implemented" sentinel (STANDARDS.md §9.6): float32 NaN, int16
    /// 0x8000, uint32 0xFFFFFFFF.
    pub fn encode_entry(&self, entry: &Entry) -> [u16; 2] {
        let value = self.value(entry.point);
        match entry.encoding {
            PointEncoding::Uint16 => [value as u16, 0],
            PointEncoding::Value(enc) => match encoding::encode(value, enc) {
                Ok(regs) => [regs[0], regs.get(1).copied().unwrap_or(0)],
                Err(_) => sentinel(enc),
            },
        }
    }

    /// FC03/FC04: `quantity` registers from `address`. Every register must be mapped and the
    /// range must not split a 32-bit value.
    pub fn read(&self, address: u16, quantity: u16) -> Result<Vec<u16>, Refusal> {
        let mut out = Vec::with_capacity(usize::from(quantity.min(MAX_READ)));
        self.read_into(address, quantity, &mut out)?;
        Ok(out)
    }

    /// [`MeterImage::read`] appending to `out` (cleared first).
    pub fn read_into(
        &self,
        address: u16,
        quantity: u16,
        out: &mut Vec<u16>,
    ) -> Result<(), Refusal> {
        out.clear();
        if quantity == 0 || quantity > MAX_READ {
            return Err(Refusal::IllegalDataValue);
        }
        if u32::from(address) + u32::from(quantity) > 0x1_0000 {
            return Err(Refusal::IllegalDataAddress);
        }
        let mut a = address;
        let end = u32::from(address) + u32::from(quantity);
        while u32::from(a) < end {
            let slot = self.map.slot(a).ok_or(Refusal::IllegalDataAddress)?;
            let entry = &self.map.entries()[slot.entry];
            let n = entry.registers();
            if slot.offset != 0 || u32::from(a) + u32::from(n) > end {
                return Err(Refusal::IllegalDataAddress);
            }
            let regs = self.encode_entry(entry);
            out.extend_from_slice(&regs[..usize::from(n)]);
            a = a.wrapping_add(n);
            if a == 0 {
                break;
            }
        }
        Ok(())
    }

    /// FC06/FC16: write `values` from `address`. Every register must belong to a writable
    /// point, written whole; values are validated together and applied all or nothing.
    /// Returns whether the settings changed (writing the same values again returns `false`).
    pub fn write(&mut self, address: u16, values: &[u16]) -> Result<bool, Refusal> {
        if values.is_empty() || values.len() > usize::from(MAX_WRITE) {
            return Err(Refusal::IllegalDataValue);
        }
        if u32::from(address) + values.len() as u32 > 0x1_0000 {
            return Err(Refusal::IllegalDataAddress);
        }
        // First pass: addresses and access only (02 takes precedence over 03).
        let mut writes: Vec<(Entry, &[u16])> = Vec::new();
        let mut i = 0;
        while i < values.len() {
            let a = address + i as u16;
            let slot = self.map.slot(a).ok_or(Refusal::IllegalDataAddress)?;
            let entry = self.map.entries()[slot.entry];
            let n = usize::from(entry.registers());
            if slot.offset != 0 || i + n > values.len() || entry.point.access() == Access::Read {
                return Err(Refusal::IllegalDataAddress);
            }
            writes.push((entry, &values[i..i + n]));
            i += n;
        }
        let mut next = self.settings;
        let mut clear_latches = 0_u16;
        let mut reference = self.cal_reference;
        let mut command = None;
        for (entry, regs) in writes {
            let value = match entry.encoding {
                PointEncoding::Uint16 => f64::from(regs[0]),
                PointEncoding::Value(enc) => {
                    encoding::decode(regs, enc).map_err(|_| Refusal::IllegalDataValue)?
                }
            };
            let within = |(lo, hi): (f64, f64)| {
                if (lo..=hi).contains(&value) {
                    Ok(value)
                } else {
                    Err(Refusal::IllegalDataValue)
                }
            };
            match entry.point {
                Point::UpperLimit => next.thresholds.upper = within(LIMIT_RANGE)?,
                Point::LowerLimit => next.thresholds.lower = within(LIMIT_RANGE)?,
                Point::Hysteresis => next.thresholds.hysteresis = within(HYSTERESIS_RANGE)?,
                Point::Gain(p) => next.gains[p.index()] = within(GAIN_RANGE)?,
                Point::Status => clear_latches |= regs[0] & status::LATCHED_MASK,
                Point::CalReference => reference = within(CAL_REFERENCE_RANGE)?,
                Point::CalCommand => match regs[0] {
                    0 => {}
                    v => {
                        command =
                            Some(CalSelector::from_command(v).ok_or(Refusal::IllegalDataValue)?)
                    }
                },
                _ => return Err(Refusal::IllegalDataAddress),
            }
        }
        let t = next.thresholds;
        // The clear levels must stay between the limits, or a trip could never clear.
        if !(t.lower < t.upper && t.lower + t.hysteresis < t.upper - t.hysteresis) {
            return Err(Refusal::IllegalDataValue);
        }
        // The calibration runs last, on the gains and reference this same write set.
        let written_gains = next.gains;
        if let Some(selector) = command {
            next.gains = self.plan_calibration(next.gains, reference, selector)?;
        }
        let changed = next != self.settings || self.state.latched & clear_latches != 0;
        self.note_gain_changes(self.settings.gains, written_gains);
        // Only the calibration's own changes count as a calibration.
        if self.note_gain_changes(written_gains, next.gains) {
            self.cal_count += 1;
        }
        self.cal_reference = reference;
        self.settings = next;
        self.state.latched &= !clear_latches;
        Ok(changed)
    }
}

fn in_range(value: f64, (lo, hi): (f64, f64)) -> bool {
    (lo..=hi).contains(&value)
}

fn sentinel(enc: RegisterEncoding) -> [u16; 2] {
    match enc {
        RegisterEncoding::Float32(order) => encoding::encode_f32(f32::NAN, order),
        RegisterEncoding::Int16 { .. } => [0x8000, 0],
        RegisterEncoding::Uint32 { .. } => [0xFFFF, 0xFFFF],
    }
}

/// Word order of a float32 encoding (ABCD otherwise).
pub fn word_order(enc: RegisterEncoding) -> WordOrder {
    match enc {
        RegisterEncoding::Float32(o) => o,
        RegisterEncoding::Uint32 { word_order, .. } => word_order,
        RegisterEncoding::Int16 { .. } => WordOrder::Abcd,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::registers::{MapOptions, VOLTAGE_L1_REG};
    use sim_core::measure::PqEvent;
    use sim_core::meter::MeterConfig;
    use sim_core::scenario::{PqEventKind, RbeSpec};

    fn settings() -> Settings {
        Settings {
            thresholds: Thresholds::default(),
            gains: [1.0; 3],
        }
    }

    fn image_with(options: MapOptions) -> MeterImage {
        MeterImage::new(
            Arc::new(RegisterMap::default_map(options)),
            DeviceIdentity::gridloop("feeder-a/0"),
            3,
            240.0,
            Some(LoadSpec {
                current: 10.0,
                power_factor: 0.8,
            }),
            settings(),
        )
    }

    fn image() -> MeterImage {
        image_with(MapOptions::default())
    }

    fn rms10(ch: usize, t: f64, value: f64) -> MeasureEvent {
        MeasureEvent::Rms10 {
            ch,
            t_start: t - 0.2,
            t_end: t,
            value,
            flagged: false,
        }
    }

    fn f32_at(img: &MeterImage, addr: u16) -> f32 {
        let r = img.read(addr, 2).unwrap();
        encoding::decode_f32([r[0], r[1]], WordOrder::Abcd)
    }

    fn u32_at(img: &MeterImage, addr: u16) -> u32 {
        let r = img.read(addr, 2).unwrap();
        u32::from(r[0]) << 16 | u32::from(r[1])
    }

    #[test]
    fn before_any_measurement_values_read_as_not_implemented() {
        let img = image();
        assert!(f32_at(&img, VOLTAGE_L1_REG).is_nan());
        assert_eq!(img.status() & status::VALID, 0);
        // Settings and identity are there from the start.
        assert_eq!(f32_at(&img, 0x0100), 252.0);
        assert_eq!(f32_at(&img, 0x0102), 210.0);
        assert_eq!(f32_at(&img, 0x0104), 2.0);
        assert_eq!(f32_at(&img, 0x010A), 1.0);
        let v = img.read(0x0049, 1).unwrap()[0];
        assert_eq!(v, img.identity().version_register());
        assert_eq!(
            DeviceIdentity {
                revision: "2.17.3".into(),
                ..DeviceIdentity::gridloop("x")
            }
            .version_register(),
            0x0211
        );
    }

    #[test]
    fn measurements_fill_the_registers() {
        let mut img = image();
        for (ch, v) in [(0, 240.0), (1, 239.5), (2, 241.25)] {
            img.on_measure(&rms10(ch, 0.2, v));
        }
        img.on_measure(&MeasureEvent::UrmsHalf {
            ch: 0,
            t_start: 0.19,
            t_end: 0.2,
            value: 180.0,
        });
        img.on_measure(&MeasureEvent::Thd {
            ch: 1,
            t_start: 0.0,
            t_end: 0.2,
            percent: 4.5,
        });
        img.on_measure(&MeasureEvent::Frequency {
            t_start: 0.0,
            t_end: 0.2,
            hz: 59.98,
        });
        assert_eq!(f32_at(&img, 0x0024), 240.0);
        assert_eq!(f32_at(&img, 0x0026), 239.5);
        assert_eq!(f32_at(&img, 0x0028), 241.25);
        assert_eq!(f32_at(&img, 0x0042), 180.0);
        assert_eq!(f32_at(&img, 0x002C), 4.5);
        assert_eq!(f32_at(&img, 0x0030), 59.98_f32);
        // I = 10 A × V / 240 V; P = V · I · 0.8.
        assert_eq!(f32_at(&img, 0x0032), 10.0);
        assert_eq!(f32_at(&img, 0x0038), 1920.0);
        let total =
            1920.0 + 239.5 * (10.0 * 239.5 / 240.0) * 0.8 + 241.25 * (10.0 * 241.25 / 240.0) * 0.8;
        assert!((f64::from(f32_at(&img, 0x003E)) - total).abs() < 1e-3);
        // 0.2 s of each phase's power, in Wh.
        assert!((f64::from(f32_at(&img, 0x0040)) - total * 0.2 / 3600.0).abs() < 1e-6);
        assert_eq!(u32_at(&img, 0x0050), 200);
        assert_ne!(img.status() & status::VALID, 0);
        // One read of the whole measurement block.
        assert_eq!(img.read(0x0024, 0x0052 - 0x0024).unwrap().len(), 46);
        // Measured power replaces the derived one.
        img.on_measure(&MeasureEvent::Power {
            ch: 0,
            t_start: 0.2,
            t_end: 0.4,
            watts: 1000.0,
            energy_wh: 0.5,
        });
        assert_eq!(f32_at(&img, 0x0038), 1000.0);
        assert_eq!(f32_at(&img, 0x0040), 0.5);
        img.on_measure(&MeasureEvent::Pq(PqEvent {
            kind: PqEventKind::Dip,
            phase: None,
            start: 1.0,
            end: 1.2,
            extreme: 180.0,
        }));
        assert_eq!(u32_at(&img, 0x004E), 1);
    }

    /// The spec's detectable mismatch: a head-end that reads 240 V float32 ABCD as int16 gets
    /// a value off by one to two orders of magnitude (or an exception for a split read).
    #[test]
    fn float32_read_as_int16_is_detectably_wrong() {
        let mut img = image();
        img.on_measure(&rms10(0, 0.2, 240.0));
        let regs = img.read(VOLTAGE_L1_REG, 2).unwrap();
        assert_eq!(regs, vec![0x4370, 0x0000]);
        let raw = f64::from(regs[0] as i16);
        assert!(raw / 240.0 > 70.0, "raw int16 {raw}");
        assert!(raw * 0.1 / 240.0 > 7.0, "int16 at 0.1 V/LSB {}", raw * 0.1);
        assert_eq!(
            img.read(VOLTAGE_L1_REG, 1),
            Err(Refusal::IllegalDataAddress)
        );
        // Configured as int16 at 0.1 V/LSB the same voltage reads right.
        let mut img = image_with(MapOptions::with_analog(RegisterEncoding::Int16 {
            scale: 0.1,
        }));
        img.on_measure(&rms10(0, 0.2, 240.04));
        assert_eq!(img.read(VOLTAGE_L1_REG, 1).unwrap(), vec![2400]);
    }

    #[test]
    fn every_word_order_round_trips() {
        for order in [
            WordOrder::Abcd,
            WordOrder::Cdab,
            WordOrder::Badc,
            WordOrder::Dcba,
        ] {
            let mut img = image_with(MapOptions::with_analog(RegisterEncoding::Float32(order)));
            img.on_measure(&rms10(1, 0.2, 277.0));
            let r = img.read(0x0026, 2).unwrap();
            assert_eq!(
                encoding::decode_f32([r[0], r[1]], order),
                277.0,
                "{order:?}"
            );
            assert_eq!(r, encoding::encode_f32(277.0, order).to_vec());
        }
    }

    #[test]
    fn read_limits_and_addresses() {
        let img = image();
        assert_eq!(img.read(0x0024, 0), Err(Refusal::IllegalDataValue));
        assert_eq!(img.read(0x0024, 126), Err(Refusal::IllegalDataValue));
        // 125 registers from 0x0024 run into the unmapped gap after 0x0051.
        assert_eq!(img.read(0x0024, 125), Err(Refusal::IllegalDataAddress));
        assert_eq!(img.read(0x0000, 2), Err(Refusal::IllegalDataAddress));
        assert_eq!(img.read(0xFFFF, 2), Err(Refusal::IllegalDataAddress));
        // Starting or ending inside a 32-bit value.
        assert_eq!(img.read(0x0025, 2), Err(Refusal::IllegalDataAddress));
        assert_eq!(img.read(0x0024, 3), Err(Refusal::IllegalDataAddress));
        assert_eq!(img.read(0x0048, 2).unwrap().len(), 2);
        assert_eq!(img.read(0x0100, 12).unwrap().len(), 12);
    }

    fn f32_regs(v: f32) -> Vec<u16> {
        encoding::encode_f32(v, WordOrder::Abcd).to_vec()
    }

    #[test]
    fn writes_validate_and_are_idempotent() {
        let mut img = image();
        assert_eq!(img.write(0x0100, &f32_regs(250.0)), Ok(true));
        assert_eq!(img.write(0x0100, &f32_regs(250.0)), Ok(false));
        assert_eq!(img.settings().thresholds.upper, 250.0);
        assert_eq!(f32_at(&img, 0x0100), 250.0);
        // All three thresholds in one FC16.
        let mut regs = f32_regs(260.0);
        regs.extend(f32_regs(200.0));
        regs.extend(f32_regs(3.0));
        assert_eq!(img.write(0x0100, &regs), Ok(true));
        let t = img.settings().thresholds;
        assert_eq!((t.upper, t.lower, t.hysteresis), (260.0, 200.0, 3.0));
        // Gains.
        assert_eq!(img.write(0x0108, &f32_regs(1.02)), Ok(true));
        assert_eq!(img.settings().gains, [1.0, f64::from(1.02_f32), 1.0]);

        let before = img.settings();
        for (addr, regs, why) in [
            (0x0100, f32_regs(1000.5), Refusal::IllegalDataValue),
            (0x0100, f32_regs(-1.0), Refusal::IllegalDataValue),
            (0x0100, f32_regs(f32::NAN), Refusal::IllegalDataValue),
            (0x0106, f32_regs(2.5), Refusal::IllegalDataValue),
            (0x0104, f32_regs(100.5), Refusal::IllegalDataValue),
            // lower above upper, or clear levels crossing
            (0x0102, f32_regs(270.0), Refusal::IllegalDataValue),
            (0x0104, f32_regs(30.0), Refusal::IllegalDataValue),
            // half of a float32, read-only, unmapped
            (0x0100, vec![0x4370], Refusal::IllegalDataAddress),
            (0x0101, f32_regs(1.0), Refusal::IllegalDataAddress),
            (0x0024, f32_regs(1.0), Refusal::IllegalDataAddress),
            (0x0200, vec![1], Refusal::IllegalDataAddress),
            (0x0100, vec![], Refusal::IllegalDataValue),
            (0x0100, vec![0; 124], Refusal::IllegalDataValue),
        ] {
            assert_eq!(img.write(addr, &regs), Err(why), "0x{addr:04X} {regs:?}");
        }
        // A bad value anywhere in an FC16 changes nothing, even the good values before it.
        let mut regs = f32_regs(255.0);
        regs.extend(f32_regs(-5.0));
        assert_eq!(img.write(0x0100, &regs), Err(Refusal::IllegalDataValue));
        assert_eq!(img.settings(), before);
    }

    #[test]
    fn trips_latch_until_written_one_to_clear() {
        let mut img = image();
        let mut meter = Meter::new(MeterConfig {
            id: 0,
            channels: 3,
            thresholds: Thresholds::default(),
            rbe: RbeSpec::default(),
            buffer_capacity: 16,
        });
        let urms = |ch, t, value| MeasureEvent::UrmsHalf {
            ch,
            t_start: t - 0.02,
            t_end: t,
            value,
        };
        meter.on_measure(&urms(0, 1.0, 180.0));
        meter.on_measure(&urms(2, 1.0, 260.0));
        img.on_meter(&meter, 1.0);
        let s = img.status();
        assert_eq!(s & 0x3F, status::UV_ACTIVE | status::OV_ACTIVE << 2);
        assert_eq!(
            s & status::LATCHED_MASK,
            status::UV_LATCHED | status::OV_LATCHED << 2
        );
        meter.on_measure(&urms(0, 1.2, 230.0));
        meter.on_measure(&urms(2, 1.2, 230.0));
        img.on_meter(&meter, 1.2);
        let s = img.status();
        assert_eq!(s & 0x3F, 0, "active bits follow the trip state");
        assert_eq!(
            s & status::LATCHED_MASK,
            status::UV_LATCHED | status::OV_LATCHED << 2
        );
        assert_eq!(u32_at(&img, 0x004A), 2);
        assert_eq!(u32_at(&img, 0x004C), 2);
        // Clear the UV L1 latch only (FC06 on STATUS_REG); other bits ignore the write.
        assert_eq!(img.write(0x0048, &[status::UV_LATCHED | 0x00FF]), Ok(true));
        assert_eq!(img.status() & status::LATCHED_MASK, status::OV_LATCHED << 2);
        assert_eq!(img.write(0x0048, &[status::UV_LATCHED]), Ok(false));
        // Syncing again does not re-latch old trips.
        img.on_meter(&meter, 1.3);
        assert_eq!(img.status() & status::LATCHED_MASK, status::OV_LATCHED << 2);
    }

    fn readings(img: &mut MeterImage, t: f64, values: [f64; 3]) {
        for (ch, v) in values.into_iter().enumerate() {
            img.on_measure(&rms10(ch, t, v));
        }
    }

    fn f32_pair(v: f32) -> [u16; 2] {
        encoding::encode_f32(v, WordOrder::Abcd)
    }

    #[test]
    fn calibration_sets_gain_to_reference_over_raw_and_is_idempotent() {
        let mut img = image();
        readings(&mut img, 1.0, [236.0, 240.0, 244.0]);
        let cal = img.calibrate(240.0, CalSelector::All).unwrap();
        assert_eq!(cal.old, [1.0; 3]);
        // L2 already reads 240 V: within the deadband, untouched.
        assert_eq!(cal.new, [240.0 / 236.0, 1.0, 240.0 / 244.0]);
        assert!(cal.changed);
        assert_eq!(img.cal_count(), 1);
        assert_eq!(img.settings().gains, cal.new);
        for p in Phase::ALL {
            let r = img.calibrated_reading(p);
            assert!((r - 240.0).abs() <= 240.0 * CAL_DEADBAND, "{p}: {r}");
        }
        // The same reference again, before any new reading: nothing changes.
        let again = img.calibrate(240.0, CalSelector::All).unwrap();
        assert_eq!(again.new, again.old);
        assert!(!again.changed);
        assert_eq!(img.cal_count(), 1);
        // A window that started before the gain change still carries the old gain: it does
        // not move the raw estimate.
        img.on_measure(&rms10(0, 1.1, 236.0));
        assert!(!img.calibrate(240.0, CalSelector::All).unwrap().changed);
        // The meter measuring under the new gains reads the reference: still a no-op.
        readings(&mut img, 1.5, [240.0, 240.0, 240.0]);
        assert!(!img.calibrate(240.0, CalSelector::All).unwrap().changed);
        assert_eq!(img.cal_count(), 1);
        // A different reference on one phase changes that phase only.
        let one = img.calibrate(230.0, CalSelector::Phase(Phase::L2)).unwrap();
        assert_eq!(one.new, [240.0 / 236.0, 230.0 / 240.0, 240.0 / 244.0]);
        assert_eq!(img.cal_count(), 2);
        assert_eq!(u32_at(&img, 0x010C), 2);
        assert_eq!(f32_at(&img, 0x010E), 230.0);
    }

    #[test]
    fn calibration_refusals_change_nothing() {
        let mut img = image();
        // No reading yet.
        assert_eq!(
            img.calibrate(240.0, CalSelector::All),
            Err(Refusal::IllegalDataValue)
        );
        img.on_measure(&rms10(0, 1.0, 236.0));
        // L2 has no reading yet; L1 alone is fine.
        assert_eq!(
            img.calibrate(240.0, CalSelector::All),
            Err(Refusal::IllegalDataValue)
        );
        for bad in [89.9, 480.1, f64::NAN, -240.0] {
            assert_eq!(
                img.calibrate(bad, CalSelector::Phase(Phase::L1)),
                Err(Refusal::IllegalDataValue),
                "{bad}"
            );
        }
        // Gain 480 / 236 > 2: out of the gain range.
        assert_eq!(
            img.calibrate(480.0, CalSelector::Phase(Phase::L1)),
            Err(Refusal::IllegalDataValue)
        );
        assert_eq!(img.settings().gains, [1.0; 3]);
        assert_eq!(img.cal_count(), 0);
        assert!(img.cal_reference().is_nan());
        // A single-phase meter has no L2 or L3.
        let mut one = MeterImage::new(
            Arc::new(RegisterMap::default_map(MapOptions::default())),
            DeviceIdentity::gridloop("m"),
            1,
            240.0,
            None,
            settings(),
        );
        one.on_measure(&rms10(0, 1.0, 236.0));
        assert_eq!(
            one.calibrate(240.0, CalSelector::Phase(Phase::L3)),
            Err(Refusal::IllegalDataValue)
        );
        assert!(one.calibrate(240.0, CalSelector::All).unwrap().changed);
    }

    #[test]
    fn calibration_through_the_registers() {
        let mut img = image();
        readings(&mut img, 1.0, [236.0, 236.0, 236.0]);
        // Reads: count 0, reference not set (NaN), command 0.
        assert_eq!(u32_at(&img, 0x010C), 0);
        assert!(f32_at(&img, 0x010E).is_nan());
        assert_eq!(img.read(0x0110, 1).unwrap(), [0]);
        // The whole settings block is one gap-free read.
        assert_eq!(img.read(0x0100, 17).unwrap().len(), 17);
        // The command without a reference is refused.
        assert_eq!(img.write(0x0110, &[1]), Err(Refusal::IllegalDataValue));
        // Reference + command L1 in one FC16.
        let [a, b] = f32_pair(240.0);
        assert_eq!(img.write(0x010E, &[a, b, 2]), Ok(true));
        let g = f32_at(&img, 0x0106);
        assert_eq!(g, (240.0_f64 / 236.0) as f32);
        assert_eq!(f32_at(&img, 0x0108), 1.0);
        assert_eq!(u32_at(&img, 0x010C), 1);
        // Again: no change, not counted.
        assert_eq!(img.write(0x010E, &[a, b, 2]), Ok(false));
        assert_eq!(u32_at(&img, 0x010C), 1);
        // FC06 on the command alone uses the stored reference: L2 and L3 now.
        assert_eq!(img.write(0x0110, &[1]), Ok(true));
        assert_eq!(u32_at(&img, 0x010C), 2);
        assert_eq!(img.write(0x0110, &[1]), Ok(false));
        // 0 is no command; 5 is not a selector; the count is read-only; a reference out
        // of range is refused and leaves the stored one.
        assert_eq!(img.write(0x0110, &[0]), Ok(false));
        assert_eq!(img.write(0x0110, &[5]), Err(Refusal::IllegalDataValue));
        assert_eq!(img.write(0x010C, &[0, 0]), Err(Refusal::IllegalDataAddress));
        let [c, d] = f32_pair(500.0);
        assert_eq!(img.write(0x010E, &[c, d]), Err(Refusal::IllegalDataValue));
        assert_eq!(f32_at(&img, 0x010E), 240.0);
        // A refused calibration refuses the whole write (gain 2.1 would be out of range).
        let [e, f] = f32_pair(1.5);
        let [r0, r1] = f32_pair(480.0);
        assert_eq!(
            img.write(0x010A, &[e, f, 0, 0, r0, r1, 1]),
            Err(Refusal::IllegalDataAddress),
            "the read-only count sits between the gains and the reference"
        );
        assert_eq!(
            img.write(0x010E, &[r0, r1, 1]),
            Err(Refusal::IllegalDataValue)
        );
        assert_eq!(u32_at(&img, 0x010C), 2);
        assert_eq!(f32_at(&img, 0x010E), 240.0);
    }

    proptest::proptest! {
        /// Any reading, gain and reference: the calibrated reading ends within the deadband of
        /// the reference (or the calibration is refused and nothing changed), and a second
        /// calibration with the same reference changes nothing — also after a fresh reading
        /// measured under the new gain.
        #[test]
        fn calibration_converges_and_repeats_as_a_no_op(
            raw in 100.0_f64..400.0,
            gain in 0.5_f64..2.0,
            reference in 90.0_f64..480.0,
        ) {
            let mut img = image();
            img.write(0x010A, &f32_pair(gain as f32)).unwrap();
            let gain = f64::from(gain as f32);
            img.on_measure(&rms10(2, 1.0, raw * gain));
            let sel = CalSelector::Phase(Phase::L3);
            match img.calibrate(reference, sel) {
                Err(e) => {
                    proptest::prop_assert_eq!(e, Refusal::IllegalDataValue);
                    proptest::prop_assert!(!in_range(reference / raw, GAIN_RANGE));
                    proptest::prop_assert_eq!(img.settings().gains[2], gain);
                    proptest::prop_assert_eq!(img.cal_count(), 0);
                }
                Ok(cal) => {
                    let within = (raw * gain - reference).abs() <= CAL_DEADBAND * reference;
                    proptest::prop_assert_eq!(cal.changed, !within);
                    proptest::prop_assert_eq!(img.cal_count(), u64::from(!within));
                    let g = img.settings().gains[2];
                    proptest::prop_assert!(
                        (raw * g - reference).abs() <= CAL_DEADBAND * reference
                    );
                    proptest::prop_assert!(!img.calibrate(reference, sel).unwrap().changed);
                    img.on_measure(&rms10(2, 2.0, raw * g));
                    proptest::prop_assert!(!img.calibrate(reference, sel).unwrap().changed);
                    proptest::prop_assert_eq!(img.cal_count(), u64::from(!within));
                }
            }
        }
    }

    #[test]
    fn selectors() {
        for (text, value) in [("all", 1), ("L1", 2), ("l2", 3), ("L3", 4)] {
            let sel = CalSelector::parse(text).unwrap();
            assert_eq!(sel.command(), value);
            assert_eq!(CalSelector::from_command(value), Some(sel));
        }
        assert_eq!(CalSelector::parse("L4"), None);
        assert_eq!(CalSelector::from_command(0), None);
        assert_eq!(CalSelector::from_command(5), None);
    }
}
