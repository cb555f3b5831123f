//! TLS: the gateway answers over rustls with the configured certificate; plain HTTP on the TLS
//! port gets nothing.

use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::rustls;
use warden_server::tls::{TlsListener, acceptor};

use crate::harness;

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls").join(name)
}

/// A TLS client that trusts the fixtures' CA.
fn client() -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from_pem_file(fixture("ca.pem")).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn the_gateway_speaks_tls_with_the_configured_certificate() {
    let h = harness();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = TlsListener::new(tcp, acceptor(&fixture("cert.pem"), &fixture("key.pem")).unwrap()).unwrap();
    let addr = axum::serve::Listener::local_addr(&listener).unwrap();
    tokio::spawn(warden_server::serve::serve(listener, h.app.clone(), std::future::pending()));

    let connector = client();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(r#"{"status":"ok"}"#), "{answer}");

    // Plain HTTP on the TLS port is not served.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got).await;
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"));
}

/// Silent TLS clients (a TCP connect, then no ClientHello) from one address hold at most a
/// quarter of the handshake slots, each for the handshake timeout; another client's handshake
/// goes through meanwhile.
#[tokio::test]
async fn silent_handshakes_are_bounded_per_client_and_in_time() {
    let h = harness();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bounds = warden_server::limits::Connections {
        tls_handshakes: 8,
        tls_handshake_timeout: std::time::Duration::from_secs(1),
        ..Default::default()
    };
    let listener =
        TlsListener::with_bounds(tcp, acceptor(&fixture("cert.pem"), &fixture("key.pem")).unwrap(), &bounds).unwrap();
    let addr = axum::serve::Listener::local_addr(&listener).unwrap();
    tokio::spawn(warden_server::serve::serve(listener, h.app.clone(), std::future::pending()));
    let from = |ip: &'static str| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        socket.connect(addr).await.unwrap()
    };
    let mut silent = Vec::new();
    for _ in 0..6 {
        silent.push(from("127.0.0.1").await);
    }
    // Beyond two (a quarter of 8) from this client: closed at once.
    let started = std::time::Instant::now();
    let mut closed_at_once = 0;
    for s in &mut silent {
        let mut buf = [0u8; 16];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(std::time::Duration::from_millis(300), s.read(&mut buf)).await
        {
            closed_at_once += 1;
        }
    }
    assert_eq!(closed_at_once, 4, "two may wait, the rest are dropped");
    // Another client completes its handshake while two wait.
    let connector = client();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, from("127.0.0.2").await).await.unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The two that waited are closed once the handshake timeout passes.
    for s in &mut silent {
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(matches!(r, Ok(Ok(0) | Err(_))), "still open: {r:?}");
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
}

#[test]
fn a_missing_or_wrong_key_file_is_a_clear_error() {
    let err = acceptor(&fixture("cert.pem"), &fixture("nope.pem")).err().unwrap();
    assert!(err.to_string().contains("nope.pem"), "{err}");
    let err = acceptor(&fixture("key.pem"), &fixture("key.pem")).err().unwrap();
    assert!(err.to_string().contains("key.pem"), "{err}");
}
