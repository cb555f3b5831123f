//! Limits that keep one agent, or a flood, from taking the gateway down: a token bucket per
//! agent (429), a cap on requests in flight (503, never an unbounded queue), a body cap (413)
//! and a request timeout (408).

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
}

impl Default for Limits {
    fn default() -> Self {
        Limits { agent_rate: 50.0, agent_burst: 100.0, in_flight: 512, timeout: Duration::from_secs(15) }
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
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * limits.agent_rate).min(limits.agent_burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
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
}

impl Default for McpOptions {
    fn default() -> Self {
        McpOptions {
            hold: HoldOptions::default(),
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            allowed_origins: Vec::new(),
            scheme: "http",
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
