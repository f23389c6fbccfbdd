//! The modes of the files and directories tm creates (the store's SQLite database, with its
//! `-wal` and `-shm`, which SQLite gives the database's own mode; the directories above it; the
//! agent queue's SQLite database and JSON state and lock files): owner-only by default, since
//! the database holds what tasks returned and, for the fleet, pickles that executors load.
//!
//! The mode is the one a caller passes (`Store(file_mode=...)`), else `$TM_FILE_MODE` (octal:
//! `640`, `0640` or `0o640`), else `0o600`; a directory tm creates gets the same bits plus search
//! (x) wherever reading is allowed (`0o700` by default, `0o750` for `0o640`). As for any file, the
//! process umask can only take bits away. Existing files and directories keep their modes.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;

/// The environment variable that sets the default mode.
pub(crate) const MODE_VAR: &str = "TM_FILE_MODE";

/// Owner read and write only.
pub(crate) const DEFAULT_FILE_MODE: u32 = 0o600;

/// Checks a mode given as a number: permission bits only, and the owner may read and write (tm
/// could not use its own file otherwise).
pub(crate) fn check_mode(mode: u32) -> Result<u32, String> {
    if mode > 0o777 {
        return Err(format!(
            "{mode:#o} is not a file mode (permission bits 0o000-0o777)"
        ));
    }
    if mode & 0o600 != 0o600 {
        return Err(format!(
            "{mode:#o} does not let the owner read and write the file (0o600 at least)"
        ));
    }
    Ok(mode)
}

/// The mode for new files: `explicit`, else [`MODE_VAR`], else [`DEFAULT_FILE_MODE`].
pub(crate) fn file_mode(explicit: Option<u32>) -> Result<u32, String> {
    if let Some(mode) = explicit {
        return check_mode(mode).map_err(|e| format!("file_mode: {e}"));
    }
    let Some(raw) = std::env::var_os(MODE_VAR) else {
        return Ok(DEFAULT_FILE_MODE);
    };
    let text = raw.to_string_lossy();
    let digits = text.trim();
    let digits = digits
        .strip_prefix("0o")
        .or_else(|| digits.strip_prefix("0O"))
        .unwrap_or(digits);
    u32::from_str_radix(digits, 8)
        .map_err(|_| format!("{text:?} is not an octal mode such as 600 or 0o640"))
        .and_then(check_mode)
        .map_err(|e| format!("{MODE_VAR}={e}"))
}

/// The mode of a directory holding files of `file_mode`: search wherever reading is allowed.
pub(crate) fn dir_mode(file_mode: u32) -> u32 {
    file_mode | ((file_mode & 0o444) >> 2)
}

/// Creates `dir` and any missing parent with [`dir_mode`] of `file_mode`.
pub(crate) fn create_dir_all(dir: &Path, file_mode: u32) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(dir_mode(file_mode));
    }
    #[cfg(not(unix))]
    let _ = file_mode;
    builder.create(dir)
}

/// Creates `path`, empty, with `mode` unless it exists: SQLite then gives the files it makes
/// beside a database (`-wal`, `-shm`, `-journal`) the database's mode.
pub(crate) fn create_file(path: &Path, mode: u32) -> io::Result<()> {
    match options(mode).write(true).create_new(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Open options that create files with `mode`.
pub(crate) fn options(mode: u32) -> OpenOptions {
    let mut o = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(dir_mode(0o600), 0o700);
        assert_eq!(dir_mode(0o640), 0o750);
        assert_eq!(dir_mode(0o644), 0o755);
        assert_eq!(file_mode(Some(0o640)), Ok(0o640));
        assert!(file_mode(Some(0o400)).is_err());
        assert!(file_mode(Some(0o1777)).is_err());
    }
}
