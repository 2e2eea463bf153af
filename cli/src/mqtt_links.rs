//! MQTT for `gridloop meter` and `gridloop fleet`: the `--broker` family of flags, starting the
//! broker they name, and one `run_link` per meter (connections ramped up at a bounded rate,
//! stopped together with a flush).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use sim_core::scenario::PayloadFormat;
use sim_core::Scenario;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use virtual_meter::broker::{start_broker, BrokerUrl, RunningBroker};
use virtual_meter::mqtt::{Mtu, MtuPolicy};
use virtual_meter::{
    run_link, LinkConfig, LinkCounters, LinkReport, MeterRef, Outbox, SharedMeter,
};

use crate::exit::{Failure, ENVIRONMENT, INVALID_INPUT};

/// MQTT flags shared by `meter` and `fleet`.
#[derive(Debug, Clone, Args)]
pub struct MqttArgs {
    /// Broker the meters publish to: `embedded` (rumqttd in this process, the default),
    /// `spawn:mosquitto` (a local Mosquitto started and stopped here), `mqtt://HOST[:PORT]`,
    /// or `none` (no MQTT). `mqtts://` and `ws(s)://` are parsed but not supported yet.
    #[arg(long, value_name = "URL", default_value = "embedded")]
    pub broker: String,

    /// Payload encoding [default: each group's `encoding.payload`]
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub payload: Option<PayloadChoice>,

    /// Largest MQTT payload in bytes; a bigger one is a logged `Packet Encapsulation Error`
    #[arg(long, value_name = "BYTES", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(16..=268_435_455))]
    pub mtu: u32,

    /// What to do with a payload over --mtu: split a reading per phase, or drop it
    #[arg(long, value_enum, default_value_t = MtuChoice::Split)]
    pub mtu_policy: MtuChoice,

    /// Most unacknowledged QoS-1 publishes per meter
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub inflight: u16,

    /// New broker connections per second while the meters come up
    #[arg(long, value_name = "N", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub ramp: u32,

    /// Longest reconnect back-off of a meter's link, ms [default: 5000; `run --mode live`: 50,
    /// so a meter is back within one retry of an RF-loss window's end, as sim mode assumes]
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub reconnect_max_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PayloadChoice {
    Json,
    Cbor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MtuChoice {
    Split,
    Drop,
}

impl MqttArgs {
    /// The broker URL, or `None` for `--broker none`; exit 2 on a bad or unsupported URL.
    pub fn broker_url(&self) -> Result<Option<BrokerUrl>, Failure> {
        if self.broker.eq_ignore_ascii_case("none") {
            return Ok(None);
        }
        let url = BrokerUrl::parse(&self.broker).map_err(|e| Failure::new(INVALID_INPUT, e))?;
        url.transport_supported()
            .map_err(|e| Failure::new(INVALID_INPUT, e))?;
        Ok(Some(url))
    }

    fn mtu(&self) -> Mtu {
        Mtu {
            max_payload: self.mtu as usize,
            policy: match self.mtu_policy {
                MtuChoice::Split => MtuPolicy::Split,
                MtuChoice::Drop => MtuPolicy::Drop,
            },
        }
    }
}

/// Start the broker `url` names (blocking: rumqttd and Mosquitto are waited for until they
/// accept a connection); exit 3 when it cannot be.
pub fn start(url: &BrokerUrl) -> Result<RunningBroker, Failure> {
    start_broker(url).map_err(|e| Failure::new(ENVIRONMENT, e))
}

/// [`start`] off the runtime's workers, then print its `broker: …` line on stdout.
pub async fn start_and_print(url: BrokerUrl) -> Result<RunningBroker, Failure> {
    use std::io::Write as _;
    let running = tokio::task::spawn_blocking(move || start(&url))
        .await
        .map_err(|e| Failure::msg(ENVIRONMENT, format!("broker start failed: {e}")))??;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{running}")
        .and_then(|()| out.flush())
        .map_err(|e| Failure::msg(ENVIRONMENT, format!("cannot write to stdout: {e}")))?;
    Ok(running)
}

/// Milliseconds since the Unix epoch now: grid time 0 of a live run.
pub fn epoch_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The links of a set of meters, sharing one set of counters.
#[derive(Debug)]
pub struct Links {
    pub counters: Arc<LinkCounters>,
    /// Every meter, linked or not yet: what is left in their rings is counted from them.
    meters: Vec<SharedMeter>,
    stop: watch::Sender<bool>,
    ramp: JoinHandle<Vec<JoinHandle<Result<LinkReport, virtual_meter::MqttError>>>>,
}

/// What stopping the links found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinksReport {
    /// Meters given links.
    pub meters: usize,
    /// Links started (the rest were still waiting for the ramp when stopped).
    pub links: usize,
    /// Links that flushed everything, published the offline status and disconnected.
    pub flushed: usize,
    /// Links that ended with an error (a refused CONNECT) or whose task failed.
    pub failed: usize,
    pub unacked: u64,
    pub unsent: u64,
    /// Messages still in the meters' rings after the links stopped (all meters, linked or not).
    pub left_in_ring: u64,
}

impl Links {
    /// Spawn one link per meter, `args.ramp` new ones per second, to the broker at `addr`.
    pub fn spawn(
        scenario: &Scenario,
        meters: Vec<(SharedMeter, MeterRef)>,
        addr: std::net::SocketAddr,
        args: &MqttArgs,
        epoch_ms: u64,
    ) -> Links {
        Links::spawn_via(scenario, meters, &[addr], args, epoch_ms)
    }

    /// [`Links::spawn`] with a broker address per group (`addrs[group]`, or `addrs[0]` for
    /// all): live mode points each group at its own network-impairment proxy.
    pub fn spawn_via(
        scenario: &Scenario,
        meters: Vec<(SharedMeter, MeterRef)>,
        addrs: &[std::net::SocketAddr],
        args: &MqttArgs,
        epoch_ms: u64,
    ) -> Links {
        let counters = Arc::new(LinkCounters::default());
        let all: Vec<SharedMeter> = meters.iter().map(|(m, _)| m.clone()).collect();
        let (stop, stop_rx) = watch::channel(false);
        // Until its link starts (the ramp may take a while), a meter keeps its messages in its
        // own ring instead of draining them: nothing is lost but what overflows, and counted.
        for (meter, _) in &meters {
            if let Ok(mut m) = meter.lock() {
                m.attach_outbox(Outbox(Arc::new(|| {})));
            }
        }
        let configs: Vec<LinkConfig> = meters
            .iter()
            .map(|(_, which)| {
                let addr = addrs
                    .get(which.group)
                    .or(addrs.first())
                    .copied()
                    .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 1883)));
                let mut cfg = LinkConfig::for_meter(
                    scenario,
                    *which,
                    addr.ip().to_string(),
                    addr.port(),
                    epoch_ms,
                );
                if let Some(p) = args.payload {
                    cfg.format = match p {
                        PayloadChoice::Json => PayloadFormat::Json,
                        PayloadChoice::Cbor => PayloadFormat::Cbor,
                    };
                }
                cfg.mtu = args.mtu();
                cfg.max_inflight = usize::from(args.inflight);
                if let Some(ms) = args.reconnect_max_ms {
                    cfg.backoff_max = Duration::from_millis(ms);
                    cfg.backoff_min = cfg.backoff_min.min(cfg.backoff_max);
                }
                cfg
            })
            .collect();
        // `per_tick` connections every `per_tick / ramp` seconds (about 100 ticks a second).
        let per_tick = (args.ramp / 100).max(1) as usize;
        let tick = Duration::from_secs_f64(per_tick as f64 / f64::from(args.ramp.max(1)));
        let ramp_counters = counters.clone();
        let ramp = tokio::spawn(async move {
            let mut tasks = Vec::with_capacity(meters.len());
            let mut ticker = tokio::time::interval(tick);
            // After a stall, go on at the rate asked for instead of catching up in a burst.
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut pending = meters.into_iter().zip(configs);
            loop {
                ticker.tick().await;
                if *stop_rx.borrow() {
                    break;
                }
                let mut spawned = 0;
                for ((meter, _), cfg) in pending.by_ref().take(per_tick) {
                    let mut rx = stop_rx.clone();
                    tasks.push(tokio::spawn(run_link(
                        meter,
                        cfg,
                        ramp_counters.clone(),
                        async move {
                            let _ = rx.wait_for(|s| *s).await;
                        },
                    )));
                    spawned += 1;
                }
                if spawned < per_tick {
                    break;
                }
            }
            tasks
        });
        Links {
            counters,
            meters: all,
            stop,
            ramp,
        }
    }

    /// Stop every link (each flushes what its meter buffered, publishes its offline status
    /// and disconnects, within its flush timeout) and wait for them all.
    pub async fn stop(self) -> LinksReport {
        let _ = self.stop.send(true);
        let tasks = self.ramp.await.unwrap_or_default();
        let mut report = LinksReport {
            meters: self.meters.len(),
            links: tasks.len(),
            ..LinksReport::default()
        };
        for t in tasks {
            match t.await {
                Ok(Ok(r)) => {
                    report.flushed += usize::from(r.flushed);
                    report.unacked += r.unacked as u64;
                    report.unsent += r.unsent as u64;
                }
                Ok(Err(e)) => {
                    tracing::warn!("mqtt link ended: {e}");
                    report.failed += 1;
                }
                Err(e) => {
                    tracing::warn!("mqtt link task failed: {e}");
                    report.failed += 1;
                }
            }
        }
        report.left_in_ring = self
            .meters
            .iter()
            .filter_map(|m| m.lock().ok().map(|m| m.meter().buffered() as u64))
            .sum();
        report
    }
}
