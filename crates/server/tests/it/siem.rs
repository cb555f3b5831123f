//! Streaming the audit log to SIEMs (DESIGN §7): the lab's HEC-shaped and JSON-lines receivers
//! check the token and every event's shape; these tests check that every exported entry
//! arrives, in order, once — through refusals, a wrong token, a stop and a restart, and two
//! nodes sharing one sink.

use std::time::Duration;

use warden_core::audit::entry::Entry;
use warden_core::audit::ocsf;
use warden_server::siem::{Sink, SinkConfig, SinkKind, start};

use crate::simulate::{a_week_of_work, entries};

fn sink(name: &str, kind: SinkKind, url: String, token: &str, batch: usize) -> Sink {
    let config = SinkConfig {
        name: name.into(),
        kind,
        url,
        token: Some("secret:T".into()),
        batch: Some(batch),
        max_batch_bytes: None,
        max_backlog: None,
        sourcetype: None,
        index: None,
        ca_cert: None,
        timeout: None,
    };
    let token = token.to_string();
    let mut s = Sink::from_config(config, move |_| Some(token.clone())).unwrap();
    s.poll = Duration::from_millis(20);
    s.backoff = Duration::from_millis(20);
    s.max_backoff = Duration::from_millis(100);
    s
}

/// The sequence numbers of the entries the OCSF mapping exports: what a SIEM must receive.
fn exported(log: &[Entry]) -> Vec<u64> {
    let product = ocsf::Product { version: "test".into() };
    log.iter().filter(|e| ocsf::event(e, &product).is_some()).map(|e| e.seq).collect()
}

fn received(lab: &str, endpoint: &str) -> Vec<u64> {
    let v: serde_json::Value =
        ureq::get(format!("{lab}/siem/received")).call().unwrap().body_mut().read_json().unwrap();
    v[endpoint].as_array().into_iter().flatten().filter_map(serde_json::Value::as_u64).collect()
}

/// Waits (up to 20 s) for `f`.
async fn until(mut f: impl FnMut() -> bool) {
    for _ in 0..800 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_exported_entry_reaches_both_receivers_once_in_order() {
    let (h, lab, keys) = crate::harness_lab();
    a_week_of_work(&h).await;
    let want = exported(&entries(&h));
    assert!(want.len() > 100, "{}", want.len());
    let streams = start(
        &h.app,
        vec![
            sink("splunk", SinkKind::SplunkHec, format!("{lab}/services/collector/event"), &keys.hec, 7),
            sink("lake", SinkKind::Jsonl, format!("{lab}/ingest/jsonl"), &keys.hec, 50),
        ],
    );
    let size = h.app.ledger().store().size().unwrap();
    until(|| ["splunk", "lake"].iter().all(|n| h.app.metrics.siem(n).is_some_and(|s| s.cursor == size))).await;
    assert_eq!(received(&lab, "hec"), want, "HEC: every exported entry, in order, once");
    assert_eq!(received(&lab, "jsonl"), want, "JSON lines: the same");
    let stats = h.app.metrics.siem("splunk").unwrap();
    assert_eq!((stats.sent, stats.failures, stats.backlog, stats.up), (want.len() as u64, 0, 0, true));
    // The cursor is in the store, and `/metrics` shows each sink without its secrets.
    assert_eq!(h.app.ledger().store().meta("siem.splunk.cursor").unwrap(), Some(size.to_string()));
    let (_, metrics) = h.call("GET", "/metrics", None, None).await;
    let text = metrics.as_str().unwrap();
    assert!(text.contains("warden_siem_backlog{sink=\"splunk\"} 0"), "{text}");
    assert!(text.contains(&format!("warden_siem_events_sent_total{{sink=\"lake\"}} {}", want.len())), "{text}");
    assert!(!text.contains(&keys.hec) && !text.contains(&lab), "no token, no URL");
    // Streaming wrote nothing to the log it streams.
    assert_eq!(h.app.ledger().store().size().unwrap(), size);
    streams.stop();
}

/// A SIEM that refuses for a while (503): each batch is retried with backoff, counted as a
/// failure, and nothing is skipped or sent twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_refusing_siem_is_retried_until_it_takes_the_batch() {
    let (h, lab, keys) = crate::harness_lab();
    a_week_of_work(&h).await;
    let want = exported(&entries(&h));
    ureq::post(format!("{lab}/siem/fail")).send_json(serde_json::json!({"next": 4})).unwrap();
    let streams = start(
        &h.app,
        vec![sink("splunk", SinkKind::SplunkHec, format!("{lab}/services/collector/event"), &keys.hec, 25)],
    );
    let size = h.app.ledger().store().size().unwrap();
    until(|| h.app.metrics.siem("splunk").is_some_and(|s| s.cursor == size)).await;
    let stats = h.app.metrics.siem("splunk").unwrap();
    assert_eq!(stats.failures, 4);
    assert!(stats.up);
    assert_eq!(received(&lab, "hec"), want);
    streams.stop();
}

/// A wrong token: the SIEM refuses every batch (403); the cursor stays, the backlog shows it,
/// the sink reads as down — and nothing reached the SIEM.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_sends_nothing_and_the_metrics_say_so() {
    let (h, lab, _keys) = crate::harness_lab();
    a_week_of_work(&h).await;
    let mut bad = sink("splunk", SinkKind::SplunkHec, format!("{lab}/services/collector/event"), "not-the-token", 10);
    bad.max_backlog = 5;
    let streams = start(&h.app, vec![bad]);
    until(|| h.app.metrics.siem("splunk").is_some_and(|s| s.failures >= 3)).await;
    let stats = h.app.metrics.siem("splunk").unwrap();
    let size = h.app.ledger().store().size().unwrap();
    // The cursor moved only past entries the mapping does not export (nothing to send); it
    // stopped before the first event the SIEM refused.
    let first = exported(&entries(&h))[0];
    assert!(stats.cursor <= first, "{stats:?} first exported {first}");
    assert_eq!((stats.backlog, stats.sent, stats.up), (size - stats.cursor, 0, false));
    let (_, metrics) = h.call("GET", "/metrics", None, None).await;
    let text = metrics.as_str().unwrap();
    assert!(text.contains("warden_siem_over_backlog{sink=\"splunk\"} 1"), "{text}");
    assert!(text.contains("warden_siem_up{sink=\"splunk\"} 0"), "{text}");
    assert!(!text.contains("not-the-token"));
    assert!(received(&lab, "hec").is_empty());
    let stored = h.app.ledger().store().meta("siem.splunk.cursor").unwrap();
    assert!(stored.is_none_or(|c| c.parse::<u64>().unwrap() <= first));
    streams.stop();
}

/// Stopped and started again, a sink resumes at its cursor: what was sent is not sent again,
/// and what was written meanwhile arrives.
#[tokio::test(flavor = "multi_thread")]
async fn a_sink_resumes_at_its_cursor() {
    let (h, lab, keys) = crate::harness_lab();
    let ana = h.user("ana", &["soc-analyst"]);
    let hec = || sink("splunk", SinkKind::SplunkHec, format!("{lab}/services/collector/event"), &keys.hec, 9);
    let streams = start(&h.app, vec![hec()]);
    let size = h.app.ledger().store().size().unwrap();
    until(|| h.app.metrics.siem("splunk").is_some_and(|s| s.cursor == size)).await;
    streams.stop();
    for i in 0..5 {
        let task = serde_json::json!({"id": format!("INC-R{i}"), "title": "t", "trigger": {"source": "siem", "severity": "low"}});
        h.call("POST", "/v1/tasks", Some(&ana), Some(task)).await;
    }
    let streams = start(&h.app, vec![hec()]);
    let size = h.app.ledger().store().size().unwrap();
    until(|| h.app.metrics.siem("splunk").is_some_and(|s| s.cursor == size)).await;
    assert_eq!(received(&lab, "hec"), exported(&entries(&h)), "no gap, no duplicate across the restart");
    streams.stop();
}

/// Two nodes on one store, each configured with the same sink: one holds its lease and sends;
/// every entry arrives once.
#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_share_a_sink_through_its_lease() {
    let (h, lab, keys) = crate::harness_lab();
    a_week_of_work(&h).await;
    let (other, _router) = crate::second_node(&h, Default::default());
    let hec = || sink("splunk", SinkKind::SplunkHec, format!("{lab}/services/collector/event"), &keys.hec, 11);
    let one = start(&h.app, vec![hec()]);
    let two = start(&other, vec![hec()]);
    let size = h.app.ledger().store().size().unwrap();
    let cursor = || h.app.ledger().store().meta("siem.splunk.cursor").unwrap();
    until(|| cursor() == Some(size.to_string())).await;
    let holders: Vec<bool> =
        [&h.app, &other].iter().map(|a| a.metrics.siem("splunk").is_some_and(|s| s.holder)).collect();
    assert_eq!(holders.iter().filter(|x| **x).count(), 1, "{holders:?}");
    assert_eq!(received(&lab, "hec"), exported(&entries(&h)));
    one.stop();
    two.stop();
}

/// An HTTPS JSON-lines endpoint behind a private CA (the lab's receiver over TLS, the
/// fixtures' certificate for `localhost`): with the CA given (`ca_cert`), everything arrives;
/// without it, the certificate is not trusted, nothing is sent and the sink says it is down.
#[tokio::test(flavor = "multi_thread")]
async fn an_https_sink_trusts_its_private_ca_and_nothing_else() {
    let fixture = |name: &str| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls").join(name);
    let (h, _lab, keys) = crate::harness_lab();
    a_week_of_work(&h).await;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = warden_server::tls::acceptor(&fixture("cert.pem"), &fixture("key.pem")).unwrap();
    let listener = warden_server::tls::TlsListener::new(tcp, tls).unwrap();
    let port = axum::serve::Listener::local_addr(&listener).unwrap().port();
    let router = warden_lab::router(keys.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let https = |name: &str, ca: bool| {
        let config = SinkConfig {
            name: name.into(),
            kind: SinkKind::Jsonl,
            url: format!("https://localhost:{port}/ingest/jsonl"),
            token: Some("secret:T".into()),
            batch: Some(40),
            max_batch_bytes: None,
            max_backlog: None,
            sourcetype: None,
            index: None,
            ca_cert: ca.then(|| fixture("ca.pem")),
            timeout: None,
        };
        let token = keys.hec.clone();
        let mut s = Sink::from_config(config, move |_| Some(token.clone())).unwrap();
        s.poll = Duration::from_millis(20);
        s.backoff = Duration::from_millis(20);
        s.max_backoff = Duration::from_millis(100);
        s
    };
    // Untrusted first: nothing is sent.
    let untrusted = start(&h.app, vec![https("untrusted", false)]);
    until(|| h.app.metrics.siem("untrusted").is_some_and(|s| s.failures >= 2)).await;
    untrusted.stop();
    let stats = h.app.metrics.siem("untrusted").unwrap();
    assert_eq!((stats.sent, stats.up), (0, false), "{stats:?}");
    // Trusted: every exported entry, in order, once.
    let streams = start(&h.app, vec![https("lake", true)]);
    let size = h.app.ledger().store().size().unwrap();
    until(|| h.app.metrics.siem("lake").is_some_and(|s| s.cursor == size)).await;
    streams.stop();
    let lab = format!("https://localhost:{port}");
    let pem = std::fs::read(fixture("ca.pem")).unwrap();
    let ca: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c.to_owned()),
            _ => None,
        })
        .collect();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(&ca)).build())
        .build()
        .into();
    let v: serde_json::Value =
        agent.get(format!("{lab}/siem/received")).call().unwrap().body_mut().read_json().unwrap();
    let got: Vec<u64> = v["jsonl"].as_array().unwrap().iter().filter_map(serde_json::Value::as_u64).collect();
    assert_eq!(got, exported(&entries(&h)));
}
