//! Prometheus metrics, kept by hand (a few counters and two histograms need no framework):
//! decisions by outcome and action, decision and audit-append latency, breaker trips.
//! Pending approvals and active leases are read from the store when scraped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BOUNDS: [f64; 12] = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; 12],
    overflow: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        match BOUNDS.iter().position(|b| secs <= *b) {
            Some(i) => self.counts[i].fetch_add(1, Ordering::Relaxed),
            None => self.overflow.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_nanos.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in BOUNDS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.overflow.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Each SIEM sink's state, as `/metrics` shows it ([`crate::siem`] keeps it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// The next sequence number to send.
    pub cursor: u64,
    /// Entries not yet acknowledged.
    pub backlog: u64,
    pub max_backlog: u64,
    /// Events the SIEM acknowledged (entries of a type the OCSF mapping skips are not events).
    pub sent: u64,
    /// Requests that failed (refused, unreachable, timed out).
    pub failures: u64,
    /// Whether the last attempt succeeded (none yet: true).
    pub up: bool,
    /// Whether this node holds the sink's lease (sends for it).
    pub holder: bool,
}

/// Everything `/metrics` shows that the server counts itself.
#[derive(Debug, Default)]
pub struct Metrics {
    decisions: Mutex<BTreeMap<(String, String), u64>>,
    pub decision_latency: Histogram,
    pub audit_append_latency: Histogram,
    pub breaker_trips: AtomicU64,
    executions: Mutex<BTreeMap<String, u64>>,
    /// Requests, connections and streams refused by a bound, by bound.
    refusals: Mutex<BTreeMap<String, u64>>,
    open_connections: std::sync::atomic::AtomicI64,
    /// Sessions and streams open, by front door (`mcp`, `console_events`, …).
    sessions: Mutex<BTreeMap<&'static str, i64>>,
    /// Each SIEM sink's state, by sink name.
    siem: Mutex<BTreeMap<String, SinkStats>>,
}

/// Label values are action ids and outcomes; escape anyway.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    pub fn decided(&self, outcome: &str, action: &str) {
        if let Ok(mut m) = self.decisions.lock() {
            *m.entry((outcome.to_string(), action.to_string())).or_default() += 1;
        }
    }

    pub fn executed(&self, state: &str) {
        if let Ok(mut m) = self.executions.lock() {
            *m.entry(state.to_string()).or_default() += 1;
        }
    }

    /// Something was refused because a bound was reached (`cap` names the bound).
    pub fn refused(&self, cap: &str) {
        if let Ok(mut m) = self.refusals.lock() {
            *m.entry(cap.to_string()).or_default() += 1;
        }
    }

    /// How many times `cap` refused (tests and the soak read it).
    pub fn refusals(&self, cap: &str) -> u64 {
        self.refusals.lock().ok().and_then(|m| m.get(cap).copied()).unwrap_or(0)
    }

    pub fn connection_opened(&self) {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn open_connections(&self) -> i64 {
        self.open_connections.load(Ordering::Relaxed)
    }

    /// One more (`+1`) or one fewer (`-1`) session or stream open at `door`.
    pub fn session(&self, door: &'static str, delta: i64) {
        if let Ok(mut m) = self.sessions.lock() {
            *m.entry(door).or_default() += delta;
        }
    }

    /// Sessions or streams open at `door` now.
    pub fn sessions(&self, door: &str) -> i64 {
        self.sessions.lock().ok().and_then(|m| m.get(door).copied()).unwrap_or(0)
    }

    /// Changes the state `/metrics` shows for SIEM sink `name`.
    pub fn siem_update(&self, name: &str, f: impl FnOnce(&mut SinkStats)) {
        if let Ok(mut m) = self.siem.lock() {
            f(m.entry(name.to_string()).or_default());
        }
    }

    /// SIEM sink `name`'s state as last updated.
    pub fn siem(&self, name: &str) -> Option<SinkStats> {
        self.siem.lock().ok().and_then(|m| m.get(name).cloned())
    }

    /// The text exposition format; `gauges` are read from the store by the caller.
    pub fn render(
        &self,
        pending_approvals: u64,
        active_leases: u64,
        groups: warden_store::GroupStats,
        pending_by_agent: &[(String, u64)],
    ) -> String {
        let mut out = String::new();
        out.push_str("# HELP warden_decisions_total Decisions recorded, by outcome and action class.\n");
        out.push_str("# TYPE warden_decisions_total counter\n");
        if let Ok(m) = self.decisions.lock() {
            for ((outcome, action), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "warden_decisions_total{{outcome=\"{}\",action=\"{}\"}} {n}",
                    label(outcome),
                    label(action)
                );
            }
        }
        self.decision_latency.render(
            "warden_decision_seconds",
            "Time to decide one request (the core, without I/O).",
            &mut out,
        );
        self.audit_append_latency.render(
            "warden_audit_append_seconds",
            "Time to commit a request's records and audit entries durably.",
            &mut out,
        );
        let _ = writeln!(
            out,
            "# HELP warden_audit_commits_total Batches committed to the store and the audit log.\n# TYPE warden_audit_commits_total counter\nwarden_audit_commits_total {}\n# HELP warden_audit_commit_groups_total Durable transactions (fsyncs) that carried them (group commit).\n# TYPE warden_audit_commit_groups_total counter\nwarden_audit_commit_groups_total {}\n# HELP warden_audit_commit_busy_seconds_total Time the single writer spent in those transactions.\n# TYPE warden_audit_commit_busy_seconds_total counter\nwarden_audit_commit_busy_seconds_total {}",
            groups.batches,
            groups.groups,
            groups.busy.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "# HELP warden_breaker_trips_total Decisions that tripped a budget breaker.\n# TYPE warden_breaker_trips_total counter\nwarden_breaker_trips_total {}",
            self.breaker_trips.load(Ordering::Relaxed)
        );
        out.push_str("# HELP warden_executions_total Executions through connectors, by result.\n");
        out.push_str("# TYPE warden_executions_total counter\n");
        if let Ok(m) = self.executions.lock() {
            for (state, n) in m.iter() {
                let _ = writeln!(out, "warden_executions_total{{state=\"{}\"}} {n}", label(state));
            }
        }
        let _ = writeln!(
            out,
            "# HELP warden_pending_approvals Requests waiting for a human.\n# TYPE warden_pending_approvals gauge\nwarden_pending_approvals {pending_approvals}"
        );
        out.push_str("# HELP warden_pending_approvals_by_agent Requests waiting for a human, by agent (capped by `[escalation] max_pending`).\n");
        out.push_str("# TYPE warden_pending_approvals_by_agent gauge\n");
        for (agent, n) in pending_by_agent {
            let _ = writeln!(out, "warden_pending_approvals_by_agent{{agent=\"{}\"}} {n}", label(agent));
        }
        let _ = writeln!(
            out,
            "# HELP warden_active_leases Unexpired, unrevoked leases.\n# TYPE warden_active_leases gauge\nwarden_active_leases {active_leases}"
        );
        let _ = writeln!(
            out,
            "# HELP warden_open_connections Connections open now.\n# TYPE warden_open_connections gauge\nwarden_open_connections {}",
            self.open_connections()
        );
        out.push_str("# HELP warden_sessions Sessions and event streams open now, by front door.\n");
        out.push_str("# TYPE warden_sessions gauge\n");
        if let Ok(m) = self.sessions.lock() {
            for (door, n) in m.iter() {
                let _ = writeln!(out, "warden_sessions{{door=\"{}\"}} {n}", label(door));
            }
        }
        out.push_str("# HELP warden_refusals_total Connections, sessions and requests refused by a bound, by bound.\n");
        out.push_str("# TYPE warden_refusals_total counter\n");
        if let Ok(m) = self.refusals.lock() {
            for (cap, n) in m.iter() {
                let _ = writeln!(out, "warden_refusals_total{{cap=\"{}\"}} {n}", label(cap));
            }
        }
        let _ = writeln!(
            out,
            "# HELP warden_store_write_failures_total Commits the store refused (disk full, I/O error); each failed closed, nothing applied.\n# TYPE warden_store_write_failures_total counter\nwarden_store_write_failures_total {}\n# HELP warden_store_failing 1 while the store's last commit failed; the next that succeeds clears it.\n# TYPE warden_store_failing gauge\nwarden_store_failing {}",
            groups.failed,
            u8::from(groups.failing)
        );
        if let Ok(m) = self.siem.lock()
            && !m.is_empty()
        {
            let metric = |out: &mut String, name: &str, kind: &str, help: &str, value: &dyn Fn(&SinkStats) -> u64| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for (sink, s) in m.iter() {
                    let _ = writeln!(out, "{name}{{sink=\"{}\"}} {}", label(sink), value(s));
                }
            };
            metric(&mut out, "warden_siem_cursor", "gauge", "The next audit entry each SIEM sink will send.", &|s| {
                s.cursor
            });
            metric(
                &mut out,
                "warden_siem_backlog",
                "gauge",
                "Audit entries each SIEM sink has not had acknowledged yet (they wait in the log).",
                &|s| s.backlog,
            );
            metric(
                &mut out,
                "warden_siem_over_backlog",
                "gauge",
                "1 while a sink's backlog is over its `max_backlog`.",
                &|s| u64::from(s.backlog > s.max_backlog),
            );
            metric(&mut out, "warden_siem_events_sent_total", "counter", "OCSF events each SIEM acknowledged.", &|s| {
                s.sent
            });
            metric(
                &mut out,
                "warden_siem_failures_total",
                "counter",
                "Requests to each SIEM that failed (refused, unreachable, timed out); each is retried.",
                &|s| s.failures,
            );
            metric(&mut out, "warden_siem_up", "gauge", "1 while a sink's last attempt succeeded.", &|s| {
                u64::from(s.up)
            });
            metric(
                &mut out,
                "warden_siem_holder",
                "gauge",
                "1 when this node sends for the sink (holds its lease).",
                &|s| u64::from(s.holder),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counters_labelled() {
        let m = Metrics::default();
        m.decision_latency.observe(Duration::from_micros(30));
        m.decision_latency.observe(Duration::from_millis(2));
        m.decision_latency.observe(Duration::from_secs(2));
        m.decided("execute", "host.isolate");
        m.decided("execute", "host.isolate");
        let text = m.render(
            3,
            0,
            warden_store::GroupStats {
                groups: 2,
                batches: 7,
                busy: Duration::from_millis(1500),
                failed: 1,
                failing: true,
            },
            &[("spiffe://a".into(), 3)],
        );
        assert!(text.contains("warden_decision_seconds_bucket{le=\"0.00005\"} 1\n"), "{text}");
        assert!(text.contains("warden_decision_seconds_bucket{le=\"0.0025\"} 2\n"));
        assert!(text.contains("warden_decision_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("warden_decision_seconds_count 3\n"));
        assert!(text.contains("warden_decisions_total{outcome=\"execute\",action=\"host.isolate\"} 2\n"));
        assert!(text.contains("warden_pending_approvals 3\n"));
        assert!(text.contains("warden_audit_commit_groups_total 2\n"), "{text}");
        assert!(text.contains("warden_audit_commits_total 7\n"), "{text}");
        assert!(text.contains("warden_audit_commit_busy_seconds_total 1.5\n"), "{text}");
        assert!(text.contains("warden_store_write_failures_total 1\n"), "{text}");
        assert!(text.contains("warden_store_failing 1\n"), "{text}");
        assert!(text.contains("warden_pending_approvals_by_agent{agent=\"spiffe://a\"} 3\n"), "{text}");
        m.refused("connections");
        m.refused("connections");
        m.session("mcp", 2);
        m.connection_opened();
        let text = m.render(0, 0, warden_store::GroupStats::default(), &[]);
        assert!(text.contains("warden_refusals_total{cap=\"connections\"} 2\n"), "{text}");
        assert!(text.contains("warden_sessions{door=\"mcp\"} 2\n"), "{text}");
        assert!(text.contains("warden_open_connections 1\n"), "{text}");
        assert!(text.contains("warden_store_failing 0\n"), "{text}");
    }
}
