//! `warden explain`: the accountability chain of one action, from the trigger to the rollback,
//! with who should have intervened, and an inclusion proof for every audit entry it cites,
//! checked against the latest signed checkpoint.

use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use warden_core::audit::entry::Entry;
use warden_core::audit::note::Checkpoint;
use warden_core::audit::proof::InclusionProof;
use warden_store::Table;

use crate::approvals;
use crate::error::{ApiError, Code};
use crate::execution::{self, Execution};
use crate::model::{ActionRecord, Agent, DecisionRecord, Model, Task};
use crate::state::AppState;

/// One audit entry the explanation rests on, with its proof.
#[derive(Debug, Serialize, ToSchema)]
pub struct Cited {
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub time: String,
    pub actor: String,
    #[schema(value_type = Object)]
    pub proof: InclusionProof,
    /// The proof leads from the entry to the root of the signed checkpoint.
    pub verified: bool,
}

/// The accountability chain of one action.
#[derive(Debug, Serialize, ToSchema)]
pub struct Explanation {
    /// The request: id, state, action class, target, when.
    #[schema(value_type = Object)]
    pub action: Value,
    /// What started it: the task and its trigger, the taint the task carries now (each mark:
    /// label, source, the request it came with, who said so), and its history now (action
    /// class → executions that succeeded in it).
    #[schema(value_type = Object)]
    pub trigger: Value,
    /// Who asked: SPIFFE ID, owner, purpose.
    #[schema(value_type = Object)]
    pub agent: Value,
    /// What it asked, and why.
    #[schema(value_type = Object)]
    pub request: Value,
    /// The decision: bundle, policies with owners and files, levels, caps.
    #[schema(value_type = Object)]
    pub decision: Value,
    #[schema(value_type = Option<Object>)]
    pub approval: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub lease: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub execution: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub rollback: Option<Value>,
    /// Who should have intervened: the workflow's owner, the policies' owners, the approver
    /// roles, the incident commander, whom the guardrail notifies.
    #[schema(value_type = Object)]
    pub escalation: Value,
    /// The signed checkpoint the proofs are checked against.
    #[schema(value_type = Object)]
    pub checkpoint: Value,
    /// Every audit entry about this action, each with its inclusion proof.
    pub entries: Vec<Cited>,
}

fn missing(id: &str) -> ApiError {
    ApiError::new(Code::UnknownAction, format!("no action request `{id}`"))
}

/// Explains request `id` (on a server).
pub fn explain(s: &AppState, id: &str) -> Result<Explanation, ApiError> {
    explain_in(s.ledger().store().as_ref(), s.bundle()?.as_ref(), id)
}

/// Explains request `id` from a store and the bundle that holds the escalation rules (for
/// `warden explain --data` without a server).
pub fn explain_in(
    store: &dyn warden_store::Store,
    bundle: &warden_core::Bundle,
    id: &str,
) -> Result<Explanation, ApiError> {
    let a = ActionRecord::from_record(&store.get(Table::Requests, id)?.ok_or_else(|| missing(id))?)?;
    let d = DecisionRecord::from_record(&store.get(Table::Decisions, id)?.ok_or_else(|| missing(id))?)?;
    let mut task = store.get(Table::Tasks, &a.task)?.map(|r| Task::from_record(&r)).transpose()?;
    if let Some(t) = task.as_mut() {
        t.history = crate::facts::task_history(store, &t.id, None)?.0;
    }
    let agent = store.get(Table::Agents, &a.agent)?.map(|r| Agent::from_record(&r)).transpose()?;
    let class = bundle.catalog().get(&a.action);
    let guardrail = bundle.agent(&a.agent);

    let approval = match &a.approval {
        Some(aid) => approvals::load(store, aid)?.map(|v| {
            let x = v.approval;
            json!({"id": x.id, "state": x.state, "roles": x.roles, "quorum": x.quorum,
                "separation_of_duties": x.separation_of_duties, "votes": x.votes, "decided_by": x.decided_by,
                "decided_at": x.decided_at, "reason": x.reason, "expires_at": x.expires_at,
                "narrowed_lease_ttl_secs": x.narrowed_lease_ttl_secs, "folded_requests": x.requests,
                "digest": x.digest, "params": x.params})
        }),
        None => None,
    };
    // A request folded into another's approval shares that request's one execution.
    let executed_as = a.folded_into.as_deref().unwrap_or(id);
    let exec: Option<Execution> =
        store.get(Table::Executions, executed_as)?.map(|r| Execution::from_record(&r)).transpose()?;
    let lease = match &exec {
        Some(e) => execution::lease(store, &e.lease)?.map(|(l, _)| {
            json!({"id": l.id, "scope": l.scope, "digest": l.digest, "issued_at": l.issued_at, "expires_at": l.expires_at,
                "max_uses": l.max_uses, "state": l.state, "revoked_at": l.revoked_at, "revoked_reason": l.revoked_reason})
        }),
        None => None,
    };
    let rollback = exec.as_ref().and_then(|e| e.rollback.as_ref()).map(|r| json!(r));
    let execution = exec.as_ref().map(|e| {
        json!({"state": e.state, "connector": class.map(|c| c.tool.clone()), "tool_status": e.tool_status,
            "answer": e.answer, "error": e.error, "captured": e.captured, "started_at": e.started_at,
            "finished_at": e.finished_at, "compensation": e.compensation})
    });
    let policy_owners: Vec<&str> = d.decision.policies.iter().map(|p| p.owner.as_str()).collect();
    let escalation = json!({
        "workflow_owner": class.map(|c| c.owner.clone()),
        "policy_owners": policy_owners,
        "agent_owner": agent.as_ref().map(|g| g.owner.clone()),
        "approver_roles": guardrail.map(|g| g.escalation.approver_roles.clone()),
        "step_up_roles": guardrail.map(|g| g.escalation.step_up_roles.clone()),
        "incident_commander": guardrail.map(|g| g.escalation.incident_commander.clone()),
        "notify": guardrail.map(|g| g.escalation.notify.clone()),
    });

    // The log's own word: every entry about this request (or its approval), proven against the
    // latest checkpoint, opened with the key recorded in entry 0.
    let verifier = warden_store::data_dir::recorded_verifier(store)?
        .ok_or_else(|| ApiError::new(Code::StoreUnavailable, "the log records no verifier key"))?;
    let (size, note) = store
        .latest_checkpoint()?
        .ok_or_else(|| ApiError::new(Code::StoreUnavailable, "the log has no checkpoint yet"))?;
    let cp = Checkpoint::open(&note, &verifier)
        .map_err(|e| ApiError::new(Code::AuditUnverifiable, format!("the latest checkpoint does not verify: {e}")))?;
    let approval_id = a.approval.clone();
    let mut entries = Vec::new();
    let mut from = 0;
    while from < size {
        let page = store.entries(from, 4096)?;
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        for e in page {
            if e.seq >= size {
                break;
            }
            let Ok(entry) = Entry::parse(&e.bytes) else { continue };
            let about_request = entry.event.request.as_deref() == Some(id);
            let about_approval = approval_id
                .as_deref()
                .is_some_and(|aid| entry.event.data.get("approval").and_then(Value::as_str) == Some(aid));
            if !(about_request || about_approval) {
                continue;
            }
            let proof = warden_store::proofs::inclusion(store, e.seq, Some(size))
                .map_err(|e| ApiError::new(Code::AuditUnverifiable, e.to_string()))?;
            let verified = proof.leaf_hash == e.leaf_hash && proof.verify(&cp.root);
            entries.push(Cited {
                seq: e.seq,
                kind: entry.event.kind.as_str().to_string(),
                time: entry.time.clone(),
                actor: format!(
                    "{}:{}",
                    serde_json::to_value(entry.event.actor.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    entry.event.actor.id
                ),
                proof,
                verified,
            });
        }
    }
    Ok(Explanation {
        action: json!({"id": a.id, "state": a.state, "action": a.action, "target": a.target, "created_at": a.created_at,
            "description": class.map(|c| c.description.clone()), "reversible": class.map(|c| c.reversible)}),
        trigger: match &task {
            Some(t) => {
                json!({"task": t.id, "title": t.title, "source": t.trigger.source, "alert_id": t.trigger.alert_id,
                "severity": t.trigger.severity, "summary": t.trigger.summary, "opened_by": t.opened_by, "state": t.state,
                "verified": t.verified, "taint": t.taint, "history": t.history})
            }
            None => json!({"task": a.task}),
        },
        agent: json!({"id": a.agent, "owner": agent.as_ref().map(|g| g.owner.clone()),
            "purpose": agent.as_ref().map(|g| g.purpose.clone()), "status": agent.as_ref().map(|g| g.status)}),
        request: json!({"confidence": a.confidence, "rationale": a.rationale, "evidence": a.evidence,
            "params": bundle.shown_params(&a.action, &a.params),
            "idempotency_key": a.idempotency_key, "digest": a.digest, "folded_into": a.folded_into}),
        decision: json!({"bundle_version": d.decision.bundle_version, "outcome": d.decision.outcome,
            "granted_level": d.decision.granted_level, "effective_level": d.decision.effective_level,
            "band": d.decision.band, "caps": d.decision.caps, "policies": d.decision.policies,
            "review": d.decision.review, "decided_at": d.decided_at}),
        approval,
        lease,
        execution,
        rollback,
        escalation,
        checkpoint: json!({"size": cp.size, "origin": cp.origin, "root": base64_root(&cp.root), "verifier": verifier.name()}),
        entries,
    })
}

fn base64_root(root: &[u8; 32]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(root)
}
