//! Action request JSON: any body either fails to parse or is decided (against the example
//! bundle) without panicking, and a decision never executes below the autonomous threshold.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use warden_core::request::{ActionRequest, AgentStatus, BudgetUsage, DecisionInput};
use warden_core::{Bundle, SourceFile, decide};

fn bundle() -> &'static Bundle {
    static B: OnceLock<Bundle> = OnceLock::new();
    B.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy");
        let files: Vec<SourceFile> = warden_server::policy_dir::read(&root).expect("the example bundle");
        Bundle::load(&files).expect("the example bundle loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<ActionRequest>(data) else { return };
    let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
    for agent in
        ["spiffe://acme.example/soc/edr-responder", "spiffe://acme.example/soc/enrichment-bot", "spiffe://x/unknown"]
    {
        let input = DecisionInput {
            agent,
            agent_status: AgentStatus::Active,
            request: &req,
            task: None,
            budget: BudgetUsage::default(),
            halts: &[],
            now,
            shadow: false,
        };
        let d = decide(bundle(), &input);
        assert!(d.effective_level <= d.granted_level, "effective above granted: {d:?}");
    }
});
