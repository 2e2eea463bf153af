//! The Modbus TCP reader's link errors on real loopback sockets: nothing listening, and a peer
//! that accepts but never answers. Both are `LinkError`s, never answers.

use std::time::Duration;

use hil_bridge::reader::{RegisterRead, TcpReader};
use hil_bridge::rtu::{LinkError, ReadRequest, RegisterKind};

fn request() -> ReadRequest {
    ReadRequest::new(RegisterKind::Holding, 0x0024, 2).expect("valid")
}

#[tokio::test]
async fn nothing_listening_is_a_link_error() {
    // Bind, read the port, release it: nothing listens there afterwards.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind");
    let mut reader = TcpReader::new(addr, 1, Duration::from_secs(2), 1);
    let err = reader.read_registers(request()).await.expect_err("refused");
    assert!(matches!(err, LinkError::Io { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("modbus tcp {addr} unit 1: failed to connect")),
        "{text}"
    );
}

#[tokio::test]
async fn a_silent_peer_is_a_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Accept every connection (the reader reconnects for its retry) and never answer.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..10 {
            match listener.accept().await {
                Ok((s, _)) => held.push(s),
                Err(_) => return,
            }
        }
    });
    let mut reader = TcpReader::new(addr, 1, Duration::from_millis(100), 1);
    let err = reader.read_registers(request()).await.expect_err("silent");
    assert_eq!(
        err,
        LinkError::Timeout {
            peer: format!("modbus tcp {addr} unit 1"),
            after: Duration::from_millis(100)
        }
    );
    silent.abort();
}
