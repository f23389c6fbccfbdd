//! The store's error type.

use std::path::PathBuf;
use std::sync::Arc;

/// Why the store could not do what was asked.
///
/// Sources sit behind `Arc` so an error can be cloned: one batch failure is reported to every
/// `flush` waiting on that batch and kept for [`Store::last_error`](super::Store::last_error).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database URL could not be understood.
    #[error("invalid database URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The URL names a backend that this build does not provide (PostgreSQL, for now).
    #[error("{scheme} databases are not supported yet (URL {url:?}); use sqlite:///path/to/tm.db")]
    Unsupported {
        /// The URL scheme, such as `postgresql`.
        scheme: String,
        /// The URL as given.
        url: String,
    },

    /// The directory that should hold the database could not be created.
    #[error("cannot create directory {} for database {}: {source}", dir.display(), path.display())]
    CreateDir {
        /// The database file.
        path: PathBuf,
        /// The directory that could not be created.
        dir: PathBuf,
        /// The operating system's reason.
        #[source]
        source: Arc<std::io::Error>,
    },

    /// The database could not be opened: missing permission, a directory, not a SQLite file,
    /// a corrupt file, or a SQLite file that tm did not create. The file is left untouched.
    #[error("cannot open database {path}: {detail}")]
    Open {
        /// Where the database is (a file path, or `:memory:`).
        path: String,
        /// What went wrong, in words.
        detail: String,
        /// SQLite's error, when it reported one.
        #[source]
        source: Option<Arc<rusqlite::Error>>,
    },

    /// The database file is damaged (a truncated file, flipped bytes, a schema that is not the
    /// one tm wrote, a write-ahead log without its database). tm did not write to it.
    #[error(
        "database {path} is damaged: {detail}. tm did not open it for writing and left it as it \
         is: restore it from a backup, or recover what it holds into a new file with \
         `sqlite3 {path} .recover | sqlite3 {path}.recovered` and use that file"
    )]
    Damaged {
        /// Where the database is.
        path: String,
        /// What is wrong, in words.
        detail: String,
    },

    /// A value is larger than the database stores in one piece (SQLite: 1,000,000,000 bytes,
    /// PostgreSQL: 1 GB); nothing was queued.
    #[error(
        "{what} is {bytes} bytes, more than database {path} stores in one value ({limit} bytes): \
         make it smaller (write large data to a file and return its path) or do not persist it"
    )]
    TooBig {
        /// Where the database is.
        path: String,
        /// What was to be stored, in words.
        what: String,
        /// Its size.
        bytes: usize,
        /// The database's limit.
        limit: usize,
    },

    /// The write-ahead log beside a SQLite database was deleted or replaced while the store had
    /// it open: the store stops writing (see `detail` for what was saved).
    #[error("database {path}: {detail}")]
    LogLost {
        /// Where the database is.
        path: String,
        /// What happened to the writes, in words.
        detail: String,
    },

    /// The database was written by a newer tm whose schema this version does not know.
    #[error(
        "database {path} has schema version {found}, newer than the {supported} this tm knows; \
         upgrade tm"
    )]
    SchemaTooNew {
        /// Where the database is.
        path: String,
        /// The database's `user_version`.
        found: u32,
        /// The newest migration this build has.
        supported: u32,
    },

    /// A schema migration failed; the database stays at the previous version.
    #[error("database {path}: migration {version} failed: {source}")]
    Migration {
        /// Where the database is.
        path: String,
        /// The migration's number.
        version: u32,
        /// SQLite's error.
        #[source]
        source: Arc<rusqlite::Error>,
    },

    /// A batch of writes could not be committed (disk full, database locked for too long, I/O
    /// error) even after retries; `lost` writes are not stored.
    #[error("{lost} write(s) to database {path} were not stored: {source}")]
    WriteFailed {
        /// Where the database is.
        path: String,
        /// How many queued writes were dropped.
        lost: usize,
        /// SQLite's error from the last try.
        #[source]
        source: Arc<rusqlite::Error>,
    },

    /// One queued write was refused (an unknown run or task, a duplicate run id); the other
    /// writes of its batch were stored.
    #[error(
        "{op}{} was not stored: {reason}",
        run_id.as_deref().map(|r| format!(" for run {r}")).unwrap_or_default()
    )]
    Rejected {
        /// The verb, such as `task_ended`.
        op: &'static str,
        /// The run it was about, if any.
        run_id: Option<String>,
        /// Why, in words.
        reason: String,
    },

    /// A read query failed.
    #[error("database {path}: {source}")]
    Query {
        /// Where the database is.
        path: String,
        /// SQLite's error.
        #[source]
        source: Arc<rusqlite::Error>,
    },

    /// A PostgreSQL server could not be reached, or refused or failed an operation (connecting,
    /// migrating, a query, a commit). `place` is the URL without its password.
    #[error("database {place}: {what}: {detail}")]
    Postgres {
        /// The server and database, as a URL without the password.
        place: String,
        /// What tm was doing, in words.
        what: String,
        /// The server's or the driver's message.
        detail: String,
        /// The driver's error.
        #[source]
        source: Option<Arc<postgres::Error>>,
    },

    /// The store was closed; nothing more can be written or read through it.
    #[error("the store is closed")]
    Closed,

    /// The writer thread ended unexpectedly; writes queued since the last flush may be lost.
    #[error("the store's writer thread stopped unexpectedly: {0}")]
    WriterStopped(String),

    /// A write to a store opened read-only.
    #[error("database {path} was opened read-only: it can be read, not written")]
    ReadOnly {
        /// Where the database is.
        path: String,
    },
}

/// An open-time SQLite error as a [`StoreError::Open`] naming `path`, in words a user can act on.
pub(crate) fn open_error(path: &str, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    let hint = match e.sqlite_error_code() {
        Some(C::NotADatabase) => "it is not a SQLite database (or it is encrypted)",
        Some(C::DatabaseCorrupt) => "the database file is corrupt",
        Some(C::CannotOpen) => cannot_open_reason(path),
        Some(C::PermissionDenied) | Some(C::ReadOnly) => "no permission to write it (read-only)",
        Some(C::DiskFull) => "the disk is full",
        Some(C::DatabaseBusy) | Some(C::DatabaseLocked) => "another process kept it locked",
        Some(C::SystemIoFailure) => "an I/O error occurred",
        _ => "SQLite refused it",
    };
    StoreError::Open {
        path: path.to_string(),
        detail: format!("{hint} ({e})"),
        source: Some(std::sync::Arc::new(e)),
    }
}

/// Why SQLite could not open `path`, as far as the file system tells: SQLite itself only says
/// "unable to open database file".
fn cannot_open_reason(path: &str) -> &'static str {
    let p = std::path::Path::new(path);
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if let Err(e) = std::fs::metadata(dir) {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            return "no permission to enter its directory";
        }
    }
    if !p.exists() && dir_is_read_only(dir) {
        return "its directory is read-only (the database and its journal cannot be created)";
    }
    if p.exists() && dir_is_read_only(dir) {
        return "its directory is read-only (SQLite needs to create its journal files beside it)";
    }
    "the file cannot be opened (no permission, or not a regular file)"
}

/// Whether files cannot be created in `dir` (a read-only file system, or no write permission).
fn dir_is_read_only(dir: &std::path::Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: `c` is a valid NUL-terminated path; access only reads it.
        unsafe { libc::access(c.as_ptr(), libc::W_OK) != 0 }
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(dir).is_ok_and(|m| m.permissions().readonly())
    }
}

/// A PostgreSQL error as a [`StoreError::Postgres`], with the server's own message when it sent one
/// (the driver's `Display` says only "db error").
pub(crate) fn pg_error(place: &str, what: &str, e: postgres::Error) -> StoreError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text.push_str(": ");
                text.push_str(&c.to_string());
                cause = c.source();
            }
            if text.contains("invalid peer certificate") {
                text.push_str(
                    " (the server's certificate must be signed by a CA in sslrootcert and, for \
                     sslmode=verify-full, name the host the URL connects to)",
                );
            }
            text
        }
    };
    StoreError::Postgres {
        place: place.to_string(),
        what: what.to_string(),
        detail,
        source: Some(std::sync::Arc::new(e)),
    }
}
