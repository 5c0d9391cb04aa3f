//! The file-system side of snapshots: measuring a data directory (for progress estimates and
//! `basebackup.json`'s sizes), and the checks and moves that put a restored snapshot in place.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::Error;

/// What a walk over a directory tree found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirSize {
    /// Bytes in all regular files.
    pub total_bytes: u64,
    /// Bytes in the files a snapshot copies in bulk ([`counts_toward_estimate`]): the basis of
    /// progress estimates, MyHoard's "filtered size".
    pub estimate_bytes: u64,
    pub files: u64,
}

/// Whether a data directory file is one of those a snapshot spends its time on: MyHoard's list
/// (`ib_buffer_pool`, `ibdata<N>`, `*.CSM`, `*.CSV`, `*.ibd`, `*.sdi`, `undo_<N>`) plus the
/// MariaDB table files (`*.MAD`, `*.MAI`, `*.frm`, `*.ARZ`), which MySQL does not have.
pub fn counts_toward_estimate(file_name: &str) -> bool {
    let numbered = |prefix: &str| {
        file_name
            .strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
    };
    if file_name == "ib_buffer_pool" || numbered("ibdata") || numbered("undo_") {
        return true;
    }
    match file_name.rsplit_once('.') {
        Some((stem, extension)) if !stem.is_empty() => matches!(
            extension,
            "CSM" | "CSV" | "ibd" | "sdi" | "MAD" | "MAI" | "frm" | "ARZ"
        ),
        _ => false,
    }
}

/// Walks `dir`. Files and directories that vanish during the walk (a table dropped meanwhile)
/// are skipped; other errors end it.
pub fn measure(dir: &Path) -> io::Result<DirSize> {
    let mut size = DirSize::default();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            let metadata = match entry.metadata() {
                Ok(metadata) => metadata,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            if metadata.is_dir() {
                pending.push(entry.path());
            } else if metadata.is_file() {
                size.total_bytes += metadata.len();
                size.files += 1;
                if counts_toward_estimate(&entry.file_name().to_string_lossy()) {
                    size.estimate_bytes += metadata.len();
                }
            }
        }
    }
    Ok(size)
}

/// True when `dir` is missing or has no entries.
pub fn is_empty_or_missing(dir: &Path) -> Result<bool, Error> {
    match fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(Error::Io {
            action: "reading",
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Fails unless the data directory is missing or empty (MyHoard PR #234): a restore never
/// mixes its files with anything already there.
pub fn require_empty_data_dir(dir: &Path) -> Result<(), Error> {
    if is_empty_or_missing(dir)? {
        Ok(())
    } else {
        Err(Error::DataDirectoryNotEmpty {
            path: dir.to_owned(),
        })
    }
}

/// Moves everything in `from` into `to` (created if missing), by rename where both are on one
/// file system and by copy-then-delete where they are not.
pub fn move_contents(from: &Path, to: &Path) -> Result<(), Error> {
    let io_error = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    };
    fs::create_dir_all(to).map_err(io_error("creating", to))?;
    let entries = fs::read_dir(from).map_err(io_error("reading", from))?;
    for entry in entries {
        let entry = entry.map_err(io_error("reading", from))?;
        let target = to.join(entry.file_name());
        match fs::rename(entry.path(), &target) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::CrossesDevices => {
                copy_tree(&entry.path(), &target)?;
                remove_path(&entry.path())?;
            }
            Err(source) => {
                return Err(Error::Io {
                    action: "moving into place",
                    path: target,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Copies a file or directory tree, keeping permissions (fs::copy does) and symlinks.
fn copy_tree(from: &Path, to: &Path) -> Result<(), Error> {
    let io_error = |action: &'static str, path: PathBuf| {
        move |source| Error::Io {
            action,
            path,
            source,
        }
    };
    let metadata = fs::symlink_metadata(from).map_err(io_error("reading", from.to_owned()))?;
    if metadata.is_dir() {
        fs::create_dir(to).map_err(io_error("creating", to.to_owned()))?;
        fs::set_permissions(to, metadata.permissions())
            .map_err(io_error("setting permissions of", to.to_owned()))?;
        for entry in fs::read_dir(from).map_err(io_error("reading", from.to_owned()))? {
            let entry = entry.map_err(io_error("reading", from.to_owned()))?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else if metadata.file_type().is_symlink() {
        let link = fs::read_link(from).map_err(io_error("reading", from.to_owned()))?;
        std::os::unix::fs::symlink(link, to).map_err(io_error("creating", to.to_owned()))?;
    } else {
        fs::copy(from, to).map_err(io_error("copying to", to.to_owned()))?;
    }
    Ok(())
}

/// Removes a file, symlink or directory tree; a missing one is fine.
pub fn remove_path(path: &Path) -> Result<(), Error> {
    let result = match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(err) => Err(err),
    };
    match result {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            action: "removing",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Removes everything inside `dir` but not `dir` itself (it may be a mount point).
pub fn remove_contents(dir: &Path) -> Result<(), Error> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Io {
                action: "reading",
                path: dir.to_owned(),
                source,
            });
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            action: "reading",
            path: dir.to_owned(),
            source,
        })?;
        remove_path(&entry.path())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_counts_the_bulk_files() {
        let counted = [
            "ib_buffer_pool",
            "ibdata1",
            "ibdata12",
            "undo_001",
            "t.ibd",
            "mysql.ibd",
            "slow_log.CSV",
            "slow_log.CSM",
            "t_123.sdi",
            "t.MAD",
            "t.MAI",
            "t.frm",
            "t.ARZ",
        ];
        for name in counted {
            assert!(counts_toward_estimate(name), "{name}");
        }
        let skipped = [
            "ibdata",
            "ibdatax",
            "undo_",
            "undo_a1",
            "ib_logfile0",
            "auto.cnf",
            ".ibd",
            "db.opt",
            "binlog.000001",
            "ibtmp1",
            "t.IBD",
        ];
        for name in skipped {
            assert!(!counts_toward_estimate(name), "{name}");
        }
    }

    #[test]
    fn measure_walks_the_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("db")).expect("mkdir");
        fs::write(dir.path().join("ibdata1"), [0u8; 100]).expect("write");
        fs::write(dir.path().join("db").join("t.ibd"), [0u8; 30]).expect("write");
        fs::write(dir.path().join("auto.cnf"), [0u8; 7]).expect("write");
        let size = measure(dir.path()).expect("measure");
        assert_eq!(
            size,
            DirSize {
                total_bytes: 137,
                estimate_bytes: 130,
                files: 3
            }
        );
        assert!(measure(&dir.path().join("missing")).is_ok());
    }

    #[test]
    fn empty_checks_and_moves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let from = dir.path().join("from");
        let to = dir.path().join("to");
        fs::create_dir_all(from.join("db")).expect("mkdir");
        fs::write(from.join("db").join("t.ibd"), b"rows").expect("write");
        fs::write(from.join("ibdata1"), b"sys").expect("write");
        std::os::unix::fs::symlink("ibdata1", from.join("link")).expect("symlink");
        assert!(is_empty_or_missing(&to).expect("check"));
        require_empty_data_dir(&to).expect("missing is fine");
        move_contents(&from, &to).expect("move");
        assert!(is_empty_or_missing(&from).expect("check"));
        assert_eq!(
            fs::read(to.join("db").join("t.ibd")).expect("read"),
            b"rows"
        );
        assert_eq!(
            fs::read_link(to.join("link")).expect("link"),
            Path::new("ibdata1")
        );
        let err = require_empty_data_dir(&to).expect_err("not empty");
        assert!(matches!(err, Error::DataDirectoryNotEmpty { .. }), "{err}");
        // Copying keeps the same tree (the cross-device path).
        let copy = dir.path().join("copy");
        copy_tree(&to, &copy).expect("copy");
        assert_eq!(fs::read(copy.join("ibdata1")).expect("read"), b"sys");
        assert_eq!(
            fs::read_link(copy.join("link")).expect("link"),
            Path::new("ibdata1")
        );
        remove_contents(&to).expect("remove");
        assert!(to.is_dir());
        assert!(is_empty_or_missing(&to).expect("check"));
        remove_path(&copy).expect("remove");
        assert!(!copy.exists());
        remove_path(&copy).expect("missing is fine");
    }
}
