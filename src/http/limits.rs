//! What one client may make the server hold, whoever it is: request bodies in memory (one
//! budget for the whole process, not per request), and time (a body must arrive in full within
//! a deadline). The header timeout and the connection cap live in the accept loop
//! ([`super::server`]).
//!
//! Every request body is wrapped in a [`GuardedBody`] by the [`guard_body`] middleware. Each
//! frame read takes its bytes from the [`BodyBudget`] before the handler sees it, and the
//! request's [`BodyLedger`] gives them back when the response is ready (the handler's copies
//! are gone by then). A frame the budget cannot take, or a body still arriving at its deadline,
//! ends the body with a [`BodyError`], which the handlers answer as `503 overloaded` or
//! `408 request_timeout`. A handler that streams a body and drops what it reads (the post-call
//! webhook) gives those bytes back at once through the ledger in the request's extensions.
//!
//! Only the post-call webhook reads a body before it can authenticate the sender (its HMAC
//! covers the whole body). Its reads are *untrusted*: they may fill at most three quarters of
//! the budget, so that the authenticated routes (the initiation webhook, whose extractor
//! checks the bearer token before the body is read, and the admin API) always find room.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::ApiError;
use crate::config::HttpLimitArgs;
use crate::monitoring::metrics;

/// The limits as configured (`HEADER_READ_TIMEOUT_S`, `BODY_TIMEOUT_S`, `MAX_CONNECTIONS`,
/// `BODY_BUDGET_MB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    /// Bytes of request bodies held at once, across every request.
    pub body_budget: usize,
}

impl From<&HttpLimitArgs> for Limits {
    fn from(a: &HttpLimitArgs) -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(a.header_read_timeout_s),
            body_timeout: Duration::from_secs(a.body_timeout_s),
            max_connections: usize::try_from(a.max_connections)
                .unwrap_or(usize::MAX)
                .min(tokio::sync::Semaphore::MAX_PERMITS),
            body_budget: usize::try_from(a.body_budget_mb.saturating_mul(1024 * 1024))
                .unwrap_or(usize::MAX),
        }
    }
}

impl Default for Limits {
    /// The defaults of the variables.
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(15),
            max_connections: 512,
            body_budget: 64 * 1024 * 1024,
        }
    }
}

/// Why a request body was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the request body did not arrive within its deadline")]
    TimedOut,
    #[error("the request body budget is exhausted")]
    OverBudget,
}

impl BodyError {
    /// The [`BodyError`] behind a body read error, however many layers wrap it.
    pub fn find(error: &(dyn std::error::Error + 'static)) -> Option<BodyError> {
        let mut current = Some(error);
        while let Some(e) = current {
            if let Some(found) = e.downcast_ref::<BodyError>() {
                return Some(*found);
            }
            current = e.source();
        }
        None
    }

    /// The error a handler answers with when reading its body failed this way.
    pub fn to_api_error(self) -> ApiError {
        match self {
            BodyError::TimedOut => ApiError::RequestTimeout,
            BodyError::OverBudget => ApiError::Overloaded,
        }
    }
}

/// The process's budget of request body bytes in memory; cheap to clone.
#[derive(Debug, Clone)]
pub struct BodyBudget(Arc<BudgetInner>);

#[derive(Debug)]
struct BudgetInner {
    limit: usize,
    /// What untrusted reads may fill at most.
    untrusted_limit: usize,
    in_flight: AtomicUsize,
}

impl BodyBudget {
    pub fn new(limit: usize) -> BodyBudget {
        BodyBudget(Arc::new(BudgetInner {
            limit,
            untrusted_limit: limit - limit / 4,
            in_flight: AtomicUsize::new(0),
        }))
    }

    pub fn limit(&self) -> usize {
        self.0.limit
    }

    /// Bytes held now.
    pub fn in_flight(&self) -> usize {
        self.0.in_flight.load(Ordering::Acquire)
    }

    /// Takes `n` bytes if they fit under the limit of this kind of read; never waits.
    fn try_take(&self, n: usize, trusted: bool) -> bool {
        let cap = if trusted {
            self.0.limit
        } else {
            self.0.untrusted_limit
        };
        let taken = self
            .0
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|total| *total <= cap)
            })
            .is_ok();
        if taken {
            metrics::body_bytes_in_flight(n as f64);
        }
        taken
    }

    fn give(&self, n: usize) {
        if n > 0 {
            self.0.in_flight.fetch_sub(n, Ordering::AcqRel);
            metrics::body_bytes_in_flight(-(n as f64));
        }
    }
}

/// One request's share of the budget: what its body has taken and not yet given back. Every
/// byte left is given back when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct BodyLedger(Arc<LedgerInner>);

#[derive(Debug)]
struct LedgerInner {
    budget: BodyBudget,
    trusted: bool,
    held: AtomicUsize,
}

impl BodyLedger {
    pub fn new(budget: BodyBudget, trusted: bool) -> BodyLedger {
        BodyLedger(Arc::new(LedgerInner {
            budget,
            trusted,
            held: AtomicUsize::new(0),
        }))
    }

    fn take(&self, n: usize) -> Result<(), BodyError> {
        if self.0.budget.try_take(n, self.0.trusted) {
            self.0.held.fetch_add(n, Ordering::AcqRel);
            Ok(())
        } else {
            metrics::body_refused("over_budget");
            Err(BodyError::OverBudget)
        }
    }

    /// Gives back `n` bytes the handler no longer holds (at most what was taken).
    pub fn release(&self, n: usize) {
        let released = self
            .0
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                Some(held.saturating_sub(n))
            })
            .map_or(0, |held| held.min(n));
        self.0.budget.give(released);
    }

    /// Bytes this request holds.
    pub fn held(&self) -> usize {
        self.0.held.load(Ordering::Acquire)
    }
}

impl Drop for LedgerInner {
    fn drop(&mut self) {
        self.budget.give(*self.held.get_mut());
    }
}

/// A request body that takes each frame's bytes from the budget and ends with
/// [`BodyError::TimedOut`] if it is still arriving at its deadline.
pub struct GuardedBody {
    inner: Body,
    ledger: BodyLedger,
    deadline: Instant,
    /// Armed the first time the body has to wait: a body that is already there costs no timer.
    sleep: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl GuardedBody {
    pub fn new(inner: Body, ledger: BodyLedger, deadline: Instant) -> GuardedBody {
        GuardedBody {
            inner,
            ledger,
            deadline,
            sleep: None,
            done: false,
        }
    }

    fn fail(&mut self, error: BodyError) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        self.done = true;
        Poll::Ready(Some(Err(Box::new(error))))
    }
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Err(e) = this.ledger.take(data.len()) {
                        return this.fail(e);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.done = true;
                this.sleep = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let deadline = this.deadline;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.as_mut().poll(cx).is_ready() {
                    metrics::body_refused("timed_out");
                    return this.fail(BodyError::TimedOut);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The state of [`guard_body`].
#[derive(Debug, Clone)]
pub struct BodyGuard {
    pub budget: BodyBudget,
    pub body_timeout: Duration,
}

/// Wraps the request body in a [`GuardedBody`] and puts its [`BodyLedger`] in the request's
/// extensions; the bytes still held are given back once the response is ready.
pub async fn guard_body(State(guard): State<BodyGuard>, req: Request, next: Next) -> Response {
    let trusted = req
        .extensions()
        .get::<MatchedPath>()
        .is_none_or(|p| p.as_str() != super::webhooks::POST_CALL_PATH);
    let ledger = BodyLedger::new(guard.budget.clone(), trusted);
    let deadline = Instant::now() + guard.body_timeout;
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(ledger.clone());
    let body = Body::new(GuardedBody::new(body, ledger.clone(), deadline));
    let response = next.run(Request::from_parts(parts, body)).await;
    drop(ledger);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn untrusted_reads_leave_a_quarter_for_authenticated_ones() {
        let budget = BodyBudget::new(1000);
        let untrusted = BodyLedger::new(budget.clone(), false);
        assert!(untrusted.take(750).is_ok());
        assert_eq!(untrusted.take(1), Err(BodyError::OverBudget));
        let trusted = BodyLedger::new(budget.clone(), true);
        assert!(trusted.take(250).is_ok());
        assert_eq!(trusted.take(1), Err(BodyError::OverBudget));
        assert_eq!(budget.in_flight(), 1000);
        untrusted.release(100);
        assert_eq!(untrusted.held(), 650);
        // Releasing more than was taken gives back only what was taken.
        untrusted.release(10_000);
        assert_eq!(untrusted.held(), 0);
        assert_eq!(budget.in_flight(), 250);
        drop(trusted);
        assert_eq!(budget.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_body_over_the_budget_ends_with_over_budget_and_gives_everything_back() {
        let budget = BodyBudget::new(10);
        let ledger = BodyLedger::new(budget.clone(), true);
        let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"0123456"))),
            Ok(Frame::data(Bytes::from_static(b"789ab"))),
        ];
        let inner = Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
            chunks,
        )));
        let body = Body::new(GuardedBody::new(
            inner,
            ledger.clone(),
            Instant::now() + Duration::from_secs(60),
        ));
        let err = body.collect().await.unwrap_err();
        assert_eq!(BodyError::find(&err), Some(BodyError::OverBudget));
        assert_eq!(budget.in_flight(), 7);
        drop(ledger);
        assert_eq!(budget.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_stalled_body_times_out() {
        let budget = BodyBudget::new(1 << 20);
        let ledger = BodyLedger::new(budget.clone(), true);
        let stalled = futures_util::stream::pending::<Result<Frame<Bytes>, std::io::Error>>();
        let body = Body::new(GuardedBody::new(
            Body::new(http_body_util::StreamBody::new(stalled)),
            ledger,
            Instant::now() + Duration::from_millis(50),
        ));
        let err = axum::body::to_bytes(body, 1 << 20).await.unwrap_err();
        assert_eq!(BodyError::find(&err), Some(BodyError::TimedOut));
        assert_eq!(budget.in_flight(), 0);
    }
}
