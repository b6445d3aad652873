//! Building the application (store, state, listener) and serving it until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use backon::{ExponentialBuilder, Retryable as _};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, Admin};
use crate::cache::{
    spawn_background, BackgroundConfig, Cache, Liveness, LocalTier, Remote, TierOneBudget, Ttls,
};
use crate::calls::{self, model::types, Bus, CallBook, Calls, Event};
use crate::config::{Secret, ServeArgs};
use crate::http::{self, AppState, Settings};
use crate::instances::{Instances, LocalState, StateProbe};
use crate::lookup::Lookup;
use crate::monitoring::{AlertStatus, DownSince, Monitor, MonitorConfig};
use crate::postcall;
use crate::spool::Spool;
use crate::store::{self, DynStore, GatedStore, InstrumentedStore, Store as _};
use crate::supervise::Tasks;

/// A built application: store, bound listener, ready to serve.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    store: DynStore,
    background: Background,
}

/// What runs beside the server while it serves.
struct Background {
    listen_url: Option<String>,
    listen_heartbeat: Duration,
    warm_leads: u64,
}

/// How long warming waits for the invalidation channels to connect before it goes ahead.
const WARM_WAIT_AT_MOST: Duration = Duration::from_secs(5);

/// The Postgres URL to LISTEN on for changes made around the service, when the store is
/// Postgres.
fn listen_url(args: &ServeArgs) -> Option<String> {
    args.database_listen_url
        .as_ref()
        .or(Some(&args.db.database_url))
        .filter(|u| u.is_postgres())
        .map(|u| u.as_str().to_string())
}

/// The two tiers as configured: tier 1 unless `L1_MAX_MB=0`, tier 2 when `REDIS_URL` is set
/// and `REDIS_ENABLED` is not false.
fn build_cache(args: &ServeArgs, monitor: &Monitor) -> anyhow::Result<Cache> {
    let budget = TierOneBudget::of(args.l1_max_mb.saturating_mul(1024 * 1024));
    let local = (budget.entries > 0).then(|| LocalTier::new(budget.entries));
    let remote = match (&args.redis_url, args.redis_enabled) {
        (Some(url), true) => Some(Arc::new(
            Remote::new(
                url.as_str(),
                &args.redis_key_prefix,
                Duration::from_millis(args.redis_timeout_ms),
                Some(monitor.clone()),
            )
            .context("REDIS_URL: not a usable Redis URL")?,
        )),
        _ => None,
    };
    crate::monitoring::metrics::redis_enabled(remote.is_some());
    let expects_listen = listen_url(args).is_some();
    let liveness = Arc::new(Liveness {
        expects_pubsub: remote.is_some(),
        expects_listen,
        ..Liveness::default()
    });
    Ok(Cache::new(
        local,
        remote,
        Ttls::from_args(&args.ttl, args.stale_grace_s),
        liveness,
        Duration::from_secs(args.l1_max_age_s),
        budget.mirror,
        monitor.clone(),
    ))
}

/// Secrets generated for a `serve --demo` run because they were not configured, to print once.
#[derive(Debug, Default)]
pub struct GeneratedSecrets {
    pub admin_token: Option<Secret>,
    pub webhook_secret: Option<Secret>,
}

impl Application {
    /// Opens the store, migrates it, resolves secrets, and binds `LISTEN_ADDR` (port 0 picks a
    /// free port; see [`Application::local_addr`]).
    ///
    /// A database that is down does not stop the start: the store connects lazily and
    /// migrations run in the background, retried with backoff, once the database answers
    /// (until then the store answers "unavailable": see [`GatedStore`]). With the database up,
    /// the first attempt is waited for, so that the instance serves with its schema in place,
    /// and a migration that fails for good (a broken migration, wrong credentials) stops it.
    pub async fn build(args: &ServeArgs) -> anyhow::Result<(Application, GeneratedSecrets)> {
        let url = &args.db.database_url;
        let store = store::connect(url.as_str())
            .await
            .with_context(|| format!("opening the database {}", url.redacted()))?;
        let store = Arc::new(GatedStore::new(store));
        let mut migration = spawn_migration(Arc::downgrade(&store));
        let first = tokio::time::timeout(
            FIRST_MIGRATION_WAIT,
            migration.wait_for(|m| !matches!(m, Migration::Pending)),
        )
        .await
        .ok()
        .and_then(|seen| seen.ok().map(|m| m.clone()));
        match first {
            Some(Migration::Done) => {}
            Some(Migration::Failed(e)) => {
                anyhow::bail!("migrating the database {}: {e}", url.redacted())
            }
            Some(Migration::Waiting(e)) => tracing::warn!(
                error = %e,
                "the database is unavailable; serving without it (cache and defaults) and migrating once it answers"
            ),
            _ => tracing::warn!(
                "the database has not answered yet; serving without it (cache and defaults) and migrating once it answers"
            ),
        }
        Self::build_with_store(args, store).await
    }

    /// As [`Application::build`], over a store that is already open and migrated.
    pub async fn build_with_store(
        args: &ServeArgs,
        store: DynStore,
    ) -> anyhow::Result<(Application, GeneratedSecrets)> {
        // libphonenumber loads its metadata on first use (a noticeable pause): pay it here,
        // not on the first call's deadline.
        let _ = crate::domain::Phone::parse("+16129782029", args.default_region);
        args.check_secrets()?;
        // Only `serve --demo` gets here without them.
        let mut generated = GeneratedSecrets::default();
        let admin_token = args.admin_token.clone().unwrap_or_else(|| {
            let s = Secret::generate();
            generated.admin_token = Some(s.clone());
            s
        });
        let webhook_secret = args.webhook_secret.clone().unwrap_or_else(|| {
            let s = Secret::generate();
            generated.webhook_secret = Some(s.clone());
            s
        });
        let settings = Settings {
            admin_token,
            webhook_secret,
            elevenlabs_webhook_secret: args.elevenlabs_webhook_secret.clone(),
            override_first_message: args.override_first_message,
            default_region: args.default_region,
            webhook_deadline: args.webhook_deadline(),
            started_at: Instant::now(),
            limits: http::Limits::from(&args.http),
        };
        let instance_id = args.calls.instance_id();
        let monitor = Monitor::new(MonitorConfig {
            instance_id: instance_id.clone(),
            ..MonitorConfig::from(&args.alerts)
        });
        let store: DynStore = Arc::new(InstrumentedStore::new(store));
        let cache = Arc::new(build_cache(args, &monitor)?);
        // One quick look at Redis, so that an instance whose Redis is up serves with tier 2
        // from its first request. Bounded: with Redis down it starts at once, degraded, and the
        // background probe closes the breaker when Redis comes.
        if let Some(remote) = cache.remote() {
            if cache
                .handshake(remote, Duration::from_millis(300))
                .await
                .is_ok()
            {
                remote.close_breaker();
            }
        }
        let spool = Spool::open(&args.spool_dir, args.spool_max_bytes())
            .with_context(|| format!("opening SPOOL_DIR {}", args.spool_dir.display()))?;
        let call_ttl = Duration::from_secs(args.calls.call_ttl_s);
        let remote = cache.remote().cloned();
        let bus = Arc::new(Bus::new(
            remote.clone(),
            instance_id,
            args.calls.call_events_max as usize,
            call_ttl,
        ));
        let calls = args.calls.calls_enabled.then(|| {
            Arc::new(Calls::new(
                CallBook::new(remote.clone(), call_ttl),
                bus.clone(),
            ))
        });
        if let Some(calls) = &calls {
            let calls = calls.clone();
            monitor.on_calls(Box::new(move || calls.counts()));
        }
        let alerts_bus = bus.clone();
        monitor.on_alert(Box::new(move |change| {
            let bus = alerts_bus.clone();
            let kind = match change.status {
                AlertStatus::Firing => types::ALERT_FIRING,
                AlertStatus::Resolved => types::ALERT_RESOLVED,
            };
            let data = serde_json::to_value(change).unwrap_or_default();
            let event = Event::new(kind, None, bus.instance_id(), data);
            tokio::spawn(async move { bus.publish(event).await });
        }));
        let db_down_since_ms = Arc::new(AtomicI64::new(0));
        let instances = Arc::new(Instances::new(
            remote.clone(),
            bus.clone(),
            Duration::from_secs(args.calls.heartbeat_interval_s),
            Duration::from_secs(args.alerts.alert_hold_s),
            state_probe(&monitor, &cache, &db_down_since_ms, calls.as_ref()),
        ));
        let admin = Arc::new(Admin::new(
            remote,
            bus.clone(),
            instances.clone(),
            cache.clone(),
        ));
        let state = AppState {
            lookup: Arc::new(Lookup::new(store.clone(), cache)),
            settings: Arc::new(settings),
            spool,
            monitor,
            db_down_since_ms,
            tasks: Tasks::new(),
            calls,
            bus,
            instances,
            admin,
        };
        let background = Background {
            listen_url: listen_url(args),
            listen_heartbeat: Duration::from_millis(args.listen_heartbeat_ms),
            warm_leads: args.warm_leads,
        };
        let listener = TcpListener::bind(args.listen_addr)
            .await
            .with_context(|| format!("binding LISTEN_ADDR {}", args.listen_addr))?;
        Ok((
            Application {
                listener,
                state,
                store,
                background,
            },
            generated,
        ))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn store(&self) -> &DynStore {
        &self.store
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then lets open requests finish.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop_rx_db = stop_rx.clone();
        let lookup = self.state.lookup.clone();
        spawn_background(
            lookup.cache().clone(),
            BackgroundConfig {
                listen_url: self.background.listen_url,
                region: self.state.settings.default_region,
                listen_heartbeat: self.background.listen_heartbeat,
            },
            &self.state.tasks,
            stop_rx.clone(),
        );
        if self.state.bus.is_shared() {
            let (bus, stop) = (self.state.bus.clone(), stop_rx.clone());
            self.state
                .tasks
                .spawn("event_subscriber", stop_rx.clone(), move || {
                    calls::bus::run_subscriber(bus.clone(), stop.clone())
                });
        }
        // The dashboard's live list of bus events.
        let (bus, monitor, stop) = (
            self.state.bus.clone(),
            self.state.monitor.clone(),
            stop_rx.clone(),
        );
        self.state
            .tasks
            .spawn("event_forwarder", stop_rx.clone(), move || {
                crate::monitoring::stream::forward_bus(bus.clone(), monitor.clone(), stop.clone())
            });
        if let Some(calls) = &self.state.calls {
            calls.spawn(&self.state.tasks, stop_rx.clone());
        }
        let (l, spool, region, stop) = (
            lookup.clone(),
            self.state.spool.clone(),
            self.state.settings.default_region,
            stop_rx.clone(),
        );
        self.state
            .tasks
            .spawn("spool_drainer", stop_rx.clone(), move || {
                postcall::drain_spool(l.clone(), spool.clone(), region, stop.clone())
            });
        if self.background.warm_leads > 0 {
            let warm = self.background.warm_leads;
            tokio::spawn(async move {
                lookup.warm_at_start(warm, WARM_WAIT_AT_MOST).await;
            });
        }
        let (store, down) = (self.store.clone(), self.state.db_down_since_ms.clone());
        let stop = stop_rx_db.clone();
        self.state
            .tasks
            .spawn("database_probe", stop_rx_db, move || {
                probe_database(store.clone(), down.clone(), stop.clone())
            });
        if self.state.bus.is_shared() {
            let (instances, stop) = (self.state.instances.clone(), stop_rx.clone());
            self.state
                .tasks
                .spawn("heartbeat", stop_rx.clone(), move || {
                    instances.clone().run(stop.clone())
                });
        }
        let (admin, stop) = (self.state.admin.clone(), stop_rx.clone());
        self.state
            .tasks
            .spawn("admin_receiver", stop_rx.clone(), move || {
                admin::run_receiver(admin.clone(), stop.clone())
            });
        let monitor = self.state.monitor.clone();
        let redis = self.state.lookup.cache().remote().cloned();
        let db_down = self.state.db_down_since_ms.clone();
        let instances = self.state.instances.clone();
        monitor.spawn(Box::new(move || DownSince {
            redis_ms: redis.as_ref().and_then(|r| r.breaker.down_since_ms()),
            database_ms: Some(db_down.load(Ordering::Acquire)).filter(|t| *t > 0),
            instances_lost: instances.lost_now(),
        }));
        let limits = self.state.settings.limits;
        let instances = self.state.instances.clone();
        let calls = self.state.calls.clone();
        let router = http::router(self.state);
        // A stopping instance leaves the list at once. SSE streams end as soon as shutdown
        // begins: graceful shutdown waits for every open connection, and a stream never ends
        // by itself.
        let served = http::server::serve(self.listener, router, limits, async move {
            shutdown.await;
            instances.leave().await;
            monitor.shutdown();
        })
        .await;
        let _ = stop_tx.send(true);
        // Queued call changes are written before the process ends.
        if let Some(calls) = calls {
            calls.stopped(CALLS_STOP_AT_MOST).await;
        }
        served
    }
}

/// How long a stopping instance waits for the call writer (its own bound is 3 s per part).
const CALLS_STOP_AT_MOST: Duration = Duration::from_secs(8);

/// What this instance's heartbeat says about it.
fn state_probe(
    monitor: &Monitor,
    cache: &Arc<crate::cache::Cache>,
    db_down_since_ms: &Arc<AtomicI64>,
    calls: Option<&Arc<Calls>>,
) -> StateProbe {
    let (monitor, cache, db_down) = (monitor.clone(), cache.clone(), db_down_since_ms.clone());
    let calls = calls.cloned();
    Box::new(move || LocalState {
        redis: match cache.remote() {
            None => "disabled",
            Some(r) if r.breaker.is_closed() => "up",
            Some(_) => "down",
        },
        database: if db_down.load(Ordering::Acquire) > 0 {
            "down"
        } else {
            "up"
        },
        requests_per_s: monitor.summary().requests_per_s,
        calls_active: calls.as_ref().map_or(0, |c| c.counts().active),
    })
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

/// Pings the database every second, recording since when it has been failing (0 while up): the
/// `database_down` alert and the dashboard read it without touching the database themselves.
async fn probe_database(
    store: DynStore,
    down_since_ms: Arc<AtomicI64>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let up = matches!(
            tokio::time::timeout(Duration::from_secs(1), store.ping()).await,
            Ok(Ok(()))
        );
        crate::monitoring::metrics::database_up(up);
        if up {
            down_since_ms.store(0, Ordering::Release);
        } else {
            let now = chrono::Utc::now().timestamp_millis();
            let _ = down_since_ms.compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// How long [`Application::build`] waits for the first migration attempt.
const FIRST_MIGRATION_WAIT: Duration = Duration::from_secs(5);
/// The longest wait between two migration attempts while the database is down.
const MIGRATION_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Where the background migration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Migration {
    /// The first attempt is running.
    Pending,
    /// The database is unavailable; trying again.
    Waiting(String),
    /// It failed for another reason (a broken migration, wrong credentials); trying again too,
    /// in case an operator puts it right.
    Failed(String),
    Done,
}

/// Migrates `store` in the background until it succeeds, with exponential backoff (and jitter)
/// between attempts, and reports how it stands. It ends early when the store is dropped (the
/// application is gone).
fn spawn_migration(store: Weak<GatedStore>) -> watch::Receiver<Migration> {
    let (tx, rx) = watch::channel(Migration::Pending);
    enum Attempt {
        Gone,
        Failed(store::StoreError),
    }
    tokio::spawn(async move {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(MIGRATION_BACKOFF_MAX)
            .with_jitter()
            .without_max_times();
        let done = (|| async {
            let store = store.upgrade().ok_or(Attempt::Gone)?;
            store.migrate().await.map_err(Attempt::Failed)
        })
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e| matches!(e, Attempt::Failed(_)))
        .notify(|e, next| {
            let Attempt::Failed(e) = e else { return };
            let next_s = next.as_secs_f64();
            if e.is_unavailable() {
                tracing::warn!(error = %e, next_s, "migrations wait for the database");
                tx.send_replace(Migration::Waiting(e.to_string()));
            } else {
                tracing::error!(error = %e, next_s, "migrations failed");
                tx.send_replace(Migration::Failed(e.to_string()));
            }
        })
        .await;
        if done.is_ok() {
            tx.send_replace(Migration::Done);
        }
    });
    rx
}
