//! Meter readers (tokio IO shells): a Modbus RTU client over any byte stream (a serial port via
//! tokio-serial, or an in-memory pipe in tests), a Modbus TCP client (tokio-modbus), and a
//! [`MeterReader`] that reads a register map's voltages and frequency through either.
//!
//! Results keep two layers all the way up: [`Answer::Exception`] (the device said no) and
//! [`LinkError`] (no valid answer). Link errors are retried; an exception never is: the device
//! would answer the same way again.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use sim_core::encoding::{self, EncodingError, RegisterEncoding};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::rtu::{
    self, exception_name, Answer, Decoded, DeviceException, LinkError, Parity, ReadRequest,
    RegisterKind, Request, RequestError, Response, SerialFormat,
};

/// Default register of the L1 voltage (docs/register-map.md); L2 and L3 follow every 2.
pub const VOLTAGE_L1_REG: u16 = 0x0024;
pub const VOLTAGE_L2_REG: u16 = 0x0026;
pub const VOLTAGE_L3_REG: u16 = 0x0028;
/// Default register of the frequency.
pub const FREQUENCY_REG: u16 = 0x0030;

/// Reads registers and answers in two layers. Implemented by [`RtuClient`] and [`TcpReader`].
pub trait RegisterRead {
    /// Read `request`'s registers: the registers or the device's exception, or a link error.
    fn read_registers(
        &mut self,
        request: ReadRequest,
    ) -> impl Future<Output = Result<Answer<Vec<u16>>, LinkError>> + Send;
}

/// A serial port for Modbus RTU, e.g. `/dev/ttyUSB0` at 115200 8N1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialConfig {
    pub path: String,
    pub baud: u32,
    pub parity: Parity,
    /// 1 or 2.
    pub stop_bits: u8,
    /// 5–8.
    pub data_bits: u8,
}

impl SerialConfig {
    /// `path` at 115200 8N1.
    pub fn new(path: impl Into<String>) -> Self {
        let f = SerialFormat::default();
        Self {
            path: path.into(),
            baud: f.baud,
            parity: f.parity,
            stop_bits: f.stop_bits,
            data_bits: f.data_bits,
        }
    }

    /// The character format (for the inter-frame silence).
    pub fn format(&self) -> SerialFormat {
        SerialFormat {
            baud: self.baud,
            data_bits: self.data_bits,
            parity: self.parity,
            stop_bits: self.stop_bits,
        }
    }

    /// Open the port.
    pub fn open(&self) -> Result<tokio_serial::SerialStream, LinkError> {
        use tokio_serial::SerialPortBuilderExt;
        let io = |detail: String| LinkError::Io {
            peer: self.path.clone(),
            detail,
        };
        let data_bits = match self.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            8 => tokio_serial::DataBits::Eight,
            n => return Err(io(format!("data_bits {n} is not one of 5, 6, 7, 8"))),
        };
        let stop_bits = match self.stop_bits {
            1 => tokio_serial::StopBits::One,
            2 => tokio_serial::StopBits::Two,
            n => return Err(io(format!("stop_bits {n} is not 1 or 2"))),
        };
        let parity = match self.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        };
        tokio_serial::new(&self.path, self.baud)
            .data_bits(data_bits)
            .stop_bits(stop_bits)
            .parity(parity)
            .flow_control(tokio_serial::FlowControl::None)
            .open_native_async()
            .map_err(|e| io(format!("failed to open serial port: {e}")))
    }
}

/// How an RTU client talks to one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtuConfig {
    /// The device's unit id (1–247).
    pub unit: u8,
    /// The line's character format (for t3.5).
    pub format: SerialFormat,
    /// How long one attempt waits for the complete response.
    pub timeout: Duration,
    /// Extra attempts after a link error (never after an exception).
    pub retries: u32,
}

impl Default for RtuConfig {
    /// Unit 1, 115200 8N1, 500 ms, 2 retries.
    fn default() -> Self {
        Self {
            unit: 1,
            format: SerialFormat::default(),
            timeout: Duration::from_millis(500),
            retries: 2,
        }
    }
}

/// Stale bytes drained before a request are read at most this many times (bounded loop).
const MAX_DRAIN_READS: usize = 64;

/// A Modbus RTU client over a byte stream.
#[derive(Debug)]
pub struct RtuClient<S> {
    io: S,
    peer: String,
    config: RtuConfig,
    last_activity: Option<Instant>,
    frames_sent: u64,
}

impl RtuClient<tokio_serial::SerialStream> {
    /// Open `serial` and talk to `config.unit`; `config.format` is taken from `serial`.
    pub fn open_serial(serial: &SerialConfig, config: RtuConfig) -> Result<Self, LinkError> {
        let io = serial.open()?;
        let config = RtuConfig {
            format: serial.format(),
            ..config
        };
        Ok(Self::new(io, serial.path.clone(), config))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> RtuClient<S> {
    /// A client on `io`; `peer` names the link in errors (e.g. the device path).
    pub fn new(io: S, peer: impl Into<String>, config: RtuConfig) -> Self {
        Self {
            io,
            peer: peer.into(),
            config,
            last_activity: None,
            frames_sent: 0,
        }
    }

    /// Request frames written so far (retries included).
    pub fn frames_sent(&self) -> u64 {
        self.frames_sent
    }

    /// Send `request` and wait for its answer, retrying link errors up to `config.retries`
    /// times. An exception is returned at once.
    pub async fn call(&mut self, request: &Request) -> Result<Answer<Response>, LinkError> {
        let attempts = self.config.retries.saturating_add(1);
        let mut attempt = 1;
        loop {
            let result = self.attempt(request).await;
            self.last_activity = Some(Instant::now());
            match result {
                Ok(answer) => return Ok(answer),
                Err(e) if attempt >= attempts => return Err(e),
                Err(e) => {
                    warn!(attempt, attempts, error = %e, "modbus rtu request failed; retrying");
                    attempt += 1;
                }
            }
        }
    }

    async fn attempt(&mut self, request: &Request) -> Result<Answer<Response>, LinkError> {
        let silence = self.config.format.inter_frame_silence();
        let earliest = self.last_activity.unwrap_or_else(Instant::now) + silence;
        tokio::time::sleep_until(earliest).await;
        self.drain_stale().await?;

        let adu = rtu::encode_request(self.config.unit, request);
        self.io.write_all(&adu).await.map_err(|e| self.io_err(&e))?;
        self.io.flush().await.map_err(|e| self.io_err(&e))?;
        self.frames_sent += 1;

        let deadline = Instant::now() + self.config.timeout;
        let mut buf = Vec::with_capacity(rtu::MAX_ADU);
        let mut chunk = [0u8; rtu::MAX_ADU];
        // Each pass either completes, fails, or adds ≥ 1 byte to a frame of ≤ MAX_ADU bytes.
        for _ in 0..=rtu::MAX_ADU {
            let needed = match rtu::decode_response(self.config.unit, request, &buf, &self.peer)? {
                Decoded::Complete { answer, len } => {
                    if len < buf.len() {
                        debug!(extra = buf.len() - len, "bytes after the response ignored");
                    }
                    return Ok(answer);
                }
                Decoded::Incomplete { needed } => needed,
            };
            let want = needed.saturating_sub(buf.len()).clamp(1, chunk.len());
            let read = tokio::time::timeout_at(deadline, self.io.read(&mut chunk[..want])).await;
            match read {
                Err(_elapsed) if buf.is_empty() => {
                    return Err(LinkError::Timeout {
                        peer: self.peer.clone(),
                        after: self.config.timeout,
                    })
                }
                Err(_elapsed) => return Err(self.truncated(needed, buf.len())),
                Ok(Err(e)) => return Err(self.io_err(&e)),
                Ok(Ok(0)) if buf.is_empty() => {
                    return Err(LinkError::Io {
                        peer: self.peer.clone(),
                        detail: "the line closed (end of stream)".into(),
                    })
                }
                Ok(Ok(0)) => return Err(self.truncated(needed, buf.len())),
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        Err(self.truncated(rtu::MAX_ADU, buf.len()))
    }

    /// Discard bytes already waiting (a late answer to an earlier request, line noise).
    async fn drain_stale(&mut self) -> Result<(), LinkError> {
        let mut chunk = [0u8; rtu::MAX_ADU];
        let mut stale = 0usize;
        for _ in 0..MAX_DRAIN_READS {
            // A zero timeout still polls the read once: it returns only what is already there.
            match tokio::time::timeout(Duration::ZERO, self.io.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => stale += n,
                Ok(Err(e)) => return Err(self.io_err(&e)),
                _ => break,
            }
        }
        if stale > 0 {
            debug!(stale, peer = %self.peer, "discarded stale bytes before a request");
        }
        Ok(())
    }

    fn truncated(&self, expected: usize, got: usize) -> LinkError {
        LinkError::Truncated {
            peer: self.peer.clone(),
            expected,
            got,
        }
    }

    fn io_err(&self, e: &std::io::Error) -> LinkError {
        LinkError::Io {
            peer: self.peer.clone(),
            detail: e.to_string(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> RegisterRead for RtuClient<S> {
    async fn read_registers(
        &mut self,
        request: ReadRequest,
    ) -> Result<Answer<Vec<u16>>, LinkError> {
        match self.call(&Request::Read(request)).await? {
            Answer::Value(Response::Registers(regs)) => Ok(Answer::Value(regs)),
            Answer::Exception(e) => Ok(Answer::Exception(e)),
            // decode_response only yields Registers for a read request.
            Answer::Value(other) => Err(LinkError::Unexpected {
                peer: self.peer.clone(),
                detail: format!("{other:?} in answer to a read"),
            }),
        }
    }
}

/// A Modbus TCP reader (tokio-modbus client) with the same two-layer results. Connects lazily
/// and reconnects after a link error (a timed-out connection may still deliver a late answer).
#[derive(Debug)]
pub struct TcpReader {
    addr: SocketAddr,
    unit: u8,
    timeout: Duration,
    retries: u32,
    ctx: Option<tokio_modbus::client::Context>,
}

impl TcpReader {
    /// A reader of unit `unit` at `addr`; `timeout` bounds connecting and each request.
    pub fn new(addr: SocketAddr, unit: u8, timeout: Duration, retries: u32) -> Self {
        Self {
            addr,
            unit,
            timeout,
            retries,
            ctx: None,
        }
    }

    fn peer(&self) -> String {
        format!("modbus tcp {} unit {}", self.addr, self.unit)
    }

    async fn attempt(&mut self, request: ReadRequest) -> Result<Answer<Vec<u16>>, LinkError> {
        use tokio_modbus::client::Reader;
        let peer = self.peer();
        let timeout = |peer: String| LinkError::Timeout {
            peer,
            after: self.timeout,
        };
        let mut ctx = match self.ctx.take() {
            Some(ctx) => ctx,
            None => {
                let connect = tokio_modbus::client::tcp::connect_slave(
                    self.addr,
                    tokio_modbus::Slave(self.unit),
                );
                tokio::time::timeout(self.timeout, connect)
                    .await
                    .map_err(|_| timeout(peer.clone()))?
                    .map_err(|e| LinkError::Io {
                        peer: peer.clone(),
                        detail: format!("failed to connect: {e}"),
                    })?
            }
        };
        let (start, count) = (request.start(), request.count());
        let call = async {
            match request.kind() {
                RegisterKind::Holding => ctx.read_holding_registers(start, count).await,
                RegisterKind::Input => ctx.read_input_registers(start, count).await,
            }
        };
        let result = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| timeout(peer.clone()))?;
        let answer = match result {
            Ok(Ok(regs)) if regs.len() == usize::from(count) => Answer::Value(regs),
            Ok(Ok(regs)) => {
                return Err(LinkError::Unexpected {
                    peer,
                    detail: format!("{} registers for {count} requested", regs.len()),
                })
            }
            Ok(Err(code)) => Answer::Exception(DeviceException {
                function: request.kind().function(),
                code: u8::from(code),
            }),
            Err(tokio_modbus::Error::Transport(e)) => {
                return Err(LinkError::Io {
                    peer,
                    detail: e.to_string(),
                })
            }
            Err(tokio_modbus::Error::Protocol(e)) => {
                return Err(LinkError::Unexpected {
                    peer,
                    detail: e.to_string(),
                })
            }
        };
        // Only a healthy connection is kept.
        self.ctx = Some(ctx);
        Ok(answer)
    }
}

impl RegisterRead for TcpReader {
    async fn read_registers(
        &mut self,
        request: ReadRequest,
    ) -> Result<Answer<Vec<u16>>, LinkError> {
        let attempts = self.retries.saturating_add(1);
        let mut attempt = 1;
        loop {
            match self.attempt(request).await {
                Ok(answer) => return Ok(answer),
                Err(e) if attempt >= attempts => return Err(e),
                Err(e) => {
                    warn!(attempt, attempts, error = %e, "modbus tcp request failed; retrying");
                    attempt += 1;
                }
            }
        }
    }
}

/// Where a meter keeps its values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegisterMap {
    /// L1, L2, L3 voltage registers.
    pub voltage: [u16; 3],
    pub frequency: u16,
    pub kind: RegisterKind,
    pub encoding: RegisterEncoding,
}

impl Default for RegisterMap {
    /// 0x0024/0x0026/0x0028 and 0x0030, holding registers, float32 ABCD.
    fn default() -> Self {
        Self {
            voltage: [VOLTAGE_L1_REG, VOLTAGE_L2_REG, VOLTAGE_L3_REG],
            frequency: FREQUENCY_REG,
            kind: RegisterKind::Holding,
            encoding: RegisterEncoding::default(),
        }
    }
}

/// Why one value could not be read: the device's exception, a link failure, or registers that do
/// not decode. `name` is the value's name in the map (e.g. `voltage_l1`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReadError {
    #[error("{name} (register {register:#06X}): device exception 0x{code:02X} ({})", exception_name(*.code))]
    Exception {
        name: &'static str,
        register: u16,
        code: u8,
    },
    #[error("{name} (register {register:#06X}): link failed: {source}")]
    Link {
        name: &'static str,
        register: u16,
        source: LinkError,
    },
    #[error("{name} (register {register:#06X}): {source}")]
    Decode {
        name: &'static str,
        register: u16,
        source: EncodingError,
    },
    #[error("{name} (register {register:#06X}): {source}")]
    Request {
        name: &'static str,
        register: u16,
        source: RequestError,
    },
}

/// One reading of a meter, one result per value.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterReading {
    /// L1, L2, L3 in volts.
    pub voltage: [Result<f64, ReadError>; 3],
    /// Hz.
    pub frequency: Result<f64, ReadError>,
}

/// Reads a meter's voltages and frequency through a [`RegisterRead`] client.
#[derive(Debug)]
pub struct MeterReader<C> {
    client: C,
    map: RegisterMap,
}

impl<C: RegisterRead> MeterReader<C> {
    pub fn new(client: C, map: RegisterMap) -> Self {
        Self { client, map }
    }

    /// Give the client back.
    pub fn into_client(self) -> C {
        self.client
    }

    /// The underlying client.
    pub fn client_mut(&mut self) -> &mut C {
        &mut self.client
    }

    /// Read every value of the map, one request each, so one failing register does not hide the
    /// others.
    pub async fn read(&mut self) -> MeterReading {
        let [r1, r2, r3] = self.map.voltage;
        let l1 = self.read_value("voltage_l1", r1).await;
        let l2 = self.read_value("voltage_l2", r2).await;
        let l3 = self.read_value("voltage_l3", r3).await;
        let frequency = self.read_value("frequency", self.map.frequency).await;
        MeterReading {
            voltage: [l1, l2, l3],
            frequency,
        }
    }

    /// Read and decode the value named `name` at `register` with the map's encoding.
    pub async fn read_value(
        &mut self,
        name: &'static str,
        register: u16,
    ) -> Result<f64, ReadError> {
        let count = encoding::register_count(self.map.encoding) as u16;
        let request = ReadRequest::new(self.map.kind, register, count).map_err(|source| {
            ReadError::Request {
                name,
                register,
                source,
            }
        })?;
        match self.client.read_registers(request).await {
            Ok(Answer::Value(regs)) => {
                encoding::decode(&regs, self.map.encoding).map_err(|source| ReadError::Decode {
                    name,
                    register,
                    source,
                })
            }
            Ok(Answer::Exception(e)) => Err(ReadError::Exception {
                name,
                register,
                code: e.code,
            }),
            Err(source) => Err(ReadError::Link {
                name,
                register,
                source,
            }),
        }
    }
}
