//! Database failures that mean "try again": how real driver errors are classified, what the
//! service answers while the database refuses writes (a read-only database), and the post-call
//! spool that keeps events until they can be applied, across a restart too.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hotline::domain::Region;
use hotline::lookup::Lookup;
use hotline::postcall::{DrainReport, Drainer};
use hotline::spool::Spool;
use hotline::store::StoreError;
use serde_json::{json, Value};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor, PgConnection, SqliteConnection};
use uuid::Uuid;

use crate::cache::{call, strs, wait_live};
use crate::faults::transcription;
use crate::support::app::{assert_error, spawn_app_on, spawn_app_with, TestApp, ELEVENLABS_SECRET};
use crate::support::db::{pg_admin_url, TestDb};
use crate::support::infra::{eventually, redis_flags, redis_url, unique_prefix};
use crate::webhooks::{known_caller, CALLER};

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

// A database that refuses writes (read-only): writes answer 503, post-call events wait

/// The names of the files in a spool directory, sorted.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn waiting_in(dir: &Path) -> usize {
    files_in(dir)
        .iter()
        .filter(|f| f.ends_with(".json"))
        .count()
}

/// How many conversations the database holds for an ElevenLabs `conversation_id`.
async fn conversations_with(db: &TestDb, external_id: &str) -> i64 {
    let mut conn = db.pg_connection().await;
    sqlx::query_scalar("select count(*) from conversations where external_id = $1")
        .bind(external_id)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// The value of an unlabelled series in `/metrics`.
async fn gauge(app: &TestApp, name: &str) -> f64 {
    let text = app.metrics_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

fn new_conversation_id() -> String {
    format!("conv_{}", Uuid::new_v4().simple())
}

#[tokio::test]
async fn on_a_read_only_database_writes_answer_503_and_post_call_events_wait_for_it() {
    let db = Arc::new(TestDb::postgres().await);
    let app = spawn_app_on(db.clone(), &[]).await;
    let known = known_caller(&app).await;
    assert_eq!(gauge(&app, "hotline_spool_depth").await, 0.0);
    assert_eq!(gauge(&app, "hotline_spool_bytes").await, 0.0);

    db.set_read_only(true).await;
    // Writes are refused with 503 and a JSON error, never a 500.
    let r = app
        .post_admin(
            "/api/organizations",
            &json!({"name": "Beta Clinic", "phone_number": "+16125550100"}),
        )
        .await;
    assert_eq!(assert_error(r, 503).await, "service_unavailable");
    let r = app
        .patch_admin(
            &format!("/api/leads/{}", known.lead_id()),
            &json!({"customer_name": "Someone Else"}),
        )
        .await;
    assert_eq!(assert_error(r, 503).await, "service_unavailable");
    // Reads still work, and so does the webhook.
    let r = app
        .get_admin(&format!("/api/leads/{}", known.lead_id()))
        .await;
    assert_eq!(r.status(), 200);
    let (vars, source) = call(&app, CALLER).await;
    assert_eq!(vars["customer_name"], "Maria Lopez", "{source}");

    // A post-call event is kept, not refused.
    let external_id = new_conversation_id();
    let event = transcription(&external_id, CALLER);
    let r = app.post_call_signed(&event, ELEVENLABS_SECRET, 0).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status": "spooled"})
    );
    assert_eq!(waiting_in(app.spool_dir.path()), 1);
    assert_eq!(gauge(&app, "hotline_spool_depth").await, 1.0);
    assert_eq!(gauge(&app, "hotline_spool_bytes").await, event.len() as f64);
    assert_eq!(conversations_with(&db, &external_id).await, 0);

    db.set_read_only(false).await;
    let applied = eventually(Duration::from_secs(30), || async {
        conversations_with(&db, &external_id).await == 1
    })
    .await;
    assert!(
        applied,
        "the event was applied once the database took writes"
    );
    let drained = eventually(Duration::from_secs(10), || async {
        waiting_in(app.spool_dir.path()) == 0
    })
    .await;
    assert!(drained, "{:?}", files_in(app.spool_dir.path()));
    assert!(
        files_in(app.spool_dir.path()).is_empty(),
        "nothing set aside: {:?}",
        files_in(app.spool_dir.path())
    );
    assert_eq!(
        conversations_with(&db, &external_id).await,
        1,
        "exactly once"
    );
    assert_eq!(gauge(&app, "hotline_spool_depth").await, 0.0);
    assert_eq!(gauge(&app, "hotline_spool_bytes").await, 0.0);
    let r = app
        .post_admin(
            "/api/organizations",
            &json!({"name": "Beta Clinic", "phone_number": "+16125550100"}),
        )
        .await;
    assert_eq!(r.status(), 201, "writes are taken again");
}

#[tokio::test]
async fn reads_that_fail_with_a_transient_error_serve_stale_values() {
    // One-second TTLs, an hour of grace, and Redis: what was read stays there past its TTL.
    let db = Arc::new(TestDb::postgres().await);
    let mut flags = redis_flags(&redis_url(), &unique_prefix());
    flags.extend(
        [
            "--ttl-context-s",
            "1",
            "--ttl-lead-s",
            "1",
            "--ttl-org-s",
            "1",
            "--stale-grace-s",
            "3600",
            "--warm-leads",
            "0",
            "--webhook-deadline-ms",
            "2000",
        ]
        .map(String::from),
    );
    let app = spawn_app_on(db.clone(), &strs(&flags)).await;
    wait_live(&app).await;
    let known = known_caller(&app).await;
    let cached = eventually(Duration::from_secs(10), || async {
        let (vars, source) = call(&app, CALLER).await;
        source == "l1" && vars["customer_name"] == "Maria Lopez"
    })
    .await;
    assert!(cached, "the known caller is cached");
    // The instance has claimed every change so far as heard: when the database ends its
    // sessions below, the listener reconnects with nothing to doubt.
    let mut conn = db.pg_connection().await;
    let seq: i64 = sqlx::query_scalar("select hotline_change_seq_value()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let claimed = eventually(Duration::from_secs(10), || async {
        app.cache.liveness().claimed_seq.load(Ordering::Acquire) >= seq
    })
    .await;
    assert!(claimed, "the instance claimed the changes it heard");

    // Every table is locked by another session, and this database's sessions give up waiting
    // for a lock at once: each query fails with 55P03 (lock not available).
    db.set_default("lock_timeout", "20ms").await;
    let mut holder = db.pg_connection().await;
    holder
        .execute("begin; lock table organizations, leads, conversations in access exclusive mode")
        .await
        .unwrap();
    let stale = eventually(Duration::from_secs(10), || async {
        let (vars, source) = call(&app, CALLER).await;
        source == "stale" && vars["customer_name"] == "Maria Lopez"
    })
    .await;
    assert!(stale, "the last known values are served, marked stale");
    let r = app
        .patch_admin(
            &format!("/api/leads/{}", known.lead_id()),
            &json!({"customer_name": "Someone Else"}),
        )
        .await;
    assert_eq!(assert_error(r, 503).await, "service_unavailable");

    holder.execute("rollback").await.unwrap();
    let fresh = eventually(Duration::from_secs(10), || async {
        let (vars, source) = call(&app, CALLER).await;
        source != "stale" && vars["customer_name"] == "Maria Lopez"
    })
    .await;
    assert!(fresh, "fresh answers once the locks are gone");
}

#[tokio::test]
async fn the_drainer_keeps_events_the_database_cannot_take_yet_and_sets_aside_only_bad_ones() {
    let db = Arc::new(TestDb::postgres().await);
    let app = spawn_app_on(db.clone(), &[]).await;
    known_caller(&app).await;
    // A spool of the test's own, drained by hand, pass by pass.
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1 << 20).unwrap();
    let external_id = new_conversation_id();
    let good = spool
        .append(transcription(&external_id, CALLER).into_bytes())
        .await
        .unwrap();
    let lookup = Arc::new(Lookup::new(app.store.clone(), app.cache.clone()));
    let mut drainer = Drainer::new(lookup, spool.clone(), Region::default());

    db.set_read_only(true).await;
    for _ in 0..3 {
        let report = drainer.pass().await;
        assert_eq!(
            report,
            DrainReport {
                applied: 0,
                kept: 1,
                set_aside: 0,
                database_failing: true
            }
        );
        assert!(good.exists(), "kept: {:?}", files_in(dir.path()));
    }

    // What can never be applied is set aside; what can waits for the database.
    spool.append(b"not json".to_vec()).await.unwrap();
    spool
        .append(
            json!({"type": "post_call_transcription", "data": {"agent_id": "a"}})
                .to_string()
                .into_bytes(),
        )
        .await
        .unwrap();
    db.set_read_only(false).await;
    let mut total = DrainReport::default();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let drained = loop {
        let report = drainer.pass().await;
        total.applied += report.applied;
        total.set_aside += report.set_aside;
        if report.kept == 0 {
            break true;
        }
        if std::time::Instant::now() > until {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(drained, "{total:?}: {:?}", files_in(dir.path()));
    assert_eq!((total.applied, total.set_aside), (1, 2));
    assert_eq!(conversations_with(&db, &external_id).await, 1);
    let files = files_in(dir.path());
    assert_eq!(
        files.iter().filter(|f| f.ends_with(".rejected")).count(),
        2,
        "{files:?}"
    );
    assert_eq!((spool.depth(), spool.bytes()), (0, 0));
}

#[tokio::test]
async fn a_full_spool_answers_503_for_an_event_it_cannot_keep() {
    let db = Arc::new(TestDb::postgres().await);
    let app = spawn_app_on(db.clone(), &["--spool-max-mb", "0"]).await;
    known_caller(&app).await;
    db.set_read_only(true).await;
    let external_id = new_conversation_id();
    let r = app
        .post_call_signed(&transcription(&external_id, CALLER), ELEVENLABS_SECRET, 0)
        .await;
    assert_eq!(assert_error(r, 503).await, "service_unavailable");
    assert!(files_in(app.spool_dir.path()).is_empty());
    db.set_read_only(false).await;
    assert_eq!(conversations_with(&db, &external_id).await, 0);
}

#[tokio::test]
async fn a_restarted_instance_drains_the_spool_the_previous_one_left() {
    let db = Arc::new(TestDb::postgres().await);
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().to_path_buf();
    let set_spool = |args: &mut hotline::config::ServeArgs| args.spool_dir = spool_dir.clone();
    let first = spawn_app_with(db.clone(), &[], set_spool).await;
    let lead_id = known_caller(&first).await.lead_id().to_string();
    db.set_read_only(true).await;
    let ids: Vec<String> = (0..3).map(|_| new_conversation_id()).collect();
    for id in &ids {
        let r = first
            .post_call_signed(&transcription(id, CALLER), ELEVENLABS_SECRET, 0)
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"status": "spooled"})
        );
    }
    first.stop().await;
    assert_eq!(waiting_in(dir.path()), 3);
    // And what a crash between writing and renaming would have left.
    std::fs::write(
        dir.path().join("000000000000000000000001-x.tmp"),
        b"{\"half",
    )
    .unwrap();

    // The database is back; a new process opens the same spool.
    db.set_read_only(false).await;
    let second = spawn_app_with(db.clone(), &[], set_spool).await;
    let drained = eventually(Duration::from_secs(30), || async {
        files_in(dir.path()).is_empty()
    })
    .await;
    assert!(drained, "{:?}", files_in(dir.path()));
    for id in &ids {
        assert_eq!(conversations_with(&db, id).await, 1, "{id} applied once");
    }
    assert_eq!(gauge(&second, "hotline_spool_depth").await, 0.0);
    let r = second
        .get_admin(&format!("/api/leads/{lead_id}/conversations?limit=100"))
        .await;
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2 + ids.len());
}
