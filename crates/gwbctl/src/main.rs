//! gwbctl: the operator's command line over the planner's gRPC control API.
//!
//! Exit codes: 0 success, 1 the planner refused or failed the request, 2 usage error,
//! 3 the planner is unreachable, 4 authentication failed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use gwb_proto::control::v1 as pb;
use pb::operator_client::OperatorClient;

#[derive(Parser)]
#[command(name = "gwbctl", version, about = "Operate Group Writeback (Entra ID groups → Active Directory)")]
struct Cli {
    /// Planner control API address.
    #[arg(long, env = "GWB_CONTROL_ENDPOINT", default_value = "http://127.0.0.1:50051", global = true)]
    endpoint: String,
    /// File holding the control bearer token.
    #[arg(long, env = "GWB_CONTROL_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Global switch, service health, counts, lag and recent errors.
    Status,
    /// Switch writeback on: every group in scope is written to AD.
    Enable,
    /// Switch writeback off; --mode says what happens to the groups already written.
    Disable {
        #[arg(long, value_enum)]
        mode: Mode,
    },
    /// List groups with their writeback state.
    Groups {
        /// Only groups in this state (written, pending, error, skipped, kept, deleted…).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        /// Continue from a previous page's token.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Show one group: AD identity, members written and skipped with reasons.
    Group { id: String },
    /// Override one group's writeback settings (wins over Graph and the scope rules).
    SetGroup {
        id: String,
        /// Write this group back.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Do not write this group back (what happens to its AD group follows on_leave_scope).
        #[arg(long)]
        disable: bool,
        /// Target type: security, distribution or mail-enabled-security.
        #[arg(long = "type", value_enum)]
        target_type: Option<Target>,
        /// Target OU (a DN inside the writer's managed OUs).
        #[arg(long)]
        ou: Option<String>,
        /// Remove every override of this group.
        #[arg(long, conflicts_with_all = ["enable", "disable", "target_type", "ou"])]
        clear: bool,
        /// What happens to AD edits of this group: repair, report, off, or inherit
        /// `[drift] mode`; repair also clears a contested mark.
        #[arg(long, value_enum)]
        drift: Option<DriftArg>,
    },
    /// Clear a group's contested mark: drift repairs and writes resume, the group is
    /// sent in full again.
    Uncontest { id: String },
    /// Show what would be sent to AD for a group now, without sending it.
    Preview { id: String },
    /// Ask the collector for a delta round now (--full: read everything again).
    Sync {
        #[arg(long)]
        full: bool,
    },
    /// Stop the writers applying commands (they wait in RabbitMQ).
    Pause {
        #[arg(long, default_value = "paused by the operator")]
        reason: String,
    },
    /// Let the writers apply commands again.
    Resume,
    /// Deletions held by the deletion threshold, and member removals held by the
    /// member-removal threshold.
    Held,
    /// Carry out held deletions and member removals (all, or the listed groups').
    Approve { ids: Vec<String> },
    /// Drop held deletions (their AD groups are kept) and held member removals (AD
    /// keeps the members), all or the listed groups'.
    Discard { ids: Vec<String> },
    /// Every AD change planned for a group, with cause and result.
    Audit {
        id: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DriftArg {
    Repair,
    Report,
    Off,
    Inherit,
}

impl DriftArg {
    fn as_str(self) -> &'static str {
        match self {
            DriftArg::Repair => "repair",
            DriftArg::Report => "report",
            DriftArg::Off => "off",
            DriftArg::Inherit => "inherit",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Target {
    Security,
    Distribution,
    MailEnabledSecurity,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// Leave the written groups in AD, frozen.
    Keep,
    /// Delete every group Group Writeback wrote.
    Delete,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
            eprintln!("gwbctl: {message}");
            ExitCode::from(code)
        }
    }
}

struct Failure {
    code: u8,
    message: String,
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        let code = match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => 4,
            Code::Unavailable => 3,
            _ => 1,
        };
        let hint = match status.code() {
            Code::Unauthenticated => " (check --token-file / GWB_CONTROL_TOKEN_FILE)",
            Code::Unavailable => " (is gwb-planner running and is --endpoint right?)",
            _ => "",
        };
        Failure { code, message: format!("{}{hint}", status.message()) }
    }
}

async fn run(cli: &Cli) -> Result<(), Failure> {
    let token = match &cli.token_file {
        Some(path) => Some(
            gwb_runtime::secret::read_secret_file("--token-file", path)
                .map_err(|e| Failure { code: 2, message: e.to_string() })?,
        ),
        None => None,
    };
    let channel = Channel::from_shared(cli.endpoint.clone())
        .map_err(|e| Failure { code: 2, message: format!("--endpoint {}: {e}", cli.endpoint) })?
        .connect()
        .await
        .map_err(|e| Failure { code: 3, message: format!("cannot reach the planner at {}: {e}", cli.endpoint) })?;
    let bearer: Option<MetadataValue<_>> = match &token {
        Some(token) => Some(format!("Bearer {}", token.expose()).parse().map_err(|_| Failure {
            code: 2,
            message: "the token file holds characters not allowed in a header".into(),
        })?),
        None => None,
    };
    let mut client = OperatorClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
        if let Some(value) = &bearer {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    });
    match &cli.command {
        Command::Status => {
            let status = client.get_status(pb::GetStatusRequest {}).await?.into_inner();
            print_status(&status, cli.json);
        }
        Command::Enable => {
            let status = client.enable_writeback(pb::EnableWritebackRequest {}).await?.into_inner();
            if !cli.json {
                println!("Writeback is ON. Groups in scope are being written to AD.\n");
            }
            print_status(&status, cli.json);
        }
        Command::Disable { mode } => {
            let mode = match mode {
                Mode::Keep => pb::DisableMode::Keep,
                Mode::Delete => pb::DisableMode::Delete,
            };
            let status =
                client.disable_writeback(pb::DisableWritebackRequest { mode: mode as i32 }).await?.into_inner();
            if !cli.json {
                match mode {
                    pb::DisableMode::Delete => {
                        println!("Writeback is OFF. Written groups are being deleted from AD.\n")
                    }
                    _ => println!("Writeback is OFF. Written groups stay in AD, frozen.\n"),
                }
            }
            print_status(&status, cli.json);
        }
        Command::Groups { state, page_size, page_token } => {
            let request = pb::ListGroupsRequest {
                state: state.clone().unwrap_or_default(),
                page_size: *page_size,
                page_token: page_token.clone().unwrap_or_default(),
            };
            let response = client.list_groups(request).await?.into_inner();
            print_groups(&response, cli.json);
        }
        Command::Group { id } => {
            let detail = client.get_group(pb::GetGroupRequest { id: id.clone() }).await?.into_inner();
            print_group(&detail, cli.json);
        }
        Command::SetGroup { id, enable, disable, target_type, ou, clear, drift } => {
            if !(*enable || *disable || target_type.is_some() || ou.is_some() || *clear || drift.is_some()) {
                return Err(Failure {
                    code: 2,
                    message: "say what to change: --enable, --disable, --type, --ou, --clear or --drift".into(),
                });
            }
            if let Some(drift) = drift {
                let request = pb::SetGroupDriftRequest {
                    id: id.clone(),
                    mode: drift.as_str().into(),
                    uncontest: matches!(drift, DriftArg::Repair),
                };
                let detail = client.set_group_drift(request).await?.into_inner();
                if !(*enable || *disable || target_type.is_some() || ou.is_some() || *clear) {
                    print_group(&detail, cli.json);
                    return Ok(());
                }
            }
            let target_type = match target_type {
                None => pb::TargetType::Unspecified,
                Some(Target::Security) => pb::TargetType::UniversalSecurity,
                Some(Target::Distribution) => pb::TargetType::UniversalDistribution,
                Some(Target::MailEnabledSecurity) => pb::TargetType::UniversalMailEnabledSecurity,
            };
            let request = pb::SetGroupWritebackRequest {
                id: id.clone(),
                enabled: if *enable {
                    Some(true)
                } else if *disable {
                    Some(false)
                } else {
                    None
                },
                target_type: target_type as i32,
                ou: ou.clone().unwrap_or_default(),
                clear: *clear,
            };
            let detail = client.set_group_writeback(request).await?.into_inner();
            print_group(&detail, cli.json);
        }
        Command::Uncontest { id } => {
            let request = pb::SetGroupDriftRequest { id: id.clone(), mode: String::new(), uncontest: true };
            let detail = client.set_group_drift(request).await?.into_inner();
            print_group(&detail, cli.json);
        }
        Command::Preview { id } => {
            let plan = client.preview_group(pb::PreviewGroupRequest { id: id.clone() }).await?.into_inner();
            print_plan(&plan, cli.json);
        }
        Command::Sync { full } => {
            let response = if *full {
                client.full_resync(pb::FullResyncRequest {}).await?
            } else {
                client.sync_now(pb::SyncNowRequest {}).await?
            };
            print_lines(&response.into_inner().results, cli.json);
        }
        Command::Pause { reason } => {
            let response = client.pause_writer(pb::PauseWriterRequest { reason: reason.clone() }).await?;
            print_lines(&response.into_inner().results, cli.json);
        }
        Command::Resume => {
            let response = client.resume_writer(pb::ResumeWriterRequest {}).await?;
            print_lines(&response.into_inner().results, cli.json);
        }
        Command::Held => {
            let held = client.list_held_deletions(pb::ListHeldDeletionsRequest {}).await?.into_inner();
            print_held(&held, cli.json);
        }
        Command::Approve { ids } | Command::Discard { ids } => {
            let approve = matches!(cli.command, Command::Approve { .. });
            let request = pb::DeletionDecisionRequest { group_ids: ids.clone() };
            let response = if approve {
                client.approve_deletions(request).await?
            } else {
                client.discard_deletions(request).await?
            };
            let decided = response.into_inner();
            let (affected, members) = (decided.affected, decided.member_removals);
            if cli.json {
                print_json(json!({ "affected": affected, "member_removals": members }));
            } else if approve {
                println!("{affected} held deletion(s) approved: the AD groups are being deleted.");
                println!("{members} held member removal(s) approved: the members are being removed.");
            } else {
                println!("{affected} held deletion(s) discarded: the AD groups are kept, frozen.");
                println!("{members} held member removal(s) discarded: AD keeps the members.");
            }
        }
        Command::Audit { id, limit } => {
            let audit =
                client.list_audit(pb::ListAuditRequest { group_id: id.clone(), limit: *limit }).await?.into_inner();
            print_audit(&audit, cli.json);
        }
    }
    Ok(())
}

fn print_lines(lines: &[String], as_json: bool) {
    if as_json {
        print_json(json!({ "results": lines }));
    } else {
        for line in lines {
            println!("{line}");
        }
    }
}

fn print_plan(plan: &pb::GroupPlan, as_json: bool) {
    if as_json {
        print_json(json!({
            "id": plan.id, "decision": plan.decision, "reason": plan.reason, "target_type": plan.target_type, "dn": plan.dn,
            "sam_account_name_candidates": plan.sam_account_name_candidates,
            "commands": plan.commands.iter().map(|c| json!({"kind": c.kind, "detail": c.detail})).collect::<Vec<_>>(),
            "members_to_write": plan.members_to_write,
            "members_skipped": plan.members_skipped.iter().map(|m| json!({"member_id": m.member_id, "kind": m.kind, "reason": m.reason})).collect::<Vec<_>>(),
        }));
        return;
    }
    println!("Group:      {}", plan.id);
    println!("Decision:   {} — {}", plan.decision, plan.reason);
    if plan.decision == "write" {
        println!("DN:         {}", plan.dn);
        println!("Type:       {}", plan.target_type);
        println!("sAMAccount: {}", plan.sam_account_name_candidates.join(" | "));
        println!("Members:    {} to write, {} skipped", plan.members_to_write, plan.members_skipped.len());
    }
    if plan.commands.is_empty() {
        println!("\nNothing to send: AD already has (or has been sent) this state.");
    } else {
        println!("\nCommands that would be sent now:");
        for command in &plan.commands {
            println!("  {:<15} {}", command.kind, command.detail);
        }
    }
    for member in &plan.members_skipped {
        println!("  skipped {:<36} {:<8} {}", member.member_id, member.kind, member.reason);
    }
}

fn print_held(held: &pb::ListHeldDeletionsResponse, as_json: bool) {
    if as_json {
        print_json(json!({
            "threshold_reason": held.threshold_reason,
            "deletions": held.deletions.iter().map(|d| json!({"group_id": d.group_id, "display_name": d.display_name, "ad_dn": d.ad_dn, "reason": d.reason, "held_at_ms": d.held_at_ms})).collect::<Vec<_>>(),
            "member_removals": held.member_removals.iter().map(|m| json!({"group_id": m.group_id, "display_name": m.display_name, "ad_dn": m.ad_dn, "count": m.count, "reason": m.reason, "held_at_ms": m.held_at_ms})).collect::<Vec<_>>(),
        }));
        return;
    }
    if held.deletions.is_empty() {
        println!("No deletions are held.");
    } else {
        println!("{} deletion(s) held: {}\n", held.deletions.len(), held.threshold_reason);
        println!("{:<36}  {:<30} AD DN", "ID", "NAME");
        for deletion in &held.deletions {
            println!("{:<36}  {:<30} {}", deletion.group_id, truncate(&deletion.display_name, 30), deletion.ad_dn);
        }
    }
    if held.member_removals.is_empty() {
        println!("No member removals are held.");
    } else {
        let values: u64 = held.member_removals.iter().map(|m| m.count).sum();
        println!(
            "\n{values} member removal(s) held in {} group(s); AD keeps these members:\n",
            held.member_removals.len()
        );
        println!("{:<36}  {:<30} {:>7}  CAUSE", "ID", "NAME", "MEMBERS");
        for group in &held.member_removals {
            println!(
                "{:<36}  {:<30} {:>7}  {}",
                group.group_id,
                truncate(&group.display_name, 30),
                group.count,
                group.reason
            );
        }
    }
    if !held.deletions.is_empty() || !held.member_removals.is_empty() {
        println!("\nDecide: gwbctl approve [ID…]  or  gwbctl discard [ID…]");
    }
}

fn print_audit(audit: &pb::ListAuditResponse, as_json: bool) {
    if as_json {
        print_json(json!({
            "entries": audit.entries.iter().map(|e| json!({"at_ms": e.at_ms, "command_id": e.command_id, "kind": e.kind, "result": e.result, "cause": e.cause, "detail": e.detail})).collect::<Vec<_>>(),
        }));
        return;
    }
    println!("{:<14} {:<15} {:<9} {:<50} DETAIL", "AT (unix ms)", "KIND", "RESULT", "CAUSE");
    for entry in &audit.entries {
        println!(
            "{:<14} {:<15} {:<9} {:<50} {}",
            entry.at_ms,
            entry.kind,
            entry.result,
            truncate(&entry.cause, 50),
            entry.detail
        );
    }
}

fn print_json(value: Value) {
    println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
}

fn disable_mode(mode: i32) -> &'static str {
    match pb::DisableMode::try_from(mode) {
        Ok(pb::DisableMode::Keep) => "keep",
        Ok(pb::DisableMode::Delete) => "delete",
        _ => "",
    }
}

fn print_status(status: &pb::Status, as_json: bool) {
    if as_json {
        print_json(json!({
            "writeback_enabled": status.writeback_enabled,
            "last_disable_mode": disable_mode(status.last_disable_mode),
            "services": status.services.iter().map(|s| json!({"service": s.service, "healthy": s.healthy, "version": s.version, "detail": s.detail, "last_seen_ms": s.last_seen_ms})).collect::<Vec<_>>(),
            "last_round_completed_ms": status.last_round_completed_ms,
            "groups_by_state": status.groups_by_state.iter().map(|c| (c.state.clone(), json!(c.count))).collect::<serde_json::Map<_, _>>(),
            "users_known": status.users_known,
            "memberships_known": status.memberships_known,
            "commands_in_flight": status.commands_in_flight,
            "oldest_in_flight_ms": status.oldest_in_flight_ms,
            "held_deletions": status.held_deletions,
            "held_member_removals": status.held_member_removals,
            "recent_errors": status.recent_errors,
            "planner_version": status.planner_version,
            "exchange": status.exchange,
            "m365_writeback_allowed": status.m365_writeback_allowed,
            "m365_writeback_refusal": status.m365_writeback_refusal,
        }));
        return;
    }
    let switch = if status.writeback_enabled {
        "ON".to_string()
    } else {
        format!(
            "OFF{}",
            match disable_mode(status.last_disable_mode) {
                "" => String::new(),
                m => format!(" (last disable: {m})"),
            }
        )
    };
    println!("Writeback:          {switch}");
    println!("Users known:        {}", status.users_known);
    println!("Memberships known:  {}", status.memberships_known);
    println!("Commands in flight: {} (oldest {} ms)", status.commands_in_flight, status.oldest_in_flight_ms);
    println!("Held deletions:     {}", status.held_deletions);
    println!("Held member removals: {}", status.held_member_removals);
    if status.exchange.is_empty() {
        println!("Exchange:           not reported yet (no writer connected to the directory)");
    } else {
        println!("Exchange:           {}", status.exchange);
        if status.m365_writeback_allowed {
            println!("Microsoft 365 groups: written back (as RemoteGroupMailbox)");
        } else {
            println!("Microsoft 365 groups: refused: {}", status.m365_writeback_refusal);
        }
    }
    println!();
    println!("{:<28} {:<8} {:<8} DETAIL", "SERVICE", "HEALTHY", "VERSION");
    for service in &status.services {
        println!(
            "{:<28} {:<8} {:<8} {}",
            service.service,
            if service.healthy { "yes" } else { "NO" },
            service.version,
            service.detail
        );
    }
    println!();
    println!("{:<14} GROUPS", "STATE");
    for count in &status.groups_by_state {
        println!("{:<14} {}", count.state, count.count);
    }
    if !status.recent_errors.is_empty() {
        println!("\nRecent errors:");
        for error in &status.recent_errors {
            println!("  - {error}");
        }
    }
}

fn print_groups(response: &pb::ListGroupsResponse, as_json: bool) {
    if as_json {
        print_json(json!({
            "groups": response.groups.iter().map(summary_json).collect::<Vec<_>>(),
            "next_page_token": response.next_page_token,
        }));
        return;
    }
    println!("{:<36}  {:<9} {:>7} {:>7}  {:<30} AD DN", "ID", "STATE", "WRITTEN", "SKIPPED", "NAME");
    for group in &response.groups {
        println!(
            "{:<36}  {:<9} {:>7} {:>7}  {:<30} {}",
            group.id,
            group.state,
            group.members_written,
            group.members_skipped,
            truncate(&group.display_name, 30),
            group.ad_dn
        );
    }
    if !response.next_page_token.is_empty() {
        println!("\nMore: gwbctl groups --page-token {}", response.next_page_token);
    }
}

fn summary_json(group: &pb::GroupSummary) -> Value {
    json!({"id": group.id, "display_name": group.display_name, "state": group.state, "ad_dn": group.ad_dn,
           "members_written": group.members_written, "members_skipped": group.members_skipped, "last_error": group.last_error})
}

fn print_group(detail: &pb::GroupDetail, as_json: bool) {
    let summary = detail.summary.clone().unwrap_or_default();
    if as_json {
        print_json(json!({
            "summary": summary_json(&summary),
            "target_type": detail.target_type,
            "ad_object_guid": detail.ad_object_guid,
            "ad_object_sid": detail.ad_object_sid,
            "sam_account_name": detail.sam_account_name,
            "members_written": detail.members_written,
            "members_skipped": detail.members_skipped.iter().map(|m| json!({"member_id": m.member_id, "kind": m.kind, "reason": m.reason})).collect::<Vec<_>>(),
            "policy_reason": detail.policy_reason,
            "addresses_skipped": detail.addresses_skipped,
            "name_clash": detail.name_clash,
            "drift_mode": detail.drift_mode,
            "contested": detail.contested,
            "drift_history": detail.drift_history.iter().map(|d| json!({"at_ms": d.at_ms, "kind": d.kind, "detail": d.detail, "action": d.action})).collect::<Vec<_>>(),
        }));
        return;
    }
    println!("Group:        {} ({})", summary.display_name, summary.id);
    println!("State:        {} — {}", summary.state, detail.policy_reason);
    println!("Target type:  {}", detail.target_type);
    println!("AD DN:        {}", summary.ad_dn);
    println!("objectGUID:   {}", detail.ad_object_guid);
    println!("objectSid:    {}", detail.ad_object_sid);
    println!("sAMAccount:   {}", detail.sam_account_name);
    println!("Drift:        {}", detail.drift_mode);
    if !detail.contested.is_empty() {
        println!("CONTESTED:    {}", detail.contested);
    }
    if !summary.last_error.is_empty() {
        println!("Last error:   {}", summary.last_error);
    }
    if !detail.name_clash.is_empty() {
        println!("Name clash:   {}", detail.name_clash);
    }
    if !detail.addresses_skipped.is_empty() {
        println!("\nProxy addresses not written ({}): another object holds them", detail.addresses_skipped.len());
        for address in &detail.addresses_skipped {
            println!("  {address}");
        }
    }
    println!("\nMembers written ({}):", detail.members_written.len());
    for member in &detail.members_written {
        println!("  {member}");
    }
    println!("\nMembers skipped ({}):", detail.members_skipped.len());
    for member in &detail.members_skipped {
        println!("  {:<36} {:<8} {}", member.member_id, member.kind, member.reason);
    }
    if !detail.drift_history.is_empty() {
        println!("\nDrift (AD edits, newest first):");
        for drift in &detail.drift_history {
            println!("  {:<14} {:<15} {:<10} {}", drift.at_ms, drift.kind, drift.action, drift.detail);
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(max - 1).collect::<String>())
    }
}
