//! The head-end's MQTT subscriber against a spawned Mosquitto: a restart in the middle of a run
//! raises no duplicate alarm and misses none of the events queued meanwhile; instances split a
//! fleet by substation or by a shared subscription. Skipped when Mosquitto is not installed,
//! unless `GRIDLOOP_REQUIRE_PEERS` is set.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use head_end::{
    run_head_end, AlarmRecord, AlarmStore, HeadEndCore, HeadEndReport, Kind, Outputs,
    SubscriberConfig,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sim_core::grid::Phase;
use sim_core::meter::{Message, MeterEvent, Payload};
use sim_core::scenario::{EventCode, HeadEndSpec, PayloadFormat};
use tokio::sync::{mpsc, watch};
use virtual_meter::broker::{find_program, SpawnedMosquitto};
use virtual_meter::mqtt::{Mtu, PayloadCodec, Topics};

/// Bound on waits for something that must happen.
const SLOW: Duration = Duration::from_secs(20);

fn mosquitto() -> Option<SpawnedMosquitto> {
    if find_program("mosquitto").is_none() {
        assert!(
            std::env::var_os("GRIDLOOP_REQUIRE_PEERS").is_none(),
            "GRIDLOOP_REQUIRE_PEERS is set but mosquitto is not installed"
        );
        eprintln!("skipped: mosquitto is not installed");
        return None;
    }
    Some(SpawnedMosquitto::start().expect("mosquitto starts"))
}

/// A publisher standing in for meters: QoS-1 events and readings in the wire format.
struct Meters {
    client: AsyncClient,
    pump: tokio::task::JoinHandle<()>,
    epoch_ms: u64,
}

impl Meters {
    async fn connect(addr: SocketAddr) -> Meters {
        let mut o = MqttOptions::new("meters", addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(5));
        o.set_inflight(1000);
        let (client, mut el) = AsyncClient::new(o, 10_000);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let pump = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("publisher connects")
            .expect("pump alive");
        Meters {
            client,
            pump,
            epoch_ms: head_end::subscriber::now_ms(),
        }
    }

    /// Meter `m` of substation `sub` publishes message `seq`: a UV trip on L1 when `trip`, else
    /// a reading.
    async fn send(&self, sub: &str, m: u32, seq: u64, trip: bool) {
        let name = format!("feeder-{m:04}");
        let codec = PayloadCodec::new(
            PayloadFormat::Json,
            m,
            &name,
            3,
            self.epoch_ms,
            Mtu::default(),
        );
        let topics = Topics::new(sub, "feeder", &name);
        let msg = Message {
            meter: m,
            seq,
            source_time: seq as f64 * 0.1,
            payload: if trip {
                Payload::Event(MeterEvent {
                    code: EventCode::UvTrip,
                    phase: Phase::L1,
                    value: 180.0,
                    limit: 210.0,
                })
            } else {
                Payload::Reading {
                    volts: [240.0, 240.0, 240.0],
                    overflow: 0,
                }
            },
        };
        let mut out = Vec::new();
        let kind = PayloadCodec::kind_of(&msg);
        codec.encode(&msg, "t", &mut out).expect("encodes");
        for bytes in out {
            self.client
                .publish(topics.topic(kind), QoS::AtLeastOnce, false, bytes.to_vec())
                .await
                .expect("queued");
        }
    }
}

impl Drop for Meters {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

struct Running {
    stop: watch::Sender<bool>,
    alarms: mpsc::UnboundedReceiver<AlarmRecord>,
    task: tokio::task::JoinHandle<Result<(HeadEndReport, HeadEndCore), head_end::HeadEndError>>,
}

fn start(cfg: SubscriberConfig, store: Option<&std::path::Path>) -> Running {
    let instance = cfg.client_id.clone();
    let mut core = HeadEndCore::new(HeadEndSpec::default(), &instance);
    let store = store.map(|p| {
        let (s, old) = AlarmStore::open(p).expect("store opens");
        core.restore(&old, head_end::subscriber::now_ms());
        s
    });
    let (tx, alarms) = mpsc::unbounded_channel();
    let (stop, stop_rx) = watch::channel(false);
    let outputs = Outputs {
        alarms: Some(tx),
        ..Outputs::default()
    };
    let task = tokio::spawn(run_head_end(cfg, core, store, outputs, stop_rx));
    Running { stop, alarms, task }
}

/// Collect trip alarms until `n` arrived or `wait` passed.
async fn trips(
    rx: &mut mpsc::UnboundedReceiver<AlarmRecord>,
    n: usize,
    wait: Duration,
) -> Vec<AlarmRecord> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(a)) if a.kind == Kind::Trip => got.push(a),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    got
}

/// Wait until the head-end's session is subscribed: a probe trip comes back as an alarm.
async fn wait_subscribed(
    meters: &Meters,
    sub: &str,
    rx: &mut mpsc::UnboundedReceiver<AlarmRecord>,
    probe_meter: u32,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seq = 1_000_000;
    loop {
        meters.send(sub, probe_meter, seq, true).await;
        seq += 1;
        if let Ok(Some(a)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            if a.meter == probe_meter {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "head-end never subscribed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_raises_no_duplicate_and_misses_none_queued() {
    let Some(broker) = mosquitto() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let store_path = dir.path().join("alarms.jsonl");
    let meters = Meters::connect(broker.addr()).await;
    let cfg = SubscriberConfig::new(broker.addr(), "he-restart");

    let mut a = start(cfg.clone(), Some(&store_path));
    wait_subscribed(&meters, "sub-01", &mut a.alarms, 999).await;
    // Before the restart: 20 meters trip (seq 1), with readings around them.
    for m in 0..20 {
        meters.send("sub-01", m, 0, false).await;
        meters.send("sub-01", m, 1, true).await;
    }
    let first = trips(&mut a.alarms, 20, SLOW).await;
    assert_eq!(first.len(), 20, "alarms before the restart");
    // Crash: the task is dropped without a clean disconnect.
    a.task.abort();
    let _ = a.task.await;
    // While it is down: the same 20 events again (a meter's QoS-1 redelivery) and 20 new ones;
    // the broker queues them for the persistent session.
    for m in 0..20 {
        meters.send("sub-01", m, 1, true).await;
        meters.send("sub-01", m, 2, false).await;
        meters.send("sub-01", m, 3, true).await;
    }
    let mut b = start(cfg, Some(&store_path));
    let second = trips(&mut b.alarms, 20, SLOW).await;
    // Anything beyond the 20 new ones would be a duplicate: give it a moment to show up.
    let extra = trips(&mut b.alarms, 1, Duration::from_millis(1500)).await;
    let _ = b.stop.send(true);
    let (report, _) = b.task.await.expect("joins").expect("runs");
    assert_eq!(
        second.len(),
        20,
        "every queued trip arrives after the restart"
    );
    assert!(
        extra.is_empty(),
        "duplicate alarms after the restart: {extra:?}"
    );
    assert!(second.iter().all(|a| a.seq == Some(3)), "{second:?}");
    assert!(report.ingest.duplicates >= 20, "{report:?}");
    // The store holds each (meter, seq) trip exactly once.
    let (_, stored) = AlarmStore::open(&store_path).expect("reopens");
    let keys: Vec<(u32, u64)> = stored
        .iter()
        .filter(|a| a.kind == Kind::Trip && a.meter < 20)
        .filter_map(AlarmRecord::key)
        .collect();
    let unique: BTreeSet<_> = keys.iter().copied().collect();
    assert_eq!(keys.len(), unique.len(), "duplicates in the store");
    let expected: BTreeSet<_> = (0..20).flat_map(|m| [(m, 1), (m, 3)]).collect();
    assert_eq!(unique, expected);
    // Latency and times are recorded.
    let untimed: Vec<_> = stored
        .iter()
        .filter(|a| a.source_ms.is_none() || a.latency_ms.is_none())
        .collect();
    assert!(untimed.is_empty(), "{untimed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_split_by_substation_and_by_shared_subscription() {
    let Some(broker) = mosquitto() else { return };
    let meters = Meters::connect(broker.addr()).await;

    // Partitioning by substation.
    let mut cfg1 = SubscriberConfig::new(broker.addr(), "he-sub-01");
    cfg1.substations = vec!["sub-01".into()];
    cfg1.clean_session = true;
    let mut cfg2 = cfg1.clone();
    cfg2.client_id = "he-sub-02".into();
    cfg2.substations = vec!["sub-02".into()];
    let mut h1 = start(cfg1, None);
    let mut h2 = start(cfg2, None);
    wait_subscribed(&meters, "sub-01", &mut h1.alarms, 900).await;
    wait_subscribed(&meters, "sub-02", &mut h2.alarms, 901).await;
    for m in 0..30 {
        let sub = if m % 3 == 0 { "sub-02" } else { "sub-01" };
        meters.send(sub, m, 0, true).await;
    }
    let t1 = trips(&mut h1.alarms, 20, SLOW).await;
    let t2 = trips(&mut h2.alarms, 10, SLOW).await;
    assert!(
        t1.iter()
            .all(|a| a.substation == "sub-01" && a.meter % 3 != 0),
        "{t1:?}"
    );
    assert!(
        t2.iter()
            .all(|a| a.substation == "sub-02" && a.meter % 3 == 0),
        "{t2:?}"
    );
    assert_eq!((t1.len(), t2.len()), (20, 10));
    for h in [h1, h2] {
        let _ = h.stop.send(true);
        h.task.await.expect("joins").expect("runs");
    }

    // A shared subscription: two instances, each message to exactly one of them.
    let mut cfg = SubscriberConfig::new(broker.addr(), "he-share-a");
    cfg.share_group = Some("headends".into());
    cfg.clean_session = true;
    let mut cfg_b = cfg.clone();
    cfg_b.client_id = "he-share-b".into();
    let mut a = start(cfg, None);
    let mut b = start(cfg_b, None);
    // Both subscribed: probes until each has seen one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (mut seen_a, mut seen_b, mut seq) = (false, false, 2_000_000);
    while !(seen_a && seen_b) {
        meters.send("sub-09", 950, seq, true).await;
        seq += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
        while let Ok(x) = a.alarms.try_recv() {
            seen_a |= x.meter == 950;
        }
        while let Ok(x) = b.alarms.try_recv() {
            seen_b |= x.meter == 950;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "shared subscription never split"
        );
    }
    for m in 0..200 {
        meters.send("sub-09", m, 0, true).await;
    }
    let (mut by_a, mut by_b) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while by_a.len() + by_b.len() < 200 {
        tokio::select! {
            Some(x) = a.alarms.recv() => if x.meter < 200 { by_a.push(x.meter) },
            Some(x) = b.alarms.recv() => if x.meter < 200 { by_b.push(x.meter) },
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    let all: BTreeSet<u32> = by_a.iter().chain(&by_b).copied().collect();
    assert_eq!(
        by_a.len() + by_b.len(),
        200,
        "each message to exactly one instance"
    );
    assert_eq!(all.len(), 200);
    assert!(
        !by_a.is_empty() && !by_b.is_empty(),
        "both instances took a share: {} / {}",
        by_a.len(),
        by_b.len()
    );
    for h in [a, b] {
        let _ = h.stop.send(true);
        h.task.await.expect("joins").expect("runs");
    }
}

/// Alarms a crashed run stored but never got acknowledged on the alarm topic are published by
/// the next run (a third party subscribed to `gridloop-alarms/#` receives them), and the
/// store's published count then covers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_but_unpublished_alarms_are_published_after_a_restart() {
    let Some(broker) = mosquitto() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("alarms.jsonl");
    // The crashed run: two alarms synced to the store, the published count still 0.
    let trip = |meter: u32, seq: u64| AlarmRecord {
        kind: Kind::Trip,
        code: Some("UV_TRIP_0x01".into()),
        meter,
        name: format!("feeder-{meter:04}"),
        substation: "sub-07".into(),
        group: "feeder".into(),
        seq: Some(seq),
        phase: Some("L1".into()),
        value: Some(180.0),
        limit: Some(210.0),
        dropped: None,
        overflow: None,
        source_ms: Some(1_000),
        receive_ms: 1_010,
        latency_ms: Some(10),
        detail: None,
        instance: "he-republish".into(),
    };
    let (mut store, _) = AlarmStore::open(&path).expect("store opens");
    store.append(&[trip(1, 4), trip(2, 9)]).expect("appends");
    assert_eq!(store.published(), 0);
    drop(store);

    // An independent subscriber on the alarm topic.
    let mut o = MqttOptions::new(
        "alarm-watcher",
        broker.addr().ip().to_string(),
        broker.addr().port(),
    );
    o.set_keep_alive(Duration::from_secs(5));
    let (watcher, mut el) = AsyncClient::new(o, 64);
    watcher
        .subscribe("gridloop-alarms/#", QoS::AtLeastOnce)
        .await
        .expect("queued");
    let (got_tx, mut got) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let pump = tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = got_tx.send(serde_json::from_slice::<AlarmRecord>(&p.payload));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    });
    tokio::time::timeout(SLOW, subscribed)
        .await
        .expect("the watcher subscribes")
        .expect("pump alive");

    let h = start(
        SubscriberConfig::new(broker.addr(), "he-republish"),
        Some(&path),
    );
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + SLOW;
    while received.len() < 2 {
        match tokio::time::timeout_at(deadline, got.recv()).await {
            Ok(Some(a)) => received.push(a.expect("an alarm record on the topic")),
            Ok(None) | Err(_) => break,
        }
    }
    let _ = h.stop.send(true);
    h.task.await.expect("joins").expect("runs");
    pump.abort();
    assert_eq!(
        received,
        vec![trip(1, 4), trip(2, 9)],
        "republished in store order"
    );
    let (store, all) = AlarmStore::open(&path).expect("reopens");
    assert_eq!(all.len(), 2, "republishing adds nothing to the store");
    assert_eq!(store.published(), 2, "the published count covers them now");
}
