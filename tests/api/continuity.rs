//! Continuity: a write acknowledged is never followed by an older read, whatever happens to
//! Redis or to the instances in between. A Redis that restarts with the data it saved, a
//! failover to a replica that lags, an instance restarted while it could not tell Redis about a
//! write, a write made in the database while no instance listened, a LISTEN connection that
//! dies without closing. And no phone number in Redis names or messages.
//!
//! Each test counts the stale answers (the name the write replaced) over many reads across
//! the event: the count must be zero.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;

use crate::cache::{call, roomy_deadline, strs, wait_live};
use crate::support::app::{spawn_app_on, TestApp};
use crate::support::db::TestDb;
use crate::support::infra::{
    eventually, redis_conn, redis_flags, redis_url, unique_prefix, RedisServer, TcpProxy,
};
use crate::webhooks::{known_caller, KnownCaller, CALLER, ORG_PHONE};

const OLD_NAME: &str = "Maria Lopez";
const NEW_NAME: &str = "Marisol Garcia";

/// Flags for an instance whose every read goes to Redis (no tier 1), with a quick listener
/// heartbeat and no warming.
fn tier_two_flags(redis_url: &str, prefix: &str) -> Vec<String> {
    let mut flags = roomy_deadline(redis_flags(redis_url, prefix));
    flags.extend(
        [
            "--l1-max-mb",
            "0",
            "--warm-leads",
            "0",
            "--listen-heartbeat-ms",
            "200",
        ]
        .map(String::from),
    );
    flags
}

/// Waits until the known caller is answered from Redis (filled and read back).
async fn answered_from_redis(app: &TestApp, name: &str) -> bool {
    eventually(Duration::from_secs(10), || async {
        let (vars, source) = call(app, CALLER).await;
        vars["customer_name"] == name && source == "l2"
    })
    .await
}

async fn rename(app: &TestApp, known: &KnownCaller, name: &str) {
    let r = app
        .patch_admin(
            &format!("/api/leads/{}", known.lead_id()),
            &json!({"customer_name": name}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// Reads the known caller through each app `rounds` times; returns how many answers carried
/// the old name, and how many carried the new one.
async fn count_answers(apps: &[&TestApp], rounds: usize) -> (usize, usize) {
    let (mut stale, mut fresh) = (0, 0);
    for _ in 0..rounds {
        for app in apps {
            let (vars, _) = call(app, CALLER).await;
            if vars["customer_name"] == OLD_NAME {
                stale += 1;
            } else if vars["customer_name"] == NEW_NAME {
                fresh += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    (stale, fresh)
}

async fn redis_cmd(url: &str, args: &[&str]) -> redis::Value {
    let mut conn = redis_conn(url).await;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn).await.expect("redis answers")
}

/// Whether Redis at `url` holds the known caller's context with `name` in it.
async fn redis_holds_name(url: &str, prefix: &str, known: &KnownCaller, name: &str) -> bool {
    let key = format!("{prefix}:v1:lead:{}", known.lead_id());
    crate::support::infra::redis_hget(url, &key, "context")
        .await
        .is_some_and(|v| v.contains(name))
}

#[tokio::test]
async fn a_redis_restarted_from_old_data_never_serves_what_a_write_replaced() {
    let mut redis = RedisServer::start().await;
    let db = Arc::new(TestDb::postgres().await);
    let prefix = unique_prefix();
    let flags = tier_two_flags(&redis.url(), &prefix);
    let a = spawn_app_on(db.clone(), &strs(&flags)).await;
    wait_live(&a).await;
    let known = known_caller(&a).await;
    assert!(answered_from_redis(&a, OLD_NAME).await);

    // Redis saves its data (as managed Redis does), then the name changes.
    redis_cmd(&redis.url(), &["SAVE"]).await;
    rename(&a, &known, NEW_NAME).await;
    assert!(answered_from_redis(&a, NEW_NAME).await);

    // Redis restarts and loads what it saved: the old generations and the entries filled
    // under them, with the old name.
    redis.kill();
    redis.restart().await;
    assert!(
        redis_holds_name(&redis.url(), &prefix, &known, OLD_NAME).await,
        "the restarted Redis holds the old entry"
    );
    // An instance that knew the server, and one that starts now and knows nothing.
    let c = spawn_app_on(db, &strs(&flags)).await;
    let (stale, fresh) = count_answers(&[&a, &c], 60).await;
    assert_eq!(stale, 0, "stale answers after the restart ({fresh} fresh)");
    assert!(fresh > 0);
    // The restored copy is gone from Redis (a snapshot may hold what was deleted since).
    let purged = eventually(Duration::from_secs(5), || async {
        !redis_holds_name(&redis.url(), &prefix, &known, OLD_NAME).await
    })
    .await;
    assert!(purged, "the restored entries were purged");
    // And tier 2 serves again, with the new name.
    assert!(answered_from_redis(&a, NEW_NAME).await);
    assert!(answered_from_redis(&c, NEW_NAME).await);
    let (stale, _) = count_answers(&[&a, &c], 10).await;
    assert_eq!(stale, 0);
}

#[tokio::test]
async fn a_failover_to_a_lagging_replica_never_serves_what_a_write_replaced() {
    let mut primary = RedisServer::start().await;
    let port = primary.port.to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).await;
    // The instance reaches Redis through one address, as it would through a managed endpoint.
    let endpoint = TcpProxy::start(primary.addr()).await;
    let url = format!("redis://{}", endpoint.addr);
    let db = Arc::new(TestDb::postgres().await);
    let prefix = unique_prefix();
    let a = spawn_app_on(db, &strs(&tier_two_flags(&url, &prefix))).await;
    wait_live(&a).await;
    let known = known_caller(&a).await;
    assert!(answered_from_redis(&a, OLD_NAME).await);
    let replica_url = replica.url();
    let synced = eventually(Duration::from_secs(10), || {
        redis_holds_name(&replica_url, &prefix, &known, OLD_NAME)
    })
    .await;
    assert!(synced, "the replica has the entry");

    // The replica stops following (it lags from here on), the name changes on the primary,
    // then the primary dies and the endpoint fails over to the replica.
    redis_cmd(&replica.url(), &["REPLICAOF", "NO", "ONE"]).await;
    rename(&a, &known, NEW_NAME).await;
    assert!(answered_from_redis(&a, NEW_NAME).await);
    primary.kill();
    endpoint.cut();
    endpoint.retarget(replica.addr());
    endpoint.restore();
    assert!(redis_holds_name(&replica.url(), &prefix, &known, OLD_NAME).await);

    let (stale, fresh) = count_answers(&[&a], 80).await;
    assert_eq!(stale, 0, "stale answers after the failover ({fresh} fresh)");
    assert!(answered_from_redis(&a, NEW_NAME).await);
}

#[tokio::test]
async fn an_instance_restarted_while_redis_was_unreachable_loses_no_invalidation() {
    let redis = RedisServer::start().await;
    let link = TcpProxy::start(redis.addr()).await;
    let url = format!("redis://{}", link.addr);
    let db = Arc::new(TestDb::postgres().await);
    let prefix = unique_prefix();
    let flags = tier_two_flags(&url, &prefix);
    let a = spawn_app_on(db.clone(), &strs(&flags)).await;
    wait_live(&a).await;
    let known = known_caller(&a).await;
    assert!(answered_from_redis(&a, OLD_NAME).await);

    // Redis becomes unreachable (it keeps running, with its data): the write's invalidation
    // waits in the instance, which then stops before Redis is back.
    link.cut();
    let open = eventually(Duration::from_secs(5), || async {
        !a.cache.remote().unwrap().breaker.is_closed()
    })
    .await;
    assert!(open, "the instance noticed Redis is unreachable");
    rename(&a, &known, NEW_NAME).await;
    assert!(
        !a.cache.generations().reconciled(),
        "the invalidation waits"
    );
    a.stop().await;

    let b = spawn_app_on(db, &strs(&flags)).await;
    let (vars, _) = call(&b, CALLER).await;
    assert_eq!(vars["customer_name"], NEW_NAME);
    link.restore();
    assert!(
        redis_holds_name(&redis.url(), &prefix, &known, OLD_NAME).await,
        "Redis still holds the old entry"
    );
    let (stale, fresh) = count_answers(&[&b], 80).await;
    assert_eq!(
        stale, 0,
        "stale answers once Redis was back ({fresh} fresh)"
    );
    assert!(answered_from_redis(&b, NEW_NAME).await);
}

#[tokio::test]
async fn a_write_made_while_no_instance_listened_is_seen_once_one_listens() {
    let db = Arc::new(TestDb::postgres().await);
    let prefix = unique_prefix();
    let flags = tier_two_flags(&redis_url(), &prefix);
    let a = spawn_app_on(db.clone(), &strs(&flags)).await;
    wait_live(&a).await;
    let known = known_caller(&a).await;
    assert!(answered_from_redis(&a, OLD_NAME).await);
    a.stop().await;

    // Nobody listens: the Supabase dashboard renames the lead.
    let mut conn = db.pg_connection().await;
    sqlx::query("update leads set customer_name = $1 where id = $2::uuid")
        .bind(NEW_NAME)
        .bind(known.lead_id())
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(redis_holds_name(&redis_url(), &prefix, &known, OLD_NAME).await);

    let b = spawn_app_on(db, &strs(&flags)).await;
    let (stale, fresh) = count_answers(&[&b], 80).await;
    assert_eq!(
        stale, 0,
        "stale answers after the unheard write ({fresh} fresh)"
    );
    assert!(answered_from_redis(&b, NEW_NAME).await);
}

#[tokio::test]
async fn a_listen_connection_that_dies_silently_is_replaced() {
    // No Redis: tier 1 is trusted because the LISTEN connection is. Here it stops carrying
    // anything without closing (a half-open TCP connection).
    let db = Arc::new(TestDb::postgres().await);
    let link = TcpProxy::start(db.pg_addr()).await;
    let listen_url = db.pg_url_via(link.addr);
    let a = spawn_app_on(
        db.clone(),
        &[
            "--database-listen-url",
            &listen_url,
            "--listen-heartbeat-ms",
            "200",
            "--l1-max-age-s",
            "600",
            "--warm-leads",
            "0",
        ],
    )
    .await;
    wait_live(&a).await;
    known_caller(&a).await;
    let cached = eventually(Duration::from_secs(5), || async {
        let (vars, source) = call(&a, CALLER).await;
        vars["customer_name"] == OLD_NAME && source == "l1"
    })
    .await;
    assert!(cached, "the caller is answered from tier 1");

    link.stall();
    let mut conn = db.pg_connection().await;
    sqlx::query("update leads set customer_name = $1 where phone_number = $2")
        .bind(NEW_NAME)
        .bind(CALLER)
        .execute(&mut conn)
        .await
        .unwrap();
    // Three silent heartbeats (0.6 s) and the listener reconnects, flushing tier 1: far
    // sooner than the ten minutes tier 1 would otherwise be trusted.
    let seen = eventually(Duration::from_secs(10), || async {
        call(&a, CALLER).await.0["customer_name"] == NEW_NAME
    })
    .await;
    assert!(seen, "the write made during the silence was seen");
    // Notifications flow again on the new connection.
    sqlx::query("update leads set customer_name = $1 where phone_number = $2")
        .bind("Dana Whitfield")
        .bind(CALLER)
        .execute(&mut conn)
        .await
        .unwrap();
    let seen = eventually(Duration::from_secs(10), || async {
        call(&a, CALLER).await.0["customer_name"] == "Dana Whitfield"
    })
    .await;
    assert!(seen, "notifications reach the new connection");
    assert!(a.cache.liveness().listen.load(Ordering::Acquire));
}

/// The ways a phone number could be written in a key or a message.
fn spellings(phone: &str) -> [String; 2] {
    let digits = phone.trim_start_matches('+').to_string();
    let national = digits[1..].to_string();
    [digits, national]
}

#[tokio::test]
async fn no_phone_number_is_in_redis_names_or_messages_and_a_deleted_lead_leaves_nothing() {
    let db = Arc::new(TestDb::postgres().await);
    let prefix = unique_prefix();
    let url = redis_url();
    // Every message on the invalidation channel, from before the instance starts.
    let heard: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut pubsub = redis::Client::open(url.as_str())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    pubsub
        .subscribe(format!("{prefix}:v1:invalidate"))
        .await
        .unwrap();
    let sink = heard.clone();
    let listener = tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        while let Some(m) = messages.next().await {
            let text: String = m.get_payload().unwrap_or_default();
            sink.lock().unwrap().push(text);
        }
    });

    let mut flags = roomy_deadline(redis_flags(&url, &prefix));
    flags.extend(["--warm-leads", "0"].map(String::from));
    let a = spawn_app_on(db, &strs(&flags)).await;
    wait_live(&a).await;
    let known = known_caller(&a).await;
    let stranger = "+16127654321";
    let moved_to = "+16125550199";
    // Known and unknown callers are looked up (and cached), the lead moves to a new number,
    // the organization is renamed: every kind of key and message is written.
    let filled = eventually(Duration::from_secs(10), || async {
        call(&a, CALLER).await;
        redis_holds_name(&url, &prefix, &known, OLD_NAME).await
    })
    .await;
    assert!(filled, "the caller's answer reached Redis");
    call(&a, stranger).await;
    let r = a
        .patch_admin(
            &format!("/api/leads/{}", known.lead_id()),
            &json!({"phone_number": moved_to}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = a
        .patch_admin(
            &format!("/api/organizations/{}", known.org_id()),
            &json!({"name": "Acme Dental Care"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    call(&a, moved_to).await;
    call(&a, stranger).await;

    let keys = all_keys(&url, &prefix).await;
    assert!(
        keys.iter().any(|k| k.contains(":leadphone:")),
        "phone lookups are cached: {keys:?}"
    );
    let messages = heard.lock().unwrap().clone();
    assert!(!messages.is_empty());
    for phone in [CALLER, stranger, moved_to, ORG_PHONE] {
        for spelling in spellings(phone) {
            for key in &keys {
                assert!(!key.contains(&spelling), "{key} names {phone}");
            }
            for message in &messages {
                assert!(!message.contains(&spelling), "{message} names {phone}");
            }
        }
    }

    // Deleted: nothing of the lead stays in Redis, not its id, not its number's tag.
    let tag = a.phone_tag(moved_to);
    assert!(
        keys.iter().any(|k| k.contains(&tag)),
        "the lead's number was cached under its tag"
    );
    let r = a
        .delete_admin(&format!("/api/leads/{}", known.lead_id()))
        .await;
    assert_eq!(r.status(), 204);
    // The delete's own invalidation removes it at once; the change notifications of the
    // delete (its conversations, then the lead) arrive within milliseconds and end the same.
    let gone = eventually(Duration::from_secs(5), || async {
        all_keys(&url, &prefix)
            .await
            .iter()
            .all(|k| !k.contains(known.lead_id()) && !k.contains(&tag))
    })
    .await;
    let left: Vec<String> = all_keys(&url, &prefix)
        .await
        .into_iter()
        .filter(|k| k.contains(known.lead_id()) || k.contains(&tag))
        .collect();
    assert!(gone, "keys outlived the deleted lead: {left:?}");
    listener.abort();
}

/// Every key under the prefix.
async fn all_keys(url: &str, prefix: &str) -> Vec<String> {
    let mut conn = redis_conn(url).await;
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

#[tokio::test]
async fn health_reports_every_background_task_and_whether_it_runs() {
    let db = Arc::new(TestDb::postgres().await);
    let flags = roomy_deadline(redis_flags(&redis_url(), &unique_prefix()));
    let a = spawn_app_on(db, &strs(&flags)).await;
    wait_live(&a).await;
    let r = a
        .client
        .get(a.url("/api/monitoring/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let background = &body["checks"]["background"];
    assert_eq!(background["status"], "up", "{body}");
    // Every task the metric names is there, running, and nothing else is.
    let names: Vec<&str> = background["tasks"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = hotline::monitoring::metrics::BACKGROUND_TASKS.to_vec();
    expected.sort();
    assert_eq!(names, expected, "{body}");
    for task in expected {
        let t = &background["tasks"][task];
        assert_eq!(t["running"], true, "{task}: {body}");
        assert_eq!(t["restarts"], 0, "{task}: {body}");
    }
}
