//! Brokers: where meters publish.
//!
//! - [`BrokerUrl`] is what `--broker` accepts ([`BrokerUrl::parse`]): `embedded`,
//!   `spawn:mosquitto`, `mqtt://host[:port]` (1883), `mqtts://host[:port]` (8883),
//!   `ws://host[:port][/path]` (80, `/mqtt`) and `wss://host[:port][/path]` (443, `/mqtt`);
//!   IPv6 hosts in brackets.
//! - [`EmbeddedBroker`] runs rumqttd 0.20 in this process on its own threads, configured for
//!   fleets ([`EmbeddedConfig`]: small commit-log segments, 20,000 connections).
//! - [`SpawnedMosquitto`] starts a local Mosquitto on a free loopback port with a generated
//!   config and stops it when dropped.
//! - [`start_broker`] turns a URL into a [`RunningBroker`]: a connectable address in every case.
//!
//! # TLS and WebSockets
//! `mqtts://`, `ws://` and `wss://` parse today, so scripts and config files can already name
//! them, but [`BrokerUrl::transport_supported`] refuses them with
//! [`BrokerError::Unsupported`] ("TLS and WebSockets arrive in a later issue"), and so does
//! [`start_broker`]. The URL already carries everything those transports need (host for SNI
//! and certificate checks, port, WebSocket path); [`BrokerUrl::transport`] names the transport,
//! so adding them means: a [`Transport`] arm in the client connector (rumqttc's `use-rustls` /
//! `websocket` features), a [`RunningBroker`] arm for an external TLS/WS broker, and deleting
//! the refusal in `transport_supported`. Nothing that parses or prints URLs changes.
//!
//! # The embedded broker cannot be stopped
//! rumqttd 0.20 has no shutdown: `Broker::start` joins its listener threads, which accept
//! forever, and the router thread runs until every sender to it is gone (the listeners hold
//! them). So an [`EmbeddedBroker`]'s threads and listening socket live until the process exits;
//! dropping the handle does not stop them. Broker outages are tested with
//! [`SpawnedMosquitto::stop`] / [`SpawnedMosquitto::restart`] instead.

use std::fmt;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Errors of broker handling.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("`{program}` is not installed (looked in PATH, /usr/sbin and /usr/local/sbin)")]
    NotInstalled { program: String },
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "`{program}` exited before accepting connections on {addr} ({status}); its log: {log}"
    )]
    Exited {
        program: String,
        addr: SocketAddr,
        status: String,
        log: String,
    },
    #[error("`{program}` did not accept connections on {addr} within {waited:?}")]
    NotReady {
        program: String,
        addr: SocketAddr,
        waited: Duration,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bad broker URL `{url}`: {why}")]
    BadUrl { url: String, why: String },
    #[error(
        "broker URL `{url}`: {transport} is not supported yet (TLS and WebSockets arrive in a \
         later issue); use mqtt://HOST:PORT, spawn:mosquitto or embedded"
    )]
    Unsupported {
        url: String,
        transport: &'static str,
    },
    #[error("cannot resolve broker host `{host}` (port {port}): {why}")]
    Resolve {
        host: String,
        port: u16,
        why: String,
    },
    #[error("bad embedded broker configuration: {0}")]
    Config(String),
    #[error("embedded rumqttd on {addr} did not start: {why}")]
    Embedded { addr: SocketAddr, why: String },
}

/// Where to find `program`: `PATH` first, then the sbin directories Debian installs daemons to.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// A free TCP port on `ip` (bound, read, released: another process may take it in between,
/// which the caller notices as a failure to start).
pub fn free_port(ip: std::net::IpAddr) -> std::io::Result<u16> {
    let l = TcpListener::bind(SocketAddr::new(ip, 0))?;
    Ok(l.local_addr()?.port())
}

/// Wait until `addr` accepts a TCP connection, or `child` exits, or `timeout` passes.
fn wait_accepting(
    child: &mut Child,
    program: &str,
    addr: SocketAddr,
    log: &Path,
    timeout: Duration,
) -> Result<(), BrokerError> {
    let started = Instant::now();
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(BrokerError::Exited {
                program: program.to_owned(),
                addr,
                status: status.to_string(),
                log: std::fs::read_to_string(log).unwrap_or_default(),
            });
        }
        if started.elapsed() >= timeout {
            return Err(BrokerError::NotReady {
                program: program.to_owned(),
                addr,
                waited: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Mosquitto this process started: loopback only, anonymous, generous queues so a
/// store-and-forward flush is never dropped by the broker. Stopped and its directory removed on
/// drop.
#[derive(Debug)]
pub struct SpawnedMosquitto {
    child: Option<Child>,
    addr: SocketAddr,
    dir: PathBuf,
    program: PathBuf,
}

impl SpawnedMosquitto {
    /// Start `mosquitto` on a free port of 127.0.0.1.
    pub fn start() -> Result<SpawnedMosquitto, BrokerError> {
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let port = free_port(ip).map_err(|source| BrokerError::Io {
            context: "cannot find a free port".into(),
            source,
        })?;
        Self::start_on(SocketAddr::new(ip, port))
    }

    /// Start `mosquitto` listening on `addr` (e.g. to restart a stopped broker on its old port).
    pub fn start_on(addr: SocketAddr) -> Result<SpawnedMosquitto, BrokerError> {
        let program = find_program("mosquitto").ok_or_else(|| BrokerError::NotInstalled {
            program: "mosquitto".into(),
        })?;
        let dir = std::env::temp_dir().join(format!(
            "gridloop-mosquitto-{}-{}",
            std::process::id(),
            unique()
        ));
        let io = |context: String| move |source| BrokerError::Io { context, source };
        std::fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
        let conf = dir.join("mosquitto.conf");
        let text = mosquitto_config(addr, &dir);
        std::fs::File::create(&conf)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(io(format!("cannot write {}", conf.display())))?;
        let mut child = spawn_mosquitto(&program, &dir)?;
        let log = dir.join("mosquitto.log");
        if let Err(e) = wait_accepting(&mut child, "mosquitto", addr, &log, Duration::from_secs(10))
        {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(SpawnedMosquitto {
            child: Some(child),
            addr,
            dir,
            program,
        })
    }

    /// Where it listens (MQTT 3.1.1/5 over TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> BrokerUrl {
        BrokerUrl::Mqtt {
            host: self.addr.ip().to_string(),
            port: self.addr.port(),
        }
    }

    /// The mosquitto binary used.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Process id (for RSS readings in benchmarks).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stop the broker now (an outage): SIGTERM, so Mosquitto saves its persistent sessions
    /// and their queued QoS-1 messages, then SIGKILL if it has not exited within 5 s.
    /// [`SpawnedMosquitto::restart`] brings it back on the same port with the same state.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let termed = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if termed {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Start the broker again after [`SpawnedMosquitto::stop`]: same port, same config, same
    /// persistence directory (persistent sessions and their queued messages survive).
    pub fn restart(&mut self) -> Result<(), BrokerError> {
        self.stop();
        let mut child = spawn_mosquitto(&self.program, &self.dir)?;
        let log = self.dir.join("mosquitto.log");
        if let Err(e) = wait_accepting(
            &mut child,
            "mosquitto",
            self.addr,
            &log,
            Duration::from_secs(10),
        ) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        self.child = Some(child);
        Ok(())
    }
}

/// Run `program -c dir/mosquitto.conf`, its output appended to `dir/mosquitto.log`.
fn spawn_mosquitto(program: &Path, dir: &Path) -> Result<Child, BrokerError> {
    let conf = dir.join("mosquitto.conf");
    let log = dir.join("mosquitto.log");
    let io = |context: String| move |source| BrokerError::Io { context, source };
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(io(format!("cannot open {}", log.display())))?;
    let err_file = log_file
        .try_clone()
        .map_err(io(format!("cannot reopen {}", log.display())))?;
    Command::new(program)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(err_file)
        .spawn()
        .map_err(|source| BrokerError::Spawn {
            program: program.display().to_string(),
            source,
        })
}

impl Drop for SpawnedMosquitto {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The generated config: one loopback listener, anonymous, queues big enough that a meter's
/// whole ring can be in flight, TCP_NODELAY on every socket (small MQTT packets are never held
/// back by Nagle waiting for a delayed ACK), persistence in `dir` (written on shutdown only) so a
/// [`SpawnedMosquitto::restart`] keeps persistent sessions.
pub fn mosquitto_config(addr: SocketAddr, dir: &Path) -> String {
    // Started as root, Mosquitto drops to user `mosquitto`, which could not write our
    // root-owned persistence directory: stay the user that owns it.
    let user = if running_as_root() { "user root\n" } else { "" };
    format!(
        "# generated by gridloop\n\
         {user}\
         listener {port} {ip}\n\
         allow_anonymous true\n\
         persistence true\n\
         persistence_location {dir}/\n\
         autosave_interval 0\n\
         max_inflight_messages 0\n\
         max_queued_messages 1000000\n\
         max_connections -1\n\
         set_tcp_nodelay true\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n",
        port = addr.port(),
        ip = addr.ip(),
        dir = dir.display(),
    )
}

/// Effective uid 0, from `/proc/self/status` (`Uid: real effective saved fs`).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// What `--broker` accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerUrl {
    /// No `--broker`: rumqttd in-process.
    Embedded,
    /// `spawn:mosquitto`: a local Mosquitto this process starts and stops.
    SpawnMosquitto,
    /// `mqtt://host[:port]` (default port 1883).
    Mqtt { host: String, port: u16 },
    /// `mqtts://host[:port]` (default 8883): TLS 1.3, not implemented yet.
    Mqtts { host: String, port: u16 },
    /// `ws://host[:port][/path]` (default 80, path `/mqtt`): MQTT over WebSockets, not
    /// implemented yet.
    Ws {
        host: String,
        port: u16,
        path: String,
    },
    /// `wss://host[:port][/path]` (default 443, path `/mqtt`): not implemented yet.
    Wss {
        host: String,
        port: u16,
        path: String,
    },
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerUrl::Embedded => f.write_str("embedded"),
            BrokerUrl::SpawnMosquitto => f.write_str("spawn:mosquitto"),
            BrokerUrl::Mqtt { host, port } => write!(f, "mqtt://{}:{port}", bracket(host)),
            BrokerUrl::Mqtts { host, port } => write!(f, "mqtts://{}:{port}", bracket(host)),
            BrokerUrl::Ws { host, port, path } => write!(f, "ws://{}:{port}{path}", bracket(host)),
            BrokerUrl::Wss { host, port, path } => {
                write!(f, "wss://{}:{port}{path}", bracket(host))
            }
        }
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Commit-log limits of one rumqttd log. rumqttd keeps one log per subscription filter and,
/// for a publish no filter matches, one per topic; a log holds at most `segment_count`
/// segments of about `segment_size` bytes and drops its oldest segment beyond that. A
/// subscriber that falls more than that far behind skips ahead (rumqttd logs "jumping to head").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimit {
    /// Bytes (topic + payload) per segment; rumqttd needs at least 1024.
    pub segment_size: usize,
    /// Segments kept in memory, at least 1.
    pub segment_count: usize,
}

impl LogLimit {
    /// The most a log holds: `segment_size × segment_count` bytes.
    pub fn bytes(&self) -> usize {
        self.segment_size.saturating_mul(self.segment_count)
    }

    fn check(&self, what: &str) -> Result<(), BrokerError> {
        if self.segment_size < 1024 || self.segment_count == 0 {
            return Err(BrokerError::Config(format!(
                "{what}: segment_size {} (at least 1024) and segment_count {} (at least 1)",
                self.segment_size, self.segment_count
            )));
        }
        Ok(())
    }
}

/// How the embedded rumqttd is configured. The defaults are for fleets of thousands of meters
/// on one machine; rumqttd's own defaults (100 MB × 10 segments per log) grew its RSS to 2.3 GB
/// under sustained load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// Concurrent client connections (rumqttd preallocates its tables for this many).
    pub max_connections: usize,
    /// Largest MQTT packet accepted, bytes.
    pub max_payload_size: usize,
    /// Packets read from one connection per batch.
    pub max_inflight_count: usize,
    /// How long a new TCP connection may take to send CONNECT, ms.
    pub connection_timeout_ms: u16,
    /// Limits of subscription-filter logs (what subscribers read from): 1 MiB × 32 = 32 MiB,
    /// about 200,000 telemetry messages (20 s of a 10,000-meter fleet at 1 Hz) of backlog per
    /// subscription. rumqttd skips a subscriber further behind ahead to the head: with 2 MiB a
    /// subscriber of 10,000 meters on a busy 2-core machine lost 12 % of the messages
    /// (`gridloop bench fleet`).
    pub log: LogLimit,
    /// Smaller limits for logs whose name matches these filters. The default gives meter topics
    /// (`gridloop/+/+/+/+`, the per-topic logs rumqttd keeps for every topic it has seen
    /// without a subscriber) 16 KiB × 4 = 64 KiB each, so 10,000 meters publishing with nobody
    /// subscribed hold at most ~640 MiB per kind of topic, not 10 GB each. A subscription to
    /// one exact five-level filter (e.g. `gridloop/+/+/+/telemetry`) gets this limit too;
    /// subscribe with `gridloop/#` or a shorter filter for the larger one.
    pub topic_logs: Vec<(String, LogLimit)>,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            max_connections: 20_000,
            max_payload_size: 1024 * 1024,
            max_inflight_count: 100,
            connection_timeout_ms: 30_000,
            log: LogLimit {
                segment_size: 1024 * 1024,
                segment_count: 32,
            },
            topic_logs: vec![(
                "gridloop/+/+/+/+".to_owned(),
                LogLimit {
                    segment_size: 16 * 1024,
                    segment_count: 4,
                },
            )],
        }
    }
}

impl EmbeddedConfig {
    /// rumqttd's configuration: one MQTT 3.1.1 listener on `addr`, no TLS, no console, no
    /// metrics, no delay between accepts, topics created on first publish (`dynamic_filters`,
    /// so a meter publishing before anyone subscribed is not disconnected).
    fn rumqttd(&self, addr: SocketAddr) -> Result<rumqttd::Config, BrokerError> {
        self.log.check("log")?;
        for (filter, limit) in &self.topic_logs {
            limit.check(&format!("topic_logs `{filter}`"))?;
        }
        if self.max_connections == 0 || self.max_payload_size == 0 || self.max_inflight_count == 0 {
            return Err(BrokerError::Config(
                "max_connections, max_payload_size and max_inflight_count must be positive".into(),
            ));
        }
        let custom = self
            .topic_logs
            .iter()
            .map(|(filter, limit)| {
                (
                    filter.clone(),
                    rumqttd::SegmentConfig {
                        max_segment_size: limit.segment_size,
                        max_segment_count: limit.segment_count,
                    },
                )
            })
            .collect::<std::collections::HashMap<_, _>>();
        let server = rumqttd::ServerSettings {
            name: format!("gridloop-mqtt-{}", addr.port()),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 0,
            connections: rumqttd::ConnectionSettings {
                connection_timeout_ms: self.connection_timeout_ms,
                max_payload_size: self.max_payload_size,
                max_inflight_count: self.max_inflight_count,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        };
        Ok(rumqttd::Config {
            id: 0,
            router: rumqttd::RouterConfig {
                max_connections: self.max_connections,
                max_outgoing_packet_count: 200,
                max_segment_size: self.log.segment_size,
                max_segment_count: self.log.segment_count,
                custom_segment: (!custom.is_empty()).then_some(custom),
                initialized_filters: None,
                shared_subscriptions_strategy: Default::default(),
            },
            v4: Some([("gridloop".to_owned(), server)].into_iter().collect()),
            ..rumqttd::Config::default()
        })
    }
}

/// rumqttd 0.20 running in this process: a router thread plus a listener thread with its own
/// single-threaded tokio runtime, none of them on the caller's runtime. MQTT 3.1.1, anonymous,
/// persistent sessions (clean session off) kept in memory. It cannot be stopped (see the
/// module docs): its threads live until the process exits.
pub struct EmbeddedBroker {
    addr: SocketAddr,
    config: EmbeddedConfig,
    /// Set by the rumqttd thread if its listener ends.
    ended: std::sync::Arc<std::sync::OnceLock<String>>,
}

impl fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("addr", &self.addr)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EmbeddedBroker {
    /// Start rumqttd with [`EmbeddedConfig::default`] on `addr`; port 0 picks a free port.
    pub fn start(addr: SocketAddr) -> Result<EmbeddedBroker, BrokerError> {
        Self::start_with(addr, EmbeddedConfig::default())
    }

    /// Start rumqttd with `config` on `addr`. rumqttd binds inside its own thread and does not
    /// report the port it got, so port 0 is resolved here with [`free_port`] (retried if
    /// another process takes the port first). Returns once the broker answers an MQTT CONNECT.
    pub fn start_with(
        addr: SocketAddr,
        config: EmbeddedConfig,
    ) -> Result<EmbeddedBroker, BrokerError> {
        if addr.port() != 0 {
            return Self::start_exact(addr, config);
        }
        let mut last = None;
        for _ in 0..5 {
            let port = free_port(addr.ip()).map_err(|source| BrokerError::Io {
                context: format!("cannot find a free port on {}", addr.ip()),
                source,
            })?;
            match Self::start_exact(SocketAddr::new(addr.ip(), port), config.clone()) {
                Ok(b) => return Ok(b),
                Err(e @ (BrokerError::Io { .. } | BrokerError::Embedded { .. })) => {
                    tracing::debug!(error = %e, "free port taken before rumqttd bound it; retrying");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| BrokerError::Embedded {
            addr,
            why: "no free port".into(),
        }))
    }

    fn start_exact(
        addr: SocketAddr,
        config: EmbeddedConfig,
    ) -> Result<EmbeddedBroker, BrokerError> {
        let rumqttd_config = config.rumqttd(addr)?;
        // rumqttd only logs a failed bind; try it here first for a clear error. (The port is
        // free again before rumqttd binds it.)
        drop(TcpListener::bind(addr).map_err(|source| BrokerError::Io {
            context: format!("cannot listen on {addr}"),
            source,
        })?);
        let ended = std::sync::Arc::new(std::sync::OnceLock::new());
        let ended_tx = ended.clone();
        std::thread::Builder::new()
            .name(format!("rumqttd-{}", addr.port()))
            .spawn(move || {
                let mut broker = rumqttd::Broker::new(rumqttd_config);
                // Returns only when the listener thread ended: its bind failed, or it panicked.
                let why = match broker.start() {
                    Ok(()) => "its listener thread ended (bind failed?)".to_owned(),
                    Err(e) => e.to_string(),
                };
                tracing::error!(%addr, why, "embedded rumqttd stopped");
                let _ = ended_tx.set(why);
            })
            .map_err(|source| BrokerError::Io {
                context: "cannot start the rumqttd thread".into(),
                source,
            })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(why) = ended.get() {
                return Err(BrokerError::Embedded {
                    addr,
                    why: why.clone(),
                });
            }
            if mqtt_connect_probe(addr, Duration::from_millis(500)).is_ok() {
                return Ok(EmbeddedBroker {
                    addr,
                    config,
                    ended,
                });
            }
            if Instant::now() >= deadline {
                return Err(BrokerError::Embedded {
                    addr,
                    why: "no CONNACK within 10 s".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Where it listens (MQTT 3.1.1 over TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `mqtt://IP:PORT`.
    pub fn url(&self) -> BrokerUrl {
        BrokerUrl::Mqtt {
            host: self.addr.ip().to_string(),
            port: self.addr.port(),
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EmbeddedConfig {
        &self.config
    }

    /// `Some(why)` once rumqttd's listener has ended (it never does unless it failed).
    pub fn failed(&self) -> Option<String> {
        self.ended.get().cloned()
    }
}

/// Connect to `addr`, send an MQTT 3.1.1 CONNECT (clean session, client id
/// `gridloop-probe-PID-N`), expect an accepting CONNACK, send DISCONNECT. Proves an MQTT
/// broker answers there without leaving a session behind.
pub fn mqtt_connect_probe(addr: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    use std::io::Read as _;
    let id = format!("gridloop-probe-{}-{}", std::process::id(), unique());
    let mut connect = vec![0x10];
    let body_len = 10 + 2 + id.len();
    connect.push(u8::try_from(body_len).map_err(|_| std::io::ErrorKind::InvalidInput)?);
    connect.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30]);
    connect.extend_from_slice(&u16::try_from(id.len()).unwrap_or(0).to_be_bytes());
    connect.extend_from_slice(id.as_bytes());
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(&connect)?;
    let mut connack = [0_u8; 4];
    s.read_exact(&mut connack)?;
    if connack != [0x20, 0x02, 0x00, 0x00] {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("expected an accepting CONNACK, got {connack:02x?}"),
        ));
    }
    s.write_all(&[0xE0, 0x00])?;
    Ok(())
}

/// A broker meters can connect to, started (or found) by [`start_broker`].
#[derive(Debug)]
pub enum RunningBroker {
    /// rumqttd in this process.
    Embedded(EmbeddedBroker),
    /// A Mosquitto this process started; stopped when this is dropped.
    Mosquitto(SpawnedMosquitto),
    /// A broker someone else runs, at the address its host name resolved to.
    External { url: BrokerUrl, addr: SocketAddr },
}

impl RunningBroker {
    /// The address to connect to.
    pub fn addr(&self) -> SocketAddr {
        match self {
            RunningBroker::Embedded(b) => b.addr(),
            RunningBroker::Mosquitto(m) => m.addr(),
            RunningBroker::External { addr, .. } => *addr,
        }
    }

    /// The URL clients use (`mqtt://…`, the external URL as given).
    pub fn url(&self) -> BrokerUrl {
        match self {
            RunningBroker::Embedded(b) => b.url(),
            RunningBroker::Mosquitto(m) => m.url(),
            RunningBroker::External { url, .. } => url.clone(),
        }
    }
}

impl fmt::Display for RunningBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunningBroker::Embedded(b) => write!(f, "broker: embedded rumqttd on {}", b.addr()),
            RunningBroker::Mosquitto(m) => write!(
                f,
                "broker: spawned mosquitto on {} (pid {}, {})",
                m.addr(),
                m.pid()
                    .map_or_else(|| "stopped".to_owned(), |p| p.to_string()),
                m.program().display()
            ),
            RunningBroker::External { url, addr } => {
                write!(f, "broker: external {url} ({addr})")
            }
        }
    }
}

/// Start or find the broker `url` names: [`EmbeddedBroker`] on a free loopback port,
/// [`SpawnedMosquitto`] on a free loopback port, or an `mqtt://` host resolved (not connected:
/// meters ride out a broker that is down). TLS and WebSocket URLs are
/// [`BrokerError::Unsupported`].
pub fn start_broker(url: &BrokerUrl) -> Result<RunningBroker, BrokerError> {
    url.transport_supported()?;
    match url {
        BrokerUrl::Embedded => EmbeddedBroker::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .map(RunningBroker::Embedded),
        BrokerUrl::SpawnMosquitto => SpawnedMosquitto::start().map(RunningBroker::Mosquitto),
        BrokerUrl::Mqtt { host, port } => {
            use std::net::ToSocketAddrs as _;
            let resolve = |why: String| BrokerError::Resolve {
                host: host.clone(),
                port: *port,
                why,
            };
            let addr = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| resolve(e.to_string()))?
                .next()
                .ok_or_else(|| resolve("no address".into()))?;
            Ok(RunningBroker::External {
                url: url.clone(),
                addr,
            })
        }
        BrokerUrl::Mqtts { .. } | BrokerUrl::Ws { .. } | BrokerUrl::Wss { .. } => {
            Err(BrokerError::Unsupported {
                url: url.to_string(),
                transport: url.transport().name(),
            })
        }
    }
}

/// How bytes reach a broker named by a [`BrokerUrl`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// rumqttd in this process, reached over loopback TCP.
    Embedded,
    /// Plain MQTT over TCP (`spawn:mosquitto`, `mqtt://`).
    Tcp,
    /// MQTT over TLS (`mqtts://`): a later issue.
    Tls,
    /// MQTT over WebSockets (`ws://`): a later issue.
    WebSocket,
    /// MQTT over WebSockets over TLS (`wss://`): a later issue.
    WebSocketTls,
}

impl Transport {
    /// Whether this build can connect with it.
    pub fn supported(self) -> bool {
        matches!(self, Transport::Embedded | Transport::Tcp)
    }

    fn name(self) -> &'static str {
        match self {
            Transport::Embedded => "the embedded broker",
            Transport::Tcp => "MQTT over TCP",
            Transport::Tls => "MQTT over TLS (mqtts://)",
            Transport::WebSocket => "MQTT over WebSockets (ws://)",
            Transport::WebSocketTls => "MQTT over secure WebSockets (wss://)",
        }
    }
}

impl BrokerUrl {
    /// Default port of `mqtt://`.
    pub const MQTT_PORT: u16 = 1883;
    /// Default port of `mqtts://`.
    pub const MQTTS_PORT: u16 = 8883;
    /// Default port of `ws://`.
    pub const WS_PORT: u16 = 80;
    /// Default port of `wss://`.
    pub const WSS_PORT: u16 = 443;
    /// Default path of `ws://` and `wss://`.
    pub const WS_PATH: &'static str = "/mqtt";

    /// Parse what `--broker` accepts. Schemes are case-insensitive; an IPv6 host is written in
    /// brackets (`mqtt://[::1]:1883`). Errors name the part that is wrong.
    pub fn parse(text: &str) -> Result<BrokerUrl, BrokerError> {
        let bad = |why: String| BrokerError::BadUrl {
            url: text.to_owned(),
            why,
        };
        if text.is_empty() {
            return Err(bad(
                "it is empty; expected embedded, spawn:mosquitto or mqtt://HOST[:PORT]".into(),
            ));
        }
        if text.eq_ignore_ascii_case("embedded") {
            return Ok(BrokerUrl::Embedded);
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            if let Some(program) = text
                .get(..6)
                .filter(|p| p.eq_ignore_ascii_case("spawn:"))
                .and_then(|_| text.get(6..))
            {
                return if program == "mosquitto" {
                    Ok(BrokerUrl::SpawnMosquitto)
                } else {
                    Err(bad(format!(
                        "spawn: starts only `mosquitto` (spawn:mosquitto), not `{program}`"
                    )))
                };
            }
            return Err(bad(
                "expected embedded, spawn:mosquitto or SCHEME://HOST[:PORT] with SCHEME mqtt, \
                 mqtts, ws or wss"
                    .into(),
            ));
        };
        let scheme = scheme.to_ascii_lowercase();
        let (default_port, web) = match scheme.as_str() {
            "mqtt" => (Self::MQTT_PORT, false),
            "mqtts" => (Self::MQTTS_PORT, false),
            "ws" => (Self::WS_PORT, true),
            "wss" => (Self::WSS_PORT, true),
            _ => {
                return Err(bad(format!(
                    "unknown scheme `{scheme}` (expected mqtt, mqtts, ws or wss)"
                )))
            }
        };
        if rest.contains('?') {
            return Err(bad("a query (`?…`) is not supported".into()));
        }
        if rest.contains('#') {
            return Err(bad("a fragment (`#…`) is not supported".into()));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(bad(
                "user information (`user:password@`) is not supported; credentials arrive \
                 with TLS in a later issue"
                    .into(),
            ));
        }
        let (host, port) = split_host_port(authority).map_err(bad)?;
        let port = match port {
            None => default_port,
            Some(p) => parse_port(p).map_err(bad)?,
        };
        let host = host.to_owned();
        if web {
            if let Some(c) = path.chars().find(|c| !c.is_ascii_graphic()) {
                return Err(bad(format!("bad character {c:?} in the path `{path}`")));
            }
            let path = if path.is_empty() {
                Self::WS_PATH.to_owned()
            } else {
                path.to_owned()
            };
            return Ok(if scheme == "ws" {
                BrokerUrl::Ws { host, port, path }
            } else {
                BrokerUrl::Wss { host, port, path }
            });
        }
        if !path.is_empty() && path != "/" {
            return Err(bad(format!(
                "a path (`{path}`) is only meaningful for ws:// and wss://"
            )));
        }
        Ok(if scheme == "mqtt" {
            BrokerUrl::Mqtt { host, port }
        } else {
            BrokerUrl::Mqtts { host, port }
        })
    }

    /// The transport this URL needs.
    pub fn transport(&self) -> Transport {
        match self {
            BrokerUrl::Embedded => Transport::Embedded,
            BrokerUrl::SpawnMosquitto | BrokerUrl::Mqtt { .. } => Transport::Tcp,
            BrokerUrl::Mqtts { .. } => Transport::Tls,
            BrokerUrl::Ws { .. } => Transport::WebSocket,
            BrokerUrl::Wss { .. } => Transport::WebSocketTls,
        }
    }

    /// `Ok` if this build can connect to it; [`BrokerError::Unsupported`] for TLS and
    /// WebSockets (a later issue).
    pub fn transport_supported(&self) -> Result<(), BrokerError> {
        let transport = self.transport();
        if transport.supported() {
            Ok(())
        } else {
            Err(BrokerError::Unsupported {
                url: self.to_string(),
                transport: transport.name(),
            })
        }
    }

    /// Host and port for URLs that name a remote broker.
    pub fn host_port(&self) -> Option<(&str, u16)> {
        match self {
            BrokerUrl::Embedded | BrokerUrl::SpawnMosquitto => None,
            BrokerUrl::Mqtt { host, port }
            | BrokerUrl::Mqtts { host, port }
            | BrokerUrl::Ws { host, port, .. }
            | BrokerUrl::Wss { host, port, .. } => Some((host, *port)),
        }
    }
}

impl std::str::FromStr for BrokerUrl {
    type Err = BrokerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BrokerUrl::parse(s)
    }
}

/// `host[:port]` or `[v6][:port]`, the host checked, the port text not yet parsed.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), String> {
    if authority.is_empty() {
        return Err("the host is empty".into());
    }
    if let Some(inner) = authority.strip_prefix('[') {
        let Some((v6, after)) = inner.split_once(']') else {
            return Err(format!("`{authority}`: `[` without a closing `]`"));
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`[{v6}]` is not an IPv6 address"));
        }
        return match after {
            "" => Ok((v6, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((v6, Some(port))),
                None => Err(format!("unexpected `{after}` after `[{v6}]`")),
            },
        };
    }
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) if p.contains(':') => {
            return Err(format!(
                "`{authority}`: an IPv6 address needs brackets, e.g. mqtt://[{h}:{p}]"
            ))
        }
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if let Some(c) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        return Err(format!("bad character {c:?} in the host `{host}`"));
    }
    Ok((host, port))
}

fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() {
        return Err("the port after `:` is empty".into());
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("bad port `{text}` (expected 1 to 65535)")),
        Ok(p) => Ok(p),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn config_listens_on_loopback_only_and_persists_nothing() {
        let text = mosquitto_config("127.0.0.1:18831".parse().unwrap(), Path::new("/tmp/x"));
        assert!(text.contains("listener 18831 127.0.0.1\n"));
        assert!(text.contains("persistence_location /tmp/x/\n"));
    }

    #[test]
    fn spawned_mosquitto_accepts_then_stops() {
        if find_program("mosquitto").is_none() {
            assert!(
                std::env::var_os("GRIDLOOP_REQUIRE_PEERS").is_none(),
                "GRIDLOOP_REQUIRE_PEERS is set but mosquitto is not installed"
            );
            return;
        }
        let mut m = SpawnedMosquitto::start().unwrap();
        let addr = m.addr();
        assert!(TcpStream::connect(addr).is_ok());
        m.stop();
        assert!(TcpStream::connect(addr).is_err());
        m.restart().unwrap();
        assert_eq!(m.addr(), addr);
        assert!(TcpStream::connect(addr).is_ok());
    }
}

#[cfg(test)]
mod url_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn mqtt(host: &str, port: u16) -> BrokerUrl {
        BrokerUrl::Mqtt {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn parses_every_form_with_its_defaults() {
        let ws = |host: &str, port, path: &str| BrokerUrl::Ws {
            host: host.into(),
            port,
            path: path.into(),
        };
        for (text, url) in [
            ("embedded", BrokerUrl::Embedded),
            ("EMBEDDED", BrokerUrl::Embedded),
            ("spawn:mosquitto", BrokerUrl::SpawnMosquitto),
            ("mqtt://broker.example", mqtt("broker.example", 1883)),
            ("mqtt://broker.example/", mqtt("broker.example", 1883)),
            ("MQTT://10.0.0.5:1884", mqtt("10.0.0.5", 1884)),
            ("mqtt://[::1]", mqtt("::1", 1883)),
            ("mqtt://[fe80::1]:65535", mqtt("fe80::1", 65535)),
            (
                "mqtts://h",
                BrokerUrl::Mqtts {
                    host: "h".into(),
                    port: 8883,
                },
            ),
            ("ws://h", ws("h", 80, "/mqtt")),
            ("ws://h:9001/", ws("h", 9001, "/")),
            ("ws://[::1]:8080/a/b", ws("::1", 8080, "/a/b")),
            (
                "wss://h",
                BrokerUrl::Wss {
                    host: "h".into(),
                    port: 443,
                    path: "/mqtt".into(),
                },
            ),
        ] {
            assert_eq!(BrokerUrl::parse(text).unwrap(), url, "{text}");
            assert_eq!(text.parse::<BrokerUrl>().unwrap(), url, "{text}");
        }
    }

    #[test]
    fn errors_name_the_bad_part() {
        for (text, needle) in [
            ("", "it is empty"),
            ("http://h", "unknown scheme `http`"),
            (
                "mosquitto",
                "expected embedded, spawn:mosquitto or SCHEME://",
            ),
            ("spawn:emqx", "spawn: starts only `mosquitto`"),
            ("spawn:", "not ``"),
            ("mqtt://", "the host is empty"),
            ("mqtt://:1883", "the host is empty"),
            ("mqtt://h:", "the port after `:` is empty"),
            ("mqtt://h:0", "bad port `0`"),
            ("mqtt://h:65536", "bad port `65536`"),
            ("mqtt://h:x1", "bad port `x1`"),
            ("mqtt://user:pw@h", "user information"),
            ("mqtt://h?x=1", "a query"),
            ("ws://h/p#frag", "a fragment"),
            (
                "mqtt://h/topic",
                "a path (`/topic`) is only meaningful for ws://",
            ),
            ("mqtt://::1:1883", "an IPv6 address needs brackets"),
            ("mqtt://[::1", "without a closing `]`"),
            ("mqtt://[nope]:1", "`[nope]` is not an IPv6 address"),
            ("mqtt://[::1]x", "unexpected `x` after `[::1]`"),
            ("mqtt://h st", "bad character ' ' in the host"),
        ] {
            let err = BrokerUrl::parse(text).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("bad broker URL `{text}`: ")),
                "{err}"
            );
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn tls_and_websockets_parse_but_are_refused_at_connect_time() {
        for text in ["mqtts://h", "ws://h", "wss://h:1/x"] {
            let url = BrokerUrl::parse(text).unwrap();
            assert!(!url.transport().supported());
            let err = url.transport_supported().unwrap_err().to_string();
            assert!(
                err.contains("TLS and WebSockets arrive in a later issue"),
                "{err}"
            );
            let err = start_broker(&url).unwrap_err().to_string();
            assert!(err.contains("is not supported yet"), "{err}");
        }
        for url in [BrokerUrl::Embedded, BrokerUrl::SpawnMosquitto, mqtt("h", 1)] {
            assert!(url.transport_supported().is_ok(), "{url}");
        }
    }

    #[test]
    fn external_mqtt_resolves_without_connecting() {
        // Nothing listens on port 1 of loopback; start_broker only resolves.
        let b = start_broker(&mqtt("127.0.0.1", 1)).unwrap();
        assert_eq!(b.addr(), SocketAddr::from(([127, 0, 0, 1], 1)));
        assert_eq!(
            b.to_string(),
            "broker: external mqtt://127.0.0.1:1 (127.0.0.1:1)"
        );
        let err = start_broker(&mqtt("no-such-host.invalid", 1883))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot resolve broker host `no-such-host.invalid` (port 1883)"),
            "{err}"
        );
    }

    #[test]
    fn bad_embedded_limits_are_errors_not_rumqttd_panics() {
        let mut config = EmbeddedConfig::default();
        config.log.segment_size = 1023;
        let err = EmbeddedBroker::start_with(SocketAddr::from(([127, 0, 0, 1], 0)), config)
            .unwrap_err()
            .to_string();
        assert!(err.contains("segment_size 1023 (at least 1024)"), "{err}");
        let mut config = EmbeddedConfig::default();
        config.topic_logs[0].1.segment_count = 0;
        let err = EmbeddedBroker::start_with(SocketAddr::from(([127, 0, 0, 1], 0)), config)
            .unwrap_err()
            .to_string();
        assert!(err.contains("topic_logs `gridloop/+/+/+/+`"), "{err}");
    }

    fn host() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z][a-z0-9-]{0,12}(\\.[a-z0-9_]{1,6}){0,3}",
            any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
            any::<u128>().prop_map(|b| std::net::Ipv6Addr::from(b).to_string()),
        ]
    }

    fn url() -> impl Strategy<Value = BrokerUrl> {
        let path = "(/[A-Za-z0-9._~-]{0,8}){1,3}";
        prop_oneof![
            Just(BrokerUrl::Embedded),
            Just(BrokerUrl::SpawnMosquitto),
            (host(), 1..=u16::MAX).prop_map(|(host, port)| BrokerUrl::Mqtt { host, port }),
            (host(), 1..=u16::MAX).prop_map(|(host, port)| BrokerUrl::Mqtts { host, port }),
            (host(), 1..=u16::MAX, path).prop_map(|(host, port, path)| BrokerUrl::Ws {
                host,
                port,
                path
            }),
            (host(), 1..=u16::MAX, path).prop_map(|(host, port, path)| BrokerUrl::Wss {
                host,
                port,
                path
            }),
        ]
    }

    proptest! {
        #[test]
        fn display_then_parse_is_the_identity(url in url()) {
            let text = url.to_string();
            prop_assert_eq!(BrokerUrl::parse(&text).unwrap(), url, "{}", text);
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,40}") {
            let _ = BrokerUrl::parse(&text);
        }
    }
}
