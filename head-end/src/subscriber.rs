//! The head-end's tokio shell: an MQTT subscriber feeding [`HeadEndCore`], the Modbus poller's
//! events, periodic stale checks, and the alarm outputs (durable store, MQTT alarm topic, an
//! in-process channel for the harness).
//!
//! Delivery guarantees:
//! - a persistent session (`clean_session = false`, a fixed client id): while this head-end is
//!   down the broker queues QoS-1 messages for it;
//! - manual acknowledgements: a batch of messages is acknowledged (in arrival order, as MQTT
//!   3.1.1 requires) only after the alarms it raised are synced to the store, so a crash between
//!   receipt and sync makes the broker redeliver, and the restored store makes the redelivery a
//!   duplicate that raises nothing.
//! - a restart resumes every stored meter's stale clock at the restart and keeps an open
//!   STALE/UNREACHABLE episode open ([`HeadEndCore::restore`]);
//! - alarms reach the topic at least once: each is published after the store sync, and the
//!   store's published count (`<store>.published`) advances as the broker acknowledges them; a
//!   restarted head-end publishes again whatever the count does not cover.
//! - partitioning: one instance per substation set (`gridloop/{substation}/…` filters), or
//!   several instances sharing one subscription (`$share/{group}/…`) where the broker supports
//!   MQTT shared subscriptions (Mosquitto 2 and rumqttd do).
//!
//! An alarm's receive time is when the core raised it (after queueing and decoding), so its
//! latency includes the head-end's own processing.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};

use crate::alarm::AlarmRecord;
use crate::core::{HeadEndCore, IngestStats, PollEvent};
use crate::store::{AlarmStore, StoreError};

/// How the head-end connects and what it subscribes to.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    pub broker: SocketAddr,
    /// MQTT client id; keep it stable across restarts so the persistent session is found.
    pub client_id: String,
    /// Substations this instance handles; empty = all (`+`).
    pub substations: Vec<String>,
    /// Share the subscription with other instances in this group (`$share/{group}/…`).
    pub share_group: Option<String>,
    /// `false` (default): a persistent session, so the broker queues while we are down.
    pub clean_session: bool,
    pub keep_alive: Duration,
    /// Publish every alarm on `gridloop-alarms/{substation}/{instance}` (QoS 1).
    pub publish_alarms: bool,
    /// How often stale meters are looked for.
    pub stale_check: Duration,
    /// Most messages handled between two store syncs.
    pub max_batch: usize,
}

impl SubscriberConfig {
    pub fn new(broker: SocketAddr, client_id: &str) -> SubscriberConfig {
        SubscriberConfig {
            broker,
            client_id: client_id.to_owned(),
            substations: Vec::new(),
            share_group: None,
            clean_session: false,
            keep_alive: Duration::from_secs(10),
            publish_alarms: true,
            stale_check: Duration::from_secs(1),
            max_batch: 4096,
        }
    }

    /// The topic filters this instance subscribes to: one per substation (`gridloop/{s}/#`, or
    /// `gridloop/#` for all). One filter, not one per suffix: rumqttd 0.20 stops forwarding
    /// to a connection with several overlapping wildcard filters under load (measured: 6,700
    /// of 8,400 messages never delivered; none lost with one filter). Topics in the tree that
    /// are not meter topics are refused by the decoder and counted.
    pub fn filters(&self) -> Vec<String> {
        let filters: Vec<String> = if self.substations.is_empty() {
            vec!["gridloop/#".to_owned()]
        } else {
            self.substations
                .iter()
                .map(|s| format!("gridloop/{s}/#"))
                .collect()
        };
        filters
            .into_iter()
            .map(|f| match &self.share_group {
                Some(g) => format!("$share/{g}/{f}"),
                None => f,
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HeadEndError {
    #[error("alarm store: {0}")]
    Store(#[from] StoreError),
    #[error("MQTT client request queue closed: {0}")]
    Client(String),
    #[error("the broker refused the subscription to {0} (SUBACK failure: ACL, or no shared subscriptions)")]
    Refused(String),
}

/// What a head-end run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HeadEndReport {
    pub ingest: IngestStats,
    pub connects: u64,
    /// Connection errors (each followed by a reconnect attempt).
    pub connection_errors: u64,
    /// Messages acknowledged to the broker.
    pub acked: u64,
    pub alarms_stored: u64,
    pub alarms_published: u64,
    /// Alarms stored but not handed to the alarm connection (its queue full or closed).
    pub alarms_unpublished: u64,
    /// Largest batch handled between two store syncs.
    pub max_batch: usize,
}

/// Largest incoming MQTT packet (Mosquitto's default `message_size_limit` is larger; rumqttd's
/// embedded default here is 1 MiB).
const MAX_INCOMING: usize = 16 * 1024 * 1024;

/// Aborts its task when dropped, so a cancelled `run_head_end` leaves no event loop behind.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The alarm topic's own connection, and how far the broker has acknowledged what it was
/// handed (QoS-1 PUBACKs from one broker come in publish order), recorded in the store's
/// published count.
struct AlarmOut {
    client: AsyncClient,
    _pump: AbortOnDrop,
    acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The store's published count when this run started.
    base: u64,
    /// Alarms handed to the connection.
    handed: u64,
    /// A publish could not be handed over: the count stops advancing, so a restart publishes
    /// everything from there again (at least once, never lost).
    frozen: bool,
    /// When the count was last written: at most every [`MARK_EVERY`] during a run (a lag
    /// only means re-publishing after a crash), and once at the end.
    marked: Option<tokio::time::Instant>,
}

/// Longest lag of the store's published count behind the broker's acknowledgements.
const MARK_EVERY: Duration = Duration::from_millis(250);

impl AlarmOut {
    fn start(cfg: &SubscriberConfig, store: Option<&AlarmStore>) -> AlarmOut {
        let mut o = MqttOptions::new(
            format!("{}-alarms", cfg.client_id),
            cfg.broker.ip().to_string(),
            cfg.broker.port(),
        );
        o.set_keep_alive(cfg.keep_alive.max(Duration::from_secs(1)));
        o.set_inflight(1024);
        o.set_max_packet_size(256 * 1024, 256 * 1024);
        let (client, mut el) = AsyncClient::new(o, 65_536);
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = acked.clone();
        let pump = AbortOnDrop(tokio::spawn(async move {
            let mut backoff = Duration::from_millis(50);
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => backoff = Duration::from_millis(50),
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!("head-end alarm publisher: {e}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }));
        AlarmOut {
            client,
            _pump: pump,
            acked,
            base: store.map_or(0, AlarmStore::published),
            handed: 0,
            frozen: false,
            marked: None,
        }
    }

    fn acked(&self) -> u64 {
        self.acked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Hand `a` over without waiting: with the alarm connection down its queue fills, and
    /// ingestion (and stop) must go on. The store has the alarm either way.
    fn publish(&mut self, a: &AlarmRecord, report: &mut HeadEndReport) {
        let sent = serde_json::to_vec(a)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                self.client
                    .try_publish(a.topic(), QoS::AtLeastOnce, false, bytes)
                    .map_err(|e| e.to_string())
            });
        match sent {
            Ok(()) => {
                self.handed += 1;
                report.alarms_published += 1;
            }
            Err(e) => {
                self.frozen = true;
                report.alarms_unpublished += 1;
                tracing::warn!(
                    "alarm not published now (stored; published again after a restart): {e}"
                );
            }
        }
    }

    /// Record in the store how many of its alarms the broker has acknowledged on the topic, if
    /// the last record is older than [`MARK_EVERY`] (`force`: now).
    fn mark(&mut self, store: &mut AlarmStore, force: bool) {
        if self.frozen {
            return;
        }
        let now = tokio::time::Instant::now();
        if !force
            && self
                .marked
                .is_some_and(|t| now.duration_since(t) < MARK_EVERY)
        {
            return;
        }
        self.marked = Some(now);
        let done = self.base + self.acked().min(self.handed);
        if let Err(e) = store.mark_published(done) {
            tracing::warn!("alarm store: cannot record the published count: {e}");
        }
    }
}

/// Unix ms now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

enum FromBroker {
    Connected { session_present: bool },
    Subscribed,
    SubscribeRefused,
    Publish(Publish),
    Error(String),
}

/// Outputs besides the store.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Every alarm as it is raised (after the store sync).
    pub alarms: Option<mpsc::UnboundedSender<AlarmRecord>>,
    /// Poll events from the Modbus poller.
    pub polls: Option<mpsc::Receiver<PollEvent>>,
    /// Told once the first subscription is acknowledged (the head-end hears from then on).
    pub subscribed: Option<tokio::sync::oneshot::Sender<()>>,
    /// Distinct (meter, seq) readings and events ingested so far (for a harness waiting until
    /// everything the meters sent has arrived; statuses and duplicates are not counted).
    pub progress: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

/// Run the head-end until `stop` turns true: subscribe, ingest, store, publish. Returns the
/// report and the core (for the harness to read the ingestion state).
pub async fn run_head_end(
    cfg: SubscriberConfig,
    mut core: HeadEndCore,
    mut store: Option<AlarmStore>,
    mut outputs: Outputs,
    mut stop: watch::Receiver<bool>,
) -> Result<(HeadEndReport, HeadEndCore), HeadEndError> {
    let mut opts = MqttOptions::new(
        cfg.client_id.clone(),
        cfg.broker.ip().to_string(),
        cfg.broker.port(),
    );
    opts.set_keep_alive(cfg.keep_alive.max(Duration::from_secs(1)));
    opts.set_clean_session(cfg.clean_session);
    opts.set_manual_acks(true);
    opts.set_inflight(u16::MAX);
    // Incoming: as large as brokers let through by default (a message over the limit would
    // fail the connection, and a persistent session would redeliver it for ever).
    opts.set_max_packet_size(MAX_INCOMING, 256 * 1024);
    let (client, mut eventloop) = AsyncClient::new(opts, 65_536);
    let (tx, mut rx) = mpsc::unbounded_channel();
    // The event loop runs on its own task and only forwards, so a slow batch (store sync)
    // never stalls keep-alives or acknowledgements.
    let pump = AbortOnDrop(tokio::spawn(async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(FromBroker::Publish(p)).is_err() {
                        break;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let refused = ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                    let msg = if refused {
                        FromBroker::SubscribeRefused
                    } else {
                        FromBroker::Subscribed
                    };
                    if tx.send(msg).is_err() {
                        break;
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(c))) => {
                    backoff = Duration::from_millis(50);
                    if tx
                        .send(FromBroker::Connected {
                            session_present: c.session_present,
                        })
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if tx.send(FromBroker::Error(e.to_string())).is_err() {
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }));

    // Alarms go out on a connection of their own. On the subscription's socket the broker's
    // PUBACKs for them would share a TCP stream with the meter messages it forwards, and with
    // Nagle on the broker's side (rumqttd and Mosquitto's default leave TCP_NODELAY off) plus
    // this side's delayed ACK, a forwarded message waited ~40 ms behind a PUBACK (measured:
    // second and third phase trips 43–53 ms instead of 4–10 ms).
    let mut report = HeadEndReport::default();
    let mut alarm_out = cfg
        .publish_alarms
        .then(|| AlarmOut::start(&cfg, store.as_ref()));
    // Alarms stored by an earlier run but never acknowledged on the topic go out first.
    if let (Some(out), Some(store)) = (alarm_out.as_mut(), store.as_mut()) {
        for a in store.take_unpublished() {
            out.publish(&a, &mut report);
        }
    }

    let mut stale = tokio::time::interval(cfg.stale_check.max(Duration::from_millis(10)));
    stale.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut alarms: Vec<AlarmRecord> = Vec::new();
    let mut to_ack: Vec<Publish> = Vec::new();
    let filters = cfg.filters();
    let mut polls_open = outputs.polls.is_some();
    let result = loop {
        tokio::select! {
            biased;
            () = async { let _ = stop.wait_for(|s| *s).await; } => break Ok(()),
            // Polls and stale checks before MQTT: they are few, and a burst of meter messages
            // must not starve them (a full poll channel would stall the poller).
            ev = async { match outputs.polls.as_mut() { Some(p) => p.recv().await, None => None } }, if polls_open => {
                match ev {
                    Some(ev) => {
                        core.on_poll(ev, now_ms(), &mut alarms);
                        if let Err(e) = flush(&client, alarm_out.as_mut(), &mut store, &mut outputs, &mut alarms, &mut to_ack, &mut report).await {
                            break Err(e);
                        }
                    }
                    None => polls_open = false,
                }
            }
            msg = rx.recv() => {
                let Some(first) = msg else { break Ok(()) };
                let mut next = Some(first);
                let mut batch = 0usize;
                let mut fatal = None;
                while let Some(m) = next.take() {
                    match m {
                        FromBroker::Publish(p) => {
                            batch += 1;
                            let now = now_ms();
                            match core.on_mqtt(&p.topic, &p.payload, now, &mut alarms) {
                                Ok(true) => {
                                    if let Some(c) = &outputs.progress {
                                        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    }
                                }
                                Ok(false) => {}
                                Err(e) => {
                                    tracing::warn!("head-end {}: refused: {e}", core.instance());
                                }
                            }
                            to_ack.push(p);
                        }
                        FromBroker::Connected { session_present } => {
                            report.connects += 1;
                            tracing::info!(
                                "head-end {}: connected to {} (session present: {session_present})",
                                core.instance(), cfg.broker
                            );
                            let subs = filters
                                .iter()
                                .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                            if let Err(e) = client.subscribe_many(subs).await {
                                fatal = Some(HeadEndError::Client(e.to_string()));
                            }
                        }
                        FromBroker::SubscribeRefused => {
                            fatal = Some(HeadEndError::Refused(filters.join(" ")));
                        }
                        FromBroker::Subscribed => {
                            if let Some(tx) = outputs.subscribed.take() {
                                let _ = tx.send(());
                            }
                        }
                        FromBroker::Error(e) => {
                            report.connection_errors += 1;
                            // Unacknowledged messages of a lost connection are redelivered on the
                            // next one (persistent session); acks for them would be invalid.
                            to_ack.clear();
                            tracing::warn!("head-end {}: broker connection: {e}", core.instance());
                        }
                    }
                    if batch < cfg.max_batch {
                        next = rx.try_recv().ok();
                    }
                }
                report.max_batch = report.max_batch.max(batch);
                if let Some(e) = fatal.take() {
                    break Err(e);
                }
                if let Err(e) = flush(&client, alarm_out.as_mut(), &mut store, &mut outputs, &mut alarms, &mut to_ack, &mut report).await {
                    break Err(e);
                }
            }
            _ = stale.tick() => {
                core.check_stale(now_ms(), &mut alarms);
                if let Err(e) = flush(&client, alarm_out.as_mut(), &mut store, &mut outputs, &mut alarms, &mut to_ack, &mut report).await {
                    break Err(e);
                }
            }
        }
    };
    // Let the alarm connection deliver what was handed to it (bounded), and record how far
    // the broker acknowledged it.
    if let Some(out) = alarm_out.as_mut() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while out.acked() < out.handed && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Some(store) = store.as_mut() {
            out.mark(store, true);
        }
    }
    let _ = client.disconnect().await;
    if let Some(out) = &alarm_out {
        let _ = out.client.disconnect().await;
    }
    // The pump ends at its next event once nobody listens; give DISCONNECT a moment to leave.
    drop(rx);
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        while !pump.0.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    drop(pump);
    drop(alarm_out);
    report.ingest = core.stats();
    result.map(|()| (report, core))
}

async fn flush(
    client: &AsyncClient,
    mut out: Option<&mut AlarmOut>,
    store: &mut Option<AlarmStore>,
    outputs: &mut Outputs,
    alarms: &mut Vec<AlarmRecord>,
    to_ack: &mut Vec<Publish>,
    report: &mut HeadEndReport,
) -> Result<(), HeadEndError> {
    if !alarms.is_empty() {
        if let Some(store) = store.as_mut() {
            store.append(alarms)?;
            report.alarms_stored += alarms.len() as u64;
        }
        for a in alarms.drain(..) {
            if let Some(out) = out.as_deref_mut() {
                out.publish(&a, report);
            }
            if let Some(tx) = &outputs.alarms {
                let _ = tx.send(a);
            }
        }
    }
    if let (Some(out), Some(store)) = (out, store.as_mut()) {
        out.mark(store, false);
    }
    for p in to_ack.drain(..) {
        client
            .ack(&p)
            .await
            .map_err(|e| HeadEndError::Client(e.to_string()))?;
        report.acked += 1;
    }
    Ok(())
}
