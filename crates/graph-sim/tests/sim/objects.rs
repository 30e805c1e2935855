//! One group by id and JSON batching: how a client reads `writebackConfiguration` when
//! a delta query's `$select` may not carry it (`refuseWritebackInDelta`).

use graph_sim::SettingsPatch;
use serde_json::{Value, json};

use crate::common::{error_code, sim};

#[tokio::test]
async fn groups_are_read_by_id_and_in_batches_of_at_most_twenty() {
    let s = sim().await;
    let group = s.group("Sales", false, &[]).await;
    let resp = s.get(&s.url(&format!("/beta/groups/{group}?$select=id,writebackConfiguration"))).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["id"], group.to_string());
    assert!(body.as_object().unwrap().contains_key("writebackConfiguration"), "{body}");
    assert!(!body.as_object().unwrap().contains_key("displayName"), "only what was selected: {body}");
    let missing = s.get(&s.url(&format!("/beta/groups/{}", uuid::Uuid::new_v4()))).await;
    assert_eq!(missing.status(), 404);

    let batch = |requests: Vec<Value>| {
        s.http.post(s.url("/beta/$batch")).bearer_auth(&s.token).json(&json!({ "requests": requests })).send()
    };
    let one = |id: &str, url: String| json!({ "id": id, "method": "GET", "url": url });
    let resp = batch(vec![
        one("1", format!("/groups/{group}?$select=id,writebackConfiguration")),
        one("2", format!("/groups/{}", uuid::Uuid::new_v4())),
    ])
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let responses = body["responses"].as_array().unwrap();
    assert_eq!((responses[0]["id"].clone(), responses[0]["status"].clone()), (json!("1"), json!(200)));
    assert_eq!(responses[0]["body"]["id"], group.to_string());
    assert_eq!((responses[1]["id"].clone(), responses[1]["status"].clone()), (json!("2"), json!(404)));
    let too_many = (0..21).map(|n| one(&n.to_string(), format!("/groups/{group}"))).collect();
    assert_eq!(batch(too_many).await.unwrap().status(), 400);
}

#[tokio::test]
async fn a_delta_select_of_writeback_configuration_can_be_refused() {
    let s = sim().await;
    let url = s.url("/beta/groups/delta?$select=id,displayName,writebackConfiguration");
    assert_eq!(s.get(&url).await.status(), 200);
    s.admin
        .update_settings(&SettingsPatch { refuse_writeback_in_delta: Some(true), ..Default::default() })
        .await
        .unwrap();
    let (status, _, body) = error_code(s.get(&url).await).await;
    assert_eq!(status, 400);
    assert!(body.to_string().contains("writebackConfiguration"), "{body}");
    assert_eq!(s.get(&s.url("/beta/groups/delta?$select=id,displayName")).await.status(), 200);
}

#[tokio::test]
async fn get_by_ids_types_objects_and_member_links_may_come_without_a_type() {
    let s = sim().await;
    let user = s.user("Alice").await;
    let group = s.group("Team", false, &[user]).await;
    s.admin.update_settings(&SettingsPatch { omit_member_types: Some(true), ..Default::default() }).await.unwrap();
    let round = s.round(&s.url("/v1.0/groups/delta")).await;
    let links: Vec<Value> = round.objects().iter().filter_map(|o| o.get("members@delta").cloned()).collect();
    assert!(links.iter().flat_map(|l| l.as_array().unwrap()).all(|m| m.get("@odata.type").is_none()), "{links:?}");
    let resp = s
        .http
        .post(s.url("/v1.0/directoryObjects/getByIds"))
        .bearer_auth(&s.token)
        .json(&json!({ "ids": [user.to_string(), group.to_string(), uuid::Uuid::new_v4().to_string()] }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let types: Vec<&str> =
        body["value"].as_array().unwrap().iter().map(|o| o["@odata.type"].as_str().unwrap()).collect();
    assert_eq!(types, ["#microsoft.graph.user", "#microsoft.graph.group"], "unknown ids are left out");
}
