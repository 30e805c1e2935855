//! The admin API (`/admin/…`): changes the simulated tenant, injects faults, reports
//! statistics. Unauthenticated by design; bind the simulator to loopback.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

use crate::app::{App, lock, read, write};
use crate::assertion::RegisteredCertificate;
use crate::config::SettingsPatch;
use crate::errors::{ApiError, RequestIds, json_response};
use crate::faults::FaultRule;
use crate::model::{
    Committed, GenerateSpec, GroupMutation, IdList, MembersMutation, NewDirectoryObject, ObjectKind, ObjectMutation,
    Stats, UserMutation,
};
use crate::schema::Resource;
use crate::store::{Tenant, parse_id};
use crate::subscriptions;

const JSON: &str = "application/json";

/// A refusal together with the ids its error body reports.
pub struct Failure(ApiError, RequestIds);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        json_response(self.0.status, &self.0.body(&self.1), JSON)
    }
}

type Reply = Result<Response, Failure>;

fn ok<T: Serialize>(status: StatusCode, body: &T) -> Reply {
    Ok(match serde_json::to_value(body) {
        Ok(value) => json_response(status, &value, JSON),
        Err(e) => json_response(StatusCode::INTERNAL_SERVER_ERROR, &Value::String(e.to_string()), JSON),
    })
}

fn fail(ids: &RequestIds) -> impl Fn(ApiError) -> Failure + '_ {
    move |e| Failure(e, ids.clone())
}

fn body_value(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))
}

fn body_as<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

fn query_flag(query: &Option<String>, name: &str) -> bool {
    url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
        .any(|(k, v)| k.eq_ignore_ascii_case(name) && (v.is_empty() || v.eq_ignore_ascii_case("true")))
}

/// Runs a tenant change and commits it as one version.
fn mutate<T>(app: &App, f: impl FnOnce(&mut Tenant) -> Result<T, ApiError>) -> Result<(T, Committed), ApiError> {
    let lifetime = app.settings().delta_token_lifetime_ms;
    let mut t = write(&app.tenant);
    let before = t.version();
    let out = f(&mut t)?;
    let c = t.commit();
    // Notifications are worked out only when someone subscribed: bulk changes
    // (generate) would otherwise pay for them in every test and benchmark.
    if c.version != before && !lock(&app.subscriptions).is_empty() {
        let notices = subscriptions::notices_since(&t, before);
        if !notices.is_empty() {
            // The deliverer is gone only while the server shuts down.
            let _ = app.notices.send(notices);
        }
    }
    t.compact(lifetime);
    Ok((out, c))
}

/// `mutate` on a blocking thread: seeding or generating a large tenant takes a while
/// and must not stall the async workers.
async fn blocking<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&mut Tenant) -> Result<T, ApiError> + Send + 'static,
) -> Result<(T, Committed), ApiError> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || mutate(&app, f))
        .await
        .unwrap_or_else(|e| Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "generalException", e.to_string())))
}

fn user_reply(app: &App, id: Uuid, c: Committed) -> Result<UserMutation, ApiError> {
    let user = read(&app.tenant).user_view(id)?;
    Ok(UserMutation { version: c.version, committed_at_ms: c.committed_at_ms, user })
}

fn group_reply(app: &App, id: Uuid, c: Committed) -> Result<GroupMutation, ApiError> {
    let group = read(&app.tenant).group_view(id, false)?;
    Ok(GroupMutation { version: c.version, committed_at_ms: c.committed_at_ms, group })
}

pub async fn create_user(State(app): State<Arc<App>>, Extension(ids): Extension<RequestIds>, body: Bytes) -> Reply {
    let body = body_value(&body).map_err(fail(&ids))?;
    let (idx, c) = mutate(&app, |t| t.create_user(&body)).map_err(fail(&ids))?;
    let id = read(&app.tenant).obj(idx).id;
    tracing::info!(%id, version = c.version, "user created");
    ok(StatusCode::CREATED, &user_reply(&app, id, c).map_err(fail(&ids))?)
}

pub async fn get_user(
    State(app): State<Arc<App>>,
    Extension(ids): Extension<RequestIds>,
    Path(id): Path<String>,
) -> Reply {
    let id = parse_id(&id).map_err(fail(&ids))?;
    ok(StatusCode::OK, &read(&app.tenant).user_view(id).map_err(fail(&ids))?)
}

pub async fn patch_user(
    State(app): State<Arc<App>>,
    Extension(ids): Extension<RequestIds>,
    Path(id): Path<String>,
    body: Bytes,
) -> Reply {
    let id = parse_id(&id).map_err(fail(&ids))?;
    let body = body_value(&body).map_err(fail(&ids))?;
    let (_, c) = mutate(&app, |t| t.update(Resource::Users, id, &body)).map_err(fail(&ids))?;
    ok(StatusCode::OK, &user_reply(&app, id, c).map_err(fail(&ids))?)
}

async fn delete_object(app: &App, ids: &RequestIds, kind: ObjectKind, id: &str, query: &Option<String>) -> Reply {
    let id = parse_id(id).map_err(fail(ids))?;
    let permanent = query_flag(query, "permanent");
    let ((), c) = mutate(app, |t| t.delete(kind, id, permanent)).map_err(fail(ids))?;
    tracing::info!(%id, ?kind, permanent, version = c.version, "object deleted");
    ok(StatusCode::OK, &c)
}

pub async fn delete_user(
    State(app): State<Arc<App>>,
    Extension(ids): Extension<RequestIds>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Reply {
    delete_object(&app, &ids, ObjectKind::User, &id, &query).await
}

pub async fn restore_user(
    State(app): State<Arc<App>>,
    Extension(ids): Extension<RequestIds>,
    Path(id): Path<String>,
) -> Reply {
    let id = parse_id(&id).map_err(fail(&ids))?;
    let (_, c) = mutate(&app, |t| t.restore(ObjectKind::User, id)).map_err(fail(&ids))?;
    ok(StatusCode::OK, &user_reply(&app, id, c).map_err(fail(&ids))?)
}

pub async fn create_group(State(app): State<Arc<App>>, Extension(ids): Extension<RequestIds>, body: Bytes) -> Reply {
    let body = body_value(&body).map_err(fail(&ids))?;
    let (idx, c) = mutate(&app, |t| t.create_group(&body)).map_err(fail(&ids))?;
    let id = read(&app.tenant).obj(idx).id;
    tracing::info!(%id, version = c.version, "group created");
    ok(StatusCode::CREATED, &group_reply(&app, id, c).map_err(fail(&ids))?)
}

pub async fn get_group(
    State(app): State<Arc<App>>,
    Extension(ids): Extension<RequestIds>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Reply {
    let id = parse_id(&id).map_err(fail(&ids))?;
    let include = query_flag(&query, "includeMembers");
    ok(StatusCode::OK, &read(&app.tenant).group_view(id, include).map_err(fail(&ids))?)
}

pub async fn patch_group(
    State(app): State<Arc<App>>,
    Extension(ids): Extension<RequestIds>,
    Path(id): Path<String>,
    body: Bytes,
) -> Reply {
    let id = parse_id(&id).map_err(fail(&ids))?;
    let body = body_value(&body).map_err(fail(&ids))?;
    let (_, c) = mutate(&app, |t| t.update(Resource::Groups, id, &body)).map_err(fail(&ids))?;
    ok(StatusCode::OK, &group_reply(&app, id, c).map_err(fail(&ids))?)
}

pub async fn delete_group(
    State(app): State<Arc<App>>,
    Extension(ids): Extension<RequestIds>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Reply {
    delete_object(&app, &ids, ObjectKind::Group, &id, &query).await
}

pub async fn restore_group(
    State(app): State<Arc<App>>,
    Extension(ids): Extension<RequestIds>,
    Path(id): Path<String>,
) -> Reply {
    let id = parse_id(&id).map_err(fail(&ids))?;
    let (_, c) = mutate(&app, |t| t.restore(ObjectKind::Group, id)).map_err(fail(&ids))?;
    ok(StatusCode::OK, &group_reply(&app, id, c).map_err(fail(&ids))?)
}

fn members_reply((changed, unchanged): (usize, usize), c: Committed) -> MembersMutation {
    MembersMutation { version: c.version, committed_at_ms: c.committed_at_ms, changed, unchanged }
}

pub async fn add_members(
    State(app): State<Arc<App>>,
    Extension(ids): Extension<RequestIds>,
    Path(id): Path<String>,
    body: Bytes,
) -> Reply {
    let group = parse_id(&id).map_err(fail(&ids))?;
    let list: IdList = body_as(&body).map_err(fail(&ids))?;
    let (r, c) = mutate(&app, |t| t.add_members(group, &list.ids)).map_err(fail(&ids))?;
    ok(StatusCode::OK, &members_reply(r, c))
}

pub async fn remove_members(
    State(app): State<Arc<App>>,
    Extension(ids): Extension<RequestIds>,
    Path(id): Path<String>,
    body: Bytes,
) -> Reply {
    let group = parse_id(&id).map_err(fail(&ids))?;
    let list: IdList = body_as(&body).map_err(fail(&ids))?;
    let (r, c) = mutate(&app, |t| t.remove_members(group, &list.ids, false)).map_err(fail(&ids))?;
    ok(StatusCode::OK, &members_reply(r, c))
}

pub async fn remove_member(
    State(app): State<Arc<App>>,
    Extension(ids): Extension<RequestIds>,
    Path((id, member)): Path<(String, String)>,
) -> Reply {
    let group = parse_id(&id).map_err(fail(&ids))?;
    let member = parse_id(&member).map_err(fail(&ids))?;
    let (r, c) = mutate(&app, |t| t.remove_members(group, &[member], true)).map_err(fail(&ids))?;
    ok(StatusCode::OK, &members_reply(r, c))
}

pub async fn create_object(State(app): State<Arc<App>>, Extension(ids): Extension<RequestIds>, body: Bytes) -> Reply {
    let spec: NewDirectoryObject = body_as(&body).map_err(fail(&ids))?;
    let (idx, c) = mutate(&app, |t| t.create_object(&spec)).map_err(fail(&ids))?;
    let id = read(&app.tenant).obj(idx).id;
    let reply = ObjectMutation { version: c.version, committed_at_ms: c.committed_at_ms, id, kind: spec.kind };
    ok(StatusCode::CREATED, &reply)
}

pub async fn delete_directory_object(
    State(app): State<Arc<App>>,
    Extension(ids): Extension<RequestIds>,
    Path(id): Path<String>,
) -> Reply {
    let uuid = parse_id(&id).map_err(fail(&ids))?;
    let kind = {
        let t = read(&app.tenant);
        t.index_of(&uuid).map(|i| t.obj(i).kind)
    };
    match kind {
        Some(k) if !matches!(k, ObjectKind::User | ObjectKind::Group) => delete_object(&app, &ids, k, &id, &None).await,
        _ => Err(fail(&ids)(ApiError::not_found(format!(
            "no device, servicePrincipal, orgContact or application with id {uuid}"
        )))),
    }
}

pub async fn stats(State(app): State<Arc<App>>) -> Reply {
    let (committed, (users, groups, other_objects, memberships)) = {
        let t = read(&app.tenant);
        (t.committed(), t.counts())
    };
    let ttl = app.round_ttl();
    let open_rounds = {
        let mut r = lock(&app.rounds);
        r.purge(ttl);
        r.len()
    };
    // One guard for both: two `lock()` temporaries in one expression would deadlock.
    let (requests, delta_requests) = {
        let stats = lock(&app.stats);
        (stats.snapshot(), stats.delta_snapshot())
    };
    let stats = Stats {
        version: committed.version,
        committed_at_ms: committed.committed_at_ms,
        users,
        groups,
        other_objects,
        memberships,
        open_rounds,
        access_tokens_issued: lock(&app.tokens).issued(),
        faults_injected: lock(&app.faults).injected(),
        requests,
        delta_requests,
    };
    ok(StatusCode::OK, &stats)
}

pub async fn seed(State(app): State<Arc<App>>, Extension(ids): Extension<RequestIds>, body: Bytes) -> Reply {
    let body = body_value(&body).map_err(fail(&ids))?;
    let (result, _) = blocking(&app, move |t| t.seed(&body)).await.map_err(fail(&ids))?;
    tracing::info!(
        users = result.user_ids.len(),
        groups = result.group_ids.len(),
        memberships = result.memberships,
        version = result.version,
        "tenant seeded"
    );
    ok(StatusCode::OK, &result)
}

pub async fn generate(State(app): State<Arc<App>>, Extension(ids): Extension<RequestIds>, body: Bytes) -> Reply {
    let spec: GenerateSpec = body_as(&body).map_err(fail(&ids))?;
    let (result, _) = blocking(&app, move |t| t.generate(&spec)).await.map_err(fail(&ids))?;
    tracing::info!(
        users = result.users,
        groups = result.groups,
        memberships = result.memberships,
        elapsed_ms = result.elapsed_ms,
        "tenant generated"
    );
    ok(StatusCode::OK, &result)
}

pub async fn get_faults(State(app): State<Arc<App>>) -> Reply {
    ok(StatusCode::OK, &lock(&app.faults).rules().to_vec())
}

pub async fn add_faults(State(app): State<Arc<App>>, Extension(ids): Extension<RequestIds>, body: Bytes) -> Reply {
    let value = body_value(&body).map_err(fail(&ids))?;
    let rules: Vec<FaultRule> = match value {
        Value::Array(_) => serde_json::from_value(value),
        other => serde_json::from_value(other).map(|r| vec![r]),
    }
    .map_err(|e| fail(&ids)(ApiError::bad_request(format!("invalid fault rule: {e}"))))?;
    let mut q = lock(&app.faults);
    q.add(rules).map_err(|e| fail(&ids)(ApiError::bad_request(e)))?;
    ok(StatusCode::OK, &q.rules().to_vec())
}

pub async fn clear_faults(State(app): State<Arc<App>>) -> Reply {
    lock(&app.faults).clear();
    ok(StatusCode::OK, &Vec::<FaultRule>::new())
}

pub async fn get_settings(State(app): State<Arc<App>>) -> Reply {
    ok(StatusCode::OK, &app.settings())
}

pub async fn patch_settings(State(app): State<Arc<App>>, Extension(ids): Extension<RequestIds>, body: Bytes) -> Reply {
    let patch: SettingsPatch = body_as(&body).map_err(fail(&ids))?;
    let mut s = write(&app.settings);
    let next = patch.apply(&s);
    next.validate().map_err(|e| fail(&ids)(ApiError::bad_request(e)))?;
    *s = next.clone();
    ok(StatusCode::OK, &next)
}

/// Empties the tenant. Tokens of the old tenant then answer `syncStateNotFound`.
pub async fn reset(State(app): State<Arc<App>>) -> Reply {
    let c = {
        let mut t = write(&app.tenant);
        *t = Tenant::new();
        t.committed()
    };
    lock(&app.rounds).clear();
    tracing::info!("tenant reset");
    ok(StatusCode::OK, &c)
}

#[derive(serde::Deserialize)]
struct CertificateUpload {
    pem: String,
}

/// `POST /admin/certificates` `{"pem": "-----BEGIN CERTIFICATE-----…"}`: registers a
/// certificate on the app, as uploading it to the app registration does.
pub async fn add_certificate(State(app): State<Arc<App>>, Extension(ids): Extension<RequestIds>, body: Bytes) -> Reply {
    let upload: CertificateUpload = body_as(&body).map_err(fail(&ids))?;
    let cert = RegisteredCertificate::from_pem(&upload.pem).map_err(|e| fail(&ids)(ApiError::bad_request(e)))?;
    let mut certs = lock(&app.certificates);
    if !certs.contains(&cert) {
        certs.push(cert.clone());
    }
    tracing::info!(x5t_s256 = %cert.thumbprint_s256, "certificate registered");
    ok(StatusCode::CREATED, &cert)
}

pub async fn get_certificates(State(app): State<Arc<App>>) -> Reply {
    let certs = lock(&app.certificates).clone();
    ok(StatusCode::OK, &certs)
}

pub async fn clear_certificates(State(app): State<Arc<App>>) -> Reply {
    lock(&app.certificates).clear();
    ok(StatusCode::OK, &serde_json::json!({}))
}
