//! The demo's data-boundary act (DESIGN §14): a reported message whose body tells whoever reads
//! it to disable the CFO's account. The phishing agent reads it through Warden (`email.fetch`,
//! whose result the catalog labels untrusted); the account disable it then asks for — which its
//! grant would run at once in a task without that read — goes to a human whose card names the
//! message. Then the same over MCP.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use rmcp::ServiceExt as _;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

use super::stage::{Demo, ENRICH, PHISH, Row};

/// The task of the act over `/v1`, and of the act over MCP.
const TASKS: [&str; 2] = ["INC-2042", "INC-2043"];

fn disable_body(task: &str) -> Value {
    json!({"task": task, "action": "account.disable", "target": "account:cfo", "confidence": 0.95,
        "params": {"reason": "the reported message says the CFO account is compromised"},
        "rationale": "phish-triage: a reported message says the CFO account is compromised",
        "evidence": [{"kind": "email", "ref": "msg:m-77"}]})
}

/// Opens `task` as the email gateway (a verified trigger) and enriches its alert, as the
/// example's sequence rule wants before any account disable.
fn open(
    demo: &mut Demo,
    task: &str,
    users: &std::collections::BTreeMap<&str, String>,
    bot: &str,
) -> anyhow::Result<()> {
    let body = json!({"id": task, "title": "Reported message: CFO account compromise notice",
        "trigger": {"source": "email-gateway", "alert_id": "ALRT-1002", "severity": "high",
                    "summary": "jdoe reported a message claiming the CFO account is compromised"}});
    demo.http.ok("POST", "/v1/tasks", &users["email-gateway"], Some(&body))?;
    demo.detail(&format!("task {task} open (email-gateway, verified)"));
    let a = demo.request_in(task, bot, ENRICH, "alert.enrich", "alert:ALRT-1002", 0.9, json!({}))?;
    demo.expect("the alert is enriched: the task's history now holds alert.enrich", a["state"] == "succeeded")
}

/// Runs the act against the server at `demo.http.base`, on `runtime`.
pub fn act(
    demo: &mut Demo,
    runtime: &tokio::runtime::Handle,
    [phish, bot]: [&String; 2],
    users: &std::collections::BTreeMap<&str, String>,
) -> anyhow::Result<()> {
    let olga = &users["olga"];
    demo.heading("A poisoned message: what an agent reads may be an instruction");
    open(demo, TASKS[0], users, bot)?;
    let dry = demo.http.ok("POST", "/v1/decisions", phish, Some(&disable_body(TASKS[0])))?;
    demo.say(&format!(
        "dry run: phish-triage → account.disable on account:cfo would {} at level {} ({})",
        dry["decision"]["outcome"].as_str().unwrap_or(""),
        dry["decision"]["effective_level"],
        dry["decision"]["policies"][0]["id"].as_str().unwrap_or("")
    ));
    demo.expect(
        "before any read, its grant would run it at once (level 4 on a verified phishing incident)",
        dry["decision"]["outcome"] == "execute",
    )?;
    let read = demo.request_in(
        TASKS[0],
        phish,
        PHISH,
        "email.fetch",
        "mailbox:jdoe@acme.example",
        0.95,
        json!({"message_id": "m-77"}),
    )?;
    let body = read["execution"]["answer"]["body"].as_str().unwrap_or_default().to_string();
    demo.detail(&format!("the message says: \"{body}\""));
    demo.expect(
        "the read ran on its own, and its body is an instruction",
        read["state"] == "succeeded" && body.contains("disable account cfo"),
    )?;
    let a = demo.request_in(
        TASKS[0],
        phish,
        PHISH,
        "account.disable",
        "account:cfo",
        0.95,
        json!({"reason": "the reported message says the CFO account is compromised"}),
    )?;
    demo.expect(
        "after the untrusted read, the same disable goes to a human (incident-commander)",
        a["state"] == "pending_approval"
            && a["decision"]["caps"].to_string().contains("untrusted_input")
            && a["decision"]["approval"]["roles"] == json!(["incident-commander"]),
    )?;
    let approval = a["decision"]["approval"]["id"].as_str().unwrap_or_default().to_string();
    let card = demo.http.ok("GET", &format!("/v1/approvals/{approval}"), olga, None)?;
    demo.expect(
        "the approval card names what was read",
        card.to_string().contains("`email.fetch` on `mailbox:jdoe@acme.example` (message_id=`m-77`)"),
    )?;
    let v = demo.http.ok(
        "POST",
        &format!("/v1/approvals/{approval}/reject"),
        olga,
        Some(&json!({"reason": "the instruction came from the reported message itself"})),
    )?;
    demo.say(&format!("olga (incident-commander) rejects {approval} → {}", v["state"].as_str().unwrap_or("")));
    demo.expect(
        "the CFO's account was never touched in the lab",
        demo.lab_state()?["idp"]["users"]["cfo"]["status"].as_str().is_none_or(|s| s != "DEPROVISIONED"),
    )?;
    if let Some(r) = demo.rows.last_mut() {
        r.state = "rejected by olga".into();
    }
    let id = a["id"].as_str().unwrap_or_default();
    let e = demo.http.ok("GET", &format!("/v1/explain/{id}"), &users["ana"], None)?;
    for line in crate::cmd::explain::text(&e).lines().filter(|l| l.starts_with("taint") || l.starts_with("history")) {
        demo.detail(&format!("warden explain: {line}"));
    }

    demo.heading("The same over MCP: the phishing triage agent reads the message with a tool");
    open(demo, TASKS[1], users, bot)?;
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", demo.http.base)).auth_header(phish);
    let client = runtime
        .block_on(async { ().serve(StreamableHttpClientTransport::from_config(config)).await })
        .context("connecting to /mcp")?;
    let client = std::sync::Arc::new(client);
    let args = |v: Value| v.as_object().cloned().unwrap_or_default();
    let fetch = args(json!({"task": TASKS[1], "target": "mailbox:jdoe@acme.example", "message_id": "m-77",
        "confidence": 0.95, "rationale": "read the reported message", "evidence": [{"kind": "email", "ref": "msg:m-77"}]}));
    let r = runtime.block_on(client.call_tool(CallToolRequestParams::new("email.fetch").with_arguments(fetch)))?;
    let said = serde_json::to_value(&r.content)?[0]["text"].as_str().unwrap_or_default().to_string();
    demo.say("tools/call email.fetch → its answer, body included");
    demo.expect("the tool result carries the instruction", said.contains("disable account cfo"))?;
    let mut disable = args(disable_body(TASKS[1]));
    disable.remove("action");
    disable.insert("reason".into(), json!("the reported message says the CFO account is compromised"));
    disable.remove("params");
    let held = {
        let client = client.clone();
        runtime.spawn(async move {
            client.call_tool(CallToolRequestParams::new("account.disable").with_arguments(disable)).await
        })
    };
    let approval = (0..200)
        .find_map(|_| {
            let (_, list) = demo.http.call("GET", "/v1/approvals", olga, None).ok()?;
            let found = list
                .as_array()
                .and_then(|l| l.iter().find(|a| a["task"] == TASKS[1] && a["target"] == "account:cfo").cloned());
            if found.is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            found
        })
        .ok_or_else(|| anyhow!("the held account.disable opened no approval"))?;
    demo.say("tools/call account.disable is held for a human: the task read untrusted input");
    demo.expect("its card names the message too", approval.to_string().contains("message_id=`m-77`"))?;
    let id = approval["id"].as_str().unwrap_or_default();
    demo.http.ok(
        "POST",
        &format!("/v1/approvals/{id}/reject"),
        olga,
        Some(&json!({"reason": "the instruction came from the reported message itself"})),
    )?;
    let r = runtime.block_on(held)??;
    let text = serde_json::to_value(&r.content)?[0]["text"].as_str().unwrap_or_default().to_string();
    demo.detail(&text);
    demo.expect(
        "olga rejects it; the held call answers so, and nothing ran",
        r.is_error == Some(true) && text.contains("rejected"),
    )?;
    demo.rows.push(Row::new(
        demo.step,
        "phish-triage (MCP)",
        "account.disable account:cfo after email.fetch",
        "require_approval",
        "2",
        "rejected by olga",
    ));
    if let Ok(c) = std::sync::Arc::try_unwrap(client) {
        let _ = runtime.block_on(c.cancel());
    }
    Ok(())
}
