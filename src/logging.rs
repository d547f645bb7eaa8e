//! Logging set-up shared by every binary: `log` records go to stderr through `simplelog`,
//! with the time and level; stdout is kept for the `listening on ADDR` readiness line.

use simplelog::{ConfigBuilder, LevelFilter, WriteLogger};

/// The `--log-level` flag.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Level {
    /// Only errors.
    Error,
    /// Errors and warnings.
    Warn,
    /// Also state changes (the default).
    #[default]
    Info,
    /// Everything.
    Debug,
}

/// Installs the logger. Calling it twice is harmless (the second call is ignored).
pub fn init(level: Level) {
    let filter = match level {
        Level::Error => LevelFilter::Error,
        Level::Warn => LevelFilter::Warn,
        Level::Info => LevelFilter::Info,
        Level::Debug => LevelFilter::Debug,
    };
    let config = ConfigBuilder::new()
        // Always six digits of fraction: RFC 3339 as simplelog writes it drops trailing zeros,
        // so lines would not line up.
        .set_time_format_custom(simplelog::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        ))
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .build();
    let _ = WriteLogger::init(filter, config, std::io::stderr());
}

/// Prints the readiness line on stdout and flushes it, so a supervisor reading our stdout
/// through a pipe sees it at once.
pub fn announce_listening(addr: std::net::SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {addr}");
    let _ = out.flush();
}
