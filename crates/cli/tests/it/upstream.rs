//! An upstream MCP server Warden launches as a command and speaks to on stdio: the lab EDR's
//! (`warden lab mcp-stdio`), with a credential handed over in its environment.

use std::time::Duration;

use serde_json::json;
use warden_connectors::EnvSecrets;
use warden_connectors::mcp::{Route, UpstreamConfig, Upstreams};

#[test]
fn a_stdio_upstream_is_launched_listed_and_called() {
    let bin = assert_cmd::cargo::cargo_bin("warden").display().to_string();
    let config = UpstreamConfig {
        name: "lab-edr".into(),
        command: vec![bin, "lab".into(), "mcp-stdio".into()],
        env: [("EDR_TOKEN".to_string(), "secret:EDR_TOKEN".to_string())].into_iter().collect(),
        ..UpstreamConfig::default()
    };
    let given = [("EDR_TOKEN".to_string(), "s3cr3t-edr-token".to_string())].into_iter().collect();
    let u = Upstreams::start(vec![config], Box::new(EnvSecrets { given, dir: None })).unwrap();
    assert!(u.wait_connected(Duration::from_secs(20)), "{:?}", u.health());
    let tools = u.tools("lab-edr").unwrap();
    assert!(tools.iter().any(|t| t["name"] == "isolate_host"), "{tools:?}");
    let route = |tool: &str, args: serde_json::Value| Route {
        upstream: "lab-edr".into(),
        tool: tool.into(),
        arguments: args.as_object().cloned().unwrap(),
        capture: [("containment_id".to_string(), "/containment_id".to_string())].into_iter().collect(),
    };
    // A comment that happens to hold the credential comes back redacted.
    let done = u.call(&route("isolate_host", json!({"hostname": "h1", "comment": "s3cr3t-edr-token"}))).unwrap();
    assert!(done.captured["containment_id"].as_str().unwrap().starts_with("cnt-"), "{done:?}");
    let read = u.call(&route("get_host", json!({"hostname": "h1"}))).unwrap();
    assert_eq!((read.body["status"].as_str(), read.body["comment"].as_str()), (Some("contained"), Some("[redacted]")));
}
