//! The cache's background work: the Redis probe that verifies the server and closes the
//! breaker, the pub/sub subscriber that applies other instances' invalidations, the sweep that
//! reconfirms mirrored generations, and the Postgres listener that turns writes made around the
//! service into invalidations. Each flushes tier 1 whenever invalidations may have been missed
//! (a reconnect, a new Redis server), and each runs supervised (see [`crate::supervise`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::watch;

use super::{Cache, Change, InvalidationSource, Message, Notification};
use crate::domain::Region;
use crate::supervise::Tasks;

/// The Postgres channel the triggers notify on (see `migrations/postgres`).
pub const NOTIFY_CHANNEL: &str = "hotline_invalidate";

const PROBE_OPEN_EVERY: Duration = Duration::from_millis(250);
const PROBE_CLOSED_EVERY: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// A subscription that hears nothing (not even a heartbeat) this long is treated as lost.
const SUBSCRIPTION_SILENCE: Duration = Duration::from_secs(7);
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

pub struct BackgroundConfig {
    /// A Postgres URL to LISTEN on, when the store is Postgres.
    pub listen_url: Option<String>,
    pub region: Region,
    /// How often the listener sends itself a heartbeat through the database; silence for three
    /// of these is a dead connection.
    pub listen_heartbeat: Duration,
}

/// Starts the background tasks, supervised; they end when `shutdown` turns true.
pub fn spawn_background(
    cache: Arc<Cache>,
    config: BackgroundConfig,
    tasks: &Tasks,
    shutdown: watch::Receiver<bool>,
) {
    if cache.remote().is_some() {
        let (c, s) = (cache.clone(), shutdown.clone());
        tasks.spawn("redis_probe", shutdown.clone(), move || {
            probe(c.clone(), s.clone())
        });
        let (c, s) = (cache.clone(), shutdown.clone());
        tasks.spawn("redis_subscriber", shutdown.clone(), move || {
            subscribe(c.clone(), s.clone())
        });
        let (c, s) = (cache.clone(), shutdown.clone());
        tasks.spawn("generation_sweep", shutdown.clone(), move || {
            reconfirm(c.clone(), s.clone())
        });
    }
    if let Some(url) = config.listen_url {
        let (c, s) = (cache.clone(), shutdown.clone());
        let (region, heartbeat) = (config.region, config.listen_heartbeat);
        tasks.spawn("database_listener", shutdown, move || {
            listen(c.clone(), url.clone(), (region, heartbeat), s.clone())
        });
    }
}

/// Sets a liveness flag while it lives, and clears it when dropped: a task that panics or
/// stops never leaves its channel reported as connected.
struct Live<'a>(&'a AtomicBool);

impl<'a> Live<'a> {
    fn set(flag: &'a AtomicBool) -> Live<'a> {
        flag.store(true, Ordering::Release);
        Live(flag)
    }
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Sleeps, or returns true early if the service is shutting down.
pub(crate) async fn stopping(shutdown: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(pause) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(RECONNECT_MAX)
}

/// Verifies the Redis server and closes the breaker when it answers, opens it when it stops.
/// Every probe runs the handshake ([`Cache::handshake`]): a server that is not the one the
/// cache was verified against (a restart that restored old data, a failover) invalidates
/// everything before anything it holds is trusted.
async fn probe(cache: Arc<Cache>, mut shutdown: watch::Receiver<bool>) {
    let remote = cache.remote().expect("probe runs with a remote").clone();
    let mut first = true;
    loop {
        let closed = remote.breaker.is_closed();
        let pause = if closed {
            PROBE_CLOSED_EVERY
        } else {
            PROBE_OPEN_EVERY
        };
        // The first probe runs at once: the breaker starts open.
        let pause = if first { Duration::ZERO } else { pause };
        first = false;
        if stopping(&mut shutdown, pause).await {
            return;
        }
        if !closed {
            remote.set_probing(true);
        }
        let checked = match remote.info(PROBE_TIMEOUT).await {
            Ok(_) => cache.handshake(&remote, PROBE_TIMEOUT).await,
            Err(e) => Err(e),
        };
        match checked {
            Ok(_) => {
                if !remote.breaker.is_closed() {
                    remote.close_breaker();
                    tracing::info!("redis reachable and verified; circuit closed");
                }
                // Replays invalidations that failed to reach Redis (during an outage or a
                // single timed-out command) and forgets generations made up meanwhile.
                if cache.generations().reconcile().await {
                    tracing::info!("invalidations made while Redis was unreachable replayed");
                }
                let _ = remote.publish(&cache.generations().heartbeat()).await;
            }
            Err(e) => {
                if remote.breaker.is_closed() {
                    remote.open_breaker(e);
                }
            }
        }
        remote.set_probing(false);
    }
}

/// Keeps tier 1 trusted while Redis vouches for it: every mirrored generation is read from
/// Redis again well before it ages out of the mirror (`L1_MAX_AGE_S`). An unchanged one stays
/// (and with it every tier-1 entry read under it); a changed one, an invalidation this instance
/// missed, replaces it and turns those entries away. Without this, entries would leave tier 1
/// as their generations age out (every entry of a kind at once, with its kind's generation)
/// and be read again from Redis, unchanged.
async fn reconfirm(cache: Arc<Cache>, mut shutdown: watch::Receiver<bool>) {
    let every = cache.generations().reconfirm_every();
    loop {
        if stopping(&mut shutdown, every).await {
            return;
        }
        if cache.remote().is_some_and(|r| r.breaker.is_closed()) {
            let (confirmed, mirrored) = cache.generations().reconfirm_all().await;
            tracing::debug!(confirmed, mirrored, "generations reconfirmed with Redis");
        }
    }
}

/// Applies other instances' invalidations; flushes tier 1 on every (re)connect.
async fn subscribe(cache: Arc<Cache>, mut shutdown: watch::Receiver<bool>) {
    let remote = cache
        .remote()
        .expect("subscriber runs with a remote")
        .clone();
    let mut backoff = RECONNECT_MIN;
    loop {
        let connected = tokio::time::timeout(Duration::from_secs(2), async {
            let mut pubsub = remote.client().get_async_pubsub().await?;
            pubsub.subscribe(remote.channel()).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        if let Ok(Ok(pubsub)) = connected {
            backoff = RECONNECT_MIN;
            let live = Live::set(&cache.liveness().pubsub);
            // Whatever was published while we were not subscribed is lost: start afresh.
            cache.flush_local();
            tracing::info!("subscribed to invalidations");
            let mut messages = pubsub.into_on_message();
            loop {
                tokio::select! {
                    msg = tokio::time::timeout(SUBSCRIPTION_SILENCE, messages.next()) => match msg {
                        // Every instance's probe publishes a heartbeat every couple of seconds:
                        // silence this long means the connection died without closing.
                        Err(_) => break,
                        Ok(None) => break,
                        Ok(Some(msg)) => {
                            let payload: Vec<u8> = msg.get_payload_bytes().to_vec();
                            match serde_json::from_slice::<Message>(&payload) {
                                Ok(message) => cache.apply_message(&message),
                                Err(_) => tracing::warn!("ignoring a malformed invalidation message"),
                            }
                        }
                    },
                    _ = shutdown.changed() => return,
                }
            }
            // Not flushed here but on reconnect (above): until then tier-1 entries are trusted
            // only briefly (see `Liveness`), and they keep the last known values that are
            // served stale if the database fails too.
            drop(live);
            tracing::warn!("invalidation subscription lost; reconnecting (tier 1 is flushed then)");
        }
        if stopping(&mut shutdown, backoff).await {
            return;
        }
        backoff = next_backoff(backoff);
    }
}

/// What the listener hears: a change, or a heartbeat that a listener sent itself through the
/// database, carrying the database's change counter as it was then.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Heard {
    Ping(Ping),
    Change(Notification),
}

#[derive(Debug, Deserialize)]
struct Ping {
    #[allow(dead_code, reason = "matched only, to tell a ping from a change")]
    t: PingTag,
    from: String,
    seq: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PingTag {
    Ping,
}

/// How often a listener that has not yet settled its coverage looks again.
const SETTLE_EVERY: Duration = Duration::from_millis(250);

/// Settles whether the database changes made before this listener connected were heard by
/// some instance: `from` is the change counter of the listener's first heartbeat (changes
/// after it reach this listener). Another listener that claimed `from` or more heard them; if
/// none did, and no other listener is alive to claim them (none claimed anything within three
/// heartbeats), or none does within four, everything is invalidated. Only then does tier 2
/// count again (see `Liveness::l2_trusted`): until then reads go to the database. Without
/// Redis there is nothing shared to repair: tier 1 was flushed when the listener connected.
async fn settle(cache: Arc<Cache>, mut from: watch::Receiver<Option<i64>>, heartbeat: Duration) {
    let Ok(from) = from
        .wait_for(Option::is_some)
        .await
        .map(|f| f.unwrap_or_default())
    else {
        return;
    };
    if let Some(remote) = cache.remote() {
        let mut waiting_since: Option<Instant> = None;
        loop {
            if remote.breaker.is_closed() {
                if let Ok((covered, age_ms)) = remote.coverage().await {
                    let waited = waiting_since.get_or_insert_with(Instant::now).elapsed();
                    let someone_listens =
                        age_ms.is_some_and(|ms| ms < (heartbeat * 3).as_millis() as i64);
                    if covered >= from {
                        break;
                    }
                    if !someone_listens || waited > heartbeat * 4 {
                        tracing::warn!(
                            "database changes may have been made while no instance listened; invalidating everything"
                        );
                        cache
                            .invalidate(&[Change::Everything], InvalidationSource::Continuity)
                            .await;
                        if !cache.generations().owes_redis()
                            && remote.claim_coverage(from).await.is_ok()
                        {
                            break;
                        }
                    }
                }
            }
            tokio::time::sleep(SETTLE_EVERY).await;
        }
    }
    cache
        .liveness()
        .listen_settled
        .store(true, Ordering::Release);
    cache.liveness().l2_gate.store(true, Ordering::Release);
}

/// Turns Postgres notifications into invalidations; flushes tier 1 on every (re)connect,
/// because notifications sent while disconnected are lost. Every `heartbeat` it sends itself a
/// notification through the database (over a connection of its own, so that a dead database
/// is noticed too), carrying the database's change counter; hearing nothing for three
/// heartbeats means the connection died without closing (a half-open TCP connection), and it
/// reconnects. Once settled (see [`settle`]) and owing Redis nothing, each heartbeat claims
/// its counter as heard: notifications arrive in commit order, so every change committed
/// before the heartbeat was heard. (A transaction that took its counter value before the
/// heartbeat and commits after it is heard too, as long as some instance listens then; one
/// that commits while no instance listens, after one claimed past it, is the case this cannot
/// see.)
async fn listen(
    cache: Arc<Cache>,
    url: String,
    (region, heartbeat): (Region, Duration),
    mut shutdown: watch::Receiver<bool>,
) {
    let me = format!("{:016x}", cache.generations().origin());
    let pinger = match sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy(&url)
    {
        Ok(pool) => pool,
        Err(e) => {
            tracing::error!(error = %e, "DATABASE_LISTEN_URL is not usable");
            cache.liveness().l2_gate.store(true, Ordering::Release);
            std::future::pending::<()>().await;
            return;
        }
    };
    let silence = heartbeat * 3;
    let mut backoff = RECONNECT_MIN;
    loop {
        let connected = tokio::time::timeout(Duration::from_secs(2), async {
            let mut listener = sqlx::postgres::PgListener::connect(&url).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        })
        .await;
        if let Ok(Ok(mut listener)) = connected {
            backoff = RECONNECT_MIN;
            // Until settled, what Redis holds may predate changes nobody heard.
            cache.liveness().l2_gate.store(false, Ordering::Release);
            let live = Live::set(&cache.liveness().listen);
            let settled = Live(&cache.liveness().listen_settled);
            cache.flush_local();
            tracing::info!("listening for database changes");
            let (from_tx, from_rx) = watch::channel(None);
            let settling = tokio::spawn(settle(cache.clone(), from_rx, heartbeat));
            let poke = Arc::new(tokio::sync::Notify::new());
            let pings = tokio::spawn(send_pings(
                pinger.clone(),
                me.clone(),
                heartbeat,
                poke.clone(),
            ));
            loop {
                tokio::select! {
                    heard = tokio::time::timeout(silence, listener.try_recv()) => match heard {
                        Ok(Ok(Some(notification))) => {
                            match serde_json::from_str::<Heard>(notification.payload()) {
                                Ok(Heard::Ping(ping)) if ping.from == me => {
                                    from_tx.send_if_modified(|from| {
                                        from.is_none() && from.replace(ping.seq).is_none()
                                    });
                                    claim(&cache, ping.seq).await;
                                }
                                Ok(Heard::Ping(_)) => {}
                                Ok(Heard::Change(change)) => {
                                    cache
                                        .invalidate(&change.changes(region), InvalidationSource::Notify)
                                        .await;
                                    // A heartbeat soon after, so that what was heard is
                                    // claimed at once, not at the next beat.
                                    poke.notify_one();
                                }
                                // A change this instance cannot read may be any change:
                                // invalidate everything rather than claim it heard.
                                Err(_) => {
                                    tracing::warn!("a change notification could not be read; invalidating everything");
                                    cache
                                        .invalidate(&[Change::Everything], InvalidationSource::Notify)
                                        .await;
                                }
                            }
                        }
                        // Silence past the bound: the connection is dead without having closed.
                        Err(_) => {
                            tracing::warn!("database change listener heard nothing, not even its heartbeat");
                            break;
                        }
                        // `Ok(None)`: the connection was lost (sqlx would reconnect silently and
                        // lose what was sent meanwhile): reconnect ourselves, and flush.
                        Ok(Ok(None)) | Ok(Err(_)) => break,
                    },
                    _ = shutdown.changed() => {
                        pings.abort();
                        settling.abort();
                        return;
                    }
                }
            }
            pings.abort();
            settling.abort();
            drop(settled);
            // Not flushed here: while the database is unreachable, tier 1 holds the last known
            // values that are served stale (without Redis, nothing else does). Until the
            // listener is back, tier-1 entries are trusted only briefly (see `Liveness`), and
            // the reconnect above flushes what notifications may have been missed meanwhile.
            drop(live);
            tracing::warn!("database change listener lost; reconnecting (tier 1 is flushed then)");
        }
        // The database cannot be listened to: what Redis holds is the best there is (the
        // database is likely down too), so tier 2 serves.
        cache.liveness().l2_gate.store(true, Ordering::Release);
        if stopping(&mut shutdown, backoff).await {
            return;
        }
        backoff = next_backoff(backoff);
    }
}

/// Claims `seq` as heard, once the listener has settled and owes Redis nothing.
async fn claim(cache: &Cache, seq: i64) {
    let Some(remote) = cache.remote() else {
        return;
    };
    if cache.liveness().listen_settled.load(Ordering::Acquire)
        && remote.breaker.is_closed()
        && !cache.generations().owes_redis()
        && remote.claim_coverage(seq).await.is_ok()
    {
        cache
            .liveness()
            .claimed_seq
            .fetch_max(seq, Ordering::AcqRel);
    }
}

/// Sends the listener's heartbeat through the database every `every`, and when poked (after a
/// change was heard), with the change counter.
async fn send_pings(
    pool: sqlx::PgPool,
    me: String,
    every: Duration,
    poke: Arc<tokio::sync::Notify>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = poke.notified() => {}
        }
        let sent = tokio::time::timeout(
            every,
            sqlx::query(
                "select pg_notify($1, json_build_object('t', 'ping', 'from', $2::text, \
                 'seq', hotline_change_seq_value())::text)",
            )
            .bind(NOTIFY_CHANNEL)
            .bind(&me)
            .execute(&pool),
        )
        .await;
        if !matches!(sent, Ok(Ok(_))) {
            tracing::debug!("listener heartbeat not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_and_changes_are_told_apart() {
        let ping: Heard =
            serde_json::from_str(r#"{"t" : "ping", "from" : "00ab", "seq" : 42}"#).unwrap();
        assert!(matches!(ping, Heard::Ping(Ping { seq: 42, .. })));
        let change: Heard = serde_json::from_str(r#"{"t":"bulk","table":"leads"}"#).unwrap();
        assert!(matches!(change, Heard::Change(Notification::Bulk { .. })));
    }
}
