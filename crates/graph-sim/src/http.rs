//! Routes, per-request ids and request statistics.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Extension, Router};

use crate::admin;
use crate::app::{App, lock};
use crate::auth;
use crate::errors::{ApiError, RequestIds};
use crate::graph;
use crate::schema::{ApiVersion, Resource};
use crate::subscriptions;

/// Admin bodies (seeds) can be large; Graph requests have none worth limiting.
const BODY_LIMIT: usize = 512 * 1024 * 1024;

pub fn router(app: Arc<App>) -> Router {
    let mut r = Router::new().route("/{tenant}/oauth2/v2.0/token", post(auth::token_endpoint));
    for api in [ApiVersion::V1, ApiVersion::Beta] {
        for resource in [Resource::Groups, Resource::Users] {
            let handler =
                move |State(app): State<Arc<App>>,
                      Extension(ids): Extension<RequestIds>,
                      headers: HeaderMap,
                      uri: Uri| async move { graph::delta(app, ids, resource, api, headers, uri).await };
            for function in ["delta", "delta/", "microsoft.graph.delta"] {
                let path = format!("/{}/{}/{function}", api.segment(), resource.segment());
                r = r.route(&path, get(handler));
            }
        }
        let base = format!("/{}/subscriptions", api.segment());
        r = r
            .route(&base, get(subscriptions::list).post(subscriptions::create))
            .route(
                &format!("{base}/{{id}}"),
                get(subscriptions::get).patch(subscriptions::renew).delete(subscriptions::delete),
            )
            .route(&format!("{base}/{{id}}/reauthorize"), post(subscriptions::reauthorize));
    }
    let r = crate::objects::routes(r);
    r.route("/admin/users", post(admin::create_user))
        .route("/admin/users/{id}", get(admin::get_user).patch(admin::patch_user).delete(admin::delete_user))
        .route("/admin/users/{id}/restore", post(admin::restore_user))
        .route("/admin/groups", post(admin::create_group))
        .route("/admin/groups/{id}", get(admin::get_group).patch(admin::patch_group).delete(admin::delete_group))
        .route("/admin/groups/{id}/restore", post(admin::restore_group))
        .route("/admin/groups/{id}/members", post(admin::add_members))
        .route("/admin/groups/{id}/members/remove", post(admin::remove_members))
        .route("/admin/groups/{id}/members/{member}", delete(admin::remove_member))
        .route("/admin/objects", post(admin::create_object))
        .route("/admin/objects/{id}", delete(admin::delete_directory_object))
        .route("/admin/stats", get(admin::stats))
        .route("/admin/seed", post(admin::seed))
        .route("/admin/generate", post(admin::generate))
        .route("/admin/faults", get(admin::get_faults).post(admin::add_faults).delete(admin::clear_faults))
        .route("/admin/settings", get(admin::get_settings).patch(admin::patch_settings))
        .route("/admin/reset", post(admin::reset))
        .route(
            "/admin/certificates",
            get(admin::get_certificates).post(admin::add_certificate).delete(admin::clear_certificates),
        )
        .route("/admin/subscriptions", get(subscriptions::admin_list))
        .route("/admin/subscriptions/{id}/lifecycle", post(subscriptions::admin_lifecycle))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Graph compresses responses for clients that accept gzip.
        .layer(tower_http::compression::CompressionLayer::new().gzip(true))
        .layer(middleware::from_fn_with_state(app.clone(), request_context))
        .with_state(app)
}

/// Gives every request its ids (and echoes them as headers, as Graph does) and counts
/// it by route and status.
async fn request_context(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let client_request_id = req
        .headers()
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 256)
        .map_or_else(|| request_id.clone(), str::to_owned);
    let endpoint =
        req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let ids = RequestIds { request_id, client_request_id };
    req.extensions_mut().insert(ids.clone());
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    for (name, value) in [("request-id", &ids.request_id), ("client-request-id", &ids.client_request_id)] {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    }
    lock(&app.stats).record(&endpoint, resp.status().as_u16());
    resp
}

async fn fallback(Extension(ids): Extension<RequestIds>, uri: Uri) -> Response {
    let path = uri.path();
    let graph = ["/v1.0/", "/beta/"].iter().find_map(|p| path.strip_prefix(p));
    match graph {
        Some(rest) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "Resource not found for the segment '{}'. (graph-sim implements only /groups/delta, /users/delta and /subscriptions.)",
                rest.rsplit('/').find(|s| !s.is_empty()).unwrap_or(rest)
            ),
        )
        .into_graph_response(&ids),
        None => ApiError::not_found(format!(
            "graph-sim serves /{{tenant}}/oauth2/v2.0/token, /{{v1.0|beta}}/{{groups|users}}/delta and /admin/…; not {path}"
        ))
        .into_graph_response(&ids),
    }
}
