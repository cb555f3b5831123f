//! The attackers of the abuse soak (`benches/soak.rs --abuse`): a slowloris from a loopback
//! address of its own, an agent opening MCP sessions and never closing them, and an agent
//! asking for approvals with ever-new parameters. Each counts what it saw; none of them waits
//! for the server's good will (they reconnect and go on).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What the attackers saw.
#[derive(Debug, Default)]
pub struct Counts {
    /// Slowloris connections opened, and those the server closed or refused.
    pub loris_opened: AtomicU64,
    pub loris_closed: AtomicU64,
    /// MCP `initialize` answered 200, and refused.
    pub sessions_opened: AtomicU64,
    pub sessions_refused: AtomicU64,
    /// Approval requests answered `pending_approval`, and refused (429).
    pub approvals_pending: AtomicU64,
    pub approvals_refused: AtomicU64,
    /// Anything else (an attacker's own failure, or a 5xx).
    pub other: AtomicU64,
}

/// The attackers, running until [`Attack::stop`].
pub struct Attack {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub counts: Arc<Counts>,
}

impl Attack {
    /// Starts all three against `addr`: the slowloris holds up to `loris` connections from
    /// 127.0.0.2; the floods send `rate` requests per second each, with `mcp_token` and
    /// `flood_token` (two agents other than the legitimate ones). `flood_body(n)` is the nth
    /// approval request.
    pub fn start(
        addr: &str,
        loris: usize,
        rate: f64,
        mcp_token: String,
        flood_token: String,
        flood_body: fn(u64) -> String,
    ) -> Attack {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let mut threads = Vec::new();
        let (a, s, c) = (addr.to_string(), stop.clone(), counts.clone());
        threads.push(std::thread::spawn(move || slowloris(&a, loris, &s, c)));
        let (a, s, c) = (addr.to_string(), stop.clone(), counts.clone());
        threads.push(std::thread::spawn(move || {
            paced(rate, &s, |_| {
                let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"flood","version":"1"}}}"#;
                match post(&a, "/mcp", &mcp_token, init, "accept: application/json, text/event-stream\r\n") {
                    Some(200) => c.sessions_opened.fetch_add(1, Ordering::Relaxed),
                    Some(429) => c.sessions_refused.fetch_add(1, Ordering::Relaxed),
                    _ => c.other.fetch_add(1, Ordering::Relaxed),
                };
            })
        }));
        let (a, s, c) = (addr.to_string(), stop.clone(), counts.clone());
        threads.push(std::thread::spawn(move || {
            paced(rate, &s, |n| match post_reading(&a, "/v1/actions", &flood_token, &flood_body(n)) {
                Some((200, body)) if body.contains("\"pending_approval\"") => {
                    c.approvals_pending.fetch_add(1, Ordering::Relaxed);
                }
                Some((429, body)) if body.contains("approval_backlog") => {
                    c.approvals_refused.fetch_add(1, Ordering::Relaxed);
                }
                other => {
                    if c.other.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("approval flood: unexpected answer {other:?}");
                    }
                }
            })
        }));
        Attack { stop, threads, counts }
    }

    pub fn stop(self) -> Arc<Counts> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.counts
    }
}

/// Calls `f(n)` `rate` times a second until `stop`.
fn paced(rate: f64, stop: &AtomicBool, mut f: impl FnMut(u64)) {
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = start + period * u32::try_from(n).unwrap_or(u32::MAX);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        f(n);
        n += 1;
    }
}

/// One POST on a fresh connection; its status.
fn post(addr: &str, path: &str, token: &str, body: &str, extra: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// One POST on a fresh connection, read to its end: its status and body.
fn post_reading(addr: &str, path: &str, token: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.get(9..12)?.parse().ok()?;
    Some((status, raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// Holds up to `max` connections from 127.0.0.2, each sending half a request header and then
/// a byte now and then; reopens what the server closes (at most 100 a second).
fn slowloris(addr: &str, max: usize, stop: &AtomicBool, c: Arc<Counts>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    rt.block_on(async {
        let open = Arc::new(AtomicU64::new(0));
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            if open.load(Ordering::Relaxed) as usize >= max {
                continue;
            }
            let Ok(socket) = tokio::net::TcpSocket::new_v4() else { continue };
            if socket.bind("127.0.0.2:0".parse().unwrap()).is_err() {
                continue;
            }
            let Ok(mut conn) = socket.connect(addr).await else {
                c.other.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            c.loris_opened.fetch_add(1, Ordering::Relaxed);
            open.fetch_add(1, Ordering::Relaxed);
            let (open, counts) = (open.clone(), c.clone());
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let _ = conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ").await;
                let mut buf = [0u8; 512];
                loop {
                    tokio::select! {
                        // Closed, refused (a 503 then close) or answered: this one is done.
                        _ = conn.read(&mut buf) => break,
                        () = tokio::time::sleep(Duration::from_secs(2)) => {
                            if conn.write_all(b"a").await.is_err() {
                                break;
                            }
                        }
                    }
                }
                counts.loris_closed.fetch_add(1, Ordering::Relaxed);
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
}
