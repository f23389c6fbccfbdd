//! Checks a database file before tm writes to it, so that a damaged file is refused (and left as
//! it is) rather than written and damaged further.
//!
//! Byte flips and truncations are what a bad disk, a copy interrupted half-way or another program
//! leave behind. SQLite notices some of them only when it happens to read the damaged page, and a
//! flipped byte in the schema's text can even give a table another column name, after which every
//! write fails with "no such column". So a read-write open first looks at, in this order:
//!
//! 1. the file beside the database: an empty or missing database file with a write-ahead log
//!    holding data was truncated or deleted, it is not a new database;
//! 2. the 100-byte header: magic string, page size, fixed fields, a file that is a whole number of
//!    pages and, when the header's page count is valid, as long as it says;
//! 3. the schema: every table, index and trigger that tm's migrations made at the database's
//!    version must be there with the same definition, and every root page inside the file;
//! 4. the pages: `PRAGMA integrity_check` on a database of at most [`FULL_CHECK_BYTES`], every
//!    table's root page on a larger one (the full check reads the whole file: see the figures at
//!    [`FULL_CHECK_BYTES`]).
//!
//! All of it runs on a read-only connection opened for the purpose, which cannot write the file
//! (nor checkpoint a log into it when it closes).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::error::{open_error, StoreError};
use super::migrations::{LATEST, MIGRATIONS};

/// The largest database (pages, write-ahead log included) whose every page is checked at open.
/// `PRAGMA integrity_check` reads the whole file: measured on this project's 2-core machine (warm
/// page cache, busy with other builds), 20 ms for a store of 1,000 runs (0.55 MB), 140 ms for
/// 5,000 (2.4 MB), 2.5 s for 100,000 (48 MB; `quick_check` 0.8 s), which every read-write open
/// would pay. Above this size the header, the schema and the root pages are checked: 0.5 ms at
/// 100,000 runs.
pub(crate) const FULL_CHECK_BYTES: u64 = 1 << 20;

/// `path` with `suffix` appended (`tm.db` -> `tm.db-wal`).
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn damaged(name: &str, detail: impl Into<String>) -> StoreError {
    StoreError::Damaged {
        path: name.to_string(),
        detail: detail.into(),
    }
}

fn len_of(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

/// Refuses a damaged database file at `path` (named `name` in messages) before it is opened for
/// writing. A missing or empty file with no log beside it is a new database and passes.
pub(crate) fn check(path: &Path, name: &str) -> Result<(), StoreError> {
    let wal = sibling(path, "-wal");
    let wal_len = len_of(&wal).unwrap_or(0);
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if wal_len > 0 {
                return Err(damaged(
                    name,
                    format!(
                        "the database file is missing but its write-ahead log {} holds {wal_len} \
                         bytes, so it was deleted or moved, not new (put the file back; to start \
                         a new database instead, delete {} and {} first)",
                        wal.display(),
                        wal.display(),
                        sibling(path, "-shm").display()
                    ),
                ));
            }
            return Ok(());
        }
        // SQLite reports what it cannot open, in its own words.
        Err(_) => return Ok(()),
    };
    if len == 0 {
        if wal_len > 0 {
            return Err(damaged(
                name,
                format!(
                    "the file is empty but its write-ahead log {} holds {wal_len} bytes, so it \
                     was truncated, not new",
                    wal.display()
                ),
            ));
        }
        return Ok(());
    }
    check_header(path, name, len, wal_len)?;
    check_contents(path, name, len + wal_len)
}

/// The fixed part of the header; see SQLite's file format, section 1.3.
fn check_header(path: &Path, name: &str, len: u64, wal_len: u64) -> Result<(), StoreError> {
    let mut header = Vec::with_capacity(100);
    let read = std::fs::File::open(path).and_then(|f| f.take(100).read_to_end(&mut header));
    if read.is_err() {
        return Ok(()); // SQLite reports what it cannot read
    }
    if !header.starts_with(b"SQLite format 3\0") {
        return Err(StoreError::Open {
            path: name.to_string(),
            detail: "it is not a SQLite database (or it is encrypted)".into(),
            source: None,
        });
    }
    if header.len() < 100 {
        return Err(damaged(
            name,
            format!("the file is {len} bytes long, shorter than a SQLite header: it was truncated"),
        ));
    }
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n if n >= 512 && n.is_power_of_two() => u64::from(n),
        n => return Err(damaged(name, format!("its header says pages of {n} bytes"))),
    };
    let versions_ok = matches!(header[18], 1 | 2) && matches!(header[19], 1 | 2);
    if !versions_ok || header[21..24] != [64, 32, 32] || header[20] > 128 {
        return Err(damaged(name, "its header has impossible values"));
    }
    if !len.is_multiple_of(page_size) {
        return Err(damaged(
            name,
            format!(
                "the file is {len} bytes long, not a whole number of {page_size}-byte pages: it \
                 was truncated or appended to"
            ),
        ));
    }
    let word = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let (pages, counter, valid_for) = (u64::from(word(28)), word(24), word(92));
    // The header's page count is valid when the change counter matches (SQLite's rule). A log
    // being checkpointed may hold the rest of a file that is still growing.
    if counter == valid_for && pages > 0 && pages * page_size > len && wal_len == 0 {
        return Err(damaged(
            name,
            format!(
                "the file holds {} pages of the {pages} its header counts: it was truncated",
                len / page_size
            ),
        ));
    }
    Ok(())
}

/// One schema object as tm's migrations leave it; the definition with case, quotes and spacing
/// folded (none of which changes its meaning).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Object {
    kind: String,
    name: String,
    table: String,
    sql: String,
}

fn fold_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    for word in sql.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(
            word.chars()
                .filter(|c| !matches!(c, '"' | '`' | '[' | ']'))
                .map(|c| c.to_ascii_lowercase()),
        );
    }
    out
}

fn objects(conn: &Connection) -> rusqlite::Result<Vec<(Object, i64)>> {
    let mut stmt = conn
        .prepare("SELECT type, name, tbl_name, rootpage, COALESCE(sql, '') FROM sqlite_schema")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            Object {
                kind: r.get(0)?,
                name: r.get(1)?,
                table: r.get(2)?,
                sql: fold_sql(&r.get::<_, String>(4)?),
            },
            r.get(3)?,
        ))
    })?;
    rows.collect()
}

/// The objects a database at `version` has, from running the migrations on an empty database in
/// memory (once per version and process).
fn expected(version: u32) -> rusqlite::Result<Arc<Vec<Object>>> {
    static SEEN: Mutex<Option<HashMap<u32, Arc<Vec<Object>>>>> = Mutex::new(None);
    if let Some(known) = SEEN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_default()
        .get(&version)
    {
        return Ok(known.clone());
    }
    let conn = Connection::open_in_memory()?;
    for m in MIGRATIONS.iter().filter(|m| m.version <= version) {
        conn.execute_batch(m.sql)?;
    }
    let made: Arc<Vec<Object>> = Arc::new(objects(&conn)?.into_iter().map(|(o, _)| o).collect());
    SEEN.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_default()
        .insert(version, made.clone());
    Ok(made)
}

/// Schema and pages, read through a read-only connection. `bytes` is the file and its log.
fn check_contents(path: &Path, name: &str, bytes: u64) -> Result<(), StoreError> {
    let conn = match Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(c) => c,
        // Left to the read-write open, which says why in the usual words.
        Err(_) => return Ok(()),
    };
    let _ = conn.busy_timeout(super::writer::BUSY_TIMEOUT);
    let sqlite = |e: rusqlite::Error| -> StoreError {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseCorrupt) => damaged(name, format!("SQLite says: {e}")),
            _ => open_error(name, e),
        }
    };
    let version: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sqlite)?;
    let found = objects(&conn).map_err(sqlite)?;
    // Version 0 is a new (or foreign) database, a newer one is refused by the migrations: there
    // is nothing tm knows to compare with.
    if version == 0 || version > LATEST {
        return Ok(());
    }
    let want = expected(version).map_err(|e| open_error(name, e))?;
    for w in want.iter() {
        match found
            .iter()
            .find(|(o, _)| o.kind == w.kind && o.name == w.name)
        {
            None => {
                return Err(damaged(
                    name,
                    format!("its schema has no {} {:?}, which tm made", w.kind, w.name),
                ))
            }
            Some((o, _)) if o != w => {
                return Err(damaged(
                    name,
                    format!(
                        "the definition of {} {:?} in its schema is not the one tm wrote",
                        w.kind, w.name
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    let pages: i64 = conn
        .pragma_query_value(None, "page_count", |r| r.get(0))
        .map_err(sqlite)?;
    // Each b-tree belongs to one table (a WITHOUT ROWID table shares its root with the index of
    // its primary key), and lies inside the file.
    let mut owner: HashMap<i64, &str> = HashMap::new();
    for (o, root) in found
        .iter()
        .filter(|(o, _)| matches!(o.kind.as_str(), "table" | "index"))
    {
        let shared = owner
            .insert(*root, o.table.as_str())
            .is_some_and(|t| t != o.table);
        if *root < 2 || *root > pages || shared {
            return Err(damaged(
                name,
                format!(
                    "its schema places {} {:?} on page {root}, which cannot be",
                    o.kind, o.name
                ),
            ));
        }
    }
    if bytes <= FULL_CHECK_BYTES {
        let problems: Vec<String> = (|| {
            let mut stmt = conn.prepare("PRAGMA integrity_check(5)")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })()
        .map_err(sqlite)?;
        if problems != ["ok"] {
            return Err(damaged(
                name,
                format!("SQLite's integrity check found: {}", problems.join("; ")),
            ));
        }
    } else {
        for (o, _) in found.iter().filter(|(o, _)| o.kind == "table") {
            if o.name.starts_with("sqlite_") {
                continue;
            }
            let sql = format!(
                "SELECT count(*) FROM (SELECT 1 FROM \"{}\" LIMIT 1)",
                o.name.replace('"', "\"\"")
            );
            conn.query_row(&sql, [], |_| Ok(())).map_err(sqlite)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_keeps_meaning_and_drops_layout() {
        assert_eq!(
            fold_sql("CREATE TABLE \"Runs\" (\n  rid   INTEGER)"),
            "create table runs ( rid integer)"
        );
    }

    #[test]
    fn every_version_has_its_expected_schema() {
        for m in MIGRATIONS {
            let objs = expected(m.version).expect("migrations apply in memory");
            assert!(objs.iter().any(|o| o.kind == "table"), "{}", m.version);
        }
    }
}
