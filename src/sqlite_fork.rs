//! Keeping a forked child's SQLite connections safe from its parent's.
//!
//! SQLite's unix VFS keeps one record per open database file per process, with the locks the
//! process holds on it, and a new connection to a file the process already has open trusts that
//! record instead of asking the kernel. A forked child inherits its parent's records, but not the
//! parent's locks (POSIX locks belong to a process). So a child that opens the database its
//! parent had open believes it holds the two locks every connection keeps while it is open (a
//! shared lock on the database file, and the shared-memory index's "dead man switch"), and
//! holds neither. The parent closing its last connection then finds nobody else and, as SQLite
//! does for the last connection, checkpoints and deletes the write-ahead log and the index,
//! which the child goes on using: measured, 49 of 50 tasks the child created afterwards were
//! lost (28 of 29 cached results for the store), and when the parent closed before the child's
//! first use and another connection wrote meanwhile, the two indexes split and 20 of 60 tasks
//! were lost.
//!
//! The fix makes the kernel's view match what the inherited records claim: at the fork itself,
//! in the child (a `pthread_atfork` handler, see [`crate::fork_gate`]), before any of its code
//! runs, it takes those two shared locks for every database file this process (or an ancestor)
//! opened through tm, on descriptors of its own that stay open until the process ends or execs
//! (closing any descriptor of a file drops all of the process's POSIX locks on it, SQLite's
//! included). Shared locks held by one more process change nothing for the others; they only
//! keep a closing parent from taking the database as its own. The byte ranges are SQLite's
//! locking protocol, which every SQLite that shares a database must agree on, so they do not
//! change between versions. What is left is the moment between the `fork` system call and that
//! handler, while the parent runs on: a parent that closes its last connection in those
//! microseconds can still delete the log under the child.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The database files this process, or a process it was forked from, opened a connection to.
/// Changed holding a [`crate::fork_gate::Pass`] as well, so a fork never finds it locked (a fork
/// waits for passes), except one made by a thread holding a pass (see `after_fork_in_child`).
static OPENED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// SQLite's shared lock on a database file: `SHARED_SIZE` bytes from `PENDING_BYTE + 2`.
#[cfg(unix)]
const SHARED_FIRST: i64 = 0x4000_0000 + 2;
#[cfg(unix)]
const SHARED_SIZE: i64 = 510;
/// The shared-memory index's dead man switch: the byte after its eight lock bytes at 120.
#[cfg(unix)]
const SHM_DMS: i64 = 120 + 8;

/// Call before opening a connection to the database file at `db`: a child forked later takes
/// its locks (see the module documentation).
pub(crate) fn before_open(db: &Path) {
    let _gate = crate::fork_gate::Pass::enter();
    let mut opened = OPENED.lock().unwrap_or_else(|p| p.into_inner());
    if !opened.iter().any(|p| p == db) {
        opened.push(db.to_owned());
    }
}

/// The child's fork handler: takes the locks its inherited records claim. Runs as the child's
/// only thread, before anything else in it. The record is free unless the fork was made by a
/// thread holding a pass while another thread was changing it (nothing in tm forks holding a
/// pass); then there is nothing safe to read, and the child goes without the locks.
pub(crate) fn after_fork_in_child() {
    #[cfg(unix)]
    {
        let opened = match OPENED.try_lock() {
            Ok(opened) => opened,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        for db in opened.iter() {
            let mut shm = db.as_os_str().to_owned();
            shm.push("-shm");
            // A file that is gone (or was never more than a name) has no lock to keep.
            if hold_shared(db, SHARED_FIRST, SHARED_SIZE) {
                hold_shared(Path::new(&shm), SHM_DMS, 1);
            }
        }
    }
}

/// Takes a shared POSIX lock on `len` bytes of `path` from `start` on a descriptor that is never
/// closed (not even when the lock fails: closing it would drop this process's locks on the
/// file). An exclusive holder (SQLite's last connection closing) is waited for, up to 2 s.
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
    for _ in 0..2000 {
        // SAFETY: fcntl on a descriptor this function owns, with a valid flock.
        if unsafe { libc::fcntl(fd, libc::F_SETLK, &lock) } == 0 {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    false
}
