//! Tier 2: Redis, shared by every instance. Every command is bounded by a short timeout and
//! guarded by a circuit breaker, so that no request waits on a dead or slow Redis; a background
//! probe closes the breaker again when Redis answers.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use super::entry::{now_ms, Entry, FORMAT_VERSION};
use super::keys::{CacheKey, GenKey};
use crate::monitoring::{metrics, Monitor};

/// Consecutive failures that open the breaker.
const FAILURES_TO_OPEN: u32 = 3;
/// How long a generation key lives in Redis after its last change (a missing one is recreated
/// with a new random value, which only costs misses).
const GEN_TTL_S: u64 = 7 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("redis circuit open")]
    Open,
    #[error("redis command timed out")]
    Timeout,
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// The connection was replaced while the command ran: its answer may come from another
    /// server, and is not used.
    #[error("redis connection changed during the command")]
    Reconnected,
}

impl RemoteError {
    /// Whether the connection itself failed: a new one may reach another server (a restart, a
    /// failover), which must be verified before anything it says is trusted.
    pub fn broke_connection(&self) -> bool {
        match self {
            RemoteError::Redis(e) => {
                e.is_connection_dropped() || e.is_io_error() || e.is_connection_refusal()
            }
            _ => false,
        }
    }
}

/// What the handshake with a (new or known) Redis server found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The server's `run_id`: a new one is a new process (a restart, a failover).
    pub run_id: String,
    /// This handshake found the generations set under another server (or none) and gave
    /// every kind a new one: everything cached before is invalid.
    pub renewed: bool,
    /// The generations had been set under another server (not under none: a new, empty
    /// one): what Redis holds may be a restored snapshot.
    pub replaced_server: bool,
    /// The deployment's key for phone tags (64 hex digits).
    pub phone_key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    Closed,
    Open,
    HalfOpen,
}

impl Circuit {
    pub fn as_str(self) -> &'static str {
        match self {
            Circuit::Closed => "closed",
            Circuit::Open => "open",
            Circuit::HalfOpen => "half_open",
        }
    }
}

/// Opens after consecutive failures; closed again only by the probe.
#[derive(Debug, Default)]
pub struct Breaker {
    open: AtomicBool,
    probing: AtomicBool,
    failures: AtomicU32,
    down_since_ms: AtomicI64,
    last_error: Mutex<Option<String>>,
    /// Counts verified sessions: it changes whenever the breaker closes after a handshake,
    /// so that a command can tell whether it ran within one session.
    session: AtomicU64,
}

impl Breaker {
    fn starting_open() -> Breaker {
        let b = Breaker::default();
        b.open.store(true, Ordering::SeqCst);
        b.down_since_ms.store(now_ms(), Ordering::SeqCst);
        b
    }

    pub fn is_closed(&self) -> bool {
        !self.open.load(Ordering::Acquire)
    }

    pub fn state(&self) -> Circuit {
        match (self.is_closed(), self.probing.load(Ordering::Acquire)) {
            (true, _) => Circuit::Closed,
            (false, true) => Circuit::HalfOpen,
            (false, false) => Circuit::Open,
        }
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Release);
    }

    /// Returns true when this failure opened the breaker. A broken connection opens it at
    /// once: until the probe has verified the server behind the new connection (see
    /// [`Remote::handshake`]), nothing Redis says is used.
    fn failure(&self, error: &RemoteError) -> bool {
        *self.last_error.lock().expect("not poisoned") = Some(error.to_string());
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let open = n >= FAILURES_TO_OPEN || error.broke_connection();
        if open && !self.open.swap(true, Ordering::AcqRel) {
            // Commands already past the breaker's check must not count as this session's.
            self.session.fetch_add(1, Ordering::AcqRel);
            self.down_since_ms.store(now_ms(), Ordering::Release);
            return true;
        }
        false
    }

    fn close(&self) {
        self.session.fetch_add(1, Ordering::AcqRel);
        self.failures.store(0, Ordering::Release);
        self.down_since_ms.store(0, Ordering::Release);
        self.open.store(false, Ordering::Release);
    }

    /// When the breaker opened (unix ms), while it is open.
    pub fn down_since_ms(&self) -> Option<i64> {
        let t = self.down_since_ms.load(Ordering::Acquire);
        (!self.is_closed() && t > 0).then_some(t)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("not poisoned").clone()
    }
}

/// What `INFO` says about the server, for health and restart detection.
#[derive(Debug, Clone, Default)]
pub struct ServerInfo {
    pub run_id: String,
    pub redis_version: String,
    pub used_memory_human: String,
    pub connected_clients: u64,
}

pub fn parse_info(text: &str) -> ServerInfo {
    let mut info = ServerInfo::default();
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once(':') else {
            continue;
        };
        match k {
            "run_id" => info.run_id = v.to_string(),
            "redis_version" => info.redis_version = v.to_string(),
            "used_memory_human" => info.used_memory_human = v.to_string(),
            "connected_clients" => info.connected_clients = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    info
}

pub struct Remote {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    channel: String,
    timeout: Duration,
    pub breaker: Breaker,
    latency_us: AtomicI64,
    get_gens: Script,
    fill: Script,
    bump: Script,
    handshake: Script,
    coverage: Script,
    monitor: Option<Monitor>,
}

impl Remote {
    /// Prepares a lazily connecting client: never blocks, whether Redis is up or not. The
    /// breaker starts open; the probe closes it once Redis answers.
    pub fn new(
        url: &str,
        key_prefix: &str,
        timeout: Duration,
        monitor: Option<Monitor>,
    ) -> Result<Remote, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(timeout.max(Duration::from_millis(100)) * 10))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Remote {
            client,
            conn,
            prefix: format!("{key_prefix}:{FORMAT_VERSION}:"),
            channel: format!("{key_prefix}:{FORMAT_VERSION}:invalidate"),
            timeout,
            breaker: Breaker::starting_open(),
            latency_us: AtomicI64::new(-1),
            get_gens: Script::new(GET_GENS_LUA),
            fill: Script::new(FILL_LUA),
            bump: Script::new(BUMP_LUA),
            handshake: Script::new(HANDSHAKE_LUA),
            coverage: Script::new(COVERAGE_LUA),
            monitor,
        })
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn gen_key(&self, gen: &GenKey) -> String {
        self.key(&gen.redis_name())
    }

    /// The last measured round trip of the probe, in milliseconds.
    pub fn latency_ms(&self) -> Option<f64> {
        let us = self.latency_us.load(Ordering::Relaxed);
        (us >= 0).then(|| us as f64 / 1000.0)
    }

    /// Runs one command under the hot-path timeout, through the breaker.
    async fn run<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RemoteError> {
        self.run_within(self.timeout, fut).await
    }

    /// A connection to build commands on, for [`Remote::run_within`].
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Runs one command under `timeout`, through the breaker: what work off the cache's hot
    /// path (calls, events) sends to the same Redis.
    pub async fn run_within<T>(
        &self,
        timeout: Duration,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RemoteError> {
        // The session first: a breaker that opens (and a session that ends) after this read is
        // noticed when the answer comes.
        let session = self.breaker.session.load(Ordering::Acquire);
        if !self.breaker.is_closed() {
            return Err(RemoteError::Open);
        }
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(_)) if self.breaker.session.load(Ordering::Acquire) != session => {
                return Err(RemoteError::Reconnected)
            }
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(RemoteError::Redis(e)),
            Err(_) => Err(RemoteError::Timeout),
        };
        if let Some(monitor) = &self.monitor {
            monitor.record_redis(started.elapsed());
        }
        match &result {
            Ok(_) => self.breaker.success(),
            Err(e) => {
                if self.breaker.failure(e) {
                    tracing::warn!(error = %e, "redis circuit opened");
                    metrics::redis_up(false);
                }
            }
        }
        result
    }

    /// The entry stored for `key`, if any (not yet validated).
    pub async fn get(&self, key: &CacheKey) -> Result<Option<Entry>, RemoteError> {
        let (name, field) = key.redis_location();
        let mut conn = self.conn.clone();
        let redis_key = self.key(&name);
        let bytes: Option<Vec<u8>> = self.run(conn.hget(redis_key, field)).await?;
        Ok(bytes.and_then(|b| Entry::decode(&b)))
    }

    /// The current value of each generation, creating (with the proposed random values) those
    /// Redis does not have.
    pub async fn generations(&self, gens: &[GenKey]) -> Result<Vec<u64>, RemoteError> {
        let mut invocation = self.get_gens.prepare_invoke();
        for g in gens {
            invocation.key(self.gen_key(g));
        }
        for _ in gens {
            invocation.arg(rand::random::<u64>().to_string());
        }
        invocation.arg(GEN_TTL_S);
        let mut conn = self.conn.clone();
        let values: Vec<String> = self.run(invocation.invoke_async(&mut conn)).await?;
        Ok(values.iter().map(|v| v.parse().unwrap_or(0)).collect())
    }

    /// The current value of each generation, `None` where Redis has none; creates nothing.
    pub async fn peek_generations(&self, gens: &[GenKey]) -> Result<Vec<Option<u64>>, RemoteError> {
        let keys: Vec<String> = gens.iter().map(|g| self.gen_key(g)).collect();
        let mut conn = self.conn.clone();
        let values: Vec<Option<String>> = self
            .run(redis::cmd("MGET").arg(&keys).query_async(&mut conn))
            .await?;
        Ok(values
            .into_iter()
            .map(|v| v.and_then(|v| v.parse().ok()))
            .collect())
    }

    /// Stores `entry` under `key` only if every generation it depends on is still current in
    /// Redis, atomically: a fill that lost a race with a write is dropped, never stored.
    pub async fn fill(
        &self,
        key: &CacheKey,
        entry: &Entry,
        bytes: &[u8],
    ) -> Result<bool, RemoteError> {
        let (name, field) = key.redis_location();
        let expire_s = ((entry.stale_until_ms - now_ms()) / 1000).max(1);
        let mut invocation = self.fill.prepare_invoke();
        invocation.key(self.key(&name));
        for (g, _) in &entry.deps {
            invocation.key(self.gen_key(g));
        }
        invocation.arg(field).arg(bytes).arg(expire_s);
        for (_, v) in &entry.deps {
            invocation.arg(v.to_string());
        }
        let mut conn = self.conn.clone();
        let stored: i64 = self.run(invocation.invoke_async(&mut conn)).await?;
        Ok(stored == 1)
    }

    /// Sets new generations, removes the generations of `removed` and the keys of `delete`
    /// (Redis key names), and publishes `message` on the invalidation channel, in one atomic
    /// step, so that every instance sees the changes in the order Redis applied them.
    /// The last `if_present` of `gens` are set only where Redis has them (`XX`): a change
    /// that names a row which may be gone (a deleted lead's conversations) must not bring its
    /// generation back. Nothing can be stored under a generation Redis does not have (a fill
    /// compares with what Redis holds), and the message carries the new value to every mirror.
    pub async fn bump(
        &self,
        gens: &[(GenKey, u64)],
        if_present: usize,
        removed: &[GenKey],
        delete: &[String],
        message: &str,
    ) -> Result<(), RemoteError> {
        let mut invocation = self.bump.prepare_invoke();
        for (g, _) in gens {
            invocation.key(self.gen_key(g));
        }
        for g in removed {
            invocation.key(self.gen_key(g));
        }
        for name in delete {
            invocation.key(self.key(name));
        }
        invocation
            .arg(gens.len())
            .arg(GEN_TTL_S)
            .arg(&self.channel)
            .arg(message)
            .arg(gens.len() - if_present.min(gens.len()));
        for (_, v) in gens {
            invocation.arg(v.to_string());
        }
        let mut conn = self.conn.clone();
        let _: i64 = self.run(invocation.invoke_async(&mut conn)).await?;
        Ok(())
    }

    /// Verifies the server behind the connection before anything it says is trusted, in one
    /// atomic script: the generations record the `run_id` of the server they were set under,
    /// and when that is not this server's (a restart that restored old data, a failover to a
    /// replica that may lag, a server that lost everything), every kind gets a new generation
    /// and a flush is published, so that no entry filled before counts again. Also returns the
    /// deployment's phone-tag key, creating it with `proposed_key` when there is none. Runs
    /// outside the breaker (the probe calls it to close it).
    pub async fn handshake(
        &self,
        proposed_key: &str,
        flush_message: &str,
        timeout: Duration,
    ) -> Result<Handshake, RemoteError> {
        let mut invocation = self.handshake.prepare_invoke();
        invocation
            .key(self.key("gen:server"))
            .key(self.key("phonekey"));
        for kind in super::keys::Kind::ALL {
            invocation.key(self.gen_key(&GenKey::Kind(kind)));
        }
        invocation
            .arg(proposed_key)
            .arg(GEN_TTL_S)
            .arg(&self.channel)
            .arg(flush_message);
        for _ in super::keys::Kind::ALL {
            invocation.arg(rand::random::<u64>().max(1).to_string());
        }
        let mut conn = self.conn.clone();
        let (run_id, renewed, phone_key, previous): (String, i64, String, String) =
            match tokio::time::timeout(timeout, invocation.invoke_async(&mut conn)).await {
                Ok(r) => r?,
                Err(_) => return Err(RemoteError::Timeout),
            };
        Ok(Handshake {
            replaced_server: renewed == 1 && !previous.is_empty(),
            run_id,
            renewed: renewed == 1,
            phone_key,
        })
    }

    /// How far the database's change counter is known to be covered (every change up to it was
    /// heard by a listening instance and invalidated in Redis), and how many milliseconds ago a
    /// listener last said so (`None` when none ever did).
    pub async fn coverage(&self) -> Result<(i64, Option<i64>), RemoteError> {
        let mut invocation = self.coverage.prepare_invoke();
        invocation.key(self.key("dbcoverage")).arg(0).arg(0);
        let mut conn = self.conn.clone();
        let (seq, age): (i64, i64) = self.run(invocation.invoke_async(&mut conn)).await?;
        Ok((seq, (age >= 0).then_some(age)))
    }

    /// Records that every database change up to `seq` was heard and invalidated (never moves
    /// the record back), and that a listener is alive now.
    pub async fn claim_coverage(&self, seq: i64) -> Result<(), RemoteError> {
        let mut invocation = self.coverage.prepare_invoke();
        invocation.key(self.key("dbcoverage")).arg(1).arg(seq);
        let mut conn = self.conn.clone();
        let _: (i64, i64) = self.run(invocation.invoke_async(&mut conn)).await?;
        Ok(())
    }

    /// Deletes every key matching `pattern` under the prefix (SCAN and UNLINK, in batches, each
    /// bounded by a generous timeout). Returns how many were deleted.
    pub async fn purge(&self, pattern: &str) -> Result<u64, RemoteError> {
        let mut conn = self.conn.clone();
        let full = self.key(pattern);
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = tokio::time::timeout(
                Duration::from_secs(2),
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&full)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn),
            )
            .await
            .map_err(|_| RemoteError::Timeout)??;
            if !keys.is_empty() {
                let n: u64 = tokio::time::timeout(
                    Duration::from_secs(2),
                    redis::cmd("UNLINK").arg(&keys).query_async(&mut conn),
                )
                .await
                .map_err(|_| RemoteError::Timeout)??;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// Publishes a message on the invalidation channel (heartbeats).
    pub async fn publish(&self, message: &str) -> Result<(), RemoteError> {
        let mut conn = self.conn.clone();
        let _: i64 = self.run(conn.publish(&self.channel, message)).await?;
        Ok(())
    }

    /// `INFO` with a generous timeout, outside the breaker (the probe and health checks).
    pub async fn info(&self, timeout: Duration) -> Result<ServerInfo, RemoteError> {
        let mut conn = self.conn.clone();
        let started = Instant::now();
        let text: String = match tokio::time::timeout(
            timeout,
            redis::cmd("INFO")
                .arg("server")
                .arg("memory")
                .arg("clients")
                .query_async(&mut conn),
        )
        .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(RemoteError::Redis(e)),
            Err(_) => return Err(RemoteError::Timeout),
        };
        self.latency_us
            .store(started.elapsed().as_micros() as i64, Ordering::Relaxed);
        Ok(parse_info(&text))
    }

    /// Marks Redis reachable again: the probe verified the server (see
    /// [`Remote::handshake`]). Starts a new session: commands that began before it are not
    /// trusted.
    pub fn close_breaker(&self) {
        self.breaker.close();
        metrics::redis_up(true);
    }

    /// Marks Redis unreachable (the probe failed while the breaker was closed).
    pub fn open_breaker(&self, error: RemoteError) {
        for _ in 0..FAILURES_TO_OPEN {
            if self.breaker.failure(&error) {
                tracing::warn!(error = %error, "redis circuit opened");
                metrics::redis_up(false);
                return;
            }
        }
    }

    pub fn set_probing(&self, probing: bool) {
        self.breaker.probing.store(probing, Ordering::Release);
    }
}

/// KEYS: generation keys. ARGV: a proposed value per key, then the TTL in seconds.
const GET_GENS_LUA: &str = r"
local ttl = ARGV[#KEYS + 1]
local out = {}
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if not v then
    v = ARGV[i]
    redis.call('SET', k, v, 'EX', ttl)
  end
  out[i] = v
end
return out
";

/// KEYS[1]: the hash; KEYS[2..]: generation keys. ARGV: field, value, expiry seconds, then the
/// expected value of each generation key.
const FILL_LUA: &str = r"
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) ~= ARGV[i + 2] then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local ttl = redis.call('TTL', KEYS[1])
if ttl < tonumber(ARGV[3]) then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 1
";

/// KEYS: n generation keys, then generation keys and other keys to delete. ARGV: n, TTL
/// seconds, channel, message, how many of the n are always set (the rest only where they
/// exist), then the n new generation values.
const BUMP_LUA: &str = r"
local n = tonumber(ARGV[1])
local always = tonumber(ARGV[5])
for i = 1, n do
  if i <= always then
    redis.call('SET', KEYS[i], ARGV[5 + i], 'EX', ARGV[2])
  else
    redis.call('SET', KEYS[i], ARGV[5 + i], 'XX', 'EX', ARGV[2])
  end
end
for i = n + 1, #KEYS do
  redis.call('DEL', KEYS[i])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
";

/// KEYS: the server record, the phone-tag key, then the kind generations. ARGV: a proposed
/// phone-tag key, TTL seconds, channel, flush message, then a new value per kind generation.
/// Returns the server's run_id, 1 when the generations were renewed, the phone-tag key, and
/// the run_id the generations were set under before ('' for none).
const HANDSHAKE_LUA: &str = r"
local info = redis.call('INFO', 'server')
local run_id = string.match(info, 'run_id:(%x+)')
local renewed = 0
local previous = redis.call('GET', KEYS[1]) or ''
if previous ~= run_id then
  for i = 3, #KEYS do
    redis.call('SET', KEYS[i], ARGV[2 + i], 'EX', ARGV[2])
  end
  redis.call('SET', KEYS[1], run_id)
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  renewed = 1
end
redis.call('SET', KEYS[2], ARGV[1], 'NX')
return {run_id, renewed, redis.call('GET', KEYS[2]), previous}
";

/// KEYS[1]: the coverage record. ARGV: 1 to claim (then ARGV[2] the counter value) or 0 to
/// read. Returns the covered counter value and the age in milliseconds of the last claim (-1
/// when there was none), by the server's clock.
const COVERAGE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] == '1' then
  local seq = tonumber(ARGV[2])
  local old = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
  if seq > old then
    redis.call('HSET', KEYS[1], 'seq', seq)
  end
  redis.call('HSET', KEYS[1], 'at', now)
end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local at = redis.call('HGET', KEYS[1], 'at')
local age = -1
if at then
  age = now - tonumber(at)
end
return {seq, age}
";

pub type SharedRemote = Arc<Remote>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_parsing() {
        let info = parse_info(
            "# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\n# Memory\r\nused_memory_human:1.02M\r\n# Clients\r\nconnected_clients:3\r\n",
        );
        assert_eq!(info.run_id, "abc123");
        assert_eq!(info.redis_version, "7.0.15");
        assert_eq!(info.used_memory_human, "1.02M");
        assert_eq!(info.connected_clients, 3);
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_only() {
        let b = Breaker::default();
        assert!(b.is_closed());
        b.failure(&RemoteError::Timeout);
        b.failure(&RemoteError::Timeout);
        b.success();
        b.failure(&RemoteError::Timeout);
        b.failure(&RemoteError::Timeout);
        assert!(b.is_closed(), "a success resets the count");
        assert!(b.failure(&RemoteError::Timeout));
        assert_eq!(b.state(), Circuit::Open);
        assert!(b.down_since_ms().is_some());
        b.close();
        assert_eq!(b.state(), Circuit::Closed);
        assert!(b.down_since_ms().is_none());
    }
}
