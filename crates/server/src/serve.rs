//! Serving the router on a socket until `shutdown` resolves: stop accepting, finish in-flight
//! requests, then sign the log's tail.

use std::future::Future;

use crate::state::App;

/// Serves `app` on `listener` (plain TCP, or [`crate::tls::TlsListener`]) until `shutdown`
/// completes.
pub async fn serve<L>(listener: L, app: App, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
    L::Io: crate::tls::NoDelay,
{
    use axum::serve::ListenerExt as _;
    let router = crate::router(app.clone());
    let listener = listener.tap_io(|io| crate::tls::NoDelay::no_delay(io));
    let stopping = app.clone();
    let shutdown = async move {
        shutdown.await;
        // Streams that would never end on their own (the console's events) end now.
        stopping.stopping.send_replace(true);
    };
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await?;
    // Everything answered is committed; sign whatever the last groups left unsigned.
    let tail = tokio::task::spawn_blocking(move || app.ledger().checkpoint()).await;
    match tail {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
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
