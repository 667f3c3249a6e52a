//! Logging setup for binaries: `FERROMQ_LOG` (an env-filter, default `info`) and
//! `--log-format json` or `FERROMQ_LOG_FORMAT=json` for one JSON object per line (Kubernetes).

use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr in `format`, or as `FERROMQ_LOG_FORMAT` says (`json`; text otherwise).
pub fn init(format: Option<LogFormat>) {
    let filter = EnvFilter::try_from_env("FERROMQ_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        Some(format) => format == LogFormat::Json,
        None => std::env::var("FERROMQ_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests starting several services) keeps the first subscriber.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
