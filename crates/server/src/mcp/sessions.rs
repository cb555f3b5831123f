//! Which agent holds each MCP session, and the bounds on them ([`crate::limits::McpSessions`]):
//! a session answers only the agent that opened it; one agent holds at most `per_agent`
//! sessions (opening one more reclaims its oldest idle one, else 429 `too_many_sessions`);
//! a session idle for `idle` is closed; a session has at most `streams_per_session`
//! standalone streams open.
//!
//! A session is *busy* while one of its HTTP requests is being answered (a held call, an SSE
//! stream); the guard that says so rides in the answer's body, so it ends when the answer has
//! been sent or the client went away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rmcp::transport::streamable_http_server::session::SessionManager as _;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;

use crate::limits::McpSessions;
use crate::metrics::Metrics;

/// The front door's name in metrics.
const DOOR: &str = "mcp";

#[derive(Debug)]
struct Session {
    agent: String,
    last: Instant,
    busy: usize,
    streams: usize,
}

#[derive(Debug, Default)]
struct Table {
    sessions: HashMap<String, Session>,
    /// Sessions being opened (an `initialize` in flight), by agent: counted against the cap.
    opening: HashMap<String, usize>,
}

/// The sessions of `/mcp`.
pub struct Registry {
    table: Mutex<Table>,
    manager: Arc<LocalSessionManager>,
    bounds: McpSessions,
    app: crate::state::App,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("bounds", &self.bounds).finish_non_exhaustive()
    }
}

/// Why a request may not go on.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The session belongs to another agent.
    NotYours,
    /// The agent holds `per_agent` sessions, all busy.
    Sessions(usize),
    /// The session has `streams_per_session` streams open.
    Streams(usize),
}

/// A request admitted on a session (or to open one); dropping it ends what it counted.
#[derive(Debug)]
pub struct Admitted {
    registry: Weak<Registry>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// A request on session `id`; `stream`: a standalone stream.
    On { id: String, stream: bool },
    /// An `initialize` by `agent`, until its session id is known.
    Opening { agent: String, done: bool },
}

impl Registry {
    pub fn new(manager: Arc<LocalSessionManager>, bounds: McpSessions, app: crate::state::App) -> Arc<Registry> {
        Arc::new(Registry { table: Mutex::new(Table::default()), manager, bounds, app })
    }

    fn metrics(&self, f: impl FnOnce(&Metrics)) {
        f(&self.app.metrics);
    }

    /// Admits a request of `agent` on session `id`, or to open a session (`id` absent).
    /// Opening past the cap first closes the agent's oldest idle session.
    pub async fn admit(self: &Arc<Self>, agent: &str, id: Option<&str>, stream: bool) -> Result<Admitted, Refused> {
        let reclaim = {
            let Ok(mut t) = self.table.lock() else { return Err(Refused::Sessions(self.bounds.per_agent)) };
            if let Some(id) = id {
                match t.sessions.get_mut(id) {
                    Some(s) if s.agent != agent => return Err(Refused::NotYours),
                    Some(s) => {
                        if stream && s.streams >= self.bounds.streams_per_session {
                            drop(t);
                            self.metrics(|m| m.refused("mcp_streams"));
                            return Err(Refused::Streams(self.bounds.streams_per_session));
                        }
                        s.busy += 1;
                        s.streams += usize::from(stream);
                        s.last = Instant::now();
                    }
                    // Unknown (closed, expired, or never opened): the SDK answers 404.
                    None => {}
                }
                return Ok(Admitted { registry: Arc::downgrade(self), kind: Kind::On { id: id.to_string(), stream } });
            }
            let held = t.sessions.values().filter(|s| s.agent == agent).count();
            let opening = t.opening.get(agent).copied().unwrap_or(0);
            let reclaim = if held + opening >= self.bounds.per_agent {
                let oldest_idle = t
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.agent == agent && s.busy == 0)
                    .min_by_key(|(_, s)| s.last)
                    .map(|(id, _)| id.clone());
                match oldest_idle {
                    Some(id) => {
                        t.sessions.remove(&id);
                        Some(id)
                    }
                    None => {
                        drop(t);
                        self.metrics(|m| m.refused("mcp_sessions"));
                        return Err(Refused::Sessions(self.bounds.per_agent));
                    }
                }
            } else {
                None
            };
            *t.opening.entry(agent.to_string()).or_default() += 1;
            reclaim
        };
        if let Some(old) = reclaim {
            tracing::info!(session = %old, %agent, "MCP session reclaimed: the agent opened one past its cap");
            self.metrics(|m| {
                m.refused("mcp_sessions_reclaimed");
                m.session(DOOR, -1);
            });
            let _ = self.manager.close_session(&old.into()).await;
        }
        Ok(Admitted { registry: Arc::downgrade(self), kind: Kind::Opening { agent: agent.to_string(), done: false } })
    }

    /// Sessions `agent` holds now.
    pub fn held_by(&self, agent: &str) -> usize {
        self.table.lock().map(|t| t.sessions.values().filter(|s| s.agent == agent).count()).unwrap_or(0)
    }

    /// Closes every session idle longer than the bound; returns how many.
    pub async fn expire(&self) -> usize {
        let now = Instant::now();
        let expired: Vec<String> = match self.table.lock() {
            Ok(mut t) => {
                let ids: Vec<String> = t
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.busy == 0 && now.duration_since(s.last) >= self.bounds.idle)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in &ids {
                    t.sessions.remove(id);
                }
                ids
            }
            Err(_) => Vec::new(),
        };
        for id in &expired {
            tracing::debug!(session = %id, "MCP session expired");
            let _ = self.manager.close_session(&id.as_str().into()).await;
        }
        if !expired.is_empty() {
            let n = i64::try_from(expired.len()).unwrap_or(i64::MAX);
            self.metrics(|m| m.session(DOOR, -n));
        }
        expired.len()
    }

    /// Expires idle sessions every so often, for as long as the registry lives.
    pub fn spawn_expiry(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let every = (self.bounds.idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(30));
        let weak = Arc::downgrade(self);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(registry) = weak.upgrade() else { return };
                registry.expire().await;
            }
        });
    }
}

impl Admitted {
    /// The SDK answered: a session it opened is the agent's; one it closed is gone.
    pub fn answered(&mut self, opened: Option<&str>, closed: bool) {
        let Some(registry) = self.registry.upgrade() else { return };
        let Ok(mut t) = registry.table.lock() else { return };
        match &mut self.kind {
            Kind::Opening { agent, done } => {
                *done = true;
                if let Some(n) = t.opening.get_mut(agent.as_str()) {
                    *n = n.saturating_sub(1);
                }
                if let Some(id) = opened {
                    t.sessions.insert(
                        id.to_string(),
                        Session { agent: agent.clone(), last: Instant::now(), busy: 1, streams: 0 },
                    );
                    // Now counted as busy on its session until this answer ends.
                    self.kind = Kind::On { id: id.to_string(), stream: false };
                    drop(t);
                    registry.metrics(|m| m.session(DOOR, 1));
                }
            }
            Kind::On { id, .. } => {
                if closed && t.sessions.remove(id.as_str()).is_some() {
                    drop(t);
                    registry.metrics(|m| m.session(DOOR, -1));
                }
            }
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let Some(registry) = self.registry.upgrade() else { return };
        let Ok(mut t) = registry.table.lock() else { return };
        match &self.kind {
            Kind::On { id, stream } => {
                if let Some(s) = t.sessions.get_mut(id.as_str()) {
                    s.busy = s.busy.saturating_sub(1);
                    s.streams = s.streams.saturating_sub(usize::from(*stream));
                    s.last = Instant::now();
                }
            }
            Kind::Opening { agent, done } => {
                if !done && let Some(n) = t.opening.get_mut(agent.as_str()) {
                    *n = n.saturating_sub(1);
                }
            }
        }
    }
}
