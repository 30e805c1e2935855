//! Issue 14 item 7 (F8): Graph documents `writebackConfiguration` on the group, not in
//! delta queries. When Graph refuses it in the beta delta `$select`, the collector reads
//! it per changed group (`$batch`, 20 per request), says so in `gwbctl status`, and keeps
//! doing so after a restart. Failed before: every groups round failed with the 400.

use std::time::Duration;

use anyhow::ensure;
use graph_sim::SettingsPatch;
use gwb_tests::fixture::TestLab;
use gwb_tests::pipeline::{Options, Pipeline};
use gwb_tests::workload::security_fields;

const WAIT: Duration = Duration::from_secs(60);

fn with_writeback(name: &str, enabled: Option<bool>) -> graph_sim::NewGroup {
    let fields = graph_sim::GroupFields {
        writeback_configuration: Some(graph_sim::WritebackConfiguration {
            is_enabled: enabled,
            on_premises_group_type: None,
        }),
        ..security_fields(name)
    };
    graph_sim::NewGroup { id: None, fields, members: Vec::new() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writeback_configuration_is_read_per_group_when_delta_refuses_it() -> anyhow::Result<()> {
    let lab = TestLab::with_groups_ou("e2e-wbconfig", "Cloud Groups").await?;
    // No scope rule: only writebackConfiguration.isEnabled decides.
    let mut options = Options::new(&lab.groups_ou);
    options.scope_toml = String::new();
    let mut pipeline = Pipeline::start(options).await?;
    let result = scenario(&mut pipeline).await;
    lab.finish(pipeline, result).await
}

async fn scenario(pipeline: &mut Pipeline) -> anyhow::Result<()> {
    let patch = SettingsPatch { refuse_writeback_in_delta: Some(true), ..Default::default() };
    pipeline.sim.update_settings(&patch).await?;
    // The next full round asks for writebackConfiguration in its $select again.
    pipeline.gwbctl_ok(&["sync", "--full"]).await?;
    pipeline
        .eventually("the collector switches to per-group reads", WAIT, || async {
            let log = pipeline.log("gwb-collector");
            ensure!(log.contains("Graph refuses writebackConfiguration in the delta $select"), "not yet");
            Ok(())
        })
        .await?;
    let enabled = pipeline.sim.create_group(&with_writeback("Enabled", Some(true))).await?.group.id;
    let disabled = pipeline.sim.create_group(&with_writeback("Disabled", Some(false))).await?.group.id;
    pipeline.gwbctl_ok(&["enable"]).await?;
    pipeline.group_in_state(enabled, "written", WAIT).await?;
    pipeline.group_in_state(disabled, "skipped", WAIT).await?;
    pipeline
        .eventually("gwbctl status names the path", WAIT, || async {
            let status = pipeline.gwbctl_ok(&["status"]).await?;
            ensure!(status.contains("writebackConfiguration: read per changed group ($batch"), "{status}");
            // #14 item 9: the budget the collector paces itself under.
            ensure!(status.contains("Graph budget: ") && status.contains("of 3500 resource units used"), "{status}");
            Ok(())
        })
        .await?;

    // After a restart it goes on reading per group, without trying the refused query.
    // (A delta query tracks only what it selects: the change is seen with the group's
    // next change of a selected property, here its description.)
    pipeline.restart("gwb-collector").await?;
    let config = graph_sim::WritebackConfiguration { is_enabled: Some(true), on_premises_group_type: None };
    let patch = graph_sim::GroupFields {
        writeback_configuration: Some(config),
        description: Some("now written back".into()),
        ..Default::default()
    };
    pipeline.sim.update_group(disabled, &patch, &[]).await?;
    pipeline.group_in_state(disabled, "written", WAIT).await?;
    let log = pipeline.log("gwb-collector");
    ensure!(log.contains("as before the restart"), "the restarted collector keeps the per-group reads");
    ensure!(!log.contains("Graph refuses writebackConfiguration"), "no refused query after the restart");
    Ok(())
}
