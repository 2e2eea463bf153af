//! The async Modbus poller (tokio shell around the pure [`handshake`](crate::handshake::verify)): polls
//! a fleet of meters over Modbus/TCP and turns what it finds into [`PollEvent`]s for
//! [`HeadEndCore::on_poll`](crate::core::HeadEndCore::on_poll).
//!
//! - **One TCP connection per distinct address**, one tokio task owning it: meters behind a
//!   Modbus gateway share it and are addressed by unit id. Thousands of meters are thousands
//!   of tasks on the runtime's worker threads, never thousands of threads; at most
//!   [`PollerConfig::max_in_flight`] polls run at once.
//! - Connections are opened here (`TcpStream` + `socket2`) so TCP keep-alive is tuned
//!   ([`PollerConfig::keepalive_idle`] / `keepalive_interval`): an idle connection through a
//!   NAT or firewall is probed instead of silently dropped.
//! - Each request has a timeout; a failed attempt (timeout, broken link) drops the connection —
//!   a late answer would otherwise be taken for the next request's — and is retried
//!   [`PollerConfig::retries`] times on a fresh one. After the last, the meter is
//!   [`PollEvent::Unreachable`] (once per episode) and is tried again after an exponential
//!   back-off with jitter from a seeded generator. A refused connect makes every meter behind
//!   that address unreachable at once. The first answer after that is
//!   [`PollEvent::Reachable`] (also sent at first contact).
//! - A Modbus exception is an answer (the meter is reachable, counted in
//!   [`PollerReport::exceptions`]), except the gateway's 0x0A/0x0B, which say the meter behind it
//!   did not answer.
//! - **Encoding handshake** at first contact and again on every new connection: firmware
//!   version, the three voltages and the frequency, each read at the expected encoding's width
//!   and, when the meter refuses that (exception 0x02), at the other width (plus a 1-register
//!   read where two were served: a refusal there rules int16 out), then judged by
//!   [`handshake::verify`]. A mismatch sends [`PollEvent::EncodingMismatch`] (once per meter)
//!   and the meter's values are never read as readings; an ambiguous or undetermined verdict
//!   reads nothing and asks again at the next poll.
//! - Each verified poll sends one [`PollEvent::Reading`]: FC03 of the whole 0x0024–0x0051 block
//!   for two-register encodings (46 registers), per-point reads for int16 (whose map leaves the
//!   second register of each point unmapped). `source_ms` is the target's epoch plus
//!   `SOURCE_TIME_REG`, or the receive time without an epoch.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sim_core::encoding::{register_count, RegisterEncoding};
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};
use tokio_modbus::client::{tcp, Context, Reader};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};

use crate::core::{MeterInfo, PollEvent};
use crate::handshake::{
    self, counter_order, decode_value, describe, Limits, Probe, Verdict, SOURCE_TIME_REG,
    STATUS_REG, VOLTAGE_L1_REG,
};

/// Registers from `VOLTAGE_L1_REG` to the end of `SOURCE_TIME_REG` (0x0024–0x0051).
pub const BLOCK_LEN: u16 = SOURCE_TIME_REG + 2 - VOLTAGE_L1_REG;

/// One meter to poll.
#[derive(Debug, Clone, PartialEq)]
pub struct PollTarget {
    pub meter: u32,
    pub info: MeterInfo,
    pub addr: SocketAddr,
    /// Unit id behind a gateway; `None`: a meter on its own port (sent as unit 255).
    pub unit: Option<u8>,
    /// The analog encoding the head-end expects (checked by the handshake).
    pub expected: RegisterEncoding,
    pub interval: Duration,
    /// Phases the meter has (1 or 3); the others read as NaN.
    pub channels: usize,
    /// Unix ms of the meter's grid time 0: `source_ms = epoch_ms + SOURCE_TIME_REG`. `None`:
    /// the poll's receive time.
    pub epoch_ms: Option<u64>,
}

/// How the poller behaves on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct PollerConfig {
    /// Per request and per connect.
    pub timeout: Duration,
    /// Attempts after the first before a meter is unreachable.
    pub retries: u32,
    /// First back-off after an unreachable verdict; doubles per failed episode up to
    /// `backoff_max`, each jittered to 50–100 %.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// TCP keep-alive: idle time before the first probe, and the interval between probes.
    pub keepalive_idle: Duration,
    pub keepalive_interval: Duration,
    /// Polls running at once across all connections.
    pub max_in_flight: usize,
    /// Plausible voltages and frequency for the handshake.
    pub limits: Limits,
    /// Seed of the back-off jitter.
    pub seed: u64,
}

impl Default for PollerConfig {
    fn default() -> Self {
        PollerConfig {
            timeout: Duration::from_secs(1),
            retries: 2,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            keepalive_idle: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(10),
            max_in_flight: 256,
            limits: Limits::default(),
            seed: 0x6772_6964_6c6f_6f70,
        }
    }
}

/// What the poller did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PollerReport {
    /// Poll cycles started (one per meter per due interval, handshakes included).
    pub polls: u64,
    /// Cycles that got an answer (values or a Modbus exception).
    pub answered: u64,
    /// Requests or connects that timed out.
    pub timeouts: u64,
    /// Attempts after a failed one.
    pub retries: u64,
    /// Modbus exception answers (per request).
    pub exceptions: u64,
    /// Connections opened after an address's first.
    pub reconnects: u64,
    /// Connects that failed (refused, unreachable, timed out).
    pub connect_failures: u64,
    pub unreachable_episodes: u64,
    pub mismatches: u64,
    pub handshakes: u64,
    /// Handshakes that could not decide (ambiguous or nothing to judge yet).
    pub undecided: u64,
    pub readings: u64,
}

impl PollerReport {
    fn add(&mut self, o: &PollerReport) {
        self.polls += o.polls;
        self.answered += o.answered;
        self.timeouts += o.timeouts;
        self.retries += o.retries;
        self.exceptions += o.exceptions;
        self.reconnects += o.reconnects;
        self.connect_failures += o.connect_failures;
        self.unreachable_episodes += o.unreachable_episodes;
        self.mismatches += o.mismatches;
        self.handshakes += o.handshakes;
        self.undecided += o.undecided;
        self.readings += o.readings;
    }
}

/// Poll `targets` until `stop` turns true (or its sender is dropped, or `tx`'s receiver is);
/// returns the summed counters.
pub async fn run_poller(
    targets: Vec<PollTarget>,
    cfg: PollerConfig,
    tx: mpsc::Sender<PollEvent>,
    stop: watch::Receiver<bool>,
) -> PollerReport {
    let mut by_addr: BTreeMap<SocketAddr, Vec<PollTarget>> = BTreeMap::new();
    for t in targets {
        by_addr.entry(t.addr).or_default().push(t);
    }
    let cfg = Arc::new(cfg);
    let permits = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
    let mut tasks = JoinSet::new();
    for (addr, targets) in by_addr {
        let link = Link::new(addr, targets, cfg.clone(), permits.clone(), tx.clone());
        tasks.spawn(link.run(stop.clone()));
    }
    drop(tx);
    let mut report = PollerReport::default();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(r) => report.add(&r),
            Err(e) => tracing::error!("poller connection task failed: {e}"),
        }
    }
    report
}

/// Unix ms now.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Resolves once `stop` is true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Open a connection with TCP keep-alive tuned, within `cfg.timeout`.
pub async fn connect(addr: SocketAddr, cfg: &PollerConfig) -> io::Result<TcpStream> {
    let stream = timeout(cfg.timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {:?}", cfg.timeout),
            )
        })??;
    stream.set_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(cfg.keepalive_idle)
        .with_interval(cfg.keepalive_interval);
    SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
    Ok(stream)
}

/// Why an attempt failed.
#[derive(Debug)]
enum Failure {
    /// No connection (refused, unreachable, connect timeout).
    Connect(String),
    Timeout,
    /// The link broke, or the answer did not fit the request.
    Link(String),
    /// A gateway answered that the meter behind it did not (0x0A / 0x0B).
    Gateway(ExceptionCode),
}

impl Failure {
    fn text(&self, addr: SocketAddr, unit: u8, timeout: Duration) -> String {
        match self {
            Failure::Connect(e) => format!("{addr}: cannot connect: {e}"),
            Failure::Timeout => format!("{addr} unit {unit}: no answer within {timeout:?}"),
            Failure::Link(e) => format!("{addr} unit {unit}: {e}"),
            Failure::Gateway(c) => format!("{addr} unit {unit}: gateway: {c}"),
        }
    }
}

type Answer<T> = Result<Result<T, ExceptionCode>, Failure>;

/// A meter's poller state.
#[derive(Debug)]
struct Meter {
    t: PollTarget,
    /// The handshake verified the expected encoding on the current connection.
    verified: bool,
    /// The 46-register block read was refused (a custom map): read point by point.
    per_point: bool,
    mismatch_sent: bool,
    /// `None` until first contact or the first unreachable verdict.
    reachable: Option<bool>,
    /// Failed episodes in a row (back-off exponent).
    fails: u32,
    due: Instant,
}

/// One connection and the meters behind it.
struct Link {
    addr: SocketAddr,
    meters: Vec<Meter>,
    ctx: Option<Context>,
    opened: u64,
    /// Why the last connection was dropped: `true` when the peer itself may have changed (the
    /// link broke), so every meter behind it is verified again; `false` when one unit behind
    /// a shared gateway connection timed out, so only that unit is.
    reverify_all: bool,
    fails: u32,
    rng: u64,
    cfg: Arc<PollerConfig>,
    permits: Arc<Semaphore>,
    tx: mpsc::Sender<PollEvent>,
    report: PollerReport,
}

/// splitmix64: a seeded, deterministic jitter source.
fn next_u64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Back-off after `fails` failed episodes: `min · 2^(fails−1)` capped at `max`, then 50–100 %
/// of that.
pub fn backoff(fails: u32, min: Duration, max: Duration, rng: &mut u64) -> Duration {
    let exp = fails.saturating_sub(1).min(30);
    let full = min.saturating_mul(1 << exp).min(max).max(min.min(max));
    let u = (next_u64(rng) >> 11) as f64 / (1_u64 << 53) as f64;
    full.mul_f64(0.5 + 0.5 * u)
}

impl Link {
    fn new(
        addr: SocketAddr,
        targets: Vec<PollTarget>,
        cfg: Arc<PollerConfig>,
        permits: Arc<Semaphore>,
        tx: mpsc::Sender<PollEvent>,
    ) -> Link {
        let now = Instant::now();
        let mut h = DefaultHasher::new();
        addr.hash(&mut h);
        let rng = cfg.seed ^ h.finish();
        let meters = targets
            .into_iter()
            .map(|t| Meter {
                t,
                verified: false,
                per_point: false,
                mismatch_sent: false,
                reachable: None,
                fails: 0,
                due: now,
            })
            .collect();
        Link {
            addr,
            meters,
            ctx: None,
            opened: 0,
            reverify_all: true,
            fails: 0,
            rng,
            cfg,
            permits,
            tx,
            report: PollerReport::default(),
        }
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) -> PollerReport {
        // The meter due first (a linear scan: at most 247 units share a connection).
        while let Some(i) = (0..self.meters.len()).min_by_key(|&i| self.meters[i].due) {
            let due = self.meters[i].due;
            let go = tokio::select! {
                _ = stopped(&mut stop) => false,
                _ = tokio::time::sleep_until(due) => true,
            };
            let cont = go
                && tokio::select! {
                    _ = stopped(&mut stop) => false,
                    c = self.poll(i) => c,
                };
            if !cont {
                break;
            }
        }
        self.report
    }

    async fn send(&mut self, ev: PollEvent) -> bool {
        self.tx.send(ev).await.is_ok()
    }

    /// One poll cycle of meter `i`; false when the event receiver is gone.
    async fn poll(&mut self, i: usize) -> bool {
        let Ok(_permit) = self.permits.clone().acquire_owned().await else {
            return false;
        };
        self.report.polls += 1;
        let mut last = None;
        for attempt in 0..=self.cfg.retries {
            if attempt > 0 {
                self.report.retries += 1;
            }
            match self.attempt(i).await {
                Ok(events) => {
                    self.report.answered += 1;
                    let m = &mut self.meters[i];
                    m.fails = 0;
                    self.fails = 0;
                    let interval = m.t.interval.max(Duration::from_millis(1));
                    let now = Instant::now();
                    m.due = m
                        .due
                        .checked_add(interval)
                        .unwrap_or(now + Duration::from_secs(86_400 * 365))
                        .max(now);
                    let meter = m.t.meter;
                    let back = m.reachable != Some(true);
                    m.reachable = Some(true);
                    if back && !self.send(PollEvent::Reachable { meter }).await {
                        return false;
                    }
                    for ev in events {
                        if !self.send(ev).await {
                            return false;
                        }
                    }
                    return true;
                }
                Err(f) => {
                    if matches!(f, Failure::Timeout) {
                        self.report.timeouts += 1;
                    }
                    // A late answer would be taken for the next request's: start afresh. A
                    // gateway's own answer leaves the connection sound. One silent unit behind
                    // a shared connection says nothing about the others: only it is verified
                    // again on the next connection.
                    if !matches!(f, Failure::Gateway(_)) {
                        self.ctx = None;
                        let shared = self.meters.len() > 1;
                        if matches!(f, Failure::Timeout) && shared {
                            self.meters[i].verified = false;
                        } else {
                            self.reverify_all = true;
                        }
                    }
                    last = Some(f);
                }
            }
        }
        let Some(failure) = last else {
            return true;
        };
        let unit = self.meters[i].t.unit.unwrap_or(255);
        let detail = failure.text(self.addr, unit, self.cfg.timeout);
        tracing::debug!(meter = self.meters[i].t.meter, "unreachable: {detail}");
        let which: Vec<usize> = if matches!(failure, Failure::Connect(_)) {
            // Nothing behind this address answers: all its meters back off together.
            self.fails += 1;
            let wait = backoff(
                self.fails,
                self.cfg.backoff_min,
                self.cfg.backoff_max,
                &mut self.rng,
            );
            let at = Instant::now() + wait;
            for m in &mut self.meters {
                m.due = m.due.max(at);
            }
            (0..self.meters.len()).collect()
        } else {
            let m = &mut self.meters[i];
            m.fails += 1;
            let wait = backoff(
                m.fails,
                self.cfg.backoff_min,
                self.cfg.backoff_max,
                &mut self.rng,
            );
            m.due = Instant::now() + wait;
            vec![i]
        };
        for j in which {
            let m = &mut self.meters[j];
            if m.reachable == Some(false) {
                continue;
            }
            m.reachable = Some(false);
            let meter = m.t.meter;
            self.report.unreachable_episodes += 1;
            let detail = detail.clone();
            if !self.send(PollEvent::Unreachable { meter, detail }).await {
                return false;
            }
        }
        true
    }

    /// One attempt: connect if needed, handshake if needed, read. The events to send after
    /// `Reachable`.
    async fn attempt(&mut self, i: usize) -> Result<Vec<PollEvent>, Failure> {
        if self.ctx.is_none() {
            let stream = match connect(self.addr, &self.cfg).await {
                Ok(s) => s,
                Err(e) => {
                    self.report.connect_failures += 1;
                    if e.kind() == io::ErrorKind::TimedOut {
                        self.report.timeouts += 1;
                    }
                    return Err(Failure::Connect(e.to_string()));
                }
            };
            if self.opened > 0 {
                self.report.reconnects += 1;
            }
            self.opened += 1;
            self.ctx = Some(tcp::attach(stream));
            // A new connection after a broken link may be a different device (or firmware) at
            // the same address: verify every meter behind it again.
            if std::mem::replace(&mut self.reverify_all, false) {
                for m in &mut self.meters {
                    m.verified = false;
                }
            }
        }
        let mut events = Vec::new();
        if !self.meters[i].verified {
            self.report.handshakes += 1;
            let probe = self.probe(i).await?;
            let (meter, expected) = (self.meters[i].t.meter, self.meters[i].t.expected);
            match handshake::verify(&probe, expected, &self.cfg.limits) {
                Verdict::Verified { firmware } => {
                    tracing::debug!(meter, ?firmware, "encoding verified");
                    self.meters[i].verified = true;
                }
                Verdict::Mismatch { detail } => {
                    // Warned once (the alarm carries the detail); re-checks at every poll
                    // stay quiet unless the meter's registers change.
                    if self.meters[i].mismatch_sent {
                        tracing::debug!(meter, "encoding still mismatched: {detail}");
                    } else {
                        tracing::warn!(meter, "encoding mismatch: {detail}");
                    }
                    if !self.meters[i].mismatch_sent {
                        self.meters[i].mismatch_sent = true;
                        self.report.mismatches += 1;
                        events.push(PollEvent::EncodingMismatch { meter, detail });
                    }
                    return Ok(events);
                }
                Verdict::Ambiguous { detail } | Verdict::Undetermined { detail } => {
                    tracing::debug!(meter, "encoding not decided: {detail}");
                    self.report.undecided += 1;
                    return Ok(events);
                }
            }
        }
        if let Some(ev) = self.read(i).await? {
            self.report.readings += 1;
            events.push(ev);
        }
        Ok(events)
    }

    /// One FC03 of meter `i`, within the timeout. Exceptions are answers, except a gateway's
    /// "target did not respond".
    async fn fc03(&mut self, i: usize, addr: u16, qty: u16) -> Answer<Vec<u16>> {
        let unit = self.meters[i].t.unit.unwrap_or(255);
        let Some(ctx) = self.ctx.as_mut() else {
            return Err(Failure::Link("not connected".into()));
        };
        ctx.set_slave(Slave(unit));
        match timeout(self.cfg.timeout, ctx.read_holding_registers(addr, qty)).await {
            Err(_) => Err(Failure::Timeout),
            Ok(Err(e)) => Err(Failure::Link(e.to_string())),
            Ok(Ok(Ok(words))) if words.len() == usize::from(qty) => Ok(Ok(words)),
            Ok(Ok(Ok(words))) => Err(Failure::Link(format!(
                "asked for {qty} registers at 0x{addr:04X}, got {}",
                words.len()
            ))),
            Ok(Ok(Err(code))) => {
                self.report.exceptions += 1;
                match code {
                    ExceptionCode::GatewayPathUnavailable | ExceptionCode::GatewayTargetDevice => {
                        Err(Failure::Gateway(code))
                    }
                    _ => Ok(Err(code)),
                }
            }
        }
    }

    /// The handshake's reads: status + firmware, and each analog point at the expected width
    /// or, refused with 0x02, the other width.
    async fn probe(&mut self, i: usize) -> Result<Probe, Failure> {
        let expected = self.meters[i].t.expected;
        let firmware = self.fc03(i, STATUS_REG, 2).await?.ok().map(|w| w[1]);
        let width = register_count(expected) as u16;
        let other = 3 - width;
        let mut points: [Option<Vec<u16>>; 4] = Default::default();
        let mut one_register_refused = [false; 4];
        let addrs = handshake::POINTS.map(|(_, a)| a);
        for (k, addr) in addrs.into_iter().enumerate() {
            let first = self.fc03(i, addr, width).await?;
            let refused = first == Err(ExceptionCode::IllegalDataAddress);
            if width == 1 {
                one_register_refused[k] = refused;
            } else {
                // Width evidence: a map refuses a 1-register read where a 32-bit value starts.
                one_register_refused[k] =
                    self.fc03(i, addr, 1).await? == Err(ExceptionCode::IllegalDataAddress);
            }
            points[k] = match first {
                Ok(w) => Some(w),
                Err(_) if refused => self.fc03(i, addr, other).await?.ok(),
                Err(_) => None,
            };
        }
        let [l1, l2, l3, f] = points;
        Ok(Probe {
            firmware,
            voltages: [l1, l2, l3],
            frequency: f,
            one_register_refused,
        })
    }

    /// A verified poll: the voltages and the source time.
    async fn read(&mut self, i: usize) -> Result<Option<PollEvent>, Failure> {
        let t = self.meters[i].t.clone();
        let width = register_count(t.expected) as u16;
        let mut regs: [Option<Vec<u16>>; 3] = Default::default();
        let mut time: Option<Vec<u16>> = None;
        if width == 2 && !self.meters[i].per_point {
            match self.fc03(i, VOLTAGE_L1_REG, BLOCK_LEN).await? {
                Ok(block) => {
                    let at = |a: u16, n: usize| {
                        let o = usize::from(a - VOLTAGE_L1_REG);
                        block.get(o..o + n).map(<[u16]>::to_vec)
                    };
                    for (k, r) in regs.iter_mut().enumerate() {
                        *r = at(VOLTAGE_L1_REG + 2 * k as u16, 2);
                    }
                    time = at(SOURCE_TIME_REG, 2);
                }
                Err(ExceptionCode::IllegalDataAddress) => {
                    tracing::debug!(meter = t.meter, "block read refused: reading per point");
                    self.meters[i].per_point = true;
                }
                Err(code) => {
                    tracing::debug!(meter = t.meter, "poll answered with exception {code}");
                    return Ok(None);
                }
            }
        }
        if width != 2 || self.meters[i].per_point {
            for (k, r) in regs.iter_mut().enumerate().take(t.channels.min(3)) {
                *r = self
                    .fc03(i, VOLTAGE_L1_REG + 2 * k as u16, width)
                    .await?
                    .ok();
            }
            time = self.fc03(i, SOURCE_TIME_REG, 2).await?.ok();
        }
        let receive_ms = unix_ms();
        let volts: [f32; 3] = std::array::from_fn(|k| {
            if k >= t.channels {
                return f32::NAN;
            }
            regs[k]
                .as_deref()
                .and_then(|w| decode_value(w, t.expected))
                .map_or(f32::NAN, |v| v as f32)
        });
        if volts.iter().take(t.channels.max(1)).all(|v| v.is_nan()) {
            tracing::debug!(meter = t.meter, "no voltage to report");
            return Ok(None);
        }
        let grid_ms = time.as_deref().and_then(|w| {
            decode_value(
                w,
                RegisterEncoding::Uint32 {
                    scale: 1.0,
                    word_order: counter_order(t.expected),
                },
            )
        });
        let source_ms = match (t.epoch_ms, grid_ms) {
            (Some(epoch), Some(ms)) => epoch.saturating_add(ms as u64),
            _ => receive_ms,
        };
        tracing::trace!(meter = t.meter, expected = %describe(t.expected), ?volts, "reading");
        Ok(Some(PollEvent::Reading {
            meter: t.meter,
            source_ms,
            volts,
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters_within_half() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let mut rng = 7;
        for fails in 1..=10_u32 {
            let full = (min * 2_u32.pow(fails - 1)).min(max);
            for _ in 0..50 {
                let d = backoff(fails, min, max, &mut rng);
                assert!(d >= full / 2 && d <= full, "{fails}: {d:?} vs {full:?}");
            }
        }
        // Deterministic for a seed.
        let (mut a, mut b) = (42, 42);
        let xs: Vec<_> = (1..20).map(|f| backoff(f, min, max, &mut a)).collect();
        let ys: Vec<_> = (1..20).map(|f| backoff(f, min, max, &mut b)).collect();
        assert_eq!(xs, ys);
        assert!(backoff(u32::MAX, min, max, &mut a) <= max);
    }

    #[test]
    fn block_covers_voltages_to_source_time() {
        assert_eq!(BLOCK_LEN, 46);
        assert_eq!(handshake::FREQUENCY_REG - VOLTAGE_L1_REG, 12);
    }

    #[tokio::test]
    async fn connections_get_the_keepalive_asked_for() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cfg = PollerConfig {
            keepalive_idle: Duration::from_secs(17),
            keepalive_interval: Duration::from_secs(4),
            ..PollerConfig::default()
        };
        let s = connect(listener.local_addr().unwrap(), &cfg).await.unwrap();
        let sock = SockRef::from(&s);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(17));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(4)
        );
        assert!(s.nodelay().unwrap());
    }
}
