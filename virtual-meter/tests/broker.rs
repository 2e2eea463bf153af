//! Brokers end to end: rumqttc clients publish and subscribe through the embedded rumqttd and
//! a spawned Mosquitto (real sockets on 127.0.0.1; bounded waits, no sleeps).

use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use virtual_meter::broker::{find_program, start_broker, BrokerUrl, EmbeddedBroker, RunningBroker};

const MESSAGES: u32 = 1_000;
const TOPIC: &str = "gridloop/sub-a/feeder-1/m-0001/telemetry";
const DEADLINE: Duration = Duration::from_secs(60);

fn options(id: &str, addr: SocketAddr) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// Subscribe at QoS 1, publish `MESSAGES` QoS-1 messages from another client, and return the
/// payloads the subscriber received (in arrival order) and the PUBACKs the publisher got.
/// (rumqttd refuses client ids containing `+`, `$`, `#` or `/`.)
async fn publish_and_receive(addr: SocketAddr, name: &str, topic: &str) -> (Vec<u32>, u32) {
    let (sub, mut sub_loop) = AsyncClient::new(options(&format!("sub-{name}"), addr), 64);
    sub.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    // Poll until the SUBACK: only then is every later publish routed to us.
    tokio::time::timeout(DEADLINE, async {
        loop {
            match sub_loop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("subscriber: {e}"),
            }
        }
    })
    .await
    .expect("SUBACK within the deadline");

    let (publ, mut pub_loop) = AsyncClient::new(options(&format!("pub-{name}"), addr), 64);
    let publisher = tokio::spawn(async move {
        let mut acks = 0;
        while acks < MESSAGES {
            match pub_loop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acks += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
        acks
    });
    let sender = tokio::spawn(async move {
        for i in 0..MESSAGES {
            publ.publish(TOPIC, QoS::AtLeastOnce, false, i.to_be_bytes().to_vec())
                .await
                .unwrap();
        }
    });
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while got.len() < MESSAGES as usize {
            match sub_loop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    assert_eq!(p.qos, QoS::AtLeastOnce);
                    let bytes: [u8; 4] = p.payload.as_ref().try_into().unwrap();
                    got.push(u32::from_be_bytes(bytes));
                }
                Ok(_) => {}
                Err(e) => panic!("subscriber: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {MESSAGES} arrived", got.len()));
    sender.await.unwrap();
    let acks = tokio::time::timeout(DEADLINE, publisher)
        .await
        .expect("all PUBACKs within the deadline")
        .unwrap();
    (got, acks)
}

fn assert_all_in_order(got: &[u32], acks: u32) {
    let expected: Vec<u32> = (0..MESSAGES).collect();
    assert_eq!(got, expected.as_slice(), "every message, once, in order");
    assert_eq!(acks, MESSAGES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_rumqttd_delivers_qos1_in_order() {
    let broker = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap()).unwrap();
    assert_ne!(broker.addr().port(), 0);
    assert_eq!(
        broker.url().to_string(),
        format!("mqtt://{}", broker.addr())
    );
    let (got, acks) = publish_and_receive(broker.addr(), "embedded", "gridloop/#").await;
    assert_all_in_order(&got, acks);
    assert_eq!(broker.failed(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_mosquitto_delivers_qos1_in_order() {
    if find_program("mosquitto").is_none() {
        assert!(
            std::env::var_os("GRIDLOOP_REQUIRE_PEERS").is_none(),
            "GRIDLOOP_REQUIRE_PEERS is set but mosquitto is not installed"
        );
        return;
    }
    let broker = start_broker(&BrokerUrl::SpawnMosquitto).unwrap();
    let RunningBroker::Mosquitto(m) = &broker else {
        panic!("not mosquitto: {broker}")
    };
    assert!(
        broker
            .to_string()
            .starts_with(&format!("broker: spawned mosquitto on {} (pid ", m.addr())),
        "{broker}"
    );
    let (got, acks) =
        publish_and_receive(broker.addr(), "mosquitto", "gridloop/+/+/+/telemetry").await;
    assert_all_in_order(&got, acks);
}

#[test]
fn embedded_on_a_busy_port_is_a_clear_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let err = EmbeddedBroker::start(addr).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("cannot listen on {addr}: ")),
        "{err}"
    );
}

#[test]
fn start_broker_embedded_prints_where_it_listens() {
    let broker = start_broker(&BrokerUrl::Embedded).unwrap();
    let RunningBroker::Embedded(b) = &broker else {
        panic!("not embedded: {broker}")
    };
    assert!(b.addr().ip().is_loopback());
    assert_eq!(
        broker.to_string(),
        format!("broker: embedded rumqttd on {}", b.addr())
    );
    virtual_meter::broker::mqtt_connect_probe(broker.addr(), Duration::from_secs(5)).unwrap();
}
