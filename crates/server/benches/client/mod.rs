//! The benches' HTTP client: minimal HTTP/1.1 over keep-alive connections on the bench's own
//! tokio runtime, each connection sending one request again and again and timing each answer.
//! Shared by `load` and `execute` (`mod client;`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// Reads one answer (status line, headers, body — by `content-length` or chunked, as an SSE
/// stream answering one JSON-RPC request is).
pub async fn read_answer<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> (String, Vec<(String, String)>, Vec<u8>) {
    let mut status = String::new();
    r.read_line(&mut status).await.unwrap();
    let (mut len, mut chunked, mut headers) = (0usize, false, Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
            if k == "content-length" {
                len = v.parse().unwrap();
            }
            if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
            headers.push((k, v));
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).await.unwrap();
            let size = usize::from_str_radix(line.trim(), 16).unwrap();
            let mut chunk = vec![0u8; size + 2];
            r.read_exact(&mut chunk).await.unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        body.resize(len, 0);
        r.read_exact(&mut body).await.unwrap();
    }
    (status.trim_end().to_string(), headers, body)
}

/// One request on a fresh connection, and its answer (the mcp bench sets up sessions with it).
#[allow(dead_code)]
pub async fn once(addr: std::net::SocketAddr, request: &[u8]) -> (String, Vec<(String, String)>, Vec<u8>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (r, mut w) = stream.into_split();
    w.write_all(request).await.unwrap();
    read_answer(&mut BufReader::new(r)).await
}

/// One keep-alive connection: sends `request` again and again until `until`, recording each
/// latency; every answer must be a 200.
async fn connection(addr: std::net::SocketAddr, request: Arc<Vec<u8>>, until: Instant) -> Vec<Duration> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut lat = Vec::new();
    while Instant::now() < until {
        let t = Instant::now();
        w.write_all(&request).await.unwrap();
        let (status, _, _) = read_answer(&mut r).await;
        assert!(status.starts_with("HTTP/1.1 200"), "unexpected answer: {status}");
        lat.push(t.elapsed());
    }
    lat
}

/// The bytes of one request: `header` is one header line without its CRLF (an
/// `authorization: Bearer …` or a tool's key).
pub fn request(method: &str, path: &str, header: &str, body: Option<&serde_json::Value>) -> Arc<Vec<u8>> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    Arc::new(
        format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{header}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

/// What a run measured.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// `conns` connections sending `req` for `secs` seconds.
#[allow(dead_code)]
pub async fn run(addr: std::net::SocketAddr, req: Arc<Vec<u8>>, secs: f64, conns: usize) -> Run {
    run_each(addr, vec![req; conns], secs).await
}

/// `conns` connections sending `req` for `secs` seconds, spread round-robin over `addrs` (the
/// nodes of a cluster).
#[allow(dead_code)]
pub async fn run_spread(addrs: &[std::net::SocketAddr], req: Arc<Vec<u8>>, secs: f64, conns: usize) -> Run {
    timed((0..conns).map(|i| (addrs[i % addrs.len()], req.clone())).collect(), secs).await
}

/// Each connection (address, request) sending its request for `secs` seconds: the rate and
/// latencies of all of them.
async fn timed(conns: Vec<(std::net::SocketAddr, Arc<Vec<u8>>)>, secs: f64) -> Run {
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let handles: Vec<_> = conns.into_iter().map(|(addr, req)| tokio::spawn(connection(addr, req, until))).collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Run { rps: all.len() as f64 / elapsed, p50: at(0.5), p99: at(0.99) }
}

/// One connection per request in `reqs`, each sending its own for `secs` seconds (an MCP
/// session per connection: requests in flight on one session need distinct ids).
#[allow(dead_code)]
pub async fn run_each(addr: std::net::SocketAddr, reqs: Vec<Arc<Vec<u8>>>, secs: f64) -> Run {
    timed(reqs.into_iter().map(|req| (addr, req)).collect(), secs).await
}
