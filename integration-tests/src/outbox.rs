//! Databases and relays for the outbox tests: a fresh database per test (PostgreSQL in the
//! server `scripts/postgres.sh` runs on loopback, or a SQLite file), an application table of
//! orders beside the outbox, and the relay as a process of its own (`ferromq-outbox-relay`).

use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferromq_client::outbox::{OutboxConfig, OutboxDatabase};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{ConnectOptions, Pool, Postgres, Sqlite};

use crate::{binary, Process};

/// A database the outbox tests run against, with the application's own table of orders.
pub trait TestDatabase: OutboxDatabase {
    const NAME: &'static str;

    /// A fresh, empty database (files under `dir` if it has any): its pool and the URL a
    /// relay process opens.
    fn create(dir: &Path) -> impl Future<Output = (Pool<Self>, String)> + Send;

    /// Inserts order `id` on `connection` (inside the caller's transaction).
    fn insert_order(
        connection: &mut Self::Connection,
        id: i64,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    fn count_orders(pool: &Pool<Self>) -> impl Future<Output = i64> + Send;

    /// Rows in the outbox table and in its archive.
    fn count_rows(pool: &Pool<Self>) -> impl Future<Output = (i64, i64)> + Send;

    /// When the archived row with this dedup key was sent (`None`: no such row archived).
    fn archived_sent_ms(
        pool: &Pool<Self>,
        dedup_key: &str,
    ) -> impl Future<Output = Option<i64>> + Send;

    /// Runs statements without parameters; panics if one fails.
    fn execute(pool: &Pool<Self>, sql: &'static str) -> impl Future<Output = ()> + Send;
}

const ORDERS_TABLE: &str = "CREATE TABLE orders (id BIGINT PRIMARY KEY, item TEXT NOT NULL)";

/// The statements on the orders table (and the outbox's counts), the same on both databases.
macro_rules! order_queries {
    ($db:ty) => {
        async fn insert_order(
            connection: &mut <$db as sqlx::Database>::Connection,
            id: i64,
        ) -> Result<(), sqlx::Error> {
            sqlx::query("INSERT INTO orders (id, item) VALUES ($1, 'book')")
                .bind(id)
                .execute(connection)
                .await
                .map(|_| ())
        }

        async fn count_orders(pool: &Pool<$db>) -> i64 {
            sqlx::query_scalar("SELECT COUNT(*) FROM orders")
                .fetch_one(pool)
                .await
                .expect("count orders")
        }

        async fn count_rows(pool: &Pool<$db>) -> (i64, i64) {
            sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM ferromq_outbox),
                        (SELECT COUNT(*) FROM ferromq_outbox_archive)",
            )
            .fetch_one(pool)
            .await
            .expect("count rows")
        }

        async fn archived_sent_ms(pool: &Pool<$db>, dedup_key: &str) -> Option<i64> {
            sqlx::query_scalar("SELECT sent_ms FROM ferromq_outbox_archive WHERE dedup_key = $1")
                .bind(dedup_key)
                .fetch_optional(pool)
                .await
                .expect("read the archive")
                .flatten()
        }

        async fn execute(pool: &Pool<$db>, sql: &'static str) {
            sqlx::raw_sql(sql)
                .execute(pool)
                .await
                .unwrap_or_else(|err| panic!("{sql}: {err}"));
        }
    };
}

impl TestDatabase for Postgres {
    const NAME: &'static str = "postgres";

    async fn create(_dir: &Path) -> (Pool<Postgres>, String) {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let server = postgres_server_url();
        let name = format!(
            "outbox_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = PgConnectOptions::from_str(&server)
            .expect("server URL")
            .connect()
            .await
            .unwrap_or_else(|err| panic!("connecting to {server}: {err}"));
        // Left over from an earlier run of a process with the same id.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name}"
        )))
        .execute(&mut admin)
        .await
        .expect("drop database");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create database");
        let url = with_database(&server, &name);
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect(&url)
            .await
            .expect("connect to the test database");
        sqlx::raw_sql(ORDERS_TABLE)
            .execute(&pool)
            .await
            .expect("orders table");
        (pool, url)
    }

    order_queries!(Postgres);
}

impl TestDatabase for Sqlite {
    const NAME: &'static str = "sqlite";

    async fn create(dir: &Path) -> (Pool<Sqlite>, String) {
        let url = format!("sqlite://{}", dir.join("app.sqlite").display());
        let pool = sqlite_pool(&url).await;
        sqlx::raw_sql(ORDERS_TABLE)
            .execute(&pool)
            .await
            .expect("orders table");
        (pool, url)
    }

    order_queries!(Sqlite);
}

/// `url` (`postgres://user:password@host:port/db?options`) naming database `name` instead.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, ""), |(b, q)| (b, q));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority..].find('/') {
        Some(slash) => &base[..authority + slash],
        None => base,
    };
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{server}/{name}{query}")
}

/// A pool on a SQLite file shared with other processes: WAL, and a busy timeout so writers
/// wait for each other instead of failing.
pub async fn sqlite_pool(url: &str) -> Pool<Sqlite> {
    let options = SqliteConnectOptions::from_str(url)
        .expect("SQLite URL")
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(30));
    SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .unwrap_or_else(|err| panic!("opening {url}: {err}"))
}

/// The URL of the test PostgreSQL server: `TEST_POSTGRES_URL`, or the one
/// `scripts/postgres.sh start` starts (or finds running).
pub fn postgres_server_url() -> String {
    if let Ok(url) = std::env::var("TEST_POSTGRES_URL") {
        return url;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres.sh");
    let output = Command::new(&script)
        .arg("start")
        .output()
        .unwrap_or_else(|err| panic!("running {}: {err}", script.display()));
    assert!(
        output.status.success(),
        "{} start failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Starts `ferromq-outbox-relay` against `database_url`, sending through `nameserver`, with
/// `config` and extra environment (`FAILPOINTS`, say).
pub fn start_relay_process(
    name: &str,
    log_dir: &Path,
    nameserver: &str,
    database_url: &str,
    config: &OutboxConfig,
    env: &[(&str, &str)],
) -> Process {
    let config = serde_json::to_string(config).expect("config as JSON");
    let mut command = Command::new(binary("ferromq-outbox-relay"));
    command.args([nameserver, database_url, &config, name]);
    for (key, value) in env {
        command.env(key, value);
    }
    Process::spawn(name, &mut command, log_dir)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_database_url_names_another_database() {
        assert_eq!(
            super::with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            super::with_database("postgres://u:p@h/db?sslmode=disable", "t2"),
            "postgres://u:p@h/t2?sslmode=disable"
        );
        assert_eq!(
            super::with_database("postgres://h:1", "t3"),
            "postgres://h:1/t3"
        );
    }
}
