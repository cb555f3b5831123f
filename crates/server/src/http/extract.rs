//! What every handler shares: extractors whose rejections are API errors with stable codes,
//! and how long a handler may wait before answering with where its work stands.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, Code};

/// The largest request body accepted (413 beyond).
pub const BODY_LIMIT: usize = 64 * 1024;

/// How long a handler whose work may outlast the request timeout waits before answering
/// with where the work stands: four fifths of the timeout.
pub fn answer_within(app: &crate::state::AppState) -> std::time::Duration {
    app.limits.timeout.mul_f64(0.8)
}

/// The `Link: <…>; rel="next"` header (RFC 8288) of a list page: the same query with `after`
/// set to the next page's cursor. No header on the last page.
pub fn next_link(path: &str, query: &[(&str, Option<String>)], after: Option<String>) -> axum::http::HeaderMap {
    let mut headers = axum::http::HeaderMap::new();
    if let Some(after) = after {
        let pairs: Vec<(&str, String)> = query
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (*k, v)))
            .chain(std::iter::once(("after", after)))
            .collect();
        let qs = serde_urlencoded::to_string(pairs).unwrap_or_default();
        if let Ok(v) = axum::http::HeaderValue::from_str(&format!("<{path}?{qs}>; rel=\"next\"")) {
            headers.insert(axum::http::header::LINK, v);
        }
    }
    headers
}

/// JSON bodies whose rejections are API errors (400 malformed, 413 too large, 415).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        use axum::extract::rejection::JsonRejection;
        // Every body of the API is a JSON object: serde would also read a struct from an array
        // (`[]` as a body with only optional fields), which the schema does not allow.
        match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(v)) if !v.is_object() => {
                Err(ApiError::new(Code::MalformedRequest, "the body must be a JSON object"))
            }
            Ok(axum::Json(v)) => serde_json::from_value::<T>(v).map(ApiJson).map_err(|e| {
                ApiError::new(
                    Code::MalformedRequest,
                    format!("Failed to deserialize the JSON body into the target type: {e}"),
                )
            }),
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(ApiError::new(Code::UnsupportedMediaType, "send `Content-Type: application/json`"))
            }
            Err(JsonRejection::BytesRejection(e)) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(Code::BodyTooLarge, format!("the body exceeds {BODY_LIMIT} bytes")))
            }
            Err(e) => Err(ApiError::new(Code::MalformedRequest, e.body_text())),
        }
    }
}

/// A body sent either as a form (`application/x-www-form-urlencoded`) or as JSON.
#[derive(Debug)]
pub struct FormOrJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for FormOrJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let form = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !form {
            return ApiJson::<T>::from_request(req, state).await.map(|ApiJson(v)| FormOrJson(v));
        }
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(Code::BodyTooLarge, format!("the body exceeds {BODY_LIMIT} bytes"))
            } else {
                ApiError::new(Code::MalformedRequest, e.body_text())
            }
        })?;
        serde_urlencoded::from_bytes(&bytes)
            .map(FormOrJson)
            .map_err(|e| ApiError::new(Code::MalformedRequest, e.to_string()))
    }
}

/// Query strings whose rejections are API errors (400 `malformed_query`).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(e) => Err(ApiError::new(Code::MalformedQuery, e.body_text())),
        }
    }
}

/// Path parameters whose rejections are API errors (400 `malformed_path`, e.g. bad UTF-8).
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(e) => Err(ApiError::new(Code::MalformedPath, e.body_text())),
        }
    }
}
