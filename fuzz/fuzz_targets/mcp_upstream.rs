//! Mapped upstream MCP arguments (`mcp.toml`): any arguments either are refused or make a
//! request whose target and params, rebuilt into the upstream's arguments the way execution
//! rebuilds them, map back to the very same target and params — what was decided is what
//! runs, on the object that was decided.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use warden_core::{Bundle, SourceFile};
use warden_server::mcp::tools::{UpstreamCall, upstream_request_from};

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
    let Ok(args) = serde_json::from_slice::<Map<String, Value>>(json) else { return };
    let tools = bundle().mcp().tools();
    let mapped = &tools[usize::from(*pick) % tools.len()];
    let call = UpstreamCall::Mapped(mapped.clone());
    let Ok((req, via)) = upstream_request_from(bundle(), &call, Some(args)) else { return };
    assert_eq!(req.action, mapped.action);
    assert_eq!(via.as_deref(), Some(format!("{}/{}", mapped.upstream, mapped.tool).as_str()));
    assert!(req.validate().is_ok(), "{req:?}");
    let target = req.target.to_string();
    let id = target.split_once(':').map(|(_, id)| id).expect("KIND:ID");
    let rebuilt = mapped.arguments(id, &req.params, &Map::new());
    let (again, params) = mapped.request_parts(&rebuilt).expect("rebuilt arguments map again");
    assert_eq!(again, target, "the upstream would act on another object than the decided target");
    assert_eq!(params, req.params, "the upstream would get other params than those decided");
});
