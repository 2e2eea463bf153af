//! `gridloop broker`: the printed address accepts an MQTT CONNECT; `--duration` and Ctrl-C end
//! it with 0; a busy port exits 3.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gridloop::exit;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet};

use crate::{assert_code, gridloop, stderr};

fn spawn_broker(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_gridloop"))
        .arg("broker")
        .args(args)
        .env_remove("GRIDLOOP_LOG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the gridloop binary starts")
}

/// The address in `broker: embedded rumqttd on ADDR`, the first line on stdout.
fn printed_addr(child: &mut Child) -> SocketAddr {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim_end()
        .strip_prefix("broker: embedded rumqttd on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap()
}

/// Exit status within `deadline` (polled; the child ends by itself or by a signal we sent).
fn wait_exit(child: &mut Child, deadline: Duration) -> std::process::Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < deadline, "gridloop broker did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    std::process::Output {
        status: child.wait().unwrap(),
        stdout: Vec::new(),
        stderr: err.into_bytes(),
    }
}

/// An MQTT CONNECT with rumqttc gets an accepting CONNACK.
fn mqtt_connects(addr: SocketAddr) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let options = MqttOptions::new("cli-test", addr.ip().to_string(), addr.port());
        let (_client, mut eventloop) = AsyncClient::new(options, 8);
        let connack = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => return ack,
                    Ok(_) => {}
                    Err(e) => panic!("connecting to {addr}: {e}"),
                }
            }
        })
        .await
        .expect("CONNACK within 20 s");
        connack.code == rumqttc::ConnectReturnCode::Success
    })
}

#[test]
fn broker_prints_an_address_that_accepts_mqtt_and_ends_on_ctrl_c() {
    let mut child = spawn_broker(&["--listen", "127.0.0.1:0", "--duration", "120s"]);
    let addr = printed_addr(&mut child);
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0);
    assert!(mqtt_connects(addr));
    // Ctrl-C: SIGINT to the process.
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = wait_exit(&mut child, Duration::from_secs(30));
    assert_code(&out, exit::SUCCESS);
    assert!(
        stderr(&out).contains(&format!("interrupted: broker on {addr} stopped")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn broker_ends_by_itself_after_duration() {
    let mut child = spawn_broker(&["--listen", "127.0.0.1:0", "--duration", "0.5s"]);
    let addr = printed_addr(&mut child);
    let out = wait_exit(&mut child, Duration::from_secs(30));
    assert_code(&out, exit::SUCCESS);
    assert!(
        stderr(&out).contains(&format!("done: broker on {addr} stopped")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn broker_on_a_busy_port_exits_3_and_bad_duration_exits_2() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = gridloop(&["broker", "--listen", &addr, "--duration", "1s"]);
    assert_code(&out, exit::ENVIRONMENT);
    assert!(
        stderr(&out).contains(&format!("cannot listen on {addr}")),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());
    for (duration, needle) in [
        ("3", "--duration: duration needs a unit"),
        ("10cycles", "is in cycles"),
    ] {
        let out = gridloop(&["broker", "--listen", "127.0.0.1:0", "--duration", duration]);
        assert_code(&out, exit::INVALID_INPUT);
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
    }
}
