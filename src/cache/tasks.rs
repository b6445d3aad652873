//! The cache's background work: the Redis probe that closes the breaker, the pub/sub
//! subscriber that applies other instances' invalidations, and the Postgres listener that
//! turns writes made around the service into invalidations. Each flushes tier 1 whenever
//! invalidations may have been missed (a reconnect, a Redis restart).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::watch;
use uuid::Uuid;

use super::{Cache, CacheKey, GenKey, InvalidationSource, Kind, Message};
use crate::domain::{Phone, Region};

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
}

/// Starts the background tasks; they end when `shutdown` turns true.
pub fn spawn_background(
    cache: Arc<Cache>,
    config: BackgroundConfig,
    shutdown: watch::Receiver<bool>,
) {
    if cache.remote().is_some() {
        tokio::spawn(probe(cache.clone(), shutdown.clone()));
        tokio::spawn(subscribe(cache.clone(), shutdown.clone()));
        tokio::spawn(reconfirm(cache.clone(), shutdown.clone()));
    }
    if let Some(url) = config.listen_url {
        tokio::spawn(listen(cache, url, config.region, shutdown));
    }
}

/// Sleeps, or returns true early if the service is shutting down.
async fn stopping(shutdown: &mut watch::Receiver<bool>, pause: Duration) -> bool {
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

/// Closes the breaker when Redis answers, opens it when it stops, and notices restarts.
async fn probe(cache: Arc<Cache>, mut shutdown: watch::Receiver<bool>) {
    let remote = cache.remote().expect("probe runs with a remote").clone();
    let mut known_run_id: Option<String> = None;
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
        match remote.info(PROBE_TIMEOUT).await {
            Ok(info) => {
                if known_run_id.as_deref().is_some_and(|id| id != info.run_id) {
                    tracing::warn!("redis restarted (new run_id); flushing tier 1");
                    cache.flush_local();
                }
                known_run_id = Some(info.run_id);
                if !remote.breaker.is_closed() {
                    remote.close_breaker();
                    tracing::info!("redis reachable; circuit closed");
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
            cache.liveness().pubsub.store(true, Ordering::Release);
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
            cache.liveness().pubsub.store(false, Ordering::Release);
            tracing::warn!("invalidation subscription lost; reconnecting (tier 1 is flushed then)");
        }
        if stopping(&mut shutdown, backoff).await {
            return;
        }
        backoff = next_backoff(backoff);
    }
}

/// A row change reported by the triggers.
#[derive(Debug, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Change {
    Organization {
        id: Uuid,
        phone: Option<String>,
        old_phone: Option<String>,
    },
    Lead {
        id: Uuid,
        org: Uuid,
        old_org: Option<Uuid>,
        phone: Option<String>,
        old_phone: Option<String>,
    },
    Conversation {
        lead: Uuid,
    },
    /// Deleted leads, in chunks.
    LeadRows {
        rows: Vec<LeadRow>,
    },
    /// The leads whose conversations were deleted, in chunks.
    ConversationLeads {
        leads: Vec<Uuid>,
    },
    /// Too many rows changed in one statement to list them.
    Bulk {
        table: String,
    },
    /// A table was truncated.
    Truncate {
        table: String,
    },
}

#[derive(Debug, Deserialize)]
struct LeadRow {
    id: Uuid,
    org: Uuid,
    phone: Option<String>,
}

/// What a change notification invalidates.
fn invalidation_for(change: Change, region: Region) -> (Vec<GenKey>, Vec<CacheKey>) {
    let phone = |p: Option<String>| p.and_then(|p| Phone::parse(&p, region).ok());
    match change {
        Change::Organization {
            id,
            phone: new,
            old_phone,
        } => {
            let mut gens = vec![GenKey::Organization(id)];
            let mut forget = vec![CacheKey::Organization(id)];
            for p in [phone(new), phone(old_phone)].into_iter().flatten() {
                gens.push(GenKey::OrganizationPhone(p.clone()));
                forget.push(CacheKey::OrganizationByPhone(p));
            }
            (gens, forget)
        }
        Change::Lead {
            id,
            org,
            old_org,
            phone: new,
            old_phone,
        } => {
            let mut gens = vec![GenKey::Lead(id)];
            let mut forget = super::lead_derived_keys(id);
            if let Some(p) = phone(new) {
                gens.push(GenKey::LeadPhone(org, p.clone()));
                forget.push(CacheKey::LeadByPhone(org, p));
            }
            if let Some(p) = phone(old_phone) {
                let o = old_org.unwrap_or(org);
                gens.push(GenKey::LeadPhone(o, p.clone()));
                forget.push(CacheKey::LeadByPhone(o, p));
            }
            (gens, forget)
        }
        Change::Conversation { lead } => (vec![GenKey::Lead(lead)], super::lead_derived_keys(lead)),
        Change::LeadRows { rows } => {
            let mut gens = Vec::with_capacity(rows.len() * 2);
            let mut forget = Vec::with_capacity(rows.len() * 9);
            for row in rows {
                gens.push(GenKey::Lead(row.id));
                forget.extend(super::lead_derived_keys(row.id));
                if let Some(p) = phone(row.phone) {
                    gens.push(GenKey::LeadPhone(row.org, p.clone()));
                    forget.push(CacheKey::LeadByPhone(row.org, p));
                }
            }
            (gens, forget)
        }
        Change::ConversationLeads { leads } => {
            let forget = leads
                .iter()
                .flat_map(|l| super::lead_derived_keys(*l))
                .collect();
            (leads.into_iter().map(GenKey::Lead).collect(), forget)
        }
        Change::Truncate { .. } => (
            Kind::ALL.iter().map(|k| GenKey::Kind(*k)).collect(),
            Vec::new(),
        ),
        Change::Bulk { table } => {
            let kinds: &[Kind] = match table.as_str() {
                "organizations" => &[Kind::Organization, Kind::Context, Kind::Greeting],
                "conversations" => &[Kind::Context, Kind::Summary, Kind::Greeting, Kind::History],
                _ => &Kind::ALL,
            };
            (kinds.iter().map(|k| GenKey::Kind(*k)).collect(), Vec::new())
        }
    }
}

/// Turns Postgres notifications into invalidations; flushes tier 1 on every (re)connect,
/// because notifications sent while disconnected are lost.
async fn listen(
    cache: Arc<Cache>,
    url: String,
    region: Region,
    mut shutdown: watch::Receiver<bool>,
) {
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
            cache.liveness().listen.store(true, Ordering::Release);
            cache.flush_local();
            tracing::info!("listening for database changes");
            loop {
                tokio::select! {
                    n = listener.try_recv() => match n {
                        Ok(Some(notification)) => {
                            match serde_json::from_str::<Change>(notification.payload()) {
                                Ok(Change::Truncate { table }) => {
                                    // Everything is invalid, and no deleted person's data may
                                    // stay in Redis: remove every lead's cached data.
                                    let (gens, forget) =
                                        invalidation_for(Change::Truncate { table: table.clone() }, region);
                                    cache.invalidate(gens, forget, InvalidationSource::Notify).await;
                                    if table != "organizations" {
                                        cache.purge_leads().await;
                                    }
                                }
                                Ok(change) => {
                                    let (gens, forget) = invalidation_for(change, region);
                                    cache.invalidate(gens, forget, InvalidationSource::Notify).await;
                                }
                                Err(_) => tracing::warn!("ignoring a malformed change notification"),
                            }
                        }
                        // `Ok(None)`: the connection was lost (sqlx would reconnect silently and
                        // lose what was sent meanwhile): reconnect ourselves, and flush.
                        Ok(None) | Err(_) => break,
                    },
                    _ = shutdown.changed() => return,
                }
            }
            // Not flushed here: while the database is unreachable, tier 1 holds the last known
            // values that are served stale (without Redis, nothing else does). Until the
            // listener is back, tier-1 entries are trusted only briefly (see `Liveness`), and
            // the reconnect above flushes what notifications may have been missed meanwhile.
            cache.liveness().listen.store(false, Ordering::Release);
            tracing::warn!("database change listener lost; reconnecting (tier 1 is flushed then)");
        }
        if stopping(&mut shutdown, backoff).await {
            return;
        }
        backoff = next_backoff(backoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_map_to_generations() {
        let id = Uuid::new_v4();
        let org = Uuid::new_v4();
        let change: Change = serde_json::from_str(&format!(
            r#"{{"t":"lead","id":"{id}","org":"{org}","old_org":"{org}","phone":"+16129782029","old_phone":"+16129782030"}}"#
        ))
        .unwrap();
        let (gens, forget) = invalidation_for(change, Region::default());
        assert!(gens.contains(&GenKey::Lead(id)));
        assert_eq!(gens.len(), 3, "the lead and both phone pairs");
        assert!(forget.contains(&CacheKey::Context(id)));

        let bulk: Change = serde_json::from_str(r#"{"t":"bulk","table":"leads"}"#).unwrap();
        let (gens, _) = invalidation_for(bulk, Region::default());
        assert_eq!(gens.len(), Kind::ALL.len());

        let rows: Change = serde_json::from_str(&format!(
            r#"{{"t":"lead_rows","rows":[{{"id":"{id}","org":"{org}","phone":"+16129782029"}}]}}"#
        ))
        .unwrap();
        let (gens, forget) = invalidation_for(rows, Region::default());
        assert_eq!(gens.len(), 2);
        assert!(forget.contains(&CacheKey::Lead(id)));

        let conv: Change =
            serde_json::from_str(&format!(r#"{{"t":"conversation","lead":"{id}"}}"#)).unwrap();
        assert_eq!(
            invalidation_for(conv, Region::default()).0,
            vec![GenKey::Lead(id)]
        );
    }
}
