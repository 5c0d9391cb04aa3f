//! Sentry reporting: with `sentry_dsn` set, every error the daemon logs and every panic is sent
//! to Sentry as an event, tagged with the statsd tags (`statsd.tags`) as MyHoard does.
//!
//! Errors reach Sentry through the logger ([`crate::logging`] wraps env_logger in Sentry's log
//! integration), so "report an unexpected error" and "log an error" are one act, done once
//! where the error is handled. The transport is Sentry's blocking ureq one: a plain background
//! thread, no async runtime. The DSN is a secret and is never logged.

use std::time::Duration;

use crate::config::Config;

/// How long shutting down waits for queued events to be sent.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Keeps reporting on while alive; dropping it flushes what is queued.
pub struct Reporting {
    _guard: Option<sentry::ClientInitGuard>,
}

/// Binds a Sentry client for `config` (none without `sentry_dsn`). Call before spawning the
/// threads whose errors it should see.
pub fn init(config: &Config) -> Reporting {
    let Some(dsn) = config.sentry_dsn.as_ref() else {
        return Reporting { _guard: None };
    };
    let dsn = match dsn.expose().parse::<sentry::types::Dsn>() {
        Ok(dsn) => dsn,
        Err(_) => {
            // The value is a secret: only say it is unusable.
            log::warn!("sentry_dsn is not a valid Sentry DSN; errors are not reported");
            return Reporting { _guard: None };
        }
    };
    let mut options = sentry::ClientOptions::default();
    options.dsn = Some(dsn);
    options.release = Some(env!("CARGO_PKG_VERSION").into());
    options.shutdown_timeout = FLUSH_TIMEOUT;
    let guard = sentry::init(options);
    let tags = config.statsd.tags.clone();
    sentry::configure_scope(|scope| {
        for (name, value) in &tags {
            scope.set_tag(name, value);
        }
        scope.set_tag("server_id", config.server_id);
    });
    log::info!("reporting errors to Sentry");
    Reporting {
        _guard: Some(guard),
    }
}
