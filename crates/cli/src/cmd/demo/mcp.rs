//! The demo's MCP act: the phishing triage agent as an LLM agent would be — an MCP client
//! (rmcp, in this binary: no Python needed) on `/mcp`. It quarantines mail on its own, waits
//! for a human on a host isolation, and is refused after the incident commander halts it.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use rmcp::ServiceExt as _;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Map, Value, json};

use super::stage::{Demo, PHISH, Row, TASK};

fn arguments(target: &str, params: Value) -> Map<String, Value> {
    let mut a = json!({"task": TASK, "target": target, "confidence": 0.95,
        "rationale": format!("phish-triage (over MCP): the phishing wave reached {target}"),
        "evidence": [{"kind": "email", "ref": "msg:wave-2041"}]});
    for (k, v) in params.as_object().into_iter().flatten() {
        a[k] = v.clone();
    }
    a.as_object().cloned().unwrap_or_default()
}

fn meta(r: &CallToolResult) -> Value {
    r.meta.as_ref().and_then(|m| serde_json::to_value(m).ok()).unwrap_or(Value::Null)
}

fn text(r: &CallToolResult) -> String {
    serde_json::to_value(&r.content).ok().and_then(|c| c[0]["text"].as_str().map(str::to_string)).unwrap_or_default()
}

/// Runs the act against the server at `demo.http.base`, on `runtime`.
pub fn act(
    demo: &mut Demo,
    runtime: &tokio::runtime::Handle,
    phish: &str,
    users: &std::collections::BTreeMap<&str, String>,
) -> anyhow::Result<()> {
    demo.heading("An LLM agent over MCP: the phishing triage agent connects to /mcp");
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", demo.http.base)).auth_header(phish);
    let client = runtime
        .block_on(async { ().serve(StreamableHttpClientTransport::from_config(config)).await })
        .context("connecting to /mcp")?;
    let client = std::sync::Arc::new(client);
    let tools = runtime.block_on(client.list_all_tools()).context("listing the tools")?;
    let names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    demo.say(&format!("phish-triage sees {} tools: {}", names.len(), names.join(", ")));
    demo.expect(
        "its tools are the actions it is granted (no process.kill, no session.revoke)",
        names.iter().any(|n| n == "email.quarantine")
            && !names.iter().any(|n| n == "process.kill" || n == "session.revoke"),
    )?;

    let call = |name: &str, args: Map<String, Value>| {
        let (client, name) = (client.clone(), name.to_string());
        runtime.spawn(async move { client.call_tool(CallToolRequestParams::new(name).with_arguments(args)).await })
    };
    let quarantine = arguments("mailbox:jdoe@acme.example", json!({"message_id": "wave-2041-a2"}));
    let r = runtime.block_on(call("email.quarantine", quarantine.clone()))??;
    demo.say(&format!("tools/call email.quarantine → {}", text(&r)));
    demo.expect("executed on its own (level 3)", meta(&r)["warden/state"] == "succeeded")?;
    demo.rows.push(Row::new(
        demo.step,
        "phish-triage (MCP)",
        "email.quarantine mailbox:jdoe",
        "execute",
        "3",
        "succeeded",
    ));

    let isolation = call("host.isolate", arguments("host:lt-jdoe", json!({"reason": "lure opened on this laptop"})));
    let started = std::time::Instant::now();
    let ana = &users["ana"];
    let approval = (0..200)
        .find_map(|_| {
            let (_, list) = demo.http.call("GET", "/v1/approvals", ana, None).ok()?;
            let found = list.as_array().and_then(|l| l.iter().find(|a| a["target"] == "host:lt-jdoe").cloned());
            if found.is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            found
        })
        .ok_or_else(|| anyhow!("the held call opened no approval"))?;
    demo.say("tools/call host.isolate is held: level 2 needs a human (a client that asks for progress gets it while it waits)");
    std::thread::sleep(Duration::from_millis(500));
    let id = approval["id"].as_str().unwrap_or_default().to_string();
    demo.http.ok(
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        ana,
        Some(&json!({"reason": "laptop is in the wave"})),
    )?;
    demo.say("ana (soc-analyst) approves it in Warden, not through the agent's client");
    let r = runtime.block_on(isolation)??;
    demo.detail(&format!("the held call answers after {:.1} s: {}", started.elapsed().as_secs_f64(), text(&r)));
    demo.expect("the same call, executed once approved", meta(&r)["warden/state"] == "succeeded")?;
    demo.rows.push(Row::new(
        demo.step,
        "phish-triage (MCP)",
        "host.isolate host:lt-jdoe",
        "require_approval",
        "2",
        "succeeded",
    ));

    demo.http.ok(
        "POST",
        "/v1/halt",
        &users["olga"],
        Some(&json!({"scope": "agent", "id": PHISH, "reason": "pause the triage agent while the wave is reviewed"})),
    )?;
    demo.say("olga (incident-commander) halts phish-triage");
    let again = arguments("mailbox:jdoe@acme.example", json!({"message_id": "wave-2041-a3"}));
    let r = runtime.block_on(call("email.quarantine", again))??;
    demo.detail(&text(&r));
    demo.expect("the halted agent's tool call is refused", r.is_error == Some(true) && text(&r).contains("halted"))?;
    demo.rows.push(Row::new(
        demo.step,
        "phish-triage (MCP)",
        "email.quarantine (after the halt)",
        "refused",
        "-",
        "agent_halted",
    ));
    if let Ok(c) = std::sync::Arc::try_unwrap(client) {
        let _ = runtime.block_on(c.cancel());
    }
    Ok(())
}
