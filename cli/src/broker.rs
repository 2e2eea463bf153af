//! `gridloop broker`: the embedded MQTT broker (rumqttd) standalone, until Ctrl-C or
//! `--duration`.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use scenarios::duration::DurationValue;
use virtual_meter::broker::{BrokerError, EmbeddedBroker, RunningBroker};

use crate::exit::{CommandResult, Failure, OrExit, ENVIRONMENT, INVALID_INPUT, SUCCESS};

/// `gridloop broker`: run the embedded MQTT broker on its own.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// MQTT listen address (port 0 picks a free port; the bound address is printed)
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:1883")]
    pub listen: SocketAddr,

    /// Stop after this long (e.g. 30s, 10min) instead of at Ctrl-C
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
}

/// Run the command: print `broker: embedded rumqttd on ADDR`, serve until Ctrl-C or
/// `--duration`, exit 0. A port in use (or any other start failure) exits 3.
pub fn broker(args: &BrokerArgs) -> CommandResult {
    let duration = args
        .duration
        .as_deref()
        .map(|text| {
            match scenarios::duration::parse_duration(text) {
                Ok(DurationValue::Seconds(s)) => Ok(s),
                Ok(DurationValue::Cycles(_)) => Err(Failure::msg(
                    INVALID_INPUT,
                    format!("--duration: `{text}` is in cycles; give a time such as 30s"),
                )),
                Err(e) => Err(Failure::msg(INVALID_INPUT, format!("--duration: {e}"))),
            }
            .and_then(|s| {
                Duration::try_from_secs_f64(s).map_err(|_| {
                    Failure::msg(INVALID_INPUT, format!("--duration: `{text}` is negative"))
                })
            })
        })
        .transpose()?;
    let broker = EmbeddedBroker::start(args.listen).map_err(|e| match e {
        e @ BrokerError::Config(_) => Failure::new(INVALID_INPUT, e),
        e => Failure::new(ENVIRONMENT, e),
    })?;
    let running = RunningBroker::Embedded(broker);
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{running}")
            .and_then(|()| out.flush())
            .or_exit(ENVIRONMENT, || "cannot write to stdout".into())?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .or_exit(ENVIRONMENT, || "cannot start the tokio runtime".into())?;
    let interrupted = runtime.block_on(async {
        let ctrl_c = tokio::signal::ctrl_c();
        match duration {
            Some(d) => tokio::select! {
                () = tokio::time::sleep(d) => false,
                _ = ctrl_c => true,
            },
            None => {
                let _ = ctrl_c.await;
                true
            }
        }
    });
    if let RunningBroker::Embedded(b) = &running {
        if let Some(why) = b.failed() {
            return Err(Failure::msg(
                ENVIRONMENT,
                format!("the embedded broker on {} stopped: {why}", b.addr()),
            ));
        }
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "{}: broker on {} stopped",
        if interrupted { "interrupted" } else { "done" },
        running.addr()
    );
    Ok(SUCCESS)
}
