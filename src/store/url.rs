//! Database URLs: which backend, and where.
//!
//! SQLite URLs follow SQLAlchemy: `sqlite:///relative/path.db` (three slashes) is relative to the
//! working directory, `sqlite:////absolute/path.db` (four) is absolute, and `sqlite://` or
//! `sqlite://:memory:` is an in-memory database. A bare filesystem path and `:memory:` are accepted
//! too. PostgreSQL URLs are libpq's: `postgresql://user:password@host:port/database?options`
//! (`postgres://` too, and SQLAlchemy's `postgresql+driver://`, whose driver part is ignored).

use std::fmt;
use std::path::PathBuf;

use super::error::StoreError;
use super::pgconn::{PgConfig, TlsParams};

/// Where a SQLite database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqliteTarget {
    /// A private in-memory database, shared by the writer and the readers of one `Store`.
    Memory,
    /// A database file.
    File(PathBuf),
}

/// A parsed database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbUrl {
    /// An embedded SQLite database.
    Sqlite(SqliteTarget),
    /// A PostgreSQL server; holds the URL as given (checked by [`pg_config`]).
    Postgres(String),
}

impl DbUrl {
    /// Parses `url`; see the module documentation for the accepted forms.
    pub fn parse(url: &str) -> Result<DbUrl, StoreError> {
        let invalid = |reason: &str| StoreError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if url.trim().is_empty() {
            return Err(invalid("it is empty"));
        }
        if url == ":memory:" {
            return Ok(DbUrl::Sqlite(SqliteTarget::Memory));
        }
        let Some((scheme, rest)) = split_scheme(url) else {
            return Ok(DbUrl::Sqlite(SqliteTarget::File(PathBuf::from(url))));
        };
        // SQLAlchemy spells drivers as `dialect+driver`: `sqlite+pysqlite`, `postgresql+psycopg`.
        let dialect = scheme
            .split('+')
            .next()
            .unwrap_or(scheme)
            .to_ascii_lowercase();
        match dialect.as_str() {
            "sqlite" => {}
            "postgresql" | "postgres" => {
                pg_config(url)?;
                return Ok(DbUrl::Postgres(url.to_string()));
            }
            _ => {
                return Err(StoreError::Unsupported {
                    scheme: scheme.to_string(),
                    url: url.to_string(),
                })
            }
        }
        let Some(rest) = rest.strip_prefix("//") else {
            return Err(invalid(
                "a sqlite URL starts with sqlite:// (sqlite:///relative.db, sqlite:////absolute.db)",
            ));
        };
        if rest.contains('?') {
            return Err(invalid("query parameters are not supported"));
        }
        let path = match rest {
            "" | ":memory:" | "/" | "/:memory:" => return Ok(DbUrl::Sqlite(SqliteTarget::Memory)),
            _ => match rest.strip_prefix('/') {
                Some(p) => p,
                None => {
                    return Err(invalid(
                        "a sqlite URL has no host: use sqlite:///relative.db or \
                         sqlite:////absolute.db",
                    ))
                }
            },
        };
        Ok(DbUrl::Sqlite(SqliteTarget::File(PathBuf::from(path))))
    }
}

/// Splits `scheme://rest` (or `scheme:rest` for a known scheme); `None` for a plain path. A
/// Windows drive (`C:\x`) has a one-letter "scheme" and stays a path.
fn split_scheme(url: &str) -> Option<(&str, &str)> {
    let colon = url.find(':')?;
    let (scheme, rest) = (&url[..colon], &url[colon + 1..]);
    let well_formed = scheme.len() > 1
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !well_formed {
        return None;
    }
    let known = scheme.to_ascii_lowercase().starts_with("sqlite")
        || scheme.to_ascii_lowercase().starts_with("postgres");
    (rest.starts_with("//") || known).then_some((scheme, rest))
}

/// The connection settings of a PostgreSQL URL (TLS included, see [`super::pgconn`]), and the URL
/// without its password (for messages).
pub(crate) fn pg_config(url: &str) -> Result<(PgConfig, String), StoreError> {
    let invalid = |reason: String| StoreError::InvalidUrl {
        url: without_password(url),
        reason,
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid("a PostgreSQL URL starts with postgresql://".into()))?;
    // The driver named by SQLAlchemy's `postgresql+driver://` is ours, whatever it says.
    let dialect = scheme.split('+').next().unwrap_or(scheme);
    // libpq's TLS parameters are ours: the driver knows only some of them.
    let mut tls = TlsParams::default();
    let rest = match rest.split_once('?') {
        None => rest.to_string(),
        Some((base, query)) => {
            let mut kept = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                if !tls
                    .take(&percent_decode(k), &percent_decode(v))
                    .map_err(invalid)?
                {
                    kept.push(pair);
                }
            }
            if kept.is_empty() {
                base.to_string()
            } else {
                format!("{base}?{}", kept.join("&"))
            }
        }
    };
    let plain = format!("{}://{rest}", dialect.to_ascii_lowercase());
    let mut config: postgres::Config = plain
        .parse()
        .map_err(|e: postgres::Error| invalid(e.to_string()))?;
    if config.get_hosts().is_empty() {
        return Err(invalid("it names no host".into()));
    }
    if config.get_dbname().is_none() {
        return Err(invalid(
            "it names no database (postgresql://host/database)".into(),
        ));
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(10));
    }
    if config.get_application_name().is_none() {
        config.application_name("tm");
    }
    let config = tls.finish(config).map_err(invalid)?;
    Ok((config, without_password(url)))
}

/// `%XX` escapes decoded (a URL's query value); anything malformed is kept as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `url` with the password of its user info (if any) replaced by `***`.
fn without_password(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let authority_end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let authority = &url[start..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    match authority[..at].find(':') {
        Some(colon) => format!("{}***{}", &url[..start + colon + 1], &url[start + at..]),
        None => url.to_string(),
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbUrl::Sqlite(SqliteTarget::Memory) => f.write_str(":memory:"),
            DbUrl::Sqlite(SqliteTarget::File(p)) => write!(f, "{}", p.display()),
            DbUrl::Postgres(u) => f.write_str(u),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(p: &str) -> DbUrl {
        DbUrl::Sqlite(SqliteTarget::File(PathBuf::from(p)))
    }

    const MEM: DbUrl = DbUrl::Sqlite(SqliteTarget::Memory);

    #[test]
    fn sqlalchemy_forms() {
        assert_eq!(
            DbUrl::parse("sqlite:///rel/tm.db").ok(),
            Some(file("rel/tm.db"))
        );
        assert_eq!(
            DbUrl::parse("sqlite:////abs/tm.db").ok(),
            Some(file("/abs/tm.db"))
        );
        assert_eq!(
            DbUrl::parse("sqlite+pysqlite:///x.db").ok(),
            Some(file("x.db"))
        );
        assert_eq!(DbUrl::parse("SQLite:///x.db").ok(), Some(file("x.db")));
    }

    #[test]
    fn memory_forms() {
        for u in [
            ":memory:",
            "sqlite://",
            "sqlite://:memory:",
            "sqlite:///:memory:",
        ] {
            assert_eq!(DbUrl::parse(u).ok(), Some(MEM), "{u}");
        }
    }

    #[test]
    fn bare_paths() {
        assert_eq!(DbUrl::parse("tm.db").ok(), Some(file("tm.db")));
        assert_eq!(
            DbUrl::parse("/var/x/tm.db").ok(),
            Some(file("/var/x/tm.db"))
        );
        assert_eq!(DbUrl::parse("./.tm/tm.db").ok(), Some(file("./.tm/tm.db")));
        assert_eq!(
            DbUrl::parse(r"C:\tm\tm.db").ok(),
            Some(file(r"C:\tm\tm.db"))
        );
        assert_eq!(DbUrl::parse("odd:name.db").ok(), Some(file("odd:name.db")));
    }

    #[test]
    fn postgres_is_recognised() {
        for u in [
            "postgresql://u@h/db",
            "postgres://h/db",
            "postgresql+psycopg://h/db",
        ] {
            assert_eq!(DbUrl::parse(u).ok(), Some(DbUrl::Postgres(u.to_string())));
        }
    }

    #[test]
    fn postgres_urls_are_checked_and_passwords_hidden() {
        let (config, shown) =
            pg_config("postgresql+psycopg://tm:s3cret@db.example:6543/state").expect("valid");
        assert_eq!(shown, "postgresql+psycopg://tm:***@db.example:6543/state");
        assert_eq!(config.get_user(), Some("tm"));
        assert_eq!(config.get_dbname(), Some("state"));
        assert_eq!(config.get_ports(), &[6543]);
        assert_eq!(
            without_password("postgres://u@h/db?sslmode=disable"),
            "postgres://u@h/db?sslmode=disable"
        );
        let msg = |u: &str| match DbUrl::parse(u) {
            Err(e) => e.to_string(),
            Ok(v) => panic!("{u} parsed as {v:?}"),
        };
        assert!(
            msg("postgresql://h").contains("no database"),
            "{}",
            msg("postgresql://h")
        );
        let bad = msg("postgresql://u:pw@h:notaport/db");
        assert!(!bad.contains("pw@"), "{bad}");
    }

    #[test]
    fn tls_parameters_are_taken_from_the_query() {
        let tls = |u: &str| pg_config(u).map(|(c, _)| c.tls());
        assert_eq!(tls("postgresql://h/db").ok(), Some(true)); // prefer, as libpq
        assert_eq!(tls("postgresql://h/db?sslmode=disable").ok(), Some(false));
        assert_eq!(tls("postgresql://h/db?sslmode=require").ok(), Some(true));
        // A Unix socket never uses TLS, whatever sslmode says (libpq too).
        assert_eq!(
            tls("postgresql:///db?host=/var/run/postgresql&sslmode=require").ok(),
            Some(false)
        );
        // The driver's own parameters still reach it, escaped or not.
        let (config, shown) = pg_config(
            "postgresql://u:pw@h/db?sslmode=require&application_name=my%20app&connect_timeout=3",
        )
        .expect("valid");
        assert_eq!(config.get_application_name(), Some("my app"));
        assert_eq!(
            config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        assert!(!shown.contains("pw"));
    }

    #[test]
    fn bad_tls_parameters_say_why() {
        let msg = |u: &str| match pg_config(u) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{u} was accepted"),
        };
        assert!(msg("postgresql://h/db?sslmode=sometimes").contains("verify-full"));
        assert!(
            msg("postgresql://h/db?sslmode=verify-full&sslrootcert=/no/such/ca.pem")
                .contains("/no/such/ca.pem")
        );
        assert!(msg("postgresql://h/db?sslcert=/tmp/c.pem").contains("sslkey"));
        assert!(msg("postgresql://h/db?sslrootcert=system").contains("not supported"));
        assert!(msg("postgresql://u:pw@h/db?sslpassword=x").contains("sslpassword"));
        assert!(!msg("postgresql://u:pw@h/db?sslpassword=x").contains("pw@"));
    }

    #[test]
    fn bad_urls_say_why() {
        let msg = |u: &str| match DbUrl::parse(u) {
            Err(e) => e.to_string(),
            Ok(v) => panic!("{u} parsed as {v:?}"),
        };
        assert!(msg("").contains("empty"));
        assert!(msg("sqlite://host/x.db").contains("no host"));
        assert!(msg("sqlite:x.db").contains("sqlite://"));
        assert!(msg("sqlite:///x.db?mode=ro").contains("query"));
        assert!(msg("mysql://h/db").contains("not supported"));
    }

    #[test]
    fn display_names_the_place() {
        assert_eq!(MEM.to_string(), ":memory:");
        assert_eq!(file("/a/b.db").to_string(), "/a/b.db");
    }
}
