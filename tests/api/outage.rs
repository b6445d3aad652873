//! Database failures that mean "try again": how real driver errors are classified, what the
//! service answers while the database refuses writes (a read-only database), and the post-call
//! spool that keeps events until they can be applied, across a restart too.

use std::time::Duration;

use hotline::store::StoreError;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor, PgConnection, SqliteConnection};

use crate::support::db::{pg_admin_url, TestDb};

// Classification, through real errors from real servers

/// The error a statement raises on a real Postgres connection.
async fn pg_error(conn: &mut PgConnection, sql: &str) -> sqlx::Error {
    sqlx::query(sql)
        .execute(&mut *conn)
        .await
        .expect_err("the statement fails")
}

/// The SQLSTATE a driver error carries, for the assertion messages.
fn sqlstate(e: &sqlx::Error) -> String {
    e.as_database_error()
        .and_then(|db| db.code())
        .map(|c| c.into_owned())
        .unwrap_or_else(|| format!("{e:?}"))
}

#[tokio::test]
async fn postgres_errors_that_mean_try_again_are_unavailable() {
    let mut conn = PgConnection::connect(&pg_admin_url())
        .await
        .expect("connect");
    // One SQLSTATE of each class, raised by the server as it raises its own.
    for code in [
        "08006", "08001", "53300", "53100", "57P01", "57P03", "57014", "25006", "40001", "40P01",
    ] {
        let e = pg_error(
            &mut conn,
            &format!("do $$ begin raise exception 'simulated' using errcode = '{code}'; end $$"),
        )
        .await;
        assert_eq!(sqlstate(&e), code);
        let classified = StoreError::from(e);
        assert!(classified.is_unavailable(), "{code}: {classified:?}");
    }
    // What the database refuses for good stays permanent.
    for (code, sql) in [
        ("42P01", "select * from no_such_table"),
        ("22P02", "select 'x'::int"),
        ("42601", "selec 1"),
    ] {
        let e = pg_error(&mut conn, sql).await;
        assert_eq!(sqlstate(&e), code);
        let classified = StoreError::from(e);
        assert!(
            matches!(classified, StoreError::Other(_)),
            "{code}: {classified:?}"
        );
    }

    // A write in a read-only session: the server's own 25006.
    conn.execute("set session characteristics as transaction read only")
        .await
        .unwrap();
    let e = pg_error(&mut conn, "create table t (id int)").await;
    assert_eq!(sqlstate(&e), "25006");
    assert!(StoreError::from(e).is_unavailable());
    conn.close().await.ok();
}

#[tokio::test]
async fn a_real_deadlock_and_an_ended_session_are_unavailable() {
    let db = TestDb::postgres().await;
    let mut setup = db.pg_connection().await;
    setup
        .execute("create table t (id int primary key, n int); insert into t values (1, 0), (2, 0)")
        .await
        .unwrap();
    let (mut a, mut b) = (db.pg_connection().await, db.pg_connection().await);
    a.execute("begin; update t set n = n + 1 where id = 1")
        .await
        .unwrap();
    b.execute("begin; update t set n = n + 1 where id = 2")
        .await
        .unwrap();
    // Each now waits for the other's row, in whichever order they arrive: Postgres ends one
    // of them with 40P01 and the other goes on.
    let (ra, rb) = tokio::join!(
        a.execute("update t set n = n + 1 where id = 2"),
        b.execute("update t set n = n + 1 where id = 1"),
    );
    let e = match (ra, rb) {
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => e,
        other => panic!("exactly one side of the deadlock fails: {other:?}"),
    };
    assert_eq!(sqlstate(&e), "40P01");
    assert!(StoreError::from(e).is_unavailable());

    // A session ended by an administrator (57P01 on the wire, or the closed socket).
    let pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&mut setup)
        .await
        .unwrap();
    let mut admin = PgConnection::connect(&pg_admin_url()).await.unwrap();
    sqlx::query("select pg_terminate_backend($1)")
        .bind(pid)
        .execute(&mut admin)
        .await
        .unwrap();
    let e = pg_error(&mut setup, "select 1").await;
    assert!(StoreError::from(e).is_unavailable());
}

#[tokio::test]
async fn sqlite_busy_read_only_and_full_are_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.db");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let mut holder = options.connect().await.unwrap();
    holder
        .execute("create table t (id integer primary key, b blob)")
        .await
        .unwrap();

    // Another connection holds the write lock; this one does not wait for it.
    holder.execute("begin immediate").await.unwrap();
    let mut impatient = options
        .clone()
        .busy_timeout(Duration::ZERO)
        .connect()
        .await
        .unwrap();
    let e = sqlx::query("insert into t (b) values (x'00')")
        .execute(&mut impatient)
        .await
        .expect_err("the write lock is held");
    assert_eq!(sqlstate(&e), "5", "SQLITE_BUSY");
    assert!(StoreError::from(e).is_unavailable());
    holder.execute("rollback").await.unwrap();

    // A database opened read-only.
    let mut reader: SqliteConnection = options.clone().read_only(true).connect().await.unwrap();
    let e = sqlx::query("insert into t (b) values (x'00')")
        .execute(&mut reader)
        .await
        .expect_err("read-only");
    assert_eq!(sqlstate(&e), "8", "SQLITE_READONLY");
    assert!(StoreError::from(e).is_unavailable());

    // A full database (capped in pages, as a full disk would stop it).
    holder.execute("pragma max_page_count = 8").await.unwrap();
    let e = sqlx::query("insert into t (b) values (zeroblob(1000000))")
        .execute(&mut holder)
        .await
        .expect_err("full");
    assert_eq!(sqlstate(&e), "13", "SQLITE_FULL");
    assert!(StoreError::from(e).is_unavailable());

    // A wrong statement is no outage.
    let e = sqlx::query("selec 1")
        .execute(&mut reader)
        .await
        .expect_err("fails");
    assert_eq!(sqlstate(&e), "1", "SQLITE_ERROR");
    assert!(matches!(StoreError::from(e), StoreError::Other(_)));
}
