//! Where calls live: one [`CallStore`] interface, two backends. [`RedisCalls`] shares them
//! between instances (a hash per call with the call's TTL, an index by start time for listing);
//! [`MemoryCalls`] keeps them in this process with the same TTL semantics. [`CallBook`] puts
//! them together the way the cache does with its tiers: Redis while it answers, this process's
//! memory while it does not (or when there is no Redis), and what was written to memory meanwhile
//! written back once Redis returns, the newest `updated_at` winning.
//!
//! Updates are compare-and-set on a per-call revision: read the call and its revision, change
//! it, write it only if the revision is still the one read (a Lua script), else read again. Two
//! concurrent updates never lose one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::Script;

use super::model::{Call, CallStatus};
use crate::cache::{Remote, RemoteError};

/// How long a call command may take before the call is served from memory instead.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// How many times an update is retried when another writer got there first.
const CAS_ATTEMPTS: usize = 256;
/// Ids read per round trip when listing.
const LIST_CHUNK: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum CallStoreError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("a stored call could not be read: {0}")]
    Corrupt(String),
    #[error("the call kept changing under {CAS_ATTEMPTS} attempts to update it")]
    Contended,
}

/// A call and its revision (moved by every write).
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub call: Call,
    pub rev: u64,
}

#[async_trait]
pub trait CallStore: Send + Sync {
    async fn get(&self, id: &str) -> Result<Option<Stored>, CallStoreError>;
    /// Writes `call` if its revision is still `expected` (`None`: only if there is no such
    /// call). `Ok(None)`: another write came first; nothing was written.
    async fn put(&self, call: &Call, expected: Option<u64>) -> Result<Option<u64>, CallStoreError>;
    /// Every call kept, in no order.
    async fn all(&self) -> Result<Vec<Call>, CallStoreError>;
    /// How many calls are active, and how many started in the last minute.
    async fn counts(&self) -> Result<(i64, i64), CallStoreError>;
    /// The call that recorded `conversation_id`, if one did.
    async fn by_conversation(
        &self,
        conversation_id: &str,
    ) -> Result<Option<String>, CallStoreError>;
}

// In process

#[derive(Debug)]
struct Kept {
    stored: Stored,
    expires: Instant,
}

/// Calls in this process: lost on restart, seen by this instance alone.
#[derive(Debug)]
pub struct MemoryCalls {
    ttl: Duration,
    calls: Mutex<HashMap<String, Kept>>,
    conversations: Mutex<HashMap<String, (String, Instant)>>,
}

impl MemoryCalls {
    pub fn new(ttl: Duration) -> MemoryCalls {
        MemoryCalls {
            ttl,
            calls: Mutex::new(HashMap::new()),
            conversations: Mutex::new(HashMap::new()),
        }
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, HashMap<String, Kept>> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get_now(&self, id: &str) -> Option<Stored> {
        let now = Instant::now();
        let mut calls = self.calls();
        match calls.get(id) {
            Some(k) if k.expires > now => Some(k.stored.clone()),
            Some(_) => {
                calls.remove(id);
                None
            }
            None => None,
        }
    }

    fn remove(&self, id: &str) {
        self.calls().remove(id);
    }

    /// Reads, changes and writes one call under the lock: never contended.
    fn update<E>(
        &self,
        id: &str,
        base: Option<Call>,
        f: &mut impl FnMut(Option<Call>) -> Result<Step, E>,
    ) -> Result<(Option<Call>, Step), E> {
        let now = Instant::now();
        let mut calls = self.calls();
        let current = calls
            .get(id)
            .filter(|k| k.expires > now)
            .map(|k| k.stored.clone());
        let before = current.as_ref().map(|s| s.call.clone()).or(base);
        let step = f(before.clone())?;
        if let Step::Write(call) = &step {
            let rev = current.map_or(0, |s| s.rev) + 1;
            self.link(call, now);
            calls.insert(
                id.to_string(),
                Kept {
                    stored: Stored {
                        call: call.clone(),
                        rev,
                    },
                    expires: now + self.ttl,
                },
            );
        }
        Ok((before, step))
    }

    fn link(&self, call: &Call, now: Instant) {
        if let Some(conversation) = &call.conversation_id {
            self.conversations
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(conversation.clone(), (call.call_id.clone(), now + self.ttl));
        }
    }
}

#[async_trait]
impl CallStore for MemoryCalls {
    async fn get(&self, id: &str) -> Result<Option<Stored>, CallStoreError> {
        Ok(self.get_now(id))
    }

    async fn put(&self, call: &Call, expected: Option<u64>) -> Result<Option<u64>, CallStoreError> {
        let now = Instant::now();
        let mut calls = self.calls();
        let current = calls
            .get(&call.call_id)
            .filter(|k| k.expires > now)
            .map(|k| k.stored.rev);
        if current != expected {
            return Ok(None);
        }
        let rev = current.unwrap_or(0) + 1;
        self.link(call, now);
        calls.insert(
            call.call_id.clone(),
            Kept {
                stored: Stored {
                    call: call.clone(),
                    rev,
                },
                expires: now + self.ttl,
            },
        );
        Ok(Some(rev))
    }

    async fn all(&self) -> Result<Vec<Call>, CallStoreError> {
        let now = Instant::now();
        let mut calls = self.calls();
        calls.retain(|_, k| k.expires > now);
        self.conversations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, (_, expires)| *expires > now);
        Ok(calls.values().map(|k| k.stored.call.clone()).collect())
    }

    async fn counts(&self) -> Result<(i64, i64), CallStoreError> {
        let calls = self.all().await?;
        let minute_ago = chrono::Utc::now() - chrono::Duration::seconds(60);
        let active = calls
            .iter()
            .filter(|c| c.status == CallStatus::Active)
            .count();
        let recent = calls.iter().filter(|c| c.started_at > minute_ago).count();
        Ok((active as i64, recent as i64))
    }

    async fn by_conversation(
        &self,
        conversation_id: &str,
    ) -> Result<Option<String>, CallStoreError> {
        let now = Instant::now();
        Ok(self
            .conversations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(conversation_id)
            .filter(|(_, expires)| *expires > now)
            .map(|(id, _)| id.clone()))
    }
}

// Redis

/// KEYS: the call's hash, the index, the conversation link, the active set, the started set.
/// ARGV: the expected revision (`''` for none), the call's JSON, the TTL in ms, when the call
/// expires (unix ms), the call id, whether to link the conversation (`1`), whether the call is
/// active (`1`), when it started (unix ms). Returns the new revision, or -1 when the call's
/// revision was not the expected one.
///
/// The index and the active set are scored by expiry, so that what has expired leaves them
/// with one `ZREMRANGEBYSCORE`; the started set by start, for the calls of the last minute.
const PUT_LUA: &str = r"
local rev = redis.call('HGET', KEYS[1], 'rev')
if ARGV[1] == '' then
  if rev then return -1 end
elseif rev ~= ARGV[1] then
  return -1
end
local n = (tonumber(rev) or 0) + 1
redis.call('HSET', KEYS[1], 'json', ARGV[2], 'rev', n)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
if ARGV[6] == '1' then
  redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[3])
end
if ARGV[7] == '1' then
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5])
else
  redis.call('ZREM', KEYS[4], ARGV[5])
end
if n == 1 then
  redis.call('ZADD', KEYS[5], ARGV[8], ARGV[5])
end
return n
";

/// Calls in Redis, shared by every instance. Every key carries the `{calls}` hash tag, so that
/// one script may touch a call, the index and a conversation link in a Redis Cluster too.
pub struct RedisCalls {
    remote: Arc<Remote>,
    ttl: Duration,
    put: Script,
}

impl RedisCalls {
    pub fn new(remote: Arc<Remote>, ttl: Duration) -> RedisCalls {
        RedisCalls {
            remote,
            ttl,
            put: Script::new(PUT_LUA),
        }
    }

    pub fn remote(&self) -> &Arc<Remote> {
        &self.remote
    }

    fn call_key(&self, id: &str) -> String {
        self.remote.key(&format!("{{calls}}:call:{id}"))
    }

    fn index_key(&self) -> String {
        self.remote.key("{calls}:index")
    }

    fn active_key(&self) -> String {
        self.remote.key("{calls}:active")
    }

    fn started_key(&self) -> String {
        self.remote.key("{calls}:started")
    }

    fn conversation_key(&self, conversation_id: &str) -> String {
        self.remote
            .key(&format!("{{calls}}:conversation:{conversation_id}"))
    }
}

fn decode(json: &str) -> Result<Call, CallStoreError> {
    serde_json::from_str(json).map_err(|e| CallStoreError::Corrupt(e.to_string()))
}

#[async_trait]
impl CallStore for RedisCalls {
    async fn get(&self, id: &str) -> Result<Option<Stored>, CallStoreError> {
        let mut conn = self.remote.connection();
        let key = self.call_key(id);
        let (json, rev): (Option<String>, Option<u64>) = self
            .remote
            .run_within(
                REDIS_TIMEOUT,
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("json")
                    .arg("rev")
                    .query_async(&mut conn),
            )
            .await?;
        match (json, rev) {
            (Some(json), Some(rev)) => Ok(Some(Stored {
                call: decode(&json)?,
                rev,
            })),
            _ => Ok(None),
        }
    }

    async fn put(&self, call: &Call, expected: Option<u64>) -> Result<Option<u64>, CallStoreError> {
        let mut conn = self.remote.connection();
        let json = serde_json::to_string(call).expect("a call serialises");
        let conversation = call.conversation_id.as_deref();
        let mut invocation = self.put.prepare_invoke();
        invocation
            .key(self.call_key(&call.call_id))
            .key(self.index_key())
            .key(self.conversation_key(conversation.unwrap_or("")))
            .key(self.active_key())
            .key(self.started_key())
            .arg(expected.map(|r| r.to_string()).unwrap_or_default())
            .arg(json)
            .arg(self.ttl.as_millis() as u64)
            .arg(crate::cache::now_ms() + self.ttl.as_millis() as i64)
            .arg(&call.call_id)
            .arg(if conversation.is_some() { "1" } else { "0" })
            .arg(if call.status == CallStatus::Active {
                "1"
            } else {
                "0"
            })
            .arg(call.started_at.timestamp_millis());
        let rev: i64 = self
            .remote
            .run_within(REDIS_TIMEOUT, invocation.invoke_async(&mut conn))
            .await?;
        Ok((rev > 0).then_some(rev as u64))
    }

    async fn all(&self) -> Result<Vec<Call>, CallStoreError> {
        let mut conn = self.remote.connection();
        let index = self.index_key();
        let _: Result<i64, _> = self
            .remote
            .run_within(
                REDIS_TIMEOUT,
                redis::cmd("ZREMRANGEBYSCORE")
                    .arg(&index)
                    .arg("-inf")
                    .arg(crate::cache::now_ms())
                    .query_async(&mut conn),
            )
            .await;
        let ids: Vec<String> = self
            .remote
            .run_within(
                REDIS_TIMEOUT,
                redis::cmd("ZRANGE")
                    .arg(&index)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn),
            )
            .await?;
        let mut calls = Vec::with_capacity(ids.len());
        let mut gone = Vec::new();
        for chunk in ids.chunks(LIST_CHUNK) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.hget(self.call_key(id), "json");
            }
            let found: Vec<Option<String>> = self
                .remote
                .run_within(REDIS_TIMEOUT, pipe.query_async(&mut conn))
                .await?;
            for (id, json) in chunk.iter().zip(found) {
                match json {
                    Some(json) => match decode(&json) {
                        Ok(call) => calls.push(call),
                        Err(e) => tracing::warn!(error = %e, "skipping an unreadable call"),
                    },
                    None => gone.push(id.clone()),
                }
            }
        }
        // Calls whose TTL ran out leave the index as they are found gone.
        if !gone.is_empty() {
            let _: Result<i64, _> = self
                .remote
                .run_within(
                    REDIS_TIMEOUT,
                    redis::cmd("ZREM")
                        .arg(&index)
                        .arg(&gone)
                        .query_async(&mut conn),
                )
                .await;
        }
        Ok(calls)
    }

    async fn counts(&self) -> Result<(i64, i64), CallStoreError> {
        let now = crate::cache::now_ms();
        let mut pipe = redis::pipe();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(self.active_key())
            .arg("-inf")
            .arg(now)
            .ignore()
            .zcard(self.active_key())
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.started_key())
            .arg("-inf")
            .arg(now - 60_000)
            .ignore()
            .zcard(self.started_key());
        let mut conn = self.remote.connection();
        Ok(self
            .remote
            .run_within(REDIS_TIMEOUT, pipe.query_async(&mut conn))
            .await?)
    }

    async fn by_conversation(
        &self,
        conversation_id: &str,
    ) -> Result<Option<String>, CallStoreError> {
        let mut conn = self.remote.connection();
        let key = self.conversation_key(conversation_id);
        Ok(self
            .remote
            .run_within(
                REDIS_TIMEOUT,
                redis::cmd("GET").arg(&key).query_async(&mut conn),
            )
            .await?)
    }
}

// Both

/// Which backend answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Redis,
    Memory,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Redis => "redis",
            Backend::Memory => "memory",
        }
    }
}

/// What an update does with the call it read.
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "short-lived, and the call is written right after"
)]
pub enum Step {
    /// Write this call.
    Write(Call),
    /// Write nothing.
    Leave,
}

/// Why an update was not made.
#[derive(Debug)]
pub enum UpdateError<E> {
    /// The caller's function refused the call it read.
    Refused(E),
    /// Redis answered, but the update could not be made there (the call kept changing, or
    /// what is stored cannot be read): nothing was written anywhere.
    Unavailable(CallStoreError),
}

/// What an update did.
#[derive(Debug, Clone)]
pub struct Updated {
    pub before: Option<Call>,
    /// The call as written, when something was.
    pub written: Option<Call>,
    pub backend: Backend,
}

/// The calls of this deployment: Redis while it answers, this process's memory while it does
/// not. See the module's documentation.
pub struct CallBook {
    redis: Option<RedisCalls>,
    memory: MemoryCalls,
    /// Calls written to memory because Redis failed: written back when it answers again.
    pending: Mutex<HashSet<String>>,
}

impl CallBook {
    pub fn new(remote: Option<Arc<Remote>>, ttl: Duration) -> CallBook {
        CallBook {
            redis: remote.map(|r| RedisCalls::new(r, ttl)),
            memory: MemoryCalls::new(ttl),
            pending: Mutex::new(HashSet::new()),
        }
    }

    /// Whether calls are shared between instances at all (a Redis is configured).
    pub fn shared(&self) -> bool {
        self.redis.is_some()
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether Redis answers (its breaker is closed).
    pub fn redis_up(&self) -> bool {
        self.redis
            .as_ref()
            .is_some_and(|r| r.remote().breaker.is_closed())
    }

    /// How many calls wait to be written back to Redis.
    pub fn pending_count(&self) -> usize {
        self.pending().len()
    }

    /// The newer of Redis's copy and a copy written to memory during an outage.
    fn newer(redis: Option<Call>, memory: Option<Call>) -> Option<Call> {
        match (redis, memory) {
            (Some(r), Some(m)) => Some(if m.updated_at > r.updated_at { m } else { r }),
            (r, m) => r.or(m),
        }
    }

    fn pending_copy(&self, id: &str) -> Option<Call> {
        if !self.pending().contains(id) {
            return None;
        }
        self.memory.get_now(id).map(|s| s.call)
    }

    pub async fn get(&self, id: &str) -> (Option<Call>, Backend) {
        if let Some(redis) = &self.redis {
            match redis.get(id).await {
                Ok(found) => {
                    let call = Self::newer(found.map(|s| s.call), self.pending_copy(id));
                    return (call, Backend::Redis);
                }
                Err(e) => tracing::debug!(error = %e, "reading a call from memory: redis failed"),
            }
        }
        (self.memory.get_now(id).map(|s| s.call), Backend::Memory)
    }

    /// Reads the call, lets `f` decide, and writes what it returns, atomically with respect to
    /// every other update on every instance (while Redis answers).
    pub async fn update<E>(
        &self,
        id: &str,
        mut f: impl FnMut(Option<Call>) -> Result<Step, E>,
    ) -> Result<Updated, UpdateError<E>> {
        let mut last_read = None;
        if let Some(redis) = &self.redis {
            match self.update_redis(redis, id, &mut f, &mut last_read).await {
                Ok(Ok(updated)) => return Ok(updated),
                Ok(Err(refused)) => return Err(UpdateError::Refused(refused)),
                // Redis is not there: the call is kept here until it returns.
                Err(CallStoreError::Remote(e)) => {
                    tracing::debug!(error = %e, "updating a call in memory: redis failed")
                }
                Err(e) => return Err(UpdateError::Unavailable(e)),
            }
        }
        let (before, step) = self
            .memory
            .update(id, last_read, &mut f)
            .map_err(UpdateError::Refused)?;
        let written = match step {
            Step::Write(call) => {
                if self.redis.is_some() {
                    self.pending().insert(id.to_string());
                }
                Some(call)
            }
            Step::Leave => None,
        };
        Ok(Updated {
            before,
            written,
            backend: Backend::Memory,
        })
    }

    async fn update_redis<E>(
        &self,
        redis: &RedisCalls,
        id: &str,
        f: &mut impl FnMut(Option<Call>) -> Result<Step, E>,
        last_read: &mut Option<Call>,
    ) -> Result<Result<Updated, E>, CallStoreError> {
        for attempt in 0..CAS_ATTEMPTS {
            let stored = redis.get(id).await?;
            let rev = stored.as_ref().map(|s| s.rev);
            let before = Self::newer(stored.map(|s| s.call), self.pending_copy(id));
            *last_read = before.clone();
            let call = match f(before.clone()) {
                Ok(Step::Write(call)) => call,
                Ok(Step::Leave) => {
                    return Ok(Ok(Updated {
                        before,
                        written: None,
                        backend: Backend::Redis,
                    }))
                }
                Err(refused) => return Ok(Err(refused)),
            };
            if redis.put(&call, rev).await?.is_some() {
                if self.pending().remove(id) {
                    self.memory.remove(id);
                }
                return Ok(Ok(Updated {
                    before,
                    written: Some(call),
                    backend: Backend::Redis,
                }));
            }
            // Another writer came first: read again, after a pause that grows with the
            // contention so that many writers of one call do not keep colliding.
            let pause = rand::random_range(0..=(attempt as u64 + 1).min(20) * 200);
            tokio::time::sleep(Duration::from_micros(pause)).await;
        }
        Err(CallStoreError::Contended)
    }

    /// Creates `call` if no call has its id (one round trip: the usual case of a ring), else
    /// updates the one there with `f`.
    pub async fn create_or_update(
        &self,
        call: Call,
        f: impl FnMut(Option<Call>) -> Result<Step, std::convert::Infallible>,
    ) -> Result<Updated, UpdateError<std::convert::Infallible>> {
        if let Some(redis) = self.redis.as_ref().filter(|_| self.pending_count() == 0) {
            if let Ok(Some(_)) = redis.put(&call, None).await {
                return Ok(Updated {
                    before: None,
                    written: Some(call),
                    backend: Backend::Redis,
                });
            }
        }
        self.update(&call.call_id.clone(), f).await
    }

    /// Every call kept (on every instance, while Redis answers), and who answered.
    pub async fn all(&self) -> (Vec<Call>, Backend) {
        let mut memory: HashMap<String, Call> = self
            .memory
            .all()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.call_id.clone(), c))
            .collect();
        if let Some(redis) = &self.redis {
            match redis.all().await {
                Ok(calls) => {
                    let pending = self.pending().clone();
                    memory.retain(|id, _| pending.contains(id));
                    let mut merged: Vec<Call> = calls
                        .into_iter()
                        .map(|c| match memory.remove(&c.call_id) {
                            Some(m) if m.updated_at > c.updated_at => m,
                            _ => c,
                        })
                        .collect();
                    merged.extend(memory.into_values());
                    return (merged, Backend::Redis);
                }
                Err(e) => tracing::debug!(error = %e, "listing calls from memory: redis failed"),
            }
        }
        (memory.into_values().collect(), Backend::Memory)
    }

    /// How many calls are active (on every instance, while Redis answers) and how many started
    /// in the last minute.
    pub async fn counts(&self) -> (i64, i64) {
        if let Some(redis) = &self.redis {
            match redis.counts().await {
                Ok(counts) => return counts,
                Err(e) => tracing::debug!(error = %e, "counting calls in memory: redis failed"),
            }
        }
        self.memory.counts().await.unwrap_or_default()
    }

    /// The call that recorded `conversation_id`.
    pub async fn by_conversation(&self, conversation_id: &str) -> Option<String> {
        if let Some(redis) = &self.redis {
            match redis.by_conversation(conversation_id).await {
                Ok(Some(id)) => return Some(id),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "conversation link from memory: redis failed")
                }
            }
        }
        self.memory
            .by_conversation(conversation_id)
            .await
            .ok()
            .flatten()
    }

    /// Writes the calls kept in memory during an outage to Redis, the newest `updated_at`
    /// winning; returns how many were written. Stops at the first Redis failure.
    pub async fn write_back(&self) -> Result<usize, CallStoreError> {
        let Some(redis) = &self.redis else {
            return Ok(0);
        };
        let ids: Vec<String> = self.pending().iter().cloned().collect();
        let mut written = 0;
        for id in ids {
            let Some(mine) = self.memory.get_now(&id) else {
                self.pending().remove(&id);
                continue;
            };
            let mut attempts = 0;
            loop {
                let theirs = redis.get(&id).await?;
                // The newest wins, except that a call Redis holds as over is never made
                // active again by a copy from before it ended.
                if theirs.as_ref().is_some_and(|t| {
                    t.call.updated_at >= mine.call.updated_at
                        || (t.call.status != CallStatus::Active
                            && mine.call.status == CallStatus::Active)
                }) {
                    break;
                }
                if redis
                    .put(&mine.call, theirs.map(|t| t.rev))
                    .await?
                    .is_some()
                {
                    written += 1;
                    break;
                }
                attempts += 1;
                if attempts >= CAS_ATTEMPTS {
                    return Err(CallStoreError::Contended);
                }
            }
            // Unless it changed in memory meanwhile (then it is written next time).
            if self
                .memory
                .get_now(&id)
                .is_some_and(|now| now.rev == mine.rev)
            {
                self.pending().remove(&id);
                self.memory.remove(&id);
            }
        }
        Ok(written)
    }
}
