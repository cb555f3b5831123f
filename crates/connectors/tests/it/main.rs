//! The HTTP connector against the lab estate, with the example bundle's `connectors.toml`.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use warden_connectors::{Call, Connector, ConnectorError, EnvSecrets, HttpConnector};
use warden_lab::Keys;

/// The lab on a free loopback port.
fn lab() -> (String, Keys) {
    let keys = Keys::random();
    (warden_lab::spawn(keys.clone(), std::time::Duration::ZERO), keys)
}

fn connector(url: &str, keys: &Keys) -> HttpConnector {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policy/connectors.toml")).unwrap();
    let tools: BTreeMap<String, String> = ["edr", "idp", "firewall", "mail", "ticketing", "siem"]
        .iter()
        .map(|t| (t.to_string(), url.to_string()))
        .collect();
    let given = keys.env().into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    HttpConnector::from_toml(&text, &tools, Box::new(EnvSecrets { given, dir: None })).unwrap()
}

fn state(url: &str) -> Value {
    let mut res = ureq::get(format!("{url}/state")).call().unwrap();
    res.body_mut().read_json().unwrap()
}

fn call(action: &str, target: &str, params: Value) -> Call {
    let (kind, id) = target.split_once(':').unwrap();
    Call {
        action: action.into(),
        target_kind: kind.into(),
        target_id: id.into(),
        params: params.as_object().cloned().unwrap_or_default(),
        captured: Map::new(),
        lease_id: "lease_test".into(),
        lease_token: String::new(),
        task: "INC-1".into(),
        agent: "spiffe://acme.example/soc/edr-responder".into(),
    }
}

#[test]
fn every_example_action_is_configured_against_the_lab() {
    let (url, keys) = lab();
    let c = connector(&url, &keys);
    let actions: Vec<&str> = c.actions().collect();
    assert_eq!(actions.len(), 19, "{actions:?}");
}

#[test]
fn isolate_then_compensate_really_changes_the_lab() {
    let (url, keys) = lab();
    let c = connector(&url, &keys);
    let isolate = call("host.isolate", "host:web-42", json!({"reason": "beacon"}));
    let done = c.execute(&isolate).unwrap();
    let cid = done.captured["containment_id"].clone();
    assert_eq!(state(&url)["edr"]["hosts"]["web-42"]["status"], "contained");
    assert!(state(&url)["edr"]["hosts"]["web-42"]["comment"].as_str().unwrap().contains("lease_test"));
    let mut undo = isolate.clone();
    undo.captured = done.captured.clone();
    c.compensate("host.release", &undo).unwrap();
    assert_eq!(state(&url)["edr"]["hosts"]["web-42"]["status"], "normal");
    assert!(cid.as_str().unwrap().starts_with("cnt-"));

    // Blocking an IP captures the rule; its compensation deletes exactly that rule.
    let block = call("ip.block", "ip:203.0.113.7", json!({"reason": "c2"}));
    let done = c.execute(&block).unwrap();
    assert_eq!(state(&url)["firewall"]["rules"].as_object().unwrap().len(), 1);
    let mut undo = block.clone();
    undo.captured = done.captured;
    c.compensate("ip.unblock", &undo).unwrap();
    assert_eq!(state(&url)["firewall"]["rules"].as_object().unwrap().len(), 0);
    assert_eq!(state(&url)["calls"]["total"], 4);
}

#[test]
fn a_wrong_key_or_missing_secret_fails_without_showing_the_secret() {
    let (url, keys) = lab();
    let mut wrong = keys.clone();
    wrong.edr = "not-the-key".into();
    let c = connector(&url, &wrong);
    let e = c.execute(&call("host.isolate", "host:web-42", json!({"reason": "x"}))).unwrap_err();
    assert!(matches!(&e, ConnectorError::Rejected { status: 401, .. }), "{e}");
    assert!(!e.to_string().contains("not-the-key"));
    assert_eq!(state(&url)["edr"]["hosts"], json!({}), "nothing changed");

    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policy/connectors.toml")).unwrap();
    let tools = BTreeMap::from([("edr".to_string(), url.clone())]);
    let none = HttpConnector::from_toml(&text, &tools, Box::new(EnvSecrets::default())).unwrap();
    let e = none.execute(&call("host.isolate", "host:web-42", json!({"reason": "x"}))).unwrap_err();
    assert_eq!(e, ConnectorError::MissingSecret("LAB_EDR_KEY".into()));
    // A compensation that needs a captured field it does not have fails before any call.
    let before = state(&url)["calls"]["total"].as_u64().unwrap();
    let c = connector(&url, &keys);
    let e = c.execute(&call("ip.unblock", "ip:203.0.113.7", json!({"reason": "x"}))).unwrap_err();
    assert!(matches!(e, ConnectorError::Template(_)), "{e}");
    assert_eq!(state(&url)["calls"]["total"].as_u64().unwrap(), before);
}

#[test]
fn a_tool_lost_mid_call_is_unreachable_and_one_never_reached_is_not_sent() {
    let keys = Keys::random();
    let isolate = call("host.isolate", "host:web-42", json!({"reason": "beacon"}));
    match connector(&warden_lab::spawn_hang_up(), &keys).execute(&isolate) {
        Err(ConnectorError::Unreachable(e)) => assert!(!e.contains(&keys.edr), "{e}"),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    // A port nobody listens on: the connection is refused before anything is sent.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    match connector(&closed, &keys).execute(&isolate) {
        Err(ConnectorError::NotSent(_)) => {}
        other => panic!("expected NotSent, got {other:?}"),
    }
}
