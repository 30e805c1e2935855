//! The collector in-process against graph-sim and the real RabbitMQ at 127.0.0.1:5672
//! (scripts/ensure-rabbitmq.sh): every test reads the `ChangeEvent`s that reach the
//! events queue of its own bus namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use uuid::Uuid;

use ev::change_event::Change;
use graph_sim::{
    AdminClient, FaultKind, FaultMatch, FaultRule, NewGroup, NewUser, PagingConfig, RunningSim, Seed, SimConfig,
};
use gwb_bus::{BusConfig, Disposition, Topology};
use gwb_collector::{CollectorError, Listeners};
use gwb_proto::control::v1 as ctl;
use gwb_proto::events::v1 as ev;
use gwb_runtime::shutdown::{self, Shutdown, ShutdownTrigger};

const CERT: &str = include_str!("../../graph-sim/fixtures/client-cert.pem");
const KEY: &str = include_str!("../../graph-sim/fixtures/client-key.pem");

type Events = Arc<Mutex<Vec<ev::ChangeEvent>>>;

struct Tenant {
    sim: RunningSim,
    admin: AdminClient,
    config: SimConfig,
    bus: BusConfig,
    dir: PathBuf,
    events: Events,
    consumer: (ShutdownTrigger, JoinHandle<()>),
}

struct Running {
    trigger: ShutdownTrigger,
    task: JoinHandle<Result<(), CollectorError>>,
    control: String,
}

fn paging() -> PagingConfig {
    PagingConfig {
        max_objects_per_page: 4,
        min_objects_per_page: 1,
        member_slice: 7,
        empty_page_every: Some(2),
        shuffle: true,
        page_delay_ms: 0,
    }
}

async fn tenant(sim_config: SimConfig) -> Tenant {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = graph_sim::start(sim_config.clone()).await.unwrap();
    let admin = sim.admin().unwrap();
    let bus = BusConfig { namespace: format!("gwbtest-collector-{}", Uuid::new_v4().simple()), ..BusConfig::default() };
    let dir = std::env::temp_dir().join(format!("gwb-collector-test-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    gwb_runtime::secret::write_secret_file(&dir.join("client-secret"), &sim_config.client_secret).unwrap();
    let events: Events = Arc::default();
    let consumer = consume(&bus, &events);
    Tenant { sim, admin, config: sim_config, bus, dir, events, consumer }
}

/// Collects every event of the namespace's events queue into `events`.
fn consume(bus: &BusConfig, events: &Events) -> (ShutdownTrigger, JoinHandle<()>) {
    let (trigger, stop) = shutdown::channel();
    let sink = events.clone();
    let queue = Topology::new(bus).events_queue();
    let task = tokio::spawn(gwb_bus::consume(bus.clone(), queue, stop, move |delivery| {
        let sink = sink.clone();
        async move {
            sink.lock().unwrap().push(ev::ChangeEvent::decode(delivery.payload.as_slice()).unwrap());
            Disposition::Ack
        }
    }));
    (trigger, task)
}

async fn seeded(users: usize, members: usize) -> (Tenant, Vec<Uuid>, Vec<Uuid>) {
    let t = tenant(SimConfig { page: paging(), ..SimConfig::default() }).await;
    let user_ids: Vec<Uuid> = (0..users).map(|_| Uuid::new_v4()).collect();
    let group_ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let seed: Seed = serde_json::from_value(serde_json::json!({
        "users": user_ids.iter().enumerate().map(|(i, id)| serde_json::json!({"id": id, "displayName": format!("User {i}"),
            "userPrincipalName": format!("u{i}@example.com"), "onPremisesSecurityIdentifier": format!("S-1-5-21-1-2-3-{}", 1000 + i),
            "onPremisesSyncEnabled": true})).collect::<Vec<_>>(),
        "groups": group_ids.iter().enumerate().map(|(i, id)| serde_json::json!({"id": id, "displayName": format!("Group {i}"),
            "securityEnabled": true, "mailEnabled": false, "groupTypes": [],
            "members": if i == 0 { user_ids[..members].to_vec() } else { vec![user_ids[i]] }})).collect::<Vec<_>>(),
    }))
    .unwrap();
    t.admin.seed(&seed).await.unwrap();
    (t, user_ids, group_ids)
}

impl Tenant {
    fn config_file(&self, extra_graph: &str, extra_collector: &str, name: &str) -> PathBuf {
        let credential = if extra_graph.contains("client_certificate_file") {
            String::new()
        } else {
            format!("client_secret_file = \"{}\"\n", self.dir.join("client-secret").display())
        };
        let text = format!(
            "[graph]\ntenant_id = \"{tenant}\"\nclient_id = \"{client}\"\n{credential}login_endpoint = \"{base}\"\ngraph_endpoint = \"{base}\"\n\
             scope = \"https://graph.microsoft.com/.default\"\nmax_retries = 2\nmax_backoff_seconds = 1\nrequest_timeout_seconds = 10\n{extra_graph}\n\
             [bus]\nnamespace = \"{ns}\"\n\n[collector]\nstate_path = \"{state}\"\npoll_interval_seconds = 0.5\n{extra_collector}\n",
            tenant = self.config.tenant_id,
            client = self.config.client_id,
            base = self.sim.base_url(),
            ns = self.bus.namespace,
            state = self.dir.join("cursors.db").display(),
        );
        // A test that sets its own poll interval replaces the fast default.
        let text = if extra_collector.contains("poll_interval_seconds") {
            text.replace("poll_interval_seconds = 0.5\n", "")
        } else {
            text
        };
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    async fn start(&self, extra_graph: &str, extra_collector: &str) -> Running {
        let path = self.config_file(extra_graph, extra_collector, "collector.toml");
        let config: gwb_collector::Config =
            gwb_runtime::config::load_with_env(Some(&path), Vec::<(String, String)>::new()).unwrap();
        let control = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let notifications = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let control_addr = format!("http://{}", control.local_addr().unwrap());
        let (trigger, stop): (ShutdownTrigger, Shutdown) = shutdown::channel();
        let listeners = Listeners { control: Some(control), notifications: Some(notifications) };
        let task = tokio::spawn(gwb_collector::run(config, listeners, stop));
        Running { trigger, task, control: control_addr }
    }

    fn snapshot(&self) -> Vec<ev::ChangeEvent> {
        self.events.lock().unwrap().clone()
    }

    async fn wait_for(&self, what: &str, condition: impl Fn(&[ev::ChangeEvent]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if condition(&self.snapshot()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}; events: {:#?}", summary(&self.snapshot()));
    }

    async fn finish(self) {
        self.consumer.0.trigger();
        let _ = self.consumer.1.await;
        gwb_bus::delete_topology(&self.bus).await.unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
        self.sim.stop().await.unwrap();
    }
}

impl Running {
    async fn stop(self) -> Result<(), CollectorError> {
        self.trigger.trigger();
        self.task.await.unwrap()
    }
}

fn resource(r: ev::Resource) -> i32 {
    r as i32
}

/// (round_id, resource, full) of every RoundStarted / RoundCompleted.
fn boundaries(events: &[ev::ChangeEvent], completed: bool) -> Vec<(String, i32, bool)> {
    events
        .iter()
        .filter_map(|e| match (&e.change, completed) {
            (Some(Change::RoundStarted(b)), false) | (Some(Change::RoundCompleted(b)), true) => {
                Some((e.round_id.clone(), b.resource, b.full))
            }
            _ => None,
        })
        .collect()
}

fn completed(events: &[ev::ChangeEvent], r: ev::Resource, full: bool) -> usize {
    boundaries(events, true).iter().filter(|(_, res, f)| *res == resource(r) && *f == full).count()
}

fn groups_in_round(events: &[ev::ChangeEvent], round_id: &str) -> BTreeMap<String, (usize, BTreeSet<String>)> {
    let mut out: BTreeMap<String, (usize, BTreeSet<String>)> = BTreeMap::new();
    for e in events.iter().filter(|e| e.round_id == round_id) {
        if let Some(Change::Group(g)) = &e.change {
            let entry = out.entry(g.id.clone()).or_default();
            entry.0 += 1;
            entry.1.extend(g.members_added.iter().map(|m| m.id.clone()));
        }
    }
    out
}

fn group_ids_seen(events: &[ev::ChangeEvent]) -> BTreeSet<String> {
    events
        .iter()
        .filter_map(|e| match &e.change {
            Some(Change::Group(g)) => Some(g.id.clone()),
            _ => None,
        })
        .collect()
}

fn summary(events: &[ev::ChangeEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match &e.change {
            Some(Change::RoundStarted(b)) => format!("{} started r{} full={}", &e.round_id[..8], b.resource, b.full),
            Some(Change::RoundCompleted(b)) => {
                format!("{} completed r{} full={}", &e.round_id[..8], b.resource, b.full)
            }
            Some(Change::Group(g)) => format!("{} group {}", &e.round_id[..8], g.id),
            Some(Change::User(u)) => format!("{} user {}", &e.round_id[..8], u.id),
            other => format!("{} {other:?}", &e.round_id[..8]),
        })
        .collect()
}

fn rule(matches: FaultMatch, kind: FaultKind, count: u32) -> FaultRule {
    FaultRule::new(matches, kind, count)
}

async fn initial_rounds(t: &Tenant) {
    t.wait_for("both initial full rounds", |e| {
        completed(e, ev::Resource::Users, true) >= 1 && completed(e, ev::Resource::Groups, true) >= 1
    })
    .await;
}

#[tokio::test]
async fn initial_full_round_publishes_everything_between_boundaries_with_member_slices_merged() {
    let (t, users, groups) = seeded(30, 25).await;
    // A duplicated page and empty pages with nextLinks on top of tiny variable pages.
    t.admin.add_faults(&[rule(FaultMatch::GroupsDelta, FaultKind::Duplicate, 1)]).await.unwrap();
    let running = t.start("", "").await;
    initial_rounds(&t).await;
    let events = t.snapshot();
    let started = boundaries(&events, false);
    let done = boundaries(&events, true);
    for r in [ev::Resource::Users, ev::Resource::Groups] {
        let round = started.iter().find(|(_, res, full)| *res == resource(r) && *full).expect("RoundStarted{full}");
        assert!(done.iter().any(|d| d.0 == round.0 && d.2), "RoundCompleted{{full}} of the same round");
    }
    let users_seen: BTreeSet<String> = events
        .iter()
        .filter_map(|e| match &e.change {
            Some(Change::User(u)) => Some(u.id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(users_seen, users.iter().map(Uuid::to_string).collect());
    let round_id = &started.iter().find(|(_, res, _)| *res == resource(ev::Resource::Groups)).unwrap().0;
    let merged = groups_in_round(&events, round_id);
    let big = &merged[&groups[0].to_string()];
    assert!(big.0 >= 4, "25 members in slices of 7 repeat the group: {}", big.0);
    assert_eq!(big.1, users[..25].iter().map(Uuid::to_string).collect());
    assert_eq!(merged.len(), 3);
    // Positions follow publication order within a round.
    let positions: Vec<u64> = events.iter().filter(|e| &e.round_id == round_id).map(|e| e.round_position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));

    // An incremental round: no RoundStarted, RoundCompleted{full=false}.
    let new_member = users[29];
    t.admin.add_members(groups[1], &[new_member]).await.unwrap();
    t.wait_for("the membership change", |e| {
        e.iter().any(|e| matches!(&e.change, Some(Change::Group(g)) if g.id == groups[1].to_string() && g.members_added.iter().any(|m| m.id == new_member.to_string())))
    })
    .await;
    t.wait_for("an incremental groups round", |e| completed(e, ev::Resource::Groups, false) >= 1).await;
    assert_eq!(boundaries(&t.snapshot(), false).len(), 2, "no new full round");
    running.stop().await.unwrap();
    t.finish().await;
}

#[tokio::test]
async fn lost_delta_token_410_or_sync_state_codes_runs_a_full_round() {
    let (t, _, groups) = seeded(6, 3).await;
    let running = t.start("", "").await;
    initial_rounds(&t).await;
    t.admin.add_faults(&[rule(FaultMatch::GroupsDelta, FaultKind::Reset, 1)]).await.unwrap();
    t.wait_for("a second full groups round after 410", |e| completed(e, ev::Resource::Groups, true) >= 2).await;
    t.admin
        .add_faults(&[rule(
            FaultMatch::UsersDelta,
            FaultKind::SyncStateNotFound { variant: graph_sim::ErrorVariant::NestedLowercase, status: 400 },
            1,
        )])
        .await
        .unwrap();
    t.wait_for("a second full users round after syncStateNotFound", |e| completed(e, ev::Resource::Users, true) >= 2)
        .await;
    t.admin
        .add_faults(&[rule(
            FaultMatch::GroupsDelta,
            FaultKind::ResyncRequired { variant: graph_sim::ErrorVariant::PascalCase, status: 400 },
            1,
        )])
        .await
        .unwrap();
    t.wait_for("a third full groups round after ResyncRequired", |e| completed(e, ev::Resource::Groups, true) >= 3)
        .await;
    // Each full round carries every group again, so the planner can sweep.
    let events = t.snapshot();
    let last =
        boundaries(&events, true).into_iter().rfind(|(_, r, f)| *r == resource(ev::Resource::Groups) && *f).unwrap();
    assert_eq!(groups_in_round(&events, &last.0).len(), groups.len());
    running.stop().await.unwrap();
    t.finish().await;
}

#[tokio::test]
async fn malformed_page_fails_the_attempt_and_the_retry_resumes_at_that_page() {
    let (t, _, groups) = seeded(8, 8).await;
    // Users round fine; the groups round breaks on its second page.
    t.admin
        .add_faults(&[
            rule(FaultMatch::GroupsDelta, FaultKind::Delay { ms: 0 }, 1),
            rule(FaultMatch::GroupsDelta, FaultKind::Malformed, 1),
        ])
        .await
        .unwrap();
    let running = t.start("", "").await;
    initial_rounds(&t).await;
    assert!(status(&running.control, None).await.rounds_failed >= 1, "the malformed page failed an attempt");
    let events = t.snapshot();
    let group_rounds: Vec<_> =
        boundaries(&events, false).into_iter().filter(|(_, r, _)| *r == resource(ev::Resource::Groups)).collect();
    assert_eq!(group_rounds.len(), 1, "the retry resumed the round instead of starting a new one");
    let round = &group_rounds[0].0;
    assert!(boundaries(&events, true).iter().any(|(id, _, _)| id == round), "the resumed round completed");
    assert_eq!(groups_in_round(&events, round).len(), groups.len(), "nothing lost");
    let initial = delta_requests(&t.admin, "groups", "initial").await;
    assert_eq!(initial, 1, "page 1 was read once");
    running.stop().await.unwrap();
    t.finish().await;
}

/// How many delta requests of `resource` and `kind` graph-sim served.
async fn delta_requests(admin: &AdminClient, resource: &str, kind: &str) -> u64 {
    let stats = admin.stats().await.unwrap();
    stats.delta_requests.iter().filter(|r| r.resource == resource && r.kind == kind).map(|r| r.count).sum()
}

#[tokio::test]
async fn an_interrupted_full_round_resumes_at_its_first_unconfirmed_page_after_a_crash() {
    let t = tenant(SimConfig { page: PagingConfig { page_delay_ms: 100, ..paging() }, ..SimConfig::default() }).await;
    let user_ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let group_ids: Vec<Uuid> = (0..60).map(|_| Uuid::new_v4()).collect();
    let seed: Seed = serde_json::from_value(serde_json::json!({
        "users": user_ids.iter().enumerate().map(|(i, id)| serde_json::json!({"id": id, "displayName": format!("User {i}"),
            "userPrincipalName": format!("u{i}@example.com")})).collect::<Vec<_>>(),
        "groups": group_ids.iter().enumerate().map(|(i, id)| serde_json::json!({"id": id, "displayName": format!("Group {i}"),
            "securityEnabled": true, "mailEnabled": false, "groupTypes": [], "members": [user_ids[i % 4]]})).collect::<Vec<_>>(),
    }))
    .unwrap();
    t.admin.seed(&seed).await.unwrap();
    let first = t.start("", "").await;
    // At 100 ms a page and at most 4 groups a page the groups round takes seconds:
    // "crash" (abort, no shutdown) once several of its pages are confirmed.
    t.wait_for("a few pages of the groups round", |e| group_ids_seen(e).len() >= 12).await;
    first.task.abort();
    let _ = first.task.await;
    assert_eq!(completed(&t.snapshot(), ev::Resource::Groups, true), 0, "the crash came mid-round");
    let second = t.start("", "").await;
    t.wait_for("the groups round completes", |e| completed(e, ev::Resource::Groups, true) == 1).await;
    second.stop().await.unwrap();
    let events = t.snapshot();
    let starts: Vec<_> =
        boundaries(&events, false).into_iter().filter(|(_, r, _)| *r == resource(ev::Resource::Groups)).collect();
    assert_eq!(starts.len(), 1, "one groups round, resumed: {starts:?}");
    let round = &starts[0].0;
    assert!(boundaries(&events, true).iter().any(|(id, _, _)| id == round), "completed under its own round id");
    assert_eq!(groups_in_round(&events, round).len(), group_ids.len(), "every group in the round");
    assert_eq!(delta_requests(&t.admin, "groups", "initial").await, 1, "graph-sim served page 1 once: no restart");
    t.finish().await;
}

#[tokio::test]
async fn a_cursor_from_another_query_is_not_reused_the_next_round_is_full() {
    let (t, _, _) = seeded(4, 2).await;
    let first = t.start("api_version = \"v1.0\"\n", "").await;
    initial_rounds(&t).await;
    first.stop().await.unwrap();
    // The operator switches to beta (to read writebackConfiguration): the v1.0 deltaLink
    // answers the old $select and would never show the new property.
    let second = t.start("api_version = \"beta\"\n", "").await;
    t.wait_for("a new full groups round", |e| completed(e, ev::Resource::Groups, true) >= 2).await;
    second.stop().await.unwrap();
    assert!(completed(&t.snapshot(), ev::Resource::Users, true) >= 2, "users too");
    t.finish().await;
}

#[tokio::test]
async fn a_stalled_page_and_a_next_link_loop_abandon_the_round_without_completion() {
    let (t, _, _) = seeded(4, 2).await;
    t.admin.add_faults(&[rule(FaultMatch::GroupsDelta, FaultKind::Delay { ms: 2500 }, 1)]).await.unwrap();
    let running = t.start("", "page_timeout_seconds = 1\n").await;
    initial_rounds(&t).await;
    let status = status(&running.control, None).await;
    assert!(status.rounds_failed >= 1, "{status:?}");
    let events = t.snapshot();
    let group_starts: Vec<_> =
        boundaries(&events, false).into_iter().filter(|(_, r, _)| *r == resource(ev::Resource::Groups)).collect();
    assert!(
        !boundaries(&events, true).iter().any(|(id, _, _)| *id == group_starts[0].0),
        "timed-out round not completed"
    );

    let failed_before = self::status(&running.control, None).await.rounds_failed;
    t.admin.add_faults(&[rule(FaultMatch::GroupsDelta, FaultKind::NextLinkLoop, 1)]).await.unwrap();
    let before = completed(&t.snapshot(), ev::Resource::Groups, false);
    wait_for_failure(&running, failed_before).await;
    t.wait_for("rounds resume after the loop", |e| completed(e, ev::Resource::Groups, false) > before).await;
    running.stop().await.unwrap();
    t.finish().await;
}

#[tokio::test]
async fn crash_mid_round_rereads_from_the_last_confirmed_cursor() {
    let (t, _, _) = seeded(4, 2).await;
    let first = t.start("", "").await;
    initial_rounds(&t).await;
    // Hold the next groups page long enough to "crash" while it is in flight.
    t.admin.add_faults(&[rule(FaultMatch::GroupsDelta, FaultKind::Delay { ms: 3000 }, 1)]).await.unwrap();
    let created = t.admin.create_group(&NewGroup::default()).await.unwrap().group.id;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    first.task.abort();
    let _ = first.task.await;
    let full_before = completed(&t.snapshot(), ev::Resource::Groups, true);
    let second = t.start("", "").await;
    t.wait_for("the change read again after the crash", |e| group_ids_seen(e).contains(&created.to_string())).await;
    // The stored cursor was used: an incremental round, not a new full one.
    t.wait_for("an incremental groups round", |e| completed(e, ev::Resource::Groups, false) >= 1).await;
    assert_eq!(completed(&t.snapshot(), ev::Resource::Groups, true), full_before);
    second.stop().await.unwrap();
    t.finish().await;
}

#[tokio::test]
async fn publish_failure_keeps_the_cursor_so_the_round_is_read_again() {
    let (t, _, _) = seeded(4, 2).await;
    let running = t.start("", "").await;
    initial_rounds(&t).await;
    let mut t = t;
    // The test's own consumer would declare the topology again at once: pause it.
    let (stop, task) = std::mem::replace(&mut t.consumer, (shutdown::channel().0, tokio::spawn(async {})));
    stop.trigger();
    task.await.unwrap();
    let failed_before = status(&running.control, None).await.rounds_failed;
    t.admin.add_faults(&[rule(FaultMatch::GroupsDelta, FaultKind::Delay { ms: 2000 }, 1)]).await.unwrap();
    let created = t.admin.create_group(&NewGroup::default()).await.unwrap().group.id;
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The broker loses the exchange while the page is in flight: its publish fails.
    gwb_bus::delete_topology(&t.bus).await.unwrap();
    wait_for_failure(&running, failed_before).await;
    t.consumer = consume(&t.bus, &t.events);
    // The publisher reconnects and redeclares; the retried round re-reads the change.
    t.wait_for("the change after the publish failure", |e| group_ids_seen(e).contains(&created.to_string())).await;
    running.stop().await.unwrap();
    t.finish().await;
}

/// Waits until the collector counts a failed round after `before`.
async fn wait_for_failure(running: &Running, before: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(&running.control, None).await;
        if s.rounds_failed > before {
            return;
        }
        assert!(Instant::now() < deadline, "no round failed: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status(endpoint: &str, token: Option<&str>) -> ctl::CollectorStatus {
    let mut client = ctl::collector_client::CollectorClient::connect(endpoint.to_string()).await.unwrap();
    let mut request = tonic::Request::new(ctl::GetCollectorStatusRequest {});
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    client.get_collector_status(request).await.unwrap().into_inner()
}

#[tokio::test]
async fn grpc_sync_now_full_resync_and_status_require_the_bearer_token() {
    let (t, _, _) = seeded(4, 2).await;
    gwb_runtime::secret::write_secret_file(&t.dir.join("control-token"), "control-t0ken").unwrap();
    let token_line = format!(
        "poll_interval_seconds = 3600\n[collector.control]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
        t.dir.join("control-token").display()
    );
    let running = t.start("", &token_line).await;
    initial_rounds(&t).await;

    let mut client = ctl::collector_client::CollectorClient::connect(running.control.clone()).await.unwrap();
    let denied = client.sync_now(ctl::SyncNowRequest {}).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);
    fn with_token<T>(message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", "Bearer control-t0ken".parse().unwrap());
        request
    }
    let s = status(&running.control, Some("control-t0ken")).await;
    assert!(
        s.rounds_completed >= 2
            && s.users_round_completed_ms > 0
            && s.groups_round_completed_ms > 0
            && s.last_error.is_empty(),
        "{s:?}"
    );

    let created = t.admin.create_user(&NewUser::default()).await.unwrap().user.id;
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.sync_now(with_token(ctl::SyncNowRequest {})).await.unwrap();
    t.wait_for("the user after SyncNow", |e| {
        e.iter().any(|e| matches!(&e.change, Some(Change::User(u)) if u.id == created.to_string()))
    })
    .await;

    client.full_resync(with_token(ctl::FullResyncRequest {})).await.unwrap();
    t.wait_for("full rounds after FullResync", |e| {
        completed(e, ev::Resource::Users, true) >= 2 && completed(e, ev::Resource::Groups, true) >= 2
    })
    .await;

    let channel = tonic::transport::Channel::from_shared(running.control.clone()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest { service: "gwb.control.v1.Collector".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serving.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    running.stop().await.unwrap();
    t.finish().await;
}

#[tokio::test]
async fn change_notifications_trigger_rounds_and_lifecycle_events_renew_the_subscription() {
    let (t, _, _) = seeded(4, 2).await;
    gwb_runtime::secret::write_secret_file(&t.dir.join("client-state"), "state-s3cret").unwrap();
    // The public URL must name the receiver's port, so the test binds it first.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public = format!("http://{}", listener.local_addr().unwrap());
    let extra = format!(
        "poll_interval_seconds = 3600\nactive_poll_interval_seconds = 3600\n[collector.notifications]\nlisten = \"127.0.0.1:0\"\npublic_url = \"{public}\"\nclient_state_file = \"{}\"\nsubscription_minutes = 60\n",
        t.dir.join("client-state").display()
    );
    let path = t.config_file("", &extra, "notify.toml");
    let config: gwb_collector::Config =
        gwb_runtime::config::load_with_env(Some(&path), Vec::<(String, String)>::new()).unwrap();
    let (trigger, stop) = shutdown::channel();
    let control = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control_addr = format!("http://{}", control.local_addr().unwrap());
    let task = tokio::spawn(gwb_collector::run(
        config,
        Listeners { control: Some(control), notifications: Some(listener) },
        stop,
    ));
    let running = Running { trigger, task, control: control_addr };
    initial_rounds(&t).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    let subscriptions = loop {
        let subs = t.admin.subscriptions().await.unwrap();
        if subs.len() == 2 {
            break subs;
        }
        assert!(Instant::now() < deadline, "subscriptions not created: {subs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let resources: BTreeSet<_> = subscriptions.iter().map(|s| s.resource.clone()).collect();
    assert_eq!(resources, BTreeSet::from(["/groups".to_string(), "/users".to_string()]));
    assert!(subscriptions.iter().all(|s| s.has_client_state && s.change_type == "updated,deleted"));
    assert!(status(&running.control, None).await.notifications_active);

    // Polling is hourly: only the notification can bring this change in quickly.
    let created = t.admin.create_group(&NewGroup::default()).await.unwrap().group.id;
    t.wait_for("the group after a notification", |e| group_ids_seen(e).contains(&created.to_string())).await;

    // A post with a wrong clientState triggers nothing.
    let rounds = status(&running.control, None).await.rounds_completed;
    let http = reqwest::Client::new();
    let forged = serde_json::json!({"value": [{"subscriptionId": subscriptions[0].id, "clientState": "guess", "changeType": "updated", "resource": "Groups/x"}]});
    let answer = http.post(format!("{public}/notifications")).json(&forged).send().await.unwrap();
    assert_eq!(answer.status(), 202);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(status(&running.control, None).await.rounds_completed, rounds);

    // The validation handshake echoes the decoded token as text/plain.
    let answer =
        http.post(format!("{public}/notifications?validationToken=Validation%3A%20a%2Bb")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert_eq!(answer.text().await.unwrap(), "Validation: a+b");

    // reauthorizationRequired → the collector renews (PATCH), which clears the flag.
    let groups_sub = subscriptions.iter().find(|s| s.resource == "/groups").unwrap();
    assert!(t.admin.send_lifecycle_notification(groups_sub.id, "reauthorizationRequired").await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = t.admin.subscriptions().await.unwrap();
        let s = now.iter().find(|s| s.id == groups_sub.id).unwrap();
        if !s.reauthorization_required {
            break;
        }
        assert!(Instant::now() < deadline, "not renewed: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.stop().await.unwrap();
    assert!(t.admin.subscriptions().await.unwrap().is_empty(), "subscriptions deleted on shutdown");
    t.finish().await;
}

#[tokio::test]
async fn certificate_credential_runs_rounds_and_bad_credential_config_names_the_keys() {
    let t = tenant(SimConfig { client_certificates: vec![CERT.to_string()], ..SimConfig::default() }).await;
    t.admin.create_user(&NewUser::default()).await.unwrap();
    std::fs::write(t.dir.join("cert.pem"), CERT).unwrap();
    gwb_runtime::secret::write_secret_file(&t.dir.join("key.pem"), KEY).unwrap();
    let cert_lines = format!(
        "client_certificate_file = \"{}\"\nclient_private_key_file = \"{}\"\n",
        t.dir.join("cert.pem").display(),
        t.dir.join("key.pem").display()
    );
    let running = t.start(&cert_lines, "").await;
    initial_rounds(&t).await;
    running.stop().await.unwrap();

    // Key readable by others: refused with the key named.
    let loose: &Path = &t.dir.join("loose-key.pem");
    std::fs::write(loose, KEY).unwrap();
    let loose_lines = cert_lines.replace(&t.dir.join("key.pem").display().to_string(), &loose.display().to_string());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = t.start(&loose_lines, "").await.task.await.unwrap().unwrap_err().to_string();
    assert!(error.contains("graph.client_private_key_file") && error.contains("chmod 600"), "{error}");
    t.finish().await;
}
