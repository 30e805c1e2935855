//! The Graph delta endpoints: `GET /{v1.0|beta}/{groups|users}/delta`.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::app::{App, lock, read};
use crate::auth;
use crate::delta::{self, Query, Round};
use crate::errors::{ApiError, GRAPH_JSON, RequestIds, json_response};
use crate::faults::{self, Endpoint, FaultKind};
use crate::schema::{ApiVersion, Resource};
use crate::stats::DeltaRequestKind;
use crate::time;
use crate::tokens::{self, Token};

/// Query options of a delta request. Graph's `$` prefix is optional on beta, so the
/// option names are matched with or without it.
#[derive(Clone, Default)]
struct Options {
    select: Option<String>,
    filter: Option<String>,
    deltatoken: Option<String>,
    skiptoken: Option<String>,
}

fn parse_options(query: Option<&str>) -> Result<Options, ApiError> {
    let mut o = Options::default();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let dollar = key.starts_with('$');
        let name = key.trim_start_matches('$').to_ascii_lowercase();
        let slot = match name.as_str() {
            "select" => &mut o.select,
            "filter" => &mut o.filter,
            "deltatoken" => &mut o.deltatoken,
            "skiptoken" => &mut o.skiptoken,
            "top" | "orderby" | "expand" | "skip" | "search" | "count" | "format" | "levels" => {
                return Err(ApiError::bad_request(format!(
                    "The query option '${name}' is not supported with delta queries (supported: $select, $filter on id, $deltatoken, $skiptoken)."
                )));
            }
            _ if dollar => {
                return Err(ApiError::bad_request(format!("The query option '{key}' is not supported.")));
            }
            // Graph ignores custom (non-OData) query parameters.
            _ => continue,
        };
        if slot.is_some() {
            return Err(ApiError::bad_request(format!("The query option '${name}' was specified more than once.")));
        }
        *slot = Some(value.into_owned());
    }
    Ok(o)
}

/// Where links point: scheme, authority and the request's own path.
struct LinkBase {
    base: String,
    path: String,
    /// The request's own URL, for the nextLink-loop fault.
    current: String,
}

impl LinkBase {
    fn new(app: &App, headers: &HeaderMap, uri: &Uri) -> LinkBase {
        let base = match &app.config.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => {
                let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
                format!("http://{host}")
            }
        };
        let current = format!("{base}{}", uri.path_and_query().map_or_else(|| uri.path(), |p| p.as_str()));
        LinkBase { base, path: uri.path().to_owned(), current }
    }

    fn link(&self, option: &str, token: &str) -> String {
        format!("{}{}?{option}={token}", self.base, self.path)
    }

    fn context(&self, api: ApiVersion, resource: Resource, suffix: &str) -> String {
        format!("{}/{}/$metadata#{}{suffix}", self.base, api.segment(), resource.segment())
    }

    /// The initial URL of a query with an empty `$deltatoken=`, for 410 `Location`.
    fn restart(&self, q: Option<&Query>) -> String {
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let mut parts = Vec::new();
        if let Some(names) = q.and_then(|q| q.select_names.as_ref()) {
            parts.push(format!("$select={}", enc(&names.join(","))));
        }
        if let Some(ids) = q.and_then(|q| q.filter.as_ref()) {
            let f: Vec<String> = ids.iter().map(|id| format!("id eq '{id}'")).collect();
            parts.push(format!("$filter={}", enc(&f.join(" or "))));
        }
        parts.push("$deltatoken=".into());
        format!("{}{}?{}", self.base, self.path, parts.join("&"))
    }
}

fn graph_json(status: StatusCode, body: &Value) -> Response {
    json_response(status, body, GRAPH_JSON)
}

fn wants_minimal(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("return=minimal")))
}

/// What the request asks for once its tokens are decoded.
enum Plan {
    Latest(Query),
    Initial(Query),
    Incremental { query: Query, since: u64 },
    Page { round: u64, page: u32 },
}

fn decide(app: &App, resource: Resource, api: ApiVersion, o: &Options) -> Result<Plan, ApiError> {
    let filter = o.filter.as_deref().map(delta::parse_filter).transpose()?;
    let epoch = read(&app.tenant).epoch;
    if let Some(skip) = &o.skiptoken {
        if o.select.is_some() || o.filter.is_some() || o.deltatoken.is_some() {
            return Err(ApiError::bad_request(
                "$skiptoken cannot be combined with other query options; follow @odata.nextLink as returned.",
            ));
        }
        return match tokens::decode(skip) {
            Some(Token::Skip { e, .. }) if e != epoch => Err(ApiError::sync_state_not_found(
                "The sync state generation is not found: the tenant was reset. Restart with a full synchronization.",
            )),
            Some(Token::Skip { r, p, .. }) => Ok(Plan::Page { round: r, page: p }),
            _ => Err(ApiError::bad_request("The $skiptoken is not valid.")),
        };
    }
    let new_query = |filter| {
        let query = Query::new(resource, api, o.select.as_deref(), filter)?;
        let names = query.select_names.as_deref().unwrap_or_default();
        if app.settings().refuse_writeback_in_delta && names.iter().any(|n| n == "writebackConfiguration") {
            return Err(ApiError::bad_request(
                "Property 'writebackConfiguration' is not supported in the $select of a delta query.",
            ));
        }
        Ok(query)
    };
    match o.deltatoken.as_deref() {
        None | Some("") => Ok(Plan::Initial(new_query(filter)?)),
        Some(t) if t.eq_ignore_ascii_case("latest") => Ok(Plan::Latest(new_query(filter)?)),
        Some(t) => {
            if o.filter.is_some() {
                return Err(ApiError::bad_request("$filter cannot be added to a deltaLink."));
            }
            let Some(Token::Delta { e, v, t: issued, r, s, f }) = tokens::decode(t) else {
                return Err(ApiError::bad_request("The $deltatoken is not valid."));
            };
            if r != resource {
                return Err(ApiError::bad_request(format!(
                    "The $deltatoken was issued for /{} and cannot be used on /{}.",
                    r.segment(),
                    resource.segment()
                )));
            }
            let lifetime = app.settings().delta_token_lifetime_ms;
            let t = read(&app.tenant);
            if e != t.epoch {
                return Err(ApiError::sync_state_not_found(
                    "The sync state generation is not found: the tenant was reset. Restart with a full synchronization.",
                ));
            }
            if time::now_ms().saturating_sub(issued) > lifetime || v < t.floor() || v > t.version() {
                return Err(ApiError::sync_state_not_found(
                    "The sync state generation is not found. The delta token is expired and data must be synchronized again.",
                ));
            }
            // A $select on a deltaLink replaces the tracked properties (graph-api.md §1.1).
            let select = o.select.clone().or_else(|| s.map(|names| names.join(",")));
            let query = Query::new(resource, api, select.as_deref(), f)?;
            Ok(Plan::Incremental { query, since: v })
        }
    }
}

/// The query a failing request belongs to, for the `Location` of a 410.
fn query_of(app: &App, resource: Resource, api: ApiVersion, o: &Options) -> Option<Query> {
    match decide(app, resource, api, o).ok()? {
        Plan::Latest(q) | Plan::Initial(q) | Plan::Incremental { query: q, .. } => Some(q),
        Plan::Page { round, .. } => {
            let ttl = app.round_ttl();
            lock(&app.rounds).get_mut(round, ttl).map(|r| r.query.clone())
        }
    }
}

/// Turns a fault into its response; `Ok(duplicate)` means serve normally.
async fn apply_fault(
    app: &App,
    fault: FaultKind,
    ids: &RequestIds,
    resource: Resource,
    api: ApiVersion,
    links: &LinkBase,
    o: &Options,
) -> Result<bool, Response> {
    let with_retry_after = |mut resp: Response, retry_after: Option<String>| {
        if let Some(v) = retry_after.and_then(|r| HeaderValue::from_str(&r).ok()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    };
    Err(match fault {
        FaultKind::Delay { ms } => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            return Ok(false);
        }
        FaultKind::Duplicate => return Ok(true),
        FaultKind::Throttle { retry_after } => {
            let mut resp = graph_json(
                StatusCode::TOO_MANY_REQUESTS,
                &crate::errors::graph_error_body("TooManyRequests", "Too many requests.", ids, None),
            );
            let h = resp.headers_mut();
            let scope = format!("Tenant_Application/ReadWrite/{}/{}", app.config.client_id, app.config.tenant_id);
            if let Ok(v) = HeaderValue::from_str(&scope) {
                h.insert("x-ms-throttle-scope", v);
            }
            h.insert("x-ms-throttle-information", HeaderValue::from_static("ResourceUnitLimitExceeded"));
            with_retry_after(resp, retry_after)
        }
        FaultKind::Unavailable { retry_after } => with_retry_after(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "serviceNotAvailable",
                "The service is temporarily unavailable.",
            )
            .into_graph_response(ids),
            retry_after,
        ),
        FaultKind::GatewayTimeout => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "gatewayTimeout",
            "The gateway did not receive a timely response from the upstream service.",
        )
        .into_graph_response(ids),
        FaultKind::Reset => {
            let q = query_of(app, resource, api, o);
            let mut resp = ApiError::new(
                StatusCode::GONE,
                "resyncRequired",
                "The delta sync state was reset; restart with a full synchronization from the Location URL.",
            )
            .into_graph_response(ids);
            if let Ok(v) = HeaderValue::from_str(&links.restart(q.as_ref())) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            resp
        }
        FaultKind::SyncStateNotFound { variant, status } => graph_json(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            &faults::sync_error_body(
                "syncStateNotFound",
                "The sync state generation is not found. The delta token is expired and data must be synchronized again.",
                variant,
                ids,
            ),
        ),
        FaultKind::ResyncRequired { variant, status } => graph_json(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            &faults::sync_error_body(
                "resyncRequired",
                "The delta token is no longer valid, and the app must reset the sync state.",
                variant,
                ids,
            ),
        ),
        FaultKind::Malformed => {
            let body = format!("{{\"@odata.context\":\"{}\",\"value\":[{{\"id\":\"", links.context(api, resource, ""));
            (StatusCode::OK, [(header::CONTENT_TYPE, GRAPH_JSON)], body).into_response()
        }
        FaultKind::Unauthorized => auth::unauthorized("Lifetime validation failed, the token is expired.", ids),
        FaultKind::NextLinkLoop => graph_json(
            StatusCode::OK,
            &serde_json::json!({
                "@odata.context": links.context(api, resource, ""),
                "@odata.nextLink": links.current,
                "value": [],
            }),
        ),
    })
}

/// `GET /{v1.0|beta}/{groups|users}/delta` (and `/microsoft.graph.delta`).
pub async fn delta(
    app: Arc<App>,
    ids: RequestIds,
    resource: Resource,
    api: ApiVersion,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let links = LinkBase::new(&app, &headers, &uri);
    let options = parse_options(uri.query());
    let endpoint = match resource {
        Resource::Groups => Endpoint::GroupsDelta,
        Resource::Users => Endpoint::UsersDelta,
    };
    let mut duplicate = false;
    if let Some(fault) = app.take_fault(endpoint) {
        let o = options.clone().unwrap_or_default();
        match apply_fault(&app, fault, &ids, resource, api, &links, &o).await {
            Ok(d) => duplicate = d,
            Err(resp) => return resp,
        }
    }
    if let Err(message) = auth::check_bearer(&app, &headers) {
        return auth::unauthorized(message, &ids);
    }
    if let Ok(o) = &options {
        lock(&app.stats)
            .record_delta(resource.segment(), DeltaRequestKind::of(o.skiptoken.is_some(), o.deltatoken.is_some()));
    }
    let delay = app.page_delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let result = options
        .and_then(|o| decide(&app, resource, api, &o))
        .and_then(|plan| serve_plan(&app, plan, resource, api, &links, wants_minimal(&headers), duplicate));
    match result {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(code = e.code, message = %e.message, "delta request refused");
            e.into_graph_response(&ids)
        }
    }
}

fn serve_plan(
    app: &App,
    plan: Plan,
    resource: Resource,
    api: ApiVersion,
    links: &LinkBase,
    minimal: bool,
    duplicate: bool,
) -> Result<Response, ApiError> {
    let settings = app.settings();
    let ttl = Duration::from_secs(settings.round_ttl_secs);
    let mut round = match plan {
        Plan::Latest(query) => {
            let t = read(&app.tenant);
            let token = delta_token(t.epoch, t.version(), resource, &query);
            let body = json!({
                "@odata.context": links.context(api, resource, &query.context_suffix()),
                "@odata.deltaLink": links.link("$deltatoken", &token),
                "value": [],
            });
            return Ok(graph_json(StatusCode::OK, &body));
        }
        Plan::Initial(query) => {
            let t = read(&app.tenant);
            let items = delta::plan_initial(&t, resource, &query, settings.soft_deleted_in_initial_sync);
            Round::new(resource, api, query, t.version(), false, items, &settings.paging)
        }
        Plan::Incremental { query, since } => {
            let t = read(&app.tenant);
            let items = delta::plan_incremental(&t, resource, api, &query, since);
            Round::new(resource, api, query, t.version(), true, items, &settings.paging)
        }
        Plan::Page { round, page } => {
            let mut rounds = lock(&app.rounds);
            let Some(r) = rounds.get_mut(round, ttl) else {
                return Err(ApiError::sync_state_not_found(format!(
                    "The $skiptoken has expired or is unknown (graph-sim keeps a round's pages for {} s after its last use). Restart the sync from the last deltaLink or from scratch.",
                    settings.round_ttl_secs
                )));
            };
            if r.resource != resource || r.api != api {
                return Err(ApiError::bad_request("The $skiptoken belongs to a different delta collection."));
            }
            if page as usize >= r.page_count() {
                return Err(ApiError::bad_request("The $skiptoken is not valid."));
            }
            let t = read(&app.tenant);
            let value = r.render_page(&t, page as usize, minimal, settings.removed_reason, !settings.omit_member_types);
            let next = if page as usize + 1 < r.page_count() {
                Link::Next(tokens::encode(&Token::Skip { e: t.epoch, r: round, p: page + 1 }))
            } else {
                Link::Delta(delta_token(t.epoch, r.start_version, resource, &r.query))
            };
            let body = page_body(links, api, resource, "", value, next, duplicate);
            return Ok(page_response(body, minimal && r.incremental));
        }
    };
    // The first page of a new round; only rounds with more pages are kept.
    let t = read(&app.tenant);
    let value = round.render_page(&t, 0, minimal, settings.removed_reason, !settings.omit_member_types);
    let ctx = round.query.context_suffix();
    let (next, incremental) = if round.page_count() > 1 {
        let (epoch, incremental) = (t.epoch, round.incremental);
        drop(t);
        let id = lock(&app.rounds).insert(round, ttl);
        (Link::Next(tokens::encode(&Token::Skip { e: epoch, r: id, p: 1 })), incremental)
    } else {
        (Link::Delta(delta_token(t.epoch, round.start_version, resource, &round.query)), round.incremental)
    };
    let body = page_body(links, api, resource, &ctx, value, next, duplicate);
    Ok(page_response(body, minimal && incremental))
}

enum Link {
    Next(String),
    Delta(String),
}

fn delta_token(epoch: u64, version: u64, resource: Resource, q: &Query) -> String {
    tokens::encode(&Token::Delta {
        e: epoch,
        v: version,
        t: time::now_ms(),
        r: resource,
        s: q.select_names.clone(),
        f: q.filter.clone(),
    })
}

fn page_body(
    links: &LinkBase,
    api: ApiVersion,
    resource: Resource,
    ctx_suffix: &str,
    mut value: Vec<Value>,
    next: Link,
    duplicate: bool,
) -> Value {
    if duplicate {
        value = value.into_iter().flat_map(|v| [v.clone(), v]).collect();
    }
    let (key, link) = match next {
        Link::Next(t) => ("@odata.nextLink", links.link("$skiptoken", &t)),
        Link::Delta(t) => ("@odata.deltaLink", links.link("$deltatoken", &t)),
    };
    json!({
        "@odata.context": links.context(api, resource, ctx_suffix),
        key: link,
        "value": value,
    })
}

fn page_response(body: Value, minimal_applied: bool) -> Response {
    let mut resp = graph_json(StatusCode::OK, &body);
    // What the page cost against the directory-read budget: a GET with $select, 1.
    resp.headers_mut().insert("x-ms-resource-unit", HeaderValue::from_static("1"));
    if minimal_applied {
        resp.headers_mut().insert("preference-applied", HeaderValue::from_static("return=minimal"));
    }
    resp
}
