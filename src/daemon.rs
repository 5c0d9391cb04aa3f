//! `myhoard run`: wires the threads together and runs until SIGTERM or SIGINT.
//!
//! Start order: config, state directory, storage sites, the binlog watcher, the uploader pool,
//! the controller (which loads its state files), then the HTTP server; only then does the
//! service manager hear `READY=1`. Shutdown runs the other way: the HTTP server stops taking
//! requests, the controller cancels in-flight snapshots and saves its state, the channels close
//! and every thread is joined.
//!
//! SIGHUP reloads the config file. An invalid file is refused, with every problem logged, and
//! the daemon runs on unchanged. A valid one is applied the way MyHoard applies it: once it is
//! safe (no snapshot is being taken, so none is thrown away), everything is shut down as for
//! SIGTERM and started again from the state files with the new config; every setting takes
//! effect. Should the new config fail to start (a port taken, say), the old one is started
//! again. systemd hears `RELOADING=1`, then `READY=1`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::backup_stream::upload;
use crate::binlog_scanner::{self, BinlogScanner};
use crate::config::Config;
use crate::controller::{Channels, Context, Controller, SiteHandle};
use crate::http::{ApiRequest, Command, HttpServer};
use crate::storage::{self, RetryPolicy};

/// How often the watcher looks for closed binlogs: the upload latency floor.
const BINLOG_POLL_INTERVAL: Duration = Duration::from_millis(200);
const UPLOADERS: usize = 2;

/// How often a pending reload looks again whether it is safe.
const RELOAD_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How one start of the threads ended.
enum Exit {
    Stop,
    /// SIGHUP with a valid new config (and its JSON, to tell what changed next time).
    Reload(Box<Config>, serde_json::Value),
}

/// Runs the daemon with an already validated config, read from `config_path` (read again on
/// SIGHUP).
pub fn run(config: Config, config_path: &Path) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .context("installing signal handlers")?;
    // One command channel and one HTTP server for the daemon's life: a reload restarts the
    // controller behind them, and requests meanwhile wait in the channel for the new one.
    // (tiny_http cannot close keep-alive connections, so a server replaced on reload would
    // leave clients waiting on a dead one.)
    let (commands_tx, commands_rx) = crossbeam_channel::bounded(COMMAND_QUEUE);
    let mut http = start_http(&config, commands_tx.clone())?;
    let mut current = (config, config_json(config_path));
    let mut previous: Option<(Config, serde_json::Value)> = None;
    let result = loop {
        let (config, json) = &current;
        let listening = (config.http_address.as_str(), config.http_port);
        if (http.address.as_str(), http.port) != listening {
            log::info!("http_address/http_port changed: listening anew");
            http.server.shutdown();
            http = match start_http(config, commands_tx.clone()) {
                Ok(server) => server,
                Err(err) => {
                    let Some(old) = previous.take() else {
                        return Err(err);
                    };
                    log::error!(
                        "the reloaded configuration does not start, back to the previous one: \
                         {err:#}"
                    );
                    current = old;
                    start_http(&current.0, commands_tx.clone())?
                }
            };
            continue;
        }
        let channels = CommandChannels {
            receiver: commands_rx.clone(),
            sender: &commands_tx,
        };
        match run_once(config.clone(), json, config_path, &mut signals, channels) {
            Ok(Exit::Stop) => break Ok(()),
            Ok(Exit::Reload(new_config, new_json)) => {
                previous = Some(std::mem::replace(&mut current, (*new_config, new_json)));
            }
            Err(err) => match previous.take() {
                // Only a reload's first start can fail with a config that once worked.
                Some(old) => {
                    log::error!(
                        "the reloaded configuration does not start, back to the previous one: \
                         {err:#}"
                    );
                    current = old;
                }
                None => break Err(err),
            },
        }
    };
    http.server.shutdown();
    if result.is_ok() {
        log::info!("myhoard stopped");
    }
    result
}

/// Requests waiting for the controller at most (the HTTP workers block beyond).
const COMMAND_QUEUE: usize = 64;

/// The HTTP server and where it listens.
struct Http {
    server: HttpServer,
    address: String,
    port: u16,
}

fn start_http(
    config: &Config,
    commands: crossbeam_channel::Sender<Command>,
) -> anyhow::Result<Http> {
    let server = HttpServer::start(&config.http_address, config.http_port, commands)
        .with_context(|| format!("listening on {}:{}", config.http_address, config.http_port))?;
    log::info!("myhoard listening on {}", server.local_addr());
    Ok(Http {
        server,
        address: config.http_address.clone(),
        port: config.http_port,
    })
}

/// The controller's end of the command channel, and a sender for the daemon's own questions.
struct CommandChannels<'a> {
    receiver: crossbeam_channel::Receiver<Command>,
    sender: &'a crossbeam_channel::Sender<Command>,
}

/// The config file as JSON, for telling which settings a reload changes; `Null` if unreadable.
fn config_json(path: &Path) -> serde_json::Value {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

/// The settings that differ, as key paths (two levels deep; values are never shown: they
/// include secrets).
fn changed_settings(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return vec!["(all)".to_owned()];
    };
    let mut keys: std::collections::BTreeSet<&String> = old.keys().collect();
    keys.extend(new.keys());
    let mut changed = Vec::new();
    for key in keys {
        match (old.get(key), new.get(key)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(serde_json::Value::Object(a)), Some(serde_json::Value::Object(b))) => {
                let mut inner: std::collections::BTreeSet<&String> = a.keys().collect();
                inner.extend(b.keys());
                changed.extend(
                    inner
                        .into_iter()
                        .filter(|k| a.get(*k) != b.get(*k))
                        .map(|k| format!("{key}.{k}")),
                );
            }
            _ => changed.push(key.clone()),
        }
    }
    changed
}

/// Starts every thread with `config` and runs until a stop signal, or a reload that is due.
fn run_once(
    config: Config,
    config_json: &serde_json::Value,
    config_path: &Path,
    signals: &mut signal_hook::iterator::Signals,
    commands: CommandChannels<'_>,
) -> anyhow::Result<Exit> {
    // Before any thread starts, so that each reports to this config's Sentry project.
    let _reporting = crate::error_reporting::init(&config);
    if !config.state_directory.is_dir() {
        bail!(
            "state_directory {} does not exist",
            config.state_directory.display()
        );
    }
    std::fs::create_dir_all(&config.temporary_directory).with_context(|| {
        format!(
            "creating temporary_directory {}",
            config.temporary_directory.display()
        )
    })?;
    let mut sites = BTreeMap::new();
    for (name, site) in &config.backup_sites {
        let storage = storage::open(&site.object_storage, RetryPolicy::default())
            .with_context(|| format!("opening the storage of site {name}"))?;
        sites.insert(
            name.clone(),
            SiteHandle {
                storage,
                compression: site.compression,
                public_key: site.encryption_keys.public.clone(),
                private_key: site.encryption_keys.private.clone(),
                split_size: site.split_size,
                recovery_only: site.recovery_only,
            },
        );
    }
    let scanner = BinlogScanner::open(
        &config.state_directory,
        &config.mysql.binlog_prefix,
        config.server_id,
    )?;
    let ctx = Arc::new(Context {
        metrics: crate::metrics::Metrics::new(&config.statsd),
        config,
        sites,
    });

    let (watcher_requests_tx, watcher_requests_rx) = crossbeam_channel::bounded(16);
    let (watcher_events_tx, watcher_events_rx) = crossbeam_channel::unbounded();
    let watcher = binlog_scanner::spawn_watcher(
        scanner,
        BINLOG_POLL_INTERVAL,
        watcher_requests_rx,
        watcher_events_tx,
    )?;
    let (upload_jobs_tx, upload_jobs_rx) = crossbeam_channel::bounded(UPLOADERS * 2);
    let (upload_outcomes_tx, upload_outcomes_rx) = crossbeam_channel::unbounded();
    let uploaders = upload::spawn_pool(UPLOADERS, upload_jobs_rx, upload_outcomes_tx)?;
    let (shutdown_tx, shutdown_rx) = crossbeam_channel::bounded(1);
    let (mode_tx, mode_rx) = crossbeam_channel::unbounded();
    let controller = Controller::new(
        Arc::clone(&ctx),
        Channels {
            commands: commands.receiver,
            watcher_events: watcher_events_rx,
            watcher_requests: watcher_requests_tx,
            upload_jobs: upload_jobs_tx,
            upload_outcomes: upload_outcomes_rx,
            shutdown: shutdown_rx,
            mode_changes: Some(mode_tx),
        },
    )?;
    let controller = std::thread::Builder::new()
        .name("controller".into())
        .spawn(move || controller.run())?;
    notify("READY=1");
    let status = std::thread::Builder::new()
        .name("sd-status".into())
        .spawn(move || {
            for mode in mode_rx {
                notify(&format!("STATUS=mode {mode}"));
            }
        })?;

    let mut exit = Exit::Stop;
    let mut reload: Option<(Config, serde_json::Value)> = None;
    'signals: loop {
        // While a reload waits for a safe moment, look at signals without blocking.
        let pending: Vec<i32> = if reload.is_some() {
            std::thread::sleep(RELOAD_POLL_INTERVAL);
            signals.pending().collect()
        } else {
            signals.forever().next().into_iter().collect()
        };
        for signal in pending {
            if signal != signal_hook::consts::SIGHUP {
                log::info!("signal {signal}: shutting down");
                break 'signals;
            }
            match Config::load(config_path) {
                Err(errors) => log::error!(
                    "SIGHUP: {} is not a valid configuration; running on with the current \
                     one:\n{errors}",
                    config_path.display()
                ),
                Ok(new_config) => {
                    let new_json = self::config_json(config_path);
                    let changed = changed_settings(config_json, &new_json);
                    if changed.is_empty() {
                        log::info!("SIGHUP: the configuration is unchanged");
                    } else {
                        for warning in &new_config.warnings {
                            log::warn!("{}: {warning}", config_path.display());
                        }
                        log::info!(
                            "SIGHUP: configuration changed ({}); reloading once no snapshot is \
                             being taken",
                            changed.join(", ")
                        );
                        reload = Some((new_config, new_json));
                    }
                }
            }
        }
        if let Some((new_config, new_json)) = reload.take() {
            if snapshot_in_progress(commands.sender) {
                reload = Some((new_config, new_json));
            } else {
                notify("RELOADING=1");
                log::info!(
                    "reloading: stopping every thread to start again with the new configuration"
                );
                exit = Exit::Reload(Box::new(new_config), new_json);
                break;
            }
        }
    }
    if matches!(exit, Exit::Stop) {
        notify("STOPPING=1");
    }
    let _ = shutdown_tx.send(());
    join("controller", controller);
    // The controller held the last senders of the watcher's and uploaders' job channels.
    join("binlog-watcher", watcher);
    for uploader in uploaders {
        join("uploader", uploader);
    }
    join("sd-status", status);
    Ok(exit)
}

/// Whether the controller is taking a snapshot (`basebackups_in_progress` in its status).
/// When it cannot tell, a reload waits.
fn snapshot_in_progress(commands: &crossbeam_channel::Sender<Command>) -> bool {
    let (reply, answer) = crossbeam_channel::bounded(1);
    let asked = commands.send_timeout(
        Command {
            request: ApiRequest::GetStatus,
            reply,
        },
        Duration::from_secs(10),
    );
    match (asked, answer.recv_timeout(Duration::from_secs(10))) {
        (Ok(()), Ok(Ok(status))) => status.get("basebackups_in_progress").is_some(),
        _ => true,
    }
}

fn join(name: &str, handle: std::thread::JoinHandle<()>) {
    if handle.join().is_err() {
        log::error!("thread {name} panicked");
    }
}

/// Tells systemd (`Type=notify`) about our state; a no-op outside systemd.
fn notify(message: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = Path::new(&socket);
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|datagram| {
        let bytes = path.as_os_str().as_encoded_bytes();
        if let Some(abstract_name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
            datagram.send_to_addr(message.as_bytes(), &address)
        } else {
            datagram.send_to(message.as_bytes(), path)
        }
    });
    if let Err(err) = sent {
        log::warn!("telling systemd {message:?}: {err}");
    }
}
