//! Fleet planning (sans-io): which meters of a scenario this process runs, under which ids and
//! names, and where each one listens for Modbus/TCP.
//!
//! `gridloop fleet --meters N` rescales the scenario's groups to N meters in the groups'
//! proportions (largest remainder, so the counts add up to N exactly and every group keeps at
//! least one meter while N allows), numbers them in file order as sim mode does (ids 0..N), and
//! `--shard I/N` takes a contiguous block of those ids. Every meter's seed is derived from the
//! scenario seed and its fleet-wide id ([`crate::LiveMeter`] does that), so a meter computes the
//! same waveform and trips whichever shard or machine runs it.

use std::fmt;
use std::net::SocketAddr;

use sim_core::Scenario;

use crate::live::MeterRef;

/// Most unit ids one Modbus gateway serves (1..=247, the protocol's unicast range).
pub const GATEWAY_UNITS: u32 = 247;

/// `--shard I/N`: this process runs part `index` (0-based) of `count` contiguous parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 0-based part number.
    pub index: u32,
    /// Number of parts (≥ 1).
    pub count: u32,
}

impl Shard {
    /// The whole fleet.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parse `I/N` with 1 ≤ I ≤ N (1-based, as people count machines).
    pub fn parse(text: &str) -> Result<Shard, FleetError> {
        let bad = |why: &str| FleetError::BadShard {
            text: text.to_owned(),
            why: why.to_owned(),
        };
        let (i, n) = text
            .split_once('/')
            .ok_or_else(|| bad("expected I/N, e.g. 3/8"))?;
        let i: u32 = i
            .trim()
            .parse()
            .map_err(|_| bad("I is not a whole number"))?;
        let n: u32 = n
            .trim()
            .parse()
            .map_err(|_| bad("N is not a whole number"))?;
        if n == 0 {
            return Err(bad("N must be at least 1"));
        }
        if i == 0 || i > n {
            return Err(bad("I must be between 1 and N"));
        }
        Ok(Shard {
            index: i - 1,
            count: n,
        })
    }

    /// The ids `[start, end)` of `total` meters that this shard runs: contiguous, the parts of
    /// all shards cover `0..total` exactly once, sizes differ by at most one.
    pub fn range(self, total: u32) -> std::ops::Range<u32> {
        let at = |k: u32| (u64::from(total) * u64::from(k) / u64::from(self.count)) as u32;
        at(self.index)..at(self.index + 1)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index + 1, self.count)
    }
}

/// Errors of fleet planning (all usage errors: exit code 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    #[error("bad --shard `{text}`: {why}")]
    BadShard { text: String, why: String },
    #[error("the scenario has no meter group")]
    NoGroups,
    #[error("--meters must be at least 1")]
    NoMeters,
    #[error(
        "{listeners} Modbus listeners count their ports up from the base, so the base port \
         cannot be 0 (0 only works for a single listener)"
    )]
    ZeroBasePort { listeners: u32 },
    #[error(
        "{meters} meters need Modbus ports {first}..={last}, past 65535; use --gateway or a \
         lower --modbus-base"
    )]
    PortsExhausted { meters: u32, first: u32, last: u32 },
}

/// How meters are reached over Modbus/TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModbusLayout {
    /// No Modbus listeners (MQTT only).
    None,
    /// One listener per meter on ports counted up from the base (the shard's first meter on
    /// the base port itself).
    PortPerMeter { base: SocketAddr },
    /// Gateways of up to [`GATEWAY_UNITS`] meters, unit ids 1..=247, on ports counted up from
    /// the base.
    Gateway { base: SocketAddr },
}

/// Where one meter answers Modbus requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModbusEndpoint {
    pub addr: SocketAddr,
    /// `None`: the listener is this meter's alone and answers every unit id.
    pub unit: Option<u8>,
}

/// One meter of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMeter {
    /// Group and index in the rescaled scenario ([`FleetPlan::scenario`]).
    pub which: MeterRef,
    /// Fleet-wide id (same in every shard).
    pub id: u32,
    pub modbus: Option<ModbusEndpoint>,
}

/// The meters one process runs.
#[derive(Debug, Clone)]
pub struct FleetPlan {
    /// The scenario with group counts rescaled to the fleet size.
    pub scenario: Scenario,
    pub shard: Shard,
    /// Meters in the whole fleet (all shards).
    pub total: u32,
    /// This shard's meters, in id order.
    pub meters: Vec<PlannedMeter>,
}

/// Split `total` into parts proportional to `weights` (largest remainder; ties to the earlier
/// group). Every part is ≥ 1 while `total` ≥ the number of weights; the parts sum to `total`.
pub fn apportion(total: u32, weights: &[u32]) -> Vec<u32> {
    let n = weights.len();
    if n == 0 {
        return Vec::new();
    }
    let sum: u64 = weights.iter().map(|&w| u64::from(w.max(1))).sum();
    // Reserve one per group first when there is room, then share the rest by weight.
    let reserved = if u64::from(total) >= n as u64 { 1 } else { 0 };
    let rest = u64::from(total) - reserved * n as u64;
    let mut parts: Vec<u64> = Vec::with_capacity(n);
    let mut remainders: Vec<(u64, usize)> = Vec::with_capacity(n);
    for (g, &w) in weights.iter().enumerate() {
        let exact = rest * u64::from(w.max(1));
        parts.push(reserved + exact / sum);
        remainders.push((exact % sum, g));
    }
    let mut left = u64::from(total) - parts.iter().sum::<u64>();
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, g) in &remainders {
        if left == 0 {
            break;
        }
        parts[g] += 1;
        left -= 1;
    }
    parts.into_iter().map(|p| p as u32).collect()
}

impl FleetPlan {
    /// Plan `total` meters of `scenario` (`None`: the scenario's own counts), this `shard` of
    /// them, reachable per `modbus`.
    pub fn new(
        scenario: &Scenario,
        total: Option<u32>,
        shard: Shard,
        modbus: ModbusLayout,
    ) -> Result<FleetPlan, FleetError> {
        if scenario.groups.is_empty() {
            return Err(FleetError::NoGroups);
        }
        let mut scenario = scenario.clone();
        let total = match total {
            Some(0) => return Err(FleetError::NoMeters),
            Some(n) => {
                let weights: Vec<u32> = scenario.groups.iter().map(|g| g.count).collect();
                for (g, count) in scenario.groups.iter_mut().zip(apportion(n, &weights)) {
                    g.count = count;
                }
                n
            }
            None => scenario.groups.iter().map(|g| g.count).sum(),
        };
        let ids = shard.range(total);
        let local = ids.end - ids.start;
        let listeners = match modbus {
            ModbusLayout::None => None,
            ModbusLayout::PortPerMeter { base } => Some((base, local)),
            ModbusLayout::Gateway { base } => Some((base, local.div_ceil(GATEWAY_UNITS))),
        };
        if let Some((base, listeners)) = listeners {
            let first = u32::from(base.port());
            if first == 0 && listeners > 1 {
                return Err(FleetError::ZeroBasePort { listeners });
            }
            let last = first + listeners.saturating_sub(1);
            if last > 65535 {
                return Err(FleetError::PortsExhausted {
                    meters: local,
                    first,
                    last,
                });
            }
        }
        let mut meters = Vec::with_capacity(local as usize);
        let mut group_start = 0u32;
        for (g, group) in scenario.groups.iter().enumerate() {
            let group_ids = group_start..group_start + group.count;
            group_start += group.count;
            for id in group_ids.start.max(ids.start)..group_ids.end.min(ids.end) {
                let k = id - ids.start;
                let modbus = match modbus {
                    ModbusLayout::None => None,
                    ModbusLayout::PortPerMeter { base } => Some(ModbusEndpoint {
                        addr: with_port(base, u32::from(base.port()) + k),
                        unit: None,
                    }),
                    ModbusLayout::Gateway { base } => Some(ModbusEndpoint {
                        addr: with_port(base, u32::from(base.port()) + k / GATEWAY_UNITS),
                        unit: Some((k % GATEWAY_UNITS + 1) as u8),
                    }),
                };
                meters.push(PlannedMeter {
                    which: MeterRef {
                        group: g,
                        index: id - group_ids.start,
                    },
                    id,
                    modbus,
                });
            }
        }
        Ok(FleetPlan {
            scenario,
            shard,
            total,
            meters,
        })
    }

    /// The distinct Modbus listen addresses, in port order, with the meters behind each.
    pub fn listeners(&self) -> Vec<(SocketAddr, Vec<&PlannedMeter>)> {
        let mut out: Vec<(SocketAddr, Vec<&PlannedMeter>)> = Vec::new();
        for m in &self.meters {
            let Some(ep) = m.modbus else { continue };
            match out.last_mut() {
                Some((addr, list)) if *addr == ep.addr => list.push(m),
                _ => out.push((ep.addr, vec![m])),
            }
        }
        out
    }
}

/// `base` with its port replaced; the caller has checked the port fits.
fn with_port(base: SocketAddr, port: u32) -> SocketAddr {
    SocketAddr::new(base.ip(), u16::try_from(port).unwrap_or(u16::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shard_parses_one_based_and_rejects_nonsense() {
        assert_eq!(Shard::parse("3/8").unwrap(), Shard { index: 2, count: 8 });
        assert_eq!(Shard::parse("1/1").unwrap(), Shard::ALL);
        for bad in ["0/8", "9/8", "3", "a/8", "3/0", "3/b", "-1/2", ""] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Shard::parse("3/8").unwrap().to_string(), "3/8");
    }

    #[test]
    fn apportion_follows_weights() {
        assert_eq!(apportion(10_000, &[400, 400, 400]), vec![3334, 3333, 3333]);
        assert_eq!(apportion(10, &[1, 3]), vec![3, 7]);
        assert_eq!(apportion(2, &[1, 1000, 1]), vec![0, 2, 0]);
        assert_eq!(apportion(3, &[1, 1000, 1]), vec![1, 1, 1]);
        assert_eq!(apportion(5, &[]), Vec::<u32>::new());
    }

    proptest! {
        #[test]
        fn shards_cover_every_meter_once(total in 0u32..100_000, count in 1u32..64) {
            let mut next = 0;
            for index in 0..count {
                let r = Shard { index, count }.range(total);
                prop_assert_eq!(r.start, next);
                let size = r.end - r.start;
                prop_assert!(size == total / count || size == total / count + 1);
                next = r.end;
            }
            prop_assert_eq!(next, total);
        }

        #[test]
        fn apportion_sums_and_keeps_groups(
            total in 0u32..1_000_000,
            weights in proptest::collection::vec(0u32..5000, 1..8),
        ) {
            let parts = apportion(total, &weights);
            prop_assert_eq!(parts.iter().map(|&p| u64::from(p)).sum::<u64>(), u64::from(total));
            if total as usize >= weights.len() {
                prop_assert!(parts.iter().all(|&p| p >= 1));
            }
        }
    }
}
