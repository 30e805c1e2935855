//! Upsert, delete and retire: the group object itself (name, place, attributes).

use gwb_core::command::{ApplyReport, GroupSpec};
use gwb_core::escape::{child_dn, dn_value, filter_value};
use ldap3::Scope;

use crate::codec::{CN_MAX_CHARS, dn_eq, fallback_cn, parent_dn};
use crate::directory::Directory;
use crate::error::{DirectoryError, ENTRY_ALREADY_EXISTS};
use crate::group::{GroupEntry, attribute_changes, new_group_attributes};

impl Directory {
    pub(crate) async fn upsert(&mut self, spec: &GroupSpec) -> Result<ApplyReport, DirectoryError> {
        self.validate_spec(spec)?;
        match self.locate_for_write(&spec.anchor).await? {
            None => self.create(spec).await,
            Some(group) => self.update(group, spec).await,
        }
    }

    fn validate_spec(&self, spec: &GroupSpec) -> Result<(), DirectoryError> {
        if spec.anchor.trim().is_empty() {
            return Err(DirectoryError::permanent("group spec has an empty anchor"));
        }
        if spec.cn.trim().is_empty() {
            return Err(DirectoryError::permanent(format!(
                "group {} has an empty name",
                spec.anchor
            )));
        }
        let length = spec.cn.chars().count();
        if length > CN_MAX_CHARS {
            return Err(DirectoryError::permanent(format!(
                "group {} name is {length} characters; AD allows at most {CN_MAX_CHARS}",
                spec.anchor
            )));
        }
        if spec
            .sam_account_name_candidates
            .iter()
            .all(|c| c.trim().is_empty())
        {
            return Err(DirectoryError::permanent(format!(
                "group {} has no sAMAccountName candidate",
                spec.anchor
            )));
        }
        self.check_target_ou(&spec.parent_dn, "target OU")?;
        if spec.group_type.needs_exchange() && !self.caps.has_exchange_schema {
            return Err(DirectoryError::permanent(format!(
                "group {} cannot be written back as {}: this forest's AD schema has no \
                 Exchange attributes (msExchRecipientTypeDetails). Write it back as \
                 universalSecurityGroup, or extend the schema for Exchange first",
                spec.anchor, spec.group_type
            )));
        }
        Ok(())
    }

    async fn create(&mut self, spec: &GroupSpec) -> Result<ApplyReport, DirectoryError> {
        let sam = self.pick_sam(&spec.sam_account_name_candidates).await?;
        let attrs = new_group_attributes(spec, &sam, &self.caps);
        let wanted = child_dn(&spec.cn, &spec.parent_dn);
        let dn = match self.add(&wanted, attrs.clone()).await {
            Ok(()) => wanted,
            Err(e) if e.code == Some(ENTRY_ALREADY_EXISTS) => {
                if !self.exists(&wanted).await? {
                    // The name is free, so the clash was the sAMAccountName, taken
                    // between our check and the add. A retry picks again.
                    return Err(DirectoryError::transient(format!(
                        "sAMAccountName {sam} was taken while creating {wanted}: {}",
                        e.message
                    )));
                }
                // Never adopt the object holding the name: create ours beside it.
                let fallback = fallback_cn(&spec.cn, &spec.object_id);
                let fallback_dn = child_dn(&fallback, &spec.parent_dn);
                tracing::warn!(
                    anchor = %spec.anchor, wanted = %wanted, used = %fallback_dn,
                    "name taken by a foreign object; using the fallback name"
                );
                match self.add(&fallback_dn, attrs).await {
                    Ok(()) => fallback_dn,
                    Err(e) if e.code == Some(ENTRY_ALREADY_EXISTS) => {
                        return Err(DirectoryError::permanent(format!(
                            "cannot create group {}: both {wanted} and {fallback_dn} are taken by \
                             other objects ({})",
                            spec.anchor, e.message
                        )));
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let group = self.read_group(&dn).await?;
        Ok(ApplyReport {
            group: Some(group.applied()),
            changed: true,
            ..ApplyReport::default()
        })
    }

    async fn update(
        &mut self,
        mut group: GroupEntry,
        spec: &GroupSpec,
    ) -> Result<ApplyReport, DirectoryError> {
        let mut changed = self.place(&mut group, spec).await?;

        let keeps_sam = spec
            .sam_account_name_candidates
            .iter()
            .any(|c| c.eq_ignore_ascii_case(&group.sam));
        let new_sam = if keeps_sam {
            None
        } else {
            Some(self.pick_sam(&spec.sam_account_name_candidates).await?)
        };
        let mods = attribute_changes(&group, spec, &self.caps, new_sam.as_deref());
        if !mods.is_empty() {
            let context = format!("update attributes of {}", group.dn);
            self.modify(&group.dn, mods, Vec::new(), &context).await?;
            changed = true;
        }
        if let Some(sam) = new_sam {
            group.sam = sam;
        }
        Ok(ApplyReport {
            group: Some(group.applied()),
            changed,
            ..ApplyReport::default()
        })
    }

    /// Renames and/or moves the group to `CN=<cn>,<parent_dn>` (modDN keeps its
    /// objectGUID and SID). Returns whether it moved.
    async fn place(
        &mut self,
        group: &mut GroupEntry,
        spec: &GroupSpec,
    ) -> Result<bool, DirectoryError> {
        let current_parent = parent_dn(&group.dn).unwrap_or_default().to_string();
        let same_parent = dn_eq(&current_parent, &spec.parent_dn);
        if same_parent && group.cn == spec.cn {
            return Ok(false);
        }
        let new_superior = (!same_parent).then_some(spec.parent_dn.as_str());
        let wanted = child_dn(&spec.cn, &spec.parent_dn);
        let fallback = fallback_cn(&spec.cn, &spec.object_id);
        let at_fallback = same_parent && group.cn == fallback;
        if at_fallback && self.exists(&wanted).await? {
            // The foreign object still holds the wanted name.
            return Ok(false);
        }
        match self
            .move_group(group, &spec.cn, new_superior, &spec.parent_dn)
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if e.code == Some(ENTRY_ALREADY_EXISTS) => {
                if at_fallback || dn_eq(&wanted, &group.dn) {
                    // Either the name was taken again since the check, or only the
                    // letter case differs and the server will not rename onto itself.
                    return Ok(false);
                }
                tracing::warn!(
                    anchor = %spec.anchor, wanted = %wanted, used = %fallback,
                    "name taken by a foreign object; using the fallback name"
                );
                self.move_group(group, &fallback, new_superior, &spec.parent_dn)
                    .await
                    .map_err(|e| {
                        if e.code == Some(ENTRY_ALREADY_EXISTS) {
                            DirectoryError::permanent(format!(
                                "cannot rename {} for {}: both {wanted} and its fallback name \
                                 {fallback} are taken ({})",
                                group.dn, spec.anchor, e.message
                            ))
                        } else {
                            e
                        }
                    })?;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    async fn move_group(
        &mut self,
        group: &mut GroupEntry,
        cn: &str,
        new_superior: Option<&str>,
        parent: &str,
    ) -> Result<(), DirectoryError> {
        let rdn = format!("CN={}", dn_value(cn));
        self.modify_dn(&group.dn, &rdn, new_superior).await?;
        group.dn = child_dn(cn, parent);
        group.cn = cn.to_string();
        Ok(())
    }

    /// The first candidate no object in the domain uses as its sAMAccountName.
    async fn pick_sam(&mut self, candidates: &[String]) -> Result<String, DirectoryError> {
        let base = self.caps.default_naming_context.clone();
        for candidate in candidates.iter().filter(|c| !c.trim().is_empty()) {
            let filter = format!("(sAMAccountName={})", filter_value(candidate));
            let holders = self
                .search(&base, Scope::Subtree, &filter, &["1.1"], Vec::new())
                .await?;
            if holders.is_empty() {
                return Ok(candidate.clone());
            }
        }
        Err(DirectoryError::permanent(format!(
            "every sAMAccountName candidate is already used in the domain: {}",
            candidates.join(", ")
        )))
    }

    pub(crate) async fn delete_group(
        &mut self,
        anchor: &str,
    ) -> Result<ApplyReport, DirectoryError> {
        let Some(group) = self.locate_for_write(anchor).await? else {
            return Ok(ApplyReport::default());
        };
        self.delete(&group.dn).await?;
        Ok(ApplyReport {
            group: None,
            changed: true,
            ..ApplyReport::default()
        })
    }

    pub(crate) async fn retire(
        &mut self,
        anchor: &str,
        retired_ou: &str,
    ) -> Result<ApplyReport, DirectoryError> {
        self.check_target_ou(retired_ou, "retired OU")?;
        let Some(mut group) = self.locate_for_write(anchor).await? else {
            return Ok(ApplyReport::default());
        };
        let current_parent = parent_dn(&group.dn).unwrap_or_default().to_string();
        if dn_eq(&current_parent, retired_ou) {
            return Ok(ApplyReport {
                group: Some(group.applied()),
                changed: false,
                ..ApplyReport::default()
            });
        }
        let cn = group.cn.clone();
        match self
            .move_group(&mut group, &cn, Some(retired_ou), retired_ou)
            .await
        {
            Ok(()) => {}
            Err(e) if e.code == Some(ENTRY_ALREADY_EXISTS) => {
                // Another retired group has the same name: keep both, deterministically.
                let object_id = anchor.strip_prefix("Group_").unwrap_or(anchor);
                let fallback = fallback_cn(&cn, object_id);
                tracing::warn!(
                    anchor = %anchor, retired_ou = %retired_ou, used = %fallback,
                    "name taken in the retired OU; using the fallback name"
                );
                self.move_group(&mut group, &fallback, Some(retired_ou), retired_ou)
                    .await?;
            }
            Err(e) => return Err(e),
        }
        Ok(ApplyReport {
            group: Some(group.applied()),
            changed: true,
            ..ApplyReport::default()
        })
    }
}
