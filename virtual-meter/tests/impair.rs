//! The impairment proxy on real sockets (127.0.0.1, port 0) in front of an echo server: the
//! byte stream survives jitter and loss intact and in order (also with a tiny queue, i.e.
//! backpressure), latency is added each way, an RF-loss window cuts open connections and
//! refuses new ones until it ends, and stop ends the proxy with its stats. Timing asserts are
//! lower bounds only.

use std::net::SocketAddr;
use std::time::Duration;

use sim_core::scenario::{LinkSpec, NetworkEvent, NetworkEventKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use virtual_meter::{spawn_proxy, ImpairProfile, ProxyStats};

use crate::common::{scenario, SAG};

/// An echo server on port 0: every connection gets its bytes back, then a FIN after the
/// client's FIN.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

fn spec(latency: f64, jitter: f64, loss: f64, retry: f64) -> LinkSpec {
    LinkSpec {
        latency,
        jitter,
        loss,
        retry,
    }
}

struct Proxy {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<ProxyStats>,
}

impl Proxy {
    async fn start(profile: ImpairProfile, epoch: Instant) -> Proxy {
        let upstream = echo_server().await;
        Proxy::start_to(upstream, profile, epoch).await
    }

    async fn start_to(upstream: SocketAddr, profile: ImpairProfile, epoch: Instant) -> Proxy {
        let (stop, stop_rx) = watch::channel(false);
        let (addr, task) = spawn_proxy(
            "127.0.0.1:0".parse().unwrap(),
            upstream,
            profile,
            epoch,
            stop_rx,
        )
        .await
        .unwrap();
        Proxy { addr, stop, task }
    }

    /// Stop and take the stats (the task must end within 10 s).
    async fn stop(self) -> ProxyStats {
        self.stop.send(true).unwrap();
        timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the proxy did not stop within 10 s")
            .unwrap()
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn noise(len: usize, mut x: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// Send `data` through the proxy in uneven pieces while reading the echo; returns the echo.
async fn echo_through(addr: SocketAddr, data: Vec<u8>) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut off = 0;
        let mut k = 0usize;
        while off < data.len() {
            let n = (1 + (k * 7919) % 5000).min(data.len() - off);
            w.write_all(&data[off..off + n]).await.unwrap();
            off += n;
            k += 1;
        }
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    timeout(Duration::from_secs(60), r.read_to_end(&mut got))
        .await
        .expect("echo not complete within 60 s")
        .unwrap();
    writer.await.unwrap();
    got
}

async fn integrity(queue_limit: usize, seed: u64) -> ProxyStats {
    // Jitter (10 ms) far above the spacing of chunks reorders their draws; loss 20 % with a
    // 30 ms retry delays one chunk in five by 30 ms or more.
    let profile = ImpairProfile::new(spec(0.002, 0.01, 0.2, 0.03), Vec::new(), seed)
        .with_queue_limit(queue_limit);
    let proxy = Proxy::start(profile, Instant::now()).await;
    let data = noise(300 * 1024, seed | 1);
    let got = echo_through(proxy.addr, data.clone()).await;
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the echo differs from what was sent");
    let stats = proxy.stop().await;
    let len = data.len() as u64;
    assert_eq!((stats.bytes_up, stats.bytes_down), (len, len), "{stats:?}");
    assert_eq!(stats.bytes_dropped, 0, "{stats:?}");
    assert_eq!(stats.connections, 1, "{stats:?}");
    assert_eq!(stats.socket_errors, 0, "{stats:?}");
    // Some chunk was lost at least once: held for the retry timeout.
    assert!(stats.chunks >= 20, "{stats:?}");
    assert!(stats.max_delay_ms >= 30.0, "{stats:?}");
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_stream_survives_jitter_and_loss_in_order() {
    let stats = integrity(virtual_meter::impair::DEFAULT_QUEUE_LIMIT, 11).await;
    assert_eq!(stats.closed_by_stop, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_queue_applies_backpressure_and_keeps_the_stream_intact() {
    // 1000 bytes per direction: the proxy must stop reading and resume many times.
    let stats = integrity(1000, 12).await;
    assert!(stats.chunks >= 300 * 1024 / 1000, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_trip_takes_at_least_twice_the_one_way_latency() {
    let proxy = Proxy::start(
        ImpairProfile::new(spec(0.04, 0.0, 0.0, 1.0), Vec::new(), 1),
        Instant::now(),
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    for _ in 0..3 {
        let start = Instant::now();
        s.write_all(b"ping!").await.unwrap();
        let mut buf = [0u8; 5];
        timeout(Duration::from_secs(10), s.read_exact(&mut buf))
            .await
            .expect("no echo within 10 s")
            .unwrap();
        assert_eq!(&buf, b"ping!");
        let rtt = start.elapsed();
        assert!(rtt >= Duration::from_millis(80), "round trip {rtt:?}");
    }
    drop(s);
    let stats = proxy.stop().await;
    assert_eq!((stats.bytes_up, stats.bytes_down), (15, 15), "{stats:?}");
    assert!(stats.max_delay_ms >= 39.9, "{stats:?}");
}

/// Read until the peer closes (EOF or reset); the bytes read before.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let end = Instant::now() + within;
    loop {
        match timeout(
            end.saturating_duration_since(Instant::now()),
            s.read(&mut buf),
        )
        .await
        {
            Err(_) => panic!("the connection was not closed within {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rf_loss_window_cuts_connections_and_refuses_new_ones_until_it_ends() {
    let (start, duration) = (0.3, 0.5);
    let rf_loss = NetworkEvent {
        at: start,
        duration,
        groups: Vec::new(),
        kind: NetworkEventKind::RfLoss,
    };
    let epoch = Instant::now();
    let at = |t: f64| epoch + Duration::from_secs_f64(t);
    // 100 ms one way: the first round trip ends at ~0.2 s, the second cannot before the cut.
    let proxy = Proxy::start(
        ImpairProfile::new(spec(0.1, 0.0, 0.0, 1.0), vec![rf_loss], 3),
        epoch,
    )
    .await;

    let mut open = TcpStream::connect(proxy.addr).await.unwrap();
    open.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    timeout(Duration::from_secs(5), open.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"before");
    assert!(
        Instant::now() < at(start),
        "precondition: the first round trip ended before the window"
    );
    open.write_all(b"lost").await.unwrap();
    let late = read_until_closed(&mut open, Duration::from_secs(5)).await;
    let cut = Instant::now();
    assert!(
        cut >= at(start),
        "closed {:?} before the window",
        at(start) - cut
    );
    assert!(
        late.is_empty(),
        "data in flight at the cut was delivered: {late:?}"
    );

    // A connection inside the window is closed at once, nothing passes.
    assert!(
        Instant::now() < at(start + duration),
        "precondition: still inside the window"
    );
    let mut refused = TcpStream::connect(proxy.addr).await.unwrap();
    let _ = refused.write_all(b"hello?").await;
    let got = read_until_closed(&mut refused, Duration::from_secs(5)).await;
    assert!(got.is_empty(), "{got:?}");

    // After the window, connections pass again. (Waiting for the scheduled end, not syncing.)
    tokio::time::sleep_until(at(start + duration)).await;
    let mut after = TcpStream::connect(proxy.addr).await.unwrap();
    after.write_all(b"after").await.unwrap();
    let mut buf = [0u8; 5];
    timeout(Duration::from_secs(5), after.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"after");

    let stats = proxy.stop().await;
    assert_eq!(stats.connections, 2, "{stats:?}");
    assert_eq!(stats.refused_in_outage, 1, "{stats:?}");
    assert_eq!(stats.cut_by_outage, 1, "{stats:?}");
    assert_eq!(stats.closed_by_stop, 1, "{stats:?}");
    // "lost" (4 bytes) was queued in one direction or the other when the cut came.
    assert_eq!(stats.bytes_dropped, 4, "{stats:?}");
    assert_eq!(stats.bytes_down, 6 + 5, "{stats:?}");
    let _ = after;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_closes_every_connection_and_reports_stats() {
    let proxy = Proxy::start(
        ImpairProfile::new(spec(0.001, 0.0, 0.0, 1.0), Vec::new(), 5),
        Instant::now(),
    )
    .await;
    let mut clients = Vec::new();
    for k in 0..5u8 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let msg = vec![k; 100 + usize::from(k)];
        s.write_all(&msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
        clients.push(s);
    }
    let stats = proxy.stop().await;
    let total: u64 = (0..5).map(|k| 100 + k).sum();
    assert_eq!(
        stats,
        ProxyStats {
            connections: 5,
            closed_by_stop: 5,
            bytes_up: total,
            bytes_down: total,
            ..stats
        }
    );
    assert_eq!(
        (
            stats.cut_by_outage,
            stats.refused_in_outage,
            stats.bytes_dropped
        ),
        (0, 0, 0)
    );
    for mut s in clients {
        let rest = read_until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(rest.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_closes_the_client_and_is_counted() {
    // A port that was free a moment ago: nothing listens there.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let proxy = Proxy::start_to(
        dead,
        ImpairProfile::new(LinkSpec::default(), Vec::new(), 1),
        Instant::now(),
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(got.is_empty());
    let stats = proxy.stop().await;
    assert_eq!(
        (stats.connections, stats.upstream_failures),
        (1, 1),
        "{stats:?}"
    );
}

#[test]
fn a_profile_for_a_group_takes_its_link_and_the_windows_that_name_it() {
    let mut sc = scenario(SAG);
    let ev = |at: f64, groups: Vec<usize>| NetworkEvent {
        at,
        duration: 1.0,
        groups,
        kind: NetworkEventKind::RfLoss,
    };
    sc.network = vec![ev(1.0, vec![]), ev(3.0, vec![1]), ev(5.0, vec![0, 2])];
    sc.groups[0].link = spec(0.02, 0.003, 0.01, 0.5);
    let p = ImpairProfile::for_group(&sc, 0, 9).unwrap();
    assert_eq!(*p.spec(), sc.groups[0].link);
    assert_eq!(
        p.windows(),
        &[sc.network[0].clone(), sc.network[2].clone()][..]
    );
    assert_eq!(p.outages(), vec![(1.0, 2.0), (5.0, 6.0)]);
    assert!(ImpairProfile::for_group(&sc, sc.groups.len(), 9).is_none());
}

/// A virtual meter's MQTT link through the proxy to a spawned Mosquitto, with an RF-loss window
/// on the proxy: the link is cut at the window start, the meter trips and buffers, reconnects
/// are refused during the window, and after it everything arrives in order with the source
/// timestamps. Skipped when Mosquitto is missing, unless `GRIDLOOP_REQUIRE_PEERS` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_link_through_an_rf_loss_window_buffers_and_flushes_after_it() {
    use std::sync::Arc;

    use sim_core::scenario::{EventCode, PayloadFormat};
    use virtual_meter::mqtt::LinkCounters;

    use crate::mqtt::{
        advance, first_arrivals, first_events, link_cfg, live, mosquitto, sag, spawn_link,
        stop_link, twin_messages, wait_until, Subscriber,
    };

    let Some(broker) = mosquitto() else {
        return;
    };
    let sc = sag(4096);
    let want = twin_messages(&sc, 0);
    let sub = Subscriber::start(&broker, "sub-impair", false).await;

    let (start, duration) = (1.5, 2.0);
    let rf_loss = NetworkEvent {
        at: start,
        duration,
        groups: Vec::new(),
        kind: NetworkEventKind::RfLoss,
    };
    let epoch = Instant::now();
    let at = |t: f64| epoch + Duration::from_secs_f64(t);
    let profile = ImpairProfile::new(spec(0.005, 0.002, 0.0, 1.0), vec![rf_loss], 21);
    let proxy = Proxy::start_to(broker.addr(), profile, epoch).await;

    let meter = live(&sc, 0);
    let mut cfg = link_cfg(&sc, 0, &broker);
    cfg.host = proxy.addr.ip().to_string();
    cfg.port = proxy.addr.port();
    let name = cfg.meter_name.clone();
    let counters = Arc::new(LinkCounters::default());
    let (stop_tx, task) = spawn_link(Arc::clone(&meter), cfg, Arc::clone(&counters));
    wait_until("link connected", Duration::from_secs(10), || {
        counters.snapshot().connected == 1
    })
    .await;

    // Before the window (and before the sag at 1 s of meter time): delivered as produced.
    advance(&meter, 0.5);
    let before = meter.lock().unwrap().meter().produced();
    assert!(before >= 3, "{before}");
    wait_until("pre-outage messages", Duration::from_secs(10), || {
        sub.data_of(&name, PayloadFormat::Json).len() as u64 >= before
    })
    .await;
    assert!(
        Instant::now() < at(start),
        "precondition: delivered before the window"
    );

    // The window cuts the link; the meter measures the sag meanwhile and buffers it.
    wait_until("link cut", Duration::from_secs(10), || {
        counters.snapshot().connected == 0
    })
    .await;
    assert!(Instant::now() >= at(start), "cut before the window");
    let taken_at_cut = counters.snapshot().taken;
    for k in 1..=50 {
        advance(&meter, 0.5 + f64::from(k) * 0.03);
    }
    let during = {
        let m = meter.lock().unwrap();
        let codes: Vec<EventCode> = m.meter().event_log().iter().map(|(_, e)| e.code).collect();
        assert_eq!(codes, [EventCode::UvTrip, EventCode::UvClear]);
        assert_eq!(m.meter().overflowed(), 0);
        let during = m.meter().produced() - before;
        assert_eq!(m.meter().buffered() as u64, during);
        during
    };
    assert!(during >= 15, "{during}");
    assert!(
        Instant::now() < at(start + duration),
        "precondition: the meter advanced inside the window"
    );
    assert_eq!(
        counters.snapshot().taken,
        taken_at_cut,
        "nothing taken while cut"
    );

    // After the window the link reconnects through the proxy and flushes the ring in order.
    wait_until("link reconnected", Duration::from_secs(15), || {
        counters.snapshot().connected == 1
    })
    .await;
    assert!(
        Instant::now() >= at(start + duration),
        "reconnected inside the window"
    );
    for k in 1..=10 {
        advance(&meter, 2.0 + f64::from(k) * 0.1);
    }
    let produced = meter.lock().unwrap().meter().produced();
    assert_eq!(produced, want.len() as u64);
    wait_until(
        "every message after the window",
        Duration::from_secs(20),
        || first_arrivals(&sub.data_of(&name, PayloadFormat::Json)).len() as u64 >= produced,
    )
    .await;
    let got = sub.data_of(&name, PayloadFormat::Json);
    assert_eq!(
        first_arrivals(&got),
        (0..produced).collect::<Vec<_>>(),
        "in order, nothing lost"
    );
    // The trip and clear measured inside the window arrived with their source times.
    let log = meter.lock().unwrap().meter().event_log().to_vec();
    let events: Vec<&serde_json::Value> = got.iter().filter(|v| v["kind"] == "event").collect();
    let events = first_events(&events);
    assert_eq!(events.len(), log.len());
    for (v, (t, e)) in events.iter().zip(&log) {
        assert_eq!(v["t"].as_f64(), Some(*t));
        assert_eq!(v["code"], e.code.name());
    }
    wait_until(
        "every publish acknowledged",
        Duration::from_secs(10),
        || counters.snapshot().acked == produced,
    )
    .await;

    let report = stop_link(stop_tx, task).await;
    assert!(report.flushed, "{report:?}");
    let stats = proxy.stop().await;
    assert_eq!(stats.cut_by_outage, 1, "{stats:?}");
    assert!(stats.connections >= 2, "{stats:?}");
    let s = counters.snapshot();
    assert!(
        s.reconnects >= 1 && s.connect_failures >= 1,
        "the link retried during the window: {s:?} {stats:?}"
    );
    assert!(stats.refused_in_outage >= 1, "{stats:?}");
}

/// Resident set size of this process, KiB (Linux; `None` elsewhere).
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Many meter links through one proxy: every connection open at once, each echoing its own
/// bytes through jitter; all intact. Prints the RSS growth per connection (informational).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections_through_one_proxy() {
    let n: usize = std::env::var("GRIDLOOP_IMPAIR_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let proxy = Proxy::start(
        ImpairProfile::new(spec(0.005, 0.005, 0.05, 0.02), Vec::new(), 8),
        Instant::now(),
    )
    .await;
    let rss0 = rss_kib();
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let s = TcpStream::connect(proxy.addr).await.unwrap();
        clients.push(s);
    }
    let mut tasks = Vec::with_capacity(n);
    for (k, mut s) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let msg = noise(200, k as u64 + 1);
            s.write_all(&msg).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg, "connection {k}");
            s
        }));
    }
    let mut open = Vec::with_capacity(n);
    for t in tasks {
        open.push(
            timeout(Duration::from_secs(60), t)
                .await
                .expect("echo within 60 s")
                .unwrap(),
        );
    }
    if let (Some(a), Some(b)) = (rss0, rss_kib()) {
        eprintln!(
            "{n} connections open through the proxy (plus echo server and clients in this \
             process): RSS +{} KiB, {:.1} KiB per connection",
            b.saturating_sub(a),
            b.saturating_sub(a) as f64 / n as f64
        );
    }
    let stats = proxy.stop().await;
    let total = 200 * n as u64;
    assert_eq!(stats.connections, n as u64, "{stats:?}");
    assert_eq!(stats.closed_by_stop, n as u64, "{stats:?}");
    assert_eq!(
        (stats.bytes_up, stats.bytes_down),
        (total, total),
        "{stats:?}"
    );
    drop(open);
}
