//! What a test sets up in the lab AD around a pipeline: an OU tree of its own, a
//! snapshot of everything outside it, and the cleanup that runs whatever the scenario's
//! result (the end-to-end and reliability tests all start and end the same way).

use std::collections::BTreeMap;

use anyhow::{Context, ensure};

use crate::ad::LabAd;
use crate::pipeline::{Pipeline, unique};

/// DN → uSNChanged of the objects a test must not change (see [`TestLab::outside`]).
pub type Snapshot = BTreeMap<String, String>;

/// A test's OU tree in the lab AD: `OU=<prefix>-<unique>` under the domain root, with
/// `OU=Users` and a groups OU below it.
pub struct TestLab {
    pub ad: LabAd,
    pub root: String,
    pub users_ou: String,
    pub groups_ou: String,
}

impl TestLab {
    /// `OU=<prefix>-<unique>` with `OU=Users` and `OU=Groups`.
    pub async fn new(prefix: &str) -> anyhow::Result<TestLab> {
        TestLab::with_groups_ou(prefix, "Groups").await
    }

    /// `OU=<prefix>-<unique>` with `OU=Users` and `OU=<groups>`.
    pub async fn with_groups_ou(prefix: &str, groups: &str) -> anyhow::Result<TestLab> {
        TestLab::in_lab(&crate::ad::LabEnv::from_process_env(), prefix, groups).await
    }

    /// [`TestLab::with_groups_ou`] on the lab DC `lab` describes (e.g. an Exchange variant).
    pub async fn in_lab(lab: &crate::ad::LabEnv, prefix: &str, groups: &str) -> anyhow::Result<TestLab> {
        let ad = LabAd::from_lab(lab).await?;
        let root = ad.create_ou(&unique(prefix)).await?;
        let users_ou = ad.create_ou_in(&root, "Users").await?;
        let groups_ou = ad.create_ou_in(&root, groups).await?;
        Ok(TestLab { ad, root, users_ou, groups_ou })
    }

    /// Another OU below the root (created when missing); its DN.
    pub async fn ou(&self, name: &str) -> anyhow::Result<String> {
        self.ad.create_ou_in(&self.root, name).await
    }

    /// A new connection to the DC (e.g. after it was restarted under the test).
    pub async fn reconnect(&mut self) -> anyhow::Result<()> {
        self.ad = LabAd::from_env().await?;
        Ok(())
    }

    /// Everything outside the OU tree a test may not change ([`without_volatile`]).
    pub async fn outside(&self) -> anyhow::Result<Snapshot> {
        Ok(without_volatile(self.ad.snapshot_outside(&self.root).await?))
    }

    /// Stops the pipeline and removes the OU tree, whatever `result` is; a failed result
    /// carries the services' log tails.
    pub async fn finish(self, pipeline: Pipeline, result: anyhow::Result<()>) -> anyhow::Result<()> {
        let logs = pipeline.log_tails();
        pipeline.stop().await?;
        self.ad.delete_subtree(&self.root).await?;
        result.with_context(|| logs)
    }

    /// [`TestLab::finish`], and then fails if anything outside the OU tree changed
    /// since `before` (taken with [`TestLab::outside`]); the snapshot is taken while the
    /// services still run.
    pub async fn finish_unchanged(
        self,
        pipeline: Pipeline,
        result: anyhow::Result<()>,
        before: &Snapshot,
    ) -> anyhow::Result<()> {
        let after = self.outside().await;
        self.finish(pipeline, result).await?;
        let after = after?;
        ensure!(*before == after, "objects outside the test OU changed:\n{}", snapshot_diff(before, &after));
        Ok(())
    }
}

/// `snapshot_outside` reduced to the domain's own objects: everything not below an OU
/// (CN=Users, CN=Builtin, CN=System, the privileged groups, krbtgt, …) plus the Domain
/// Controllers OU, without the DC's RID bookkeeping. Test and benchmark fixtures of other
/// sessions live in OUs of their own and change concurrently on a shared lab DC, so they
/// are left out; tests check objects they plant in OUs themselves.
pub fn without_volatile(snapshot: BTreeMap<String, String>) -> BTreeMap<String, String> {
    snapshot
        .into_iter()
        .filter(|(dn, _)| {
            let dn = dn.to_ascii_lowercase();
            let bookkeeping = dn.starts_with("cn=rid set,") || dn.starts_with("cn=rid manager$,");
            let in_fixture_ou =
                dn.split(',').any(|rdn| rdn.trim().starts_with("ou=")) && !dn.contains("ou=domain controllers,");
            !bookkeeping && !in_fixture_ou
        })
        .collect()
}

/// What changed between two snapshots (`+` new, `~` modified, `-` gone).
pub fn snapshot_diff(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> String {
    let mut lines = Vec::new();
    for (dn, usn) in after {
        match before.get(dn) {
            None => lines.push(format!("+ {dn}")),
            Some(old) if old != usn => lines.push(format!("~ {dn} (uSNChanged {old} → {usn})")),
            _ => {}
        }
    }
    for dn in before.keys().filter(|dn| !after.contains_key(*dn)) {
        lines.push(format!("- {dn}"));
    }
    lines.join("\n")
}
