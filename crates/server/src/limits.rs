//! Limits that keep one agent, or a flood, from taking the gateway down: a token bucket per
//! agent (429), a cap on requests in flight (503, never an unbounded queue), a body cap (413)
//! and a request timeout (408); below HTTP, [`Connections`]: how many sockets are open, and
//! how long a client may take to say what it wants. Every bound, its default and its metric:
//! docs/operations.md.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How much each agent may ask.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Requests per second per agent, sustained.
    pub agent_rate: f64,
    /// Requests an agent may make at once after being idle.
    pub agent_burst: f64,
    /// Requests in flight across the server; beyond it, 503 at once.
    pub in_flight: usize,
    /// Longest a request may take.
    pub timeout: Duration,
    /// Bounds on sockets (read by [`crate::serve::serve`]).
    pub connections: Connections,
    /// Bounds on the console's streams and Slack's callbacks.
    pub console: ConsoleBounds,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            agent_rate: 50.0,
            agent_burst: 100.0,
            in_flight: 512,
            timeout: Duration::from_secs(15),
            connections: Connections::default(),
            console: ConsoleBounds::default(),
        }
    }
}

/// Bounds on sockets, before any request is read: a client that opens connections and says
/// nothing (slowloris), or sends a body a byte at a time, holds a socket for seconds, not
/// forever, and no one client can take every socket the process has.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Connections {
    /// Connections open at once; beyond, a new one is answered 503 `overloaded` and closed.
    pub max_open: usize,
    /// Connections open at once from one address (a reverse proxy in front counts as one
    /// address: raise this to `max_open` there and bound clients at the proxy).
    pub max_per_peer: usize,
    /// The longest a client may take to send a request's header. The clock also runs while a
    /// kept-alive connection waits for its next request (hyper starts it when the previous
    /// answer is sent), so it is the idle keep-alive timeout as well.
    pub header_timeout: Duration,
    /// The longest a client may take to send a request's whole body, however it trickles.
    pub body_timeout: Duration,
    /// The longest an answer may wait for the client to read it: a write that makes no
    /// progress for this long closes the connection (a client that asks and never reads holds
    /// no socket, buffer or worker for longer).
    pub write_timeout: Duration,
    /// TLS handshakes in progress at once; beyond, a new connection is closed at once.
    pub tls_handshakes: usize,
    /// The longest a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            max_open: 4096,
            max_per_peer: 512,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            tls_handshakes: 256,
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// The client an address stands for: an IPv4 address (also when IPv4-mapped), or an IPv6
/// address's /64 — the block one client usually holds, so rotating through it gains nothing.
pub fn client_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                std::net::IpAddr::V6(std::net::Ipv6Addr::from(o))
            }
        },
        v4 => v4,
    }
}

/// Open connections by client ([`client_of`]), each released when its [`PeerSlot`] drops.
#[derive(Debug, Default)]
pub struct Peers {
    open: Mutex<HashMap<std::net::IpAddr, usize>>,
}

/// One open connection of a peer; dropping it releases the slot.
#[derive(Debug)]
pub struct PeerSlot {
    peers: std::sync::Arc<Peers>,
    ip: std::net::IpAddr,
}

impl Peers {
    /// A slot for one more connection from `ip`, unless it has `max` open already.
    pub fn take(self: &std::sync::Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<PeerSlot> {
        let ip = client_of(ip);
        let mut open = self.open.lock().ok()?;
        let n = open.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot { peers: self.clone(), ip })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.peers.open.lock()
            && let Some(n) = open.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by agent id. Only authenticated agents get one, so the map is bounded by
/// the registered agents.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Takes one token for `agent`; `false` when its bucket is empty.
    pub fn allow(&self, agent: &str, limits: &Limits) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else { return false };
        let now = Instant::now();
        let b = buckets.entry(agent.to_string()).or_insert(Bucket { tokens: limits.agent_burst, at: now });
        b.take(now, limits.agent_rate, limits.agent_burst)
    }
}

impl Bucket {
    /// Refills at `rate` per second up to `burst`, then takes one token if there is one.
    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refuses() {
        let limits = Limits { agent_rate: 0.001, agent_burst: 3.0, ..Limits::default() };
        let r = RateLimiter::default();
        assert_eq!((0..5).map(|_| r.allow("a", &limits)).collect::<Vec<_>>(), [true, true, true, false, false]);
        assert!(r.allow("b", &limits), "buckets are per agent");
    }

    #[test]
    fn slots_cap_every_key_and_give_back_on_drop() {
        let slots = std::sync::Arc::new(Slots::default());
        let keys = |s: &str| vec![(format!("session:{s}"), 2), ("user:ann".to_string(), 3)];
        let a = slots.take(&keys("1")).unwrap();
        let _b = slots.take(&keys("1")).unwrap();
        assert!(slots.take(&keys("1")).is_none(), "the session's cap");
        let _c = slots.take(&keys("2")).unwrap();
        assert!(slots.take(&keys("3")).is_none(), "the user's cap, over sessions");
        assert_eq!(slots.held("user:ann"), 3);
        drop(a);
        assert!(slots.take(&keys("3")).is_some(), "a closed stream frees both");
    }

    #[test]
    fn attempts_are_per_address_and_v6_counts_by_its_64() {
        let a = Attempts { burst: 2.0, rate: 0.0001, ..Attempts::default() };
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(a.allow(ip("10.0.0.1")) && a.allow(ip("10.0.0.1")));
        assert!(!a.allow(ip("10.0.0.1")), "the third attempt from one address");
        assert!(a.allow(ip("10.0.0.2")), "another address has its own");
        assert!(a.allow(ip("2001:db8::1")) && a.allow(ip("2001:db8::2")));
        assert!(!a.allow(ip("2001:db8::ffff")), "the same /64 is one client");
        assert!(a.allow(ip("2001:db8:0:1::1")), "the next /64 is another");
    }

    #[test]
    fn attempts_forget_addresses_past_the_table_bound() {
        let a = Attempts { burst: 1.0, rate: 0.0, ..Attempts::default() };
        for i in 0..(ATTEMPT_ADDRESSES as u32 + 10) {
            a.allow(std::net::IpAddr::V4(std::net::Ipv4Addr::from(i)));
        }
        assert!(a.buckets.lock().unwrap().len() <= ATTEMPT_ADDRESSES);
    }

    #[test]
    fn peers_hold_at_most_their_slots_and_give_them_back() {
        let peers = std::sync::Arc::new(Peers::default());
        let (a, b): (std::net::IpAddr, std::net::IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = peers.take(a, 2).unwrap();
        let _second = peers.take(a, 2).unwrap();
        assert!(peers.take(a, 2).is_none(), "a third from the same address is refused");
        assert!(peers.take(b, 2).is_some(), "slots are per address");
        let v6 = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let _x = peers.take(v6("2001:db8::1"), 2).unwrap();
        let _y = peers.take(v6("2001:db8::2"), 2).unwrap();
        assert!(peers.take(v6("2001:db8::ffff:1"), 2).is_none(), "one /64 is one client");
        assert!(peers.take(v6("::ffff:10.0.0.1"), 2).is_none(), "an IPv4-mapped address is that IPv4 client");
        drop(first);
        assert!(peers.take(a, 2).is_some(), "a closed connection frees its slot");
    }
}

/// Long polls (`GET /v1/actions/{id}?wait=`) one caller may have waiting at once; beyond, the
/// answer is the state now.
pub const LONG_POLLS_PER_CALLER: usize = 16;

/// Counters by key with a cap each: what is open at once per session, per user. A
/// [`Slot`] holds one unit of every key it was taken for, until it drops.
#[derive(Debug, Default)]
pub struct Slots {
    open: Mutex<HashMap<String, usize>>,
}

/// One unit of each key of a [`Slots`]; dropping it gives them back.
#[derive(Debug)]
pub struct Slot {
    slots: std::sync::Arc<Slots>,
    keys: Vec<String>,
}

impl Slots {
    /// One unit of each `(key, cap)`, or none when any key is at its cap.
    pub fn take(self: &std::sync::Arc<Self>, keys: &[(String, usize)]) -> Option<Slot> {
        let mut open = self.open.lock().ok()?;
        if keys.iter().any(|(k, cap)| open.get(k).copied().unwrap_or(0) >= *cap) {
            return None;
        }
        for (k, _) in keys {
            *open.entry(k.clone()).or_default() += 1;
        }
        Some(Slot { slots: self.clone(), keys: keys.iter().map(|(k, _)| k.clone()).collect() })
    }

    /// Units of `key` taken now.
    pub fn held(&self, key: &str) -> usize {
        self.open.lock().ok().and_then(|o| o.get(key).copied()).unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.slots.open.lock() {
            for k in &self.keys {
                if let Some(n) = open.get_mut(k) {
                    *n -= 1;
                    if *n == 0 {
                        open.remove(k);
                    }
                }
            }
        }
    }
}

/// Attempts per client address (console sign-ins): a token bucket per address — an IPv6
/// address counts by its /64, the block one client usually holds — with the table's size
/// bounded (buckets that refilled are forgotten first).
#[derive(Debug)]
pub struct Attempts {
    buckets: Mutex<HashMap<std::net::IpAddr, Bucket>>,
    /// Attempts an address may make at once.
    pub burst: f64,
    /// Attempts per second it regains.
    pub rate: f64,
}

/// Addresses [`Attempts`] remembers at most.
const ATTEMPT_ADDRESSES: usize = 10_000;

impl Default for Attempts {
    fn default() -> Self {
        Attempts { buckets: Mutex::default(), burst: 10.0, rate: 1.0 / 6.0 }
    }
}

impl Attempts {
    /// Counts one attempt from `ip`; `false` when its bucket is empty.
    pub fn allow(&self, ip: std::net::IpAddr) -> bool {
        let key = client_of(ip);
        let Ok(mut buckets) = self.buckets.lock() else { return false };
        let now = Instant::now();
        if buckets.len() >= ATTEMPT_ADDRESSES && !buckets.contains_key(&key) {
            let (burst, rate) = (self.burst, self.rate);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if buckets.len() >= ATTEMPT_ADDRESSES {
                // Every remembered address is still spending: forget the stalest half.
                let mut ages: Vec<Instant> = buckets.values().map(|b| b.at).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                buckets.retain(|_, b| b.at > cut);
            }
        }
        let b = buckets.entry(key).or_insert(Bucket { tokens: self.burst, at: now });
        b.take(now, self.rate, self.burst)
    }
}

/// Bounds on the console's and Slack's long-lived work.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConsoleBounds {
    /// Live event streams open at once on one sign-in session (its tabs).
    pub streams_per_session: usize,
    /// Live event streams open at once for one person, over all their sessions.
    pub streams_per_user: usize,
    /// Slack button presses being acted on at once (each a vote and a message update);
    /// beyond, 503 `overloaded` and Slack's retry comes back later.
    pub slack_in_flight: usize,
}

impl Default for ConsoleBounds {
    fn default() -> Self {
        ConsoleBounds { streams_per_session: 8, streams_per_user: 16, slack_in_flight: 32 }
    }
}

/// How a tool call is held while a human decides.
#[derive(Debug, Clone)]
pub struct HoldOptions {
    /// The longest a call is held before it answers "still pending" (below the common client
    /// timeouts of 60 s).
    pub budget: std::time::Duration,
    /// How often a held call sends `notifications/progress` (when the client sent a token).
    pub progress_every: std::time::Duration,
    /// The most calls one agent may have held at once; beyond, a call that needs a human
    /// answers at once with its pending ids (held calls cannot crowd out other work).
    pub max_held_per_agent: usize,
}

impl Default for HoldOptions {
    fn default() -> Self {
        HoldOptions {
            budget: std::time::Duration::from_secs(45),
            progress_every: std::time::Duration::from_secs(5),
            max_held_per_agent: 16,
        }
    }
}

/// How `/mcp` is served.
#[derive(Debug, Clone)]
pub struct McpOptions {
    pub hold: HoldOptions,
    /// `Host` values accepted (against DNS rebinding); empty: any.
    pub allowed_hosts: Vec<String>,
    /// Browser `Origin`s accepted; a request with another `Origin` is refused.
    pub allowed_origins: Vec<String>,
    /// `https` when served over TLS: how the metadata names this resource.
    pub scheme: &'static str,
    /// Sessions and their streams.
    pub sessions: McpSessions,
}

/// Bounds on MCP sessions: one agent opening sessions and never closing them holds a few,
/// not all the memory there is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct McpSessions {
    /// Sessions one agent may hold open; opening one more reclaims its oldest idle one, or,
    /// when every one is busy, is refused (429 `too_many_sessions`).
    pub per_agent: usize,
    /// A session with no request for this long is closed (the client then sees 404 and opens
    /// a new one, as MCP says).
    pub idle: Duration,
    /// Standalone event streams (`GET /mcp`) open at once on one session; beyond, 429
    /// `too_many_streams`.
    pub streams_per_session: usize,
}

impl Default for McpSessions {
    fn default() -> Self {
        McpSessions { per_agent: 8, idle: Duration::from_secs(600), streams_per_session: 2 }
    }
}

impl Default for McpOptions {
    fn default() -> Self {
        McpOptions {
            hold: HoldOptions::default(),
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            allowed_origins: Vec::new(),
            scheme: "http",
            sessions: McpSessions::default(),
        }
    }
}

/// Runs `req` if one of `permits` is free, else answers `refused()` at once: a front door's own
/// admission limit, so nothing queues without bound and one door never takes another's
/// permits. The permit is held until the handler has answered (a stream's body is not counted).
pub async fn admit_or(
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
    refused: impl FnOnce() -> axum::response::Response,
) -> axum::response::Response {
    match permits.try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => refused(),
    }
}
