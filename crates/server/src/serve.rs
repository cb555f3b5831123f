//! Serving the router on a socket until `shutdown` resolves: stop accepting, finish in-flight
//! requests, then sign the log's tail.
//!
//! Connections are served by hyper directly (not `axum::serve`, which sets no timer), so the
//! bounds of [`crate::limits::Connections`] hold below HTTP: at most `max_open` sockets (and
//! `max_per_peer` from one address) — beyond, `503 overloaded` and the socket is closed —, a
//! header read within `header_timeout` (which is also the keep-alive idle timeout), a body
//! read within `body_timeout` (`408 request_timeout`, then the socket is closed), and an
//! answer the client does not read for `write_timeout` ends the connection ([`WriteDeadline`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use tokio::io::AsyncWriteExt as _;

use crate::state::App;

/// Serves `app` on `listener` (plain TCP, or [`crate::tls::TlsListener`]) until `shutdown`
/// completes.
pub async fn serve<L>(
    mut listener: L,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    L::Io: crate::tls::NoDelay,
{
    let router = crate::router(app.clone());
    let bounds = app.limits.connections;
    let open = Arc::new(tokio::sync::Semaphore::new(bounds.max_open));
    let peers = Arc::new(crate::limits::Peers::default());
    // Refusals being written (each at most a second): a flood of refused connections is
    // dropped unanswered beyond these, rather than holding sockets to be told no.
    let refusing = Arc::new(tokio::sync::Semaphore::new(REFUSALS_AT_ONCE));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(bounds.header_timeout).keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            conn = listener.accept() => conn,
            () = &mut shutdown => break,
        };
        crate::tls::NoDelay::no_delay(&io);
        let admitted = open.clone().try_acquire_owned().ok().zip(peers.take(peer.ip(), bounds.max_per_peer));
        let Some((permit, slot)) = admitted else {
            let cap = if open.available_permits() == 0 { "connections" } else { "connections_per_peer" };
            app.metrics.refused(cap);
            if let Ok(permit) = refusing.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(io).await;
                    drop(permit);
                });
            }
            continue;
        };
        let (state, routes) = (app.clone(), router.clone());
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let (state, routes) = (state.clone(), routes.clone());
            async move { Ok::<_, std::convert::Infallible>(answer(&state, routes, peer, req).await) }
        });
        let io = WriteDeadline::new(io, bounds.write_timeout);
        let conn = graceful.watch(http.serve_connection(hyper_util::rt::TokioIo::new(io), service));
        let state = app.clone();
        state.metrics.connection_opened();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection closed");
            }
            state.metrics.connection_closed();
            drop((permit, slot));
        });
    }
    // Streams that would never end on their own (the console's events) end now.
    app.stopping.send_replace(true);
    drop(listener);
    graceful.shutdown().await;
    // Everything answered is committed; sign whatever the last groups left unsigned, and tell
    // the other nodes on a shared store not to wait for this one's heartbeat to age.
    let tail = tokio::task::spawn_blocking(move || {
        if app.shared_store
            && let Err(e) = crate::node::goodbye(&app)
        {
            tracing::warn!(error = %e.message, "cannot record this node's stop; the others will see it in seconds");
        }
        app.ledger().checkpoint()
    })
    .await;
    match tail {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}

/// One request: the peer's address in its extensions (`ConnectInfo`), its body under the
/// body deadline; a body the client did not finish in time is answered `408` whatever the
/// handler made of the cut-off body, and the connection closes.
async fn answer(
    app: &App,
    router: axum::Router,
    peer: SocketAddr,
    req: hyper::Request<Incoming>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    use tower::ServiceExt as _;
    let fired = Arc::new(AtomicBool::new(false));
    let mut req = if req.body().is_end_stream() {
        req.map(axum::body::Body::new)
    } else {
        let deadline = Box::pin(tokio::time::sleep(app.limits.connections.body_timeout));
        req.map(|inner| axum::body::Body::new(Deadline { inner, deadline, fired: fired.clone() }))
    };
    req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
    let res = match router.oneshot(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    };
    if fired.load(Ordering::Relaxed) {
        app.metrics.refused("body_timeout");
        let mut res = crate::error::ApiError::new(
            crate::error::Code::RequestTimeout,
            format!("the request body did not arrive within {} s", app.limits.connections.body_timeout.as_secs()),
        )
        .into_response();
        res.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        return res;
    }
    res
}

/// A request body that fails once its deadline passes, however the bytes trickle in.
struct Deadline {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    fired: Arc<AtomicBool>,
}

impl hyper::body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.fired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err("the request body did not arrive in time".into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection whose writes must make progress: a write (or flush) that stays blocked — the
/// client does not read, its window stays shut — for `limit` fails with `TimedOut`, and the
/// connection ends. A stream with nothing to send (an idle SSE) writes nothing and is not
/// affected.
struct WriteDeadline<Io> {
    io: Io,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<Io> WriteDeadline<Io> {
    fn new(io: Io, limit: Duration) -> Self {
        WriteDeadline { io, limit, stalled: None }
    }

    /// After a write that could not proceed: the clock runs (started at the first such
    /// write); once past the limit, the error that ends the connection.
    fn blocked(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        let limit = self.limit;
        let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading its answer"))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<Io: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteDeadline<Io> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<Io: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteDeadline<Io> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Pending => this.blocked(cx).map(Err),
            done => {
                this.stalled = None;
                done
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.blocked(cx).map(Err),
            done => {
                this.stalled = None;
                done
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Pending => this.blocked(cx).map(Err),
            done => {
                this.stalled = None;
                done
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_shutdown(cx) {
            Poll::Pending => this.blocked(cx).map(Err),
            done => done,
        }
    }
}

/// Refused connections being told so at once; beyond, they are closed unanswered.
const REFUSALS_AT_ONCE: usize = 64;

/// The answer to a connection beyond a cap: one `503 overloaded`, then the socket closes.
async fn refuse<Io: tokio::io::AsyncWrite + Unpin>(mut io: Io) {
    const BODY: &str = r#"{"error":{"code":"overloaded","message":"too many connections open; retry shortly"}}"#;
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let write = async {
        io.write_all(head.as_bytes()).await?;
        io.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Re-reads the policy directory every `every` and swaps in a changed, valid bundle (each
/// load audited); an invalid one is logged once and the bundle in force stays.
pub async fn watch_policy(app: App, every: std::time::Duration) {
    let mut last_error = String::new();
    loop {
        tokio::time::sleep(every).await;
        let state = app.clone();
        let actor = warden_core::audit::entry::Actor::system("policy-watcher");
        let result = tokio::task::spawn_blocking(move || crate::policy_dir::reload(&state, actor)).await;
        match result {
            Ok(Ok(crate::policy_dir::Reload::Loaded(v))) => {
                tracing::info!(bundle = %v, "policy bundle reloaded");
                last_error.clear();
            }
            Ok(Ok(crate::policy_dir::Reload::Unchanged(_))) => {}
            Ok(Ok(crate::policy_dir::Reload::Replaced(v))) => {
                let text = format!("replaced {v}");
                if text != last_error {
                    tracing::warn!(
                        bundle = %v,
                        "the policy directory holds a bundle that was in force before and was replaced; \
                         not loaded again (reload it as an admin to roll back on purpose)"
                    );
                    last_error = text;
                }
            }
            Ok(Err(e)) => {
                let text = format!("{}: {}", e.message, e.details.map(|d| d.to_string()).unwrap_or_default());
                if text != last_error {
                    tracing::warn!(error = %text, "policy bundle not reloaded");
                    last_error = text;
                }
            }
            Err(e) => tracing::error!(error = %e, "policy watcher failed"),
        }
    }
}

/// Keeps this node in step with the store ([`crate::node::tick`]): at once when the store
/// announces a commit (PostgreSQL's LISTEN/NOTIFY), and every `every` whatever it says.
pub async fn keep_in_step(app: App, every: std::time::Duration) {
    let watch = std::sync::Arc::new(std::sync::Mutex::new(crate::node::Watch::default()));
    let mut last_error = String::new();
    let mut announced = app.ledger().store().changes();
    loop {
        match announced.as_mut() {
            Some(rx) => {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    changed = rx.changed() => match changed {
                        // Commits come by the thousand a second: one look per 50 ms is enough.
                        Ok(()) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                        Err(_) => announced = None,
                    },
                }
            }
            None => tokio::time::sleep(every).await,
        }
        let (state, watch) = (app.clone(), watch.clone());
        let result = tokio::task::spawn_blocking(move || {
            let mut w = watch.lock().unwrap_or_else(|p| p.into_inner());
            crate::node::tick(&state, &mut w, state.now())
        })
        .await;
        match result {
            Ok(Ok(())) => last_error.clear(),
            Ok(Err(e)) if e.message != last_error => {
                tracing::warn!(error = %e.message, "cannot keep in step with the store; retrying");
                last_error = e.message;
            }
            Ok(Err(_)) => {}
            Err(e) => tracing::error!(error = %e, "the node's watch failed"),
        }
    }
}

/// Every `every`: expires approvals past their expiry and sends escalation notices.
pub async fn sweep_approvals(app: App, every: std::time::Duration) {
    loop {
        tokio::time::sleep(every).await;
        let state = app.clone();
        match tokio::task::spawn_blocking(move || crate::sweep_approvals(&state)).await {
            Ok(Ok(swept)) => {
                for a in &swept.expired {
                    tracing::info!(approval = %a.id, "approval expired");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e.message, "approval sweep failed; retrying"),
            Err(e) => tracing::error!(error = %e, "approval sweeper failed"),
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn signals() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
