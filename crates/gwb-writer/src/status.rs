//! The writer's periodic health and capability report: published to the planner on
//! the outcomes route, kept as the answer to `GetWriterState`, and reflected in the
//! gRPC health of `gwb.control.v1.Writer` and the `/healthz` of the metrics server.

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tonic::server::NamedService as _;

use gwb_bus::{Message, Route};
use gwb_ldap::Directory;
use gwb_proto::commands::v1 as cmd;
use gwb_proto::control::v1 as pb;
use gwb_proto::message_types::WRITER_STATUS_TYPE;

use crate::Shared;
use crate::control::WriterServer;

/// Reports every `every` until shutdown, on a directory connection of its own (a
/// partition's connection may be busy with a long member write).
pub(crate) async fn report_status(shared: Arc<Shared>, every: Duration) {
    let mut directory: Option<Directory> = None;
    let mut last_failure: Option<String> = None;
    while !shared.shutdown.is_triggered() {
        let mut status = cmd::WriterStatus {
            writer_id: shared.writer_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            dry_run: shared.dry_run,
            at_ms: shared.clock.now_ms(),
            ..Default::default()
        };
        if shared.dry_run {
            status.directory_connected = true;
            status.detail = "dry run: no directory connection".into();
        } else {
            check_directory(&shared, &mut directory, &mut status, &mut last_failure).await;
        }
        status.paused = shared.pause.reason().is_some();
        share(&shared, &status).await;
        publish(&shared, &status).await;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shared.shutdown.triggered() => {}
        }
    }
}

/// Fills in whether the directory answers and what it can hold; a connection that
/// failed is dropped and made again next time.
/// A failure is logged at warn with its class when it starts or changes, and its end
/// at info, so an operator sees TLS, bind and reachability problems in the log without
/// one line per status interval.
async fn check_directory(
    shared: &Shared,
    directory: &mut Option<Directory>,
    status: &mut cmd::WriterStatus,
    last_failure: &mut Option<String>,
) {
    let healthy = match directory.as_mut() {
        Some(existing) => existing.check_health().await,
        None => match Directory::connect(shared.directory_config.clone()).await {
            Ok(connected) => {
                *directory = Some(connected);
                Ok(())
            }
            Err(error) => Err(error),
        },
    };
    match (healthy, directory.as_ref()) {
        (Ok(()), Some(connected)) => {
            if last_failure.take().is_some() {
                tracing::info!(url = %shared.directory_config.url, "directory reachable again");
            }
            let caps = connected.capabilities();
            status.directory_connected = true;
            status.has_exchange_schema = caps.has_exchange_schema;
            status.has_external_directory_object_id = caps.has_external_directory_object_id;
            status.supports_permissive_modify = caps.supports_permissive_modify;
            status.missing_ous = caps.missing_ous.clone();
            status.unwritable_ous = caps.unwritable_ous.clone();
            status.exchange = Some(exchange_status(&caps.exchange));
            status.detail = describe(caps);
        }
        (Ok(()), None) => status.detail = "not connected".into(),
        (Err(error), _) => {
            let message = error.to_string();
            if last_failure.as_deref() != Some(message.as_str()) {
                tracing::warn!(
                    url = %shared.directory_config.url,
                    class = ?error.class,
                    ldap_code = ?error.code,
                    %error,
                    "directory unavailable to the writer"
                );
            }
            *last_failure = Some(message.clone());
            status.detail = message;
            *directory = None;
        }
    }
}

/// What was found of Exchange, and whether mail-enabled groups may be written.
fn exchange_status(found: &gwb_ldap::ExchangeDetection) -> cmd::ExchangeStatus {
    let refusal = found.m365_group_writeback().err();
    cmd::ExchangeStatus {
        description: found.description(),
        schema_version: found.schema_version.unwrap_or(0),
        schema_label: found.schema_label.clone(),
        organization: found.organization.clone().unwrap_or_default(),
        organization_version: found.organization_version.unwrap_or(0),
        servers: u32::try_from(found.servers).unwrap_or(u32::MAX),
        m365_writeback_allowed: refusal.is_none(),
        m365_writeback_refusal: refusal.map(|r| r.to_string()).unwrap_or_default(),
    }
}

/// The status line an operator reads: the DC, and what stops writes under which OUs.
fn describe(caps: &gwb_ldap::Capabilities) -> String {
    let mut detail = format!("connected to {}", caps.dns_host_name);
    if !caps.missing_ous.is_empty() {
        detail.push_str(&format!("; managed OUs missing: {}", caps.missing_ous.join("; ")));
    }
    if !caps.unwritable_ous.is_empty() {
        detail.push_str(&format!("; the bind account may not create groups in: {}", caps.unwritable_ous.join("; ")));
    }
    detail
}

/// Makes the status what this process says about itself: `/healthz`, the gRPC health
/// of the Writer service and the `GetWriterState` answer.
async fn share(shared: &Shared, status: &cmd::WriterStatus) {
    if let Some(metrics) = gwb_runtime::metrics::global() {
        metrics.set_healthy(status.directory_connected);
    }
    let serving = if status.directory_connected {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    shared.health.set_service_status(WriterServer::NAME, serving).await;
    if let Ok(mut snapshot) = shared.snapshot.lock() {
        *snapshot = pb::WriterState::from(status);
    }
}

/// Sends the status to the planner; a failure is logged and the next report follows.
async fn publish(shared: &Shared, status: &cmd::WriterStatus) {
    let message = Message {
        id: format!("status-{}-{}", shared.writer_id, status.at_ms),
        kind: WRITER_STATUS_TYPE,
        payload: status.encode_to_vec(),
        headers: Default::default(),
        timestamp_ms: status.at_ms,
    };
    if let Err(error) = shared.publisher.publish(&Route::Outcomes, &message).await {
        tracing::warn!(%error, "could not publish writer status");
    }
}
