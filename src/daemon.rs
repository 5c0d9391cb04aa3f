//! `myhoard run`: wires the threads together and runs until SIGTERM or SIGINT.
//!
//! Start order: config, state directory, storage sites, the binlog watcher, the uploader pool,
//! the controller (which loads its state files), then the HTTP server; only then does the
//! service manager hear `READY=1`. Shutdown runs the other way: the HTTP server stops taking
//! requests, the controller cancels in-flight snapshots and saves its state, the channels close
//! and every thread is joined.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::backup_stream::upload;
use crate::binlog_scanner::{self, BinlogScanner};
use crate::config::Config;
use crate::controller::{Channels, Context, Controller, SiteHandle};
use crate::http::HttpServer;
use crate::storage::{self, RetryPolicy};

/// How often the watcher looks for closed binlogs: the upload latency floor.
const BINLOG_POLL_INTERVAL: Duration = Duration::from_millis(200);
const UPLOADERS: usize = 2;

/// Runs the daemon with an already validated config.
pub fn run(config: Config) -> anyhow::Result<()> {
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
    let ctx = Arc::new(Context { config, sites });

    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .context("installing signal handlers")?;
    let signals_handle = signals.handle();

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
    let (commands_tx, commands_rx) = crossbeam_channel::bounded(64);
    let (shutdown_tx, shutdown_rx) = crossbeam_channel::bounded(1);
    let (mode_tx, mode_rx) = crossbeam_channel::unbounded();
    let controller = Controller::new(
        Arc::clone(&ctx),
        Channels {
            commands: commands_rx,
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
    let http = HttpServer::start(&ctx.config.http_address, ctx.config.http_port, commands_tx)
        .with_context(|| {
            format!(
                "listening on {}:{}",
                ctx.config.http_address, ctx.config.http_port
            )
        })?;
    log::info!("myhoard listening on {}", http.local_addr());
    notify("READY=1");
    let status = std::thread::Builder::new()
        .name("sd-status".into())
        .spawn(move || {
            for mode in mode_rx {
                notify(&format!("STATUS=mode {mode}"));
            }
        })?;

    for signal in signals.forever() {
        match signal {
            signal_hook::consts::SIGHUP => {
                log::warn!("SIGHUP: reloading the configuration is not supported yet; ignored");
            }
            _ => {
                log::info!("signal {signal}: shutting down");
                break;
            }
        }
    }
    signals_handle.close();
    notify("STOPPING=1");
    http.shutdown();
    let _ = shutdown_tx.send(());
    join("controller", controller);
    // The controller held the last senders of the watcher's and uploaders' job channels.
    join("binlog-watcher", watcher);
    for uploader in uploaders {
        join("uploader", uploader);
    }
    join("sd-status", status);
    log::info!("myhoard stopped");
    Ok(())
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
