//! Streaming the audit log to SIEMs (DESIGN §7): each entry as its OCSF 1.8.0 event (the
//! export's mapping, [`warden_core::audit::ocsf`]) to Splunk's HTTP Event Collector or to a
//! generic JSON-lines endpoint.
//!
//! **At least once, never a gap.** A sink's cursor — the next sequence number to send — lives in
//! the store (`siem.<name>.cursor`), and moves only after the SIEM acknowledged a batch (2xx).
//! A crash between the acknowledgement and the cursor's commit sends that batch again on
//! restart: duplicates are possible (each event carries `metadata.uid` to drop them by), gaps
//! are not. A batch the SIEM refuses is retried, with exponential backoff, until it is taken;
//! nothing is skipped.
//!
//! **One sender per sink.** On a shared store, the node holding the sink's lease
//! (`siem.<name>.holder`: three request timeouts, renewed before a request whenever less than
//! two are left, so no request outlives it; taken over when it lapses) sends; the cursor's
//! commit expects the lease unchanged, so a node that lost it cannot move the cursor.
//!
//! **Bounded.** The backlog is the log itself (durable, nothing held in memory but one batch
//! of at most `batch` events and `max_batch_bytes`). Past `max_backlog` entries behind, a
//! warning is logged and `warden_siem_over_backlog` says so; `/metrics` shows each sink's
//! cursor, backlog, events sent, failed attempts and whether the last attempt succeeded.
//!
//! **Secrets.** The token is read from `secret:NAME` (an environment variable or a file of
//! `--secrets-dir`); logs, metrics and the audit log name the sink, never its URL or token.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Deserialize;
use warden_core::audit::entry::Entry;
use warden_core::audit::ocsf;
use warden_store::{Batch, Change};

use crate::state::App;

/// What the SIEM speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// Splunk HTTP Event Collector: `POST …/services/collector/event`, `Authorization:
    /// Splunk <token>`, each event in `{"time", "host", "source", "sourcetype", "event"}`.
    SplunkHec,
    /// One OCSF event per line (`application/x-ndjson`), `Authorization: Bearer <token>` when
    /// a token is given.
    Jsonl,
}

/// `[[siem.sinks]]` in `--config`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// A name for logs, metrics and the store's cursor (never the URL).
    pub name: String,
    pub kind: SinkKind,
    /// For HEC, the endpoint (`https://splunk:8088/services/collector/event`).
    pub url: String,
    /// `secret:NAME`; required for HEC.
    pub token: Option<String>,
    /// Events per request (default 100).
    pub batch: Option<usize>,
    /// Bytes per request, at most (default 512 KiB; one event is always sent whole).
    pub max_batch_bytes: Option<usize>,
    /// Entries behind before a warning (default 100 000).
    pub max_backlog: Option<u64>,
    /// HEC `sourcetype` (default `ocsf:warden`) and `index` (default: the token's).
    pub sourcetype: Option<String>,
    pub index: Option<String>,
    /// PEM CA certificates to trust for an `https://` SIEM with a private CA.
    pub ca_cert: Option<std::path::PathBuf>,
    /// How long one request may take (default `10s`). The sink's lease lasts three times as
    /// long and is renewed before a request whenever less than twice is left, so a slow
    /// request never outlives its sender's lease.
    pub timeout: Option<warden_core::duration::Duration>,
}

/// A sink ready to run: its token resolved, its TLS roots loaded.
#[derive(Clone)]
pub struct Sink {
    pub name: String,
    pub kind: SinkKind,
    pub url: String,
    pub token: Option<String>,
    pub batch: usize,
    pub max_batch_bytes: usize,
    pub max_backlog: u64,
    pub sourcetype: String,
    pub index: Option<String>,
    /// How long to wait when there is nothing to send.
    pub poll: Duration,
    /// The first wait after a failed attempt; doubled after each, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub timeout: Duration,
    pub roots: Option<Vec<ureq::tls::Certificate<'static>>>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token, never the URL (it may carry one).
        f.debug_struct("Sink").field("name", &self.name).field("kind", &self.kind).finish_non_exhaustive()
    }
}

/// Why a sink's configuration is refused.
#[derive(Debug, thiserror::Error)]
#[error("`[[siem.sinks]]` `{sink}`: {why}")]
pub struct SinkError {
    pub sink: String,
    pub why: String,
}

impl Sink {
    /// Checks `c` and resolves its token with `secret`: names are `[A-Za-z0-9_-]`, the URL is
    /// http(s), HEC needs a token, and a token is `secret:NAME`, never the secret itself.
    pub fn from_config(c: SinkConfig, secret: impl Fn(&str) -> Option<String>) -> Result<Sink, SinkError> {
        let fail = |why: String| SinkError { sink: c.name.clone(), why };
        if c.name.is_empty() || !c.name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') {
            return Err(fail("`name` must be letters, digits, `-` or `_`".into()));
        }
        if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
            return Err(fail("`url` must be http:// or https://".into()));
        }
        let token = match &c.token {
            Some(t) => {
                let Some(name) = t.strip_prefix("secret:") else {
                    return Err(fail("`token` must be `secret:NAME` (an environment variable or a file of --secrets-dir), not the token itself".into()));
                };
                Some(secret(name).filter(|s| !s.is_empty()).ok_or_else(|| fail(format!("no secret `{name}` is set")))?)
            }
            None if c.kind == SinkKind::SplunkHec => return Err(fail("a Splunk HEC sink needs `token`".into())),
            None => None,
        };
        let timeout = c.timeout.map_or(10, |d| d.as_secs());
        if timeout == 0 || timeout > 300 {
            return Err(fail("`timeout` must be between 1s and 5m".into()));
        }
        let batch = c.batch.unwrap_or(100);
        let max_batch_bytes = c.max_batch_bytes.unwrap_or(512 * 1024);
        let max_backlog = c.max_backlog.unwrap_or(100_000);
        if batch == 0 || max_batch_bytes == 0 || max_backlog == 0 {
            return Err(fail("`batch`, `max_batch_bytes` and `max_backlog` must be at least 1".into()));
        }
        let roots = match &c.ca_cert {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| fail(format!("`ca_cert` `{}`: {e}", path.display())))?;
                let certs = ureq::tls::parse_pem(&pem)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c.to_owned())),
                        Ok(_) => None,
                        Err(e) => Some(Err(e)),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| fail(format!("`ca_cert` `{}`: {e}", path.display())))?;
                if certs.is_empty() {
                    return Err(fail(format!("`ca_cert` `{}` holds no certificate", path.display())));
                }
                Some(certs)
            }
            None => None,
        };
        Ok(Sink {
            name: c.name.clone(),
            kind: c.kind,
            url: c.url.clone(),
            token,
            batch,
            max_batch_bytes,
            max_backlog,
            sourcetype: c.sourcetype.clone().unwrap_or_else(|| "ocsf:warden".into()),
            index: c.index.clone(),
            poll: Duration::from_millis(500),
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            timeout: Duration::from_secs(timeout),
            roots,
        })
    }

    fn cursor_key(&self) -> String {
        format!("siem.{}.cursor", self.name)
    }

    fn holder_key(&self) -> String {
        format!("siem.{}.holder", self.name)
    }
}

pub use crate::metrics::SinkStats;

/// The sinks' threads; dropping it stops them after their current step.
#[derive(Debug)]
pub struct Streams {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Streams {
    /// Stops every sink and waits for its thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Starts one thread per sink.
pub fn start(app: &App, sinks: Vec<Sink>) -> Streams {
    let stop = Arc::new(AtomicBool::new(false));
    let threads = sinks
        .into_iter()
        .map(|sink| {
            let (app, stop) = (app.clone(), stop.clone());
            app.metrics.siem_update(&sink.name, |s| {
                s.max_backlog = sink.max_backlog;
                s.up = true;
            });
            std::thread::Builder::new()
                .name(format!("siem-{}", sink.name))
                .spawn(move || run(&app, &sink, &stop))
                .expect("a thread for the SIEM sink")
        })
        .collect();
    Streams { stop, threads }
}

/// How long a sink's lease lasts: three request timeouts. It is renewed before each request
/// when less than two are left, so a request always ends before the lease does.
fn lease_ms(sink: &Sink) -> i64 {
    i64::try_from(sink.timeout.as_millis()).unwrap_or(i64::MAX / 4).saturating_mul(3)
}

/// Sleeps `d` in short steps, returning early when stopped.
fn nap(d: Duration, stop: &AtomicBool) {
    let step = Duration::from_millis(50);
    let mut left = d;
    while !left.is_zero() && !stop.load(Ordering::SeqCst) {
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
}

fn run(app: &App, sink: &Sink, stop: &AtomicBool) {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .timeout_global(Some(sink.timeout))
        .user_agent(concat!("warden/", env!("CARGO_PKG_VERSION")));
    if let Some(roots) = &sink.roots {
        let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(roots)).build();
        config = config.tls_config(tls);
    }
    let agent: ureq::Agent = config.build().into();
    let product = ocsf::Product { version: env!("CARGO_PKG_VERSION").to_string() };
    let mut backoff = sink.backoff;
    let mut lease: Option<String> = None;
    let mut warned = false;
    while !stop.load(Ordering::SeqCst) {
        match step(app, sink, &agent, &product, &mut lease, &mut warned) {
            Ok(Step::Sent) => backoff = sink.backoff,
            Ok(Step::Idle) => {
                backoff = sink.backoff;
                nap(sink.poll, stop);
            }
            Ok(Step::NotHolder) => nap(sink.poll, stop),
            Err(why) => {
                tracing::warn!(sink = %sink.name, reason = %why, retry_in_ms = backoff.as_millis() as u64, "SIEM delivery failed");
                app.metrics.siem_update(&sink.name, |s| {
                    s.failures += 1;
                    s.up = false;
                });
                nap(backoff, stop);
                backoff = (backoff * 2).min(sink.max_backoff);
            }
        }
    }
    // A clean stop hands the sink over at once (a killed node's lease lapses instead).
    if let Some(held) = lease {
        let batch = Batch::new()
            .change(Change::ExpectMeta { key: sink.holder_key(), value: Some(held) })
            .change(Change::SetMeta { key: sink.holder_key(), value: String::new() });
        let _ = app.ledger().commit(batch);
        app.metrics.siem_update(&sink.name, |s| s.holder = false);
    }
}

enum Step {
    Sent,
    Idle,
    NotHolder,
}

/// Takes or renews the sink's lease; the value now held, or `None` when another node holds it.
fn hold(app: &App, sink: &Sink, held: &Option<String>) -> Result<Option<String>, String> {
    let store = app.ledger().store();
    let key = sink.holder_key();
    let now = crate::model::millis(app.now());
    let current = store.meta(&key).map_err(|e| format!("the store: {e}"))?;
    let parsed = current
        .as_deref()
        .filter(|v| !v.is_empty())
        .and_then(|v| v.rsplit_once('@'))
        .map(|(node, until)| (node.to_string(), until.parse::<i64>().unwrap_or(0)));
    let mine = parsed.as_ref().is_some_and(|(node, _)| *node == app.node);
    let lapsed = parsed.as_ref().is_none_or(|(_, until)| *until <= now);
    if !mine && !lapsed {
        return Ok(None);
    }
    let lease = lease_ms(sink);
    if mine && current == *held && parsed.as_ref().is_some_and(|(_, until)| until - now > lease * 2 / 3) {
        return Ok(current);
    }
    let next = format!("{}@{}", app.node, now.saturating_add(lease));
    let batch = Batch::new()
        .change(Change::ExpectMeta { key: key.clone(), value: current })
        .change(Change::SetMeta { key, value: next.clone() });
    match app.ledger().commit(batch) {
        Ok(_) => Ok(Some(next)),
        // Another node took it first.
        Err(warden_store::StoreError::Conflict { .. }) => Ok(None),
        Err(e) => Err(format!("the store: {e}")),
    }
}

/// One round: hold the lease, read a batch from the cursor, send it, move the cursor.
fn step(
    app: &App,
    sink: &Sink,
    agent: &ureq::Agent,
    product: &ocsf::Product,
    lease: &mut Option<String>,
    warned: &mut bool,
) -> Result<Step, String> {
    // The sink's position, whichever node sends: every node's `/metrics` tells the truth.
    let store = app.ledger().store();
    let key = sink.cursor_key();
    let stored = store.meta(&key).map_err(|e| format!("the store: {e}"))?;
    let cursor: u64 = stored.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
    let size = store.size().map_err(|e| format!("the store: {e}"))?;
    let backlog = size.saturating_sub(cursor);
    *lease = hold(app, sink, lease)?;
    let holder = lease.is_some();
    app.metrics.siem_update(&sink.name, |s| {
        s.holder = holder;
        s.cursor = cursor;
        s.backlog = backlog;
    });
    let Some(held) = lease.clone() else { return Ok(Step::NotHolder) };
    if backlog > sink.max_backlog && !*warned {
        tracing::warn!(sink = %sink.name, backlog, max_backlog = sink.max_backlog, "the SIEM is behind: entries wait in the log, none is dropped");
        *warned = true;
    } else if backlog <= sink.max_backlog {
        *warned = false;
    }
    if backlog == 0 {
        return Ok(Step::Idle);
    }
    let stored_entries = store.entries(cursor, sink.batch).map_err(|e| format!("the store: {e}"))?;
    let mut body = String::new();
    let mut events = 0u64;
    let mut next = cursor;
    for s in &stored_entries {
        let entry = Entry::parse(&s.bytes).map_err(|e| format!("entry {}: {e} (run `warden audit verify`)", s.seq))?;
        // A type the mapping does not export has nothing to send.
        let line = ocsf::event(&entry, product).map(|ev| envelope(sink, &entry, ev));
        if let Some(line) = line {
            // The line and its newline: a request is never over the limit (one event alone
            // always goes, whole).
            if events > 0 && body.len() + line.len() + 1 > sink.max_batch_bytes {
                break;
            }
            body.push_str(&line);
            body.push('\n');
            events += 1;
        }
        next = s.seq + 1;
    }
    if events > 0 {
        send(agent, sink, &body)?;
    }
    // The SIEM has the batch: move the cursor, if this node still holds the lease and no one
    // moved it meanwhile.
    let batch = Batch::new()
        .change(Change::ExpectMeta { key: sink.holder_key(), value: Some(held) })
        .change(Change::ExpectMeta { key: key.clone(), value: stored })
        .change(Change::SetMeta { key, value: next.to_string() });
    match app.ledger().commit(batch) {
        Ok(_) => {}
        Err(warden_store::StoreError::Conflict { .. }) => {
            *lease = None;
            return Ok(Step::NotHolder);
        }
        Err(e) => return Err(format!("the store: {e}")),
    }
    app.metrics.siem_update(&sink.name, |s| {
        s.cursor = next;
        s.backlog = size.saturating_sub(next);
        s.sent += events;
        s.up = true;
    });
    Ok(Step::Sent)
}

/// One event as the sink carries it (one line).
fn envelope(sink: &Sink, entry: &Entry, ev: serde_json::Value) -> String {
    match sink.kind {
        SinkKind::Jsonl => ev.to_string(),
        SinkKind::SplunkHec => {
            let secs = entry.timestamp().map(|t| t.unix_timestamp_nanos() as f64 / 1e9).unwrap_or(0.0);
            let mut env = serde_json::json!({
                "time": (secs * 1000.0).round() / 1000.0,
                "source": "warden",
                "sourcetype": sink.sourcetype,
                "event": ev,
            });
            if let Some(index) = &sink.index {
                env["index"] = serde_json::json!(index);
            }
            env.to_string()
        }
    }
}

fn send(agent: &ureq::Agent, sink: &Sink, body: &str) -> Result<(), String> {
    let mut req = agent.post(&sink.url);
    req = match (sink.kind, &sink.token) {
        (SinkKind::SplunkHec, Some(t)) => req.header("authorization", format!("Splunk {t}")),
        (SinkKind::Jsonl, Some(t)) => req.header("authorization", format!("Bearer {t}")),
        (_, None) => req,
    };
    let content_type = match sink.kind {
        SinkKind::SplunkHec => "application/json",
        SinkKind::Jsonl => "application/x-ndjson",
    };
    match req.header("content-type", content_type).send(body) {
        Ok(res) if res.status().is_success() => Ok(()),
        // The status only: an answer may echo what was sent.
        Ok(res) => Err(format!("HTTP {}", res.status().as_u16())),
        Err(e) => Err(match e {
            ureq::Error::Timeout(_) => "timed out".into(),
            ureq::Error::HostNotFound => "host not found".into(),
            ureq::Error::ConnectionFailed | ureq::Error::Io(_) => "connection failed".into(),
            _ => "request failed".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kind: SinkKind, token: Option<&str>) -> SinkConfig {
        SinkConfig {
            name: "splunk".into(),
            kind,
            url: "https://splunk.example:8088/services/collector/event".into(),
            token: token.map(str::to_string),
            batch: None,
            max_batch_bytes: None,
            max_backlog: None,
            sourcetype: None,
            index: None,
            ca_cert: None,
            timeout: None,
        }
    }

    #[test]
    fn a_sink_is_refused_with_a_reason_that_names_no_secret() {
        let secret = |name: &str| (name == "HEC").then(|| "s3cr3t-token".to_string());
        let why = |c: SinkConfig| Sink::from_config(c, secret).unwrap_err().to_string();
        assert!(why(config(SinkKind::SplunkHec, None)).contains("needs `token`"));
        let plain = why(config(SinkKind::SplunkHec, Some("s3cr3t-token")));
        assert!(plain.contains("must be `secret:NAME`") && !plain.contains("s3cr3t"), "{plain}");
        assert!(why(config(SinkKind::SplunkHec, Some("secret:NOPE"))).contains("no secret `NOPE` is set"));
        let mut c = config(SinkKind::Jsonl, None);
        c.url = "ftp://x".into();
        assert!(why(c).contains("http:// or https://"));
        let mut c = config(SinkKind::Jsonl, None);
        c.name = "a b".into();
        assert!(why(c).contains("`name`"));
        let mut c = config(SinkKind::Jsonl, None);
        c.batch = Some(0);
        assert!(why(c).contains("at least 1"));
        // Defaults, and a JSON-lines sink without a token.
        let s = Sink::from_config(config(SinkKind::SplunkHec, Some("secret:HEC")), secret).unwrap();
        assert_eq!((s.batch, s.max_backlog, s.sourcetype.as_str()), (100, 100_000, "ocsf:warden"));
        assert!(!format!("{s:?}").contains("s3cr3t") && !format!("{s:?}").contains("splunk.example"));
        assert!(Sink::from_config(config(SinkKind::Jsonl, None), secret).unwrap().token.is_none());
    }

    #[test]
    fn hec_envelopes_carry_the_time_and_the_ocsf_event() {
        let s = Sink::from_config(config(SinkKind::SplunkHec, Some("secret:HEC")), |_| Some("t".into())).unwrap();
        let entry = Entry {
            seq: 7,
            time: "2026-12-01T10:00:00.250Z".into(),
            event: warden_core::audit::entry::Event::new(
                warden_core::audit::entry::EventType::HaltSet,
                warden_core::audit::entry::Actor::user("ana"),
            ),
        };
        let line = envelope(&s, &entry, serde_json::json!({"class_uid": 1}));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        // Computed independently: Python's datetime(2026, 12, 1, 10, 0, 0, 250000, utc).timestamp().
        assert_eq!(v["time"].as_f64(), Some(1_796_119_200.25));
        assert_eq!((v["sourcetype"].as_str(), v["event"]["class_uid"].as_u64()), (Some("ocsf:warden"), Some(1)));
        assert!(v.get("index").is_none());
    }
}
