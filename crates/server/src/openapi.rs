//! The OpenAPI 3.1 document served at `/openapi.json`.
//!
//! Operations are described where they are implemented (`#[utoipa::path]` on each handler,
//! registered in [`crate::http`]). What every operation shares is added here once, from what
//! the router really does: the admission limit and the timeout answer every route, the
//! authentication extractors every secured one, the JSON body extractor every one with a body.

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr};
use utoipa::{Modify, OpenApi as DeriveOpenApi};

use crate::error::ErrorBody;

#[derive(Debug, DeriveOpenApi)]
#[openapi(
    info(
        title = "Warden",
        description = "The control plane for AI agents in the SOC: workload identity, policy \
            decisions with autonomy levels, and a tamper-evident audit log. Errors are \
            `{\"error\": {\"code\", \"message\", \"details\"}}` with stable codes.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody)),
    modifiers(&Shared),
    tags(
        (name = "ops", description = "health, readiness, metrics, keys"),
        (name = "tasks", description = "incidents and missions agents work within"),
        (name = "actions", description = "action requests and their decisions"),
        (name = "approvals", description = "the approval inbox: humans decide what policy sends them"),
        (name = "leases", description = "just-in-time credentials of executions"),
        (name = "halts", description = "the emergency stop"),
        (name = "audit", description = "the tamper-evident log: checkpoints, entries, proofs"),
        (name = "admin", description = "agents, users and policy (role `admin`)"),
        (name = "integrations", description = "callbacks from chat tools: Slack's approve / reject buttons"),
    )
)]
pub struct ApiDoc;

struct Shared;

impl Modify for Shared {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT-SVID (agents), OIDC JWT or `wdn_…` API token (humans)")
                    .description(Some(
                        "Agents present a JWT-SVID from the local issuer or a configured one; humans an \
                         API token from `warden user add` or an OIDC JWT from a configured issuer.",
                    ))
                    .build(),
            ),
        );
        for (name, description) in [
            ("Error", "an error; `error.code` is stable"),
            ("Unauthenticated", "no, malformed, unknown, expired or otherwise invalid credential"),
            ("Forbidden", "the caller may not do this (kind of caller, role, suspended or halted agent)"),
            ("RateLimited", "the agent exceeds its request rate"),
            ("Unavailable", "fail closed: overloaded, store or policy unavailable; nothing was done"),
        ] {
            components.responses.insert(name.to_string(), RefOr::T(error_response(description)));
        }
    }
}

fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", Content::new(Some(Ref::from_schema_name("ErrorBody"))))
        .build()
}

fn add(op: &mut Operation, status: &str, response: RefOr<Response>) {
    op.responses.responses.entry(status.to_string()).or_insert(response);
}

fn shared(name: &str) -> RefOr<Response> {
    RefOr::Ref(Ref::from_response_name(name))
}

fn local(description: &str) -> RefOr<Response> {
    RefOr::T(error_response(description))
}

/// OpenAPI links: where an answer's ids lead (`from` operation and status → `to` operation,
/// its parameter from a runtime expression). Clients and schemathesis's stateful phase follow
/// them: open a task, then read and close it; register an agent, then suspend it, …
const LINKS: &[(&str, &str, &str, &str, &str, &str, &str)] = &[
    ("post", "/v1/tasks", "201", "get", "/v1/tasks/{id}", "id", "$response.body#/id"),
    ("post", "/v1/tasks", "201", "post", "/v1/tasks/{id}/close", "id", "$response.body#/id"),
    ("post", "/v1/tasks", "201", "post", "/v1/tasks/{id}/taint/clear", "id", "$response.body#/id"),
    ("post", "/v1/actions", "200", "get", "/v1/actions/{id}", "id", "$response.body#/id"),
    ("post", "/v1/actions", "200", "get", "/v1/explain/{id}", "id", "$response.body#/id"),
    ("post", "/v1/actions", "200", "post", "/v1/actions/{id}/rollback", "id", "$response.body#/id"),
    ("post", "/v1/actions", "200", "get", "/v1/leases/{id}", "id", "$response.body#/lease/id"),
    ("get", "/v1/actions", "200", "get", "/v1/actions/{id}", "id", "$response.body#/0/id"),
    ("get", "/v1/actions", "200", "get", "/v1/explain/{id}", "id", "$response.body#/0/id"),
    ("get", "/v1/approvals", "200", "get", "/v1/approvals/{id}", "id", "$response.body#/0/id"),
    ("get", "/v1/approvals", "200", "post", "/v1/approvals/{id}/approve", "id", "$response.body#/0/id"),
    ("get", "/v1/approvals", "200", "post", "/v1/approvals/{id}/reject", "id", "$response.body#/0/id"),
    ("post", "/v1/agents", "201", "get", "/v1/agents/{id}", "id", "$response.body#/id"),
    ("post", "/v1/agents", "201", "post", "/v1/agents/{id}/suspend", "id", "$response.body#/id"),
    ("post", "/v1/agents", "201", "post", "/v1/agents/{id}/resume", "id", "$response.body#/id"),
    ("post", "/v1/agents", "201", "post", "/v1/agents/{id}/token", "id", "$response.body#/id"),
    ("post", "/v1/users", "201", "post", "/v1/users/{id}/disable", "id", "$response.body#/id"),
    ("post", "/v1/users", "201", "post", "/v1/users/{id}/enable", "id", "$response.body#/id"),
    ("get", "/v1/leases/{id}", "200", "post", "/v1/leases/{id}/revoke", "id", "$response.body#/id"),
    ("post", "/v1/leases/{id}/revoke", "200", "get", "/v1/leases/{id}", "id", "$response.body#/id"),
];

/// `#/paths/…/method` for an operation (JSON pointer: `/` is written `~1`).
fn operation_ref(method: &str, path: &str) -> String {
    format!("#/paths/{}/{method}", path.replace('~', "~0").replace('/', "~1"))
}

fn add_links(doc: &mut OpenApi) {
    use utoipa::openapi::link::LinkBuilder;
    for (method, path, status, to_method, to_path, param, expression) in LINKS {
        let Some(item) = doc.paths.paths.get_mut(*path) else { panic!("a link from `{path}`, which is not served") };
        let op = match *method {
            "get" => item.get.as_mut(),
            _ => item.post.as_mut(),
        };
        let Some(op) = op else { panic!("a link from `{method} {path}`, which is not served") };
        let Some(RefOr::T(response)) = op.responses.responses.get_mut(*status) else {
            panic!("a link from `{method} {path}` {status}, which is not documented")
        };
        let link =
            LinkBuilder::new().operation_ref(operation_ref(to_method, to_path)).parameter(*param, *expression).build();
        let name = format!("{}{}", to_method, to_path.replace(['/', '{', '}'], "_"));
        response.links.insert(name, RefOr::T(link));
    }
}

/// The document as served. utoipa 5.5 writes a Link's fields in snake_case (`operation_ref`);
/// OpenAPI names them in camelCase, so they are renamed here.
pub fn to_json(doc: &OpenApi) -> serde_json::Value {
    let mut json = serde_json::to_value(doc).expect("the document serializes");
    param_values(&mut json);
    let Some(paths) = json.get_mut("paths").and_then(|p| p.as_object_mut()) else { return json };
    for item in paths.values_mut().filter_map(|i| i.as_object_mut()) {
        for op in item.values_mut() {
            let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut()) else { continue };
            for response in responses.values_mut() {
                let Some(links) = response.get_mut("links").and_then(|l| l.as_object_mut()) else { continue };
                for link in links.values_mut().filter_map(|l| l.as_object_mut()) {
                    for (from, to) in [
                        ("operation_ref", "operationRef"),
                        ("operation_id", "operationId"),
                        ("request_body", "requestBody"),
                    ] {
                        if let Some(v) = link.remove(from) {
                            link.insert(to.into(), v);
                        }
                    }
                }
            }
        }
    }
    json
}

/// States what a request's `params` may hold, which utoipa cannot: any JSON value, but an
/// integral number only within ±(2^53−1) — what `ActionRequest::validate` refuses beyond it
/// (it could not be digested and logged exactly). Recursive, as params nest.
fn param_values(json: &mut serde_json::Value) {
    let max = warden_core::request::MAX_EXACT_INTEGER;
    let value = serde_json::json!({"$ref": "#/components/schemas/ParamValue"});
    let Some(schemas) = json.pointer_mut("/components/schemas").and_then(|s| s.as_object_mut()) else { return };
    for schema in schemas.values_mut() {
        if let Some(params) = schema.pointer_mut("/properties/params").and_then(|p| p.as_object_mut())
            && params.get("type").and_then(|t| t.as_str()) == Some("object")
            && !params.contains_key("properties")
        {
            params.insert("additionalProperties".into(), value.clone());
        }
    }
    schemas.insert(
        "ParamValue".into(),
        serde_json::json!({
            "description": "A param's value: any JSON value, but an integral number only within ±(2^53−1).",
            "anyOf": [
                {"type": ["string", "boolean", "null"]},
                {"type": "integer", "minimum": -(max as i64), "maximum": max},
                {"type": "number", "not": {"type": "integer"}},
                {"type": "array", "items": value},
                {"type": "object", "additionalProperties": value}
            ]
        }),
    );
}

/// Adds to every operation the answers the router's shared layers can give.
pub fn complete(mut doc: OpenApi) -> OpenApi {
    add_links(&mut doc);
    for item in doc.paths.paths.values_mut() {
        let ops = [&mut item.get, &mut item.post, &mut item.put, &mut item.delete, &mut item.patch];
        for op in ops.into_iter().flatten() {
            add(op, "503", shared("Unavailable"));
            add(op, "408", RefOr::T(ResponseBuilder::new().description("the request timed out").build()));
            if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                add(op, "401", shared("Unauthenticated"));
                add(op, "403", shared("Forbidden"));
                add(op, "429", shared("RateLimited"));
            }
            if op.request_body.is_some() {
                add(op, "400", local("malformed JSON or a body that does not fit the schema"));
                add(op, "413", local("the body is larger than the limit"));
                add(op, "415", local("the body is not `application/json`"));
            }
            let params = op.parameters.as_deref().unwrap_or_default();
            if params.iter().any(|p| matches!(p.parameter_in, ParameterIn::Query | ParameterIn::Path)) {
                add(op, "400", local("a malformed query or path parameter"));
            }
        }
    }
    doc
}
