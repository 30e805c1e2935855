//! The directory watcher's observations: `gwb_core::drift` ↔ `gwb.commands.v1`
//! `DirectoryObservation`, both directions. Decoding refuses a group whose objectGUID
//! is not a GUID (the planner looks written groups up by it) and drops member values
//! whose SID is malformed to "no SID" rather than trusting them.

use gwb_core::drift::{Observation, ObservedGroup, ObservedMember};
use gwb_core::members::is_sid;

use super::commands::is_guid;
use crate::commands::v1 as cmd;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObservationError {
    #[error("observed group {0:?} has no valid objectGUID")]
    BadGuid(String),
    #[error("member {member:?} of observed group {group} has no valid objectGUID")]
    BadMemberGuid { group: String, member: String },
}

impl From<&Observation> for cmd::DirectoryObservation {
    fn from(observation: &Observation) -> Self {
        cmd::DirectoryObservation {
            writer_id: observation.writer_id.clone(),
            dc: observation.dc.clone(),
            observed_at_ms: observation.observed_at_ms,
            full: observation.full,
            groups: observation.groups.iter().map(Into::into).collect(),
        }
    }
}

impl From<&ObservedGroup> for cmd::ObservedGroup {
    fn from(group: &ObservedGroup) -> Self {
        cmd::ObservedGroup {
            object_guid: group.object_guid.clone(),
            object_sid: group.object_sid.clone().unwrap_or_default(),
            dn: group.dn.clone(),
            anchor: group.anchor.clone().unwrap_or_default(),
            deleted: group.deleted,
            in_managed_ous: group.in_managed_ous,
            attributes: group
                .attributes
                .iter()
                .map(|(name, values)| cmd::ObservedAttribute { name: name.clone(), values: values.clone() })
                .collect(),
            mail_read: group.mail_read,
            members: group
                .members
                .iter()
                .map(|m| cmd::ObservedMember {
                    guid: m.guid.clone(),
                    sid: m.sid.clone().unwrap_or_default(),
                    dn: m.dn.clone(),
                })
                .collect(),
            when_changed: group.when_changed.clone(),
            usn_changed: group.usn_changed,
            members_unread: group.members_unread,
        }
    }
}

impl TryFrom<&cmd::DirectoryObservation> for Observation {
    type Error = ObservationError;

    fn try_from(wire: &cmd::DirectoryObservation) -> Result<Self, ObservationError> {
        Ok(Observation {
            writer_id: wire.writer_id.clone(),
            dc: wire.dc.clone(),
            observed_at_ms: wire.observed_at_ms,
            full: wire.full,
            groups: wire.groups.iter().map(ObservedGroup::try_from).collect::<Result<_, _>>()?,
        })
    }
}

impl TryFrom<&cmd::ObservedGroup> for ObservedGroup {
    type Error = ObservationError;

    fn try_from(wire: &cmd::ObservedGroup) -> Result<Self, ObservationError> {
        if !is_guid(&wire.object_guid) {
            return Err(ObservationError::BadGuid(wire.object_guid.clone()));
        }
        let members = wire
            .members
            .iter()
            .map(|m| {
                if !is_guid(&m.guid) {
                    return Err(ObservationError::BadMemberGuid {
                        group: wire.object_guid.clone(),
                        member: m.dn.clone(),
                    });
                }
                Ok(ObservedMember {
                    guid: m.guid.to_ascii_lowercase(),
                    sid: Some(m.sid.clone()).filter(|sid| is_sid(sid)),
                    dn: m.dn.clone(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(ObservedGroup {
            object_guid: wire.object_guid.to_ascii_lowercase(),
            object_sid: Some(wire.object_sid.clone()).filter(|sid| is_sid(sid)),
            dn: wire.dn.clone(),
            anchor: Some(wire.anchor.clone()).filter(|anchor| !anchor.is_empty()),
            deleted: wire.deleted,
            in_managed_ous: wire.in_managed_ous,
            attributes: wire.attributes.iter().map(|a| (a.name.clone(), a.values.clone())).collect(),
            mail_read: wire.mail_read,
            members,
            members_unread: wire.members_unread,
            when_changed: wire.when_changed.clone(),
            usn_changed: wire.usn_changed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group() -> ObservedGroup {
        ObservedGroup {
            object_guid: "33333333-3333-3333-3333-333333333333".into(),
            object_sid: Some("S-1-5-21-1-2-3-1105".into()),
            dn: "CN=Sales,OU=Cloud,DC=lab,DC=example".into(),
            anchor: Some("Group_x".into()),
            in_managed_ous: true,
            attributes: vec![("description".into(), vec!["d".into()])],
            members: vec![ObservedMember {
                guid: "11111111-1111-1111-1111-111111111111".into(),
                sid: Some("S-1-5-21-1-2-3-1001".into()),
                dn: "CN=alice".into(),
            }],
            when_changed: "20261202135629.0Z".into(),
            usn_changed: 3941,
            ..Default::default()
        }
    }

    #[test]
    fn an_observation_round_trips() {
        let observation = Observation {
            writer_id: "w".into(),
            dc: "dc1".into(),
            observed_at_ms: 5,
            full: true,
            groups: vec![group()],
        };
        let wire = cmd::DirectoryObservation::from(&observation);
        assert_eq!(Observation::try_from(&wire).unwrap(), observation);
    }

    #[test]
    fn hostile_identifiers_are_refused_or_dropped() {
        let mut wire = cmd::ObservedGroup::from(&group());
        wire.members[0].sid = "S-1-5-21-1)(x".into();
        assert_eq!(ObservedGroup::try_from(&wire).unwrap().members[0].sid, None);
        wire.members[0].guid = "not-a-guid".into();
        assert!(matches!(ObservedGroup::try_from(&wire), Err(ObservationError::BadMemberGuid { .. })));
        let mut wire = cmd::ObservedGroup::from(&group());
        wire.object_guid = "<GUID=x>".into();
        assert_eq!(ObservedGroup::try_from(&wire).unwrap_err(), ObservationError::BadGuid("<GUID=x>".into()));
    }
}
