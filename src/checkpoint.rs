//! Checkpointing a SQLite write-ahead log on a thread and connection of its own.
//!
//! A checkpoint copies the log's pages into the database file and, in WAL mode with
//! `synchronous = NORMAL`, is the only place SQLite calls `fsync` (the log before the copy, the
//! database after it). Run inline, by the connection whose commit crossed the threshold, it
//! stalls that caller for the length of two `fsync`s (milliseconds), every few thousand pages:
//! measured here, a third of the agent queue's claim-and-complete loop. On a thread of its own the
//! caller goes on committing while the checkpoint copies and syncs; other connections, in this
//! process or another, are not held up either (a passive checkpoint takes no lock they wait on).
//!
//! Fork safety: a child process forked while the thread is inside SQLite would inherit SQLite's
//! process-wide mutexes (its allocator's, its file-lock table's) held by a thread it does not
//! have, and hang on its first use of SQLite. Checkpoints therefore run under the process-wide
//! gate that `fork` takes first ([`crate::fork_gate`]): a fork waits for a running checkpoint to
//! end, and no checkpoint starts until the fork is done. The child has no checkpointer thread;
//! its owners start their own (the agent queue reconnects in a forked child).

use std::ffi::CStr;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::wal::CheckpointMode;
use rusqlite::{Connection, OpenFlags};

/// Copies the log into the database without waiting for readers or writers. Best effort: a busy
/// checkpoint (another one running, in any process) leaves the log for the next one.
pub(crate) fn checkpoint(conn: &Connection) {
    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
}

/// Lowers the calling thread's scheduling priority (Linux: `nice` is per thread), for work that
/// nobody waits for: it then takes CPU time that runs and commits leave over.
fn background_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on this thread's own id; a failure leaves the priority as it was.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
    }
}

/// How a checkpointer's thread serves a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// One passive checkpoint, at low priority: for a database with one writer, which asks when
    /// it goes quiet (the log is then copied whole and starts over at the next commit).
    Quiet,
    /// For a database that many connections, in many processes, write without pause: a passive
    /// checkpoint copies the bulk of the log while they go on, then a full one copies what they
    /// appended meanwhile, holding their commits back for that residue only. The log starts
    /// over only once every frame was copied, which passive checkpoints never reach under
    /// sustained writes: without the second step the log would grow without bound.
    Busy,
}

/// A passive checkpoint that leaves more frames than this is followed by another before the
/// full one (whose copy and `fsync`s stall every writer).
const RESIDUE: i32 = 1000;
/// Passive rounds at most before the full checkpoint.
const PASSIVE_ROUNDS: usize = 3;
/// How long a full checkpoint waits for the write lock and for readers, polling every
/// [`FULL_POLL`], before it settles for copying what it can (as a passive one).
const FULL_WAIT: Duration = Duration::from_millis(50);
const FULL_POLL: Duration = Duration::from_micros(50);

/// Checkpoints one database file on a thread and connection of its own, started at the first
/// request. Dropping it lets the thread serve what was asked, then joins it.
pub(crate) struct Checkpointer {
    /// The database file, until the thread is started (None: in memory, or it could not start).
    path: Option<PathBuf>,
    /// The VFS to open the thread's connection with (None: SQLite's default).
    vfs: Option<&'static CStr>,
    mode: Mode,
    /// Where requests go, and the thread serving them.
    running: Option<(SyncSender<()>, JoinHandle<()>)>,
}

impl Checkpointer {
    /// A checkpointer for the database at `path` (None: there is no log to copy, e.g. an
    /// in-memory database; [`request`](Self::request) then always answers false).
    pub(crate) fn new(
        path: Option<PathBuf>,
        vfs: Option<&'static CStr>,
        mode: Mode,
    ) -> Checkpointer {
        Checkpointer {
            path,
            vfs,
            mode,
            running: None,
        }
    }

    /// Whether the thread has been started.
    #[cfg(test)]
    pub(crate) fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Asks the thread for a checkpoint, starting it if needed; never blocks (a checkpoint
    /// already asked for covers this request). False if there is no thread to ask: the caller
    /// then checkpoints inline.
    pub(crate) fn request(&mut self) -> bool {
        if self.running.is_none() {
            let Some(path) = self.path.take() else {
                return false;
            };
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            // Also installs the fork gate the thread's checkpoints hold.
            crate::sqlite_fork::before_open(&path);
            let conn = match self.vfs {
                Some(vfs) => Connection::open_with_flags_and_vfs(&path, flags, vfs),
                None => Connection::open_with_flags(&path, flags),
            };
            // A first read makes the connection find the log (until then it does not know the
            // database is in WAL mode, and a checkpoint through the API does nothing).
            let conn = conn.and_then(|c| {
                c.busy_timeout(Duration::from_secs(1))?;
                c.query_row("PRAGMA schema_version", [], |_| Ok(()))?;
                Ok(c)
            });
            let Ok(conn) = conn else {
                return false;
            };
            let mode = self.mode;
            let (tx, rx) = mpsc::sync_channel::<()>(1);
            let thread = std::thread::Builder::new()
                .name("tm-checkpoint".into())
                .spawn(move || serve(conn, mode, &rx));
            let Ok(thread) = thread else {
                return false;
            };
            self.running = Some((tx, thread));
        }
        self.running.as_ref().is_some_and(|(tx, _)| {
            !matches!(tx.try_send(()), Err(mpsc::TrySendError::Disconnected(_)))
        })
    }
}

/// The checkpointer thread: serves requests until its sender is dropped.
fn serve(mut conn: Connection, mode: Mode, requests: &Receiver<()>) {
    match mode {
        Mode::Quiet => {
            background_priority();
            while requests.recv().is_ok() {
                let _gate = crate::fork_gate::Pass::enter();
                checkpoint(&conn);
            }
        }
        Mode::Busy => {
            let mut started = Instant::now();
            let _ = conn.busy_handler(Some(move |count: i32| {
                if count == 0 {
                    started = Instant::now();
                }
                std::thread::sleep(FULL_POLL);
                started.elapsed() < FULL_WAIT
            }));
            while requests.recv().is_ok() {
                {
                    let _gate = crate::fork_gate::Pass::enter();
                    catch_up(&conn);
                }
                // Requests made during that round were for the log it copied.
                while requests.try_recv().is_ok() {}
            }
        }
    }
}

/// [`Mode::Busy`]'s round: passive checkpoints while each finds more than [`RESIDUE`] new
/// frames (what was appended during the one before), then a full one for what is left. Nothing
/// is done if another connection is checkpointing (it copies the log).
fn catch_up(conn: &Connection) {
    let mut before = 0;
    for _ in 0..PASSIVE_ROUNDS {
        match conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
            Ok((log, _)) if log < before || log - before > RESIDUE => before = log,
            Ok(_) => break,
            Err(_) => return,
        }
    }
    let _ = conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::FULL);
}

/// Never dropped holding a fork pass: the join below waits for the thread, whose next checkpoint
/// may wait for a fork that waits for that pass.
impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some((tx, thread)) = self.running.take() {
            drop(tx); // the thread serves what is queued, then ends
            let _ = thread.join();
        }
    }
}
