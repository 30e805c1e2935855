//! The writer run in-process against the real RabbitMQ and the lab Samba AD DC. Needs
//! the lab's env vars (`scripts/lab-ad.sh up test && source $(scripts/lab-ad.sh env
//! test)`, or `scripts/test.sh`) and the broker at `bus.url`'s default. Each test works
//! in its own OU under `OU=gwb-writer-tests` and its own bus namespace, and removes
//! both at the end.

// The lab helpers of the end-to-end test crate, shared rather than copied; not every
// helper is needed here.
#[allow(dead_code)]
#[path = "../../../tests/src/ad.rs"]
mod ad;

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::Duration;

use ad::LabAd;
use anyhow::{Context, anyhow, ensure};
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use gwb_bus::{BusConfig, Disposition, Message, Publisher, Route, Topology};
use gwb_core::command::{GroupSpec, GroupType, MemberRef, WriteCommand};
use gwb_core::naming;
use gwb_proto::commands::v1 as cmd;
use gwb_proto::control::v1 as pb;
use gwb_proto::convert::commands::{Envelope, command_to_wire};
use gwb_proto::message_types::{COMMAND_TYPE, OUTCOME_TYPE, WRITER_STATUS_TYPE};
use gwb_runtime::shutdown;

const TESTS_OU: &str = "gwb-writer-tests";

/// How long the writer may take for one command or one status report.
const WAIT: Duration = Duration::from_secs(30);

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// What the writer published on the outcomes route.
enum Published {
    Outcome(cmd::Outcome),
    Status(cmd::WriterStatus),
}

struct Lab {
    ad: LabAd,
    ou: String,
    dir: PathBuf,
    bus: BusConfig,
    publisher: Publisher,
    published: mpsc::UnboundedReceiver<Published>,
    /// Stops the outcomes consumer (dropping it would too, at once).
    consumer_stop: shutdown::ShutdownTrigger,
    sequence: u64,
}

impl Lab {
    async fn new(id: &str) -> anyhow::Result<Lab> {
        let ad = LabAd::from_env().await?;
        let parent = ad.create_ou(TESTS_OU).await?;
        let ou = ad.create_ou_in(&parent, &format!("t-{id}")).await?;
        let dir = std::env::temp_dir().join(format!("gwb-writer-test-{id}"));
        std::fs::create_dir_all(&dir)?;
        let bus = BusConfig { namespace: format!("gwbtest-writer-{id}"), command_partitions: 1, ..Default::default() };
        let publisher = Publisher::connect(bus.clone()).await?;
        let (sender, published) = mpsc::unbounded_channel();
        let (consumer_stop, consumer_shutdown) = shutdown::channel();
        tokio::spawn(gwb_bus::consume(
            bus.clone(),
            Topology::new(&bus).outcomes_queue(),
            consumer_shutdown,
            move |delivery| {
                let message = match delivery.kind.as_deref() {
                    Some(OUTCOME_TYPE) => {
                        cmd::Outcome::decode(delivery.payload.as_slice()).ok().map(Published::Outcome)
                    }
                    Some(WRITER_STATUS_TYPE) => {
                        cmd::WriterStatus::decode(delivery.payload.as_slice()).ok().map(Published::Status)
                    }
                    _ => None,
                };
                if let Some(message) = message {
                    let _ = sender.send(message);
                }
                async { Disposition::Ack }
            },
        ));
        Ok(Lab { ad, ou, dir, bus, publisher, published, consumer_stop, sequence: 0 })
    }

    fn config(&self, id: &str) -> anyhow::Result<gwb_writer::Config> {
        let password = self.dir.join("bind-password");
        std::fs::write(&password, self.ad.password())?;
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600))?;
        let toml = format!(
            "[directory]\nurl = \"{}\"\nca_file = \"{}\"\nbind_dn = \"{}\"\nbind_password_file = \"{}\"\n\
             managed_ous = [\"{}\"]\n\n[writer]\nid = \"writer-{id}\"\nstatus_interval_seconds = 1\n\n\
             [bus]\nnamespace = \"{}\"\ncommand_partitions = 1\n",
            self.ad.url,
            self.ad.ca_file.display(),
            self.ad.bind_dn,
            password.display(),
            self.ou,
            self.bus.namespace
        );
        let path = self.dir.join("gwb-writer.toml");
        std::fs::write(&path, toml)?;
        Ok(gwb_runtime::config::load_with_env(Some(&path), Vec::new())?)
    }

    async fn send(&mut self, group_id: &str, commands: &[cmd::WriteCommand]) -> anyhow::Result<()> {
        let batch: Vec<(Route, Message)> = commands
            .iter()
            .map(|command| {
                let message = Message {
                    id: command.command_id.clone(),
                    kind: COMMAND_TYPE,
                    payload: command.encode_to_vec(),
                    headers: Default::default(),
                    timestamp_ms: 0,
                };
                (Route::Command { partition: gwb_bus::partition_of(group_id, 1) }, message)
            })
            .collect();
        Ok(self.publisher.publish_all(&batch).await?)
    }

    fn command(&mut self, group_id: &str, command: &WriteCommand) -> cmd::WriteCommand {
        self.sequence += 1;
        let envelope = Envelope {
            command_id: format!("c-{}", self.sequence),
            group_id: group_id.into(),
            sequence: self.sequence,
            cause: "writer test".into(),
            ..Default::default()
        };
        command_to_wire(envelope, command)
    }

    /// The next outcome, skipping status reports.
    async fn outcome(&mut self) -> anyhow::Result<cmd::Outcome> {
        loop {
            match tokio::time::timeout(WAIT, self.published.recv()).await {
                Ok(Some(Published::Outcome(outcome))) => return Ok(outcome),
                Ok(Some(Published::Status(_))) => {}
                Ok(None) => return Err(anyhow!("the outcomes consumer stopped")),
                Err(_) => return Err(anyhow!("no outcome within {WAIT:?}")),
            }
        }
    }

    /// Whether an outcome arrives within `within`.
    async fn outcome_within(&mut self, within: Duration) -> Option<cmd::Outcome> {
        tokio::time::timeout(within, self.outcome()).await.ok().and_then(Result::ok)
    }

    /// The first status report that found the directory.
    async fn connected_status(&mut self) -> anyhow::Result<cmd::WriterStatus> {
        loop {
            match tokio::time::timeout(WAIT, self.published.recv()).await {
                Ok(Some(Published::Status(status))) if status.directory_connected => return Ok(status),
                Ok(Some(_)) => {}
                Ok(None) => return Err(anyhow!("the outcomes consumer stopped")),
                Err(_) => return Err(anyhow!("no connected status within {WAIT:?}")),
            }
        }
    }

    async fn clean_up(&self) {
        self.consumer_stop.trigger();
        let _ = self.ad.delete_subtree(&self.ou).await;
        let _ = gwb_bus::delete_topology(&self.bus).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spec(group_id: &str, cn: &str, ou: &str) -> GroupSpec {
    GroupSpec {
        object_id: group_id.into(),
        anchor: naming::anchor(group_id),
        cn: cn.into(),
        parent_dn: ou.into(),
        sam_account_name_candidates: vec![cn.into()],
        group_type: GroupType::UniversalSecurity,
        display_name: cn.into(),
        description: None,
        mail: None,
        on_premises_sid: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_writer_applies_commands_reports_and_obeys_pause() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let id = short_id();
    let mut lab = Lab::new(&id).await.expect("lab (RabbitMQ and the lab AD DC)");
    let result = scenario(&mut lab, &id).await;
    lab.clean_up().await;
    result.unwrap();
}

async fn scenario(lab: &mut Lab, id: &str) -> anyhow::Result<()> {
    let config = lab.config(id)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let control = listener.local_addr()?;
    let (stop, stopped) = shutdown::channel();
    let writer = tokio::spawn(gwb_writer::run(config, gwb_writer::Listeners { control: Some(listener) }, stopped));

    let status = lab.connected_status().await?;
    ensure!(status.writer_id == format!("writer-{id}") && !status.paused, "status: {status:?}");
    // What was found of Exchange travels with the status; the plain lab has none.
    let exchange = status.exchange.clone().unwrap_or_default();
    if std::env::var("GWB_LAB_EXCHANGE").unwrap_or_else(|_| "none".into()) == "none" {
        ensure!(exchange.description == "none" && !exchange.m365_writeback_allowed, "status: {status:?}");
        ensure!(exchange.m365_writeback_refusal.contains("no Exchange schema"), "status: {status:?}");
    } else {
        ensure!(!exchange.description.is_empty(), "status: {status:?}");
    }

    // A new group with a member: the upsert and the add arrive in one batch.
    let (_, sid) = lab.ad.create_user(&lab.ou, &format!("u-{id}")).await?;
    let group_id = uuid::Uuid::new_v4().to_string();
    let cn = format!("g-{id}");
    let upsert = lab.command(&group_id, &WriteCommand::Upsert(spec(&group_id, &cn, &lab.ou)));
    let anchor = naming::anchor(&group_id);
    let add = lab.command(
        &group_id,
        &WriteCommand::AddMembers { anchor: anchor.clone(), members: vec![MemberRef::Sid(sid.clone())] },
    );
    lab.send(&group_id, &[upsert, add]).await?;
    let first = lab.outcome().await?;
    let second = lab.outcome().await?;
    ensure!((first.kind.as_str(), second.kind.as_str()) == ("upsert", "add_members"), "outcomes: {first:?} {second:?}");
    for outcome in [&first, &second] {
        ensure!(outcome.status == cmd::OutcomeStatus::Applied as i32, "not applied: {outcome:?}");
        ensure!(outcome.writer_id == format!("writer-{id}") && outcome.completed_at_ms > 0, "{outcome:?}");
    }
    ensure!(second.members_added == 1, "the merged write's count goes to the add: {second:?}");
    let found = lab.ad.find_groups_by_anchor(&anchor).await?;
    ensure!(found.len() == 1, "groups with the anchor: {found:?}");
    let group = &found[0];
    ensure!(first.group.as_ref().is_some_and(|g| g.object_guid == group.guid), "{first:?} vs {group:?}");
    ensure!(lab.ad.member_sids(&group.dn).await?.contains(&sid), "{sid} is not a member of {}", group.dn);

    // A hostile member value is refused before the directory: a failed outcome.
    let mut hostile = lab.command(&group_id, &WriteCommand::Delete { anchor: anchor.clone() });
    hostile.action = Some(cmd::write_command::Action::AddMembers(cmd::MemberChange {
        members: vec![cmd::MemberRef { reference: Some(cmd::member_ref::Reference::Sid("S-1-5-21>;<GUID=x".into())) }],
    }));
    lab.send(&group_id, &[hostile]).await?;
    let refused = lab.outcome().await?;
    ensure!(refused.kind == "invalid" && refused.status == cmd::OutcomeStatus::Failed as i32, "{refused:?}");
    ensure!(refused.message.contains("neither a SID nor a GUID"), "{refused:?}");

    // Paused through the control API on the injected listener: commands wait.
    let mut client = pb::writer_client::WriterClient::connect(format!("http://{control}")).await?;
    let state = client.pause(pb::PauseRequest { reason: "maintenance".into() }).await?.into_inner();
    ensure!(state.paused && state.pause_reason == "maintenance", "{state:?}");
    let state = client.get_writer_state(pb::GetWriterStateRequest {}).await?.into_inner();
    ensure!(state.directory_connected && state.writer_id == format!("writer-{id}"), "{state:?}");
    let delete = lab.command(&group_id, &WriteCommand::Delete { anchor: anchor.clone() });
    lab.send(&group_id, &[delete]).await?;
    let early = lab.outcome_within(Duration::from_secs(3)).await;
    ensure!(early.is_none(), "applied while paused: {early:?}");
    ensure!(lab.ad.find_groups_by_anchor(&anchor).await?.len() == 1, "deleted while paused");
    let state = client.resume(pb::ResumeRequest {}).await?.into_inner();
    ensure!(!state.paused, "{state:?}");
    let deleted = lab.outcome().await?;
    ensure!(deleted.kind == "delete" && deleted.status == cmd::OutcomeStatus::Applied as i32, "{deleted:?}");
    ensure!(lab.ad.find_groups_by_anchor(&anchor).await?.is_empty(), "the group is still there after delete");

    stop.trigger();
    tokio::time::timeout(WAIT, writer).await.context("the writer did not stop")???;
    Ok(())
}
