//! Error values and the JSON envelopes Graph and the admin API answer with.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::time;

/// Content type Graph sends with JSON bodies.
pub const GRAPH_JSON: &str =
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

/// Ids of one request: `request-id` is ours, `client-request-id` echoes the
/// client's header or repeats `request-id`, as Graph does.
#[derive(Clone, Debug)]
pub struct RequestIds {
    pub request_id: String,
    pub client_request_id: String,
}

/// A refusal with a Graph-style `code`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalidRequest", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "itemNotFound", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn sync_state_not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "syncStateNotFound", message)
    }

    /// `{"error":{"code","message","innerError":{date,request-id,client-request-id}}}`.
    pub fn body(&self, ids: &RequestIds) -> Value {
        graph_error_body(self.code, &self.message, ids, None)
    }

    pub fn into_graph_response(self, ids: &RequestIds) -> Response {
        json_response(self.status, &self.body(ids), GRAPH_JSON)
    }
}

/// The Graph error envelope; `inner` adds members to `innerError`.
pub fn graph_error_body(code: &str, message: &str, ids: &RequestIds, inner: Option<Value>) -> Value {
    let mut inner_error = json!({
        "date": time::graph_error_date(time::now_ms()),
        "request-id": ids.request_id,
        "client-request-id": ids.client_request_id,
    });
    if let (Some(Value::Object(extra)), Some(map)) = (inner, inner_error.as_object_mut()) {
        map.extend(extra);
    }
    json!({ "error": { "code": code, "message": message, "innerError": inner_error } })
}

pub fn json_response(status: StatusCode, body: &Value, content_type: &'static str) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
