//! MCP tool arguments into an action request (`tools/call` of a catalog action): any JSON
//! either is refused or makes a request that is the called action's, passes every check the
//! pipeline makes, and carries as params nothing but the action's own (no governance field
//! smuggled in as a param).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use warden_core::{Bundle, SourceFile};
use warden_server::mcp::tools::{RESERVED, request_from};

fn bundle() -> &'static Bundle {
    static B: OnceLock<Bundle> = OnceLock::new();
    B.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy");
        let files: Vec<SourceFile> = warden_server::policy_dir::read(&root).expect("the example bundle");
        Bundle::load(&files).expect("the example bundle loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((pick, json)) = data.split_first() else { return };
    let Ok(args) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(json) else { return };
    let actions: Vec<_> = bundle().catalog().iter().collect();
    let action = actions[usize::from(*pick) % actions.len()];
    let Ok(req) = request_from(action, Some(args)) else { return };
    assert_eq!(req.action, action.id, "a call makes a request for the called action");
    assert!(req.validate().is_ok(), "an accepted call is a valid request: {req:?}");
    assert!(action.check_params(&req.params).is_ok(), "and its params are the action's");
    for name in req.params.keys() {
        assert!(!RESERVED.contains(&name.as_str()), "governance field `{name}` taken as a param");
        assert!(action.params.iter().any(|p| &p.name == name), "`{name}` is not a param of `{}`", action.id);
    }
    assert!(!req.task.is_empty());
});
