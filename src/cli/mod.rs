//! The `myhoard` command line: parses arguments, dispatches to a command, maps failures to exit
//! codes (0 success, 1 the command failed, 2 bad usage or an invalid config).
//!
//! Runs on the main thread. Errors are printed once, here, with their whole context chain.

mod binlog;
mod env_update;
mod storage;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use lexopt::prelude::*;

use crate::config::Config;
use crate::pipeline::{Algorithm, CompressionSettings};

const USAGE: &str = "\
usage:
  myhoard run --config PATH [--log-level LEVEL]      (also: myhoard --config PATH)
  myhoard validate-config --config PATH
  myhoard storage ls  --config PATH [--site NAME] [--deep] [--json] [PREFIX]
  myhoard storage get --config PATH [--site NAME] [--raw] [--compression ALG] KEY [OUTPUT|-]
  myhoard storage put --config PATH [--site NAME] [--compression ALG] [--level N] [--threads N]
                      [--metadata JSON] INPUT|- KEY
  myhoard storage rm  --config PATH [--site NAME] KEY...
  myhoard binlog inspect [--transactions] [--strict] FILE...
  myhoard mysql-env-update -f ENVFILE -b true|false -g true|false [-o OPTION]...

The config path may also come from the MYHOARD_CONFIG environment variable. --site defaults to
backup_settings.upload_site, or to the only site when there is one.

binlog inspect prints one JSON line per file (and with --transactions one per transaction
first); --strict treats an incomplete last event as damage rather than a file being written.

mysql-env-update (run by the daemon through sudo before restarting mysqld under systemd) rewrites
the MYSQLD_OPTS= line of ENVFILE: the -o options in order, or without -o MyHoard's options for
-b false (binlog off) and -g false (GTIDs off); no line when there are none. Options with
whitespace, quotes, backslashes or control characters are refused.";

/// A usage error: exit code 2 with the usage text.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

/// Exit code 2 without the usage text: the config was read and is invalid.
#[derive(Debug, thiserror::Error)]
#[error("invalid config")]
struct InvalidConfig;

pub fn main() -> ExitCode {
    abort_on_panic();
    // rust-s3 pulls in rustls' aws-lc-rs provider while ureq and mysql use ring; with two
    // providers compiled in rustls cannot pick one by itself and would panic on first use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    crate::logging::init(runs_daemon(&args), log_level_argument(&args).as_deref());

    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is::<InvalidConfig>() => ExitCode::from(2),
        Err(err) if err.is::<UsageError>() => {
            eprintln!("myhoard: {err}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("myhoard: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Makes a panic on any thread end the process once it is reported (on stderr, and to Sentry,
/// whose hook runs this one after its own). A daemon whose controller or uploader thread died
/// must not go on answering as if it were whole; systemd restarts it. The release profile keeps
/// unwinding only so that tests and packages share one build (see `Cargo.toml`).
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
}

/// One command-line item, owned so the parser can be used again while it is examined.
enum Opt {
    Long(String),
    Short(char),
    Value(OsString),
}

impl Opt {
    fn next(parser: &mut lexopt::Parser) -> Result<Option<Opt>> {
        Ok(parser.next()?.map(|arg| match arg {
            Long(name) => Opt::Long(name.to_owned()),
            Short(c) => Opt::Short(c),
            Value(value) => Opt::Value(value),
        }))
    }

    fn unexpected(self) -> anyhow::Error {
        match self {
            Opt::Long(name) => usage(format!("unexpected option --{name}")),
            Opt::Short(c) => usage(format!("unexpected option -{c}")),
            Opt::Value(value) => usage(format!("unexpected argument {value:?}")),
        }
    }
}

/// Options shared by every command.
#[derive(Default)]
struct Common {
    config: Option<PathBuf>,
    site: Option<String>,
}

impl Common {
    /// Takes `--config` and `--site` if `arg` is one of them.
    fn take(&mut self, opt: &Opt, parser: &mut lexopt::Parser) -> Result<bool> {
        match opt {
            Opt::Long(name) if name == "config" => self.config = Some(parser.value()?.into()),
            Opt::Long(name) if name == "site" => self.site = Some(string(parser.value()?)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_path(&self) -> Result<PathBuf> {
        self.config
            .clone()
            .or_else(|| std::env::var_os("MYHOARD_CONFIG").map(PathBuf::from))
            .ok_or_else(|| usage("--config PATH is required"))
    }

    fn load_config(&self) -> Result<Config> {
        let path = self.config_path()?;
        match Config::load(&path) {
            Ok(config) => {
                for warning in &config.warnings {
                    log::warn!("{}: {warning}", path.display());
                }
                Ok(config)
            }
            Err(errors) => {
                eprintln!("{}: invalid config:\n{errors}", path.display());
                Err(InvalidConfig.into())
            }
        }
    }

    fn site_name(&self, config: &Config) -> Result<String> {
        if let Some(site) = &self.site {
            return Ok(site.clone());
        }
        // Validation resolved this to the only site when the config names none.
        Ok(config.backup_settings.upload_site.clone())
    }

    fn open_site(&self) -> Result<storage::Site> {
        let config = self.load_config()?;
        let name = self.site_name(&config)?;
        storage::open_site(&config, &name)
    }
}

fn string(value: OsString) -> Result<String> {
    value
        .into_string()
        .map_err(|value| usage(format!("argument {value:?} is not valid UTF-8")))
}

/// Whether the arguments start the daemon: `run ...`, or MyHoard's `--config PATH` form.
fn runs_daemon(args: &[OsString]) -> bool {
    args.first().is_some_and(|first| {
        let first = first.to_string_lossy();
        first == "run" || first.starts_with("--config") || first.starts_with("--log-level")
    })
}

/// `--log-level LEVEL` (MyHoard's option), if given.
fn log_level_argument(args: &[OsString]) -> Option<String> {
    let mut args = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = args.next() {
        if let Some(level) = arg.strip_prefix("--log-level=") {
            return Some(level.to_owned());
        }
        if arg == "--log-level" {
            return args.next();
        }
    }
    None
}

fn run(args: Vec<OsString>) -> Result<()> {
    if args
        .first()
        .is_some_and(|first| first.to_string_lossy().starts_with("--config"))
        || args
            .first()
            .is_some_and(|first| first.to_string_lossy().starts_with("--log-level"))
    {
        return run_daemon(lexopt::Parser::from_args(args));
    }
    let mut parser = lexopt::Parser::from_args(args);
    let command = match parser.next()? {
        Some(Value(command)) => string(command)?,
        Some(Long("help") | Short('h')) => {
            println!("{USAGE}");
            return Ok(());
        }
        Some(Long("version")) => {
            println!("myhoard {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        Some(other) => return Err(usage(other.unexpected().to_string())),
        None => return Err(usage("no command given")),
    };
    match command.as_str() {
        "run" => run_daemon(parser),
        "validate-config" => validate_config(parser),
        "storage" => {
            let sub = match parser.next()? {
                Some(Value(sub)) => string(sub)?,
                _ => return Err(usage("storage needs a subcommand: ls, get, put or rm")),
            };
            match sub.as_str() {
                "ls" => storage_ls(parser),
                "get" => storage_get(parser),
                "put" => storage_put(parser),
                "rm" => storage_rm(parser),
                other => Err(usage(format!("unknown storage subcommand {other:?}"))),
            }
        }
        "binlog" => {
            let sub = match parser.next()? {
                Some(Value(sub)) => string(sub)?,
                _ => return Err(usage("binlog needs a subcommand: inspect")),
            };
            match sub.as_str() {
                "inspect" => binlog_inspect(parser),
                other => Err(usage(format!("unknown binlog subcommand {other:?}"))),
            }
        }
        "mysql-env-update" => mysql_env_update(parser),
        other => Err(usage(format!("unknown command {other:?}"))),
    }
}

fn run_daemon(mut parser: lexopt::Parser) -> Result<()> {
    let mut common = Common::default();
    while let Some(opt) = Opt::next(&mut parser)? {
        if common.take(&opt, &mut parser)? {
            continue;
        }
        match opt {
            // Read before the logger started (`log_level_argument`); skipped here.
            Opt::Long(name) if name == "log-level" => {
                parser.value()?;
            }
            other => return Err(usage(other.unexpected().to_string())),
        }
    }
    let config = common.load_config()?;
    crate::daemon::run(config, &common.config_path()?)
}

fn validate_config(mut parser: lexopt::Parser) -> Result<()> {
    let mut common = Common::default();
    while let Some(opt) = Opt::next(&mut parser)? {
        if !common.take(&opt, &mut parser)? {
            return Err(opt.unexpected());
        }
    }
    let path = common.config_path()?;
    let config = common.load_config()?;
    println!(
        "{}: valid ({} backup site(s))",
        path.display(),
        config.backup_sites.len()
    );
    Ok(())
}

fn storage_ls(mut parser: lexopt::Parser) -> Result<()> {
    let mut common = Common::default();
    let (mut deep, mut as_json, mut prefix) = (false, false, String::new());
    while let Some(opt) = Opt::next(&mut parser)? {
        if common.take(&opt, &mut parser)? {
            continue;
        }
        match opt {
            Opt::Long(name) if name == "deep" => deep = true,
            Opt::Long(name) if name == "json" => as_json = true,
            Opt::Value(value) if prefix.is_empty() => prefix = string(value)?,
            other => return Err(other.unexpected()),
        }
    }
    let site = common.open_site()?;
    let stdout = std::io::stdout();
    storage::ls(&site, &prefix, deep, as_json, &mut stdout.lock())
}

fn algorithm(value: OsString) -> Result<Algorithm> {
    string(value)?.parse().map_err(|err: String| usage(err))
}

fn storage_get(mut parser: lexopt::Parser) -> Result<()> {
    let mut common = Common::default();
    let mut options = storage::GetOptions {
        raw: false,
        algorithm: None,
    };
    let mut positional = Vec::new();
    while let Some(opt) = Opt::next(&mut parser)? {
        if common.take(&opt, &mut parser)? {
            continue;
        }
        match opt {
            Opt::Long(name) if name == "raw" => options.raw = true,
            Opt::Long(name) if name == "compression" => {
                options.algorithm = Some(algorithm(parser.value()?)?)
            }
            Opt::Value(value) => positional.push(string(value)?),
            other => return Err(other.unexpected()),
        }
    }
    let (key, output) = match positional.as_slice() {
        [key] => (key.as_str(), "-"),
        [key, output] => (key.as_str(), output.as_str()),
        _ => return Err(usage("storage get takes KEY and an optional OUTPUT")),
    };
    let site = common.open_site()?;
    storage::get(&site, key, output, &options)
}

fn number<T: std::str::FromStr>(option: &str, value: OsString) -> Result<T> {
    let text = string(value)?;
    text.parse()
        .map_err(|_| usage(format!("{option} needs a number, not {text:?}")))
}

fn storage_put(mut parser: lexopt::Parser) -> Result<()> {
    let mut common = Common::default();
    let mut positional = Vec::new();
    let (mut algorithm_override, mut level, mut threads, mut metadata) = (None, None, None, None);
    while let Some(opt) = Opt::next(&mut parser)? {
        if common.take(&opt, &mut parser)? {
            continue;
        }
        match opt {
            Opt::Long(name) if name == "compression" => {
                algorithm_override = Some(algorithm(parser.value()?)?)
            }
            Opt::Long(name) if name == "level" => level = Some(number("--level", parser.value()?)?),
            Opt::Long(name) if name == "threads" => {
                threads = Some(number("--threads", parser.value()?)?)
            }
            Opt::Long(name) if name == "metadata" => {
                let text = string(parser.value()?)?;
                let value: serde_json::Value =
                    serde_json::from_str(&text).context("parsing --metadata")?;
                match value {
                    serde_json::Value::Object(map) => metadata = Some(map),
                    _ => return Err(usage("--metadata must be a JSON object")),
                }
            }
            Opt::Value(value) => positional.push(string(value)?),
            other => return Err(other.unexpected()),
        }
    }
    let [input, key] = positional.as_slice() else {
        return Err(usage(
            "storage put takes INPUT (a file, or - for stdin) and KEY",
        ));
    };
    let site = common.open_site()?;
    let compression =
        (algorithm_override.is_some() || level.is_some() || threads.is_some()).then(|| {
            let base = site.settings.compression;
            CompressionSettings {
                algorithm: algorithm_override.unwrap_or(base.algorithm),
                level: level.unwrap_or(base.level),
                threads: threads.unwrap_or(base.threads),
            }
        });
    let options = storage::PutOptions {
        extra_metadata: metadata,
        compression,
    };
    let stats = storage::put(&site, input, key, &options)?;
    eprintln!(
        "stored {key}: {} bytes in, {} bytes stored",
        stats.original_bytes, stats.stored_bytes
    );
    Ok(())
}

fn storage_rm(mut parser: lexopt::Parser) -> Result<()> {
    let mut common = Common::default();
    let mut keys = Vec::new();
    while let Some(opt) = Opt::next(&mut parser)? {
        if common.take(&opt, &mut parser)? {
            continue;
        }
        match opt {
            Opt::Value(value) => keys.push(string(value)?),
            other => return Err(other.unexpected()),
        }
    }
    if keys.is_empty() {
        return Err(usage("storage rm needs at least one KEY"));
    }
    let site = common.open_site()?;
    storage::rm(&site, &keys)
}

fn binlog_inspect(mut parser: lexopt::Parser) -> Result<()> {
    let mut options = binlog::InspectOptions {
        transactions: false,
        strict: false,
    };
    let mut files = Vec::new();
    while let Some(opt) = Opt::next(&mut parser)? {
        match opt {
            Opt::Long(name) if name == "transactions" => options.transactions = true,
            Opt::Long(name) if name == "strict" => options.strict = true,
            Opt::Value(value) => files.push(PathBuf::from(value)),
            other => return Err(other.unexpected()),
        }
    }
    if files.is_empty() {
        return Err(usage("binlog inspect needs at least one FILE"));
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    binlog::inspect(&files, &options, &mut out)
}

/// `true` or `false`, as the daemon (and MyHoard) pass `-b` and `-g`.
fn boolean(option: &str, value: OsString) -> Result<bool> {
    match string(value)?.as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(usage(format!(
            "{option} takes true or false, not {other:?}"
        ))),
    }
}

fn mysql_env_update(mut parser: lexopt::Parser) -> Result<()> {
    let (mut file, mut with_binlog, mut with_gtids) = (None, None, None);
    let mut options = Vec::new();
    // Each of -f, -b and -g at most once: sudoers pins `-f FILE` as the first arguments, and a
    // second -f must not override it.
    fn once<T>(slot: &mut Option<T>, option: &str, value: T) -> Result<()> {
        if slot.replace(value).is_some() {
            return Err(usage(format!("{option} given more than once")));
        }
        Ok(())
    }
    while let Some(opt) = Opt::next(&mut parser)? {
        match opt {
            Opt::Short('f') => once(&mut file, "-f", PathBuf::from(parser.value()?))?,
            Opt::Short('b') => once(&mut with_binlog, "-b", boolean("-b", parser.value()?)?)?,
            Opt::Short('g') => once(&mut with_gtids, "-g", boolean("-g", parser.value()?)?)?,
            Opt::Short('o') => {
                let option = string(parser.value()?)?;
                env_update::check_option(&option).map_err(usage)?;
                options.push(option);
            }
            other => return Err(other.unexpected()),
        }
    }
    let update = env_update::EnvUpdate {
        file: file.ok_or_else(|| usage("mysql-env-update needs -f ENVFILE"))?,
        with_binlog: with_binlog.ok_or_else(|| usage("mysql-env-update needs -b true|false"))?,
        with_gtids: with_gtids.ok_or_else(|| usage("mysql-env-update needs -g true|false"))?,
        options,
    };
    match env_update::run(&update)? {
        Some(line) => println!("{}: {line}", update.file.display()),
        None => println!(
            "{}: no {} line",
            update.file.display(),
            env_update::VARIABLE
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    /// Set in the child process the test runs itself as.
    const CHILD: &str = "MYHOARD_TEST_PANIC_CHILD";
    /// The signal `std::process::abort` raises, 6 on every Linux architecture.
    const SIGABRT: i32 = 6;

    /// Runs itself again as a child in which a worker thread panics with the hook installed.
    /// Were the panic only to unwind, `join` would return the error and the child would go on
    /// and exit normally.
    #[test]
    fn a_panic_on_any_thread_aborts_the_process() {
        if std::env::var_os(CHILD).is_some() {
            super::abort_on_panic();
            let joined = std::thread::spawn(|| panic!("worker failed on purpose")).join();
            println!("still running after the panic: {}", joined.is_err());
            return;
        }
        let output = Command::new(std::env::current_exe().expect("the test binary"))
            .args([
                "--exact",
                "cli::tests::a_panic_on_any_thread_aborts_the_process",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .expect("running the test binary");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            output.status.signal(),
            Some(SIGABRT),
            "{:?}\nstdout: {stdout}\nstderr: {stderr}",
            output.status
        );
        assert!(stderr.contains("worker failed on purpose"), "{stderr}");
        assert!(!stdout.contains("still running"), "{stdout}");
    }
}
