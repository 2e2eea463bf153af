//! A lean MQTT 3.1.1 QoS-1 publisher session, sans-io (the `quinn-proto` shape): bytes from
//! the socket and the time go in (`handle_bytes`, `handle_timeout`), bytes to write come out
//! (`transmit`). Packets are encoded and parsed with rumqttc's codec (`rumqttc::mqttbytes::v4`).
//!
//! Why not rumqttc's `EventLoop`: it holds two 10 KiB buffers and 100-entry queues per client
//! (21.7 KB RSS measured), more than a whole meter's budget in a fleet of 10,000. This session
//! keeps only the in-flight window (each entry the encoded PUBLISH) and partial input.
//!
//! Guarantees: QoS-1 publishes carry packet ids 1..=65535 in turn; at most `max_inflight` are
//! unacknowledged; after a lost connection the unacknowledged ones are written again FIRST and
//! IN ORDER with DUP set, right after the next CONNACK, before any new publish; a keep-alive
//! PINGREQ goes out when nothing was sent for `keep_alive`, and no PINGRESP within
//! `ping_timeout` is a dead connection; bytes that are not a valid packet for a publisher are an
//! error, never a panic.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{
    self, ConnAck, Connect, ConnectReturnCode, Disconnect, LastWill, Packet, PingReq, Publish,
};
use rumqttc::mqttbytes::QoS;

/// Largest packet accepted from the broker: a publisher only expects CONNACK, PUBACK and
/// PINGRESP (2–4 bytes).
const MAX_INCOMING: usize = 256;
/// DUP flag of a PUBLISH's first byte.
const DUP: u8 = 0b0000_1000;

/// Session failures: each ends the connection (the caller reconnects).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("broker refused the connection: {0:?}")]
    Refused(ConnectReturnCode),
    #[error("malformed bytes from the broker: {0}")]
    Malformed(String),
    #[error("unexpected {0} from the broker")]
    Unexpected(&'static str),
    #[error("no CONNACK within {0:?}")]
    ConnAckTimeout(Duration),
    #[error("no PINGRESP within {0:?}: connection dead")]
    PingTimeout(Duration),
    #[error("not connected")]
    NotConnected,
    #[error("in-flight window full ({0} unacknowledged publishes)")]
    WindowFull(usize),
    #[error("cannot encode packet: {0}")]
    Encode(String),
}

/// Settings of a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub client_id: String,
    /// MQTT keep-alive; also how long a quiet connection waits before PINGREQ. Zero disables.
    pub keep_alive: Duration,
    /// How long a PINGREQ (and a CONNECT) may wait for its answer.
    pub ping_timeout: Duration,
    pub clean_session: bool,
    /// Last will: topic and payload, published QoS 1 retained by the broker when the connection
    /// ends without DISCONNECT.
    pub will: Option<(String, Bytes)>,
    /// Most unacknowledged QoS-1 publishes (at least 1).
    pub max_inflight: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Disconnected,
    /// CONNECT written at this time, waiting for CONNACK.
    Connecting(Duration),
    Connected,
}

#[derive(Debug)]
struct Inflight {
    pkid: u16,
    /// The encoded PUBLISH as first sent (DUP clear).
    packet: Bytes,
    /// Caller's tag (e.g. data vs status), returned on ack.
    tag: u8,
}

/// An acknowledged publish, in ack order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    pub pkid: u16,
    pub tag: u8,
}

/// One publisher session across connections.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    state: State,
    inflight: VecDeque<Inflight>,
    next_pkid: u16,
    out: BytesMut,
    inb: BytesMut,
    /// When a packet was last written (keep-alive).
    last_sent: Duration,
    /// A PINGREQ outstanding since this time.
    ping_sent: Option<Duration>,
    acked: VecDeque<Acked>,
    resent: u64,
    session_present: bool,
}

impl Session {
    pub fn new(mut cfg: SessionConfig) -> Session {
        cfg.max_inflight = cfg.max_inflight.clamp(1, usize::from(u16::MAX));
        Session {
            cfg,
            state: State::Disconnected,
            inflight: VecDeque::new(),
            next_pkid: 1,
            out: BytesMut::new(),
            inb: BytesMut::new(),
            last_sent: Duration::ZERO,
            ping_sent: None,
            acked: VecDeque::new(),
            resent: 0,
            session_present: false,
        }
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// A new connection is up: write CONNECT. Unacknowledged publishes stay for the resend.
    pub fn connect(&mut self, now: Duration) -> Result<(), SessionError> {
        self.inb.clear();
        self.out.clear();
        self.ping_sent = None;
        let mut c = Connect::new(self.cfg.client_id.clone());
        c.keep_alive = u16::try_from(self.cfg.keep_alive.as_secs()).unwrap_or(u16::MAX);
        c.clean_session = self.cfg.clean_session;
        c.last_will = self.cfg.will.as_ref().map(|(topic, payload)| {
            LastWill::new(topic.clone(), payload.to_vec(), QoS::AtLeastOnce, true)
        });
        c.write(&mut self.out)
            .map_err(|e| SessionError::Encode(e.to_string()))?;
        self.state = State::Connecting(now);
        self.last_sent = now;
        Ok(())
    }

    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// CONNACK said the broker kept a session for this client id.
    pub fn session_present(&self) -> bool {
        self.session_present
    }

    /// Connected and the in-flight window has room.
    pub fn can_publish(&self) -> bool {
        self.is_connected() && self.inflight.len() < self.cfg.max_inflight
    }

    /// Unacknowledged publishes.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Publishes written again with DUP after a reconnect, in total.
    pub fn resent(&self) -> u64 {
        self.resent
    }

    /// Queue a QoS-1 PUBLISH; returns its packet id. `tag` comes back in [`Session::poll_acked`].
    pub fn publish(
        &mut self,
        topic: &str,
        payload: Bytes,
        retain: bool,
        tag: u8,
        now: Duration,
    ) -> Result<u16, SessionError> {
        if !self.is_connected() {
            return Err(SessionError::NotConnected);
        }
        if self.inflight.len() >= self.cfg.max_inflight {
            return Err(SessionError::WindowFull(self.inflight.len()));
        }
        let pkid = self.take_pkid();
        let mut p = Publish::from_bytes(topic, QoS::AtLeastOnce, payload);
        p.pkid = pkid;
        p.retain = retain;
        let mut buf = BytesMut::with_capacity(p.size());
        p.write(&mut buf)
            .map_err(|e| SessionError::Encode(e.to_string()))?;
        let packet = buf.freeze();
        self.out.extend_from_slice(&packet);
        self.inflight.push_back(Inflight { pkid, packet, tag });
        self.last_sent = now;
        Ok(pkid)
    }

    /// A packet id not in flight (wraps 65535 → 1; the window is far smaller than 65535).
    fn take_pkid(&mut self) -> u16 {
        loop {
            let id = self.next_pkid;
            self.next_pkid = if id == u16::MAX { 1 } else { id + 1 };
            if !self.inflight.iter().any(|i| i.pkid == id) {
                return id;
            }
        }
    }

    /// Bytes arrived from the broker.
    pub fn handle_bytes(&mut self, data: &[u8], now: Duration) -> Result<(), SessionError> {
        self.inb.extend_from_slice(data);
        loop {
            if self.inb.is_empty() {
                return Ok(());
            }
            let packet = match v4::read(&mut self.inb, MAX_INCOMING) {
                Ok(p) => p,
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => return Ok(()),
                Err(e) => {
                    self.inb.clear();
                    return Err(SessionError::Malformed(e.to_string()));
                }
            };
            self.on_packet(packet, now)?;
        }
    }

    fn on_packet(&mut self, packet: Packet, now: Duration) -> Result<(), SessionError> {
        match (self.state, packet) {
            (
                State::Connecting(_),
                Packet::ConnAck(ConnAck {
                    session_present,
                    code,
                }),
            ) => {
                if code != ConnectReturnCode::Success {
                    self.state = State::Disconnected;
                    return Err(SessionError::Refused(code));
                }
                self.session_present = session_present;
                self.state = State::Connected;
                // Unacknowledged publishes first, in their original order, with DUP.
                for i in &self.inflight {
                    let start = self.out.len();
                    self.out.extend_from_slice(&i.packet);
                    self.out[start] |= DUP;
                }
                self.resent += self.inflight.len() as u64;
                if !self.inflight.is_empty() {
                    self.last_sent = now;
                }
                Ok(())
            }
            (State::Connected, Packet::PubAck(ack)) => {
                if let Some(pos) = self.inflight.iter().position(|i| i.pkid == ack.pkid) {
                    if let Some(i) = self.inflight.remove(pos) {
                        self.acked.push_back(Acked {
                            pkid: i.pkid,
                            tag: i.tag,
                        });
                    }
                } else {
                    tracing::debug!(
                        client = %self.cfg.client_id,
                        pkid = ack.pkid,
                        "PUBACK for a packet id not in flight: ignored"
                    );
                }
                Ok(())
            }
            (State::Connected, Packet::PingResp) => {
                self.ping_sent = None;
                Ok(())
            }
            (_, p) => Err(SessionError::Unexpected(packet_name(&p))),
        }
    }

    /// The next acknowledged publish, oldest first.
    pub fn poll_acked(&mut self) -> Option<Acked> {
        self.acked.pop_front()
    }

    /// When [`Session::handle_timeout`] wants to run next (`None`: nothing timed).
    pub fn poll_timeout(&self) -> Option<Duration> {
        match self.state {
            State::Disconnected => None,
            State::Connecting(sent) => Some(sent + self.cfg.ping_timeout),
            State::Connected => {
                if self.cfg.keep_alive.is_zero() {
                    return None;
                }
                Some(match self.ping_sent {
                    Some(sent) => sent + self.cfg.ping_timeout,
                    None => self.last_sent + self.cfg.keep_alive,
                })
            }
        }
    }

    /// Time passed: CONNACK or PINGRESP overdue → error; quiet for `keep_alive` → PINGREQ.
    pub fn handle_timeout(&mut self, now: Duration) -> Result<(), SessionError> {
        match self.state {
            State::Disconnected => Ok(()),
            State::Connecting(sent) => {
                if now >= sent + self.cfg.ping_timeout {
                    self.state = State::Disconnected;
                    return Err(SessionError::ConnAckTimeout(self.cfg.ping_timeout));
                }
                Ok(())
            }
            State::Connected => {
                if self.cfg.keep_alive.is_zero() {
                    return Ok(());
                }
                if let Some(sent) = self.ping_sent {
                    if now >= sent + self.cfg.ping_timeout {
                        self.state = State::Disconnected;
                        return Err(SessionError::PingTimeout(self.cfg.ping_timeout));
                    }
                    return Ok(());
                }
                if now >= self.last_sent + self.cfg.keep_alive {
                    PingReq
                        .write(&mut self.out)
                        .map_err(|e| SessionError::Encode(e.to_string()))?;
                    self.ping_sent = Some(now);
                    self.last_sent = now;
                }
                Ok(())
            }
        }
    }

    /// Bytes to write to the socket.
    pub fn transmit(&self) -> &[u8] {
        &self.out
    }

    /// `n` bytes of [`Session::transmit`] were written.
    pub fn consume_transmit(&mut self, n: usize) {
        let n = n.min(self.out.len());
        let _ = self.out.split_to(n);
        if self.out.is_empty() && self.out.capacity() > 256 {
            // Idle links hold no write buffer (a flush after an outage may have grown it).
            self.out = BytesMut::new();
        }
    }

    /// Graceful end: write DISCONNECT (the broker then discards the will).
    pub fn disconnect(&mut self) -> Result<(), SessionError> {
        if self.state != State::Disconnected {
            Disconnect
                .write(&mut self.out)
                .map_err(|e| SessionError::Encode(e.to_string()))?;
        }
        self.state = State::Disconnected;
        Ok(())
    }

    /// The connection is gone (error, EOF, timeout): drop partial input and unwritten bytes;
    /// unacknowledged publishes stay and go out again after the next CONNACK.
    pub fn connection_lost(&mut self) {
        self.state = State::Disconnected;
        self.inb = BytesMut::new();
        self.out = BytesMut::new();
        self.ping_sent = None;
    }
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    const CONNACK_OK: &[u8] = &[0x20, 0x02, 0x00, 0x00];
    const PINGREQ: &[u8] = &[0xC0, 0x00];
    const PINGRESP: &[u8] = &[0xD0, 0x00];

    fn cfg() -> SessionConfig {
        SessionConfig {
            client_id: "m1".into(),
            keep_alive: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(5),
            clean_session: true,
            will: Some(("g/status".into(), Bytes::from_static(b"off"))),
            max_inflight: 3,
        }
    }

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn puback(pkid: u16) -> Vec<u8> {
        vec![0x40, 0x02, (pkid >> 8) as u8, pkid as u8]
    }

    fn take(sess: &mut Session) -> Vec<u8> {
        let v = sess.transmit().to_vec();
        sess.consume_transmit(v.len());
        v
    }

    /// Parse what the session wrote with the codec (an independent reading of the bytes).
    fn packets(bytes: &[u8]) -> Vec<Packet> {
        let mut b = BytesMut::from(bytes);
        let mut out = Vec::new();
        while !b.is_empty() {
            out.push(v4::read(&mut b, 1 << 20).unwrap());
        }
        out
    }

    fn connected() -> Session {
        let mut sess = Session::new(cfg());
        sess.connect(s(0)).unwrap();
        take(&mut sess);
        sess.handle_bytes(CONNACK_OK, s(0)).unwrap();
        sess
    }

    #[test]
    fn connect_packet_carries_id_keepalive_clean_session_and_will() {
        let mut sess = Session::new(cfg());
        sess.connect(s(0)).unwrap();
        let bytes = take(&mut sess);
        // Fixed header 0x10; protocol "MQTT" level 4; flags: clean session (0x02), will (0x04),
        // will QoS 1 (0x08), will retain (0x20) = 0x2E; keep-alive 10.
        assert_eq!(bytes[0], 0x10);
        assert_eq!(&bytes[2..9], b"\x00\x04MQTT\x04");
        assert_eq!(bytes[9], 0x2E);
        assert_eq!(&bytes[10..12], &[0, 10]);
        let Packet::Connect(c) = &packets(&bytes)[0] else {
            panic!()
        };
        assert_eq!(c.client_id, "m1");
        let w = c.last_will.as_ref().unwrap();
        assert_eq!(
            (w.topic.as_str(), &w.message[..]),
            ("g/status", &b"off"[..])
        );
        assert!(!sess.can_publish(), "not before CONNACK");
        assert_eq!(
            sess.publish("t", Bytes::new(), false, 0, s(0)),
            Err(SessionError::NotConnected)
        );
    }

    #[test]
    fn refused_connack_is_an_error() {
        let mut sess = Session::new(cfg());
        sess.connect(s(0)).unwrap();
        let err = sess.handle_bytes(&[0x20, 0x02, 0x00, 0x05], s(0));
        assert_eq!(
            err,
            Err(SessionError::Refused(ConnectReturnCode::NotAuthorized))
        );
        assert!(!sess.is_connected());
    }

    #[test]
    fn publishes_get_packet_ids_and_the_window_is_bounded() {
        let mut sess = connected();
        for k in 1..=3u16 {
            assert_eq!(
                sess.publish("t", Bytes::from(vec![k as u8]), false, 0, s(1)),
                Ok(k)
            );
        }
        assert!(!sess.can_publish());
        assert_eq!(
            sess.publish("t", Bytes::new(), false, 0, s(1)),
            Err(SessionError::WindowFull(3))
        );
        let ps = packets(&take(&mut sess));
        assert_eq!(ps.len(), 3);
        for (k, p) in ps.iter().enumerate() {
            let Packet::Publish(p) = p else { panic!() };
            assert_eq!(
                (p.qos, p.pkid, p.dup),
                (QoS::AtLeastOnce, k as u16 + 1, false)
            );
            assert_eq!(&p.payload[..], &[k as u8 + 1]);
        }
        // Acks out of order are matched by id; ids of nothing in flight are ignored.
        sess.handle_bytes(&[puback(2), puback(9)].concat(), s(1))
            .unwrap();
        assert_eq!(sess.poll_acked(), Some(Acked { pkid: 2, tag: 0 }));
        assert_eq!(sess.poll_acked(), None);
        assert_eq!(sess.inflight(), 2);
        assert!(sess.can_publish());
    }

    #[test]
    fn unacked_publishes_are_resent_first_in_order_with_dup() {
        let mut sess = connected();
        for k in 1..=3u8 {
            sess.publish("t", Bytes::from(vec![k]), false, k, s(1))
                .unwrap();
        }
        take(&mut sess);
        sess.handle_bytes(&puback(1), s(1)).unwrap();
        sess.connection_lost();
        assert!(!sess.can_publish());
        sess.connect(s(5)).unwrap();
        let connect = take(&mut sess);
        assert_eq!(connect[0], 0x10);
        // Split CONNACK across two reads: partial input is kept.
        sess.handle_bytes(&CONNACK_OK[..1], s(5)).unwrap();
        assert!(!sess.is_connected());
        sess.handle_bytes(&CONNACK_OK[1..], s(5)).unwrap();
        sess.publish("t", Bytes::from_static(b"new"), false, 9, s(5))
            .unwrap();
        let ps = packets(&take(&mut sess));
        let got: Vec<(u16, bool, Vec<u8>)> = ps
            .iter()
            .map(|p| match p {
                Packet::Publish(p) => (p.pkid, p.dup, p.payload.to_vec()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (2, true, vec![2]),
                (3, true, vec![3]),
                (4, false, b"new".to_vec())
            ]
        );
        assert_eq!(sess.resent(), 2);
        sess.handle_bytes(&[puback(2), puback(3), puback(4)].concat(), s(6))
            .unwrap();
        let tags: Vec<u8> = std::iter::from_fn(|| sess.poll_acked())
            .map(|a| a.tag)
            .collect();
        assert_eq!(tags, vec![1, 2, 3, 9]);
    }

    #[test]
    fn keep_alive_pings_and_a_missing_pingresp_is_a_dead_connection() {
        let mut sess = connected();
        assert_eq!(sess.poll_timeout(), Some(s(10)));
        sess.handle_timeout(s(9)).unwrap();
        assert!(sess.transmit().is_empty());
        sess.handle_timeout(s(10)).unwrap();
        assert_eq!(take(&mut sess), PINGREQ);
        assert_eq!(sess.poll_timeout(), Some(s(15)));
        sess.handle_bytes(PINGRESP, s(11)).unwrap();
        assert_eq!(sess.poll_timeout(), Some(s(20)));
        sess.handle_timeout(s(20)).unwrap();
        assert_eq!(take(&mut sess), PINGREQ);
        sess.handle_timeout(s(24)).unwrap();
        assert_eq!(
            sess.handle_timeout(s(25)),
            Err(SessionError::PingTimeout(s(5)))
        );
        assert!(!sess.is_connected());
    }

    #[test]
    fn a_publish_postpones_the_ping() {
        let mut sess = connected();
        sess.publish("t", Bytes::new(), false, 0, s(8)).unwrap();
        assert_eq!(sess.poll_timeout(), Some(s(18)));
    }

    #[test]
    fn missing_connack_times_out() {
        let mut sess = Session::new(cfg());
        sess.connect(s(0)).unwrap();
        assert_eq!(sess.poll_timeout(), Some(s(5)));
        assert_eq!(
            sess.handle_timeout(s(5)),
            Err(SessionError::ConnAckTimeout(s(5)))
        );
    }

    #[test]
    fn garbage_and_unexpected_packets_are_errors() {
        // Packet type 0 is reserved.
        let mut sess = connected();
        assert!(matches!(
            sess.handle_bytes(&[0x00, 0x00], s(1)),
            Err(SessionError::Malformed(_))
        ));
        // A remaining length that never ends.
        let mut sess = connected();
        assert!(matches!(
            sess.handle_bytes(&[0x40, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], s(1)),
            Err(SessionError::Malformed(_))
        ));
        // Oversized: a 1 MB "packet" is refused from its header, before its body arrives.
        let mut sess = connected();
        assert!(matches!(
            sess.handle_bytes(&[0x30, 0x80, 0x80, 0x40], s(1)),
            Err(SessionError::Malformed(_))
        ));
        // A PUBLISH to a publisher, a CONNACK twice, a PUBACK before CONNACK.
        let mut sess = connected();
        assert_eq!(
            sess.handle_bytes(&[0x30, 0x03, 0x00, 0x01, b'x'], s(1)),
            Err(SessionError::Unexpected("PUBLISH"))
        );
        let mut sess = connected();
        assert_eq!(
            sess.handle_bytes(CONNACK_OK, s(1)),
            Err(SessionError::Unexpected("CONNACK"))
        );
        let mut sess = Session::new(cfg());
        sess.connect(s(0)).unwrap();
        assert_eq!(
            sess.handle_bytes(&puback(1), s(1)),
            Err(SessionError::Unexpected("PUBACK"))
        );
        // A CONNACK with a return code beyond 5.
        let mut sess = Session::new(cfg());
        sess.connect(s(0)).unwrap();
        assert!(matches!(
            sess.handle_bytes(&[0x20, 0x02, 0x00, 0x77], s(0)),
            Err(SessionError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(chunks in prop::collection::vec(
            prop::collection::vec(any::<u8>(), 0..64), 0..8), connect_first in any::<bool>()) {
            let mut sess = if connect_first { connected() } else {
                let mut s0 = Session::new(cfg());
                s0.connect(s(0)).unwrap();
                s0
            };
            sess.publish("t", Bytes::new(), false, 0, s(0)).ok();
            for c in &chunks {
                if sess.handle_bytes(c, s(1)).is_err() {
                    break;
                }
            }
        }
    }
}
