//! The accept loop: HTTP/1.1 connections served by hyper with a header read timeout, at most
//! `MAX_CONNECTIONS` of them at once, and a graceful shutdown.
//!
//! `axum::serve` offers neither a header timeout (hyper's needs a timer, which it does not
//! set) nor a connection cap, so this is `axum::serve` with both:
//! - A connection is accepted only once a permit of the connection semaphore is free; beyond
//!   the cap, new connections wait in the kernel's listen backlog and are accepted as soon as
//!   one closes. Accepted connections are never disturbed by those waiting.
//! - hyper closes a connection whose request headers have not arrived in full within
//!   `HEADER_READ_TIMEOUT_S` of it starting to wait for them. It starts waiting as soon as a
//!   connection is idle, so the same bound closes idle keep-alive connections; a load balancer
//!   that reuses connections must use a shorter idle timeout than this.
//! - A connection's read buffer is bounded ([`READ_BUFFER_MAX`]), so that what is read off
//!   sockets and not yet handed to a handler is bounded too.
//! - On shutdown the loop stops accepting, asks every connection to finish (hyper ends idle
//!   ones at once and the others after their response), and returns once all are closed.
//!   Streams that never end by themselves (SSE) end on the monitor's shutdown signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt as _;

use super::Limits;
use crate::monitoring::metrics;

/// The most a connection's read buffer grows to (hyper's default is about 400 KiB): what
/// sockets hold beside the body budget is at most `MAX_CONNECTIONS` times this. Request heads
/// must fit in it.
const READ_BUFFER_MAX: usize = 64 * 1024;

/// Serves `router` on `listener` until `shutdown` completes, then lets open connections
/// finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Connections watch `stop` to begin their graceful shutdown, and each holds a `closed`
    // receiver until it has ended: the loop waits for the last one to go.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (closed_tx, closed_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Small writes (SSE events, short answers) go out at once, not after the
                    // peer's delayed ACK.
                    let _ = stream.set_nodelay(true);
                    stream
                }
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        tokio::spawn(serve_connection(
            stream,
            router.clone(),
            limits.header_read_timeout,
            permit,
            stop_rx.clone(),
            closed_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(closed_rx);
    closed_tx.closed().await;
    Ok(())
}

/// As `axum::serve` does: a connection reset before it was accepted is nothing; anything
/// else (out of file descriptors) is worth a line and a pause, not a busy loop.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Lets a handler close its connection at once, whatever is still queued on it: how a
/// streaming client that stopped reading is let go (see `http::calls`). Every request served
/// by [`serve`] carries one as an extension.
#[derive(Clone, Debug, Default)]
pub struct CloseConnection(Arc<tokio::sync::Notify>);

impl CloseConnection {
    pub fn close(&self) {
        self.0.notify_one();
    }
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    header_read_timeout: Duration,
    permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
    closed: watch::Receiver<()>,
) {
    metrics::connections_open(1.0);
    let closer = CloseConnection::default();
    let handle = closer.clone();
    let service = router.map_request(move |req: Request<Incoming>| {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(handle.clone());
        req
    });
    let service = TowerToHyperService::new(service);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(READ_BUFFER_MAX);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            () = closer.0.notified() => {
                tracing::debug!("connection closed by its handler");
                break;
            }
            changed = stop.wait_for(|stop| *stop), if !stopping => {
                stopping = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
    metrics::connections_open(-1.0);
    drop(permit);
    drop(closed);
}
