//! `POST /v1/policy/reload`: re-read the policy directory now (admins only).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::auth::HumanCaller;
use crate::error::ApiResult;
use crate::policy_dir::{Reload, reload as reload_dir};
use crate::state::{App, blocking};

pub async fn reload(State(app): State<App>, human: HumanCaller) -> ApiResult<Json<Value>> {
    human.require(&["admin"])?;
    let actor = warden_core::audit::entry::Actor::user(&human.0.id);
    let outcome = blocking(&app, move |s| reload_dir(s, actor)).await?;
    Ok(Json(match outcome {
        Reload::Unchanged(v) => json!({"bundle_version": v, "changed": false}),
        Reload::Loaded(v) => json!({"bundle_version": v, "changed": true}),
    }))
}
