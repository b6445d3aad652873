//! Building the application (store, state, listener) and serving it until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::config::{Secret, ServeArgs};
use crate::http::{self, AppState, Settings};
use crate::lookup::Lookup;
use crate::store::{self, DynStore};

/// A built application: migrated store, bound listener, ready to serve.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    store: DynStore,
}

/// Secrets that were generated because they were not configured, to print once.
#[derive(Debug, Default)]
pub struct GeneratedSecrets {
    pub admin_token: Option<Secret>,
    pub webhook_secret: Option<Secret>,
}

impl Application {
    /// Connects and migrates the store, resolves secrets, and binds `LISTEN_ADDR` (port 0
    /// picks a free port; see [`Application::local_addr`]).
    pub async fn build(args: &ServeArgs) -> anyhow::Result<(Application, GeneratedSecrets)> {
        let store = store::connect(args.db.database_url.as_str())
            .await
            .with_context(|| format!("opening the database {}", args.db.database_url.redacted()))?;
        store.migrate().await.with_context(|| {
            format!("migrating the database {}", args.db.database_url.redacted())
        })?;
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
        };
        let state = AppState {
            lookup: Arc::new(Lookup::new(store.clone())),
            settings: Arc::new(settings),
        };
        let listener = TcpListener::bind(args.listen_addr)
            .await
            .with_context(|| format!("binding LISTEN_ADDR {}", args.listen_addr))?;
        Ok((
            Application {
                listener,
                state,
                store,
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
        let router = http::router(self.state);
        axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    }
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
