//! The Modbus poller against real virtual meters on 127.0.0.1 port 0: the encoding handshake
//! (int16 or CDAB served while float32 ABCD is expected → `ENCODING_MISMATCH`, nothing
//! stored), readings equal to the meters' register images, unreachable meters (closed port,
//! a listener that never answers, one that drops every connection) with back-off, a meter that
//! comes back, and a 200-unit gateway. Real sockets, so the real clock with short timeouts and
//! bounded waits on events.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use head_end::alarm::Kind;
use head_end::handshake::counter_order;
use head_end::poller::{run_poller, PollTarget, PollerConfig, PollerReport};
use head_end::{HeadEndCore, MeterInfo, PollEvent};
use sim_core::encoding::{self, RegisterEncoding, WordOrder};
use sim_core::scenario::HeadEndSpec;
use sim_core::Scenario;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use virtual_meter::live::group_model;
use virtual_meter::registers::{MapOptions, RegisterMap};
use virtual_meter::service::serve;
use virtual_meter::{LiveMeter, MeterRef, SharedMeter, Units};

const F_ABCD: RegisterEncoding = RegisterEncoding::Float32(WordOrder::Abcd);
const F_CDAB: RegisterEncoding = RegisterEncoding::Float32(WordOrder::Cdab);
const I16: RegisterEncoding = RegisterEncoding::Int16 { scale: 0.1 };
const EPOCH_MS: u64 = 1_700_000_000_000;

fn scenario(count: u32) -> Scenario {
    let yaml = format!(
        r#"
schema: 1
name: poller
seed: 7
duration: 10s
grid: {{ nominal: 230.0, frequency: 50.0, phases: 3, sample_rate: 6400 }}
meters:
  - group: feeder-a
    count: {count}
    substation: sub-01
    fidelity: rms
    thresholds: {{ upper: 253.0, lower: 207.0, hysteresis: 2.0 }}
events:
  # Unequal phases at the time the meters are read (1 s), so a swapped phase would show.
  - {{ at: 0.5s, sag: {{ phases: [L2], residual: 0.93, duration: 5s }} }}
  - {{ at: 0.5s, swell: {{ phases: [L3], magnitude: 1.04, duration: 5s }} }}
"#
    );
    scenarios::load_str(&yaml, Path::new("poller.yaml")).expect("scenario")
}

/// `count` meters serving `enc`, advanced to 1 s of grid time (values measured, frequency
/// known), not paced further: what a read sees is fixed.
fn meters(count: u32, enc: RegisterEncoding) -> Vec<SharedMeter> {
    meters_with(
        count,
        RegisterMap::default_map(MapOptions::with_analog(enc)),
    )
}

fn meters_with(count: u32, map: RegisterMap) -> Vec<SharedMeter> {
    let sc = scenario(count);
    let map = Arc::new(map);
    let model = group_model(&sc, 0);
    (0..count)
        .map(|index| {
            let mut m = LiveMeter::with_model(
                &sc,
                MeterRef { group: 0, index },
                map.clone(),
                model.clone(),
            );
            m.advance_to(1.0);
            Arc::new(Mutex::new(m))
        })
        .collect()
}

struct Served {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Served {
    async fn on(listener: TcpListener, units: Units) -> Served {
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let stop = Box::pin(async move {
            let _ = rx.await;
        });
        let task = tokio::spawn(serve(listener, Arc::new(units), stop));
        Served {
            addr,
            stop: Some(tx),
            task,
        }
    }

    async fn start(units: Units) -> Served {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Served::on(listener, units).await
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = self.task.await;
    }
}

fn target(
    meter: u32,
    addr: SocketAddr,
    unit: Option<u8>,
    expected: RegisterEncoding,
) -> PollTarget {
    PollTarget {
        meter,
        info: MeterInfo {
            name: format!("feeder-a/{meter}"),
            substation: "sub-01".into(),
            group: "feeder-a".into(),
        },
        addr,
        unit,
        expected,
        interval: Duration::from_millis(20),
        channels: 3,
        epoch_ms: Some(EPOCH_MS),
    }
}

fn fast() -> PollerConfig {
    PollerConfig {
        timeout: Duration::from_millis(50),
        retries: 2,
        backoff_min: Duration::from_millis(40),
        backoff_max: Duration::from_millis(100),
        ..PollerConfig::default()
    }
}

/// A running poller and the events it sent.
struct Running {
    rx: mpsc::Receiver<PollEvent>,
    stop: watch::Sender<bool>,
    task: JoinHandle<PollerReport>,
    seen: Vec<(Instant, PollEvent)>,
}

impl Running {
    fn start(targets: Vec<PollTarget>, cfg: PollerConfig) -> Running {
        let (tx, rx) = mpsc::channel(1024);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run_poller(targets, cfg, tx, stop_rx));
        Running {
            rx,
            stop,
            task,
            seen: Vec::new(),
        }
    }

    /// Receive until `done(all events so far)` holds; panics after `within`.
    async fn until(&mut self, within: Duration, done: impl Fn(&[(Instant, PollEvent)]) -> bool) {
        let deadline = Instant::now() + within;
        while !done(&self.seen) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(ev)) => self.seen.push((Instant::now(), ev)),
                Ok(None) => panic!("poller ended; events: {:?}", self.events()),
                Err(_) => panic!(
                    "condition not met within {within:?}; events: {:?}",
                    self.events()
                ),
            }
        }
    }

    /// Everything that arrives within `window` (for "nothing more happens" checks).
    async fn collect_for(&mut self, window: Duration) {
        let deadline = Instant::now() + window;
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            self.seen.push((Instant::now(), ev));
        }
    }

    fn events(&self) -> Vec<PollEvent> {
        self.seen.iter().map(|(_, e)| e.clone()).collect()
    }

    async fn stop(mut self) -> (Vec<PollEvent>, PollerReport) {
        let _ = self.stop.send(true);
        // Drain so a sender blocked on a full channel can see the stop.
        let report = loop {
            tokio::select! {
                r = &mut self.task => break r.expect("poller task"),
                Some(ev) = self.rx.recv() => self.seen.push((Instant::now(), ev)),
            }
        };
        (self.events(), report)
    }
}

fn count(events: &[(Instant, PollEvent)], f: impl Fn(&PollEvent) -> bool) -> usize {
    events.iter().filter(|(_, e)| f(e)).count()
}

fn readings_of(events: &[PollEvent], meter: u32) -> Vec<(u64, [f32; 3])> {
    events
        .iter()
        .filter_map(|e| match e {
            PollEvent::Reading {
                meter: m,
                source_ms,
                volts,
            } if *m == meter => Some((*source_ms, *volts)),
            _ => None,
        })
        .collect()
}

/// What the meter's register image holds for its voltages, decoded independently of the
/// poller: the true values through `enc`'s encode/decode.
fn image_volts(m: &SharedMeter, enc: RegisterEncoding) -> [f32; 3] {
    let truth = m.lock().expect("meter").image().state().voltage;
    truth.map(|v| {
        let regs = encoding::encode(v, enc).expect("encodable");
        encoding::decode(&regs, enc).expect("decodable") as f32
    })
}

/// Feed events through the head-end core as its live shell would.
fn ingest(core: &mut HeadEndCore, events: &[PollEvent]) -> Vec<head_end::AlarmRecord> {
    let mut out = Vec::new();
    for (k, ev) in events.iter().enumerate() {
        core.on_poll(ev.clone(), EPOCH_MS + 2_000 + k as u64, &mut out);
    }
    out
}

async fn mismatch_case(served: RegisterEncoding, expected: RegisterEncoding, names: &str) {
    let ms = meters(1, served);
    let server = Served::start(Units::Single(ms[0].clone())).await;
    let mut poller = Running::start(vec![target(5, server.addr, None, expected)], fast());
    poller
        .until(Duration::from_secs(5), |ev| {
            count(ev, |e| matches!(e, PollEvent::EncodingMismatch { .. })) == 1
        })
        .await;
    // Several more intervals: still no reading, no second mismatch.
    poller.collect_for(Duration::from_millis(150)).await;
    let (events, report) = poller.stop().await;
    server.stop().await;

    assert_eq!(events[0], PollEvent::Reachable { meter: 5 }, "{events:?}");
    let details: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            PollEvent::EncodingMismatch { meter: 5, detail } => Some(detail),
            _ => None,
        })
        .collect();
    assert_eq!(details.len(), 1, "{events:?}");
    assert!(details[0].contains(names), "{}", details[0]);
    assert!(readings_of(&events, 5).is_empty(), "{events:?}");
    assert_eq!(report.mismatches, 1);
    assert_eq!(report.readings, 0);
    assert!(report.polls >= 3, "{report:?}");

    let mut core = HeadEndCore::new(HeadEndSpec::default(), "he-1");
    core.expect_meter(5, MeterInfo::default(), EPOCH_MS);
    let alarms = ingest(&mut core, &events);
    let mismatch: Vec<_> = alarms
        .iter()
        .filter(|a| a.kind == Kind::EncodingMismatch)
        .collect();
    assert_eq!(mismatch.len(), 1, "{alarms:?}");
    assert_eq!(mismatch[0].meter, 5);
    assert_eq!(mismatch[0].detail.as_deref(), Some(details[0].as_str()));
    assert_eq!(core.latest(5), None);
    assert_eq!(core.stats().polled, 0);
}

#[tokio::test]
async fn int16_served_float32_expected_is_an_encoding_mismatch_with_nothing_stored() {
    mismatch_case(
        I16,
        F_ABCD,
        "expected float32 ABCD; VOLTAGE_L1_REG 0x0024 = [0x08",
    )
    .await;
}

#[tokio::test]
async fn cdab_served_abcd_expected_is_an_encoding_mismatch_with_nothing_stored() {
    mismatch_case(F_CDAB, F_ABCD, "plausible as float32 CDAB (").await;
}

#[tokio::test]
async fn float32_served_int16_expected_is_an_encoding_mismatch() {
    mismatch_case(
        F_ABCD,
        I16,
        "expected int16 ×0.1; VOLTAGE_L1_REG 0x0024 = [0x43",
    )
    .await;
}

async fn matching_case(enc: RegisterEncoding) {
    let ms = meters(1, enc);
    let server = Served::start(Units::Single(ms[0].clone())).await;
    let mut poller = Running::start(vec![target(9, server.addr, None, enc)], fast());
    poller
        .until(Duration::from_secs(5), |ev| {
            count(ev, |e| matches!(e, PollEvent::Reading { .. })) >= 3
        })
        .await;
    let (events, report) = poller.stop().await;
    server.stop().await;

    assert_eq!(events[0], PollEvent::Reachable { meter: 9 });
    let expected = image_volts(&ms[0], enc);
    for (src, volts) in readings_of(&events, 9) {
        assert_eq!(volts, expected);
        // 1.0 s of grid time after the epoch.
        assert_eq!(src, EPOCH_MS + 1_000);
        // L1 nominal, L2 sagged to 0.93 pu, L3 swollen to 1.04 pu.
        for (v, pu) in volts.iter().zip([1.0, 0.93, 1.04]) {
            assert!((f64::from(*v) - 230.0 * pu).abs() < 1.0, "{volts:?}");
        }
    }
    assert_eq!(report.mismatches, 0);
    assert_eq!(
        report.handshakes, 1,
        "one connection, one handshake: {report:?}"
    );
    assert_eq!(report.unreachable_episodes, 0);
    // The handshake's width probes: one 1-register read per analog point, refused (0x02)
    // where a 32-bit value starts; none for int16.
    let probes = if encoding::register_count(enc) == 2 {
        4
    } else {
        0
    };
    assert_eq!(report.exceptions, probes, "{report:?}");

    let mut core = HeadEndCore::new(HeadEndSpec::default(), "he-1");
    let alarms = ingest(&mut core, &events);
    assert!(alarms.is_empty(), "{alarms:?}");
    assert_eq!(core.latest(9).map(|l| l.volts), Some(expected));
    assert_eq!(core.stats().polled, readings_of(&events, 9).len() as u64);
}

#[tokio::test]
async fn float32_abcd_readings_equal_the_register_image() {
    matching_case(F_ABCD).await;
}

#[tokio::test]
async fn other_encodings_read_as_verified_equal_the_register_image() {
    for enc in [
        F_CDAB,
        RegisterEncoding::Float32(WordOrder::Dcba),
        I16,
        RegisterEncoding::Uint32 {
            scale: 0.01,
            word_order: WordOrder::Badc,
        },
    ] {
        matching_case(enc).await;
    }
    // The source time is read in the counters' word order.
    assert_eq!(counter_order(I16), WordOrder::Abcd);
}

#[tokio::test]
async fn a_closed_port_is_unreachable_once_with_bounded_spaced_attempts() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let cfg = fast();
    let mut poller = Running::start(vec![target(1, addr, None, F_ABCD)], cfg.clone());
    poller
        .until(Duration::from_secs(2), |ev| {
            count(ev, |e| matches!(e, PollEvent::Unreachable { .. })) == 1
        })
        .await;
    let window = Duration::from_millis(400);
    poller.collect_for(window).await;
    let (events, r) = poller.stop().await;
    let PollEvent::Unreachable { meter: 1, detail } = &events[0] else {
        panic!("{events:?}")
    };
    assert!(
        detail.starts_with(&format!("{addr}: cannot connect: ")),
        "{detail}"
    );
    assert_eq!(events.len(), 1, "one episode, one event: {events:?}");
    // Every poll tries 1 + retries connects; back-off waits at least 20, 40, 50, 50 … ms,
    // so in ~400 ms there are at most 9 polls; at least the first and one more.
    assert!((2..=9).contains(&r.polls), "{r:?}");
    assert_eq!(r.connect_failures, r.polls * 3, "{r:?}");
    assert_eq!(r.retries, r.polls * 2, "{r:?}");
    assert_eq!(r.unreachable_episodes, 1);
    assert_eq!(r.answered, 0);
}

#[tokio::test]
async fn a_peer_that_drops_every_connection_is_retried_then_backed_off() {
    // Accepts and closes at once; the accept times show the spacing.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (acc_tx, mut acc_rx) = mpsc::unbounded_channel::<Instant>();
    let acceptor = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = acc_tx.send(Instant::now());
            drop(s);
        }
    });
    let cfg = fast();
    let poller = Running::start(vec![target(2, addr, None, F_ABCD)], cfg.clone());
    let mut accepts = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while accepts.len() < 9 {
        match tokio::time::timeout_at(deadline, acc_rx.recv()).await {
            Ok(Some(t)) => accepts.push(t),
            _ => panic!("only {} connects", accepts.len()),
        }
    }
    let (events, r) = poller.stop().await;
    acceptor.abort();
    // Polls of 3 attempts each (1 + 2 retries); between polls the back-off: ≥ 50 % of 40 ms
    // after the first episode, ≥ 50 % of 80 ms after the second.
    let gap = |a: usize, b: usize| accepts[b] - accepts[a];
    assert!(gap(2, 3) >= Duration::from_millis(20), "{:?}", gap(2, 3));
    assert!(gap(5, 6) >= Duration::from_millis(40), "{:?}", gap(5, 6));
    assert!(
        gap(0, 2) < gap(2, 3),
        "retries go at once, the back-off waits"
    );
    let unreachable: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, PollEvent::Unreachable { .. }))
        .collect();
    assert_eq!(unreachable.len(), 1, "{events:?}");
    assert!(!events
        .iter()
        .any(|e| matches!(e, PollEvent::Reachable { .. })));
    assert!(r.polls >= 3 && r.reconnects >= 8, "{r:?}");
}

#[tokio::test]
async fn a_listener_that_never_answers_times_out_into_unreachable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let cfg = fast();
    let t0 = Instant::now();
    let mut poller = Running::start(vec![target(3, addr, None, F_ABCD)], cfg.clone());
    poller
        .until(Duration::from_secs(3), |ev| {
            count(ev, |e| matches!(e, PollEvent::Unreachable { .. })) == 1
        })
        .await;
    let took = t0.elapsed();
    let (events, r) = poller.stop().await;
    holder.abort();
    let PollEvent::Unreachable { meter: 3, detail } = &events[0] else {
        panic!("{events:?}")
    };
    assert!(detail.contains("no answer within 50ms"), "{detail}");
    // Three attempts of one 50 ms timeout each before the verdict.
    assert!(took >= Duration::from_millis(150), "{took:?}");
    assert!(r.timeouts >= 3, "{r:?}");
    assert_eq!(r.unreachable_episodes, 1);
    assert_eq!(r.answered, 0);
}

#[tokio::test]
async fn a_meter_that_comes_back_is_reachable_and_read_again() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let mut poller = Running::start(vec![target(4, addr, None, F_ABCD)], fast());
    poller
        .until(Duration::from_secs(2), |ev| {
            count(ev, |e| matches!(e, PollEvent::Unreachable { .. })) == 1
        })
        .await;
    let ms = meters(1, F_ABCD);
    let listener = TcpListener::bind(addr).await.expect("rebind the same port");
    let server = Served::on(listener, Units::Single(ms[0].clone())).await;
    poller
        .until(Duration::from_secs(3), |ev| {
            count(ev, |e| matches!(e, PollEvent::Reading { .. })) >= 2
        })
        .await;
    let (events, r) = poller.stop().await;
    server.stop().await;
    assert!(matches!(events[0], PollEvent::Unreachable { meter: 4, .. }));
    assert_eq!(events[1], PollEvent::Reachable { meter: 4 });
    assert_eq!(count_kind(&events, "unreachable"), 1);
    assert_eq!(count_kind(&events, "reachable"), 1);
    let expected = image_volts(&ms[0], F_ABCD);
    assert!(readings_of(&events, 4).iter().all(|(_, v)| *v == expected));
    assert_eq!(r.unreachable_episodes, 1);

    // The head-end raises UNREACHABLE once and then stores the readings.
    let mut core = HeadEndCore::new(HeadEndSpec::default(), "he-1");
    let alarms = ingest(&mut core, &events);
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    assert_eq!(alarms[0].kind, Kind::Unreachable);
    assert_eq!(core.latest(4).map(|l| l.volts), Some(expected));
}

fn count_kind(events: &[PollEvent], kind: &str) -> usize {
    events
        .iter()
        .filter(|e| {
            matches!(
                (e, kind),
                (PollEvent::Unreachable { .. }, "unreachable")
                    | (PollEvent::Reachable { .. }, "reachable")
            )
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_of_200_meters_is_polled_on_one_connection() {
    let n = 200_u32;
    let ms = meters(n, F_ABCD);
    let server = Served::start(Units::Gateway(ms.clone())).await;
    let mut targets: Vec<PollTarget> = (0..n)
        .map(|i| {
            let mut t = target(1000 + i, server.addr, Some(i as u8 + 1), F_ABCD);
            t.interval = Duration::from_millis(200);
            t
        })
        .collect();
    // Unit 201 has no meter: the gateway answers 0x0B, so that meter is unreachable.
    let mut absent = target(9999, server.addr, Some(201), F_ABCD);
    absent.interval = Duration::from_millis(200);
    targets.push(absent);
    let mut poller = Running::start(targets, fast());
    poller
        .until(Duration::from_secs(20), |ev| {
            let mut read = std::collections::HashSet::new();
            for (_, e) in ev {
                if let PollEvent::Reading { meter, .. } = e {
                    read.insert(*meter);
                }
            }
            read.len() == n as usize
                && count(ev, |e| {
                    matches!(e, PollEvent::Unreachable { meter: 9999, .. })
                }) == 1
        })
        .await;
    let (events, r) = poller.stop().await;
    server.stop().await;
    for i in 0..n {
        let expected = image_volts(&ms[i as usize], F_ABCD);
        let got = readings_of(&events, 1000 + i);
        assert!(!got.is_empty(), "meter {i}");
        assert!(got.iter().all(|(_, v)| *v == expected), "meter {i}");
    }
    let absent: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            PollEvent::Unreachable {
                meter: 9999,
                detail,
            } => Some(detail.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(absent.len(), 1);
    assert!(absent[0].contains("unit 201: gateway"), "{}", absent[0]);
    assert!(r.exceptions >= 3, "{r:?}");
    assert_eq!(r.reconnects, 0, "one connection throughout: {r:?}");
    // Each present meter verified once on the one connection; the absent unit fails its
    // handshake on every attempt (1 + 2 retries per poll).
    let absent_attempts = r.handshakes - u64::from(n);
    assert!(absent_attempts >= 3 && absent_attempts % 3 == 0, "{r:?}");
}

#[tokio::test]
async fn exception_answers_are_answers_and_a_partial_map_is_read_point_by_point() {
    // Only the voltages are mapped: status, firmware, frequency, the 46-register block and the
    // source time are all refused with 0x02 Illegal Data Address.
    let conf = "VOLTAGE_L1_REG = 0x0024\nVOLTAGE_L2_REG = 0x0026\nVOLTAGE_L3_REG = 0x0028\n";
    let map = RegisterMap::parse_conf(conf, "partial.conf", MapOptions::default()).expect("map");
    let ms = meters_with(1, map);
    let server = Served::start(Units::Single(ms[0].clone())).await;
    let before = unix_ms();
    let mut poller = Running::start(vec![target(6, server.addr, None, F_ABCD)], fast());
    poller
        .until(Duration::from_secs(5), |ev| {
            count(ev, |e| matches!(e, PollEvent::Reading { .. })) >= 2
        })
        .await;
    let (events, r) = poller.stop().await;
    let after = unix_ms();
    server.stop().await;
    assert_eq!(events[0], PollEvent::Reachable { meter: 6 });
    let expected = image_volts(&ms[0], F_ABCD);
    for (src, volts) in readings_of(&events, 6) {
        assert_eq!(volts, expected);
        // No SOURCE_TIME_REG: the receive time, not the epoch.
        assert!((before..=after).contains(&src), "{src}");
    }
    // Handshake: status+firmware (1), the 1-register width probe of each voltage (3), the
    // frequency at 2, 1 (width probe) and 1 registers (3); first poll: the block (1); then the
    // source time on every poll (one per reading, one more if the stop cut a poll short).
    let base = 1 + 3 + 3 + 1 + r.readings;
    assert!((base..=base + 1).contains(&r.exceptions), "{r:?}");
    assert_eq!(r.unreachable_episodes, 0);
    assert!(r.polls - r.answered <= 1, "every poll answered: {r:?}");
    assert_eq!(r.timeouts, 0);
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Threads of this process (Linux), for the "no thread per meter" check.
fn threads() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

/// Many single-meter ports (500; `GRIDLOOP_POLLER_PORTS` for more): one connection each,
/// every meter read, on the runtime's two worker threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_single_meter_ports_are_polled_without_a_thread_each() {
    let n: u32 = std::env::var("GRIDLOOP_POLLER_PORTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let ms = meters(n, F_ABCD);
    let mut servers = Vec::new();
    let mut targets = Vec::new();
    for (i, m) in ms.iter().enumerate() {
        let server = Served::start(Units::Single(m.clone())).await;
        let mut t = target(i as u32, server.addr, None, F_ABCD);
        t.interval = Duration::from_secs(1);
        targets.push(t);
        servers.push(server);
    }
    let cfg = PollerConfig {
        max_in_flight: 64,
        ..fast()
    };
    let t0 = Instant::now();
    let mut poller = Running::start(targets, cfg);
    poller
        .until(Duration::from_secs(60), |ev| {
            count(ev, |e| matches!(e, PollEvent::Reading { .. })) >= n as usize
        })
        .await;
    let took = t0.elapsed();
    let during = threads();
    let (events, r) = poller.stop().await;
    for s in servers {
        s.stop().await;
    }
    let expected = image_volts(&ms[0], F_ABCD);
    for i in 0..n {
        let got = readings_of(&events, i);
        assert_eq!(
            got.len(),
            1,
            "meter {i}: one poll within the first interval"
        );
        assert_eq!(got[0].1, expected, "meter {i}");
    }
    assert_eq!(r.unreachable_episodes, 0, "{r:?}");
    assert_eq!(r.reconnects, 0, "{r:?}");
    // The test harness's threads, two workers and tokio's blocking pool (unused): nowhere
    // near one per port.
    if let Some(t) = during {
        assert!(t < 32, "{t} threads for {n} ports");
    }
    tracing::info!(?took, ?during, "{n} ports: first reading of every meter");
    std::hint::black_box(took);
}

/// A gateway whose unit `silent` never answers (the others do, through the virtual meters'
/// service): a Modbus timeout for that unit only.
#[derive(Clone)]
struct SilentUnit {
    inner: virtual_meter::MeterService,
    silent: u8,
}

impl tokio_modbus::server::Service for SilentUnit {
    type Request = tokio_modbus::SlaveRequest<'static>;
    type Response = Option<tokio_modbus::Response>;
    type Exception = tokio_modbus::ExceptionCode;
    type Future = std::future::Ready<Result<Self::Response, Self::Exception>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        if req.slave == self.silent {
            return std::future::ready(Ok(None));
        }
        let answer = futures_ready(self.inner.call(req));
        std::future::ready(answer.map(Some))
    }
}

/// The virtual meters' service answers at once (a `Ready` future).
fn futures_ready<T>(f: std::future::Ready<T>) -> T {
    f.into_inner()
}

/// One silent unit behind a shared gateway connection drops the connection (a late answer
/// would be taken for the next request's), but the other units were verified on it and are
/// not put through the handshake again on the new one: handshakes stay at one per answering
/// unit however many times the silent one times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_silent_unit_does_not_make_its_gateway_neighbours_verify_again() {
    use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
    let n = 3_u32;
    let ms = meters(n, F_ABCD);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = SilentUnit {
        inner: virtual_meter::MeterService::new(Arc::new(Units::Gateway(ms.clone()))),
        silent: 4,
    };
    let new_service = move |_addr: SocketAddr| Ok(Some(service.clone()));
    let on_connected = move |stream, addr| {
        let new_service = new_service.clone();
        async move { accept_tcp_connection(stream, addr, new_service) }
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = Server::new(listener)
            .serve_until(
                &on_connected,
                |_e: std::io::Error| {},
                Box::pin(async move {
                    let _ = stop_rx.await;
                }),
            )
            .await;
    });
    let mut targets: Vec<PollTarget> = (0..n)
        .map(|i| {
            let mut t = target(2000 + i, addr, Some(i as u8 + 1), F_ABCD);
            t.interval = Duration::from_millis(100);
            t
        })
        .collect();
    let mut silent = target(2999, addr, Some(4), F_ABCD);
    silent.interval = Duration::from_millis(100);
    targets.push(silent);
    let mut poller = Running::start(targets, fast());
    // Enough time for the silent unit to time out (with retries) several times.
    poller
        .until(Duration::from_secs(20), |ev| {
            count(ev, |e| matches!(e, PollEvent::Reading { meter: 2000, .. })) >= 8
                && count(ev, |e| {
                    matches!(e, PollEvent::Unreachable { meter: 2999, .. })
                }) == 1
        })
        .await;
    let (_, r) = poller.stop().await;
    let _ = stop_tx.send(());
    let _ = server.await;
    assert!(
        r.reconnects >= 2,
        "the silent unit's timeouts dropped the connection: {r:?}"
    );
    // Each answering unit verified once; the silent one attempts a handshake per try.
    let answering_handshakes = r.handshakes - (r.timeouts.min(r.handshakes));
    assert!(
        answering_handshakes <= u64::from(n) + 1,
        "the neighbours were verified again after reconnects: {r:?}"
    );
}
