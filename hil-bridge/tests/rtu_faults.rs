//! The RTU reader against an in-process fake device on a `tokio::io::duplex` pipe: good answers,
//! bad CRCs, truncated frames, silence, exceptions, stale bytes and the inter-frame silence — no
//! Python, no serial port, tokio's paused clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hil_bridge::reader::{MeterReader, ReadError, RegisterMap, RtuClient, RtuConfig};
use hil_bridge::rtu::{
    self, Answer, DeviceException, LinkError, ReadRequest, RegisterKind, Request, Response,
};
use sim_core::encoding::{encode_f32, WordOrder};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

/// What the fake device does with one request.
enum Reply {
    Frame(Vec<u8>),
    Silence,
}

/// A frame with its CRC appended (CRC from the crate; the CRC itself is tested against spec
/// check values and an independent table in `rtu`).
fn with_crc(mut bytes: Vec<u8>) -> Vec<u8> {
    let crc = rtu::crc16(&bytes);
    bytes.extend(crc.to_le_bytes());
    bytes
}

/// A good FC03 answer carrying `regs`.
fn registers(unit: u8, regs: &[u16]) -> Vec<u8> {
    let mut f = vec![unit, 0x03, (regs.len() * 2) as u8];
    for r in regs {
        f.extend(r.to_be_bytes());
    }
    with_crc(f)
}

/// Receipt times of the requests a fake device saw.
type Log = Arc<Mutex<Vec<(Instant, Vec<u8>)>>>;

/// Run a fake device on `io`: read 8-byte requests (FC03 reads), answer with `reply(n, request)`,
/// until the client closes the pipe. Returns the log of requests.
fn spawn_device(
    mut io: DuplexStream,
    mut reply: impl FnMut(usize, &[u8]) -> Reply + Send + 'static,
    stale: Vec<u8>,
) -> (Log, tokio::task::JoinHandle<()>) {
    let log: Log = Arc::default();
    let seen = log.clone();
    let task = tokio::spawn(async move {
        if !stale.is_empty() && io.write_all(&stale).await.is_err() {
            return;
        }
        for n in 0..1000 {
            let mut req = [0u8; 8];
            if io.read_exact(&mut req).await.is_err() {
                return; // client gone
            }
            seen.lock()
                .expect("log")
                .push((Instant::now(), req.to_vec()));
            if let Reply::Frame(f) = reply(n, &req) {
                if io.write_all(&f).await.is_err() {
                    return;
                }
            }
        }
    });
    (log, task)
}

fn config(retries: u32) -> RtuConfig {
    RtuConfig {
        retries,
        timeout: Duration::from_millis(200),
        ..RtuConfig::default()
    }
}

fn read_req(start: u16, count: u16) -> Request {
    Request::Read(ReadRequest::new(RegisterKind::Holding, start, count).expect("valid"))
}

#[tokio::test(start_paused = true)]
async fn good_answer_and_the_request_on_the_wire() {
    let (a, b) = tokio::io::duplex(1024);
    let (log, dev) = spawn_device(
        b,
        |_, _| Reply::Frame(registers(1, &[0x4366, 0x199A])),
        vec![],
    );
    let mut client = RtuClient::new(a, "fake", config(2));
    let answer = client.call(&read_req(0x0024, 2)).await;
    assert_eq!(
        answer,
        Ok(Answer::Value(Response::Registers(vec![0x4366, 0x199A])))
    );
    drop(client);
    dev.await.expect("device");
    let log = log.lock().expect("log");
    assert_eq!(log.len(), 1);
    // unit 1, FC03, start 0x0024, count 2, CRC low byte first.
    assert_eq!(log[0].1, with_crc(vec![1, 3, 0x00, 0x24, 0x00, 0x02]));
}

#[tokio::test(start_paused = true)]
async fn bad_crc_is_a_link_error_after_every_retry() {
    let (a, b) = tokio::io::duplex(1024);
    let (log, dev) = spawn_device(
        b,
        |_, _| {
            let mut f = registers(1, &[0x4366, 0x199A]);
            f[4] ^= 0x40;
            Reply::Frame(f)
        },
        vec![],
    );
    let mut client = RtuClient::new(a, "/dev/ttyFAKE", config(2));
    let err = client.call(&read_req(0x0024, 2)).await.expect_err("crc");
    assert!(matches!(err, LinkError::Crc { .. }), "{err}");
    assert!(
        err.to_string().starts_with("/dev/ttyFAKE: CRC mismatch"),
        "{err}"
    );
    assert_eq!(client.frames_sent(), 3, "1 attempt + 2 retries");
    drop(client);
    dev.await.expect("device");
    assert_eq!(log.lock().expect("log").len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_retry_recovers_from_one_bad_crc() {
    let (a, b) = tokio::io::duplex(1024);
    let (_log, dev) = spawn_device(
        b,
        |n, _| {
            let mut f = registers(1, &[0x4248, 0x0000]);
            if n == 0 {
                f[3] ^= 0x01;
            }
            Reply::Frame(f)
        },
        vec![],
    );
    let mut client = RtuClient::new(a, "fake", config(1));
    let answer = client.call(&read_req(0x0030, 2)).await;
    assert_eq!(
        answer,
        Ok(Answer::Value(Response::Registers(vec![0x4248, 0])))
    );
    assert_eq!(client.frames_sent(), 2);
    drop(client);
    dev.await.expect("device");
}

#[tokio::test(start_paused = true)]
async fn truncated_frame_then_silence_is_truncated() {
    let (a, b) = tokio::io::duplex(1024);
    let (_log, dev) = spawn_device(
        b,
        |_, _| Reply::Frame(registers(1, &[0x4366, 0x199A])[..6].to_vec()),
        vec![],
    );
    let mut client = RtuClient::new(a, "fake", config(1));
    let started = Instant::now();
    let err = client
        .call(&read_req(0x0024, 2))
        .await
        .expect_err("truncated");
    assert_eq!(
        err,
        LinkError::Truncated {
            peer: "fake".into(),
            expected: 9,
            got: 6
        }
    );
    assert_eq!(client.frames_sent(), 2);
    // Two attempts, each waiting its full 200 ms timeout (plus t3.5 before each request).
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(410),
        "{took:?}"
    );
    drop(client);
    dev.await.expect("device");
}

#[tokio::test(start_paused = true)]
async fn silence_is_a_timeout() {
    let (a, b) = tokio::io::duplex(1024);
    let (log, dev) = spawn_device(b, |_, _| Reply::Silence, vec![]);
    let mut client = RtuClient::new(a, "fake", config(2));
    let err = client
        .call(&read_req(0x0024, 2))
        .await
        .expect_err("timeout");
    assert_eq!(
        err,
        LinkError::Timeout {
            peer: "fake".into(),
            after: Duration::from_millis(200)
        }
    );
    assert_eq!(err.to_string(), "fake: no response within 200ms");
    drop(client);
    dev.await.expect("device");
    assert_eq!(log.lock().expect("log").len(), 3);
}

#[tokio::test(start_paused = true)]
async fn exception_is_an_answer_and_never_retried() {
    let (a, b) = tokio::io::duplex(1024);
    let (log, dev) = spawn_device(
        b,
        |_, _| Reply::Frame(with_crc(vec![1, 0x83, 0x02])),
        vec![],
    );
    let mut client = RtuClient::new(a, "fake", config(3));
    let answer = client.call(&read_req(0x0100, 2)).await;
    assert_eq!(
        answer,
        Ok(Answer::Exception(DeviceException {
            function: 3,
            code: 2
        }))
    );
    assert_eq!(client.frames_sent(), 1);
    drop(client);
    dev.await.expect("device");
    assert_eq!(log.lock().expect("log").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn wrong_unit_is_unexpected() {
    let (a, b) = tokio::io::duplex(1024);
    let (_log, dev) = spawn_device(b, |_, _| Reply::Frame(registers(9, &[1, 2])), vec![]);
    let mut client = RtuClient::new(a, "fake", config(0));
    let err = client.call(&read_req(0x0024, 2)).await.expect_err("unit");
    assert!(matches!(err, LinkError::Unexpected { .. }), "{err}");
    assert!(
        err.to_string().contains("unit id 9 answered, 1 was asked"),
        "{err}"
    );
    drop(client);
    dev.await.expect("device");
}

#[tokio::test(start_paused = true)]
async fn stale_bytes_are_flushed_before_the_request() {
    let (a, b) = tokio::io::duplex(1024);
    // A late answer to an earlier request sits in the line before we ask.
    let stale = registers(1, &[0xDEAD, 0xBEEF]);
    let (_log, dev) = spawn_device(
        b,
        |_, _| Reply::Frame(registers(1, &[0x4366, 0x199A])),
        stale,
    );
    let mut client = RtuClient::new(a, "fake", config(0));
    let answer = client.call(&read_req(0x0024, 2)).await;
    assert_eq!(
        answer,
        Ok(Answer::Value(Response::Registers(vec![0x4366, 0x199A])))
    );
    drop(client);
    dev.await.expect("device");
}

#[tokio::test(start_paused = true)]
async fn requests_are_separated_by_the_inter_frame_silence() {
    let (a, b) = tokio::io::duplex(1024);
    let answered: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let answered_dev = answered.clone();
    let (log, dev) = spawn_device(
        b,
        move |_, _| {
            answered_dev.lock().expect("log").push(Instant::now());
            Reply::Frame(registers(1, &[1, 2]))
        },
        vec![],
    );
    let mut client = RtuClient::new(a, "fake", config(0));
    for _ in 0..3 {
        assert!(client.call(&read_req(0x0024, 2)).await.is_ok());
    }
    drop(client);
    dev.await.expect("device");
    let log = log.lock().expect("log");
    let answered = answered.lock().expect("log");
    assert_eq!(log.len(), 3);
    // 115200 Bd is above 19200: t3.5 is the fixed 1.75 ms. The paused clock makes the gap
    // exactly the sleep, which tokio's 1 ms timer wheel rounds up: 1.75 ms ≤ gap < 2.75 ms.
    for i in 1..3 {
        let gap = log[i].0 - answered[i - 1];
        assert!(
            gap >= Duration::from_micros(1750) && gap < Duration::from_micros(2750),
            "gap before request {i}: {gap:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn meter_reader_keeps_each_register_result_apart() {
    let (a, b) = tokio::io::duplex(1024);
    // A meter whose L3 register answers exception 0x02 and whose frequency register is silent.
    let (_log, dev) = spawn_device(
        b,
        |_, req| {
            let start = u16::from_be_bytes([req[2], req[3]]);
            let value = match start {
                0x0024 => 230.1f32,
                0x0026 => 231.2,
                0x0028 => return Reply::Frame(with_crc(vec![1, 0x83, 0x02])),
                _ => return Reply::Silence,
            };
            Reply::Frame(registers(1, &encode_f32(value, WordOrder::Abcd)))
        },
        vec![],
    );
    let client = RtuClient::new(a, "fake", config(1));
    let mut meter = MeterReader::new(client, RegisterMap::default());
    let reading = meter.read().await;
    assert_eq!(reading.voltage[0], Ok(f64::from(230.1f32)));
    assert_eq!(reading.voltage[1], Ok(f64::from(231.2f32)));
    assert_eq!(
        reading.voltage[2],
        Err(ReadError::Exception {
            name: "voltage_l3",
            register: 0x0028,
            code: 2
        })
    );
    let freq = reading.frequency.expect_err("silent");
    assert!(
        matches!(
            &freq,
            ReadError::Link {
                source: LinkError::Timeout { .. },
                register: 0x0030,
                ..
            }
        ),
        "{freq}"
    );
    assert_eq!(
        freq.to_string(),
        "frequency (register 0x0030): link failed: fake: no response within 200ms"
    );
    // 4 values: 3 answered at once (the exception too), the silent one 2 attempts.
    assert_eq!(meter.client_mut().frames_sent(), 5);
    drop(meter);
    dev.await.expect("device");
}

#[tokio::test(start_paused = true)]
async fn write_single_register_echo() {
    let (a, b) = tokio::io::duplex(1024);
    // FC06's normal answer echoes the request.
    let (_log, dev) = spawn_device(b, |_, req| Reply::Frame(req.to_vec()), vec![]);
    let mut client = RtuClient::new(a, "fake", config(0));
    let answer = client
        .call(&Request::WriteSingle {
            address: 0x0101,
            value: 0x00FF,
        })
        .await;
    assert_eq!(
        answer,
        Ok(Answer::Value(Response::WroteSingle {
            address: 0x0101,
            value: 0x00FF
        }))
    );
    drop(client);
    dev.await.expect("device");
}
