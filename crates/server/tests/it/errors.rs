//! The one table of error codes (`enum Code`) against what documents it: docs/api.md and the
//! OpenAPI document's responses.

use std::path::PathBuf;

use serde_json::Value;
use warden_server::Code;

const START: &str = "<!-- error-codes:start -->\n";
const END: &str = "<!-- error-codes:end -->";

fn api_md() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/api.md")
}

/// docs/api.md shows exactly the table the enum renders. `WARDEN_BLESS=1` rewrites it.
#[test]
fn error_table_in_the_docs_is_the_enum() {
    let path = api_md();
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find(START).expect("docs/api.md has the error-codes:start marker") + START.len();
    let end = text[start..].find(END).expect("docs/api.md has the error-codes:end marker") + start;
    let want = Code::markdown_table();
    if text[start..end] != want && std::env::var_os("WARDEN_BLESS").is_some() {
        std::fs::write(&path, format!("{}{want}{}", &text[..start], &text[end..])).unwrap();
        return;
    }
    assert!(
        text[start..end] == want,
        "docs/api.md's error table differs from `enum Code`; run with WARDEN_BLESS=1 to rewrite it:\n{want}"
    );
}

/// Every code a response description names (in backticks) is in the table, under its status.
#[test]
fn openapi_responses_name_codes_under_their_status() {
    let doc = serde_json::to_value(warden_server::openapi_document()).unwrap();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Some(responses) = op["responses"].as_object() else { continue };
            for (status, response) in responses {
                let Some(description) = response["description"].as_str() else { continue };
                for (i, word) in description.split('`').enumerate() {
                    let looks_like_code =
                        i % 2 == 1 && word.contains('_') && word.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
                    if !looks_like_code {
                        continue;
                    }
                    let code = Code::parse(word)
                        .unwrap_or_else(|| panic!("{method} {path} {status} names `{word}`, which is not a code"));
                    assert_eq!(code.status_u16().to_string(), *status, "{method} {path}: `{word}` under {status}");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 30, "only {checked} codes named in responses");
}

/// The OpenAPI document lists the codes as the `ErrorCode` enum, in the table's order.
#[test]
fn openapi_lists_every_code() {
    let doc = serde_json::to_value(warden_server::openapi_document()).unwrap();
    let listed: Vec<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("an ErrorCode enum")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let all: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(listed, all);
    let code_ref = &doc["components"]["schemas"]["ErrorDetail"]["properties"]["code"];
    assert_eq!(code_ref["$ref"], Value::from("#/components/schemas/ErrorCode"));
}

/// The constraints the document states are the server's own rules (`warden_server::input`),
/// including the one written as a literal in `warden-core` (the target's pattern).
#[test]
fn openapi_constraints_are_the_servers_rules() {
    use warden_server::input;
    let doc = serde_json::to_value(warden_server::openapi_document()).unwrap();
    let schemas = &doc["components"]["schemas"];
    let prop = |schema: &str, name: &str| schemas[schema]["properties"][name].clone();
    assert_eq!(prop("ActionRequest", "target")["pattern"], input::target_pattern());
    assert_eq!(prop("ActionRequest", "inputs")["maxItems"], warden_core::request::MAX_INPUTS);
    assert_eq!(prop("Input", "source")["pattern"], warden_core::request::input_source_pattern());
    assert_eq!(
        (prop("Input", "source")["minLength"].as_u64(), prop("Input", "source")["maxLength"].as_u64()),
        (Some(1), Some(512))
    );
    assert_eq!(prop("OpenTask", "id")["pattern"], input::TASK_ID);
    assert_eq!(prop("OpenTask", "title")["pattern"], input::NOT_BLANK);
    assert_eq!(prop("Trigger", "source")["pattern"], input::NOT_BLANK);
    assert_eq!(prop("NewAgent", "id")["pattern"], input::SPIFFE_ID);
    assert_eq!(prop("NewAgent", "owner")["pattern"], input::NOT_BLANK);
    assert_eq!(prop("NewUser", "id")["pattern"], input::USER_NAME);
    assert_eq!(prop("NewUser", "roles")["items"]["pattern"], input::ROLE);
    assert_eq!(prop("NewUser", "roles")["minItems"], 1);
    assert_eq!(prop("TokenRequest", "ttl")["pattern"], Value::from(input::duration_pattern(1, input::MAX_TTL_SECS)));
    assert_eq!(
        prop("ApproveBody", "lease_ttl")["pattern"],
        Value::from(input::duration_pattern(1, input::MAX_TTL_SECS))
    );
    assert_eq!(prop("RejectBody", "reason")["pattern"], input::NOT_BLANK);
    assert_eq!(prop("ResetBody", "reason")["pattern"], input::NOT_BLANK);
    for body in ["HaltBody", "ResumeBody"] {
        let variants = schemas[body]["oneOf"].as_array().unwrap_or_else(|| panic!("{body} is oneOf"));
        assert_eq!(variants.len(), 2);
        assert_eq!(variants[1]["properties"]["id"]["pattern"], input::NOT_BLANK);
        assert_eq!(variants[0]["properties"]["reason"]["pattern"], input::NOT_BLANK);
    }
    // Optional fields also take `null`, as serde reads it.
    assert_eq!(prop("ApproveBody", "lease_ttl")["type"], serde_json::json!(["string", "null"]));
    let param = |path: &str, name: &str| {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{path} has `{name}`"))["schema"]
            .clone()
    };
    assert_eq!(param("/v1/actions/{id}", "wait")["pattern"], Value::from(input::duration_pattern(0, 60)));
    assert_eq!(
        param("/v1/actions", "since")["pattern"],
        Value::from(input::duration_pattern(0, input::MAX_SINCE_SECS))
    );
    assert_eq!(
        (param("/v1/actions", "limit")["minimum"].clone(), param("/v1/actions", "limit")["maximum"].clone()),
        (1.into(), 1000.into())
    );
    assert_eq!(param("/v1/audit/proof/consistency", "old")["minimum"], 1);
    assert_eq!(param("/v1/audit/entries", "since")["maximum"], input::MAX_INT);
}
