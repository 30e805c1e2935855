//! Upsert, delete and retire: the group object itself (name, place, attributes).

use std::collections::{HashMap, HashSet};

use gwb_core::command::{ApplyReport, GroupSpec, MemberRef, SkippedAddress};
use gwb_core::escape::{child_dn, dn_value, filter_value};
use ldap3::Scope;

use crate::codec::{
    CN_MAX_CHARS, canonical_sid, dn_eq, fallback_cn, guid_from_bytes, is_privileged_sid, parent_dn, sid_from_bytes,
};
use crate::directory::Directory;
use crate::error::{CONSTRAINT_VIOLATION, DirectoryError, ENTRY_ALREADY_EXISTS, INVALID_ATTRIBUTE_SYNTAX};
use crate::group::{GroupEntry, attribute_changes, binary, new_group_attributes};
use crate::members::MemberOp;

/// A proxy address compared as Exchange does: the address, whatever its prefix's case
/// (primary `SMTP:` and secondary `smtp:` are the same address).
fn address_key(address: &str) -> String {
    address.to_ascii_lowercase()
}

impl Directory {
    pub(crate) async fn upsert(&mut self, spec: &GroupSpec) -> Result<ApplyReport, DirectoryError> {
        self.validate_spec(spec)?;
        match self.locate_for_write(&spec.anchor).await? {
            Some(group) => self.update(group, spec).await,
            None => match self.adopt_original(spec).await? {
                Some(group) => self.update(group, spec).await,
                None => self.create(spec, &[]).await,
            },
        }
    }

    /// A cloud group converted from AD (F3) carries the SID of the AD group it came
    /// from. Before a group is created for it, that original is looked up by SID: when
    /// the operator allows adoption and it lies in an adoptable OU, the anchor is
    /// stamped on it and it is written from now on; otherwise the write is refused, so
    /// no second group with the same purpose and a new SID appears. `None`: no such
    /// group (it was deleted), so a new one is created.
    async fn adopt_original(&mut self, spec: &GroupSpec) -> Result<Option<GroupEntry>, DirectoryError> {
        let Some(sid) = spec.on_premises_sid.as_deref() else { return Ok(None) };
        let mut attrs = crate::group::attributes_to_read(&self.caps);
        attrs.push("objectClass");
        let found = match self.search(&format!("<SID={sid}>"), Scope::Base, "(objectClass=*)", &attrs, Vec::new()).await
        {
            Ok(entries) => entries.into_iter().next(),
            Err(e) if e.code == Some(crate::error::NO_SUCH_OBJECT) => None,
            Err(e) => return Err(e),
        };
        let Some(entry) = found else {
            tracing::info!(anchor = %spec.anchor, %sid, "the AD group this converted cloud group came from is gone; writing a new group");
            return Ok(None);
        };
        let dn = entry.dn.clone();
        let origin = format!("AD group {sid} exists: {dn}");
        let is_group = entry
            .attrs
            .get("objectClass")
            .is_some_and(|classes| classes.iter().any(|c| c.eq_ignore_ascii_case("group")));
        if !is_group {
            return Err(DirectoryError::refused(format!("{origin}, and it is not a group")));
        }
        if !self.config.adopt_converted_groups {
            return Err(DirectoryError::refused(format!(
                "{origin}; this cloud group was converted from it (Group Source of Authority, or sync \
                 switched off). Set [directory] adopt_converted_groups = true and list its OU in \
                 adoptable_ous to write back to it"
            )));
        }
        if !self.is_adopted_place(&dn) {
            return Err(DirectoryError::refused(format!(
                "{origin}, outside [directory] adoptable_ous ({}); list its OU there to write back to it",
                self.config.adoptable_ous.join("; ")
            )));
        }
        let mut group = GroupEntry::from_search(entry)?;
        if let Some(other) = group.admin_description.as_deref().map(str::trim).filter(|d| !d.is_empty())
            && !other.eq_ignore_ascii_case(spec.anchor.trim())
        {
            return Err(DirectoryError::refused(format!(
                "{origin}, and its adminDescription is {other:?}: another tool manages it"
            )));
        }
        group.admin_description = Some(spec.anchor.clone());
        // Every other safety rule (protected, critical, well-known SID) still holds.
        self.check_safe(&group, &spec.anchor).map_err(|e| DirectoryError::refused(format!("{origin}: {e}")))?;
        let stamp = vec![ldap3::Mod::Replace("adminDescription".to_string(), HashSet::from([spec.anchor.clone()]))];
        self.modify(&dn, stamp, Vec::new(), &format!("stamp the anchor on {dn}")).await?;
        tracing::warn!(anchor = %spec.anchor, %sid, %dn, "adopted the original AD group of a converted cloud group");
        self.remember(&spec.anchor, &group.guid);
        Ok(Some(self.read_group(&dn).await?))
    }

    /// An upsert followed by adding `members`. When the group is new, the members
    /// known to exist in this domain go into the create itself: one directory write
    /// instead of two, and on Samba a write costs far more than its values. Every other
    /// member (and all of them when the group existed) takes the ordinary member path,
    /// with its refusals and per-value rejections.
    pub async fn upsert_with_members(
        &mut self,
        spec: &GroupSpec,
        members: &[MemberRef],
    ) -> Result<ApplyReport, DirectoryError> {
        self.validate_spec(spec)?;
        let located = match self.locate_for_write(&spec.anchor).await? {
            Some(group) => Some(group),
            None => self.adopt_original(spec).await?,
        };
        let (mut report, rest) = match located {
            Some(group) => (self.update(group, spec).await?, members.to_vec()),
            None => {
                let (initial, rest) = self.members_for_create(members).await?;
                match self.create(spec, &initial).await {
                    Ok(mut report) => {
                        report.members_added = u32::try_from(initial.len()).unwrap_or(u32::MAX);
                        (report, rest)
                    }
                    // A member vanished since it was looked up, say: create the group
                    // bare and let the member path sort the values out.
                    Err(e) if !e.is_transient() && !initial.is_empty() => {
                        tracing::warn!(anchor = %spec.anchor, error = %e, "create with members failed; creating the group without them");
                        let mut all: Vec<MemberRef> = initial.into_iter().map(|(member, _)| member).collect();
                        all.extend(rest);
                        (self.create(spec, &[]).await?, all)
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        if !rest.is_empty() {
            report = report.combined_with(self.change_members(&spec.anchor, &rest, MemberOp::Add).await?);
        }
        Ok(report)
    }

    /// Splits `members` into those to write in a new group's create (SIDs found in
    /// this domain, with their objectGUIDs, at most one member batch) and the rest.
    /// Only values proven to exist go into an add: Samba turns an unknown SID in an
    /// add into a new foreignSecurityPrincipal object, which is not ours to create.
    async fn members_for_create(
        &mut self,
        members: &[MemberRef],
    ) -> Result<(Vec<(MemberRef, String)>, Vec<MemberRef>), DirectoryError> {
        let limit = self.config.member_batch_size.max(1);
        let mut wanted: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        for member in members {
            if let MemberRef::Sid(sid) = member
                && wanted.len() < limit
                && !is_privileged_sid(sid)
                && seen.insert(canonical_sid(sid))
            {
                wanted.push(sid.clone());
            }
        }
        if wanted.is_empty() {
            return Ok((Vec::new(), members.to_vec()));
        }
        let found = self.find_sids(&wanted).await?;
        let mut initial = Vec::new();
        let mut rest = Vec::new();
        let mut taken = HashSet::new();
        for member in members {
            match member {
                MemberRef::Sid(sid) if initial.len() < limit => match found.get(&canonical_sid(sid)) {
                    Some(guid) if taken.insert(guid.clone()) => initial.push((member.clone(), guid.clone())),
                    Some(_) => {}
                    None => rest.push(member.clone()),
                },
                _ => rest.push(member.clone()),
            }
        }
        Ok((initial, rest))
    }

    /// The objects of this domain that carry these SIDs: canonical SID → objectGUID.
    /// One search per member batch of SIDs (the filter stays a few tens of KB).
    pub(crate) async fn find_sids(&mut self, sids: &[String]) -> Result<HashMap<String, String>, DirectoryError> {
        let base = self.caps.default_naming_context.clone();
        let mut found = HashMap::new();
        for chunk in sids.chunks(self.config.member_batch_size.clamp(1, 500)) {
            let filter = format!(
                "(|{})",
                chunk.iter().map(|sid| format!("(objectSid={})", filter_value(sid))).collect::<String>()
            );
            for entry in self.search(&base, Scope::Subtree, &filter, &["objectSid", "objectGUID"], Vec::new()).await? {
                if let (Some(sid), Some(guid)) = (
                    binary(&entry, "objectSid").and_then(|b| sid_from_bytes(&b)),
                    binary(&entry, "objectGUID").and_then(|b| guid_from_bytes(&b)),
                ) {
                    found.insert(canonical_sid(&sid), guid);
                }
            }
        }
        Ok(found)
    }

    fn validate_spec(&self, spec: &GroupSpec) -> Result<(), DirectoryError> {
        if spec.anchor.trim().is_empty() {
            return Err(DirectoryError::permanent("group spec has an empty anchor"));
        }
        if spec.cn.trim().is_empty() {
            return Err(DirectoryError::permanent(format!("group {} has an empty name", spec.anchor)));
        }
        let length = gwb_core::naming::ad_length(&spec.cn);
        if length > CN_MAX_CHARS {
            return Err(DirectoryError::permanent(format!(
                "group {} name is {length} UTF-16 units long; AD allows at most {CN_MAX_CHARS}",
                spec.anchor
            )));
        }
        if spec.sam_account_name_candidates.iter().all(|c| c.trim().is_empty()) {
            return Err(DirectoryError::permanent(format!("group {} has no sAMAccountName candidate", spec.anchor)));
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
        // The schema has the attributes, but is it a forest Exchange can use them in
        // (a recent enough schema, every attribute written, an organisation)?
        if spec.group_type.needs_exchange()
            && let Err(refusal) = self.caps.exchange.m365_group_writeback()
        {
            return Err(DirectoryError::permanent(format!(
                "group {} cannot be written back as {}: {refusal}. Write it back as universalSecurityGroup",
                spec.anchor, spec.group_type
            )));
        }
        Ok(())
    }

    /// Creates the group, with `members` (values by objectGUID) in the add itself.
    async fn create(
        &mut self,
        spec: &GroupSpec,
        members: &[(MemberRef, String)],
    ) -> Result<ApplyReport, DirectoryError> {
        let (spec, addresses_skipped) = self.without_addresses_of_others(spec, None).await?;
        let spec = &spec;
        let attributes = |directory: &Directory, sam: &str| {
            let mut attrs = new_group_attributes(spec, sam, &directory.caps);
            if !members.is_empty() {
                let values = members.iter().map(|(_, guid)| format!("<GUID={guid}>")).collect();
                attrs.push(("member".to_string(), values));
            }
            attrs
        };
        let wanted = child_dn(&spec.cn, &spec.parent_dn);
        // The first candidate is almost always free: try it, and search the
        // candidates only when the add reports a clash that is not the name.
        let first = spec.sam_account_name_candidates.iter().find(|c| !c.trim().is_empty()).cloned().unwrap_or_default();
        let mut sam = first;
        let mut result = self.add(&wanted, attributes(self, &sam)).await;
        // AD refuses some names outright (constraint violation or bad syntax: a name a
        // DC's rules reject, e.g. a trailing period): take the next candidate, in order,
        // instead of failing the group for good.
        let mut remaining = spec.sam_account_name_candidates.iter().filter(|c| !c.trim().is_empty()).skip(1);
        while matches!(&result, Err(e) if e.code == Some(CONSTRAINT_VIOLATION) || e.code == Some(INVALID_ATTRIBUTE_SYNTAX))
        {
            let Some(next) = remaining.next() else { break };
            if let Err(error) = &result {
                tracing::warn!(anchor = %spec.anchor, refused = %sam, next = %next, %error, "sAMAccountName refused; trying the next candidate");
            }
            sam = next.clone();
            result = self.add(&wanted, attributes(self, &sam)).await;
        }
        let mut name_taken = false;
        let mut name_clash = None;
        if matches!(&result, Err(e) if e.code == Some(ENTRY_ALREADY_EXISTS)) {
            name_taken = self.exists(&wanted).await?;
            sam = self.pick_sam(&spec.sam_account_name_candidates).await?;
            if !name_taken {
                result = self.add(&wanted, attributes(self, &sam)).await;
            }
        }
        let dn = match result {
            Ok(()) => wanted,
            Err(e) if e.code == Some(ENTRY_ALREADY_EXISTS) && !name_taken => {
                // The name is free, so the clash was the sAMAccountName, taken
                // between our check and the add. A retry picks again.
                return Err(DirectoryError::transient(format!(
                    "sAMAccountName {sam} was taken while creating {wanted}: {}",
                    e.message
                )));
            }
            Err(_) if name_taken => {
                // Never adopt the object holding the name: create ours beside it.
                let fallback = fallback_cn(&spec.cn, &spec.object_id);
                let fallback_dn = child_dn(&fallback, &spec.parent_dn);
                tracing::warn!(
                    anchor = %spec.anchor, wanted = %wanted, used = %fallback_dn,
                    "name taken by a foreign object; using the fallback name"
                );
                match self.add(&fallback_dn, attributes(self, &sam)).await {
                    Ok(()) => {
                        name_clash = Some(format!("{wanted} is held by another object; written as {fallback_dn}"));
                        fallback_dn
                    }
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
        self.remember(&spec.anchor, &group.guid);
        Ok(ApplyReport {
            group: Some(group.applied()),
            changed: true,
            addresses_skipped,
            name_clash,
            ..ApplyReport::default()
        })
    }

    async fn update(&mut self, mut group: GroupEntry, spec: &GroupSpec) -> Result<ApplyReport, DirectoryError> {
        let (spec, addresses_skipped) = self.without_addresses_of_others(spec, Some(&group.dn)).await?;
        let spec = &spec;
        // An adopted original group stays where its owners put it, under its name.
        let (mut changed, name_clash) =
            if self.is_adopted_place(&group.dn) { (false, None) } else { self.place(&mut group, spec).await? };

        // A written group keeps its sAMAccountName unless the operator asked it to follow
        // the display name; an empty one (never set) is always filled in.
        let keeps_sam = (!self.config.follow_display_name && !group.sam.is_empty())
            || spec.sam_account_name_candidates.iter().any(|c| c.eq_ignore_ascii_case(&group.sam));
        let new_sam = if keeps_sam { None } else { Some(self.pick_sam(&spec.sam_account_name_candidates).await?) };
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
            addresses_skipped,
            name_clash,
            ..ApplyReport::default()
        })
    }

    /// Renames and/or moves the group to `CN=<cn>,<parent_dn>` (modDN keeps its
    /// objectGUID and SID). Returns whether it moved, and the name clash when another
    /// object holds the wanted name (the group then keeps, or takes, its fallback name).
    async fn place(
        &mut self,
        group: &mut GroupEntry,
        spec: &GroupSpec,
    ) -> Result<(bool, Option<String>), DirectoryError> {
        let current_parent = parent_dn(&group.dn).unwrap_or_default().to_string();
        let same_parent = dn_eq(&current_parent, &spec.parent_dn);
        if same_parent && group.cn == spec.cn {
            return Ok((false, None));
        }
        let new_superior = (!same_parent).then_some(spec.parent_dn.as_str());
        let wanted = child_dn(&spec.cn, &spec.parent_dn);
        let fallback = fallback_cn(&spec.cn, &spec.object_id);
        let at_fallback = same_parent && group.cn == fallback;
        let clash = |group: &GroupEntry| Some(format!("{wanted} is held by another object; written as {}", group.dn));
        if at_fallback && self.exists(&wanted).await? {
            // The foreign object still holds the wanted name.
            return Ok((false, clash(group)));
        }
        match self.move_group(group, &spec.cn, new_superior, &spec.parent_dn).await {
            Ok(()) => Ok((true, None)),
            Err(e) if e.code == Some(ENTRY_ALREADY_EXISTS) => {
                if at_fallback {
                    // The name was taken again since the check.
                    return Ok((false, clash(group)));
                }
                if dn_eq(&wanted, &group.dn) {
                    // Only the letter case differs: the server will not rename onto itself.
                    return Ok((false, None));
                }
                tracing::warn!(
                    anchor = %spec.anchor, wanted = %wanted, used = %fallback,
                    "name taken by a foreign object; using the fallback name"
                );
                self.move_group(group, &fallback, new_superior, &spec.parent_dn).await.map_err(|e| {
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
                Ok((true, clash(group)))
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

    /// The spec without the proxy addresses another object of the domain already holds
    /// (Exchange requires every proxy address to be unique, and an address two
    /// recipients share bounces): those are skipped, with a warning naming the holder,
    /// and written once they are free. `own_dn` is the group itself, when it exists.
    /// The skipped addresses come back with their holders, for the outcome.
    async fn without_addresses_of_others(
        &mut self,
        spec: &GroupSpec,
        own_dn: Option<&str>,
    ) -> Result<(GroupSpec, Vec<SkippedAddress>), DirectoryError> {
        let Some(mail) = spec.mail.as_ref().filter(|m| !m.proxy_addresses.is_empty()) else {
            return Ok((spec.clone(), Vec::new()));
        };
        if !self.caps.has_exchange_schema {
            return Ok((spec.clone(), Vec::new()));
        }
        let filter = format!(
            "(|{})",
            mail.proxy_addresses.iter().map(|a| format!("(proxyAddresses={})", filter_value(a))).collect::<String>()
        );
        let base = self.caps.default_naming_context.clone();
        let holders = self.search(&base, Scope::Subtree, &filter, &["proxyAddresses"], Vec::new()).await?;
        let mut taken: HashMap<String, String> = HashMap::new();
        for holder in holders.iter().filter(|h| own_dn.is_none_or(|own| !dn_eq(&h.dn, own))) {
            for address in crate::directory::values(holder, "proxyAddresses") {
                taken.insert(address_key(&address), holder.dn.clone());
            }
        }
        if taken.is_empty() {
            return Ok((spec.clone(), Vec::new()));
        }
        let mut trimmed = spec.clone();
        let mut skipped = Vec::new();
        if let Some(mail) = trimmed.mail.as_mut() {
            mail.proxy_addresses.retain(|address| match taken.get(&address_key(address)) {
                Some(holder) => {
                    tracing::warn!(anchor = %spec.anchor, %address, %holder, "proxy address held by another recipient: not written");
                    skipped.push(SkippedAddress { address: address.clone(), holder_dn: holder.clone() });
                    false
                }
                None => true,
            });
        }
        Ok((trimmed, skipped))
    }

    /// The first candidate no object in the domain uses as its sAMAccountName.
    async fn pick_sam(&mut self, candidates: &[String]) -> Result<String, DirectoryError> {
        let base = self.caps.default_naming_context.clone();
        for candidate in candidates.iter().filter(|c| !c.trim().is_empty()) {
            let filter = format!("(sAMAccountName={})", filter_value(candidate));
            let holders = self.search(&base, Scope::Subtree, &filter, &["1.1"], Vec::new()).await?;
            if holders.is_empty() {
                return Ok(candidate.clone());
            }
        }
        Err(DirectoryError::permanent(format!(
            "every sAMAccountName candidate is already used in the domain: {}",
            candidates.join(", ")
        )))
    }

    pub(crate) async fn delete_group(&mut self, anchor: &str) -> Result<ApplyReport, DirectoryError> {
        let Some(group) = self.locate_for_write(anchor).await? else {
            return Ok(ApplyReport::default());
        };
        self.delete(&group.dn).await?;
        self.forget(anchor);
        Ok(ApplyReport { group: None, changed: true, ..ApplyReport::default() })
    }

    pub(crate) async fn retire(&mut self, anchor: &str, retired_ou: &str) -> Result<ApplyReport, DirectoryError> {
        self.check_target_ou(retired_ou, "retired OU")?;
        let Some(mut group) = self.locate_for_write(anchor).await? else {
            return Ok(ApplyReport::default());
        };
        let current_parent = parent_dn(&group.dn).unwrap_or_default().to_string();
        if dn_eq(&current_parent, retired_ou) {
            return Ok(ApplyReport { group: Some(group.applied()), changed: false, ..ApplyReport::default() });
        }
        let cn = group.cn.clone();
        match self.move_group(&mut group, &cn, Some(retired_ou), retired_ou).await {
            Ok(()) => {}
            Err(e) if e.code == Some(ENTRY_ALREADY_EXISTS) => {
                // Another retired group has the same name: keep both, deterministically.
                let object_id = anchor.strip_prefix("Group_").unwrap_or(anchor);
                let fallback = fallback_cn(&cn, object_id);
                tracing::warn!(
                    anchor = %anchor, retired_ou = %retired_ou, used = %fallback,
                    "name taken in the retired OU; using the fallback name"
                );
                self.move_group(&mut group, &fallback, Some(retired_ou), retired_ou).await?;
            }
            Err(e) => return Err(e),
        }
        Ok(ApplyReport { group: Some(group.applied()), changed: true, ..ApplyReport::default() })
    }
}
