//! The boundary between [`Store`](super::Store) and a database engine. `Store` talks only to
//! [`Backend`]: SQLite here, PostgreSQL in [`super::pg`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rusqlite::OpenFlags;

use crate::fork_gate;

use super::cache_index::{CacheBackend, SqliteCache};
use super::error::StoreError;
use super::model::{
    AttemptRow, EventRow, GraphRecord, LogRow, RunDetail, RunFilter, RunSummary, TaskRef, Write,
};
use super::read::Readers;
use super::url::{DbUrl, SqliteTarget};
use super::writer::{ProcessWriter, Writer, WriterRef};

/// A database engine behind the store: queued writes with group commit, and blocking reads.
pub(crate) trait Backend: Send + Sync {
    /// Where the data lives, for messages.
    fn location(&self) -> &str;
    /// Queues a write without blocking.
    fn submit(&self, w: Write) -> Result<(), StoreError>;
    /// Waits until every queued write is committed; the first error since the last flush.
    fn flush(&self) -> Result<(), StoreError>;
    /// Flushes, then releases every thread and connection. Idempotent.
    fn close(&self) -> Result<(), StoreError>;
    /// The latest write error.
    fn last_error(&self) -> Option<StoreError>;
    /// See [`Store::list_runs`](super::Store::list_runs).
    fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError>;
    /// See [`Store::get_run`](super::Store::get_run).
    fn get_run(&self, run_id: &str) -> Result<Option<RunDetail>, StoreError>;
    /// See [`Store::run_ids_with_prefix`](super::Store::run_ids_with_prefix).
    fn run_ids_with_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<String>, StoreError>;
    /// See [`Store::attempts`](super::Store::attempts).
    fn attempts(&self, run_id: &str, task: TaskRef<'_>) -> Result<Vec<AttemptRow>, StoreError>;
    /// See [`Store::logs`](super::Store::logs).
    fn logs(&self, run_id: &str, task: Option<TaskRef<'_>>) -> Result<Vec<LogRow>, StoreError>;
    /// See [`Store::results`](super::Store::results).
    fn results(&self, run_id: &str) -> Result<Vec<(u32, String, Vec<u8>)>, StoreError>;
    /// See [`Store::result`](super::Store::result).
    fn result(&self, run_id: &str, node: u32) -> Result<Option<(String, Vec<u8>)>, StoreError>;
    /// See [`Store::unfinished_runs`](super::Store::unfinished_runs).
    fn unfinished_runs(&self) -> Result<Vec<RunSummary>, StoreError>;
    /// See [`Store::graph`](super::Store::graph).
    fn graph(&self, name: &str) -> Result<Option<GraphRecord>, StoreError>;
    /// See [`Store::graphs`](super::Store::graphs).
    fn graphs(&self) -> Result<Vec<GraphRecord>, StoreError>;
    /// See [`Store::events`](super::Store::events).
    fn events(&self, limit: usize) -> Result<Vec<EventRow>, StoreError>;
    /// The synchronous cache index (seed 000's cached calls) on the same database.
    fn cache(&self) -> &dyn CacheBackend;
    /// The most bytes one stored value (a row, with its few other columns) may hold.
    fn max_value_bytes(&self) -> usize;
}

/// Opens the existing database `url` names for reading only (PostgreSQL: as usual).
pub(crate) fn open_read_only(url: &str) -> Result<Box<dyn Backend>, StoreError> {
    match DbUrl::parse(url)? {
        DbUrl::Sqlite(target) => Ok(Box::new(Sqlite::open_read_only(target)?)),
        DbUrl::Postgres(url) => Ok(Box::new(super::pg::Postgres::open(&url)?)),
    }
}

/// Opens the backend that `url` names; a SQLite file it creates gets `file_mode` (see
/// [`super::files::file_mode`]).
pub(crate) fn open(url: &str, file_mode: Option<u32>) -> Result<Box<dyn Backend>, StoreError> {
    match DbUrl::parse(url)? {
        DbUrl::Sqlite(target) => {
            let mode = super::files::file_mode(file_mode).map_err(|detail| StoreError::Open {
                path: DbUrl::Sqlite(target.clone()).to_string(),
                detail,
                source: None,
            })?;
            Ok(Box::new(Sqlite::open(target, mode)?))
        }
        DbUrl::Postgres(url) => Ok(Box::new(super::pg::Postgres::open(&url)?)),
    }
}

/// How to reach one SQLite database.
pub(crate) struct SqlitePlace {
    /// The absolute path, or `:memory:`: what messages show.
    pub(crate) name: String,
    /// What to open: the file path, or a memory URI.
    pub(crate) path: PathBuf,
    /// Whether `path` is a memory URI (opened with `SQLITE_OPEN_URI`).
    pub(crate) memory: bool,
    /// Opened read-only: `path` is a `file:` URI with `mode=ro` or `immutable=1`, and there is no
    /// writer.
    pub(crate) read_only: bool,
    /// The mode of a database file, and of directories, that the writer creates.
    pub(crate) file_mode: u32,
}

impl SqlitePlace {
    /// Call before opening a connection: in a forked child, holds the locks SQLite's inherited
    /// records claim (see [`crate::sqlite_fork`]). Memory databases and read-only URIs have
    /// nothing a parent could delete under the child.
    pub(crate) fn before_open(&self) {
        if !self.memory && !self.read_only {
            crate::sqlite_fork::before_open(&self.path);
        }
    }

    /// How readers (and the cached-call index) open this database.
    pub(crate) fn reader_flags(&self) -> OpenFlags {
        if self.read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI
        } else if self.memory {
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
        }
    }

    /// An existing database file, to be read without writing anything beside it: on a read-only
    /// file system or in a directory this process cannot write. A write-ahead log beside the
    /// file means a writer may be at work (SQLite reads it, `mode=ro`); without one the file
    /// cannot change while it stays read-only to everyone (`immutable=1`: no locks, no files).
    fn read_only(path: PathBuf) -> Result<SqlitePlace, StoreError> {
        let path = std::path::absolute(&path).unwrap_or(path);
        let name = path.display().to_string();
        if !path.is_file() {
            return Err(StoreError::Open {
                path: name,
                detail: "no such database file (a read-only store does not create one)".into(),
                source: None,
            });
        }
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        let mode = if Path::new(&wal).exists() {
            "mode=ro"
        } else {
            "immutable=1"
        };
        Ok(SqlitePlace {
            path: PathBuf::from(format!("file:{}?{mode}", uri_path(&path))),
            name,
            memory: false,
            read_only: true,
            file_mode: super::files::DEFAULT_FILE_MODE,
        })
    }

    fn resolve(target: SqliteTarget, file_mode: u32) -> Result<SqlitePlace, StoreError> {
        match target {
            SqliteTarget::Memory => {
                // A name per Store: its writer and readers share it, other Stores do not. The memdb
                // VFS rather than `mode=memory&cache=shared`: shared-cache table locks return
                // SQLITE_LOCKED, which busy_timeout does not wait for, and a busy reader could
                // starve the writer; memdb locks like a file (the pending lock lets the writer in).
                static NEXT: AtomicU64 = AtomicU64::new(0);
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                let uri = format!("file:/tm-memory-{}-{n}?vfs=memdb", std::process::id());
                Ok(SqlitePlace {
                    name: ":memory:".into(),
                    path: PathBuf::from(uri),
                    memory: true,
                    read_only: false,
                    file_mode,
                })
            }
            SqliteTarget::File(path) => {
                let path = std::path::absolute(&path).unwrap_or(path);
                let name = path.display().to_string();
                if path.is_dir() {
                    return Err(StoreError::Open {
                        path: name,
                        detail: "it is a directory".into(),
                        source: None,
                    });
                }
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    create_dir(&path, dir, file_mode)?;
                }
                Ok(SqlitePlace {
                    name,
                    path,
                    memory: false,
                    read_only: false,
                    file_mode,
                })
            }
        }
    }
}

/// `path` as the path part of a `file:` URI: the characters a URI gives meaning to, and every
/// byte outside ASCII, are percent-escaped (SQLite decodes them back to the same bytes).
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for &b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii() && !matches!(b, b'%' | b'?' | b'#') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn create_dir(path: &Path, dir: &Path, file_mode: u32) -> Result<(), StoreError> {
    super::files::create_dir_all(dir, file_mode).map_err(|e| {
        // "File exists" would puzzle: say that the existing thing is not a directory.
        let e = if dir.exists() && !dir.is_dir() {
            std::io::Error::new(std::io::ErrorKind::NotADirectory, "it is not a directory")
        } else {
            e
        };
        StoreError::CreateDir {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
            source: Arc::new(e),
        }
    })
}

/// The embedded SQLite backend: one writer thread (per process, see [`ProcessWriter`]) and a
/// pool of read connections (a forked child opens its own).
struct Sqlite {
    place: Arc<SqlitePlace>,
    /// See [`Backend::max_value_bytes`]: the write connection's `SQLITE_LIMIT_LENGTH`.
    max_value: usize,
    writer: ProcessWriter,
    readers: Readers,
    cache: SqliteCache,
}

impl Sqlite {
    fn open(target: SqliteTarget, file_mode: u32) -> Result<Sqlite, StoreError> {
        let place = Arc::new(SqlitePlace::resolve(target, file_mode)?);
        let max_value = max_length(&place.name)?.map_or(SQLITE_MAX_LENGTH, |n| n as usize);
        fork_gate::install();
        let writer = Writer::start(&place)?;
        let readers = Readers::new(place.clone());
        let cache = SqliteCache::new(place.clone());
        Ok(Sqlite {
            place,
            max_value,
            writer: ProcessWriter::new(Some(writer)),
            readers,
            cache,
        })
    }

    /// Opens an existing database for reading only (see [`SqlitePlace::read_only`]).
    fn open_read_only(target: SqliteTarget) -> Result<Sqlite, StoreError> {
        let SqliteTarget::File(path) = target else {
            return Err(StoreError::Open {
                path: ":memory:".into(),
                detail: "an in-memory database cannot be opened read-only".into(),
                source: None,
            });
        };
        let place = Arc::new(SqlitePlace::read_only(path)?);
        let readers = Readers::new(place.clone());
        readers.check_schema()?;
        let cache = SqliteCache::new(place.clone());
        Ok(Sqlite {
            place,
            max_value: SQLITE_MAX_LENGTH,
            writer: ProcessWriter::new(None),
            readers,
            cache,
        })
    }

    /// The writer to write through (a forked child's first write starts its own).
    fn writer(&self) -> Result<WriterRef<'_>, StoreError> {
        self.writer
            .get(Some(&|| Writer::start(&self.place)))?
            .ok_or_else(|| StoreError::ReadOnly {
                path: self.place.name.clone(),
            })
    }

    /// The writer that may hold writes of this process (flush, close, last error).
    fn current_writer(&self) -> Option<WriterRef<'_>> {
        self.writer.get(None).ok().flatten()
    }
}

impl Backend for Sqlite {
    fn location(&self) -> &str {
        &self.place.name
    }
    fn submit(&self, w: Write) -> Result<(), StoreError> {
        self.writer()?.submit(w)
    }
    fn flush(&self) -> Result<(), StoreError> {
        // Nothing is ever queued in a read-only store, or by a child that never wrote.
        self.current_writer().map_or(Ok(()), |w| w.flush())
    }
    fn close(&self) -> Result<(), StoreError> {
        // Readers first, so the writer's connection is the last one and checkpoints the WAL.
        self.readers.close();
        self.cache.close();
        self.current_writer().map_or(Ok(()), |w| w.close())
    }
    fn last_error(&self) -> Option<StoreError> {
        self.current_writer().and_then(|w| w.last_error())
    }
    fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
        self.readers.list_runs(filter)
    }
    fn get_run(&self, run_id: &str) -> Result<Option<RunDetail>, StoreError> {
        self.readers.get_run(run_id)
    }
    fn attempts(&self, run_id: &str, task: TaskRef<'_>) -> Result<Vec<AttemptRow>, StoreError> {
        self.readers.attempts(run_id, task)
    }
    fn logs(&self, run_id: &str, task: Option<TaskRef<'_>>) -> Result<Vec<LogRow>, StoreError> {
        self.readers.logs(run_id, task)
    }
    fn results(&self, run_id: &str) -> Result<Vec<(u32, String, Vec<u8>)>, StoreError> {
        self.readers.results(run_id)
    }
    fn result(&self, run_id: &str, node: u32) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        self.readers.result(run_id, node)
    }
    fn unfinished_runs(&self) -> Result<Vec<RunSummary>, StoreError> {
        self.readers.unfinished_runs()
    }
    fn run_ids_with_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        self.readers.run_ids_with_prefix(prefix, limit)
    }
    fn graph(&self, name: &str) -> Result<Option<GraphRecord>, StoreError> {
        self.readers.graph(name)
    }
    fn graphs(&self) -> Result<Vec<GraphRecord>, StoreError> {
        self.readers.graphs()
    }
    fn events(&self, limit: usize) -> Result<Vec<EventRow>, StoreError> {
        self.readers.events(limit)
    }
    fn cache(&self) -> &dyn CacheBackend {
        &self.cache
    }
    fn max_value_bytes(&self) -> usize {
        self.max_value
    }
}

/// SQLite's largest string or blob, and row, unless lowered (`SQLITE_MAX_LENGTH`).
const SQLITE_MAX_LENGTH: usize = 1_000_000_000;

/// Hidden setting: a lower `SQLITE_LIMIT_LENGTH` for the store's write connection, so that tests
/// can reach the limit without a gigabyte.
const MAX_LENGTH_VAR: &str = "TM_SQLITE_MAX_LENGTH";

/// The limit [`MAX_LENGTH_VAR`] sets, if it is set.
pub(crate) fn max_length(name: &str) -> Result<Option<i32>, StoreError> {
    let Some(raw) = std::env::var_os(MAX_LENGTH_VAR) else {
        return Ok(None);
    };
    match raw.to_str().and_then(|s| s.trim().parse::<i32>().ok()) {
        Some(n) if n > 0 => Ok(Some(n)),
        _ => Err(StoreError::Open {
            path: name.to_string(),
            detail: format!("{MAX_LENGTH_VAR}={raw:?} is not a positive number of bytes"),
            source: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    //! Opening: what is refused, and that a refused file is left as it was.

    use crate::store::tests::{ok, open, run, TempDb};
    use crate::store::{Store, StoreError};

    fn expect_open_error(url: &str, needle: &str) -> StoreError {
        match Store::open(url) {
            Ok(_) => panic!("{url} opened"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
                e
            }
        }
    }

    #[test]
    fn read_only_opens_paths_with_uri_characters_and_non_ascii_names() {
        let tmp = TempDb::new("ro-names");
        let dir = tmp.dir.join("100% sure? #1 Zürich");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("tm.db");
        let url = path.to_str().expect("utf-8").to_owned();
        let store = open(&url);
        ok(store.begin_run(run("r1", "g", 1, &["a"])));
        ok(store.close());
        // Closed cleanly: no log beside the file, so the immutable form of the URI is used.
        let ro = ok(Store::open_read_only(&url));
        assert_eq!(ro.location(), path.display().to_string());
        let detail = ok(ro.get_run("r1")).expect("the run is there");
        assert_eq!(detail.run.graph, "g");
        assert_eq!(detail.tasks.len(), 1);
        assert!(matches!(
            ro.begin_run(run("r2", "g", 2, &["a"])),
            Err(StoreError::ReadOnly { .. })
        ));
        ok(ro.close());
        // A live writer leaves its log beside the file: the mode=ro form follows it.
        let writer = open(&url);
        ok(writer.begin_run(run("r2", "g", 2, &["a"])));
        ok(writer.flush());
        let ro = ok(Store::open_read_only(&url));
        assert!(ok(ro.get_run("r2")).is_some());
        ok(ro.close());
        ok(writer.close());
    }

    #[test]
    fn random_bytes_are_refused_and_left_untouched() {
        let tmp = TempDb::new("junk");
        let path = tmp.path();
        std::fs::create_dir_all(tmp.dir.join("sub")).expect("mkdir");
        let mut x: u32 = 0x1234_5678;
        let junk: Vec<u8> = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        std::fs::write(&path, &junk).expect("write junk");
        let e = expect_open_error(path.to_str().expect("utf-8"), "not a SQLite database");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        assert!(matches!(e, StoreError::Open { .. }));
        assert_eq!(std::fs::read(&path).expect("read back"), junk);
    }

    #[test]
    fn a_truncated_database_is_refused() {
        let tmp = TempDb::new("trunc");
        {
            let store = open(&tmp.url());
            for i in 0..200 {
                ok(store.begin_run(run(&format!("r{i}"), "g", i, &["a", "b", "c", "d"])));
            }
            ok(store.close());
        }
        let full = std::fs::read(tmp.path()).expect("read");
        assert!(
            full.len() > 16 * 4096,
            "database too small to truncate: {}",
            full.len()
        );
        for cut in [50, 4096, full.len() / 2] {
            std::fs::write(tmp.path(), &full[..cut]).expect("truncate");
            let e = expect_open_error(&tmp.url(), &tmp.path().display().to_string());
            assert!(matches!(e, StoreError::Damaged { .. }), "{cut}: {e:?}");
            assert!(e.to_string().contains(".recover"), "{e}");
            assert_eq!(std::fs::read(tmp.path()).expect("read").len(), cut);
        }
    }

    #[test]
    fn a_foreign_sqlite_file_is_refused() {
        let tmp = TempDb::new("foreign");
        std::fs::create_dir_all(tmp.dir.join("sub")).expect("mkdir");
        rusqlite::Connection::open(tmp.path())
            .and_then(|c| c.execute_batch("CREATE TABLE invoices (id INTEGER)"))
            .expect("foreign db");
        expect_open_error(&tmp.url(), "invoices");
    }

    #[test]
    fn a_directory_is_refused() {
        let tmp = TempDb::new("dir");
        std::fs::create_dir_all(tmp.path()).expect("mkdir");
        let e = expect_open_error(&tmp.url(), "is a directory");
        assert!(e.to_string().contains(&tmp.path().display().to_string()));
    }

    #[test]
    fn unwritable_locations_are_refused_even_for_root() {
        // A regular file where a directory should be: no user can create a directory under it.
        let tmp = TempDb::new("notdir");
        std::fs::create_dir_all(&tmp.dir).expect("mkdir");
        let file = tmp.dir.join("plain");
        std::fs::write(&file, b"x").expect("write");
        let e = expect_open_error(
            &file.join("x").join("tm.db").display().to_string(),
            "cannot create directory",
        );
        assert!(matches!(e, StoreError::CreateDir { .. }));
        let e = expect_open_error(&file.join("tm.db").display().to_string(), "not a directory");
        assert!(matches!(e, StoreError::CreateDir { .. }), "{e:?}");
        // procfs refuses new files to root as well.
        if std::path::Path::new("/proc/self").exists() {
            expect_open_error(
                "sqlite:////proc/tm-no-such-dir/tm.db",
                "/proc/tm-no-such-dir",
            );
            let e = expect_open_error("/proc/tm-store-test.db", "/proc/tm-store-test.db");
            assert!(matches!(e, StoreError::Open { .. }), "{e:?}");
        }
    }

    #[test]
    fn postgres_and_bad_urls_are_clear_errors() {
        // Nothing listens on port 1: a connection error naming the server, not a panic.
        let e = expect_open_error("postgresql://u:secret@127.0.0.1:1/tm", "cannot connect");
        assert!(matches!(e, StoreError::Postgres { .. }), "{e:?}");
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(matches!(
            Store::open("sqlite://host/x.db"),
            Err(StoreError::InvalidUrl { .. })
        ));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let tmp = TempDb::new("newer");
        drop(open(&tmp.url()));
        rusqlite::Connection::open(tmp.path())
            .and_then(|c| c.pragma_update(None, "user_version", 99))
            .expect("bump");
        expect_open_error(&tmp.url(), "schema version 99");
    }
}
