//! Idle connections on tokio's paused clock (real loopback sockets, virtual time): a client that
//! sends nothing, or stalls inside a partial frame, is closed after the idle timeout while
//! other clients keep being served; with no timeout a silent client stays connected.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_modbus::client::tcp;
use tokio_modbus::prelude::*;
use virtual_meter::registers::VOLTAGE_L1_REG;
use virtual_meter::service::{serve_with, ServeOptions};
use virtual_meter::Units;

use crate::common::{default_map, meter, scenario, SAG};

async fn start(idle_timeout: Option<Duration>) -> (SocketAddr, oneshot::Sender<()>) {
    let sc = scenario(SAG);
    let m = meter(&sc, 0, default_map());
    m.lock().unwrap().advance_to(0.5);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let options = ServeOptions {
        idle_timeout,
        connected: None,
    };
    tokio::spawn(serve_with(
        listener,
        Arc::new(Units::Single(m)),
        Box::pin(async move {
            let _ = rx.await;
        }),
        options,
    ));
    (addr, tx)
}

/// Wait (bounded by `limit` of virtual time) until the server closes `s`; returns when.
async fn closed_after(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0_u8; 64];
    match tokio::time::timeout(limit, s.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => Some(start.elapsed()),
        Ok(Ok(n)) => panic!("unexpected {n} bytes: {:?}", &buf[..n]),
        Err(_) => None,
    }
}

/// A well-behaved client polling every `every` for `rounds` rounds: every read answers.
async fn poll_regularly(addr: SocketAddr, every: Duration, rounds: u32) {
    let mut ctx = tcp::connect_slave(addr, Slave(1)).await.unwrap();
    for _ in 0..rounds {
        tokio::time::sleep(every).await;
        let regs = ctx
            .read_holding_registers(VOLTAGE_L1_REG, 2)
            .await
            .expect("still connected")
            .unwrap();
        assert_eq!(regs.len(), 2);
    }
    ctx.disconnect().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_closed_after_the_idle_timeout_others_stay() {
    let (addr, _stop) = start(Some(Duration::from_secs(60))).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // 30 s between requests is under the timeout: that client is served throughout.
    let busy = tokio::spawn(poll_regularly(addr, Duration::from_secs(30), 5));
    let t = closed_after(&mut silent, Duration::from_secs(600))
        .await
        .expect("the silent connection was closed");
    assert!(
        t >= Duration::from_secs(60) && t < Duration::from_secs(61),
        "{t:?}"
    );
    busy.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_stalled_partial_frame_is_closed_and_garbage_too() {
    let (addr, _stop) = start(Some(Duration::from_secs(10))).await;
    // An MBAP header announcing 6 bytes, then only 3 of them.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stalled
        .write_all(&[0, 7, 0, 0, 0, 6, 1, 3, 0])
        .await
        .unwrap();
    let other = tokio::spawn(poll_regularly(addr, Duration::from_secs(3), 12));
    // Closed 10 s after its last byte, not after it connected.
    let t = closed_after(&mut stalled, Duration::from_secs(600))
        .await
        .expect("the stalled connection was closed");
    assert!(
        t >= Duration::from_secs(10) && t < Duration::from_secs(11),
        "{t:?}"
    );
    // Garbage: an HTTP request reads as an MBAP header announcing 0x2F20 bytes, so the
    // decoder waits for them — only the idle timeout ends it (without one it would hang).
    let mut http = TcpStream::connect(addr).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let t = closed_after(&mut http, Duration::from_secs(600))
        .await
        .expect("garbage closed");
    assert!(
        t >= Duration::from_secs(10) && t < Duration::from_secs(11),
        "{t:?}"
    );
    other.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn without_a_timeout_a_silent_client_stays_connected() {
    let (addr, _stop) = start(None).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        closed_after(&mut silent, Duration::from_secs(3600)).await,
        None
    );
    // And it is still served afterwards.
    silent
        .write_all(&[0, 1, 0, 0, 0, 6, 1, 3, 0, 0x24, 0, 2])
        .await
        .unwrap();
    let mut buf = [0_u8; 64];
    let n = silent.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..9], &[0, 1, 0, 0, 0, 7, 1, 3, 4], "{:?}", &buf[..n]);
}
