//! TLS for `warden serve --tls-cert --tls-key` (rustls, TLS 1.2 and 1.3, ring provider).
//!
//! Handshakes run concurrently in their own tasks (by default at most 256 at once, 10 s each:
//! [`crate::limits::Connections`]), so a slow or silent client never holds up the others;
//! beyond the cap a new connection is closed at once. Finished connections queue in a bounded
//! channel for the server to take.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("`{path}`: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("the TLS configuration: {0}")]
    Config(String),
}

/// A TLS acceptor from a PEM certificate chain and a PEM private key.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let file_err =
        |path: &Path, e: &dyn std::fmt::Display| TlsError::File { path: path.to_path_buf(), reason: e.to_string() };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, &e))?;
    if certs.is_empty() {
        return Err(file_err(cert, &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A listener that hands the server finished TLS connections.
#[derive(Debug)]
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp` with the default bounds (call inside a tokio runtime).
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        Self::with_bounds(tcp, acceptor, &crate::limits::Connections::default())
    }

    /// Starts accepting on `tcp`: at most `bounds.tls_handshakes` handshakes at once, each
    /// within `bounds.tls_handshake_timeout`.
    pub fn with_bounds(
        tcp: TcpListener,
        acceptor: TlsAcceptor,
        bounds: &crate::limits::Connections,
    ) -> std::io::Result<Self> {
        let (handshakes, handshake_timeout) = (bounds.tls_handshakes, bounds.tls_handshake_timeout);
        let addr = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(handshakes));
            // One client may hold a quarter of the handshake slots: a slow one from one
            // address cannot keep everyone else from starting TLS.
            let peers = Arc::new(crate::limits::Peers::default());
            let per_peer = (handshakes / 4).max(1);
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    break;
                }
                let Some(mine) = peers.take(peer.ip(), per_peer) else {
                    tracing::debug!(%peer, "too many TLS handshakes from this client; connection dropped");
                    continue;
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "too many TLS handshakes in progress; connection dropped");
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _slots = (slot, mine);
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, addr })
    }
}

/// A connection whose small writes leave at once. An MCP answer is a stream of several small
/// writes (SSE events, the closing chunk); with Nagle's algorithm each waited for the client's
/// delayed ACK, ~40 ms a call.
pub trait NoDelay {
    fn no_delay(&self);
}

impl NoDelay for tokio::net::TcpStream {
    fn no_delay(&self) {
        let _ = self.set_nodelay(true);
    }
}

impl NoDelay for TlsStream<TcpStream> {
    fn no_delay(&self) {
        let _ = self.get_ref().0.set_nodelay(true);
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}
