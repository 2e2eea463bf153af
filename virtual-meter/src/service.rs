//! The Modbus/TCP face of the meters: a `tokio_modbus::server::Service` that maps each unit id
//! to its meter (one meter answering every unit id, or a gateway of many), plus the pure
//! request handler and FC43 / MEI 14 device identification it uses. Every connection is read
//! through [`IdleTimeout`], so a silent client or a stalled partial frame is disconnected.

use std::future::{ready, Future, Ready};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use crate::image::{DeviceIdentity, Refusal};
use crate::live::LiveMeter;

/// A meter shared between the pacing loop and the connections serving it.
pub type SharedMeter = Arc<Mutex<LiveMeter>>;

/// Function code of Encapsulated Interface Transport (FC43).
pub const FC_ENCAPSULATED: u8 = 0x2B;
/// MEI type of Read Device Identification.
pub const MEI_READ_DEVICE_ID: u8 = 0x0E;
/// Conformity level: regular identification, stream and individual access.
pub const CONFORMITY: u8 = 0x82;

impl From<Refusal> for ExceptionCode {
    fn from(r: Refusal) -> ExceptionCode {
        match r {
            Refusal::IllegalDataAddress => ExceptionCode::IllegalDataAddress,
            Refusal::IllegalDataValue => ExceptionCode::IllegalDataValue,
        }
    }
}

/// Which meter answers which unit id.
#[derive(Debug, Clone)]
pub enum Units {
    /// One meter behind its own listener: it answers every unit id (0, 1 and 255 are all
    /// common for Modbus/TCP devices).
    Single(SharedMeter),
    /// A gateway: unit id `i` is `meters[i - 1]` (ids 1..=247). Requests for any other id get
    /// exception 0x0B (Gateway Target Device Failed to Respond).
    Gateway(Vec<SharedMeter>),
}

impl Units {
    /// The meter for `unit`, if any.
    pub fn get(&self, unit: u8) -> Option<&SharedMeter> {
        match self {
            Units::Single(m) => Some(m),
            Units::Gateway(ms) => usize::from(unit).checked_sub(1).and_then(|i| ms.get(i)),
        }
    }

    /// Every meter, in unit-id order.
    pub fn meters(&self) -> Vec<SharedMeter> {
        match self {
            Units::Single(m) => vec![m.clone()],
            Units::Gateway(ms) => ms.clone(),
        }
    }
}

/// The tokio-modbus service: one per connection, sharing the meters.
#[derive(Debug, Clone)]
pub struct MeterService {
    units: Arc<Units>,
}

impl MeterService {
    pub fn new(units: Arc<Units>) -> MeterService {
        MeterService { units }
    }
}

impl tokio_modbus::server::Service for MeterService {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let Some(meter) = self.units.get(req.slave) else {
            return ready(Err(ExceptionCode::GatewayTargetDevice));
        };
        let Ok(mut meter) = meter.lock() else {
            // A panic while holding the meter: report a device failure, keep serving others.
            return ready(Err(ExceptionCode::ServerDeviceFailure));
        };
        ready(handle(&mut meter, req.request))
    }
}

/// Answer one request from `meter`'s image: FC03/FC04 read, FC06/FC16 write, FC43/MEI 14
/// device identification; anything else is Illegal Function.
pub fn handle(meter: &mut LiveMeter, req: Request<'_>) -> Result<Response, ExceptionCode> {
    match req {
        Request::ReadHoldingRegisters(addr, qty) => {
            Ok(Response::ReadHoldingRegisters(meter.read(addr, qty)?))
        }
        Request::ReadInputRegisters(addr, qty) => {
            Ok(Response::ReadInputRegisters(meter.read(addr, qty)?))
        }
        Request::WriteSingleRegister(addr, value) => {
            meter.write(addr, &[value])?;
            Ok(Response::WriteSingleRegister(addr, value))
        }
        Request::WriteMultipleRegisters(addr, values) => {
            meter.write(addr, &values)?;
            Ok(Response::WriteMultipleRegisters(addr, values.len() as u16))
        }
        Request::Custom(FC_ENCAPSULATED, data) => {
            let body = read_device_identification(meter.image().identity(), &data)?;
            Ok(Response::Custom(FC_ENCAPSULATED, body.into()))
        }
        _ => Err(ExceptionCode::IllegalFunction),
    }
}

/// The identification objects in id order: 0–2 basic, 3–5 regular.
fn objects(id: &DeviceIdentity) -> [&str; 6] {
    [
        &id.vendor,
        &id.product_code,
        &id.revision,
        &id.vendor_url,
        &id.product_name,
        &id.model_name,
    ]
}

/// FC43 / MEI 14 Read Device Identification. `data` is the request after the function code:
/// MEI type, read device id code (1 basic, 2 regular, 3 extended = regular here, 4 one
/// object) and object id. Returns the response after the function code.
pub fn read_device_identification(
    identity: &DeviceIdentity,
    data: &[u8],
) -> Result<Vec<u8>, ExceptionCode> {
    // Room for objects in a 253-byte PDU: function code + 6 header bytes.
    const ROOM: usize = 253 - 1 - 6;
    // An object longer than this is cut so that any one object fits in a response.
    const MAX_OBJECT: usize = ROOM - 2;
    let &[mei, code, object_id] = data else {
        return Err(if data.first() == Some(&MEI_READ_DEVICE_ID) {
            ExceptionCode::IllegalDataValue
        } else {
            ExceptionCode::IllegalFunction
        });
    };
    if mei != MEI_READ_DEVICE_ID {
        return Err(ExceptionCode::IllegalFunction);
    }
    let objs = objects(identity);
    let last = match code {
        1 => 2,
        2 | 3 => 5,
        4 => {
            if usize::from(object_id) >= objs.len() {
                return Err(ExceptionCode::IllegalDataAddress);
            }
            usize::from(object_id)
        }
        _ => return Err(ExceptionCode::IllegalDataValue),
    };
    // Streams restart at object 0 when asked for an object they do not hold.
    let first = match code {
        4 => usize::from(object_id),
        _ if usize::from(object_id) <= last => usize::from(object_id),
        _ => 0,
    };
    let mut out = vec![MEI_READ_DEVICE_ID, code, CONFORMITY, 0x00, 0x00, 0];
    let mut used = 0;
    let mut count = 0_u8;
    for (i, text) in objs.iter().enumerate().take(last + 1).skip(first) {
        let bytes = &text.as_bytes()[..text.len().min(MAX_OBJECT)];
        if used + 2 + bytes.len() > ROOM {
            out[3] = 0xFF; // more follows
            out[4] = i as u8; // next object id
            break;
        }
        out.push(i as u8);
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
        used += 2 + bytes.len();
        count += 1;
    }
    out[5] = count;
    Ok(out)
}

/// How long a connection may send nothing before it is closed (`gridloop meter
/// --idle-timeout`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Options of [`serve_with`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Close a connection that sends no byte for this long — idle between requests or
    /// stalled inside a partial frame. `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Notified on every accepted connection (a permit is stored, so a waiter that arrives
    /// later still sees the first one).
    pub connected: Option<Arc<Notify>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            connected: None,
        }
    }
}

/// A transport whose reads fail with `TimedOut` once no byte has arrived for `timeout` (on
/// tokio's clock, so tests run it on the paused clock). Writes pass through.
#[derive(Debug)]
pub struct IdleTimeout<T> {
    inner: T,
    /// The timeout and the running deadline; `None`: never time out.
    deadline: Option<(Duration, Pin<Box<Sleep>>)>,
    /// Named in the timeout error.
    peer: Option<SocketAddr>,
}

impl<T> IdleTimeout<T> {
    /// Wrap `inner`; the first deadline is `timeout` from now.
    pub fn new(inner: T, timeout: Duration) -> Self {
        IdleTimeout {
            inner,
            deadline: Some((timeout, Box::pin(tokio::time::sleep(timeout)))),
            peer: None,
        }
    }

    /// Name `peer` in the timeout error.
    pub fn with_peer(mut self, peer: SocketAddr) -> Self {
        self.peer = Some(peer);
        self
    }

    /// Wrap `inner` without a timeout.
    pub fn never(inner: T) -> Self {
        IdleTimeout {
            inner,
            deadline: None,
            peer: None,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if let Some((timeout, sleep)) = &mut this.deadline {
                    if buf.filled().len() > before {
                        sleep.as_mut().reset(Instant::now() + *timeout);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some((timeout, sleep)) = &mut this.deadline else {
                    return Poll::Pending;
                };
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        match this.peer {
                            Some(peer) => format!("{peer}: no data for {timeout:?}"),
                            None => format!("no data for {timeout:?}"),
                        },
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serve `units` on `listener` until the future `stop` completes. Errors of single
/// connections (garbage, a dropped socket) end that connection only.
pub async fn serve(
    listener: TcpListener,
    units: Arc<Units>,
    stop: impl Future<Output = ()> + Send + Sync + Unpin + 'static,
) -> io::Result<()> {
    serve_notify(listener, units, stop, None).await
}

/// [`serve`], notifying `connected` on every accepted connection (a permit is stored, so a
/// waiter that arrives later still sees the first one). Idle timeout: [`DEFAULT_IDLE_TIMEOUT`].
pub async fn serve_notify(
    listener: TcpListener,
    units: Arc<Units>,
    stop: impl Future<Output = ()> + Send + Sync + Unpin + 'static,
    connected: Option<Arc<Notify>>,
) -> io::Result<()> {
    let options = ServeOptions {
        connected,
        ..ServeOptions::default()
    };
    serve_with(listener, units, stop, options).await
}

/// [`serve`] with [`ServeOptions`]: connections are read through [`IdleTimeout`] unless
/// `idle_timeout` is `None`.
pub async fn serve_with(
    listener: TcpListener,
    units: Arc<Units>,
    stop: impl Future<Output = ()> + Send + Sync + Unpin + 'static,
    options: ServeOptions,
) -> io::Result<()> {
    let server = Server::new(listener);
    let service = MeterService::new(units);
    let new_service = move |_addr: SocketAddr| Ok(Some(service.clone()));
    let ServeOptions {
        idle_timeout,
        connected,
    } = options;
    let on_connected = move |stream, addr| {
        if let Some(n) = &connected {
            n.notify_one();
        }
        let new_service = new_service.clone();
        async move {
            Ok(
                accept_tcp_connection(stream, addr, new_service)?.map(|(service, stream)| {
                    let stream = match idle_timeout {
                        Some(t) => IdleTimeout::new(stream, t).with_peer(addr),
                        None => IdleTimeout::never(stream),
                    };
                    (service, stream)
                }),
            )
        }
    };
    let on_process_error = |err: io::Error| tracing::debug!("modbus connection closed: {err}");
    server
        .serve_until(&on_connected, on_process_error, stop)
        .await
        .map(|_| ())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod idle_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn every_byte_restarts_the_idle_timer() {
        let (mut client, server) = tokio::io::duplex(64);
        let peer: SocketAddr = "192.0.2.1:5020".parse().unwrap();
        let mut server = IdleTimeout::new(server, Duration::from_secs(10)).with_peer(peer);
        let start = Instant::now();
        let mut buf = [0_u8; 8];
        for k in 1..=3_u64 {
            tokio::time::sleep(Duration::from_secs(9)).await;
            client.write_all(&[1]).await.unwrap();
            assert_eq!(server.read(&mut buf).await.unwrap(), 1);
            assert_eq!(start.elapsed(), Duration::from_secs(9 * k));
        }
        let e = server.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(e.to_string(), "192.0.2.1:5020: no data for 10s");
        assert_eq!(start.elapsed(), Duration::from_secs(27 + 10));
        // Writes pass through untouched.
        server.write_all(b"ok").await.unwrap();
        assert_eq!(client.read(&mut buf).await.unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn never_times_out_without_a_timeout() {
        let (_client, server) = tokio::io::duplex(64);
        let mut server = IdleTimeout::never(server);
        let mut buf = [0_u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(86_400), server.read(&mut buf)).await;
        assert!(r.is_err(), "still waiting after a day");
    }
}
