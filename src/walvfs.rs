//! `tm-wal`: SQLite's own VFS with one change, for connections that commit small transactions
//! at a high rate (the agent queue's claims and completions).
//!
//! SQLite appends each page a transaction changed to the WAL as a frame, with two `pwrite`
//! calls per frame (its 24-byte header, then the page). A queue claim changes three or four
//! pages, so a commit costs seven or eight system calls for a few kilobytes of contiguous bytes
//! (measured here: 1.8 µs per frame against 1.25 µs for one call writing four frames). This VFS
//! holds a transaction's appended frames in memory and writes them, with the commit frame, in one
//! call: when SQLite writes the commit frame's page, the write right after its header.
//!
//! Why this is safe. Other connections, in this process or another, only ever look at WAL frames
//! up to the last commit published in the shared WAL index, and SQLite publishes a commit only
//! after its `xWrite` calls for every frame of the transaction returned. The commit frame is
//! never left held: its page goes out, with everything held before it, in the `xWrite` call that
//! wrote it, so an error (a full disk) reaches SQLite exactly as an unbuffered write's would and
//! the transaction fails. A commit frame header written on its own (SQLite rewriting the
//! checksums of frames a transaction overwrote) is written at once. A process killed with frames
//! held had not committed them: its transaction is lost as if killed between two writes. Reads,
//! syncs, truncation, size queries, file controls and closing write everything held first, so the
//! file is never observed without a byte SQLite wrote to it, and a write anywhere but right after
//! the held bytes writes them out first, so writes reach the file in SQLite's order. Only WAL
//! files are wrapped; the database file and every other file are SQLite's own.
//!
//! What this relies on in SQLite (bundled, so it changes only when we upgrade): a frame's header
//! and page are two `xWrite` calls, the header first. The tests below fail if that changes
//! (another connection would read a commit's page before it is written).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::OnceLock;

use rusqlite::ffi;

/// The VFS name to open connections with (see [`name`]).
const NAME: &CStr = c"tm-wal";

/// Bytes a WAL file holds back at most (a large transaction's frames are written in pieces).
/// SQLite's unix VFS writes at most 128 KiB - 1 bytes per call (more is never asked of it: a page
/// is at most 64 KiB), so a flush of this much plus a commit frame (header and page) stays within.
const MAX_HELD: usize = 32 * 1024;

/// Size of a WAL frame header; bytes 4..8 are the commit field (non-zero in a commit frame).
const FRAME_HEADER: usize = 24;

/// A WAL file opened through this VFS: our state, then the wrapped VFS's file at `INNER_AT`.
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    held: Vec<u8>,
    /// File offset of `held[0]`.
    held_at: i64,
    /// The last write was a commit frame's header: its page, the next write, is not held.
    commit_next: bool,
}

/// Where the wrapped VFS's file structure starts in an allocation of `szOsFile` bytes.
const INNER_AT: usize = std::mem::size_of::<WalFile>().next_multiple_of(16);

/// The wrapped VFS's file inside a WAL file's allocation.
unsafe fn inner_file(file: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    file.cast::<u8>().add(INNER_AT).cast()
}

/// Set in the environment, connections use SQLite's default VFS (a comparison, an escape hatch).
const OPT_OUT: &str = "TM_SQLITE_DEFAULT_VFS";

/// Registers the VFS (once per process) and returns its name, or `None` when SQLite's default
/// VFS cannot be wrapped or [`OPT_OUT`] is set (connections then open with the default).
pub(crate) fn name() -> Option<&'static CStr> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let usable = REGISTERED.get_or_init(|| std::env::var_os(OPT_OUT).is_none() && register());
    usable.then_some(NAME)
}

fn register() -> bool {
    // SAFETY: sqlite3_vfs_find and sqlite3_vfs_register are thread-safe once SQLite is
    // initialised (sqlite3_vfs_find initialises it); the VFS structure is leaked, so it lives as
    // long as the process, as SQLite requires of a registered VFS.
    unsafe {
        let inner = ffi::sqlite3_vfs_find(ptr::null());
        if inner.is_null() || (*inner).xOpen.is_none() {
            return false;
        }
        let Ok(size) = c_int::try_from(INNER_AT + (*inner).szOsFile as usize) else {
            return false;
        };
        let vfs = Box::new(ffi::sqlite3_vfs {
            iVersion: 2,
            szOsFile: size,
            mxPathname: (*inner).mxPathname,
            pNext: ptr::null_mut(),
            zName: NAME.as_ptr(),
            pAppData: inner.cast(),
            xOpen: Some(x_open),
            xDelete: Some(x_delete),
            xAccess: Some(x_access),
            xFullPathname: Some(x_full_pathname),
            xDlOpen: Some(x_dl_open),
            xDlError: Some(x_dl_error),
            xDlSym: Some(x_dl_sym),
            xDlClose: Some(x_dl_close),
            xRandomness: Some(x_randomness),
            xSleep: Some(x_sleep),
            xCurrentTime: Some(x_current_time),
            xGetLastError: Some(x_get_last_error),
            xCurrentTimeInt64: Some(x_current_time_int64),
            xSetSystemCall: None,
            xGetSystemCall: None,
            xNextSystemCall: None,
        });
        ffi::sqlite3_vfs_register(Box::into_raw(vfs), 0) == ffi::SQLITE_OK
    }
}

/// The wrapped VFS.
unsafe fn inner_vfs(vfs: *mut ffi::sqlite3_vfs) -> *mut ffi::sqlite3_vfs {
    (*vfs).pAppData.cast()
}

/// Calls a method of the wrapped VFS, or returns `$missing` if it has none.
macro_rules! forward_vfs {
    ($vfs:expr, $method:ident, $missing:expr $(, $arg:expr)*) => {{
        let inner = inner_vfs($vfs);
        match (*inner).$method {
            Some(f) => f(inner $(, $arg)*),
            None => $missing,
        }
    }};
}

unsafe extern "C" fn x_open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let inner_vfs = inner_vfs(vfs);
    let Some(open) = (*inner_vfs).xOpen else {
        return ffi::SQLITE_CANTOPEN;
    };
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        // Not a WAL: the wrapped VFS's own file, at the start of the allocation.
        return open(inner_vfs, name, file, flags, out_flags);
    }
    (*file).pMethods = ptr::null();
    let inner = inner_file(file);
    (*inner).pMethods = ptr::null();
    let rc = open(inner_vfs, name, inner, flags, out_flags);
    if rc != ffi::SQLITE_OK {
        // SQLite would call xClose on a file whose methods are set; ours are not, so the
        // wrapped file is closed here if its open left it half-made.
        if let Some(close) = (*inner).pMethods.as_ref().and_then(|m| m.xClose) {
            close(inner);
        }
        return rc;
    }
    ptr::write(
        file.cast::<WalFile>(),
        WalFile {
            base: ffi::sqlite3_file {
                pMethods: &WAL_METHODS,
            },
            held: Vec::new(),
            held_at: 0,
            commit_next: false,
        },
    );
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_delete(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    sync: c_int,
) -> c_int {
    forward_vfs!(vfs, xDelete, ffi::SQLITE_IOERR_DELETE, name, sync)
}

unsafe extern "C" fn x_access(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    forward_vfs!(vfs, xAccess, ffi::SQLITE_IOERR_ACCESS, name, flags, out)
}

unsafe extern "C" fn x_full_pathname(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    forward_vfs!(vfs, xFullPathname, ffi::SQLITE_CANTOPEN, name, n, out)
}

unsafe extern "C" fn x_dl_open(vfs: *mut ffi::sqlite3_vfs, name: *const c_char) -> *mut c_void {
    forward_vfs!(vfs, xDlOpen, ptr::null_mut(), name)
}

unsafe extern "C" fn x_dl_error(vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) {
    forward_vfs!(vfs, xDlError, (), n, out)
}

type DlSym = unsafe extern "C" fn(*mut ffi::sqlite3_vfs, *mut c_void, *const c_char);

unsafe extern "C" fn x_dl_sym(
    vfs: *mut ffi::sqlite3_vfs,
    handle: *mut c_void,
    symbol: *const c_char,
) -> Option<DlSym> {
    forward_vfs!(vfs, xDlSym, None, handle, symbol)
}

unsafe extern "C" fn x_dl_close(vfs: *mut ffi::sqlite3_vfs, handle: *mut c_void) {
    forward_vfs!(vfs, xDlClose, (), handle)
}

unsafe extern "C" fn x_randomness(vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    forward_vfs!(vfs, xRandomness, 0, n, out)
}

unsafe extern "C" fn x_sleep(vfs: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    forward_vfs!(vfs, xSleep, 0, micros)
}

unsafe extern "C" fn x_current_time(vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    forward_vfs!(vfs, xCurrentTime, ffi::SQLITE_ERROR, out)
}

unsafe extern "C" fn x_get_last_error(
    vfs: *mut ffi::sqlite3_vfs,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    forward_vfs!(vfs, xGetLastError, 0, n, out)
}

unsafe extern "C" fn x_current_time_int64(vfs: *mut ffi::sqlite3_vfs, out: *mut i64) -> c_int {
    let inner = inner_vfs(vfs);
    if (*inner).iVersion >= 2 {
        if let Some(f) = (*inner).xCurrentTimeInt64 {
            return f(inner, out);
        }
    }
    let mut days = 0.0;
    let rc = x_current_time(vfs, &mut days);
    *out = (days * 86_400_000.0) as i64;
    rc
}

/// The methods of a WAL file (version 1: SQLite asks a WAL for no shared memory or mapping).
static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(w_close),
    xRead: Some(w_read),
    xWrite: Some(w_write),
    xTruncate: Some(w_truncate),
    xSync: Some(w_sync),
    xFileSize: Some(w_file_size),
    xLock: Some(w_lock),
    xUnlock: Some(w_unlock),
    xCheckReservedLock: Some(w_check_reserved_lock),
    xFileControl: Some(w_file_control),
    xSectorSize: Some(w_sector_size),
    xDeviceCharacteristics: Some(w_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

unsafe fn wal<'a>(file: *mut ffi::sqlite3_file) -> &'a mut WalFile {
    &mut *file.cast::<WalFile>()
}

/// Calls a method of the wrapped file, or returns `$missing` if it has none.
macro_rules! forward_file {
    ($w:expr, $method:ident, $missing:expr $(, $arg:expr)*) => {{
        let inner = inner_file(ptr::from_mut::<WalFile>($w).cast());
        match (*(*inner).pMethods).$method {
            Some(f) => f(inner $(, $arg)*),
            None => $missing,
        }
    }};
}

/// Writes what the file holds back. On failure they are dropped: held bytes are never part of a
/// commit (a commit frame's header is not held), and the error fails the transaction they belong
/// to, which SQLite then rolls back.
unsafe fn flush(w: &mut WalFile) -> c_int {
    if w.held.is_empty() {
        return ffi::SQLITE_OK;
    }
    let Ok(n) = c_int::try_from(w.held.len()) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let rc = forward_file!(
        w,
        xWrite,
        ffi::SQLITE_IOERR_WRITE,
        w.held.as_ptr().cast(),
        n,
        w.held_at
    );
    w.held.clear();
    rc
}

/// Writes what the file holds back, then calls a method of the wrapped file.
macro_rules! flush_then {
    ($file:expr, $method:ident, $missing:expr $(, $arg:expr)*) => {{
        let w = wal($file);
        match flush(w) {
            ffi::SQLITE_OK => forward_file!(w, $method, $missing $(, $arg)*),
            rc => rc,
        }
    }};
}

unsafe extern "C" fn w_close(file: *mut ffi::sqlite3_file) -> c_int {
    let w = wal(file);
    let flushed = flush(w);
    let closed = forward_file!(w, xClose, ffi::SQLITE_OK);
    ptr::drop_in_place(&mut w.held);
    (*file).pMethods = ptr::null();
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        closed
    }
}

unsafe extern "C" fn w_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    n: c_int,
    at: i64,
) -> c_int {
    flush_then!(file, xRead, ffi::SQLITE_IOERR_READ, buf, n, at)
}

unsafe extern "C" fn w_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    n: c_int,
    at: i64,
) -> c_int {
    let w = wal(file);
    let Ok(len) = usize::try_from(n) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let bytes = std::slice::from_raw_parts(buf.cast::<u8>(), len);
    let follows = !w.held.is_empty() && at == w.held_at + w.held.len() as i64;
    if std::mem::take(&mut w.commit_next) {
        // The commit frame's page: written now, with everything held, in one call if it follows.
        if follows {
            w.held.extend_from_slice(bytes);
            return flush(w);
        }
        let rc = flush(w);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        return forward_file!(w, xWrite, ffi::SQLITE_IOERR_WRITE, buf, n, at);
    }
    if !follows || w.held.len() + len > MAX_HELD {
        let rc = flush(w);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        w.held_at = at;
    }
    let commit_header = len == FRAME_HEADER && bytes[4..8] != [0; 4];
    if commit_header {
        // Held only behind frames of the same transaction, which SQLite follows with the
        // commit page; a commit header written alone (a checksum rewrite) goes out at once.
        w.commit_next = true;
        if !w.held.is_empty() {
            w.held.extend_from_slice(bytes);
            return ffi::SQLITE_OK;
        }
    }
    if commit_header || len > MAX_HELD {
        return forward_file!(w, xWrite, ffi::SQLITE_IOERR_WRITE, buf, n, at);
    }
    w.held.extend_from_slice(bytes);
    ffi::SQLITE_OK
}

unsafe extern "C" fn w_truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    flush_then!(file, xTruncate, ffi::SQLITE_IOERR_TRUNCATE, size)
}

unsafe extern "C" fn w_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    flush_then!(file, xSync, ffi::SQLITE_IOERR_FSYNC, flags)
}

unsafe extern "C" fn w_file_size(file: *mut ffi::sqlite3_file, out: *mut i64) -> c_int {
    flush_then!(file, xFileSize, ffi::SQLITE_IOERR_FSTAT, out)
}

unsafe extern "C" fn w_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    forward_file!(wal(file), xLock, ffi::SQLITE_OK, level)
}

unsafe extern "C" fn w_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    forward_file!(wal(file), xUnlock, ffi::SQLITE_OK, level)
}

unsafe extern "C" fn w_check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    forward_file!(wal(file), xCheckReservedLock, ffi::SQLITE_OK, out)
}

unsafe extern "C" fn w_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    flush_then!(file, xFileControl, ffi::SQLITE_NOTFOUND, op, arg)
}

unsafe extern "C" fn w_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    forward_file!(wal(file), xSectorSize, 4096)
}

unsafe extern "C" fn w_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    forward_file!(wal(file), xDeviceCharacteristics, 0)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use rusqlite::{Connection, OpenFlags};

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("tm-walvfs-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn ours(path: &Path) -> Connection {
        let vfs = super::name().expect("the VFS registers");
        let c = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs).unwrap();
        c.execute_batch(
            "PRAGMA page_size = 1024; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;",
        )
        .unwrap();
        c
    }

    /// A connection through SQLite's default VFS: what any other program sees.
    fn plain(path: &Path) -> Connection {
        let c = Connection::open(path).unwrap();
        c.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
        c
    }

    fn state(c: &Connection) -> (i64, i64, String) {
        c.query_row(
            "SELECT count(*), total(v), group_concat(k, ',') FROM (SELECT k, v FROM t ORDER BY k)",
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get::<_, f64>(1)? as i64,
                    r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                ))
            },
        )
        .unwrap()
    }

    fn integrity(c: &Connection) -> String {
        c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn every_commit_is_seen_whole_by_a_connection_through_the_default_vfs() {
        let dir = Dir::new("seen");
        let path = dir.0.join("t.db");
        let a = ours(&path);
        a.execute_batch(
            "CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER, pad TEXT); CREATE INDEX t_v ON t (v);",
        )
        .unwrap();
        let b = plain(&path);
        let mut expect = std::collections::BTreeMap::new();
        for i in 0..400i64 {
            // One-page, several-page and many-page transactions, and commits by the other
            // connection in between, so ours append after frames they did not write.
            let n = [1, 3, 40][(i % 3) as usize];
            let tx = a.unchecked_transaction().unwrap();
            for j in 0..n {
                let k = format!("k{:05}", (i * 7919 + j * 104_729) % 5000);
                let v = i * 1000 + j;
                tx.execute(
                    "INSERT OR REPLACE INTO t VALUES (?1, ?2, hex(randomblob(60)))",
                    (&k, v),
                )
                .unwrap();
                expect.insert(k, v);
            }
            tx.commit().unwrap();
            if i % 5 == 0 {
                let k = format!("b{i:04}");
                b.execute("INSERT INTO t VALUES (?1, ?2, 'b')", (&k, -i))
                    .unwrap();
                expect.insert(k, -i);
            }
            let keys: Vec<&str> = expect.keys().map(String::as_str).collect();
            let want = (
                expect.len() as i64,
                expect.values().sum::<i64>(),
                keys.join(","),
            );
            assert_eq!(state(&b), want, "after transaction {i}");
        }
        assert_eq!(integrity(&b), "ok");
    }

    /// Copies the database and its WAL as they are on disk now, as a crash would leave them,
    /// and opens the copy: SQLite rebuilds the WAL index from the WAL's own headers and checksums.
    fn crash_copy(path: &Path, to: &Path) -> Connection {
        std::fs::copy(path, to).unwrap();
        let wal = |p: &Path| PathBuf::from(format!("{}-wal", p.display()));
        std::fs::copy(wal(path), wal(to)).unwrap();
        Connection::open(to).unwrap()
    }

    #[test]
    fn what_is_on_disk_after_each_commit_recovers_every_commit() {
        let dir = Dir::new("crash");
        let path = dir.0.join("t.db");
        let a = ours(&path);
        // Keep the WAL (no checkpoint) and a tiny page cache, so large transactions spill
        // frames before they commit and then change those pages again (SQLite then rewrites
        // frames in place and recomputes their checksums).
        a.execute_batch(
            "PRAGMA wal_autocheckpoint = 0; PRAGMA cache_size = 5; \
             CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER, pad TEXT);",
        )
        .unwrap();
        let mut rows = 0i64;
        for round in 0..6i64 {
            let n = [2, 300, 1, 2000, 40, 700][round as usize];
            let tx = a.unchecked_transaction().unwrap();
            for j in 0..n {
                tx.execute(
                    "INSERT INTO t VALUES (?1, ?2, hex(randomblob(100)))",
                    (format!("r{round}-{j:05}"), j),
                )
                .unwrap();
            }
            // Touch every row again in the same transaction: pages already spilled change.
            tx.execute("UPDATE t SET v = v + 1", []).unwrap();
            tx.commit().unwrap();
            rows += n;
            let copy = dir.0.join(format!("copy{round}.db"));
            let c = crash_copy(&path, &copy);
            assert_eq!(integrity(&c), "ok", "round {round}");
            let (count, _, _) = state(&c);
            assert_eq!(
                count, rows,
                "round {round}: a crash now would keep every commit"
            );
        }
    }

    #[test]
    fn a_transaction_larger_than_what_is_held_commits_whole() {
        let dir = Dir::new("large");
        let path = dir.0.join("t.db");
        let a = ours(&path);
        a.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, pad BLOB);")
            .unwrap();
        let tx = a.unchecked_transaction().unwrap();
        for k in 0..500i64 {
            // Several MAX_HELD's worth of frames, with rows spilling into overflow pages.
            tx.execute("INSERT INTO t VALUES (?1, zeroblob(3000))", [k])
                .unwrap();
        }
        tx.commit().unwrap();
        let b = plain(&path);
        let n: i64 = b
            .query_row("SELECT count(*) FROM t WHERE length(pad) = 3000", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(n, 500);
        assert_eq!(integrity(&b), "ok");
    }
}
