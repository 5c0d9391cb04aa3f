//! Log output: env_logger with one line per event naming the thread and the module.
//!
//! Under journald (`JOURNAL_STREAM` set, as systemd sets it for a service's stdout/stderr) each
//! line starts with its syslog priority (`<3>` error ... `<7>` debug) so that `journalctl -p
//! warning` filters correctly, and carries no timestamp of its own (journald adds one).
//! Elsewhere the line is MyHoard's `time<TAB>thread<TAB>module<TAB>level<TAB>message`.
//!
//! The level comes from `RUST_LOG` when set, else `--log-level` (MyHoard's names: ERROR,
//! WARNING, INFO, DEBUG), else `info` for the daemon and `warn` for the other commands.

use std::io::Write;

use log::Level;

/// Installs the logger; call once, first thing.
pub fn init(daemon: bool, level_argument: Option<&str>) {
    let default_level = level_argument
        .map(|level| match level.to_ascii_lowercase().as_str() {
            "warning" => "warn".to_owned(),
            other => other.to_owned(),
        })
        .unwrap_or_else(|| if daemon { "info" } else { "warn" }.to_owned());
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level));
    builder.format(move |out, record| {
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("main");
        let module = record.target();
        if journald {
            writeln!(
                out,
                "<{}>{thread} {module}: {}",
                syslog_priority(record.level()),
                record.args()
            )
        } else {
            writeln!(
                out,
                "{}\t{thread}\t{module}\t{}\t{}",
                chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                record.level(),
                record.args()
            )
        }
    });
    let _ = builder.try_init();
}

fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}
