//! Membership changes in batches, and ranged reads of large groups.

use std::collections::HashSet;

use gwb_core::command::{ApplyReport, MemberRef};
use ldap3::{Mod, Scope};

use crate::codec::{canonical_guid, canonical_sid, parse_extended_dn, parse_range};
use crate::directory::{AdMember, Directory, extended_dn, permissive_modify, values};
use crate::error::{
    ATTRIBUTE_OR_VALUE_EXISTS, CONSTRAINT_VIOLATION, DirectoryError, ENTRY_ALREADY_EXISTS, INVALID_ATTRIBUTE_SYNTAX,
    INVALID_DN_SYNTAX, NO_SUCH_ATTRIBUTE, NO_SUCH_OBJECT, UNWILLING_TO_PERFORM,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemberOp {
    Add,
    Remove,
}

impl MemberOp {
    /// Codes meaning "some value was already in (or already out of) the group".
    /// Samba 4.17 reports these even under permissive modify, as would an AD that does
    /// not offer the control: 68/20 on add, 16/53 on delete.
    fn is_state_conflict(self, code: Option<u32>) -> bool {
        match self {
            MemberOp::Add => matches!(code, Some(ENTRY_ALREADY_EXISTS | ATTRIBUTE_OR_VALUE_EXISTS)),
            MemberOp::Remove => matches!(code, Some(NO_SUCH_ATTRIBUTE | UNWILLING_TO_PERFORM)),
        }
    }
}

/// Codes a single bad value can cause (unknown SID → 53, unknown GUID → 32, …):
/// worth isolating the value instead of failing the whole batch.
fn is_value_problem(code: Option<u32>) -> bool {
    matches!(
        code,
        Some(
            NO_SUCH_ATTRIBUTE
                | CONSTRAINT_VIOLATION
                | ATTRIBUTE_OR_VALUE_EXISTS
                | INVALID_ATTRIBUTE_SYNTAX
                | NO_SUCH_OBJECT
                | INVALID_DN_SYNTAX
                | UNWILLING_TO_PERFORM
                | ENTRY_ALREADY_EXISTS
        )
    )
}

/// The group's current members, keyed the two ways a `MemberRef` can name them.
#[derive(Debug, Default)]
struct CurrentMembers {
    sids: HashSet<String>,
    guids: HashSet<String>,
}

impl CurrentMembers {
    fn new(members: &[AdMember]) -> Self {
        let mut current = CurrentMembers::default();
        for member in members {
            current.guids.insert(canonical_guid(&member.guid));
            if let Some(sid) = &member.sid {
                current.sids.insert(canonical_sid(sid));
            }
        }
        current
    }

    fn contains(&self, member: &MemberRef) -> bool {
        match member {
            MemberRef::Sid(sid) => self.sids.contains(&canonical_sid(sid)),
            MemberRef::Guid(guid) => self.guids.contains(&canonical_guid(guid)),
        }
    }

    fn record(&mut self, member: &MemberRef, op: MemberOp) {
        let (set, key) = match member {
            MemberRef::Sid(sid) => (&mut self.sids, canonical_sid(sid)),
            MemberRef::Guid(guid) => (&mut self.guids, canonical_guid(guid)),
        };
        match op {
            MemberOp::Add => set.insert(key),
            MemberOp::Remove => set.remove(&key),
        };
    }

    fn needs_change(&self, member: &MemberRef, op: MemberOp) -> bool {
        match op {
            MemberOp::Add => !self.contains(member),
            MemberOp::Remove => self.contains(member),
        }
    }
}

fn dedupe(members: &[MemberRef]) -> Vec<MemberRef> {
    let mut seen = HashSet::new();
    members
        .iter()
        .filter(|m| {
            seen.insert(match m {
                MemberRef::Sid(sid) => format!("sid:{}", canonical_sid(sid)),
                MemberRef::Guid(guid) => format!("guid:{}", canonical_guid(guid)),
            })
        })
        .cloned()
        .collect()
}

fn count(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

impl Directory {
    pub(crate) async fn change_members(
        &mut self,
        anchor: &str,
        members: &[MemberRef],
        op: MemberOp,
    ) -> Result<ApplyReport, DirectoryError> {
        let group = self.locate_for_write(anchor).await?.ok_or_else(|| {
            DirectoryError::permanent(format!(
                "no group carries anchor {anchor} in the managed OUs; upsert it before \
                 changing its members"
            ))
        })?;
        let mut report = ApplyReport { group: Some(group.applied()), ..ApplyReport::default() };
        // Never nest a privileged or well-known principal (BUILTIN\Administrators,
        // Domain Admins…) into a group: adding it would change that principal's
        // memberships, whoever asked. Removing one is harmless and allowed.
        let (refused, allowed): (Vec<MemberRef>, Vec<MemberRef>) = dedupe(members).into_iter().partition(|m| {
            op == MemberOp::Add && matches!(m, MemberRef::Sid(sid) if crate::codec::is_privileged_sid(sid))
        });
        for member in refused {
            tracing::warn!(anchor, member = ?member, "refusing to add a well-known or privileged SID as a member");
            report.members_rejected.push((member, "well-known or privileged SID: never added as a member".into()));
        }
        // Only members that exist go into an add: a `<SID=…>` value no object of this
        // domain carries (another domain's user, a stale SID) makes the DC create a
        // foreignSecurityPrincipal outside every managed OU, which is not ours to create.
        // Such members are skipped with the reason (the planner retries them later);
        // SIDs of domains the operator listed as trusted (`foreign_domain_sids`) are
        // written, as a trust needs.
        let unique = if op == MemberOp::Add { self.only_existing_sids(allowed, &mut report).await? } else { allowed };
        let batch_size = self.config.member_batch_size.max(1);
        // A stack, so bisected halves are retried before the remaining batches.
        let mut pending: Vec<Vec<MemberRef>> = unique.chunks(batch_size).rev().map(<[MemberRef]>::to_vec).collect();
        // Read lazily: only a replay (or a clash) needs the current membership.
        let mut current: Option<CurrentMembers> = None;

        while let Some(batch) = pending.pop() {
            let batch = match &current {
                Some(known) => {
                    let (todo, done): (Vec<_>, Vec<_>) = batch.into_iter().partition(|m| known.needs_change(m, op));
                    report.members_unchanged += count(done.len());
                    todo
                }
                None => batch,
            };
            if batch.is_empty() {
                continue;
            }
            match self.modify_members(&group.dn, op, &batch).await {
                Ok(()) => {
                    match op {
                        MemberOp::Add => report.members_added += count(batch.len()),
                        MemberOp::Remove => report.members_removed += count(batch.len()),
                    }
                    if let Some(known) = &mut current {
                        for member in &batch {
                            known.record(member, op);
                        }
                    }
                }
                Err(e) if e.is_transient() => return Err(e),
                Err(e) if current.is_none() && op.is_state_conflict(e.code) => {
                    current = Some(CurrentMembers::new(&self.read_members_of(&group.dn).await?));
                    pending.push(batch);
                }
                Err(e) if is_value_problem(e.code) && batch.len() > 1 => {
                    let (left, right) = batch.split_at(batch.len() / 2);
                    pending.push(right.to_vec());
                    pending.push(left.to_vec());
                }
                Err(e) if is_value_problem(e.code) => {
                    for member in batch {
                        tracing::warn!(
                            group = %group.dn, member = %member.ldap_value(), error = %e,
                            "member value rejected by the directory"
                        );
                        report.members_rejected.push((member, e.message.clone()));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        report.changed = report.members_added + report.members_removed > 0;
        Ok(report)
    }

    async fn only_existing_sids(
        &mut self,
        members: Vec<MemberRef>,
        report: &mut ApplyReport,
    ) -> Result<Vec<MemberRef>, DirectoryError> {
        let sids: Vec<String> = members
            .iter()
            .filter_map(|m| match m {
                MemberRef::Sid(sid) if !self.is_trusted_foreign_sid(sid) => Some(sid.clone()),
                _ => None,
            })
            .collect();
        if sids.is_empty() {
            return Ok(members);
        }
        let found = self.find_sids(&sids).await?;
        let mut kept = Vec::with_capacity(members.len());
        for member in members {
            match &member {
                MemberRef::Sid(sid)
                    if !self.is_trusted_foreign_sid(sid) && !found.contains_key(&canonical_sid(sid)) =>
                {
                    tracing::info!(member = %sid, "member SID is not an object of this domain; skipped");
                    report.members_rejected.push((
                        member.clone(),
                        format!(
                            "SID {sid} is no object of this domain (another domain's account, or a stale SID): not \
                             written, so the DC creates no foreignSecurityPrincipal; list its domain in \
                             [directory] foreign_domain_sids if it is a trusted domain"
                        ),
                    ));
                }
                _ => kept.push(member),
            }
        }
        Ok(kept)
    }

    /// Whether `sid` belongs to a domain the operator listed as trusted: its domain part
    /// (the SID without its last sub-authority, the RID) is in `foreign_domain_sids`.
    fn is_trusted_foreign_sid(&self, sid: &str) -> bool {
        let sid = canonical_sid(sid);
        let Some((domain, _rid)) = sid.rsplit_once('-') else { return false };
        self.config.foreign_domain_sids.iter().any(|trusted| canonical_sid(trusted) == domain)
    }

    async fn modify_members(&mut self, dn: &str, op: MemberOp, batch: &[MemberRef]) -> Result<(), DirectoryError> {
        let values: HashSet<String> = batch.iter().map(MemberRef::ldap_value).collect();
        let (change, verb) = match op {
            MemberOp::Add => (Mod::Add("member".to_string(), values), "add"),
            MemberOp::Remove => (Mod::Delete("member".to_string(), values), "remove"),
        };
        let controls = if self.caps.supports_permissive_modify { vec![permissive_modify()] } else { Vec::new() };
        let context = format!("{verb} {} member value(s) of {dn}", batch.len());
        self.modify(dn, vec![change], controls, &context).await
    }

    /// All members of `dn`, read in ranges with the extended-DN control so each value
    /// carries the member's GUID and SID.
    ///
    /// Windows caps each answer at MaxValRange (1,500 by default) even for `N-*`;
    /// Samba returns everything for `N-*` but honours explicit windows. Asking for
    /// explicit windows of at most 1,500 pages the same way on both, and a smaller
    /// MaxValRange just yields shorter windows.
    pub(crate) async fn read_members_of(&mut self, dn: &str) -> Result<Vec<AdMember>, DirectoryError> {
        const WINDOW: usize = 1500;
        let mut members = Vec::new();
        let mut start = 0usize;
        loop {
            let attribute = format!("member;range={start}-{}", start + WINDOW - 1);
            let entry = self
                .search(dn, Scope::Base, "(objectClass=*)", &[attribute.as_str()], vec![extended_dn()])
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| DirectoryError::permanent(format!("{dn} vanished while reading members")))?;
            let ranged =
                entry.attrs.iter().find_map(|(name, vals)| parse_range(name, "member").map(|range| (range, vals)));
            let (chunk, next) = match ranged {
                Some(((_, Some(high)), vals)) if high >= start => (vals.clone(), Some(high + 1)),
                Some(((_, Some(high)), _)) => {
                    return Err(DirectoryError::permanent(format!(
                        "ranged read of {dn} went backwards (asked from {start}, got up to {high})"
                    )));
                }
                Some(((_, None), vals)) => (vals.clone(), None),
                // Servers without range support answer with the plain attribute; an
                // empty group has no member attribute at all.
                None => (values(&entry, "member"), None),
            };
            for value in chunk {
                let member = parse_extended_dn(&value).ok_or_else(|| {
                    DirectoryError::permanent(format!("member value of {dn} is not in extended-DN form: {value}"))
                })?;
                members.push(AdMember { dn: member.dn, guid: member.guid, sid: member.sid });
            }
            match next {
                Some(next) => start = next,
                None => break,
            }
        }
        Ok(members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_is_case_insensitive_per_kind() {
        let members = vec![
            MemberRef::Sid("S-1-5-21-1-2-3-1001".into()),
            MemberRef::Sid("s-1-5-21-1-2-3-1001".into()),
            MemberRef::Guid("ABC".into()),
            MemberRef::Guid("abc".into()),
            MemberRef::Sid("S-1-5-21-1-2-3-1002".into()),
        ];
        assert_eq!(dedupe(&members).len(), 3);
    }

    #[test]
    fn current_members_filter_both_ways() {
        let mut current = CurrentMembers::new(&[AdMember {
            dn: "CN=u,DC=x".into(),
            guid: "D703952B-E89E-4914-840F-9C46B1318C16".into(),
            sid: Some("S-1-5-21-1-2-3-1001".into()),
        }]);
        let by_sid = MemberRef::Sid("S-1-5-21-1-2-3-1001".into());
        let by_guid = MemberRef::Guid("d703952b-e89e-4914-840f-9c46b1318c16".into());
        let other = MemberRef::Sid("S-1-5-21-1-2-3-1002".into());
        assert!(!current.needs_change(&by_sid, MemberOp::Add));
        assert!(!current.needs_change(&by_guid, MemberOp::Add));
        assert!(current.needs_change(&other, MemberOp::Add));
        assert!(current.needs_change(&by_sid, MemberOp::Remove));
        assert!(!current.needs_change(&other, MemberOp::Remove));
        current.record(&other, MemberOp::Add);
        assert!(current.needs_change(&other, MemberOp::Remove));
        current.record(&by_sid, MemberOp::Remove);
        assert!(current.needs_change(&by_sid, MemberOp::Add));
    }

    #[test]
    fn conflict_and_value_codes() {
        assert!(MemberOp::Add.is_state_conflict(Some(68)));
        assert!(MemberOp::Add.is_state_conflict(Some(20)));
        assert!(!MemberOp::Add.is_state_conflict(Some(53)));
        assert!(MemberOp::Remove.is_state_conflict(Some(53)));
        assert!(MemberOp::Remove.is_state_conflict(Some(16)));
        assert!(is_value_problem(Some(32)));
        assert!(!is_value_problem(Some(50)));
        assert!(!is_value_problem(None));
    }
}
