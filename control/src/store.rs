//! The database: SQLite (a file, the embedded default) or PostgreSQL, through one `AnyPool`
//! and portable SQL, migrated at start.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

/// Which engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// `sqlite:` URLs.
    Sqlite,
    /// `postgres:` / `postgresql:` URLs.
    Postgres,
}

/// The pool and its engine.
#[derive(Debug, Clone)]
pub struct Db {
    /// The pool.
    pub pool: AnyPool,
    /// Its engine.
    pub engine: Engine,
}

/// Why the store could not open.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no supported engine.
    #[error("database URL must start with sqlite: or postgres: (got '{0}')")]
    Url(String),
    /// Connecting failed.
    #[error("cannot open the database: {0}")]
    Connect(#[source] sqlx::Error),
    /// Migrating failed.
    #[error("cannot migrate the database: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

impl Db {
    /// Opens (creating a SQLite file if needed) and migrates.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (engine, url) = if url.starts_with("sqlite:") {
            let mut u = url.to_owned();
            if !u.contains("mode=") && !u.contains(":memory:") {
                u.push_str(if u.contains('?') {
                    "&mode=rwc"
                } else {
                    "?mode=rwc"
                });
            }
            (Engine::Sqlite, u)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            (Engine::Postgres, url.to_owned())
        } else {
            let shown: String = url.chars().take_while(|c| *c != ':').take(16).collect();
            return Err(StoreError::Url(shown));
        };
        let opts = AnyPoolOptions::new().max_connections(match engine {
            Engine::Sqlite => 4,
            Engine::Postgres => 16,
        });
        let opts = if engine == Engine::Sqlite {
            opts.after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL lets readers run beside the writer; a busy writer waits, not fails.
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 10000")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA synchronous = NORMAL")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            })
        } else {
            opts
        };
        let pool = opts.connect(&url).await.map_err(StoreError::Connect)?;
        MIGRATOR.run(&pool).await.map_err(StoreError::Migrate)?;
        Ok(Self { pool, engine })
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A new random id: `prefix_` + 16 hex digits.
pub fn new_id(prefix: &str) -> String {
    let mut b = [0u8; 8];
    crate::crypto::random(&mut b);
    format!("{prefix}_{}", hex::encode(b))
}

/// Now as RFC 3339 in UTC, to the second (`2026-12-02T18:30:00Z`).
pub fn rfc3339_now() -> String {
    rfc3339(now_ms() / 1000)
}

/// `secs` since the epoch as RFC 3339 in UTC (the epoch itself if out of range).
pub fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_796_236_245), "2026-12-02T18:30:45Z");
    }
}
