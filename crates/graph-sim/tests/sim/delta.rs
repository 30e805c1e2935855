use std::collections::BTreeSet;

use graph_sim::{
    GroupFields, NewDirectoryObject, NewGroup, NewUser, ObjectKind, Seed, UserFields, WritebackConfiguration,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::common::{error_code, paging, sim, sim_with};

fn ids(set: &[Uuid]) -> BTreeSet<String> {
    set.iter().map(Uuid::to_string).collect()
}

#[tokio::test]
async fn initial_round_pages_and_member_slices() {
    let s = sim_with(paging(2, 5, 500, Some(2))).await;
    let users: Vec<NewUser> = (0..1200)
        .map(|i| NewUser {
            id: Some(Uuid::new_v4()),
            fields: UserFields { display_name: Some(format!("user {i}")), ..Default::default() },
        })
        .collect();
    let user_ids: Vec<Uuid> = users.iter().filter_map(|u| u.id).collect();
    let mut groups: Vec<NewGroup> = (0..12)
        .map(|i| NewGroup {
            id: Some(Uuid::new_v4()),
            fields: GroupFields { display_name: Some(format!("group {i}")), ..Default::default() },
            members: user_ids[i * 3..i * 3 + 3].to_vec(),
        })
        .collect();
    let big = Uuid::new_v4();
    groups.push(NewGroup {
        id: Some(big),
        fields: GroupFields { display_name: Some("big".into()), ..Default::default() },
        members: user_ids.clone(),
    });
    let empty = Uuid::new_v4();
    groups.push(NewGroup {
        id: Some(empty),
        fields: GroupFields { display_name: Some("empty".into()), ..Default::default() },
        members: vec![],
    });
    let seeded = s.admin.seed(&Seed { users, groups: groups.clone(), objects: vec![] }).await.unwrap();
    assert_eq!(seeded.memberships, 1200 + 36);

    let round = s.round(&s.url("/v1.0/groups/delta?$select=displayName,members")).await;
    let first_ctx = round.pages[0]["@odata.context"].as_str().unwrap();
    assert!(first_ctx.ends_with("/v1.0/$metadata#groups(displayName,members)"), "{first_ctx}");
    assert!(round.pages[1]["@odata.context"].as_str().unwrap().ends_with("#groups"));
    assert!(round.delta_link.starts_with(&s.url("/v1.0/groups/delta?$deltatoken=")));
    for p in &round.pages[..round.pages.len() - 1] {
        assert!(p["@odata.nextLink"].as_str().unwrap().starts_with(&s.url("/v1.0/groups/delta?$skiptoken=")));
    }
    let empties = round.pages.iter().filter(|p| p["value"].as_array().unwrap().is_empty()).count();
    assert!(empties >= 2, "empty pages with a nextLink appear when configured");
    assert!(round.pages.iter().all(|p| p["value"].as_array().unwrap().len() <= 5));

    let merged = round.merged();
    assert_eq!(merged.len(), 14, "every group arrives");
    let b = &merged[&big.to_string()];
    assert_eq!(b.occurrences, 3, "1200 members in slices of 500 repeat the group");
    assert_eq!(b.added_members, ids(&user_ids));
    assert_eq!(b.props["displayName"], "big");
    // Every repetition carries the same property values.
    let copies: Vec<Value> = round.objects().into_iter().filter(|o| o["id"] == big.to_string()).collect();
    assert!(copies.iter().all(|c| c["displayName"] == "big"));
    assert!(copies.iter().all(|c| c["members@delta"].as_array().unwrap().len() <= 500));
    let e = round.objects().into_iter().find(|o| o["id"] == empty.to_string()).unwrap();
    assert!(e.get("members@delta").is_none(), "empty groups have no members@delta");
    for g in &groups[..12] {
        assert_eq!(merged[&g.id.unwrap().to_string()].added_members, ids(&g.members));
    }
    assert!(merged.values().all(|m| !m.props.contains_key("description")));
}

#[tokio::test]
async fn no_select_returns_defaults_and_members() {
    let s = sim().await;
    let u = s.user("ann").await;
    let g = s.group("team", false, &[u]).await;
    let round = s.round(&s.url("/v1.0/groups/delta")).await;
    let o = &round.objects()[0];
    assert_eq!(o["id"], g.to_string());
    assert_eq!(o["displayName"], "team");
    assert_eq!(o["securityEnabled"], true);
    assert_eq!(o["groupTypes"], json!([]));
    assert!(o["securityIdentifier"].as_str().unwrap().starts_with("S-1-12-1-"));
    assert!(o.get("writebackConfiguration").is_none());
    assert!(o.get("description").is_none(), "never-set properties are omitted");
    assert_eq!(o["members@delta"], json!([{"@odata.type": "#microsoft.graph.user", "id": u.to_string()}]));
    assert!(round.pages[0]["@odata.context"].as_str().unwrap().ends_with("/v1.0/$metadata#groups"));

    let users = s.round(&s.url("/v1.0/users/delta")).await.objects();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["userPrincipalName"], "ann@contoso.example");
}

#[tokio::test]
async fn incremental_membership_rename_and_unselected_changes() {
    let s = sim().await;
    let (a, b, c) = (s.user("a").await, s.user("b").await, s.user("c").await);
    let g1 = s.group("g1", false, &[a, b]).await;
    let g2 = s.group("g2", false, &[a]).await;
    let g3 = s.group("g3", false, &[]).await;
    let first = s.round(&s.url("/v1.0/groups/delta?$select=displayName,members")).await;
    assert_eq!(first.merged().len(), 3);

    s.admin.add_members(g1, &[c]).await.unwrap();
    s.admin.remove_member(g1, b).await.unwrap();
    s.admin
        .update_group(g2, &GroupFields { display_name: Some("g2 renamed".into()), ..Default::default() }, &[])
        .await
        .unwrap();
    s.admin
        .update_group(g3, &GroupFields { description: Some("unselected".into()), ..Default::default() }, &[])
        .await
        .unwrap();

    let second = s.round(&first.delta_link).await;
    let m = second.merged();
    assert_eq!(m.len(), 2, "the description change of g3 is not tracked: {m:?}");
    let m1 = &m[&g1.to_string()];
    assert_eq!(m1.added_members, ids(&[c]));
    assert_eq!(m1.removed_members, ids(&[b]));
    assert_eq!(m1.props["displayName"], "g1", "without Prefer, current values of selected properties");
    let m2 = &m[&g2.to_string()];
    assert_eq!(m2.props["displayName"], "g2 renamed");
    assert!(m2.added_members.is_empty() && m2.removed_members.is_empty());
    assert!(!m2.props.contains_key("description"));

    let third = s.round(&second.delta_link).await;
    assert!(third.objects().is_empty(), "nothing changed since");
}

/// A client that crashed before storing a round's deltaLink replays the previous one.
/// A group created after that token comes back whole, and a link it had in the lost
/// round but lost since must come back as removed, or the client keeps it forever.
#[tokio::test]
async fn replayed_token_reports_links_removed_from_a_new_group() {
    let s = sim().await;
    let (a, b, c) = (s.user("a").await, s.user("b").await, s.user("c").await);
    let first = s.round(&s.url("/v1.0/groups/delta?$select=displayName,members")).await;
    let g = s.group("g", false, &[a, b]).await;
    // The lost round: the client saw g with a and b, then crashed before storing it.
    let lost = s.round(&first.delta_link).await;
    assert_eq!(lost.merged()[&g.to_string()].added_members, ids(&[a, b]));
    s.admin.remove_member(g, a).await.unwrap();
    s.admin.add_members(g, &[c]).await.unwrap();
    let replay = s.round(&first.delta_link).await;
    let m = &replay.merged()[&g.to_string()];
    assert_eq!(m.added_members, ids(&[b, c]));
    assert_eq!(m.removed_members, ids(&[a]), "the link removed after the token is reported");
    // A link added and removed after the token is reported removed too (harmless).
    let h = s.group("h", false, &[a]).await;
    s.admin.remove_member(h, a).await.unwrap();
    let next = s.round(&replay.delta_link).await;
    let m = &next.merged()[&h.to_string()];
    assert!(m.added_members.is_empty());
    assert_eq!(m.removed_members, ids(&[a]));
}

#[tokio::test]
async fn prefer_minimal_sends_only_changed_properties() {
    let s = sim().await;
    let g = s.group("g", false, &[]).await;
    s.admin.update_group(g, &GroupFields { description: Some("d".into()), ..Default::default() }, &[]).await.unwrap();
    let first = s.round(&s.url("/v1.0/groups/delta?$select=displayName,description,mailNickname")).await;
    s.admin
        .update_group(g, &GroupFields { display_name: Some("g2".into()), ..Default::default() }, &["description"])
        .await
        .unwrap();
    let minimal = [("Prefer", "return=minimal")];
    let resp = s.get_with(&first.delta_link, &minimal).await;
    assert_eq!(resp.headers()["preference-applied"], "return=minimal");
    let page: Value = resp.json().await.unwrap();
    assert_eq!(
        page["value"],
        json!([{"id": g.to_string(), "displayName": "g2", "description": null}]),
        "only changed properties, nulls as null"
    );
    let full = s.round(&first.delta_link).await.objects();
    assert_eq!(full[0]["mailNickname"], "g");
    assert_eq!(full[0]["description"], Value::Null, "a property set to null is sent as null");
}

#[tokio::test]
async fn user_soft_and_hard_delete() {
    let s = sim().await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    let g = s.group("g", false, &[a, b]).await;
    let groups = s.round(&s.url("/v1.0/groups/delta?$select=displayName,members")).await;
    let users = s.round(&s.url("/v1.0/users/delta?$select=displayName")).await;

    s.admin.delete_user(a, false).await.unwrap();
    let groups2 = s.round(&groups.delta_link).await;
    assert!(groups2.objects().is_empty(), "a soft-deleted user keeps its memberships and shows no group delta");
    let users2 = s.round(&users.delta_link).await;
    assert_eq!(users2.objects(), vec![json!({"id": a.to_string(), "@removed": {"reason": "changed"}})]);
    assert_eq!(s.admin.get_group(g, false).await.unwrap().member_count, 2);

    s.admin.delete_user(a, true).await.unwrap();
    let groups3 = s.round(&groups2.delta_link).await;
    let m = groups3.merged();
    assert_eq!(m[&g.to_string()].removed_members, ids(&[a]), "a hard-deleted user drops out of its groups");
    let users3 = s.round(&users2.delta_link).await;
    assert_eq!(users3.objects(), vec![json!({"id": a.to_string(), "@removed": {"reason": "deleted"}})]);
    assert_eq!(s.admin.get_group(g, false).await.unwrap().member_count, 1);
}

#[tokio::test]
async fn user_restore_looks_like_create() {
    let s = sim().await;
    let a = s.user("a").await;
    let users = s.round(&s.url("/v1.0/users/delta")).await;
    s.admin.delete_user(a, false).await.unwrap();
    s.admin.restore_user(a).await.unwrap();
    let next = s.round(&users.delta_link).await.objects();
    assert_eq!(next.len(), 1);
    assert!(next[0].get("@removed").is_none());
    assert_eq!(next[0]["displayName"], "a");
}

#[tokio::test]
async fn group_soft_hard_delete_and_restore() {
    let s = sim().await;
    let u = s.user("u").await;
    let m365 = s.group("m365", true, &[u]).await;
    let sec = s.group("sec", false, &[u]).await;
    let doomed = s.group("doomed", true, &[]).await;
    let first = s.round(&s.url("/v1.0/groups/delta?$select=displayName,groupTypes,members")).await;

    s.admin.delete_group(m365, false).await.unwrap();
    s.admin.delete_group(sec, false).await.unwrap();
    s.admin.delete_group(doomed, true).await.unwrap();
    let second = s.round(&first.delta_link).await;
    let m = second.merged();
    assert_eq!(m[&m365.to_string()].removed.as_deref(), Some("changed"));
    assert_eq!(m[&sec.to_string()].removed.as_deref(), Some("deleted"));
    assert_eq!(m[&doomed.to_string()].removed.as_deref(), Some("deleted"));
    for o in second.objects() {
        assert_eq!(o.as_object().unwrap().len(), 2, "removed objects carry only id and @removed: {o}");
    }

    s.admin.restore_group(m365).await.unwrap();
    let third = s.round(&second.delta_link).await;
    let objs = third.objects();
    assert_eq!(objs.len(), 1);
    assert!(objs[0].get("@removed").is_none(), "a restore looks like a create");
    assert_eq!(objs[0]["displayName"], "m365");
    assert_eq!(third.merged()[&m365.to_string()].added_members, ids(&[u]));

    s.admin.delete_group(m365, false).await.unwrap();
    s.admin.delete_group(m365, true).await.unwrap();
    let fourth = s.round(&third.delta_link).await;
    assert_eq!(fourth.merged()[&m365.to_string()].removed.as_deref(), Some("deleted"));
    assert!(s.admin.restore_group(sec).await.is_err());
}

#[tokio::test]
async fn select_is_respected_for_users() {
    let s = sim().await;
    let u = s
        .admin
        .create_user(&NewUser {
            id: None,
            fields: UserFields {
                display_name: Some("Ann".into()),
                mail: Some("ann@contoso.example".into()),
                account_enabled: Some(true),
                on_premises_security_identifier: Some("S-1-5-21-1-2-3-1104".into()),
                on_premises_sync_enabled: Some(true),
                ..Default::default()
            },
        })
        .await
        .unwrap()
        .user
        .id;
    let plain = s.round(&s.url("/v1.0/users/delta")).await.objects();
    assert!(plain[0].get("onPremisesSecurityIdentifier").is_none(), "onPremises* only on $select");
    assert!(plain[0].get("accountEnabled").is_none());

    let first = s
        .round(&s.url("/v1.0/users/delta?$select=displayName,onPremisesSecurityIdentifier,onPremisesSyncEnabled"))
        .await;
    let o = &first.objects()[0];
    assert_eq!(o["onPremisesSecurityIdentifier"], "S-1-5-21-1-2-3-1104");
    assert!(o.get("mail").is_none(), "only selected properties are returned");

    s.admin
        .update_user(u, &UserFields { mail: Some("new@contoso.example".into()), ..Default::default() }, &[])
        .await
        .unwrap();
    let second = s.round(&first.delta_link).await;
    assert!(second.objects().is_empty(), "a change to an unselected property does not bring the object back");

    s.admin
        .update_user(u, &UserFields { on_premises_sync_enabled: Some(false), ..Default::default() }, &[])
        .await
        .unwrap();
    let third = s.round(&second.delta_link).await.objects();
    assert_eq!(third.len(), 1);
    assert_eq!(third[0]["onPremisesSyncEnabled"], false);
    assert_eq!(third[0]["displayName"], "Ann");
}

#[tokio::test]
async fn delta_token_latest_starts_from_now() {
    let s = sim().await;
    s.group("old", false, &[]).await;
    let resp = s.get(&s.url("/v1.0/groups/delta?$select=displayName&$deltatoken=latest")).await;
    let page: Value = resp.json().await.unwrap();
    assert_eq!(page["value"], json!([]));
    assert!(page.get("@odata.nextLink").is_none());
    let link = page["@odata.deltaLink"].as_str().unwrap().to_owned();
    let fresh = s.group("new", false, &[]).await;
    let objs = s.round(&link).await.objects();
    assert_eq!(objs, vec![json!({"id": fresh.to_string(), "displayName": "new"})]);
}

#[tokio::test]
async fn filter_by_id_and_unsupported_options() {
    let s = sim().await;
    let mut gs = Vec::new();
    for i in 0..5 {
        gs.push(s.group(&format!("g{i}"), false, &[]).await);
    }
    let url = s.url(&format!(
        "/v1.0/groups/delta?$select=displayName&$filter=id%20eq%20'{}'%20or%20id%20eq%20'{}'",
        gs[1], gs[3]
    ));
    let first = s.round(&url).await;
    assert_eq!(first.merged().keys().cloned().collect::<BTreeSet<_>>(), ids(&[gs[1], gs[3]]));
    for g in &gs {
        s.admin
            .update_group(*g, &GroupFields { display_name: Some(format!("{g}!")), ..Default::default() }, &[])
            .await
            .unwrap();
    }
    let second = s.round(&first.delta_link).await;
    assert_eq!(second.merged().keys().cloned().collect::<BTreeSet<_>>(), ids(&[gs[1], gs[3]]), "filter kept");

    let many: Vec<String> = (0..51).map(|_| format!("id eq '{}'", Uuid::new_v4())).collect();
    let too_many = s.url(&format!("/v1.0/groups/delta?$filter={}", many.join(" or ")));
    assert_eq!(error_code(s.get(&too_many).await).await.0, 400);
    for bad in [
        "$top=5",
        "$orderby=displayName",
        "$expand=members",
        "$filter=displayName eq 'x'",
        "$select=nonsense",
        "$select=writebackConfiguration",
    ] {
        let (status, code, _) = error_code(s.get(&s.url(&format!("/v1.0/groups/delta?{bad}"))).await).await;
        assert_eq!((status, code.as_str()), (400, "invalidRequest"), "{bad}");
    }
    let (status, code, _) = error_code(s.get(&s.url("/v1.0/groups/delta?$skiptoken=garbage")).await).await;
    assert_eq!((status, code.as_str()), (400, "invalidRequest"));
}

#[tokio::test]
async fn beta_writeback_configuration_and_alias_paths() {
    let s = sim().await;
    let g = s
        .admin
        .create_group(&NewGroup {
            fields: GroupFields {
                display_name: Some("wb".into()),
                group_types: Some(vec!["Unified".into()]),
                writeback_configuration: Some(WritebackConfiguration {
                    is_enabled: Some(true),
                    on_premises_group_type: Some("universalSecurityGroup".into()),
                }),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap()
        .group
        .id;
    let round = s.round(&s.url("/beta/groups/microsoft.graph.delta?$select=displayName,writebackConfiguration")).await;
    assert!(round.delta_link.starts_with(&s.url("/beta/groups/microsoft.graph.delta?$deltatoken=")));
    assert!(round.pages[0]["@odata.context"].as_str().unwrap().contains("/beta/$metadata#groups("));
    let o = &round.objects()[0];
    assert_eq!(o["id"], g.to_string());
    assert_eq!(
        o["writebackConfiguration"],
        json!({
            "@odata.type": "#microsoft.graph.groupWritebackConfiguration",
            "isEnabled": true,
            "onPremisesGroupType": "universalSecurityGroup"
        })
    );
    let plain = s.round(&s.url("/beta/groups/delta")).await.objects();
    assert!(plain[0].get("writebackConfiguration").is_none(), "returned only when selected");
}

#[tokio::test]
async fn non_user_members_carry_their_type() {
    let s = sim().await;
    let device = s.admin.create_object(&NewDirectoryObject { id: None, kind: ObjectKind::Device }).await.unwrap().id;
    let inner = s.group("inner", false, &[]).await;
    let outer = s.group("outer", false, &[device, inner]).await;
    let round = s.round(&s.url("/v1.0/groups/delta?$select=members")).await;
    let o = round.objects().into_iter().find(|o| o["id"] == outer.to_string()).unwrap();
    let mut types: Vec<String> =
        o["members@delta"].as_array().unwrap().iter().map(|m| m["@odata.type"].as_str().unwrap().to_owned()).collect();
    types.sort();
    assert_eq!(types, vec!["#microsoft.graph.device", "#microsoft.graph.group"]);
    s.admin.delete_object(device).await.unwrap();
    let next = s.round(&round.delta_link).await.merged();
    assert_eq!(next[&outer.to_string()].removed_members, ids(&[device]));
}

#[tokio::test]
async fn expired_or_foreign_delta_tokens_need_a_full_sync() {
    let s = sim().await;
    s.group("g", false, &[]).await;
    let first = s.round(&s.url("/v1.0/groups/delta")).await;
    s.admin
        .update_settings(&graph_sim::SettingsPatch { delta_token_lifetime_ms: Some(1), ..Default::default() })
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    let (status, code, _) = error_code(s.get(&first.delta_link).await).await;
    assert_eq!((status, code.as_str()), (400, "syncStateNotFound"));

    s.admin
        .update_settings(&graph_sim::SettingsPatch { delta_token_lifetime_ms: Some(60_000), ..Default::default() })
        .await
        .unwrap();
    let second = s.round(&s.url("/v1.0/groups/delta")).await;
    s.admin.reset().await.unwrap();
    let (status, code, _) = error_code(s.get(&second.delta_link).await).await;
    assert_eq!((status, code.as_str()), (400, "syncStateNotFound"), "tokens of a reset tenant are refused");
    // A users token on the groups collection is a client error.
    let users = s.round(&s.url("/v1.0/users/delta")).await;
    let swapped = users.delta_link.replace("/users/", "/groups/");
    assert_eq!(error_code(s.get(&swapped).await).await.0, 400);
}

#[tokio::test]
async fn unknown_or_expired_skiptoken() {
    let s = sim_with(paging(1, 1, 500, None)).await;
    s.group("a", false, &[]).await;
    s.group("b", false, &[]).await;
    let page: Value = s.get(&s.url("/v1.0/groups/delta")).await.json().await.unwrap();
    let next = page["@odata.nextLink"].as_str().unwrap().to_owned();
    // A page can be fetched again (a client retries after a 429).
    let again: Value = s.get(&next).await.json().await.unwrap();
    let twice: Value = s.get(&next).await.json().await.unwrap();
    assert_eq!(again["value"], twice["value"]);
    s.admin.update_settings(&graph_sim::SettingsPatch { round_ttl_secs: Some(0), ..Default::default() }).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (status, code, body) = error_code(s.get(&next).await).await;
    assert_eq!((status, code.as_str()), (400, "syncStateNotFound"), "{body}");
}

#[tokio::test]
async fn generator_builds_100k_memberships_fast() {
    let s = sim_with(paging(50, 100, 500, None)).await;
    let started = std::time::Instant::now();
    let r = s
        .admin
        .generate(&graph_sim::GenerateSpec {
            users: 20_000,
            groups: 10,
            members_per_group: 10_000,
            sid_prefix: Some("S-1-5-21-1004336348-1177238915-682003330".into()),
            synced_percent: 90,
            seed: Some(7),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.memberships, 100_000);
    assert!(started.elapsed().as_secs() < 10, "generation took {:?}", started.elapsed());
    let stats = s.admin.stats().await.unwrap();
    assert_eq!((stats.users.active, stats.groups.active, stats.memberships), (20_000, 10, 100_000));

    let round = s.round(&s.url("/v1.0/groups/delta?$select=displayName,members")).await;
    let merged = round.merged();
    assert_eq!(merged.len(), 10);
    assert!(merged.values().all(|m| m.added_members.len() == 10_000 && m.occurrences == 20));

    let users = s.round(&s.url("/v1.0/users/delta?$select=onPremisesSecurityIdentifier")).await.objects();
    assert_eq!(users.len(), 20_000);
    let synced = users.iter().filter(|u| u.get("onPremisesSecurityIdentifier").is_some()).count();
    assert_eq!(synced, 18_000);
}

#[tokio::test]
async fn select_on_a_delta_link_and_soft_deleted_in_initial_sync() {
    let s = sim().await;
    let g = s.group("m", true, &[]).await;
    let first = s.round(&s.url("/v1.0/groups/delta?$select=displayName")).await;
    s.admin
        .update_group(g, &GroupFields { description: Some("now tracked".into()), ..Default::default() }, &[])
        .await
        .unwrap();
    let widened = s.round(&format!("{}&$select=displayName,description", first.delta_link)).await.objects();
    assert_eq!(widened, vec![json!({"id": g.to_string(), "displayName": "m", "description": "now tracked"})]);

    s.admin.delete_group(g, false).await.unwrap();
    let plain = s.round(&s.url("/v1.0/groups/delta?$deltaToken=")).await;
    assert!(plain.objects().is_empty(), "by default objects deleted before the initial sync are not returned");
    s.admin
        .update_settings(&graph_sim::SettingsPatch { soft_deleted_in_initial_sync: Some(true), ..Default::default() })
        .await
        .unwrap();
    let with_soft = s.round(&s.url("/v1.0/groups/delta")).await.objects();
    assert_eq!(with_soft, vec![json!({"id": g.to_string(), "@removed": {"reason": "changed"}})]);
}

#[tokio::test]
async fn generator_adds_a_large_group_beyond_the_user_count() {
    let s = sim_with(paging(50, 100, 500, None)).await;
    let r = s
        .admin
        .generate(&graph_sim::GenerateSpec {
            users: 100,
            groups: 10,
            members_per_group: 5,
            large_groups: vec![2_500],
            seed: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((r.users, r.groups, r.memberships), (2_500, 11, 10 * 5 + 2_500));
    let round = s.round(&s.url("/v1.0/groups/delta?$select=displayName,members")).await;
    let merged = round.merged();
    let large = merged.get(&r.group_ids[10].to_string()).unwrap();
    assert_eq!(large.added_members.len(), 2_500);
    assert!(large.occurrences >= 5, "2,500 members in slices of 500");
}
