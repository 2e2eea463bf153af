//! The Modbus/TCP server on port 0, exercised with tokio-modbus's own client. The meters are
//! advanced directly (no pacing task), so what each read sees is known exactly.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use sim_core::encoding::{decode_f32, encode_f32, WordOrder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_modbus::client::{tcp, Context};
use tokio_modbus::prelude::*;
use virtual_meter::registers::{status, VOLTAGE_L1_REG, VOLTAGE_L2_REG, VOLTAGE_L3_REG};
use virtual_meter::service::{serve, FC_ENCAPSULATED};
use virtual_meter::{SharedMeter, Units};

use crate::common::{default_map, meter, scenario, SAG};

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn start(units: Units) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let stop = Box::pin(async move {
            let _ = rx.await;
        });
        let task = tokio::spawn(serve(listener, Arc::new(units), stop));
        Running {
            addr,
            stop: Some(tx),
            task,
        }
    }

    async fn client(&self, unit: u8) -> Context {
        tcp::connect_slave(self.addr, Slave(unit)).await.unwrap()
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap().unwrap();
    }
}

fn f32_of(regs: &[u16]) -> f32 {
    decode_f32([regs[0], regs[1]], WordOrder::Abcd)
}

fn advance(m: &SharedMeter, t: f64) {
    m.lock().unwrap().advance_to(t);
}

#[tokio::test]
async fn reads_voltages_trip_bits_and_writes_thresholds() {
    let sc = scenario(SAG);
    let m = meter(&sc, 0, default_map());
    let server = Running::start(Units::Single(m.clone())).await;
    let mut ctx = server.client(1).await;

    advance(&m, 0.9);
    let truth = m.lock().unwrap().image().state().voltage;
    let regs = ctx
        .read_holding_registers(VOLTAGE_L1_REG, 6)
        .await
        .unwrap()
        .unwrap();
    for (i, reg) in [VOLTAGE_L1_REG, VOLTAGE_L2_REG, VOLTAGE_L3_REG]
        .iter()
        .enumerate()
    {
        let v = f32_of(&regs[usize::from(reg - VOLTAGE_L1_REG)..]);
        assert_eq!(f64::from(v), f64::from(truth[i] as f32));
        assert!((v - 240.0).abs() < 0.5, "L{}: {v}", i + 1);
    }
    // FC04 gives the same image.
    let input = ctx
        .read_input_registers(VOLTAGE_L1_REG, 6)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(input, regs);
    // The spec's detectable mismatch: the same registers read as int16 are far off.
    let as_int16 = f64::from(regs[0] as i16);
    assert!(
        as_int16 / 240.0 > 70.0 && as_int16 * 0.1 / 240.0 > 7.0,
        "{as_int16}"
    );

    let st = ctx
        .read_holding_registers(0x0048, 1)
        .await
        .unwrap()
        .unwrap()[0];
    assert_eq!(st, status::VALID);

    advance(&m, 1.5);
    let st = ctx
        .read_holding_registers(0x0048, 1)
        .await
        .unwrap()
        .unwrap()[0];
    assert_eq!(st & status::UV_ACTIVE, 0, "cleared by 1.5 s");
    assert_ne!(st & status::UV_LATCHED, 0, "latched");
    let counts = ctx
        .read_holding_registers(0x004A, 4)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counts, vec![0, 1, 0, 1]);

    // Write the upper limit (FC16) and read it back; the meter's HysteresisTrip takes it.
    let regs = encode_f32(250.0, WordOrder::Abcd);
    ctx.write_multiple_registers(0x0100, &regs)
        .await
        .unwrap()
        .unwrap();
    ctx.write_multiple_registers(0x0100, &regs)
        .await
        .unwrap()
        .unwrap();
    let back = ctx
        .read_holding_registers(0x0100, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f32_of(&back), 250.0);
    assert_eq!(m.lock().unwrap().meter().config().thresholds.upper, 250.0);
    // FC06 write-1-to-clear of the UV L1 latch.
    ctx.write_single_register(0x0048, status::UV_LATCHED)
        .await
        .unwrap()
        .unwrap();
    let st = ctx
        .read_holding_registers(0x0048, 1)
        .await
        .unwrap()
        .unwrap()[0];
    assert_eq!(st & status::LATCHED_MASK, 0);

    ctx.disconnect().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn exceptions_for_bad_requests() {
    let sc = scenario(SAG);
    let m = meter(&sc, 0, default_map());
    advance(&m, 0.5);
    let server = Running::start(Units::Single(m.clone())).await;
    let mut ctx = server.client(1).await;
    let e = |r: Result<Vec<u16>, ExceptionCode>| r.unwrap_err();

    // Unmapped address, a read that splits a 32-bit value, quantities 0 and 126.
    assert_eq!(
        e(ctx.read_holding_registers(0x0000, 2).await.unwrap()),
        ExceptionCode::IllegalDataAddress
    );
    assert_eq!(
        e(ctx.read_holding_registers(0x0025, 2).await.unwrap()),
        ExceptionCode::IllegalDataAddress
    );
    assert_eq!(
        e(ctx.read_holding_registers(VOLTAGE_L1_REG, 1).await.unwrap()),
        ExceptionCode::IllegalDataAddress
    );
    assert_eq!(
        e(ctx.read_holding_registers(VOLTAGE_L1_REG, 0).await.unwrap()),
        ExceptionCode::IllegalDataValue
    );
    assert_eq!(
        e(ctx
            .read_holding_registers(VOLTAGE_L1_REG, 126)
            .await
            .unwrap()),
        ExceptionCode::IllegalDataValue
    );
    assert_eq!(
        e(ctx.read_input_registers(0xFFFF, 1).await.unwrap()),
        ExceptionCode::IllegalDataAddress
    );
    // Out-of-range, read-only and split writes.
    let too_high = encode_f32(5000.0, WordOrder::Abcd);
    assert_eq!(
        ctx.write_multiple_registers(0x0100, &too_high)
            .await
            .unwrap(),
        Err(ExceptionCode::IllegalDataValue)
    );
    assert_eq!(
        ctx.write_multiple_registers(VOLTAGE_L1_REG, &too_high)
            .await
            .unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        ctx.write_single_register(0x0100, 0x437A).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(m.lock().unwrap().meter().config().thresholds.upper, 252.0);
    // Functions the meter does not implement.
    assert_eq!(
        ctx.read_coils(0, 8).await.unwrap(),
        Err(ExceptionCode::IllegalFunction)
    );
    assert_eq!(
        ctx.call(Request::Custom(0x41, Cow::Borrowed(&[1, 2])))
            .await
            .unwrap(),
        Err(ExceptionCode::IllegalFunction)
    );
    // The connection still works after all that.
    assert!(ctx
        .read_holding_registers(VOLTAGE_L1_REG, 2)
        .await
        .unwrap()
        .is_ok());
    ctx.disconnect().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn device_identification_fc43_mei14() {
    let sc = scenario(SAG);
    let m = meter(&sc, 2, default_map());
    let server = Running::start(Units::Single(m)).await;
    let mut ctx = server.client(255).await;
    let call = |code: u8, object: u8| {
        Request::Custom(FC_ENCAPSULATED, Cow::Owned(vec![0x0E, code, object]))
    };
    let Response::Custom(0x2B, body) = ctx.call(call(1, 0)).await.unwrap().unwrap() else {
        panic!("not an FC43 response")
    };
    // MEI, code, conformity, more follows, next id, count, then (id, len, bytes)…
    assert_eq!(&body[..6], &[0x0E, 1, 0x82, 0, 0, 3]);
    let mut objects = Vec::new();
    let mut rest = &body[6..];
    while let [id, len, tail @ ..] = rest {
        let (text, tail) = tail.split_at(usize::from(*len));
        objects.push((*id, String::from_utf8(text.to_vec()).unwrap()));
        rest = tail;
    }
    assert_eq!(
        objects,
        vec![
            (0, "gridloop".to_string()),
            (1, "GL-VM".to_string()),
            (2, env!("CARGO_PKG_VERSION").to_string()),
        ]
    );
    // One object: the model name says which meter this is.
    let Response::Custom(_, body) = ctx.call(call(4, 5)).await.unwrap().unwrap() else {
        panic!("not an FC43 response")
    };
    assert_eq!(&body[6..8], &[5, 10]);
    assert_eq!(&body[8..], b"feeder-a/2");
    // Exceptions, checked on the raw frame: tokio-modbus's client files an FC43 exception
    // under a different function code than its `Request::Custom(0x2B)` and reports a
    // mismatch instead of the exception.
    for (pdu, exception) in [
        (&[0x2B, 0x0E, 4, 0x80][..], 0x02),
        (&[0x2B, 0x0E, 9, 0], 0x03),
        (&[0x2B, 0x0E, 1], 0x03),
        (&[0x2B, 0x0D, 1, 0], 0x01),
    ] {
        assert_eq!(
            raw_request(server.addr, 1, pdu).await,
            vec![0xAB, exception],
            "{pdu:?}"
        );
    }
    ctx.disconnect().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn gateway_serves_each_unit_its_own_meter() {
    let sc = scenario(SAG);
    let map = default_map();
    let (a, b) = (meter(&sc, 0, map.clone()), meter(&sc, 1, map));
    advance(&a, 0.5);
    advance(&b, 1.1);
    // Different settings per unit prove they are different meters.
    b.lock()
        .unwrap()
        .write(0x0100, &encode_f32(251.0, WordOrder::Abcd))
        .unwrap();
    let server = Running::start(Units::Gateway(vec![a, b])).await;

    let mut one = server.client(1).await;
    let mut two = server.client(2).await;
    let upper = |r: Vec<u16>| f32_of(&r);
    assert_eq!(
        upper(
            one.read_holding_registers(0x0100, 2)
                .await
                .unwrap()
                .unwrap()
        ),
        252.0
    );
    assert_eq!(
        upper(
            two.read_holding_registers(0x0100, 2)
                .await
                .unwrap()
                .unwrap()
        ),
        251.0
    );
    let t1 = one
        .read_holding_registers(0x0050, 2)
        .await
        .unwrap()
        .unwrap();
    let t2 = two
        .read_holding_registers(0x0050, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((t1[1], t2[1]), (500, 1100));
    let trips = |r: Vec<u16>| r[1];
    assert_eq!(
        trips(
            one.read_holding_registers(0x004A, 2)
                .await
                .unwrap()
                .unwrap()
        ),
        0
    );
    assert_eq!(
        trips(
            two.read_holding_registers(0x004A, 2)
                .await
                .unwrap()
                .unwrap()
        ),
        1
    );
    // One connection can switch unit ids, as a poller behind a gateway does.
    one.set_slave(Slave(2));
    assert_eq!(
        upper(
            one.read_holding_registers(0x0100, 2)
                .await
                .unwrap()
                .unwrap()
        ),
        251.0
    );
    // Unknown unit ids: exception 0x0B.
    for unit in [0, 3, 255] {
        one.set_slave(Slave(unit));
        assert_eq!(
            one.read_holding_registers(VOLTAGE_L1_REG, 2).await.unwrap(),
            Err(ExceptionCode::GatewayTargetDevice),
            "unit {unit}"
        );
    }
    one.disconnect().await.unwrap();
    two.disconnect().await.unwrap();
    server.stop().await;
}

/// Send one request PDU in an MBAP frame and return the response PDU.
async fn raw_request(addr: SocketAddr, unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut frame = vec![0x12, 0x34, 0, 0];
    frame.extend_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
    frame.push(unit);
    frame.extend_from_slice(pdu);
    s.write_all(&frame).await.unwrap();
    let mut head = [0_u8; 7];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head[..4], &[0x12, 0x34, 0, 0]);
    assert_eq!(head[6], unit);
    let len = usize::from(u16::from_be_bytes([head[4], head[5]])) - 1;
    let mut body = vec![0_u8; len];
    s.read_exact(&mut body).await.unwrap();
    body
}

/// Garbage and malformed frames close that connection only; the server keeps serving.
#[tokio::test]
async fn garbage_closes_the_connection_not_the_server() {
    let sc = scenario(SAG);
    let m = meter(&sc, 0, default_map());
    advance(&m, 0.5);
    let server = Running::start(Units::Single(m)).await;
    for garbage in [
        // Protocol id 0x1234.
        &[0, 1, 0x12, 0x34, 0, 6, 1, 3, 0, 0x24, 0, 2][..],
        // Length 0.
        &[0, 1, 0, 0, 0, 0, 1],
        // FC16 whose byte count disagrees with its quantity.
        &[0, 1, 0, 0, 0, 9, 1, 0x10, 1, 0, 0, 2, 3, 0, 0],
        // An exception function code as a request.
        &[0, 1, 0, 0, 0, 2, 1, 0x83],
    ] {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(garbage).await.unwrap();
        let mut buf = [0_u8; 64];
        // The server closes the socket: read returns 0 (EOF) or a reset, never hangs.
        let n = s.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "{garbage:?} got {:?}", &buf[..n]);
    }
    let mut ctx = server.client(1).await;
    assert!(ctx
        .read_holding_registers(VOLTAGE_L1_REG, 2)
        .await
        .unwrap()
        .is_ok());
    ctx.disconnect().await.unwrap();
    server.stop().await;
}

/// The calibration command over Modbus: reference + command in one FC16, the repeat is a
/// no-op, and refusals are Illegal Data Value.
#[tokio::test]
async fn calibration_command_over_modbus() {
    use virtual_meter::registers::{CAL_COMMAND_REG, CAL_COUNT_REG, CAL_REFERENCE_REG};
    let sc = scenario(SAG);
    let m = meter(&sc, 0, default_map());
    let server = Running::start(Units::Single(m.clone())).await;
    let mut ctx = server.client(1).await;
    let ref_words = encode_f32(230.0, WordOrder::Abcd);
    let mut write = ref_words.to_vec();
    write.push(1);
    // No reading yet.
    assert_eq!(
        ctx.write_multiple_registers(CAL_REFERENCE_REG, &write)
            .await
            .unwrap(),
        Err(ExceptionCode::IllegalDataValue)
    );
    advance(&m, 0.5);
    let v1 = m.lock().unwrap().image().state().voltage[0];
    // A reference out of range; a selector that does not exist.
    let bad = encode_f32(500.0, WordOrder::Abcd);
    assert_eq!(
        ctx.write_multiple_registers(CAL_REFERENCE_REG, &[bad[0], bad[1], 1])
            .await
            .unwrap(),
        Err(ExceptionCode::IllegalDataValue)
    );
    assert_eq!(
        ctx.write_single_register(CAL_COMMAND_REG, 9).await.unwrap(),
        Err(ExceptionCode::IllegalDataValue)
    );
    ctx.write_multiple_registers(CAL_REFERENCE_REG, &write)
        .await
        .unwrap()
        .unwrap();
    let count = |regs: Vec<u16>| u32::from(regs[0]) << 16 | u32::from(regs[1]);
    let c = ctx
        .read_holding_registers(CAL_COUNT_REG, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count(c), 1);
    let g = ctx
        .read_holding_registers(0x0106, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f32_of(&g), (230.0 / v1) as f32);
    // Again (FC06 of the command alone, with the stored reference): nothing changes.
    ctx.write_single_register(CAL_COMMAND_REG, 1)
        .await
        .unwrap()
        .unwrap();
    let c = ctx
        .read_holding_registers(CAL_COUNT_REG, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count(c), 1);
    // The meter's next readings are the reference.
    advance(&m, 1.0);
    let v = ctx
        .read_holding_registers(VOLTAGE_L1_REG, 2)
        .await
        .unwrap()
        .unwrap();
    assert!(
        (f64::from(f32_of(&v)) - 230.0).abs() < 230.0 * 1e-4,
        "{}",
        f32_of(&v)
    );
    ctx.disconnect().await.unwrap();
    server.stop().await;
}
