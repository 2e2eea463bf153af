//! MQTT links against a spawned Mosquitto, with rumqttc's `AsyncClient` as the independent
//! subscriber: telemetry, events and statuses of the library sag scenario; the last will; a
//! 10 s broker outage flushed in order afterwards; ring overflow during an outage counted
//! exactly. Skipped when Mosquitto is not installed, unless `GRIDLOOP_REQUIRE_PEERS` is set.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use sim_core::meter::{Message, Payload};
use sim_core::scenario::{EventCode, PayloadFormat, RbeSpec};
use sim_core::Scenario;
use tokio::sync::oneshot;
use tokio::time::Instant;
use virtual_meter::broker::{find_program, SpawnedMosquitto};
use virtual_meter::mqtt::{decode, LinkConfig, LinkCounters, LinkReport, MqttError};
use virtual_meter::{run_link, LiveMeter, MeterRef, Outbox, SharedMeter};

use crate::common::{default_map, scenario, SAG};

pub(crate) type LinkTask = tokio::task::JoinHandle<Result<LinkReport, MqttError>>;

/// `run_link` on its own task, stopped by the sender.
pub(crate) fn spawn_link(
    meter: SharedMeter,
    cfg: LinkConfig,
    counters: Arc<LinkCounters>,
) -> (oneshot::Sender<()>, LinkTask) {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(run_link(meter, cfg, counters, async move {
        let _ = stop_rx.await;
    }));
    (stop_tx, task)
}

/// Stop a link and take its report (within 10 s).
pub(crate) async fn stop_link(stop_tx: oneshot::Sender<()>, task: LinkTask) -> LinkReport {
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

const EPOCH_MS: u64 = 1_700_000_000_000;

pub(crate) fn mosquitto() -> Option<SpawnedMosquitto> {
    if find_program("mosquitto").is_none() {
        assert!(
            std::env::var_os("GRIDLOOP_REQUIRE_PEERS").is_none(),
            "GRIDLOOP_REQUIRE_PEERS is set but mosquitto is not installed"
        );
        eprintln!("skipped: mosquitto is not installed");
        return None;
    }
    Some(SpawnedMosquitto::start().unwrap())
}

/// The sag scenario with a reading every 100 ms, each one sent (no report-by-exception).
pub(crate) fn sag(buffer_capacity: usize) -> Scenario {
    let mut sc = scenario(SAG);
    sc.groups[0].rbe = RbeSpec {
        delta: None,
        heartbeat: 60.0,
        interval: 0.1,
    };
    sc.groups[0].buffer_capacity = buffer_capacity;
    sc
}

pub(crate) fn live(sc: &Scenario, index: u32) -> SharedMeter {
    Arc::new(Mutex::new(LiveMeter::new(
        sc,
        MeterRef { group: 0, index },
        default_map(),
    )))
}

/// Every message meter `index` produces over the whole scenario: a twin meter (same seeds)
/// drained directly, no MQTT involved.
pub(crate) fn twin_messages(sc: &Scenario, index: u32) -> Vec<Message> {
    let mut m = LiveMeter::new(sc, MeterRef { group: 0, index }, default_map());
    m.attach_outbox(Outbox(Arc::new(|| {})));
    let mut out = Vec::new();
    let mut k = 0;
    while !m.is_finished() {
        k += 1;
        m.advance_to(f64::from(k) * 0.05);
        out.extend(std::iter::from_fn(|| m.poll_transmit()));
    }
    out
}

pub(crate) fn advance(meter: &SharedMeter, t: f64) {
    meter.lock().unwrap().advance_to(t);
}

pub(crate) fn link_cfg(sc: &Scenario, index: u32, broker: &SpawnedMosquitto) -> LinkConfig {
    let mut cfg = LinkConfig::for_meter(
        sc,
        MeterRef { group: 0, index },
        broker.addr().ip().to_string(),
        broker.addr().port(),
        EPOCH_MS,
    );
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(500);
    cfg.keep_alive = Duration::from_secs(5);
    cfg.ping_timeout = Duration::from_secs(2);
    cfg
}

#[derive(Debug, Clone)]
struct Got {
    topic: String,
    payload: bytes::Bytes,
}

/// rumqttc subscriber on `gridloop/#` (QoS 1), recording every PUBLISH it receives; polls
/// again after connection errors (that is how rumqttc reconnects).
pub(crate) struct Subscriber {
    got: Arc<Mutex<Vec<Got>>>,
    task: tokio::task::JoinHandle<()>,
    _client: AsyncClient,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscriber {
    pub(crate) async fn start(
        broker: &SpawnedMosquitto,
        id: &str,
        clean_session: bool,
    ) -> Subscriber {
        let mut opts = MqttOptions::new(id, broker.addr().ip().to_string(), broker.addr().port());
        opts.set_clean_session(clean_session);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut el) = AsyncClient::new(opts, 16);
        client
            .subscribe("gridloop/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let (subacked, subacked_rx) = oneshot::channel();
        let sink = Arc::clone(&got);
        let task = tokio::spawn(async move {
            let mut subacked = Some(subacked);
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => sink.lock().unwrap().push(Got {
                        topic: p.topic.clone(),
                        payload: p.payload.clone(),
                    }),
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subacked.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                    // Broker down: rumqttc reconnects on the next poll; don't spin.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subacked_rx)
            .await
            .expect("no SUBACK within 10 s")
            .unwrap();
        Subscriber {
            got,
            task,
            _client: client,
        }
    }

    fn snapshot(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Decoded telemetry and event payloads of meter `name`, in arrival order.
    pub(crate) fn data_of(&self, name: &str, format: PayloadFormat) -> Vec<Value> {
        self.snapshot()
            .iter()
            .filter(|g| g.topic.contains(&format!("/{name}/")) && !g.topic.ends_with("/status"))
            .map(|g| decode(format, &g.payload).unwrap())
            .collect()
    }

    fn statuses_of(&self, name: &str, format: PayloadFormat) -> Vec<String> {
        self.snapshot()
            .iter()
            .filter(|g| g.topic.ends_with(&format!("/{name}/status")))
            .map(|g| {
                decode(format, &g.payload).unwrap()["status"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }
}

/// Wait (bounded) for `cond`.
pub(crate) async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < end,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The seqs in first-arrival order (QoS 1 may deliver a message twice across an outage; a
/// repeat must be of a seq seen before).
pub(crate) fn first_arrivals(values: &[Value]) -> Vec<u64> {
    let mut seen = std::collections::BTreeSet::new();
    let mut order = Vec::new();
    for v in values {
        let seq = v["seq"].as_u64().unwrap();
        if seen.insert(seq) {
            order.push(seq);
        }
    }
    order
}

/// `v` is `m` as published: seq, source time (grid and unix ms), the meter's own values.
fn assert_payload_is(v: &Value, m: &Message, channels: usize) {
    assert_eq!(v["seq"].as_u64(), Some(m.seq), "{v}");
    assert_eq!(v["meter"].as_u64(), Some(u64::from(m.meter)), "{v}");
    assert_eq!(v["t"].as_f64(), Some(m.source_time), "{v}");
    let ms = EPOCH_MS + (m.source_time * 1000.0).round() as u64;
    assert_eq!(v["ts_ms"].as_u64(), Some(ms), "{v}");
    match &m.payload {
        Payload::Reading { volts, overflow } => {
            assert_eq!(v["kind"], "reading");
            assert_eq!(v["overflow"].as_u64(), Some(*overflow), "{v}");
            let obj = v["volts"].as_object().unwrap();
            assert_eq!(obj.len(), channels, "{v}");
            for (i, p) in ["L1", "L2", "L3"].iter().enumerate().take(channels) {
                assert_eq!(obj[*p].as_f64().map(|x| x as f32), Some(volts[i]), "{v}");
            }
        }
        Payload::Event(ev) => {
            assert_eq!(v["kind"], "event");
            assert_eq!(v["code"], ev.code.name());
            assert_eq!(v["code_num"].as_u64(), Some(u64::from(ev.code.code())));
            assert_eq!(v["phase"], ev.phase.name());
            assert_eq!(v["value"].as_f64(), Some(ev.value));
            assert_eq!(v["limit"].as_f64(), Some(ev.limit));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meters_publish_telemetry_events_statuses_and_the_will() {
    let Some(broker) = mosquitto() else { return };
    let sc = sag(4096);
    let sub = Subscriber::start(&broker, "sub-a", true).await;
    let counters = Arc::new(LinkCounters::default());

    // Meter 0 publishes JSON, meter 1 CBOR.
    let formats = [PayloadFormat::Json, PayloadFormat::Cbor];
    let mut links = Vec::new();
    for (index, format) in formats.into_iter().enumerate() {
        let meter = live(&sc, index as u32);
        let mut cfg = link_cfg(&sc, index as u32, &broker);
        cfg.format = format;
        let name = cfg.meter_name.clone();
        let (stop_tx, task) = spawn_link(Arc::clone(&meter), cfg, Arc::clone(&counters));
        links.push((meter, name, format, stop_tx, task));
    }
    wait_until("both links connected", Duration::from_secs(10), || {
        counters.snapshot().connected == 2
    })
    .await;

    // Grid time faster than real time: 10 ms steps, as the pacing loop takes them.
    for k in 1..=300 {
        for (meter, ..) in &links {
            advance(meter, f64::from(k) * 0.01);
        }
        tokio::task::yield_now().await;
    }

    for (index, (meter, name, format, ..)) in links.iter().enumerate() {
        let want = twin_messages(&sc, index as u32);
        assert_eq!(meter.lock().unwrap().meter().produced(), want.len() as u64);
        assert!(want.len() > 20, "{} messages", want.len());
        wait_until(
            &format!("{name}'s {} messages", want.len()),
            Duration::from_secs(10),
            || sub.data_of(name, *format).len() >= want.len(),
        )
        .await;
        let got = sub.data_of(name, *format);
        // Every seq exactly once, in order, with the values the meter produced.
        assert_eq!(got.len(), want.len());
        for (v, m) in got.iter().zip(&want) {
            assert_payload_is(v, m, 3);
        }
        let codes: Vec<&str> = got
            .iter()
            .filter(|v| v["kind"] == "event")
            .map(|v| v["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, ["UV_TRIP_0x01", "UV_CLEAR_0x81"], "{name}");
        let trip = got.iter().find(|v| v["kind"] == "event").unwrap();
        assert_eq!(trip["phase"], "L1");
        // Trip within the library's 16.7 ms of the sag's onset at 1 s.
        let t = trip["t"].as_f64().unwrap();
        assert!((1.0..1.0167).contains(&t), "trip at {t}");
    }

    // Graceful stop: everything acknowledged, then offline.
    for (meter, name, format, stop_tx, task) in links {
        let report = stop_link(stop_tx, task).await;
        let produced = meter.lock().unwrap().meter().produced();
        assert!(report.flushed, "{report:?}");
        assert_eq!(
            (report.taken, report.published, report.acked),
            (produced, produced, produced)
        );
        assert_eq!(
            (report.unacked, report.unsent, report.left_in_ring),
            (0, 0, 0)
        );
        wait_until(&format!("{name} offline"), Duration::from_secs(10), || {
            sub.statuses_of(&name, format).len() >= 2
        })
        .await;
        assert_eq!(sub.statuses_of(&name, format), ["online", "offline"]);
    }
    assert_eq!(counters.snapshot().connected, 0);
    assert_eq!(counters.snapshot().inflight, 0);

    // The last will: a link dropped without DISCONNECT.
    let meter = live(&sc, 2);
    let cfg = link_cfg(&sc, 2, &broker);
    let name = cfg.meter_name.clone();
    let task = tokio::spawn(run_link(
        meter,
        cfg,
        Arc::clone(&counters),
        std::future::pending(),
    ));
    wait_until("meter 2 online", Duration::from_secs(10), || {
        sub.statuses_of(&name, PayloadFormat::Json) == ["online"]
    })
    .await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    wait_until("meter 2's will", Duration::from_secs(10), || {
        sub.statuses_of(&name, PayloadFormat::Json).len() >= 2
    })
    .await;
    assert_eq!(
        sub.statuses_of(&name, PayloadFormat::Json),
        ["online", "offline"]
    );
}

/// Stop the broker (blocking: SIGTERM and wait) without starving the runtime.
fn stop_broker(b: &mut SpawnedMosquitto) {
    tokio::task::block_in_place(|| b.stop());
}

fn restart_broker(b: &mut SpawnedMosquitto) {
    tokio::task::block_in_place(|| b.restart()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_is_flushed_in_order_with_source_timestamps() {
    let Some(mut broker) = mosquitto() else {
        return;
    };
    let sc = sag(4096);
    let want = twin_messages(&sc, 0);
    let sub = Subscriber::start(&broker, "sub-outage", false).await;
    let meter = live(&sc, 0);
    let cfg = link_cfg(&sc, 0, &broker);
    let name = cfg.meter_name.clone();
    let counters = Arc::new(LinkCounters::default());
    let (stop_tx, task) = spawn_link(Arc::clone(&meter), cfg, Arc::clone(&counters));
    wait_until("link connected", Duration::from_secs(10), || {
        counters.snapshot().connected == 1
    })
    .await;

    // Before the sag (onset 1 s): delivered as produced.
    advance(&meter, 0.5);
    let before = meter.lock().unwrap().meter().produced();
    assert!(before >= 3, "{before}");
    wait_until("pre-outage messages", Duration::from_secs(10), || {
        sub.data_of(&name, PayloadFormat::Json).len() as u64 >= before
    })
    .await;

    // 10 s of wall time without a broker while the meter measures the sag.
    stop_broker(&mut broker);
    let outage = Instant::now();
    wait_until("link down", Duration::from_secs(10), || {
        counters.snapshot().connected == 0
    })
    .await;
    let taken_at_stop = counters.snapshot().taken;
    let mut k = 0;
    while outage.elapsed() < Duration::from_secs(10) && k < 50 {
        k += 1;
        advance(&meter, 0.5 + f64::from(k) * 0.03);
        // Pacing the outage over wall time, not a synchronisation.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    advance(&meter, 2.0);
    let during = {
        let m = meter.lock().unwrap();
        let log: Vec<_> = m.meter().event_log().to_vec();
        // The meter tripped and cleared on its own while the backhaul was down...
        let codes: Vec<EventCode> = log.iter().map(|(_, e)| e.code).collect();
        assert_eq!(codes, [EventCode::UvTrip, EventCode::UvClear]);
        assert!(log.iter().all(|(t, _)| (0.5..2.0).contains(t)), "{log:?}");
        // ...and kept every message in its ring, none taken by the link.
        assert_eq!(m.meter().overflowed(), 0);
        let during = m.meter().produced() - before;
        assert_eq!(m.meter().buffered() as u64, during);
        during
    };
    assert_eq!(counters.snapshot().taken, taken_at_stop);
    assert!(during >= 15, "{during}");
    assert!(
        outage.elapsed() >= Duration::from_secs(10),
        "the outage lasted {:?}",
        outage.elapsed()
    );

    restart_broker(&mut broker);
    let restarted_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for k in 1..=10 {
        advance(&meter, 2.0 + f64::from(k) * 0.1);
    }
    let produced = meter.lock().unwrap().meter().produced();
    assert_eq!(produced, want.len() as u64);
    wait_until(
        "every message after the outage",
        Duration::from_secs(20),
        || first_arrivals(&sub.data_of(&name, PayloadFormat::Json)).len() as u64 >= produced,
    )
    .await;

    let got = sub.data_of(&name, PayloadFormat::Json);
    let order = first_arrivals(&got);
    assert_eq!(
        order,
        (0..produced).collect::<Vec<_>>(),
        "in order, nothing lost"
    );
    // Each delivery (repeats included) carries what the meter measured, when it measured it.
    for v in &got {
        let seq = v["seq"].as_u64().unwrap();
        assert_payload_is(v, &want[seq as usize], 3);
    }
    // The outage's messages were stamped at the source: grid time inside the outage, unix
    // time the run epoch + grid time, long before they could be delivered.
    let outage_msgs: Vec<&Value> = got
        .iter()
        .filter(|v| (before..before + during).contains(&v["seq"].as_u64().unwrap()))
        .collect();
    assert!(outage_msgs.len() as u64 >= during);
    for v in &outage_msgs {
        let t = v["t"].as_f64().unwrap();
        assert!((0.5..=2.0).contains(&t), "{v}");
        assert!(v["ts_ms"].as_u64().unwrap() < restarted_unix_ms, "{v}");
    }
    // The trip and clear measured during the outage arrived as events, equal to the log.
    let log = meter.lock().unwrap().meter().event_log().to_vec();
    let events: Vec<&Value> = got.iter().filter(|v| v["kind"] == "event").collect();
    assert!(events.len() >= 2);
    for (v, (t, e)) in first_events(&events).iter().zip(&log) {
        assert_eq!(v["t"].as_f64(), Some(*t));
        assert_eq!(v["code"], e.code.name());
    }
    wait_until(
        "every publish acknowledged",
        Duration::from_secs(10),
        || counters.snapshot().acked == produced,
    )
    .await;
    let s = counters.snapshot();
    assert!(s.reconnects >= 1, "{s:?}");
    assert_eq!(
        (s.taken, s.published, s.inflight),
        (produced, produced, 0),
        "{s:?}"
    );

    let report = stop_link(stop_tx, task).await;
    assert!(report.flushed, "{report:?}");
    assert_eq!(report.left_in_ring, 0);
}

pub(crate) fn first_events<'a>(events: &[&'a Value]) -> Vec<&'a Value> {
    let mut seen = std::collections::BTreeSet::new();
    events
        .iter()
        .filter(|v| seen.insert(v["seq"].as_u64()))
        .copied()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_overflow_during_an_outage_is_counted_exactly() {
    let Some(mut broker) = mosquitto() else {
        return;
    };
    const RING: u64 = 5;
    let sc = sag(RING as usize);
    let sub = Subscriber::start(&broker, "sub-overflow", false).await;
    let meter = live(&sc, 0);
    let cfg = link_cfg(&sc, 0, &broker);
    let name = cfg.meter_name.clone();
    let counters = Arc::new(LinkCounters::default());
    let (stop_tx, task) = spawn_link(Arc::clone(&meter), cfg, Arc::clone(&counters));
    wait_until("link connected", Duration::from_secs(10), || {
        counters.snapshot().connected == 1
    })
    .await;
    // Small steps so the link keeps up with the 5-entry ring while connected.
    for k in 1..=5 {
        advance(&meter, f64::from(k) * 0.1);
        let p = meter.lock().unwrap().meter().produced();
        wait_until("delivery", Duration::from_secs(10), || {
            sub.data_of(&name, PayloadFormat::Json).len() as u64 >= p
        })
        .await;
    }
    let before = meter.lock().unwrap().meter().produced();
    assert_eq!(meter.lock().unwrap().meter().overflowed(), 0);

    stop_broker(&mut broker);
    wait_until("link down", Duration::from_secs(10), || {
        counters.snapshot().connected == 0
    })
    .await;
    advance(&meter, 2.0);
    let (during, overflowed) = {
        let m = meter.lock().unwrap();
        (m.meter().produced() - before, m.meter().overflowed())
    };
    assert!(during > RING, "{during}");
    // The ring keeps the newest RING messages: the rest of the outage overflowed.
    assert_eq!(overflowed, during - RING);
    restart_broker(&mut broker);
    wait_until(
        "the ring flushed after the outage",
        Duration::from_secs(20),
        || counters.snapshot().connected == 1 && meter.lock().unwrap().meter().buffered() == 0,
    )
    .await;
    // The twin's big ring never overflows: its messages are the meter's, overflow counts aside.
    let want = twin_messages(&sag(4096), 0);
    // After the outage, small steps again (the ring must not overflow any more).
    for k in 21..=30 {
        advance(&meter, f64::from(k) * 0.1);
        let p = meter.lock().unwrap().meter().produced();
        wait_until("delivery after the outage", Duration::from_secs(20), || {
            first_arrivals(&sub.data_of(&name, PayloadFormat::Json)).len() as u64 >= p - overflowed
        })
        .await;
    }
    let m = meter.lock().unwrap().meter().clone();
    assert_eq!(m.produced(), want.len() as u64);
    assert_eq!(m.overflowed(), overflowed, "no overflow after the outage");
    let got = sub.data_of(&name, PayloadFormat::Json);
    let order = first_arrivals(&got);
    // produced = delivered + overflowed, and exactly the oldest of the outage were dropped.
    assert_eq!(m.produced(), order.len() as u64 + m.overflowed());
    let expected: Vec<u64> = (0..m.produced())
        .filter(|s| !(before..before + overflowed).contains(s))
        .collect();
    assert_eq!(order, expected);
    for v in &got {
        let seq = v["seq"].as_u64().unwrap();
        let mut m = want[seq as usize].clone();
        if let Payload::Reading { overflow, .. } = &mut m.payload {
            // Readings carry the overflow count as it stood when they were taken: 0 before the
            // outage, all of it after; in between it grew.
            *overflow = if seq < before {
                0
            } else if seq >= before + during {
                overflowed
            } else {
                let o = v["overflow"].as_u64().unwrap();
                assert!(o <= overflowed, "{v}");
                o
            };
        }
        assert_payload_is(v, &m, 3);
    }
    let last = got.iter().rev().find(|v| v["kind"] == "reading").unwrap();
    assert_eq!(last["overflow"].as_u64(), Some(overflowed));

    let report = stop_link(stop_tx, task).await;
    assert!(report.flushed, "{report:?}");
}

/// A scripted "broker" on port 0: for each accepted connection, read the CONNECT, then write
/// `reply(connection number)`, then keep reading until the client closes. Counts connections.
async fn fake_broker(
    reply: impl Fn(usize) -> Vec<u8> + Send + Sync + 'static,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    let reply = Arc::new(reply);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let reply = Arc::clone(&reply);
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                if s.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                let _ = s.write_all(&reply(n)).await;
                while s.read(&mut buf).await.unwrap_or(0) > 0 {}
            });
        }
    });
    (addr, accepted)
}

fn fake_cfg(sc: &Scenario, addr: std::net::SocketAddr) -> LinkConfig {
    let mut cfg = LinkConfig::for_meter(
        sc,
        MeterRef { group: 0, index: 0 },
        addr.ip().to_string(),
        addr.port(),
        EPOCH_MS,
    );
    cfg.backoff_min = Duration::from_millis(20);
    cfg.backoff_max = Duration::from_millis(100);
    cfg.keep_alive = Duration::from_secs(1);
    cfg.ping_timeout = Duration::from_secs(1);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_broker_drops_the_connection_and_the_link_reconnects() {
    let sc = sag(4096);
    // Reserved packet type 0, an endless remaining length, a 1 MB PUBLISH header.
    let garbage: [&[u8]; 3] = [
        &[0x00, 0x00],
        &[0x40, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        &[0x30, 0x80, 0x80, 0x40],
    ];
    let (addr, accepted) = fake_broker(move |n| garbage[n % 3].to_vec()).await;
    let counters = Arc::new(LinkCounters::default());
    let (stop_tx, task) = spawn_link(live(&sc, 0), fake_cfg(&sc, addr), Arc::clone(&counters));
    wait_until("four connections", Duration::from_secs(10), || {
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 4
    })
    .await;
    let s = counters.snapshot();
    assert!(s.connect_failures >= 3, "{s:?}");
    assert_eq!(s.reconnects, 0, "never connected: {s:?}");
    let report = stop_link(stop_tx, task).await;
    assert!(!report.flushed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_ends_the_link_with_an_error() {
    let sc = sag(4096);
    // CONNACK, return code 5: not authorized.
    let (addr, _) = fake_broker(|_| vec![0x20, 0x02, 0x00, 0x05]).await;
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        run_link(
            live(&sc, 0),
            fake_cfg(&sc, addr),
            Arc::default(),
            std::future::pending(),
        ),
    )
    .await
    .unwrap();
    let err = res.unwrap_err().to_string();
    assert!(
        err.contains("NotAuthorized") && err.contains("gridloop-feeder-a-0000"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_stops_answering_pings_is_left() {
    let sc = sag(4096);
    // CONNACK, then silence: no PINGRESP to the keep-alive PINGREQ.
    let (addr, accepted) = fake_broker(|_| vec![0x20, 0x02, 0x00, 0x00]).await;
    let counters = Arc::new(LinkCounters::default());
    let task = tokio::spawn(run_link(
        live(&sc, 0),
        fake_cfg(&sc, addr),
        Arc::clone(&counters),
        std::future::pending(),
    ));
    // keep-alive 1 s + PINGRESP timeout 1 s, then a new connection.
    wait_until("a second connection", Duration::from_secs(10), || {
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2
    })
    .await;
    wait_until("the reconnect counted", Duration::from_secs(10), || {
        counters.snapshot().reconnects >= 1
    })
    .await;
    assert!(counters.snapshot().connect_failures >= 1);
    task.abort();
}
