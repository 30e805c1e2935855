use graph_sim::{GroupFields, NewGroup, NewUser, ObjectState, UserFields};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::common::sim;

#[tokio::test]
async fn mutations_report_versions_and_commit_times() {
    let s = sim().await;
    let before = graph_sim_now_ms();
    let u = s.admin.create_user(&NewUser::default()).await.unwrap();
    assert_eq!(u.version, 1);
    assert!(u.committed_at_ms >= before);
    let g = s.admin.create_group(&NewGroup { members: vec![u.user.id], ..Default::default() }).await.unwrap();
    assert_eq!(g.version, 2);
    assert_eq!(g.group.member_count, 1);
    let m = s.admin.add_members(g.group.id, &[u.user.id]).await.unwrap();
    assert_eq!((m.version, m.changed, m.unchanged), (2, 0, 1), "a no-op does not bump the version");
    let d = s.admin.delete_user(u.user.id, false).await.unwrap();
    assert_eq!(d.version, 3);
    assert_eq!(s.admin.get_user(u.user.id).await.unwrap().state, ObjectState::SoftDeleted);
    let r = s.admin.restore_user(u.user.id).await.unwrap();
    assert_eq!((r.version, r.user.state), (4, ObjectState::Active));
    let view = s.admin.get_group(g.group.id, true).await.unwrap();
    assert_eq!(view.members.unwrap()[0].id, u.user.id);
}

fn graph_sim_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test]
async fn input_validation() {
    let s = sim().await;
    let http = &s.http;
    let post = |path: &str, body: Value| http.post(s.url(path)).json(&body).send();

    let resp = post("/admin/users", json!({"displayName": 5})).await.unwrap();
    assert_eq!(resp.status(), 400);
    let resp = post("/admin/users", json!({"shoeSize": 42})).await.unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("shoeSize"));
    assert_eq!(post("/admin/users", json!({"id": "not-a-guid"})).await.unwrap().status(), 400);
    assert_eq!(http.post(s.url("/admin/users")).body("{").send().await.unwrap().status(), 400);

    let missing = Uuid::new_v4();
    let resp = post("/admin/groups", json!({"displayName": "g", "members": [missing.to_string()]})).await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(post("/admin/groups", json!({"mailNickname": "has space"})).await.unwrap().status(), 400);

    let u = s.user("u").await;
    assert_eq!(
        s.admin.create_user(&NewUser { id: Some(u), ..Default::default() }).await.unwrap_err().status(),
        Some(409)
    );
    let g = s.group("g", false, &[]).await;
    assert_eq!(s.admin.add_members(g, &[missing]).await.unwrap_err().status(), Some(404));
    assert_eq!(s.admin.add_members(g, &[g]).await.unwrap_err().status(), Some(400));
    assert_eq!(s.admin.remove_member(g, u).await.unwrap_err().status(), Some(404));
    assert_eq!(s.admin.get_user(missing).await.unwrap_err().status(), Some(404));
    assert_eq!(http.get(s.url("/admin/users/xyz")).send().await.unwrap().status(), 400);
    let err = s
        .admin
        .update_group(g, &GroupFields { visibility: Some("Secret".into()), ..Default::default() }, &[])
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert_eq!(s.admin.update_user(u, &UserFields::default(), &["nope"]).await.unwrap_err().status(), Some(400));

    s.admin.delete_user(u, false).await.unwrap();
    assert_eq!(s.admin.add_members(g, &[u]).await.unwrap_err().status(), Some(400), "deleted users cannot join");
    assert_eq!(s.admin.delete_user(u, false).await.unwrap_err().status(), Some(404));

    let bad_fault = post("/admin/faults", json!([{"match": "groups/delta", "kind": "explode"}])).await.unwrap();
    assert_eq!(bad_fault.status(), 400);
    let bad_settings =
        http.patch(s.url("/admin/settings")).json(&json!({"paging": {"maxObjectsPerPage": 0}})).send().await.unwrap();
    assert_eq!(bad_settings.status(), 400);
    let bad_gen = post("/admin/generate", json!({"users": 1, "groups": 1, "membersPerGroup": 2})).await.unwrap();
    assert_eq!(bad_gen.status(), 400);
}

#[tokio::test]
async fn stats_count_requests_by_endpoint_and_status() {
    let s = sim().await;
    s.get(&s.url("/v1.0/groups/delta")).await;
    s.http.get(s.url("/v1.0/groups/delta")).send().await.unwrap();
    let resp = s.get(&s.url("/v1.0/nothing")).await;
    assert_eq!(resp.status(), 400);
    let stats = s.admin.stats().await.unwrap();
    let count = |endpoint: &str, status: u16| {
        stats.requests.iter().find(|r| r.endpoint == endpoint && r.status == status).map_or(0, |r| r.count)
    };
    assert_eq!(count("/v1.0/groups/delta", 200), 1);
    assert_eq!(count("/v1.0/groups/delta", 401), 1);
    assert_eq!(count("/{tenant}/oauth2/v2.0/token", 200), 1);
    assert_eq!(count("unmatched", 400), 1);
    assert_eq!(stats.access_tokens_issued, 1);
}
