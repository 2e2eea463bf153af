//! The tokio shell around [`Session`]: one meter's MQTT link. TCP connect with bounded
//! exponential back-off, CONNECT with the offline status as last will, the retained online
//! status, then telemetry and events (QoS 1) taken from the meter's store-and-forward ring
//! ONLY while connected — during an outage they stay in the meter's bounded ring (overflow
//! counted by the meter) while it keeps measuring and tripping, and flush in order afterwards.
//! On stop: flush within a bounded time, publish the offline status, DISCONNECT.
//!
//! Lean by design (10,000 links per process): no per-link buffers beyond the session's
//! in-flight window and a 64-byte read buffer, no polling (the meter wakes its link through
//! [`LiveMeter::attach_outbox`](crate::live::LiveMeter::attach_outbox)), counters that many
//! links may share.

use std::collections::VecDeque;
use std::future::Future;
use std::hash::{Hash as _, Hasher as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::mqttbytes::v4::ConnectReturnCode;
use sim_core::scenario::PayloadFormat;
use sim_core::Scenario;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::payload::{meter_name, Mtu, PayloadCodec, PayloadError, TopicKind, Topics};
use super::session::{Session, SessionConfig, SessionError};
use crate::live::{LiveMeter, MeterRef, Outbox};
use crate::service::SharedMeter;

const TAG_DATA: u8 = 0;
const TAG_STATUS: u8 = 1;

/// Link failures that retrying cannot fix (everything else is retried with back-off).
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("broker {broker} refused client `{client}`: {code:?}")]
    Refused {
        broker: String,
        client: String,
        code: ConnectReturnCode,
    },
    #[error(transparent)]
    Payload(#[from] PayloadError),
}

/// Settings of one meter's link.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Broker host name or address.
    pub host: String,
    pub port: u16,
    pub client_id: String,
    /// Fleet-wide meter id (in payloads).
    pub meter_id: u32,
    /// Stable meter name (payloads, client id, topic), e.g. `feeder-a-0003`.
    pub meter_name: String,
    pub topics: Topics,
    /// Measured phases (1–3): readings carry only these.
    pub channels: usize,
    pub format: PayloadFormat,
    pub mtu: Mtu,
    pub keep_alive: Duration,
    /// How long CONNACK, PINGRESP and a socket write may take.
    pub ping_timeout: Duration,
    pub clean_session: bool,
    /// Most unacknowledged publishes.
    pub max_inflight: usize,
    /// Reconnect back-off: first delay, doubling up to `backoff_max` (with a per-client
    /// jitter of up to −50 % so a fleet does not reconnect in lockstep).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    /// On stop, how long to keep flushing before giving up (then the connection is dropped
    /// without DISCONNECT, so the broker publishes the offline will).
    pub flush_timeout: Duration,
    /// Unix time in ms at grid time 0 (source timestamps = epoch + grid time).
    pub epoch_ms: u64,
}

impl LinkConfig {
    /// Defaults for meter `which` of `scenario`: names, topics, channels and payload format
    /// from its group; keep-alive 30 s, window 16, back-off 100 ms … 5 s, MTU 1024 split,
    /// persistent session (clean_session false).
    pub fn for_meter(
        scenario: &Scenario,
        which: MeterRef,
        host: impl Into<String>,
        port: u16,
        epoch_ms: u64,
    ) -> LinkConfig {
        let group = &scenario.groups[which.group.min(scenario.groups.len().saturating_sub(1))];
        let name = meter_name(&group.name, which.index);
        LinkConfig {
            host: host.into(),
            port,
            client_id: format!("gridloop-{name}"),
            meter_id: which.id(scenario),
            topics: Topics::new(&group.substation, &group.name, &name),
            meter_name: name,
            channels: scenario.grid.channels(),
            format: group.payload,
            mtu: Mtu::default(),
            keep_alive: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(10),
            clean_session: false,
            max_inflight: 16,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            flush_timeout: Duration::from_secs(5),
            epoch_ms,
        }
    }

    fn broker(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Counters of one link or of many sharing it (then every field is a fleet total; `connected`
/// and `inflight` are gauges).
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Messages taken from meter rings.
    pub taken: AtomicU64,
    /// Telemetry/event PUBLISH packets sent (first sends; split parts count one each).
    pub published: AtomicU64,
    /// Of those, acknowledged by the broker.
    pub acked: AtomicU64,
    /// PUBLISH packets sent again with DUP after a reconnect.
    pub resent: AtomicU64,
    /// Connections established after a link's first.
    pub reconnects: AtomicU64,
    /// Connection attempts that failed (TCP, CONNACK) or connections lost.
    pub connect_failures: AtomicU64,
    /// Links connected now.
    pub connected: AtomicU64,
    /// Unacknowledged publishes now.
    pub inflight: AtomicU64,
    /// Payloads over the MTU (`Packet Encapsulation Error`s), split or dropped.
    pub encapsulation_errors: AtomicU64,
    /// Of those, messages dropped.
    pub dropped_oversize: AtomicU64,
}

/// A plain copy of [`LinkCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct LinkStats {
    pub taken: u64,
    pub published: u64,
    pub acked: u64,
    pub resent: u64,
    pub reconnects: u64,
    pub connect_failures: u64,
    pub connected: u64,
    pub inflight: u64,
    pub encapsulation_errors: u64,
    pub dropped_oversize: u64,
}

impl LinkCounters {
    pub fn snapshot(&self) -> LinkStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LinkStats {
            taken: g(&self.taken),
            published: g(&self.published),
            acked: g(&self.acked),
            resent: g(&self.resent),
            reconnects: g(&self.reconnects),
            connect_failures: g(&self.connect_failures),
            connected: g(&self.connected),
            inflight: g(&self.inflight),
            encapsulation_errors: g(&self.encapsulation_errors),
            dropped_oversize: g(&self.dropped_oversize),
        }
    }
}

fn inc(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

fn dec(a: &AtomicU64, n: u64) {
    a.fetch_sub(n, Ordering::Relaxed);
}

/// What one link did, returned when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkReport {
    pub taken: u64,
    pub published: u64,
    pub acked: u64,
    pub resent: u64,
    pub reconnects: u64,
    pub connect_failures: u64,
    pub encapsulation_errors: u64,
    pub dropped_oversize: u64,
    /// Publishes still unacknowledged at the end.
    pub unacked: usize,
    /// Encoded payloads taken from the ring but never sent.
    pub unsent: usize,
    /// Messages left in the meter's ring.
    pub left_in_ring: usize,
    /// Everything taken was acknowledged, the offline status too, and DISCONNECT was sent.
    pub flushed: bool,
}

/// Why a connection ended.
enum Ended {
    Stopped { flushed: bool },
    Lost(String),
}

struct Link {
    meter: SharedMeter,
    cfg: LinkConfig,
    counters: Arc<LinkCounters>,
    notify: Arc<Notify>,
    codec: PayloadCodec,
    session: Session,
    online: Bytes,
    offline: Bytes,
    /// Encoded payloads taken from the ring, not yet published (split parts).
    pending: VecDeque<(TopicKind, Bytes)>,
    start: Instant,
    report: LinkReport,
    connections: u64,
    up: bool,
    inflight_gauge: u64,
    stop_requested: bool,
}

fn lock(m: &SharedMeter) -> MutexGuard<'_, LiveMeter> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Run one meter's link until `stop` completes (then flush, offline status, DISCONNECT) or a
/// failure retrying cannot fix. Attaches an outbox to `meter`, so from now on its messages wait
/// in its ring for this link.
///
/// Not an `async fn`: the setup runs at the call, so the returned future holds the link's state
/// once rather than also keeping its arguments (an `async fn` stores those for its whole life).
pub fn run_link<F: Future<Output = ()>>(
    meter: SharedMeter,
    cfg: LinkConfig,
    counters: Arc<LinkCounters>,
    stop: F,
) -> impl Future<Output = Result<LinkReport, MqttError>> {
    let mut link = new_link(meter, cfg, counters);
    // On the heap once, so the link's future holds only a pointer to it.
    let mut stop = Box::pin(stop);
    async move {
        // By reference: moving `link` out would store it twice in this future.
        match link {
            Err(e) => Err(e),
            Ok(ref mut link) => {
                let res = link.run(stop.as_mut()).await;
                link.set_up(false);
                link.sync_inflight(true);
                res.map(|flushed| link.final_report(flushed))
            }
        }
    }
}

fn new_link(
    meter: SharedMeter,
    cfg: LinkConfig,
    counters: Arc<LinkCounters>,
) -> Result<Link, MqttError> {
    let notify = Arc::new(Notify::new());
    {
        let n = Arc::clone(&notify);
        lock(&meter).attach_outbox(Outbox(Arc::new(move || n.notify_one())));
    }
    let codec = PayloadCodec::new(
        cfg.format,
        cfg.meter_id,
        &cfg.meter_name,
        cfg.channels,
        cfg.epoch_ms,
        cfg.mtu,
    );
    let online = codec.status(true)?;
    let offline = codec.status(false)?;
    let session = Session::new(SessionConfig {
        client_id: cfg.client_id.clone(),
        keep_alive: cfg.keep_alive,
        ping_timeout: cfg.ping_timeout,
        clean_session: cfg.clean_session,
        will: Some((cfg.topics.topic(TopicKind::Status), offline.clone())),
        max_inflight: cfg.max_inflight,
    });
    Ok(Link {
        meter,
        cfg,
        counters,
        notify,
        codec,
        session,
        online,
        offline,
        pending: VecDeque::new(),
        start: Instant::now(),
        report: LinkReport::default(),
        connections: 0,
        up: false,
        inflight_gauge: 0,
        stop_requested: false,
    })
}

impl Link {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn final_report(&self, flushed: bool) -> LinkReport {
        LinkReport {
            unacked: self.session.inflight(),
            unsent: self.pending.len(),
            left_in_ring: lock(&self.meter).meter().buffered(),
            flushed,
            ..self.report
        }
    }

    fn set_up(&mut self, up: bool) {
        if up != self.up {
            if up {
                inc(&self.counters.connected, 1);
            } else {
                dec(&self.counters.connected, 1);
            }
            self.up = up;
        }
    }

    /// Keep the shared in-flight gauge equal to the sum of the links' windows.
    fn sync_inflight(&mut self, ending: bool) {
        let now = if ending {
            0
        } else {
            self.session.inflight() as u64
        };
        if now > self.inflight_gauge {
            inc(&self.counters.inflight, now - self.inflight_gauge);
        } else {
            dec(&self.counters.inflight, self.inflight_gauge - now);
        }
        self.inflight_gauge = now;
    }

    async fn run<F: Future<Output = ()>>(
        &mut self,
        mut stop: std::pin::Pin<&mut F>,
    ) -> Result<bool, MqttError> {
        let mut attempt: u32 = 0;
        loop {
            // Boxed: the connect future (name resolution included) lives only while connecting,
            // instead of widening every link's task for its whole life.
            let opened = tokio::select! {
                biased;
                () = &mut stop => return Ok(false),
                r = Box::pin(self.open()) => r,
            };
            let ended = match opened {
                Ok(mut stream) => self.serve(&mut stream, &mut stop).await?,
                Err(why) => Ended::Lost(why),
            };
            match ended {
                Ended::Stopped { flushed } => return Ok(flushed),
                // `stop` completed during the flush: it must not be polled again.
                Ended::Lost(why) if self.stop_requested => {
                    tracing::warn!(meter = %self.cfg.meter_name,
                        "MQTT connection lost while flushing on stop: {why}");
                    self.set_up(false);
                    self.session.connection_lost();
                    return Ok(false);
                }
                Ended::Lost(why) => {
                    let was_up = self.up;
                    self.set_up(false);
                    self.session.connection_lost();
                    self.sync_inflight(false);
                    self.report.connect_failures += 1;
                    inc(&self.counters.connect_failures, 1);
                    if was_up {
                        attempt = 0;
                        // Read, then release the meter before logging: a slow stderr must
                        // never hold the lock the pacing loop needs.
                        let buffered = lock(&self.meter).meter().buffered();
                        tracing::warn!(meter = %self.cfg.meter_name, broker = %self.cfg.broker(),
                            buffered, "MQTT connection lost ({why}); buffering and reconnecting");
                    } else {
                        tracing::debug!(meter = %self.cfg.meter_name, broker = %self.cfg.broker(),
                            attempt, "MQTT connect failed: {why}");
                    }
                    let delay = self.backoff(attempt);
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        biased;
                        () = &mut stop => return Ok(false),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Back-off before attempt `attempt + 1`: min · 2^attempt capped at max, minus a jitter
    /// of up to 50 % fixed by the client id and attempt.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .cfg
            .backoff_min
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.cfg.backoff_max);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.cfg.client_id.hash(&mut h);
        attempt.hash(&mut h);
        let frac = (h.finish() % 1000) as f64 / 1000.0;
        base.mul_f64(1.0 - 0.5 * frac)
    }

    async fn open(&self) -> Result<TcpStream, String> {
        let connect = TcpStream::connect((self.cfg.host.as_str(), self.cfg.port));
        match tokio::time::timeout(self.cfg.connect_timeout, connect).await {
            Err(_) => Err(format!(
                "TCP connect timed out after {:?}",
                self.cfg.connect_timeout
            )),
            Ok(Err(e)) => Err(format!("TCP connect: {e}")),
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
        }
    }

    /// One connection: CONNECT … until stopped or lost.
    async fn serve(
        &mut self,
        stream: &mut TcpStream,
        stop: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Ended, MqttError> {
        if let Err(e) = self.session.connect(self.now()) {
            return Ok(Ended::Lost(e.to_string()));
        }
        let mut buf = [0u8; 64];
        let mut online_due = true;
        let mut flush_deadline: Option<Instant> = None;
        let mut offline_sent = false;
        loop {
            self.collect_acks();
            if self.session.is_connected() {
                if !self.up {
                    self.set_up(true);
                    self.connections += 1;
                    if self.connections > 1 {
                        self.report.reconnects += 1;
                        inc(&self.counters.reconnects, 1);
                    }
                    let resent = self.session.inflight() as u64;
                    self.report.resent += resent;
                    inc(&self.counters.resent, resent);
                }
                let ring_empty = if offline_sent {
                    false
                } else {
                    self.pump(&mut online_due)?
                };
                if flush_deadline.is_some() {
                    let drained = ring_empty && self.pending.is_empty();
                    if !offline_sent && drained && self.session.inflight() == 0 {
                        self.publish_status(false)?;
                        offline_sent = true;
                    }
                    if offline_sent && self.session.inflight() == 0 {
                        let _ = self.session.disconnect();
                        let _ = self.write_out(stream).await;
                        let _ = stream.shutdown().await;
                        return Ok(Ended::Stopped { flushed: true });
                    }
                }
            }
            self.sync_inflight(false);
            if let Err(why) = self.write_out(stream).await {
                return Ok(Ended::Lost(why));
            }
            // One timer for both the session's next timeout and the flush deadline.
            let wake = match (self.session.poll_timeout(), flush_deadline) {
                (Some(d), Some(f)) => Some((self.start + d).min(f)),
                (Some(d), None) => Some(self.start + d),
                (None, f) => f,
            };
            let can_publish = self.session.can_publish() && !offline_sent;
            tokio::select! {
                biased;
                () = stop.as_mut(), if flush_deadline.is_none() => {
                    // Also bounds the wait for a CONNACK still outstanding.
                    flush_deadline = Some(Instant::now() + self.cfg.flush_timeout);
                    self.stop_requested = true;
                }
                r = stream.read(&mut buf) => match r {
                    Ok(0) => return Ok(Ended::Lost("connection closed by the broker".into())),
                    Ok(n) => {
                        if let Err(e) = self.session.handle_bytes(&buf[..n], self.now()) {
                            return self.session_failed(e);
                        }
                    }
                    Err(e) => return Ok(Ended::Lost(format!("read: {e}"))),
                },
                () = self.notify.notified(), if can_publish => {}
                () = sleep_until_opt(wake) => {
                    if flush_deadline.is_some_and(|f| Instant::now() >= f) {
                        tracing::warn!(meter = %self.cfg.meter_name,
                            unacked = self.session.inflight(), unsent = self.pending.len(),
                            "MQTT flush timed out; dropping the connection (the will says offline)");
                        return Ok(Ended::Stopped { flushed: false });
                    }
                    if let Err(e) = self.session.handle_timeout(self.now()) {
                        return self.session_failed(e);
                    }
                }
            }
        }
    }

    fn session_failed(&self, e: SessionError) -> Result<Ended, MqttError> {
        match e {
            SessionError::Refused(code)
                if !matches!(code, ConnectReturnCode::ServiceUnavailable) =>
            {
                Err(MqttError::Refused {
                    broker: self.cfg.broker(),
                    client: self.cfg.client_id.clone(),
                    code,
                })
            }
            e => Ok(Ended::Lost(e.to_string())),
        }
    }

    fn collect_acks(&mut self) {
        while let Some(a) = self.session.poll_acked() {
            if a.tag == TAG_DATA {
                self.report.acked += 1;
                inc(&self.counters.acked, 1);
            }
        }
    }

    fn publish_status(&mut self, online: bool) -> Result<(), MqttError> {
        let payload = if online {
            self.online.clone()
        } else {
            self.offline.clone()
        };
        let topic = self.cfg.topics.topic(TopicKind::Status);
        // The window was checked by the caller; a failure here is a state bug: log it.
        if let Err(e) = self
            .session
            .publish(&topic, payload, true, TAG_STATUS, self.now())
        {
            tracing::warn!(meter = %self.cfg.meter_name, "cannot publish status: {e}");
        }
        Ok(())
    }

    /// Fill the in-flight window: the online status (once per connection), then pending
    /// parts, then messages from the ring, oldest first. Returns whether the ring was empty.
    fn pump(&mut self, online_due: &mut bool) -> Result<bool, MqttError> {
        if *online_due && self.session.can_publish() {
            self.publish_status(true)?;
            *online_due = false;
        }
        let mut parts = Vec::new();
        loop {
            if !self.session.can_publish() {
                return Ok(false);
            }
            if let Some((kind, payload)) = self.pending.pop_front() {
                let topic = self.cfg.topics.topic(kind);
                match self
                    .session
                    .publish(&topic, payload, false, TAG_DATA, self.now())
                {
                    Ok(_) => {
                        self.report.published += 1;
                        inc(&self.counters.published, 1);
                    }
                    Err(e) => {
                        // Only an unencodable packet fails here: retrying cannot help, so it
                        // is dropped — counted with the oversize drops, and logged.
                        tracing::warn!(meter = %self.cfg.meter_name,
                            "cannot publish ({e}); message dropped");
                        self.report.dropped_oversize += 1;
                        inc(&self.counters.dropped_oversize, 1);
                        continue;
                    }
                }
                continue;
            }
            let Some(msg) = lock(&self.meter).poll_transmit() else {
                return Ok(true);
            };
            self.report.taken += 1;
            inc(&self.counters.taken, 1);
            let kind = PayloadCodec::kind_of(&msg);
            let topic = self.cfg.topics.topic(kind);
            let enc = self.codec.encode(&msg, &topic, &mut parts)?;
            if enc.is_encapsulation_error() {
                self.report.encapsulation_errors += 1;
                inc(&self.counters.encapsulation_errors, 1);
            }
            if matches!(enc, super::payload::Encoding::Dropped { .. }) {
                self.report.dropped_oversize += 1;
                inc(&self.counters.dropped_oversize, 1);
            }
            self.pending.extend(parts.drain(..).map(|p| (kind, p)));
        }
    }

    async fn write_out(&mut self, stream: &mut TcpStream) -> Result<(), String> {
        while !self.session.transmit().is_empty() {
            let write = stream.write(self.session.transmit());
            match tokio::time::timeout(self.cfg.ping_timeout, write).await {
                Err(_) => return Err(format!("write timed out after {:?}", self.cfg.ping_timeout)),
                Ok(Err(e)) => return Err(format!("write: {e}")),
                Ok(Ok(0)) => return Err("write: connection closed".into()),
                Ok(Ok(n)) => self.session.consume_transmit(n),
            }
        }
        Ok(())
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sag_meter() -> (Scenario, SharedMeter) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../scenarios/library/sags-swells/sag-75pct-12-cycles.yaml");
        let sc = scenarios::load_file(&path).unwrap();
        let map = Arc::new(crate::RegisterMap::default_map(crate::MapOptions::default()));
        let which = MeterRef { group: 0, index: 3 };
        let meter = Arc::new(std::sync::Mutex::new(LiveMeter::new(&sc, which, map)));
        (sc, meter)
    }

    #[test]
    fn config_for_a_scenario_meter() {
        let (sc, _) = sag_meter();
        let cfg = LinkConfig::for_meter(&sc, MeterRef { group: 0, index: 3 }, "::1", 1883, 5);
        assert_eq!(cfg.meter_name, "feeder-a-0003");
        assert_eq!(cfg.client_id, "gridloop-feeder-a-0003");
        assert_eq!(
            cfg.topics.prefix(),
            "gridloop/sub-01/feeder-a/feeder-a-0003"
        );
        assert_eq!((cfg.meter_id, cfg.channels), (3, 3));
        assert_eq!(cfg.broker(), "[::1]:1883");
    }

    /// 10,000 links per process: each link's task stays small (measured RSS per idle link:
    /// see the `mqtt_links_rss` example).
    #[test]
    fn the_link_future_is_small() {
        let (sc, meter) = sag_meter();
        let cfg = LinkConfig::for_meter(&sc, MeterRef { group: 0, index: 3 }, "127.0.0.1", 1, 0);
        let fut = run_link(meter, cfg, Arc::default(), std::future::pending());
        let size = size_of_val(&fut);
        assert!(size <= 1536, "run_link future: {size} bytes");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let (sc, meter) = sag_meter();
        let mut cfg = LinkConfig::for_meter(&sc, MeterRef { group: 0, index: 3 }, "h", 1, 0);
        cfg.backoff_min = Duration::from_millis(100);
        cfg.backoff_max = Duration::from_secs(5);
        let link = new_link(meter, cfg, Arc::default()).unwrap();
        for (attempt, base_ms) in [(0, 100u64), (1, 200), (3, 800), (6, 5000), (40, 5000)] {
            let d = link.backoff(attempt);
            let base = Duration::from_millis(base_ms);
            assert!(d <= base && d >= base / 2, "attempt {attempt}: {d:?}");
        }
    }
}
