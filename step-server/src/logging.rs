//! Log output for both binaries (step-server and the gateway, which embeds
//! this crate): one place decides colours and the line format.
//!
//! Colours only on a terminal: logs piped to a file or a collector must not
//! carry ANSI escape codes. `NO_COLOR` (any non-empty value, per
//! no-color.org) turns them off on a terminal too.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How each log line is written.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON object per line, the event's fields at the top level.
    Json,
}

/// Whether text logs written to stdout get colours.
pub fn use_colour() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stdout().is_terminal()
}

/// Install the global subscriber: `filter` in `EnvFilter` syntax (an
/// invalid one falls back to `info`, with a warning), lines on stdout.
pub fn init(filter: &str, format: LogFormat) {
    let (filter, bad) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Text => builder.with_ansi(use_colour()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    if let Some(e) = bad {
        tracing::warn!(error = %e, "invalid log filter; using \"info\"");
    }
}
