//! A fresh database per test: a new Postgres database on the test server, or a SQLite file in a
//! temporary directory. Dropped (Postgres) or deleted (SQLite) when the test ends.

use sqlx::{Connection, Executor, PgConnection};
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
