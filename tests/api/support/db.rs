//! A fresh database per test: a new Postgres database on the test server, or a SQLite file in a
//! temporary directory. Dropped (Postgres) or deleted (SQLite) when the test ends.

use std::net::{SocketAddr, ToSocketAddrs};

use sqlx::{Connection, Executor, PgConnection, SqliteConnection};
use uuid::Uuid;

/// The server tests create their databases on; `HOTLINE_TEST_DATABASE_URL` overrides it.
pub fn pg_admin_url() -> String {
    std::env::var("HOTLINE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into())
}

pub struct TestDb {
    pub url: String,
    kind: Kind,
}

enum Kind {
    Postgres { name: String, admin_url: String },
    Sqlite { _dir: tempfile::TempDir },
}

impl TestDb {
    pub async fn postgres() -> TestDb {
        let admin_url = pg_admin_url();
        let name = format!("hotline_test_{}", Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("test Postgres at {admin_url} is not reachable: {e}"));
        conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .expect("create test database");
        conn.close().await.ok();
        let base = admin_url
            .rsplit_once('/')
            .map(|(base, _)| base.to_string())
            .expect("admin URL has a database path");
        TestDb {
            url: format!("{base}/{name}"),
            kind: Kind::Postgres { name, admin_url },
        }
    }

    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("hotline.db").display());
        TestDb {
            url,
            kind: Kind::Sqlite { _dir: dir },
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.kind, Kind::Postgres { .. })
    }

    /// A direct connection, for tests that write around the service as other writers do.
    pub async fn pg_connection(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.expect("connect")
    }

    /// A direct connection to the SQLite file, for writes made around the service.
    pub async fn sqlite_connection(&self) -> SqliteConnection {
        assert!(!self.is_postgres(), "a SQLite test database");
        SqliteConnection::connect(&self.url).await.expect("connect")
    }

    /// Makes this database read-only (or writable again) for every new session, and ends the
    /// sessions open on it so that pools reconnect under the new setting: reads still work,
    /// writes fail with SQLSTATE 25006, as on a replica or during maintenance. Nothing outside
    /// this test's own database changes.
    pub async fn set_read_only(&self, read_only: bool) {
        let value = if read_only { "on" } else { "off" };
        self.set_default("default_transaction_read_only", value)
            .await;
    }

    /// Sets a setting's default for every new session on this database (`ALTER DATABASE … SET`)
    /// and ends the sessions open on it, so that pools reconnect under it.
    pub async fn set_default(&self, setting: &str, value: &str) {
        let Kind::Postgres { name, admin_url } = &self.kind else {
            panic!("a Postgres test database");
        };
        let mut conn = PgConnection::connect(admin_url).await.expect("connect");
        conn.execute(format!(r#"ALTER DATABASE "{name}" SET {setting} = '{value}'"#).as_str())
            .await
            .expect("alter database");
        sqlx::query(
            "select pg_terminate_backend(pid) from pg_stat_activity \
             where datname = $1 and pid <> pg_backend_pid()",
        )
        .bind(name)
        .execute(&mut conn)
        .await
        .expect("end the database's sessions");
        conn.close().await.ok();
    }

    /// The Postgres server's address (for a proxy in front of it).
    pub fn pg_addr(&self) -> SocketAddr {
        let (_, authority, _) = self.pg_parts();
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        let host = if host.contains(':') {
            host.to_string()
        } else {
            format!("{host}:5432")
        };
        host.to_socket_addrs()
            .expect("a resolvable Postgres address")
            .next()
            .expect("an address")
    }

    /// This database's URL with the server's address replaced by `addr` (a proxy).
    pub fn pg_url_via(&self, addr: SocketAddr) -> String {
        let (scheme, authority, path) = self.pg_parts();
        let user = authority
            .rsplit_once('@')
            .map(|(user, _)| format!("{user}@"))
            .unwrap_or_default();
        format!("{scheme}://{user}{addr}/{path}")
    }

    /// (scheme, user@host:port, database[?query]) of the Postgres URL.
    fn pg_parts(&self) -> (&str, &str, &str) {
        assert!(self.is_postgres(), "a Postgres test database");
        let (scheme, rest) = self.url.split_once("://").expect("a URL");
        let (authority, path) = rest.split_once('/').expect("a database path");
        (scheme, authority, path)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Kind::Postgres { name, admin_url } = &self.kind {
            let (name, admin_url) = (name.clone(), admin_url.clone());
            // Drop runs outside any async context we may block on: use a thread of its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    if let Ok(mut conn) = PgConnection::connect(&admin_url).await {
                        let _ = conn
                            .execute(
                                format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#)
                                    .as_str(),
                            )
                            .await;
                    }
                });
            })
            .join();
        }
    }
}
