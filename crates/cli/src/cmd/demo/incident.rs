//! `warden demo`: Warden's whole job in one command. It starts the lab estate and a Warden
//! server on free loopback ports, initialises a data directory, loads the example bundle and
//! drives scripted agents and humans through a phishing incident over HTTP, narrating each
//! step; it exits 0 only if every step behaved as narrated.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use serde_json::{Value, json};
use warden_core::audit::entry::Actor;
use warden_core::{Bundle, SourceFile};
use warden_server::limits::Limits;
use warden_server::state::ServerOptions;
use warden_server::{AppState, admin};
use warden_store::{DataDir, SystemClock};

use crate::Failure;

use super::stage::{Demo, EDR, ENRICH, Http, IAM, PHISH, Row, TASK, short, summary};

/// Marks a directory the demo made, so a second run may start it afresh.
const MARKER: &str = ".warden-demo";

const CONNECTORS: &str = include_str!("../../../../../examples/policy/connectors.toml");

/// Prepares `dir`: a new directory, or one a previous demo made (started afresh).
fn prepare(dir: &Path) -> Result<(), Failure> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !empty && !dir.join(MARKER).exists() {
            return Err(Failure::Invalid(format!(
                "error: `{}` exists and was not made by `warden demo`; pass --data with a new directory",
                dir.display()
            )));
        }
        if !empty {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing `{}`", dir.display()))?;
        }
    }
    Ok(())
}

pub fn run(data: PathBuf, keep_running: bool) -> Result<(), Failure> {
    prepare(&data)?;
    let files: Vec<SourceFile> = crate::bundle_dir::example();
    let bundle = Bundle::load(&files).map_err(|e| anyhow!("the built-in example bundle is invalid: {e}"))?;
    let version = bundle.version().to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let keys = warden_lab::Keys::random();
    let lab_listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).context("binding the lab")?;
    let lab_addr = lab_listener.local_addr().context("the lab's address")?;
    runtime.spawn(warden_lab::serve(lab_listener, keys.clone(), std::future::pending()));

    let (dir, admin_token) = DataDir::init(&data, "warden.demo/audit", Arc::new(SystemClock))
        .with_context(|| format!("initialising `{}`", data.display()))?;
    std::fs::write(data.join(MARKER), "made by warden demo\n").context("marking the demo directory")?;
    let now = time::OffsetDateTime::now_utc();
    let system = Actor::user("demo");
    for g in bundle.agents() {
        admin::add_agent(dir.ledger(), &system, &g.id, &g.owner, &g.purpose, now).map_err(|e| anyhow!(e.message))?;
    }
    let mut tokens = std::collections::BTreeMap::new();
    for (user, role) in
        // The email gateway is an integration with a credential of its own, whose role the
        // bundle's authority.toml maps to the `email-gateway` source: the tasks it opens carry
        // a verified trigger, unlike any an agent opens for itself.
        [
            ("ana", "soc-analyst"),
            ("ivy", "iam-owner"),
            ("ian", "iam-owner"),
            ("olga", "incident-commander"),
            ("email-gateway", "integration-email-gateway"),
        ]
    {
        let (_, t) =
            admin::add_user(dir.ledger(), &system, user, &[role.to_string()], &[]).map_err(|e| anyhow!(e.message))?;
        tokens.insert(user, t);
    }
    let tools = ["edr", "idp", "firewall", "mail", "ticketing", "siem"]
        .iter()
        .map(|t| (t.to_string(), format!("http://{lab_addr}")))
        .collect();
    let given = keys.env().into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let connector = warden_connectors::HttpConnector::from_toml(
        CONNECTORS,
        &tools,
        Box::new(warden_connectors::EnvSecrets { given, dir: None }),
    )
    .map_err(|e| anyhow!("the built-in connectors are invalid: {e}"))?;
    let options = ServerOptions {
        limits: Limits { agent_rate: 1e6, agent_burst: 1e6, ..Limits::default() },
        connector: Some(Arc::new(connector)),
        ..ServerOptions::default()
    };
    let app = AppState::with_options(dir, bundle, Arc::new(SystemClock), options).map_err(|e| anyhow!(e.message))?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).context("binding the server")?;
    let addr = listener.local_addr().context("the server's address")?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = app.clone();
    let server = runtime.spawn(async move {
        warden_server::serve::serve(listener, served, async move {
            let _ = stop_rx.await;
        })
        .await
    });
    runtime.spawn(warden_server::serve::sweep_approvals(app.clone(), Duration::from_secs(1)));

    let svid = |agent: &str| app.tokens.local.mint(agent, "warden", time::OffsetDateTime::now_utc(), 3600);
    let (phish, edr, iam, bot) = (svid(PHISH), svid(EDR), svid(IAM), svid(ENRICH));
    let http = Http {
        base: format!("http://{addr}"),
        agent: ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into(),
    };
    let mut demo =
        Demo { http, lab: format!("http://{lab_addr}"), started: std::time::Instant::now(), rows: Vec::new(), step: 0 };
    outln!("Warden demo — a phishing wave at ACME, decided, executed and audited end to end");
    outln!("policy bundle {version} · data {} · server http://{addr} · lab estate http://{lab_addr}", data.display());
    let result = script(&mut demo, &tokens, &admin_token, [&phish, &edr, &iam, &bot], &app, runtime.handle());
    let verdict = match result {
        Ok(explained) => {
            summary(&demo);
            outln!("");
            outln!("Explore further:");
            outln!("  warden audit verify --data {}", data.display());
            outln!("  warden audit export --format ocsf --data {}", data.display());
            if keep_running {
                outln!("  export WARDEN_SERVER=http://{addr} WARDEN_TOKEN={admin_token}");
                outln!("  warden explain {explained}");
                outln!("  warden approvals list --state approved");
                outln!("  curl http://{lab_addr}/state");
                outln!("");
                outln!("The analyst console: http://{addr}/console");
                outln!("  sign in as ana (soc-analyst) with {}", tokens["ana"]);
                outln!("  or as olga (incident commander) with {}", tokens["olga"]);
            } else {
                outln!("  warden demo --keep-running   # leaves the server, the lab and the analyst console up");
            }
            Ok(())
        }
        Err(e) => Err(Failure::Other(e.context("the demo did not behave as narrated"))),
    };
    if keep_running && verdict.is_ok() {
        outln!("");
        outln!("the server and the lab keep running; Ctrl-C to stop");
        runtime.block_on(warden_server::serve::signals());
    }
    let _ = stop_tx.send(());
    let _ = runtime.block_on(server);
    runtime.shutdown_timeout(Duration::from_secs(2));
    verdict
}

fn script(
    demo: &mut Demo,
    users: &std::collections::BTreeMap<&str, String>,
    admin_token: &str,
    [phish, edr, iam, bot]: [&String; 4],
    app: &warden_server::App,
    runtime: &tokio::runtime::Handle,
) -> anyhow::Result<String> {
    let ana = &users["ana"];
    demo.heading("The email gateway reports a credential-phishing wave and opens a task (a verified trigger)");
    let task = json!({"id": TASK, "title": "Credential phishing wave against finance",
        "trigger": {"source": "email-gateway", "alert_id": "ALRT-1001", "severity": "high",
                    "summary": "62 users received a lure linking to a fake SSO page"}});
    let opened = demo.http.ok("POST", "/v1/tasks", &users["email-gateway"], Some(&task))?;
    demo.expect(
        "the gateway's trigger is verified: policy may rely on its severity and source",
        opened["verified"] == true,
    )?;
    demo.detail(&format!("task {TASK} open, trigger email-gateway ALRT-1001 severity high, opened by email-gateway"));

    demo.heading("Enrichment runs on its own (level 4)");
    let a = demo.request(
        bot,
        ENRICH,
        "alert.enrich",
        "alert:ALRT-1001",
        0.60,
        json!({"sources": ["threat-intel", "idp.directory"]}),
    )?;
    demo.expect(
        "executed autonomously at level 4",
        a["state"] == "succeeded" && a["decision"]["effective_level"] == 4,
    )?;
    demo.expect(
        "the SIEM alert is enriched in the lab",
        demo.lab_state()?["siem"]["alerts"]["ALRT-1001"]["enriched"] == true,
    )?;

    demo.heading("The lure is quarantined at confidence 0.95 (level 3)");
    let a = demo.request(
        phish,
        PHISH,
        "email.quarantine",
        "mailbox:jdoe@acme.example",
        0.95,
        json!({"message_id": "wave-2041-a1"}),
    )?;
    demo.expect(
        "executed autonomously at level 3",
        a["state"] == "succeeded" && a["decision"]["effective_level"] == 3,
    )?;
    demo.expect(
        "the message is quarantined in the lab",
        demo.lab_state()?["mail"]["messages"]["wave-2041-a1"]["status"] == "quarantined",
    )?;

    demo.heading("A payments database beacons: isolating it needs an analyst");
    let a = demo.request(
        edr,
        EDR,
        "host.isolate",
        "host:db-payments-01",
        0.93,
        json!({"reason": "beacon to the phishing kit's C2"}),
    )?;
    demo.expect("it waits for a human", a["state"] == "pending_approval")?;
    let isolation = a["id"].as_str().unwrap_or_default().to_string();
    let approval = a["decision"]["approval"]["id"].as_str().unwrap_or_default().to_string();
    demo.vote(ana, "ana (soc-analyst)", &approval, "C2 confirmed in the EDR console")?;
    let after = demo.get_action(edr, &isolation)?;
    demo.narrate_execution(&after);
    demo.expect("approved, then executed under a lease", after["state"] == "succeeded")?;
    demo.expect(
        "the host is contained in the lab",
        demo.lab_state()?["edr"]["hosts"]["db-payments-01"]["status"] == "contained",
    )?;
    if let Some(r) = demo.rows.last_mut() {
        r.state = "succeeded (approved by ana)".into();
    }

    demo.heading("Disabling a privileged admin account is stepped up to two IAM owners");
    let a = demo.request(
        iam,
        IAM,
        "account.disable",
        "account:adm-jdoe",
        0.97,
        json!({"reason": "session token replayed from the phishing kit"}),
    )?;
    demo.expect(
        "it needs iam-owner with quorum 2",
        a["state"] == "pending_approval" && a["decision"]["approval"]["quorum"] == 2,
    )?;
    let disable = a["id"].as_str().unwrap_or_default().to_string();
    let approval = a["decision"]["approval"]["id"].as_str().unwrap_or_default().to_string();
    let first = demo.vote(&users["ivy"], "ivy (iam-owner)", &approval, "token theft confirmed")?;
    demo.expect("one vote is not enough", first["state"] == "pending")?;
    demo.vote(&users["ian"], "ian (iam-owner)", &approval, "agreed: disable now")?;
    let after = demo.get_action(iam, &disable)?;
    demo.narrate_execution(&after);
    demo.expect(
        "the account is deactivated in the lab",
        demo.lab_state()?["idp"]["users"]["adm-jdoe"]["status"] == "DEPROVISIONED",
    )?;
    if let Some(r) = demo.rows.last_mut() {
        r.state = "succeeded (approved by ivy, ian)".into();
    }

    demo.heading("A low-confidence request is only advised, and flagged");
    let a = demo.request(edr, EDR, "host.isolate", "host:web-01", 0.35, json!({"reason": "weak signal"}))?;
    demo.expect("advised, nothing executed", a["state"] == "advised" && a.get("execution").is_none())?;

    demo.heading("A runaway loop: the EDR agent isolates the same host again and again");
    let mut last = Value::Null;
    // The budget counts every execution, the approved isolation of db-payments-01 included:
    // 9 more fit in the hour, the 10th request goes back to a human.
    for _ in 0..10 {
        let body = json!({"task": TASK, "action": "host.isolate", "target": "host:web-42", "confidence": 0.95,
            "params": {"reason": "loop"}, "rationale": "runaway loop", "evidence": [{"kind": "edr", "ref": "det:loop"}]});
        last = demo.http.ok("POST", "/v1/actions", edr, Some(&body))?;
    }
    let tripped = last["decision"]["caps"].to_string();
    demo.say(&format!(
        "edr-responder → host.isolate on host:web-42, 10 times: with db-payments-01 counted, the 10th is {} at level {}",
        last["decision"]["outcome"].as_str().unwrap_or(""),
        last["decision"]["effective_level"]
    ));
    demo.detail(&format!("caps {tripped}"));
    demo.expect(
        "its budget (10 an hour) trips the breaker: back to level 2",
        last["decision"]["effective_level"] == 2 && tripped.contains("budget"),
    )?;
    demo.rows.push(Row::new(
        demo.step,
        "edr-responder",
        "host.isolate host:web-42 ×10",
        "9× execute, then require_approval",
        "3 → 2",
        "breaker open",
    ));

    demo.heading("The incident commander presses the emergency stop on the EDR agent");
    let h = demo.http.ok(
        "POST",
        "/v1/halt",
        &users["olga"],
        Some(&json!({"scope": "agent", "id": EDR, "reason": "runaway containment loop", "rollback": true})),
    )?;
    demo.say(&format!(
        "olga (incident-commander) halts {}: {} lease(s) revoked, {} approval(s) cancelled, {} action(s) rolled back",
        short(EDR),
        h["revoked_leases"].as_array().map_or(0, Vec::len),
        h["cancelled_approvals"].as_array().map_or(0, Vec::len),
        h["rolled_back"].as_array().map_or(0, Vec::len)
    ));
    demo.expect(
        "its pending approval is cancelled",
        h["cancelled_approvals"].as_array().is_some_and(|a| !a.is_empty()),
    )?;
    let lab = demo.lab_state()?;
    demo.expect("its containments are lifted in the lab", lab["edr"]["hosts"]["web-42"]["status"] == "normal")?;
    let (status, refused) = demo.http.call("POST", "/v1/actions", edr, Some(&json!({"task": TASK, "action": "host.isolate", "target": "host:web-42", "confidence": 0.95, "params": {"reason": "x"}, "rationale": "x", "evidence": [{"kind": "edr", "ref": "x"}]})))?;
    demo.expect("the halted agent is refused", status == 403 && refused["error"]["code"] == "agent_halted")?;

    super::poison::act(demo, runtime, [phish, bot], users)?;
    super::mcp::act(demo, runtime, phish, users)?;

    demo.heading("The analyst closes the task");
    let t = demo.http.ok("POST", &format!("/v1/tasks/{TASK}/close"), ana, None)?;
    demo.expect("closed", t["state"] == "closed")?;

    demo.heading("The audit log verifies");
    let store = app.ledger().store();
    let verifier = warden_store::data_dir::recorded_verifier(store.as_ref())?
        .ok_or_else(|| anyhow!("no verifier key in the log"))?;
    app.ledger().checkpoint()?;
    let report = warden_store::verify::verify(store.as_ref(), &verifier, &mut |_, _| {})
        .map_err(|e| anyhow!("the log does not verify: {e}"))?;
    demo.say(&format!("{} entries, every leaf and signed checkpoint recomputed: ok", report.size));

    demo.heading("Who is accountable for the payments database isolation?");
    let e = demo.http.ok("GET", &format!("/v1/explain/{isolation}"), admin_token, None)?;
    for line in crate::cmd::explain::text(&e).lines() {
        demo.detail(line);
    }
    let proven = e["entries"].as_array().is_some_and(|c| !c.is_empty() && c.iter().all(|x| x["verified"] == true));
    demo.expect("every cited entry proves against the signed checkpoint", proven)?;

    demo.heading("The run's own track record, from the audit log alone (warden report autonomy)");
    let rules = warden_core::report::Rules::default();
    let all = warden_core::report::Filter::default();
    let report = crate::cmd::report::of_store(store.as_ref(), Default::default(), &all, &rules)
        .map_err(|e| anyhow!("the report: {e:?}"))?;
    let bundle = app.bundle().map_err(|e| anyhow!("the bundle in force: {}", e.message))?;
    let diffs = crate::cmd::report::diffs(&report, bundle.files());
    for line in crate::cmd::report::text(&report, &diffs, "the start").lines() {
        demo.detail(line);
    }
    let runaway = report.rows.iter().find(|r| r.agent == EDR && r.action == "host.isolate");
    demo.expect(
        "the runaway EDR agent is proposed a level lower (never applied by Warden)",
        runaway.is_some_and(|r| r.recommendation.verdict == "demote" && r.recommendation.proposed_level == Some(2)),
    )?;
    Ok(isolation)
}
