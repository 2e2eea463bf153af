//! Live mode's network impairment: a TCP proxy that applies one meter group's backhaul model —
//! latency, jitter, loss and RF-loss outage windows — in real time, with sim-core's own
//! [`Link`] as the schedule so that sim and live agree.
//!
//! Put one proxy per group between the meters and the MQTT broker, and one between the
//! head-end and the meters' Modbus/TCP servers. Grid time `t` is seconds since `epoch`, the
//! live run's grid time 0.
//!
//! - **Delay.** Each direction of each connection has its own seeded [`Link`]. A chunk read at
//!   grid time `t` is released at [`Link::stream_delivery`]`(t)`: latency + jitter, and for a
//!   lost attempt the link's retry timeout (TCP retransmits, so loss delays bytes and never
//!   drops them). Order within a direction is kept: a chunk's release time is the later of its
//!   own and the previous chunk's. One draw per chunk read (at most 16 KiB), where sim mode
//!   draws per message; meters' MQTT and Modbus traffic is small, so a chunk is mostly one.
//! - **Outages.** At the start of an RF-loss window every connection through the proxy is cut
//!   (both sockets closed; queued bytes are not delivered), and a connection accepted inside a
//!   window is closed at once. After the window new connections pass again.
//! - **Memory.** At most [`ImpairProfile::queue_limit`] bytes wait per direction; when the queue
//!   is full the proxy stops reading that side (TCP backpressure). An idle connection holds no
//!   read buffer. One task per connection.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sim_core::network::Link;
use sim_core::scenario::{LinkSpec, NetworkEvent};
use sim_core::{Scenario, Seconds};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Default cap on the bytes waiting in one direction of one connection.
pub const DEFAULT_QUEUE_LIMIT: usize = 256 * 1024;

/// Largest chunk read at once (one delay draw per chunk).
const READ_CHUNK: usize = 16 * 1024;

/// One group's network model for the proxy: the group's [`LinkSpec`], the scenario's network
/// events that apply to the group, and a seed.
#[derive(Debug, Clone, PartialEq)]
pub struct ImpairProfile {
    spec: LinkSpec,
    windows: Vec<NetworkEvent>,
    seed: u64,
    queue_limit: usize,
}

impl ImpairProfile {
    /// `windows` = the network events that apply to this group (as for [`Link::new`]).
    pub fn new(spec: LinkSpec, windows: Vec<NetworkEvent>, seed: u64) -> Self {
        ImpairProfile {
            spec,
            windows,
            seed,
            queue_limit: DEFAULT_QUEUE_LIMIT,
        }
    }

    /// Group `group` of `scenario`: its link and the network events that name it (or no group).
    /// `None` if the scenario has no such group.
    pub fn for_group(scenario: &Scenario, group: usize, seed: u64) -> Option<Self> {
        let spec = scenario.groups.get(group)?.link;
        let windows = scenario
            .network
            .iter()
            .filter(|n| n.groups.is_empty() || n.groups.contains(&group))
            .cloned()
            .collect();
        Some(ImpairProfile::new(spec, windows, seed))
    }

    /// Cap the bytes waiting per direction of a connection (at least 1).
    pub fn with_queue_limit(mut self, bytes: usize) -> Self {
        self.queue_limit = bytes.max(1);
        self
    }

    pub fn spec(&self) -> &LinkSpec {
        &self.spec
    }

    pub fn windows(&self) -> &[NetworkEvent] {
        &self.windows
    }

    pub fn queue_limit(&self) -> usize {
        self.queue_limit
    }

    /// RF-loss windows `[start, end)` in grid time, merged, in order ([`Link::outages`]).
    pub fn outages(&self) -> Vec<(Seconds, Seconds)> {
        self.link(0).outages()
    }

    /// The link of stream `stream` (connection × direction), seeded from the profile's seed.
    fn link(&self, stream: u64) -> Link {
        Link::new(self.spec, self.windows.clone(), mix(self.seed, stream))
    }
}

/// SplitMix64 of `seed` and `stream`: independent, reproducible per-stream seeds.
fn mix(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What a proxy did, reported when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProxyStats {
    /// Connections accepted outside outages (an upstream connect was attempted for each).
    pub connections: u64,
    /// Connections accepted inside an RF-loss window and closed at once.
    pub refused_in_outage: u64,
    /// Connections cut at the start of an RF-loss window.
    pub cut_by_outage: u64,
    /// Connections still open when the proxy was stopped (closed then).
    pub closed_by_stop: u64,
    /// Connections closed because the upstream connect failed.
    pub upstream_failures: u64,
    /// Connections that ended on a socket error (reset, broken pipe, ...).
    pub socket_errors: u64,
    /// Chunks read (one delay draw each).
    pub chunks: u64,
    /// Bytes delivered client → upstream.
    pub bytes_up: u64,
    /// Bytes delivered upstream → client.
    pub bytes_down: u64,
    /// Bytes read but never delivered because their connection was cut or failed first.
    pub bytes_dropped: u64,
    /// Largest hold time of a chunk (read → release), ms.
    pub max_delay_ms: f64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    refused_in_outage: AtomicU64,
    cut_by_outage: AtomicU64,
    closed_by_stop: AtomicU64,
    upstream_failures: AtomicU64,
    socket_errors: AtomicU64,
    chunks: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    bytes_dropped: AtomicU64,
    max_delay_us: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ProxyStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            connections: g(&self.connections),
            refused_in_outage: g(&self.refused_in_outage),
            cut_by_outage: g(&self.cut_by_outage),
            closed_by_stop: g(&self.closed_by_stop),
            upstream_failures: g(&self.upstream_failures),
            socket_errors: g(&self.socket_errors),
            chunks: g(&self.chunks),
            bytes_up: g(&self.bytes_up),
            bytes_down: g(&self.bytes_down),
            bytes_dropped: g(&self.bytes_dropped),
            max_delay_ms: g(&self.max_delay_us) as f64 / 1000.0,
        }
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// Shared by the accept loop and the connections of one proxy.
struct Ctx {
    profile: ImpairProfile,
    upstream: SocketAddr,
    epoch: Instant,
    counters: Counters,
}

/// Bind `listen` and proxy every connection to `upstream` through `profile`, with grid time 0
/// at `epoch`. Returns the bound address and the proxy's task, which ends when `stop` turns
/// true (or its sender is dropped), closes the open connections and yields the stats.
pub async fn spawn_proxy(
    listen: SocketAddr,
    upstream: SocketAddr,
    profile: ImpairProfile,
    epoch: Instant,
    stop: watch::Receiver<bool>,
) -> io::Result<(SocketAddr, JoinHandle<ProxyStats>)> {
    let listener = TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let ctx = Arc::new(Ctx {
        profile,
        upstream,
        epoch,
        counters: Counters::default(),
    });
    let (spec, outages) = (ctx.profile.spec, ctx.profile.outages());
    info!(%bound, %upstream, ?spec, ?outages, "impairment proxy listening");
    Ok((bound, tokio::spawn(accept_loop(listener, ctx, stop))))
}

/// Resolves once `stop` is true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Sleep until `at`; never for `None`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Grid time of `now`, s (negative before the epoch).
fn grid_time(epoch: Instant, now: Instant) -> Seconds {
    if now >= epoch {
        (now - epoch).as_secs_f64()
    } else {
        -(epoch - now).as_secs_f64()
    }
}

/// The instant of grid time `t`; `None` if it is not representable.
fn instant_at(epoch: Instant, t: Seconds) -> Option<Instant> {
    if t >= 0.0 {
        epoch.checked_add(Duration::try_from_secs_f64(t).ok()?)
    } else {
        epoch.checked_sub(Duration::try_from_secs_f64(-t).ok()?)
    }
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Ctx>,
    mut stop: watch::Receiver<bool>,
) -> ProxyStats {
    let outages = ctx.profile.outages();
    let mut conns = JoinSet::new();
    let mut next_id: u64 = 0;
    // Window starts (even indices) and ends (odd), sorted since the windows are merged; only
    // to log them.
    let boundaries: Vec<Seconds> = outages.iter().flat_map(|&(s, e)| [s, e]).collect();
    let t0 = grid_time(ctx.epoch, Instant::now());
    let mut next_boundary = boundaries.iter().take_while(|&&b| b <= t0).count();
    loop {
        let boundary = boundaries
            .get(next_boundary)
            .and_then(|&b| instant_at(ctx.epoch, b).map(|at| (b, at)));
        tokio::select! {
            _ = stopped(&mut stop) => break,
            // Reap ended connections so the set holds only open ones.
            Some(joined) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = joined {
                    warn!(error = %e, "impairment proxy connection task failed");
                }
            }
            _ = sleep_until_some(boundary.map(|(_, at)| at)) => {
                let b = boundary.map_or(f64::NAN, |(b, _)| b);
                next_boundary += 1;
                let what = if next_boundary % 2 == 1 {
                    "begins: cutting open connections"
                } else {
                    "ends"
                };
                let open = conns.len();
                info!(t = b, upstream = %ctx.upstream, open, "RF-loss window {what}");
            }
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    let t = grid_time(ctx.epoch, Instant::now());
                    if let Some(&(_, end)) = outages.iter().find(|(s, e)| *s <= t && t < *e) {
                        bump(&ctx.counters.refused_in_outage);
                        debug!(%peer, t, until = end, "connection refused: RF-loss window");
                        drop(client);
                        continue;
                    }
                    let cut_at = outages
                        .iter()
                        .find(|(s, _)| *s > t)
                        .and_then(|&(s, _)| instant_at(ctx.epoch, s));
                    bump(&ctx.counters.connections);
                    let id = next_id;
                    next_id += 1;
                    let ctx = Arc::clone(&ctx);
                    conns.spawn(connection(client, peer, id, cut_at, ctx, stop.clone()));
                }
                Err(e) => {
                    // E.g. out of file descriptors: log and let some connections end first.
                    warn!(error = %e, "impairment proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    drop(listener);
    // Every connection watches the same stop signal and ends promptly.
    while let Some(joined) = conns.join_next().await {
        if let Err(e) = joined {
            warn!(error = %e, "impairment proxy connection task failed");
        }
    }
    let stats = ctx.counters.snapshot();
    info!(?stats, "impairment proxy stopped");
    stats
}

/// Why a connection ended.
enum End {
    Done(io::Result<()>),
    Cut,
    Stop,
}

async fn connection(
    client: TcpStream,
    peer: SocketAddr,
    id: u64,
    cut_at: Option<Instant>,
    ctx: Arc<Ctx>,
    mut stop: watch::Receiver<bool>,
) {
    let queued = [AtomicU64::new(0), AtomicU64::new(0)];
    let cut = sleep_until_some(cut_at);
    let work = async {
        let server = match TcpStream::connect(ctx.upstream).await {
            Ok(s) => s,
            Err(e) => {
                bump(&ctx.counters.upstream_failures);
                let upstream = ctx.upstream;
                warn!(%peer, %upstream, error = %e, "impairment proxy: upstream connect failed");
                return Ok(());
            }
        };
        for s in [&client, &server] {
            if let Err(e) = s.set_nodelay(true) {
                debug!(%peer, error = %e, "set_nodelay failed");
            }
        }
        let (client_rx, client_tx) = client.into_split();
        let (server_rx, server_tx) = server.into_split();
        let up = Pump {
            from: client_rx,
            to: server_tx,
            link: ctx.profile.link(2 * id),
            queued: &queued[0],
            delivered: &ctx.counters.bytes_up,
            ctx: &ctx,
        };
        let down = Pump {
            from: server_rx,
            to: client_tx,
            link: ctx.profile.link(2 * id + 1),
            queued: &queued[1],
            delivered: &ctx.counters.bytes_down,
            ctx: &ctx,
        };
        tokio::try_join!(up.run(), down.run()).map(|_| ())
    };
    // Dropping `work` closes both sockets.
    let end = tokio::select! {
        r = work => End::Done(r),
        _ = cut => End::Cut,
        _ = stopped(&mut stop) => End::Stop,
    };
    let dropped: u64 = queued.iter().map(|q| q.load(Ordering::Relaxed)).sum();
    ctx.counters
        .bytes_dropped
        .fetch_add(dropped, Ordering::Relaxed);
    match end {
        End::Done(Ok(())) => debug!(%peer, id, "connection closed"),
        End::Done(Err(e)) => {
            bump(&ctx.counters.socket_errors);
            debug!(%peer, id, error = %e, dropped, "connection failed");
        }
        End::Cut => {
            bump(&ctx.counters.cut_by_outage);
            debug!(%peer, id, dropped, "connection cut: RF-loss window");
        }
        End::Stop => {
            bump(&ctx.counters.closed_by_stop);
            debug!(%peer, id, "connection closed: proxy stopped");
        }
    }
}

/// One direction of one connection.
struct Pump<'a> {
    from: OwnedReadHalf,
    to: OwnedWriteHalf,
    link: Link,
    /// Bytes read and not yet delivered.
    queued: &'a AtomicU64,
    delivered: &'a AtomicU64,
    ctx: &'a Ctx,
}

impl Pump<'_> {
    async fn run(mut self) -> io::Result<()> {
        let limit = self.ctx.profile.queue_limit as u64;
        // (release instant, chunk); `written` = bytes of the front chunk already written.
        let mut queue: VecDeque<(Instant, Bytes)> = VecDeque::new();
        let mut written = 0usize;
        let mut last_release: Option<Instant> = None;
        let mut eof = false;
        loop {
            if eof && queue.is_empty() {
                // Pass the FIN on. The peer may have closed already; that is no error here.
                if let Err(e) = self.to.shutdown().await {
                    debug!(error = %e, "shutdown after end of stream failed");
                }
                return Ok(());
            }
            let room = limit.saturating_sub(self.queued.load(Ordering::Relaxed));
            // Cheap: a `Bytes` slice shares the chunk. Polled only when the queue has one.
            let (due, rest) = queue
                .front()
                .map_or((Instant::now(), Bytes::new()), |(at, b)| {
                    (*at, b.slice(written..))
                });
            let to = &mut self.to;
            tokio::select! {
                ready = self.from.readable(), if !eof && room > 0 => {
                    ready?;
                    let max = usize::try_from(room).unwrap_or(usize::MAX).min(READ_CHUNK);
                    match read_chunk(&self.from, max) {
                        Ok(Some(chunk)) => {
                            let release = self.release_of(chunk.len(), last_release)?;
                            last_release = Some(release);
                            self.queued.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                            queue.push_back((release, chunk));
                        }
                        Ok(None) => eof = true,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                n = async {
                    tokio::time::sleep_until(due).await;
                    to.write(&rest).await
                }, if !queue.is_empty() => {
                    let n = n?;
                    if n == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    self.queued.fetch_sub(n as u64, Ordering::Relaxed);
                    self.delivered.fetch_add(n as u64, Ordering::Relaxed);
                    written += n;
                    if queue.front().is_some_and(|(_, b)| written >= b.len()) {
                        queue.pop_front();
                        written = 0;
                    }
                }
            }
        }
    }

    /// Release instant of a chunk read now: the link's delivery time, never before the
    /// previous chunk's release (order within a direction).
    fn release_of(&mut self, len: usize, last: Option<Instant>) -> io::Result<Instant> {
        let ctx = self.ctx;
        let now = Instant::now();
        let t = grid_time(ctx.epoch, now);
        bump(&ctx.counters.chunks);
        let delivery = self.link.stream_delivery(t).ok_or_else(|| {
            io::Error::other(format!(
                "the link model lost a {len}-byte chunk at t = {t:.3} s on every attempt"
            ))
        })?;
        let at = instant_at(ctx.epoch, delivery).ok_or_else(|| {
            io::Error::other(format!("delivery time {delivery} s is out of range"))
        })?;
        let at = at.max(now).max(last.unwrap_or(now));
        let hold = u64::try_from((at - now).as_micros()).unwrap_or(u64::MAX);
        ctx.counters.max_delay_us.fetch_max(hold, Ordering::Relaxed);
        Ok(at)
    }
}

/// Read what is there, up to `max` (> 0) bytes: `Ok(None)` at end of stream. The buffer lives
/// on the stack only for the call, so an idle connection holds none.
fn read_chunk(from: &OwnedReadHalf, max: usize) -> io::Result<Option<Bytes>> {
    let mut buf = [0u8; READ_CHUNK];
    let max = max.min(READ_CHUNK);
    match from.try_read(&mut buf[..max])? {
        0 => Ok(None),
        n => Ok(Some(Bytes::copy_from_slice(&buf[..n]))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sim_core::scenario::NetworkEventKind;

    fn window(at: f64, duration: f64, groups: Vec<usize>, kind: NetworkEventKind) -> NetworkEvent {
        NetworkEvent {
            at,
            duration,
            groups,
            kind,
        }
    }

    #[test]
    fn grid_time_and_instants_round_trip() {
        let epoch = Instant::now() + Duration::from_secs(100);
        for t in [-3.5, 0.0, 0.25, 12.0] {
            let at = instant_at(epoch, t).expect("representable");
            assert!((grid_time(epoch, at) - t).abs() < 1e-6, "{t}");
        }
        assert_eq!(instant_at(epoch, f64::NAN), None);
        assert_eq!(instant_at(epoch, f64::INFINITY), None);
        assert_eq!(instant_at(epoch, 1e300), None);
    }

    #[test]
    fn profile_takes_the_group_link_and_its_windows() {
        let spec = LinkSpec {
            latency: 0.04,
            jitter: 0.01,
            loss: 0.1,
            retry: 0.5,
        };
        let all = window(1.0, 2.0, Vec::new(), NetworkEventKind::RfLoss);
        let g0 = window(2.0, 3.0, vec![0, 2], NetworkEventKind::RfLoss);
        let p = ImpairProfile::new(spec, vec![all.clone(), g0.clone()], 7);
        assert_eq!(p.outages(), vec![(1.0, 5.0)]);
        assert_eq!(p.queue_limit(), DEFAULT_QUEUE_LIMIT);
        assert_eq!(p.clone().with_queue_limit(0).queue_limit(), 1);
        // Streams are seeded independently and reproducibly.
        let run = |s| {
            let mut l = ImpairProfile::new(
                LinkSpec {
                    jitter: 1.0,
                    ..spec
                },
                Vec::new(),
                7,
            )
            .link(s);
            (0..10)
                .filter_map(|k| l.stream_delivery(f64::from(k)))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
        assert_eq!(p.windows(), &[all, g0][..]);
    }
}
