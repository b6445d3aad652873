//! Admin messages: an operator tells one instance or all of them to act, and sees who did.
//!
//! A message is stored (in Redis for an hour, with a hash of its acks) and published on the
//! bus as `admin.message`. Every instance's [`run_receiver`] reads the bus; an instance the
//! message is for acts once and acks once (`HSETNX`, and an `admin.ack` event). Without Redis
//! (or while its breaker is open) a message reaches only the instance it was sent to, and is
//! kept there.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::{broadcast, watch};

use crate::cache::{Cache, Remote, RemoteError};
use crate::calls::model::types;
use crate::calls::{Bus, Event};
use crate::instances::Instances;

/// How long a message and its acks are kept.
pub const MESSAGE_TTL: Duration = Duration::from_secs(3600);
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// Message ids this instance remembers having acted on.
const HANDLED_MAX: usize = 4096;
/// The longest `log_level` filter taken.
pub const FILTER_MAX: usize = 1024;

pub const COMMANDS: [&str; 5] = ["ping", "flush_l1", "drain", "resume", "log_level"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    pub to: String,
    pub command: String,
    pub args: Map<String, Value>,
    pub sent_at: DateTime<Utc>,
    /// The instances expected to ack: every live one (`to: all`) or the one named.
    pub expected: Vec<String>,
    /// The instance that took the request.
    pub from: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub ok: bool,
    pub at: DateTime<Utc>,
    pub detail: String,
}

/// A message's acks, by instance.
pub type Acks = HashMap<String, Ack>;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no live instance is called that")]
    UnknownInstance,
}

pub struct Admin {
    remote: Option<Arc<Remote>>,
    bus: Arc<Bus>,
    instances: Arc<Instances>,
    cache: Arc<Cache>,
    /// Messages kept here while Redis is not there, with their acks.
    local: Mutex<HashMap<String, (Message, Acks)>>,
    handled: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl Admin {
    pub fn new(
        remote: Option<Arc<Remote>>,
        bus: Arc<Bus>,
        instances: Arc<Instances>,
        cache: Arc<Cache>,
    ) -> Admin {
        Admin {
            remote,
            bus,
            instances,
            cache,
            local: Mutex::new(HashMap::new()),
            handled: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }

    fn message_key(remote: &Remote, id: &str) -> String {
        remote.key(&format!("{{admin}}:message:{id}"))
    }

    fn acks_key(remote: &Remote, id: &str) -> String {
        remote.key(&format!("{{admin}}:acks:{id}"))
    }

    fn shared(&self) -> Option<&Arc<Remote>> {
        self.remote.as_ref().filter(|r| r.breaker.is_closed())
    }

    /// Sends a message; returns it and whether it went to every instance through Redis
    /// (`false`: to this instance alone).
    pub async fn send(
        &self,
        to: &str,
        command: &str,
        args: Map<String, Value>,
    ) -> Result<(Message, bool), SendError> {
        let (live, mut shared) = self.instances.live().await;
        let live: Vec<String> = live.into_iter().map(|r| r.instance_id).collect();
        let expected = if to == "all" {
            live
        } else if live.iter().any(|id| id == to) {
            vec![to.to_string()]
        } else {
            return Err(SendError::UnknownInstance);
        };
        let message = Message {
            id: uuid::Uuid::new_v4().to_string(),
            to: to.to_string(),
            command: command.to_string(),
            args,
            sent_at: Utc::now(),
            expected,
            from: self.instances.id().to_string(),
        };
        if shared {
            if let Err(e) = self.store(&message).await {
                tracing::warn!(error = %e, "admin message kept on this instance only: redis failed");
                shared = false;
            }
        }
        if !shared {
            self.local
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(message.id.clone(), (message.clone(), HashMap::new()));
        }
        let data = serde_json::to_value(&message).expect("a message serialises");
        self.bus
            .publish(Event::new(
                types::ADMIN_MESSAGE,
                None,
                self.instances.id(),
                data,
            ))
            .await;
        Ok((message, shared))
    }

    async fn store(&self, message: &Message) -> Result<(), RemoteError> {
        let remote = self.shared().ok_or(RemoteError::Open)?;
        let mut conn = remote.connection();
        let json = serde_json::to_string(message).expect("a message serialises");
        let _: () = remote
            .run_within(
                REDIS_TIMEOUT,
                redis::cmd("SET")
                    .arg(Self::message_key(remote, &message.id))
                    .arg(json)
                    .arg("PX")
                    .arg(MESSAGE_TTL.as_millis() as u64)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(())
    }

    /// The message and its acks, by instance.
    pub async fn get(&self, id: &str) -> Option<(Message, Acks)> {
        if let Some(found) = self
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
        {
            return Some(found.clone());
        }
        let remote = self.remote.as_ref()?;
        let mut conn = remote.connection();
        let json: Option<String> = remote
            .run_within(
                REDIS_TIMEOUT,
                redis::cmd("GET")
                    .arg(Self::message_key(remote, id))
                    .query_async(&mut conn),
            )
            .await
            .ok()?;
        let message: Message = serde_json::from_str(&json?).ok()?;
        let acks: HashMap<String, String> = remote
            .run_within(
                REDIS_TIMEOUT,
                redis::cmd("HGETALL")
                    .arg(Self::acks_key(remote, id))
                    .query_async(&mut conn),
            )
            .await
            .unwrap_or_default();
        let acks = acks
            .into_iter()
            .filter_map(|(k, v)| Some((k, serde_json::from_str(&v).ok()?)))
            .collect();
        Some((message, acks))
    }

    /// Whether this instance has acted on `id` already (and marks it acted on).
    fn first_time(&self, id: &str) -> bool {
        let mut handled = self.handled.lock().unwrap_or_else(PoisonError::into_inner);
        let (seen, order) = &mut *handled;
        if !seen.insert(id.to_string()) {
            return false;
        }
        order.push_back(id.to_string());
        if order.len() > HANDLED_MAX {
            if let Some(old) = order.pop_front() {
                seen.remove(&old);
            }
        }
        true
    }

    /// Acts on a message meant for this instance, once, and acks it.
    pub async fn handle(&self, message: Message) {
        let me = self.instances.id();
        if (message.to != "all" && message.to != me) || !self.first_time(&message.id) {
            return;
        }
        let (ok, detail) = self.act(&message);
        tracing::info!(command = %message.command, ok, "admin message handled");
        let ack = Ack {
            ok,
            at: Utc::now(),
            detail,
        };
        self.record_ack(&message.id, &ack).await;
        let data = json!({"message_id": message.id, "instance_id": me, "command": message.command,
                          "ok": ack.ok, "detail": ack.detail});
        self.bus
            .publish(Event::new(types::ADMIN_ACK, None, me, data))
            .await;
    }

    async fn record_ack(&self, id: &str, ack: &Ack) {
        let me = self.instances.id().to_string();
        {
            let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, acks)) = local.get_mut(id) {
                acks.entry(me).or_insert_with(|| ack.clone());
                return;
            }
        }
        let Some(remote) = &self.remote else {
            return;
        };
        let mut conn = remote.connection();
        let json = serde_json::to_string(ack).expect("an ack serialises");
        let key = Self::acks_key(remote, id);
        let mut pipe = redis::pipe();
        pipe.hset_nx(&key, &me, json)
            .pexpire(&key, MESSAGE_TTL.as_millis() as i64);
        let stored: Result<(bool, bool), _> = remote
            .run_within(REDIS_TIMEOUT, pipe.query_async(&mut conn))
            .await;
        if let Err(e) = stored {
            tracing::warn!(error = %e, "admin message ack not stored");
        }
    }

    fn act(&self, message: &Message) -> (bool, String) {
        match message.command.as_str() {
            "ping" => (true, "pong".into()),
            "flush_l1" => {
                let (entries, _) = self.cache.local_usage();
                self.cache.flush_local();
                (true, format!("tier 1 flushed ({entries} entries)"))
            }
            "drain" => {
                self.instances.set_draining(true);
                tracing::warn!("draining: /healthz answers 503 until resumed");
                (true, "draining".into())
            }
            "resume" => {
                self.instances.set_draining(false);
                tracing::info!("resumed: /healthz answers 200");
                (true, "serving".into())
            }
            "log_level" => {
                let filter = message
                    .args
                    .get("filter")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                match crate::telemetry::set_filter(filter) {
                    Ok(()) => (true, format!("log filter is now `{filter}`")),
                    Err(e) => (false, e),
                }
            }
            other => (false, format!("unknown command `{other}`")),
        }
    }
}

/// Reads the bus and handles every admin message meant for this instance.
pub async fn run_receiver(admin: Arc<Admin>, mut shutdown: watch::Receiver<bool>) {
    let mut events = admin.bus.subscribe();
    loop {
        tokio::select! {
            received = events.recv() => match received {
                Ok(event) if event.kind == types::ADMIN_MESSAGE => {
                    match event.event().map(|e| serde_json::from_value::<Message>(e.data)) {
                        Some(Ok(message)) => admin.handle(message).await,
                        _ => tracing::warn!("ignoring a malformed admin message"),
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "the admin receiver fell behind the bus");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = shutdown.changed() => return,
        }
    }
}
