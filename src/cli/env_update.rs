//! `myhoard mysql-env-update`: MyHoard's `myhoard_mysql_env_update`, the helper that writes the
//! options a restore needs into the environment file of the mysqld systemd unit.
//!
//! The daemon runs it (through sudo, as root) before every `systemctl restart` of mysqld in
//! `systemd_service` mode: `systemd_env_update_command -b BOOL -g BOOL [-o OPTION]...`. The file
//! keeps every line except blank ones and the old `MYSQLD_OPTS=` line; a new `MYSQLD_OPTS=` line
//! with the options joined by spaces is appended when there are options, so that the unit's
//! `ExecStart=... $MYSQLD_OPTS` passes them to mysqld (`packaging/mysqld-override.conf`). With no
//! options the line is removed and mysqld starts with its normal settings.
//!
//! Which options: every `-o OPTION`, verbatim and in order, is the complete list when any is
//! given (this daemon always passes the full, flavour- and version-specific list it computed,
//! binlog-off options included). Without `-o`, as Python MyHoard calls it, `-b false` and
//! `-g false` add MyHoard's fixed MySQL options. Adding those on top of a `-o` list would
//! duplicate options and could pass the 8.0 `slave` spelling next to the `replica` one the
//! daemon chose for the server's version.
//!
//! Quoting: systemd expands an unbraced `$MYSQLD_OPTS` in `ExecStart=` by splitting the value at
//! whitespace, whatever quotes the environment file used, so an option with whitespace cannot
//! survive as one argument. Such options, and ones with quotes, backslashes or control
//! characters (which the environment file parser would interpret, or which would start a new
//! line), are refused with a usage error rather than quoted.
//!
//! The file is replaced atomically: a temporary file in the same directory is written, fsynced
//! and renamed over it, and the directory is fsynced. The file's mode (0644 for a new file) and,
//! when it can be kept, its owner and group are kept; a symlink is followed, not replaced.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The variable the mysqld unit expands in its `ExecStart=`.
pub const VARIABLE: &str = "MYSQLD_OPTS";

/// MyHoard's options for a server without a binlog (`restore_mysqld_options(with_binlog=False)`,
/// MySQL 8.0 spelling).
pub const BINLOG_OFF_OPTIONS: [&str; 3] = [
    "--disable-log-bin",
    "--skip-slave-preserve-commit-order",
    "--event-scheduler=OFF",
];

/// MyHoard's option for a server without GTIDs (`with_gtids=False`).
pub const GTIDS_OFF_OPTIONS: [&str; 1] = ["--gtid-mode=OFF"];

/// Mode of a newly created environment file.
const NEW_FILE_MODE: u32 = 0o644;

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvUpdate {
    pub file: PathBuf,
    pub with_binlog: bool,
    pub with_gtids: bool,
    /// The `-o` options, in the order given.
    pub options: Vec<String>,
}

/// The options to write: the `-o` list when there is one, else MyHoard's options for the two
/// switches.
pub fn mysqld_options(with_binlog: bool, with_gtids: bool, extra: &[String]) -> Vec<String> {
    if !extra.is_empty() {
        return extra.to_vec();
    }
    let mut options = Vec::new();
    if !with_binlog {
        options.extend(BINLOG_OFF_OPTIONS.iter().map(|o| (*o).to_owned()));
    }
    if !with_gtids {
        options.extend(GTIDS_OFF_OPTIONS.iter().map(|o| (*o).to_owned()));
    }
    options
}

/// Why `option` cannot be written into the environment file, if it cannot.
pub fn check_option(option: &str) -> Result<(), String> {
    if option.is_empty() {
        return Err("-o needs a non-empty OPTION".to_owned());
    }
    if let Some(bad) = option
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\'))
    {
        return Err(format!(
            "option {option:?} contains {bad:?}: options with whitespace, quotes, backslashes or \
             control characters are refused, since systemd splits $MYSQLD_OPTS at whitespace \
             regardless of quoting"
        ));
    }
    Ok(())
}

/// Whether `line` assigns `MYSQLD_OPTS` (systemd ignores whitespace around the key).
fn assigns_variable(line: &str) -> bool {
    line.trim_start()
        .strip_prefix(VARIABLE)
        .is_some_and(|rest| rest.trim_start().starts_with('='))
}

/// Whether `line` continues on the next one (ends in an odd number of backslashes).
fn continues(line: &str) -> bool {
    line.bytes().rev().take_while(|b| *b == b'\\').count() % 2 == 1
}

/// The new file contents: `contents` without blank lines and without the `MYSQLD_OPTS`
/// assignment (with its continuation lines), then one `MYSQLD_OPTS=` line if there are
/// `options`. Every line ends in a newline.
pub fn rewrite(contents: &str, options: &[String]) -> String {
    let mut out = String::with_capacity(contents.len() + 64);
    // Whether the previous line continues on this one, and then whether it was dropped: a
    // continuation line goes with the line it continues.
    let mut continuation: Option<bool> = None;
    for line in contents.lines() {
        let drop = continuation.unwrap_or_else(|| line.trim().is_empty() || assigns_variable(line));
        if !drop {
            out.push_str(line);
            out.push('\n');
        }
        continuation = continues(line).then_some(drop);
    }
    if !options.is_empty() {
        if continuation == Some(false) {
            // The file ended inside a kept continued line: end it so ours stays separate.
            out.push('\n');
        }
        out.push_str(VARIABLE);
        out.push('=');
        out.push_str(&options.join(" "));
        out.push('\n');
    }
    out
}

/// Rewrites the environment file for `update`. Returns the line written, if any.
pub fn run(update: &EnvUpdate) -> Result<Option<String>> {
    for option in &update.options {
        // The command line checked these already; kept here for other callers.
        check_option(option).map_err(anyhow::Error::msg)?;
    }
    let options = mysqld_options(update.with_binlog, update.with_gtids, &update.options);
    update_file(&update.file, &options)?;
    Ok((!options.is_empty()).then(|| format!("{VARIABLE}={}", options.join(" "))))
}

/// Replaces the `MYSQLD_OPTS` line of the environment file at `path` atomically.
pub fn update_file(path: &Path, options: &[String]) -> Result<()> {
    let path = resolve_symlink(path)?;
    let (old, metadata) = match fs::read(&path) {
        Ok(bytes) => {
            let metadata = fs::metadata(&path)
                .with_context(|| format!("reading the metadata of {}", path.display()))?;
            (Some(bytes), Some(metadata))
        }
        Err(err) if err.kind() == ErrorKind::NotFound => (None, None),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    let text = match &old {
        Some(bytes) => std::str::from_utf8(bytes)
            .with_context(|| format!("{} is not UTF-8 text", path.display()))?,
        None => "",
    };
    let new = rewrite(text, options);
    if old.as_deref() == Some(new.as_bytes()) {
        return Ok(());
    }

    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} does not name a file", path.display()))?;
    let mut temporary = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(directory)
        .with_context(|| format!("creating a temporary file in {}", directory.display()))?;
    let write_context = || format!("writing a temporary file in {}", directory.display());
    temporary
        .write_all(new.as_bytes())
        .with_context(write_context)?;
    let mode = metadata
        .as_ref()
        .map_or(NEW_FILE_MODE, |m| m.permissions().mode() & 0o7777);
    if let Some(metadata) = &metadata {
        let own = temporary.as_file().metadata().with_context(write_context)?;
        if (own.uid(), own.gid()) != (metadata.uid(), metadata.gid()) {
            std::os::unix::fs::fchown(
                temporary.as_file(),
                Some(metadata.uid()),
                Some(metadata.gid()),
            )
            .with_context(|| {
                format!(
                    "giving the new {} its owner {}:{}",
                    path.display(),
                    metadata.uid(),
                    metadata.gid()
                )
            })?;
        }
    }
    // After fchown, which may clear set-id bits.
    temporary
        .as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .with_context(write_context)?;
    temporary.as_file().sync_all().with_context(write_context)?;
    temporary
        .persist(&path)
        .map_err(|err| err.error)
        .with_context(|| format!("renaming the new file over {}", path.display()))?;
    fs::File::open(directory)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("syncing directory {}", directory.display()))?;
    Ok(())
}

/// `path`, or the file a symlink at `path` points to (so the link is kept).
fn resolve_symlink(path: &Path) -> Result<PathBuf> {
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_symlink() => fs::canonicalize(path)
            .with_context(|| format!("resolving the symlink {}", path.display())),
        _ => Ok(path.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn rewrite_cases() {
        let two = strings(&["--a=1", "--b"]);
        let cases: Vec<(&str, &str, Vec<String>, &str)> = vec![
            ("empty, no options", "", vec![], ""),
            ("empty, options", "", two.clone(), "MYSQLD_OPTS=--a=1 --b\n"),
            (
                "replaces the old line",
                "MYSQLD_OPTS=--old\n",
                two.clone(),
                "MYSQLD_OPTS=--a=1 --b\n",
            ),
            ("removes the line", "MYSQLD_OPTS=--old\n", vec![], ""),
            (
                "keeps other lines in order, drops blank ones",
                "A=1\n\n   \nMYSQLD_OPTS=--old\n# comment\nB=\"x y\"\n",
                two.clone(),
                "A=1\n# comment\nB=\"x y\"\nMYSQLD_OPTS=--a=1 --b\n",
            ),
            ("no trailing newline", "A=1", vec![], "A=1\n"),
            (
                "CRLF lines",
                "A=1\r\nMYSQLD_OPTS=x\r\n",
                two.clone(),
                "A=1\nMYSQLD_OPTS=--a=1 --b\n",
            ),
            (
                "several old lines, spaced key",
                "  MYSQLD_OPTS = --x\nMYSQLD_OPTS=\nC=3\n",
                two.clone(),
                "C=3\nMYSQLD_OPTS=--a=1 --b\n",
            ),
            (
                "similar names are kept",
                "MYSQLD_OPTS_EXTRA=--keep\nMYSQLD_OPTSX=1\n",
                vec![],
                "MYSQLD_OPTS_EXTRA=--keep\nMYSQLD_OPTSX=1\n",
            ),
            (
                "continuation of the old line is dropped",
                "MYSQLD_OPTS=--x \\\n  --y\nD=4\n",
                vec![],
                "D=4\n",
            ),
            (
                "continuation of another line is kept, blank included",
                "E=a \\\n\nF=1\n",
                vec![],
                "E=a \\\n\nF=1\n",
            ),
            (
                "escaped backslash is no continuation",
                "MYSQLD_OPTS=x\\\\\nG=1\n",
                vec![],
                "G=1\n",
            ),
            (
                "file ending inside a kept continuation",
                "H=a \\",
                strings(&["--c"]),
                "H=a \\\n\nMYSQLD_OPTS=--c\n",
            ),
        ];
        for (name, input, options, expected) in cases {
            assert_eq!(rewrite(input, &options), expected, "{name}");
        }
    }

    #[test]
    fn options_from_switches() {
        let binlog_off = strings(&BINLOG_OFF_OPTIONS);
        let mut both_off = binlog_off.clone();
        both_off.push("--gtid-mode=OFF".to_owned());
        let extra = strings(&["--server-id=2", "--disable-log-bin"]);
        let cases: Vec<(bool, bool, Vec<String>, Vec<String>)> = vec![
            (true, true, vec![], vec![]),
            (false, true, vec![], binlog_off),
            (true, false, vec![], strings(&["--gtid-mode=OFF"])),
            (false, false, vec![], both_off),
            (false, false, extra.clone(), extra.clone()),
            (true, true, extra.clone(), extra),
        ];
        for (binlog, gtids, extra, expected) in cases {
            assert_eq!(
                mysqld_options(binlog, gtids, &extra),
                expected,
                "-b {binlog} -g {gtids} {extra:?}"
            );
        }
    }

    #[test]
    fn option_checks() {
        for good in [
            "--disable-log-bin",
            "--relay-log=/var/lib/mysql/relay",
            "--init-connect=SET@x=1",
            "--plugin-load-add=a.so;b.so",
            "--x=$y",
        ] {
            assert_eq!(check_option(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "--a=b c",
            "--a=\"b\"",
            "--a='b'",
            "--a=b\\c",
            "--a=b\nMYSQLD_OPTS=x",
            "--a\t",
            "--a=\u{0}",
        ] {
            assert!(check_option(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn writes_the_file_atomically() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("mysql.environment");

        // A missing file is created with mode 0644.
        update_file(&path, &strings(&["--a", "--b=2"]))?;
        assert_eq!(fs::read_to_string(&path)?, "MYSQLD_OPTS=--a --b=2\n");
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o7777, 0o644);

        // Other lines and the mode are kept.
        fs::write(&path, "A=1\nMYSQLD_OPTS=--a\n\nB=2\n")?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640))?;
        update_file(&path, &strings(&["--c"]))?;
        assert_eq!(fs::read_to_string(&path)?, "A=1\nB=2\nMYSQLD_OPTS=--c\n");
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o7777, 0o640);

        // No options: the line goes away.
        update_file(&path, &[])?;
        assert_eq!(fs::read_to_string(&path)?, "A=1\nB=2\n");

        // A symlink is followed and kept.
        let link = dir.path().join("link.env");
        std::os::unix::fs::symlink(&path, &link)?;
        update_file(&link, &strings(&["--d"]))?;
        assert!(fs::symlink_metadata(&link)?.file_type().is_symlink());
        assert_eq!(fs::read_to_string(&path)?, "A=1\nB=2\nMYSQLD_OPTS=--d\n");

        // No temporary files are left behind.
        let mut names: Vec<String> = fs::read_dir(dir.path())?
            .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        assert_eq!(names, ["link.env", "mysql.environment"]);

        // The whole command: switches without -o.
        let written = run(&EnvUpdate {
            file: path.clone(),
            with_binlog: false,
            with_gtids: false,
            options: vec![],
        })?;
        let line = "MYSQLD_OPTS=--disable-log-bin --skip-slave-preserve-commit-order \
                    --event-scheduler=OFF --gtid-mode=OFF";
        assert_eq!(written.as_deref(), Some(line));
        assert_eq!(fs::read_to_string(&path)?, format!("A=1\nB=2\n{line}\n"));
        Ok(())
    }

    #[test]
    fn unreadable_file_is_an_error() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("binary.env");
        fs::write(&path, [0xff, 0xfe, b'\n'])?;
        assert!(update_file(&path, &[]).is_err());
        // A directory in the way fails too, and leaves no temporary file.
        let sub = dir.path().join("sub");
        fs::create_dir(&sub)?;
        assert!(update_file(&sub, &strings(&["--a"])).is_err());
        Ok(())
    }
}
