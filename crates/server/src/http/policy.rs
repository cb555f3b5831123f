//! `POST /v1/policy/reload`: re-read the policy directory now (admins only).

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use crate::auth::HumanCaller;
use crate::error::ApiResult;
use crate::policy_dir::{Reload, reload as reload_dir};
use crate::state::{App, blocking};

/// What a reload did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReloadAnswer {
    /// The bundle in force now.
    pub bundle_version: String,
    /// Whether a new version was loaded.
    pub changed: bool,
}

/// Reload the policy directory now (role `admin`); a bundle that does not validate is refused
/// and the one in force stays.
#[utoipa::path(post, path = "/v1/policy/reload", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, body = ReloadAnswer),
        (status = 422, description = "`no_policy_dir`, `policy_unreadable`, `invalid_policy` (problems in `details`)",
            body = crate::error::ErrorBody),
    ))]
pub async fn reload(State(app): State<App>, human: HumanCaller) -> ApiResult<Json<ReloadAnswer>> {
    crate::authority::check_human(&app, &human.0, crate::authority::Power::Admin("reloading the policy"))?;
    let actor = warden_core::audit::entry::Actor::user(&human.0.id);
    let outcome = blocking(&app, move |s| reload_dir(s, actor)).await?;
    Ok(Json(match outcome {
        Reload::Unchanged(v) | Reload::Replaced(v) => ReloadAnswer { bundle_version: v, changed: false },
        Reload::Loaded(v) => ReloadAnswer { bundle_version: v, changed: true },
    }))
}
