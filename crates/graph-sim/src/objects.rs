//! Reading one group (`GET /{version}/groups/{id}?$select=…`), JSON batching
//! (`POST /{version}/$batch`, at most 20 requests, each answered on its own) and
//! `POST /{version}/directoryObjects/getByIds`: what a client uses to read a property
//! that a delta query's `$select` does not take, or the kind of a member link that came
//! without `@odata.type`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::app::{App, read};
use crate::auth;
use crate::delta::Query;
use crate::errors::{ApiError, GRAPH_JSON, RequestIds, json_response};
use crate::schema::{ApiVersion, Resource};
use crate::store::Life;

/// Graph's documented limit of requests in one JSON batch.
pub const MAX_BATCH_REQUESTS: usize = 20;

/// The group's id and selected properties (the default ones without `$select`).
fn group_body(app: &App, api: ApiVersion, id: &str, select: Option<&str>) -> Result<Value, ApiError> {
    let query = Query::new(Resource::Groups, api, select, None)?;
    let missing = || {
        ApiError::not_found(format!(
            "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
        ))
    };
    let uuid = Uuid::parse_str(id).map_err(|_| missing())?;
    let tenant = read(&app.tenant);
    let obj = tenant
        .index_of(&uuid)
        .map(|idx| tenant.obj(idx))
        .filter(|o| o.life == Life::Active && o.resource() == Some(Resource::Groups))
        .ok_or_else(missing)?;
    let defs = Resource::Groups.props();
    let mut body = Map::new();
    body.insert("id".into(), obj.id.to_string().into());
    for p in query.returned(Resource::Groups, api) {
        body.insert(defs[p].name.into(), obj.get(p).cloned().unwrap_or(Value::Null));
    }
    Ok(Value::Object(body))
}

fn select_of(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(key, _)| key.eq_ignore_ascii_case("$select"))
        .map(|(_, value)| value.into_owned())
}

pub async fn get_group(
    app: Arc<App>,
    ids: RequestIds,
    api: ApiVersion,
    headers: HeaderMap,
    uri: Uri,
    id: String,
) -> Response {
    if let Err(message) = auth::check_bearer(&app, &headers) {
        return auth::unauthorized(message, &ids);
    }
    match group_body(&app, api, &id, select_of(uri.query()).as_deref()) {
        Ok(body) => json_response(StatusCode::OK, &body, GRAPH_JSON),
        Err(error) => error.into_graph_response(&ids),
    }
}

#[derive(Deserialize)]
pub struct Batch {
    requests: Vec<BatchRequest>,
}

#[derive(Deserialize)]
struct BatchRequest {
    id: String,
    method: String,
    url: String,
}

/// Each request is answered in `responses` with its own status; only `GET
/// /groups/{id}` is served.
pub async fn batch(app: Arc<App>, ids: RequestIds, api: ApiVersion, headers: HeaderMap, batch: Batch) -> Response {
    if let Err(message) = auth::check_bearer(&app, &headers) {
        return auth::unauthorized(message, &ids);
    }
    if batch.requests.is_empty() || batch.requests.len() > MAX_BATCH_REQUESTS {
        let message = format!("A batch holds 1 to {MAX_BATCH_REQUESTS} requests, not {}.", batch.requests.len());
        return ApiError::bad_request(message).into_graph_response(&ids);
    }
    let responses: Vec<Value> = batch
        .requests
        .iter()
        .map(|request| {
            let (path, query) = request.url.split_once('?').map_or((request.url.as_str(), None), |(p, q)| (p, Some(q)));
            let group_id = path.trim_start_matches('/').strip_prefix("groups/").filter(|rest| !rest.contains('/'));
            let result = match group_id {
                Some(id) if request.method.eq_ignore_ascii_case("GET") => {
                    group_body(&app, api, id, select_of(query).as_deref())
                }
                _ => Err(ApiError::bad_request(format!(
                    "graph-sim batches serve GET /groups/{{id}} only, not {} {}",
                    request.method, request.url
                ))),
            };
            match result {
                Ok(body) => json!({ "id": request.id, "status": 200, "body": body }),
                Err(error) => json!({ "id": request.id, "status": error.status.as_u16(), "body": error.body(&ids) }),
            }
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "responses": responses }), GRAPH_JSON)
}

#[derive(Deserialize)]
pub struct GetByIds {
    ids: Vec<String>,
    #[serde(default)]
    types: Vec<String>,
}

/// Graph's limit of ids in one `getByIds` request.
pub const MAX_GET_BY_IDS: usize = 1000;

/// The active objects among `ids` (of `types`, when given): `@odata.type`, `id` and
/// `displayName`; unknown or deleted ids are left out, as Graph does.
pub async fn get_by_ids(app: Arc<App>, ids: RequestIds, headers: HeaderMap, request: GetByIds) -> Response {
    if let Err(message) = auth::check_bearer(&app, &headers) {
        return auth::unauthorized(message, &ids);
    }
    if request.ids.is_empty() || request.ids.len() > MAX_GET_BY_IDS {
        let message = format!("getByIds takes 1 to {MAX_GET_BY_IDS} ids, not {}.", request.ids.len());
        return ApiError::bad_request(message).into_graph_response(&ids);
    }
    let tenant = read(&app.tenant);
    let wanted = |odata_type: &str| {
        request.types.is_empty()
            || request.types.iter().any(|t| odata_type.trim_start_matches("#microsoft.graph.").eq_ignore_ascii_case(t))
    };
    let value: Vec<Value> = request
        .ids
        .iter()
        .filter_map(|id| Uuid::parse_str(id).ok())
        .filter_map(|id| tenant.index_of(&id).map(|idx| tenant.obj(idx)))
        .filter(|o| o.life == Life::Active && wanted(o.kind.odata_type()))
        .map(|o| {
            let name = o.resource().and_then(|r| crate::schema::find(r.props(), "displayName")).and_then(|p| o.get(p));
            json!({ "@odata.type": o.kind.odata_type(), "id": o.id.to_string(), "displayName": name.cloned().unwrap_or(Value::Null) })
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "value": value }), GRAPH_JSON)
}

/// Routes for both API versions.
pub fn routes(mut r: axum::Router<Arc<App>>) -> axum::Router<Arc<App>> {
    use axum::Extension;
    use axum::routing::{get, post};
    for api in [ApiVersion::V1, ApiVersion::Beta] {
        let one =
            move |State(app): State<Arc<App>>,
                  Extension(ids): Extension<RequestIds>,
                  headers: HeaderMap,
                  uri: Uri,
                  Path(id): Path<String>| async move { get_group(app, ids, api, headers, uri, id).await };
        let many =
            move |State(app): State<Arc<App>>,
                  Extension(ids): Extension<RequestIds>,
                  headers: HeaderMap,
                  Json(body): Json<Batch>| async move { batch(app, ids, api, headers, body).await };
        let by_ids =
            |State(app): State<Arc<App>>,
             Extension(ids): Extension<RequestIds>,
             headers: HeaderMap,
             Json(body): Json<GetByIds>| async move { get_by_ids(app, ids, headers, body).await };
        r = r
            .route(&format!("/{}/groups/{{id}}", api.segment()), get(one))
            .route(&format!("/{}/$batch", api.segment()), post(many))
            .route(&format!("/{}/directoryObjects/getByIds", api.segment()), post(by_ids));
    }
    r
}
