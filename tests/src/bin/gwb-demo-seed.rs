//! Seeds the demo: sample users in the lab AD, the same users (synced, with their real
//! AD SIDs) plus cloud-only users and sample groups in graph-sim. Idempotent enough for
//! a demo: re-running reuses the AD users and OUs that already exist.
//!
//! Usage: gwb-demo-seed <graph-sim base URL> <target OU name>   (env: GWB_LAB_*)

use anyhow::Context;
use graph_sim::{AdminClient, GroupFields, NewGroup, NewUser, UserFields, WritebackConfiguration};
use gwb_tests::ad::LabAd;

const SYNCED_USERS: &[&str] =
    &["Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra", "Barbara Liskov", "Ken Thompson"];
const CLOUD_ONLY: &[&str] = &["Guest Contractor", "Cloud Only Intern"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = std::env::args().skip(1);
    let sim_url = args.next().context("usage: gwb-demo-seed <graph-sim URL> <target OU name>")?;
    let target_ou = args.next().unwrap_or_else(|| "Cloud Groups".into());
    let ad = LabAd::from_env().await?;
    let users_ou = ad.create_ou("Demo Users").await?;
    let groups_ou = ad.create_ou(&target_ou).await?;
    let sim = AdminClient::new(sim_url)?;

    let mut synced = Vec::new();
    for name in SYNCED_USERS {
        let sam = name.split(' ').map(|p| p.chars().next().unwrap_or('x')).collect::<String>().to_lowercase()
            + &name.split(' ').next_back().unwrap_or("").to_lowercase();
        let dn = format!("CN={name},{users_ou}");
        let sid = match ad.entry(&dn, &["objectSid"]).await? {
            Some(entry) => gwb_tests::ad::binary(&entry, "objectSid")
                .and_then(|b| gwb_tests::ad::sid_from_bytes(&b))
                .context("objectSid")?,
            None => ad.create_user(&users_ou, name).await?.1,
        };
        let user = sim
            .create_user(&NewUser {
                id: None,
                fields: UserFields {
                    display_name: Some(name.to_string()),
                    user_principal_name: Some(format!("{sam}@lab.example")),
                    on_premises_security_identifier: Some(sid.clone()),
                    on_premises_sync_enabled: Some(true),
                    on_premises_distinguished_name: Some(dn.clone()),
                    ..UserFields::default()
                },
            })
            .await?;
        println!("synced user   {name:<18} {sid}");
        synced.push(user.user.id);
    }
    let mut cloud = Vec::new();
    for name in CLOUD_ONLY {
        let user = sim
            .create_user(&NewUser {
                id: None,
                fields: UserFields {
                    display_name: Some(name.to_string()),
                    user_principal_name: Some(format!("{}@contoso.onmicrosoft.com", name.replace(' ', "."))),
                    ..UserFields::default()
                },
            })
            .await?;
        println!("cloud user    {name}");
        cloud.push(user.user.id);
    }
    let security = |name: &str, description: &str| GroupFields {
        display_name: Some(name.into()),
        description: Some(description.into()),
        mail_enabled: Some(false),
        security_enabled: Some(true),
        group_types: Some(vec![]),
        ..GroupFields::default()
    };
    let engineering = sim
        .create_group(&NewGroup {
            id: None,
            fields: security("Engineering", "Everyone building the product"),
            members: vec![synced[1], synced[3], synced[5], cloud[1]],
        })
        .await?
        .group
        .id;
    let finance = sim
        .create_group(&NewGroup {
            id: None,
            fields: security("Finance, Risk & Audit", "Finance share access"),
            members: vec![synced[0], synced[2], cloud[0]],
        })
        .await?
        .group
        .id;
    sim.create_group(&NewGroup {
        id: None,
        fields: security("All Staff", "Nests the other groups"),
        members: vec![engineering, finance, synced[4]],
    })
    .await?;
    sim.create_group(&NewGroup {
        id: None,
        fields: GroupFields {
            display_name: Some("Marketing Team".into()),
            mail_nickname: Some("marketing".into()),
            mail: Some("marketing@contoso.com".into()),
            mail_enabled: Some(true),
            security_enabled: Some(false),
            group_types: Some(vec!["Unified".into()]),
            // As Exchange Online lists them: the primary, a secondary, the routing address
            // (targetAddress comes from it), the initial address, an X500 and an SPO:
            // address (not written back).
            proxy_addresses: Some(vec![
                "SMTP:marketing@contoso.com".into(),
                "smtp:mkt@contoso.com".into(),
                "smtp:marketing@contoso.mail.onmicrosoft.com".into(),
                "smtp:marketing@contoso.onmicrosoft.com".into(),
                "X500:/o=ExchangeLabs/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Recipients/cn=marketing"
                    .into(),
                "SPO:SPO_5b7a0c4e-1111-2222-3333-444455556666@SPO_11111111-2222-3333-4444-555555555555".into(),
            ]),
            writeback_configuration: Some(WritebackConfiguration {
                is_enabled: Some(true),
                on_premises_group_type: None,
            }),
            ..GroupFields::default()
        },
        members: vec![synced[0], synced[4]],
    })
    .await?;
    println!("groups        Engineering, Finance, Risk & Audit, All Staff (nested), Marketing Team (Microsoft 365)");
    println!("target OU     {groups_ou}");
    Ok(())
}
