//! An async SCPI line protocol over any byte stream (a raw TCP socket on port 5025, a serial
//! line via [`ScpiLink::connect_serial`]): `\n`-terminated commands, queries with a per-call timeout, `*IDN?` parsing and
//! `SYST:ERR?` draining (STANDARDS.md §11.1).
//!
//! Failures are two-layer and stay distinct: [`LinkFailed`] means the link broke (timeout,
//! closed, I/O) and names the instrument's address; [`ScpiError`] values are what the
//! instrument itself reported through its error queue (e.g. `-113,"Undefined header"`).

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

/// The de-facto raw-socket SCPI port.
pub const DEFAULT_PORT: u16 = 5025;

/// Longest reply line accepted; a longer one is a protocol failure, not unbounded memory.
pub const MAX_REPLY_LEN: usize = 64 * 1024;

/// Upper bound on `SYST:ERR?` reads while draining the queue (instruments hold ~10–30 entries).
pub const MAX_QUEUED_ERRORS: usize = 64;

/// Any byte stream an SCPI instrument can sit behind (TCP, serial, an in-memory pipe).
pub trait ScpiTransport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + ?Sized> ScpiTransport for T {}

/// What went wrong with the link (not with the instrument's view of the commands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkFailure {
    /// No complete reply line within the timeout.
    Timeout(Duration),
    /// The peer closed the connection.
    Closed,
    /// An I/O error (its text).
    Io(String),
    /// A reply that does not parse as what the query returns (its text, truncated).
    Malformed(String),
}

impl fmt::Display for LinkFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkFailure::Timeout(d) => write!(f, "no reply within {} ms", d.as_millis()),
            LinkFailure::Closed => f.write_str("connection closed by the instrument"),
            LinkFailure::Io(e) => write!(f, "i/o error: {e}"),
            LinkFailure::Malformed(r) => write!(f, "malformed reply {r:?}"),
        }
    }
}

/// The link to an instrument failed: names the instrument's address and the command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("link to instrument {addr} failed during {command:?}: {failure}")]
pub struct LinkFailed {
    pub addr: String,
    pub command: String,
    pub failure: LinkFailure,
}

/// One entry of an instrument's error queue (`SYST:ERR?` → `-113,"Undefined header"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScpiError {
    pub code: i32,
    pub message: String,
}

impl fmt::Display for ScpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},\"{}\"", self.code, self.message)
    }
}

impl ScpiError {
    /// Parses `<code>,"<message>"` (quotes optional). `None` when there is no leading integer.
    pub fn parse(reply: &str) -> Option<ScpiError> {
        let reply = reply.trim();
        let (code, rest) = match reply.split_once(',') {
            Some((c, r)) => (c, r),
            None => (reply, ""),
        };
        let code = code.trim().parse::<i32>().ok()?;
        let message = rest.trim().trim_matches('"').to_string();
        Some(ScpiError { code, message })
    }
}

/// The instrument reported errors in its queue after a command sequence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("instrument {addr} reported {} after {context}: {}", errors.len(), list(errors))]
pub struct InstrumentError {
    pub addr: String,
    /// What had just been sent (e.g. "programming list").
    pub context: String,
    /// Non-empty, oldest first.
    pub errors: Vec<ScpiError>,
}

fn list(errors: &[ScpiError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// `*IDN?` → manufacturer, model, serial, firmware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub manufacturer: String,
    pub model: String,
    pub serial: String,
    pub firmware: String,
}

impl Identity {
    /// Parses the four comma-separated `*IDN?` fields (missing trailing fields are empty).
    pub fn parse(reply: &str) -> Option<Identity> {
        let mut f = reply.trim().splitn(4, ',').map(|s| s.trim().to_string());
        let manufacturer = f.next().filter(|s| !s.is_empty())?;
        Some(Identity {
            manufacturer,
            model: f.next().unwrap_or_default(),
            serial: f.next().unwrap_or_default(),
            firmware: f.next().unwrap_or_default(),
        })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} (serial {}, firmware {})",
            self.manufacturer, self.model, self.serial, self.firmware
        )
    }
}

/// An SCPI session over one transport.
pub struct ScpiLink<T> {
    io: BufStream<T>,
    addr: String,
    /// Default per-query timeout.
    pub timeout: Duration,
}

impl<T> fmt::Debug for ScpiLink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScpiLink")
            .field("addr", &self.addr)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ScpiLink<TcpStream> {
    /// Connects to `addr` (e.g. `"192.168.0.20:5025"`) within `timeout`.
    pub async fn connect_tcp(addr: &str, timeout: Duration) -> Result<Self, LinkFailed> {
        let fail = |failure| LinkFailed {
            addr: addr.to_string(),
            command: "connect".into(),
            failure,
        };
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| fail(LinkFailure::Timeout(timeout)))?
            .map_err(|e| fail(LinkFailure::Io(e.to_string())))?;
        // Commands are small; do not let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        Ok(ScpiLink::new(stream, addr, timeout))
    }
}

impl ScpiLink<tokio_serial::SerialStream> {
    /// Opens the serial port `path` (e.g. `/dev/ttyUSB0`) at `baud`, 8 data bits, no parity,
    /// 1 stop bit, no flow control; `timeout` is the default per-query timeout and errors name
    /// `path`. Must be called inside a tokio runtime (the port registers with its reactor).
    pub fn connect_serial(path: &str, baud: u32, timeout: Duration) -> Result<Self, LinkFailed> {
        use tokio_serial::SerialPortBuilderExt;
        let stream = tokio_serial::new(path, baud)
            .data_bits(tokio_serial::DataBits::Eight)
            .parity(tokio_serial::Parity::None)
            .stop_bits(tokio_serial::StopBits::One)
            .flow_control(tokio_serial::FlowControl::None)
            .open_native_async()
            .map_err(|e| LinkFailed {
                addr: path.to_string(),
                command: "open".into(),
                failure: LinkFailure::Io(format!("failed to open serial port at {baud} baud: {e}")),
            })?;
        Ok(ScpiLink::new(stream, path, timeout))
    }
}

impl<T: ScpiTransport> ScpiLink<T> {
    /// Wraps a connected transport; `addr` names the instrument in errors.
    pub fn new(io: T, addr: impl Into<String>, timeout: Duration) -> Self {
        ScpiLink {
            io: BufStream::new(io),
            addr: addr.into(),
            timeout,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn fail(&self, command: &str, failure: LinkFailure) -> LinkFailed {
        LinkFailed {
            addr: self.addr.clone(),
            command: command.to_string(),
            failure,
        }
    }

    /// Sends one command line (a `\n` is appended) within the default timeout.
    pub async fn send(&mut self, command: &str) -> Result<(), LinkFailed> {
        tracing::debug!(addr = %self.addr, command, "scpi send");
        let timeout = self.timeout;
        let write = async {
            self.io.write_all(command.as_bytes()).await?;
            self.io.write_all(b"\n").await?;
            self.io.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Err(_) => Err(self.fail(command, LinkFailure::Timeout(timeout))),
            Ok(Err(e)) => Err(self.fail(command, io_failure(&e))),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Sends a query and reads one reply line with the default timeout.
    pub async fn query(&mut self, command: &str) -> Result<String, LinkFailed> {
        let timeout = self.timeout;
        self.query_within(command, timeout).await
    }

    /// Sends a query and reads one reply line (without its terminator) within `timeout`.
    ///
    /// After a [`LinkFailed`] the session may be out of step (a late reply can still arrive):
    /// treat the link as broken — only fire-and-forget commands such as `OUTP OFF` are sent
    /// on it afterwards.
    pub async fn query_within(
        &mut self,
        command: &str,
        timeout: Duration,
    ) -> Result<String, LinkFailed> {
        self.send(command).await?;
        match tokio::time::timeout(timeout, read_line(&mut self.io)).await {
            Err(_) => Err(self.fail(command, LinkFailure::Timeout(timeout))),
            Ok(Err(f)) => Err(self.fail(command, f)),
            Ok(Ok(line)) => {
                tracing::debug!(addr = %self.addr, command, reply = %line, "scpi reply");
                Ok(line)
            }
        }
    }

    /// `*IDN?`.
    pub async fn identify(&mut self) -> Result<Identity, LinkFailed> {
        let reply = self.query("*IDN?").await?;
        Identity::parse(&reply).ok_or_else(|| self.fail("*IDN?", malformed(&reply)))
    }

    /// Reads `SYST:ERR?` until `0,"No error"` (at most [`MAX_QUEUED_ERRORS`] reads) and
    /// returns the queued errors, oldest first (empty when the queue was clean).
    pub async fn drain_errors(&mut self) -> Result<Vec<ScpiError>, LinkFailed> {
        let mut errors = Vec::new();
        for _ in 0..MAX_QUEUED_ERRORS {
            let reply = self.query("SYST:ERR?").await?;
            let e = ScpiError::parse(&reply)
                .ok_or_else(|| self.fail("SYST:ERR?", malformed(&reply)))?;
            if e.code == 0 {
                return Ok(errors);
            }
            errors.push(e);
        }
        Err(self.fail(
            "SYST:ERR?",
            LinkFailure::Malformed(format!(
                "error queue not empty after {MAX_QUEUED_ERRORS} reads"
            )),
        ))
    }

    /// Drains the error queue and turns a non-empty one into an [`InstrumentError`].
    pub async fn check_errors(
        &mut self,
        context: &str,
    ) -> Result<Result<(), InstrumentError>, LinkFailed> {
        let errors = self.drain_errors().await?;
        if errors.is_empty() {
            Ok(Ok(()))
        } else {
            Ok(Err(InstrumentError {
                addr: self.addr.clone(),
                context: context.to_string(),
                errors,
            }))
        }
    }

    /// Gives the transport back (e.g. to hand it to a guard task).
    pub fn into_inner(self) -> (T, String) {
        (self.io.into_inner(), self.addr)
    }
}

fn malformed(reply: &str) -> LinkFailure {
    LinkFailure::Malformed(reply.chars().take(80).collect())
}

fn io_failure(e: &std::io::Error) -> LinkFailure {
    use std::io::ErrorKind::*;
    match e.kind() {
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => LinkFailure::Closed,
        _ => LinkFailure::Io(e.to_string()),
    }
}

/// Reads one `\n`-terminated line (a trailing `\r` is dropped), bounded by [`MAX_REPLY_LEN`].
pub(crate) async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> Result<String, LinkFailure> {
    let mut buf = Vec::new();
    loop {
        let chunk = r.fill_buf().await.map_err(|e| io_failure(&e))?;
        if chunk.is_empty() {
            return Err(LinkFailure::Closed);
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        buf.extend_from_slice(&chunk[..take]);
        r.consume(take);
        if done {
            break;
        }
        if buf.len() > MAX_REPLY_LEN {
            return Err(LinkFailure::Malformed(format!(
                "reply longer than {MAX_REPLY_LEN} bytes"
            )));
        }
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_idn_and_errors() {
        let id = Identity::parse("Chroma ATE,61511,123456,1.02\n").unwrap();
        assert_eq!(
            (
                id.manufacturer.as_str(),
                id.model.as_str(),
                id.serial.as_str(),
                id.firmware.as_str()
            ),
            ("Chroma ATE", "61511", "123456", "1.02")
        );
        assert_eq!(Identity::parse("  "), None);
        assert_eq!(
            ScpiError::parse("-113,\"Undefined header\""),
            Some(ScpiError {
                code: -113,
                message: "Undefined header".into()
            })
        );
        assert_eq!(ScpiError::parse("+0,\"No error\"").unwrap().code, 0);
        assert_eq!(ScpiError::parse("garbage"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn drains_the_queue_and_times_out_naming_the_address() {
        let (client, server) = tokio::io::duplex(1024);
        let mut link = ScpiLink::new(client, "pipe:1", Duration::from_millis(200));
        let peer = tokio::spawn(async move {
            let mut s = BufStream::new(server);
            let replies = [
                "-222,\"Data out of range\"",
                "-113,\"Undefined header\"",
                "0,\"No error\"",
            ];
            for r in replies {
                let q = read_line(&mut s).await.unwrap();
                assert_eq!(q, "SYST:ERR?");
                s.write_all(format!("{r}\n").as_bytes()).await.unwrap();
                s.flush().await.unwrap();
            }
            // Read the next query and never answer.
            let _ = read_line(&mut s).await;
            s
        });
        let errs = link.drain_errors().await.unwrap();
        assert_eq!(
            errs.iter().map(|e| e.code).collect::<Vec<_>>(),
            vec![-222, -113]
        );
        let err = link.query("*IDN?").await.unwrap_err();
        assert_eq!(
            err.failure,
            LinkFailure::Timeout(Duration::from_millis(200))
        );
        assert!(err.to_string().contains("pipe:1"), "{err}");
        drop(peer.await.unwrap());
        let err = link.query("*IDN?").await.unwrap_err();
        assert_eq!(err.failure, LinkFailure::Closed);
    }
}
