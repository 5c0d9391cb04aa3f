//! Log output: env_logger with one line per event naming the thread and the module.
//!
//! Under journald (`JOURNAL_STREAM` set, as systemd sets it for a service's stdout/stderr) each
//! line starts with its syslog priority (`<3>` error ... `<7>` debug) so that `journalctl -p
//! warning` filters correctly, and carries no timestamp of its own (journald adds one).
//! Elsewhere the line is MyHoard's `time<TAB>thread<TAB>module<TAB>level<TAB>message`.
//!
//! Every record also passes through Sentry's log integration: with `sentry_dsn` set, errors
//! become Sentry events (see [`crate::error_reporting`]).
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
        let text = record.args().to_string();
        let message = one_line(&text);
        if journald {
            writeln!(
                out,
                "<{}>{thread} {module}: {message}",
                syslog_priority(record.level()),
            )
        } else {
            writeln!(
                out,
                "{}\t{thread}\t{module}\t{}\t{message}",
                chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                record.level(),
            )
        }
    });
    let logger = builder.build();
    let max_level = logger.filter();
    // Errors also go to Sentry (as events; lower levels as breadcrumbs) once
    // `crate::error_reporting` has bound a client; without one this adds nothing.
    let logger = sentry::integrations::log::SentryLogger::with_dest(logger);
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(max_level);
    }
}

/// One event, one line: a message of several lines (a config's list of problems, say) has
/// them joined with ` | `, so under journald no part of it loses its priority.
fn one_line(message: &str) -> std::borrow::Cow<'_, str> {
    if message.contains('\n') {
        message
            .lines()
            .map(str::trim_end)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join(" | ")
            .into()
    } else {
        message.into()
    }
}

fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn messages_become_one_line() {
        let cases = [
            ("plain", "plain"),
            ("", ""),
            (
                "invalid:\nkey a: bad\nkey b: worse\n",
                "invalid: | key a: bad | key b: worse",
            ),
            ("trailing spaces  \r\nnext", "trailing spaces | next"),
        ];
        for (message, expected) in cases {
            assert_eq!(one_line(message), expected, "{message:?}");
        }
    }
}
