//! Brokers: where meters publish. [`BrokerUrl`] is what `--broker` accepts; [`SpawnedMosquitto`]
//! starts a local Mosquitto on a free loopback port with a generated config and stops it when
//! dropped.

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
/// whole ring can be in flight, persistence in `dir` (written on shutdown only) so a
/// [`SpawnedMosquitto::restart`] keeps persistent sessions.
pub fn mosquitto_config(addr: SocketAddr, dir: &Path) -> String {
    format!(
        "# generated by gridloop\n\
         listener {port} {ip}\n\
         allow_anonymous true\n\
         persistence true\n\
         persistence_location {dir}/\n\
         autosave_interval 0\n\
         max_inflight_messages 0\n\
         max_queued_messages 1000000\n\
         max_connections -1\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n",
        port = addr.port(),
        ip = addr.ip(),
        dir = dir.display(),
    )
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
