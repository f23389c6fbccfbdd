//! Keeping a forked child's SQLite connections safe from its parent's.
//!
//! SQLite's unix VFS keeps one record per open database file per process, with the locks the
//! process holds on it, and a new connection to a file the process already has open trusts that
//! record instead of asking the kernel. A forked child inherits its parent's records, but not the
//! parent's locks (POSIX locks belong to a process). So a child that opens the database its
//! parent had open believes it holds the two locks every connection keeps while it is open (a
//! shared lock on the database file, and the shared-memory index's "dead man switch"), and
//! holds neither. The parent closing its last connection then finds nobody else and, as SQLite
//! does for the last connection, checkpoints and deletes the write-ahead log, which the child
//! goes on writing: every commit the child makes from then on is lost (measured: 49 of 50
//! tasks created by the child were gone, and 28 of 29 cached results). The agent queue, the
//! store's connections and the checkpointer call [`before_open`].
//!
//! [`before_open`] makes the kernel's view match what the inherited records claim: in a forked
//! child, before its first connection to a database, it takes those two shared locks itself, on
//! descriptors of its own that stay open until the process ends (closing any descriptor of a
//! file drops all of the process's POSIX locks on it, SQLite's included). Shared locks held by
//! one more process change nothing for the others; they only keep a closing parent from taking
//! the database as its own. The byte ranges are SQLite's locking protocol, which every SQLite
//! that shares a database must agree on, so they do not change between versions.
//!
//! Not covered: a parent that closes its last connection after the fork but before the child's
//! first use of the database has already deleted the log by then; the child should open its
//! databases before its parent closes them (or be started with `spawn`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

/// The process that first opened a connection through [`before_open`]: any other process is a
/// forked child (or grandchild) of it, and may have inherited SQLite's records.
static FIRST_PID: OnceLock<u32> = OnceLock::new();

/// The databases this process holds the locks for, and the process they were taken in.
static HELD: Mutex<Option<(u32, HashSet<PathBuf>)>> = Mutex::new(None);

/// SQLite's shared lock on a database file: `SHARED_SIZE` bytes from `PENDING_BYTE + 2`.
const SHARED_FIRST: i64 = 0x4000_0000 + 2;
const SHARED_SIZE: i64 = 510;
/// The shared-memory index's dead man switch: the byte after its eight lock bytes at 120.
const SHM_DMS: i64 = 120 + 8;

/// Call before opening a connection to the database file at `db` (see the module documentation).
pub(crate) fn before_open(db: &Path) {
    let pid = std::process::id();
    if *FIRST_PID.get_or_init(|| pid) == pid {
        return;
    }
    let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
    if held.as_ref().is_none_or(|(p, _)| *p != pid) {
        *held = Some((pid, HashSet::new()));
    }
    let Some((_, paths)) = held.as_mut() else {
        return;
    };
    if paths.contains(db) {
        return;
    }
    #[cfg(unix)]
    {
        let mut shm = db.as_os_str().to_owned();
        shm.push("-shm");
        // Best effort: a file that is not there yet (no parent had it open) needs no lock.
        if hold_shared(db, SHARED_FIRST, SHARED_SIZE) {
            hold_shared(Path::new(&shm), SHM_DMS, 1);
        }
    }
    paths.insert(db.to_owned());
}

/// Takes a shared POSIX lock on `len` bytes of `path` from `start`, waiting for an exclusive
/// holder (SQLite's last connection closing) to finish, on a descriptor that is never closed
/// (not even when the lock fails: closing it would drop this process's locks on the file).
#[cfg(unix)]
fn hold_shared(path: &Path, start: i64, len: i64) -> bool {
    use std::os::unix::io::IntoRawFd;

    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let fd = file.into_raw_fd();
    // SAFETY: a zeroed flock is a valid value; the fields set below make it a read lock.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_RDLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = start as libc::off_t;
    lock.l_len = len as libc::off_t;
    loop {
        // SAFETY: fcntl on a descriptor this function owns, with a valid flock.
        let rc = unsafe { libc::fcntl(fd, libc::F_SETLKW, &lock) };
        if rc == 0 {
            return true;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // Left open: closing it would drop every POSIX lock this process has on the file.
            return false;
        }
    }
}
