//! How the broker binary writes its log lines (stderr, through `tracing`).
//!
//! - Every line names the node (`node=N` in text, `"node":N` in JSON), so the lines
//!   of several brokers in one terminal or one file can be told apart.
//! - Colour (ANSI escapes) only when stderr is a terminal and `NO_COLOR` is unset:
//!   a log file or a pipe gets plain text.
//! - `--log-format json` writes one JSON object per line, for machines.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether to colour the lines: stderr is a terminal and `NO_COLOR` is unset or empty.
pub fn use_colour() -> bool {
    let no_colour = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_colour && std::io::stderr().is_terminal()
}

/// Installs the global subscriber: `RUST_LOG` filter (default `info`), stderr, the
/// node id on every line when given.
pub fn init(format: LogFormat, node: Option<u64>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let ansi = use_colour();
            builder
                .with_ansi(ansi)
                .event_format(WithNode {
                    node,
                    json: false,
                    inner: Format::default().with_ansi(ansi),
                })
                .init();
        }
        LogFormat::Json => builder
            .json()
            .event_format(WithNode {
                node,
                json: true,
                inner: Format::default().json(),
            })
            .init(),
    }
}

/// Puts the node id in front of every event the inner format writes.
struct WithNode<F> {
    node: Option<u64>,
    json: bool,
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for WithNode<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(node) = self.node else {
            return self.inner.format_event(ctx, writer, event);
        };
        if !self.json {
            write!(writer, "node={node} ")?;
            return self.inner.format_event(ctx, writer, event);
        }
        // The JSON object is formatted aside, then opened with the node field.
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{\"node\":{node},{rest}"),
            None => writer.write_str(&line),
        }
    }
}
