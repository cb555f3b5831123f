//! Attacks on issue 27: the facts a decision records, `warden policy simulate` and its guards,
//! the reports. Tests marked `// FINDING` assert the secure behaviour and failed against the code
//! they were written against (each is fixed); `// HELD:` tests are attempts that the code withstood.

use std::path::Path;

use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_core::audit::entry::{Entry, EventType};
use warden_core::report::{Filter, Rules, Window};
use warden_core::request::{ActionRequest, DecisionInput};
use warden_core::simulate::{Guard, RecordedFacts, Simulation, simulate};
use warden_core::{Bundle, Outcome, decide};

use crate::{EDR, example_dir, read_bundle};

/// A copy of the example bundle in a directory of the test's own, with `edits` (file, from, to)
/// applied.
fn bundle_dir(edits: &[(&str, &str, &str)]) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&example_dir(), dir.path());
    for (file, from, to) in edits {
        let p = dir.path().join(file);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "`{file}` holds `{from}`");
        std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    }
    dir
}

/// The bundle at `dir` with `edits` applied to its files in memory.
fn bundle_at(dir: &Path, edits: &[(&str, &str, &str)]) -> Bundle {
    let mut files = read_bundle(dir);
    for (file, from, to) in edits {
        let f = files.iter_mut().find(|f| f.path == *file).unwrap();
        assert!(f.text.contains(from), "`{file}` holds `{from}`");
        f.text = f.text.replacen(from, to, 1);
    }
    Bundle::load(&files).unwrap()
}

fn sim(h: &crate::Harness, proposed: &Bundle) -> Simulation {
    simulate(crate::simulate::entries(h), Window::default(), &Filter::default(), proposed)
}

async fn open_task(h: &crate::Harness, id: &str) {
    let ana = h.user(&format!("ana-{}", id.to_lowercase()), &["soc-analyst"]);
    let task = json!({"id": id, "title": id, "trigger": {"source": "siem", "severity": "high"}});
    assert_eq!(h.call("POST", "/v1/tasks", Some(&ana), Some(task)).await.0, StatusCode::CREATED);
}

async fn act(h: &crate::Harness, agent: &str, body: Value) -> Value {
    let (status, a) = h.call("POST", "/v1/actions", Some(&h.svid(agent)), Some(body)).await;
    assert!(status.is_success(), "{status} {a}");
    a
}

fn outcome(a: &Value) -> Outcome {
    serde_json::from_value(a["decision"]["outcome"].clone()).unwrap()
}

/// The `decision.made` entry of request `id`.
fn decided(h: &crate::Harness, id: &str) -> Entry {
    crate::simulate::entries(h)
        .into_iter()
        .find(|e| e.event.kind == EventType::DecisionMade && e.event.request.as_deref() == Some(id))
        .unwrap()
}

const SECRET_PID: (&str, &str, &str) = (
    "actions.toml",
    r#"{ name = "pid", type = "integer", required = true },"#,
    r#"{ name = "pid", type = "integer", required = true, secret = true },"#,
);

// FINDING (fixed): a catalog could mark a parameter of any type `secret`, but the log records
// every secret as its commitment, a *string*: the replay of a secret integer failed the
// catalog's type check and was decided `deny` whatever the server decided (and so hid a new
// tier0 execution from `--fail-on new-tier0-execute`). A secret of another type than `string`
// is now refused at load, at its `file:line`.
#[test]
fn a_secret_param_of_another_type_than_string_is_refused_at_load() {
    let files = {
        let mut f = read_bundle(&example_dir());
        let actions = f.iter_mut().find(|f| f.path == SECRET_PID.0).unwrap();
        actions.text = actions.text.replacen(SECRET_PID.1, SECRET_PID.2, 1);
        f
    };
    let problems = Bundle::load(&files).unwrap_err().problems;
    assert!(
        problems.iter().any(|p| p.file == "actions.toml"
            && p.line.is_some()
            && p.message.contains("secret parameter `pid` must be of type `string`")),
        "{problems:?}"
    );
}

/// `host.isolate`'s `reason` made a secret (a string), and a hand-written rule naming it.
const SECRET_REASON: (&str, &str, &str) = (
    "actions.toml",
    r#"params = [{ name = "reason", type = "string", required = true }]"#,
    r#"params = [{ name = "reason", type = "string", required = true, secret = true }]"#,
);

/// The EDR responder may isolate any host on its own (a proposal widening level 3 to 4).
const ISOLATE_EVERYWHERE: (&str, &str, &str) = (
    "agents/edr-responder.toml",
    "action = \"host.isolate\"\nlevel = 3\nmax_criticality = \"tier2\"",
    "action = \"host.isolate\"\nlevel = 4",
);

// FINDING (fixed): with secrets strings only, the commitment passes the type check: a secret
// param does not hide a new autonomous action on a tier0, privileged host from the guard. (A
// request whose secret a hand-written rule names is listed as inexact: the core's attack27.)
#[tokio::test]
async fn a_secret_param_does_not_hide_a_new_tier0_execution() {
    let dir = bundle_dir(&[SECRET_REASON]);
    let h = crate::harness_from(Some(dir.path()));
    open_task(&h, "INC-K2").await;
    let a = act(
        &h,
        EDR,
        json!({"task": "INC-K2", "action": "host.isolate", "target": "host:pam-vault-01",
        "params": {"reason": "ransomware"}, "confidence": 0.99, "rationale": "ransomware",
        "evidence": [{"kind": "edr", "ref": "d:1"}]}),
    )
    .await;
    assert_eq!(outcome(&a), Outcome::RequireApproval, "{a}");
    let in_force = Bundle::load(&read_bundle(dir.path())).unwrap();
    let own = sim(&h, &in_force);
    assert_eq!((own.same_bundle, own.same_bundle_differing, own.changed), (1, 0, 0), "{:?}", own.changes);
    assert_eq!(own.inexact, 0, "no rule names the secret: {:?}", own.inexact_listed);
    let proposed = bundle_at(dir.path(), &[ISOLATE_EVERYWHERE]);

    // What the proposal would really decide: the logged facts, the request as the agent sent it.
    let e = decided(&h, a["id"].as_str().unwrap());
    let facts: RecordedFacts = serde_json::from_value(e.event.data["facts"].clone()).unwrap();
    let req: ActionRequest = serde_json::from_value(json!({"task": "INC-K2", "action": "host.isolate",
        "target": "host:pam-vault-01", "params": {"reason": "ransomware"}, "confidence": 0.99,
        "rationale": "ransomware", "evidence": [{"kind": "edr", "ref": "d:1"}]}))
    .unwrap();
    let input = DecisionInput {
        agent: EDR,
        agent_status: facts.agent_status,
        request: &req,
        task: facts.task.as_ref(),
        budget: facts.budget,
        halts: &facts.halts,
        now: facts.now,
        shadow: facts.shadow,
        via: facts.via.as_deref(),
    };
    assert_eq!(
        decide(&proposed, &input).outcome,
        Outcome::Execute,
        "the proposal would isolate the PAM vault on its own"
    );

    let s = sim(&h, &proposed);
    assert!(
        Guard::NewTier0Execute.broken(&s) >= 1,
        "a new autonomous isolation of a tier0 PAM vault passes `--fail-on new-tier0-execute`: changes {:?}",
        s.changes
    );
}

// FINDING (fixed): the log records params as RFC 8785 canonical JSON, where `4242.0` is written
// `4242`. The server decided the request it was sent — `pid` a float, which the catalog's
// `integer` refuses (`invalid_request`, deny) — but the replay reads an integer and decides it
// on its merits: under the very bundle that decided it, a logged `deny` replays as
// `require_approval`, and `simulate` warns that the log "does not hold what they were decided
// on" (crates/core/src/catalog.rs `ParamType::accepts` vs crates/core/src/audit/canonical.rs).
#[tokio::test]
async fn an_integral_float_param_is_replayed_exactly() {
    let h = crate::harness();
    open_task(&h, "INC-F1").await;
    let a = act(
        &h,
        EDR,
        json!({"task": "INC-F1", "action": "process.kill", "target": "host:web-01",
        "params": {"pid": 4242.0}, "confidence": 0.99, "rationale": "miner",
        "evidence": [{"kind": "edr", "ref": "f:1"}]}),
    )
    .await;
    let logged = outcome(&a);
    let s = sim(&h, &Bundle::load(&read_bundle(&example_dir())).unwrap());
    assert_eq!(s.same_bundle, 1);
    assert_eq!(
        (s.same_bundle_differing, s.changed),
        (0, 0),
        "logged {logged} ({}), replayed otherwise: {:?}",
        a["decision"]["caps"],
        s.changes
    );
}

// FINDING (fixed): `new-tier0-execute` judges "tier0" by the *proposed* inventory (or a `tier0_target`
// cap the logged decision happens to carry, which only a level 3 grant adds). A proposal that
// demotes the asset in `assets.toml` and so lets the level 3 grant act on it makes a request
// on a PAM vault — tier0 and privileged in the bundle in force — newly execute, and
// neither tier0 nor privileged guard breaks (crates/core/src/simulate.rs, `Changed.tier0`).
#[tokio::test]
async fn demoting_the_asset_in_the_same_proposal_does_not_pass_the_tier0_guard() {
    let h = crate::harness();
    open_task(&h, "INC-T1").await;
    let a = act(
        &h,
        EDR,
        json!({"task": "INC-T1", "action": "host.isolate", "target": "host:pam-vault-01",
        "params": {"reason": "beacon"}, "confidence": 0.99, "rationale": "c2",
        "evidence": [{"kind": "edr", "ref": "t:1"}]}),
    )
    .await;
    assert_eq!(outcome(&a), Outcome::RequireApproval, "{a}");
    let proposed = bundle_at(
        &example_dir(),
        &[(
            "assets.toml",
            "id = \"pam-vault-01\"\ncriticality = \"tier0\"\nenvironment = \"prod\"\nowner = \"team:iam\"\nprivileged = true",
            "id = \"pam-vault-01\"\ncriticality = \"tier2\"\nenvironment = \"prod\"\nowner = \"team:iam\"\nprivileged = false",
        )],
    );
    let s = sim(&h, &proposed);
    assert_eq!(s.changed, 1, "{:?}", s.changes);
    assert_eq!(s.changes[0].after, Outcome::Execute);
    assert!(
        Guard::NewTier0Execute.broken(&s) >= 1 || Guard::NewPrivilegedExecute.broken(&s) >= 1,
        "a new autonomous isolation of the tier0, privileged PAM vault breaks no guard: {:?}",
        s.changes
    );
}

// HELD: a secret param's value, and the agent's token, appear nowhere in the log — not in
// `decision.made`'s facts, not in the OCSF events the SIEM stream and the export send.
#[tokio::test]
async fn facts_and_ocsf_hold_no_secret() {
    let dir = bundle_dir(&[(
        "actions.toml",
        r#"{ name = "process_name", type = "string" },"#,
        r#"{ name = "process_name", type = "string", secret = true },"#,
    )]);
    let h = crate::harness_from(Some(dir.path()));
    open_task(&h, "INC-L1").await;
    let secret = "zz-S3CRET-process-name-91f";
    let svid = h.svid(EDR);
    for (target, inputs) in
        [("host:web-01", json!([])), ("host:ghost-77", json!([{"label": "untrusted", "source": "x"}]))]
    {
        let body = json!({"task": "INC-L1", "action": "process.kill", "target": target,
            "params": {"pid": 7, "process_name": secret}, "confidence": 0.99, "rationale": "r",
            "evidence": [{"kind": "edr", "ref": "l:1"}], "inputs": inputs});
        let (status, a) = h.call("POST", "/v1/actions", Some(&svid), Some(body)).await;
        assert!(status.is_success(), "{a}");
    }
    let store = h.app.ledger().store();
    let n = store.size().unwrap();
    let product = warden_core::audit::ocsf::Product { version: "t".into() };
    let mut facts = 0;
    for s in store.entries(0, n as usize).unwrap() {
        let text = String::from_utf8_lossy(&s.bytes).to_string();
        assert!(!text.contains(secret) && !text.contains(&svid), "entry {} leaks: {text}", s.seq);
        let e = Entry::parse(&s.bytes).unwrap();
        facts += usize::from(e.event.data.get("facts").is_some());
        if let Some(ev) = warden_core::audit::ocsf::event(&e, &product) {
            let t = ev.to_string();
            assert!(!t.contains(secret) && !t.contains(&svid), "OCSF of {} leaks: {t}", s.seq);
        }
    }
    assert_eq!(facts, 2);
}

// HELD: what an agent names — an action id of its own making, its rationale — is text in the
// standalone HTML report, never markup.
#[tokio::test]
async fn hostile_names_are_inert_in_the_autonomy_report() {
    let h = crate::harness();
    open_task(&h, "INC-X1").await;
    let hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>";
    let body = json!({"task": "INC-X1", "action": hostile, "target": "host:web-01", "params": {},
        "confidence": 0.9, "rationale": hostile, "evidence": [{"kind": "x", "ref": hostile}]});
    let (status, _) = h.call("POST", "/v1/actions", Some(&h.svid(EDR)), Some(body)).await;
    let r = warden_core::report::autonomy(
        crate::simulate::entries(&h),
        Window::default(),
        &Filter::default(),
        &Rules::default(),
    );
    let diffs = warden_core::report::diffs(&r, h.app.bundle().unwrap().files());
    let html = warden_server::reports::autonomy_html(&r, &diffs, "all").unwrap();
    assert!(!html.contains("<script>alert") && !html.contains("<img src=x"), "{status}: markup in the report");
    if status.is_success() {
        assert!(html.contains("&lt;script&gt;") || html.contains("&#60;script"), "the hostile row is shown as text");
    }
}
