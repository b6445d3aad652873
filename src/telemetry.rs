//! Logging: `RUST_LOG` filters (default `info`), `LOG_FORMAT` picks text or JSON.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber once; later calls are no-ops (tests build many apps).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
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
