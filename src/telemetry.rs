//! Logging: `RUST_LOG` filters (default `info`), `LOG_FORMAT` picks text or JSON.

use std::sync::OnceLock;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::LogFormat;

/// The filter in force, swappable while the process runs (`log_level` admin messages).
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the global subscriber once, writing to stderr; later calls are no-ops (tests build
/// many apps).
pub fn init(format: LogFormat) {
    use std::io::IsTerminal as _;
    // Colour codes only where someone reads them as colours: not in a file or a collector.
    install(format, std::io::stderr, std::io::stderr().is_terminal());
}

/// As [`init`], writing plain text (no colour codes) to `writer`.
pub fn init_with_writer<W>(format: LogFormat, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    install(format, writer, false);
}

fn install<W>(format: LogFormat, writer: W, ansi: bool)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let (filter, handle) = reload::Layer::new(filter);
    let output = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(writer)
            .boxed(),
    };
    if tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .is_ok()
    {
        let _ = FILTER.set(handle);
    }
}

/// Replaces the log filter at once (an `EnvFilter` directive, as `RUST_LOG` takes).
pub fn set_filter(directive: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(directive).map_err(|e| format!("not a log filter: {e}"))?;
    let handle = FILTER
        .get()
        .ok_or("this process's logging was not set up by hotline")?;
    handle
        .reload(filter)
        .map_err(|e| format!("the log filter could not be replaced: {e}"))
}

/// Panics are reported through the log, at error with where they happened; their message may
/// hold whatever the code formatted into it (personal data included), so it goes to debug only.
/// (The default hook prints the message to stderr, around the log's filters.) A panicking
/// request handler is also logged by the request log, with its route. For `serve`, after
/// [`init`]: tests keep the default hook, whose messages are their failures.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        tracing::error!(%location, thread, "panicked");
        tracing::debug!(%location, panic = %message, "panic message");
    }));
}
