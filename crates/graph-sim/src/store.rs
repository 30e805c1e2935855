//! The simulated tenant: directory objects, member links, and the versioned change
//! log that delta rounds read. Every admin mutation is validated completely before
//! anything changes, then committed as one new tenant version.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use axum::http::StatusCode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::errors::ApiError;
use crate::model::{
    Committed, GenerateResult, GenerateSpec, GeneratedGroupKind, GroupView, MemberRef, NewDirectoryObject,
    ObjectCounts, ObjectKind, ObjectState, SeedResult, UserView,
};
use crate::schema::{self, PropDef, Resource};
use crate::time;

/// Object indices are dense small integers: a multiplicative hash is enough and much
/// faster than SipHash for million-link member sets.
#[derive(Default)]
pub struct IdxHasher(u64);

impl Hasher for IdxHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub type IdxSet = HashSet<u32, BuildHasherDefault<IdxHasher>>;
pub type IdxMap<V> = HashMap<u32, V, BuildHasherDefault<IdxHasher>>;

/// Change-mask bit: the object was created or restored, so it is sent whole.
pub const FULL: u32 = 1 << 31;
/// Change-mask bit: the object was soft- or hard-deleted.
pub const REMOVED: u32 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    Active,
    SoftDeleted,
    /// Kept as a tombstone so that delta can report `@removed: deleted` and the id is
    /// never reused.
    HardDeleted,
}

pub struct Obj {
    pub id: Uuid,
    pub kind: ObjectKind,
    pub life: Life,
    /// Only properties that were ever set, by schema index; `Null` = set to null.
    props: Vec<(u8, Value)>,
    pub members: IdxSet,
}

impl Obj {
    fn new(id: Uuid, kind: ObjectKind) -> Self {
        Obj { id, kind, life: Life::Active, props: Vec::new(), members: IdxSet::default() }
    }

    pub fn get(&self, prop: usize) -> Option<&Value> {
        self.props.iter().find(|(i, _)| usize::from(*i) == prop).map(|(_, v)| v)
    }

    /// Returns whether the value changed. Nulling a property that was never set
    /// leaves it unset, so that it stays omitted from full representations.
    fn set(&mut self, prop: usize, value: Value) -> bool {
        match self.props.iter_mut().find(|(i, _)| usize::from(*i) == prop) {
            Some((_, old)) if *old == value => false,
            Some((_, old)) => {
                *old = value;
                true
            }
            None if value.is_null() => false,
            None => {
                self.props.push((prop as u8, value));
                true
            }
        }
    }

    pub fn resource(&self) -> Option<Resource> {
        match self.kind {
            ObjectKind::User => Some(Resource::Users),
            ObjectKind::Group => Some(Resource::Groups),
            _ => None,
        }
    }

    /// Microsoft 365 groups are the only ones that go to deletedItems.
    fn is_unified(&self) -> bool {
        self.get(schema::GROUP_TYPES)
            .and_then(Value::as_array)
            .is_some_and(|types| types.iter().any(|t| t.as_str().is_some_and(|s| s.eq_ignore_ascii_case("Unified"))))
    }

    fn to_map(&self, defs: &[PropDef]) -> Map<String, Value> {
        self.props
            .iter()
            .filter_map(|(i, v)| defs.get(usize::from(*i)).map(|d| (d.name.to_owned(), v.clone())))
            .collect()
    }

    fn state(&self) -> ObjectState {
        if self.life == Life::SoftDeleted { ObjectState::SoftDeleted } else { ObjectState::Active }
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Change {
    Object { idx: u32, mask: u32 },
    Link { group: u32, member: u32 },
}

#[derive(Clone, Copy, Debug)]
pub struct LogEntry {
    pub version: u64,
    pub change: Change,
}

pub struct Tenant {
    /// Changes on every reset, so that tokens of an earlier tenant are refused.
    pub epoch: u64,
    objects: Vec<Obj>,
    index: HashMap<Uuid, u32>,
    groups: Vec<u32>,
    log: Vec<LogEntry>,
    /// Delta tokens issued before this version can no longer be served.
    floor: u64,
    version: u64,
    /// Commit instant (unix ms) of each version, indexed by version.
    committed_at: Vec<u64>,
    pending: Vec<Change>,
    memberships: usize,
}

fn kind_name(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::User => "user",
        ObjectKind::Group => "group",
        ObjectKind::Device => "device",
        ObjectKind::ServicePrincipal => "servicePrincipal",
        ObjectKind::OrgContact => "orgContact",
        ObjectKind::Application => "application",
    }
}

pub fn parse_id(s: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s.trim()).map_err(|_| ApiError::bad_request(format!("'{s}' is not a valid GUID")))
}

fn parse_id_list(value: &Value, what: &str) -> Result<Vec<Uuid>, ApiError> {
    let Value::Array(items) = value else {
        return Err(ApiError::bad_request(format!("{what} must be an array of GUID strings")));
    };
    items
        .iter()
        .map(|v| match v {
            Value::String(s) => parse_id(s),
            _ => Err(ApiError::bad_request(format!("{what} must be an array of GUID strings"))),
        })
        .collect()
}

fn object_body(value: &Value, what: &str) -> Result<Map<String, Value>, ApiError> {
    match value {
        Value::Object(m) => Ok(m.clone()),
        _ => Err(ApiError::bad_request(format!("{what} must be a JSON object"))),
    }
}

/// A new object checked against the tenant but not yet inserted.
struct Prepared {
    obj: Obj,
    members: Vec<Uuid>,
}

impl Default for Tenant {
    fn default() -> Self {
        Tenant::new()
    }
}

impl Tenant {
    pub fn new() -> Self {
        Tenant {
            epoch: rand::random(),
            objects: Vec::new(),
            index: HashMap::new(),
            groups: Vec::new(),
            log: Vec::new(),
            floor: 0,
            version: 0,
            committed_at: vec![time::now_ms()],
            pending: Vec::new(),
            memberships: 0,
        }
    }

    pub fn obj(&self, idx: u32) -> &Obj {
        &self.objects[idx as usize]
    }

    pub fn objects(&self) -> &[Obj] {
        &self.objects
    }

    pub fn group_indices(&self) -> &[u32] {
        &self.groups
    }

    pub fn index_of(&self, id: &Uuid) -> Option<u32> {
        self.index.get(id).copied()
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    pub fn committed(&self) -> Committed {
        Committed { version: self.version, committed_at_ms: self.committed_at.last().copied().unwrap_or(0) }
    }

    /// Log entries of versions after `version`.
    pub fn log_since(&self, version: u64) -> &[LogEntry] {
        let start = self.log.partition_point(|e| e.version <= version);
        &self.log[start..]
    }

    /// Turns the pending changes into a new version, if there are any.
    pub fn commit(&mut self) -> Committed {
        if !self.pending.is_empty() {
            self.version += 1;
            let last = self.committed_at.last().copied().unwrap_or(0);
            self.committed_at.push(time::now_ms().max(last));
            let v = self.version;
            self.log.extend(self.pending.drain(..).map(|change| LogEntry { version: v, change }));
        }
        self.committed()
    }

    /// Drops log entries no valid delta token can need any more: those of versions
    /// committed before `now - lifetime`. Done in batches to keep it amortized.
    pub fn compact(&mut self, delta_token_lifetime_ms: u64) {
        let cutoff = time::now_ms().saturating_sub(delta_token_lifetime_ms);
        let old_versions = self.committed_at.partition_point(|&t| t < cutoff) as u64;
        let Some(newest_old) = old_versions.checked_sub(1) else {
            return;
        };
        let n = self.log.partition_point(|e| e.version <= newest_old);
        if n >= 4096 || (n > 0 && n * 2 >= self.log.len()) {
            self.log.drain(..n);
            self.floor = self.floor.max(newest_old);
        }
    }

    fn log(&mut self, change: Change) {
        self.pending.push(change);
    }

    /// An object of `kind` that is not hard-deleted.
    fn find(&self, id: Uuid, kind: ObjectKind) -> Result<u32, ApiError> {
        match self.index.get(&id) {
            Some(&i) if self.obj(i).kind == kind && self.obj(i).life != Life::HardDeleted => Ok(i),
            _ => Err(ApiError::not_found(format!("no {} with id {id}", kind_name(kind)))),
        }
    }

    fn find_active(&self, id: Uuid, kind: ObjectKind) -> Result<u32, ApiError> {
        let i = self.find(id, kind)?;
        if self.obj(i).life == Life::SoftDeleted {
            return Err(ApiError::bad_request(format!(
                "{} {id} is deleted (in deletedItems); restore it first",
                kind_name(kind)
            )));
        }
        Ok(i)
    }

    fn fresh_id(&self, given: Option<&Value>, reserved: &HashSet<Uuid>) -> Result<Uuid, ApiError> {
        match given {
            Some(Value::String(s)) => {
                let id = parse_id(s)?;
                if self.index.contains_key(&id) || reserved.contains(&id) {
                    return Err(ApiError::conflict(format!(
                        "an object with id {id} exists or existed; Entra never reuses object ids"
                    )));
                }
                Ok(id)
            }
            None | Some(Value::Null) => loop {
                let id = Uuid::new_v4();
                if !self.index.contains_key(&id) && !reserved.contains(&id) {
                    return Ok(id);
                }
            },
            Some(_) => Err(ApiError::bad_request("id must be a GUID string")),
        }
    }

    fn parse_props(
        resource: Resource,
        body: &Map<String, Value>,
        skip: &[&str],
        creating: bool,
    ) -> Result<Vec<(usize, Value)>, ApiError> {
        let defs = resource.props();
        let mut out = Vec::new();
        for (key, value) in body {
            if skip.contains(&key.as_str()) {
                continue;
            }
            let Some(p) = schema::find(defs, key) else {
                let known: Vec<&str> = defs.iter().map(|d| d.name).collect();
                return Err(ApiError::bad_request(format!(
                    "unknown {} property '{key}'; known: {}",
                    &resource.segment()[..resource.segment().len() - 1],
                    known.join(", ")
                )));
            };
            let v = schema::validate(&defs[p], value).map_err(ApiError::bad_request)?;
            if !(creating && v.is_null()) {
                out.push((p, v));
            }
        }
        Ok(out)
    }

    fn prepare_user(&self, body: &Map<String, Value>, reserved: &HashSet<Uuid>) -> Result<Prepared, ApiError> {
        let id = self.fresh_id(body.get("id"), reserved)?;
        let mut obj = Obj::new(id, ObjectKind::User);
        for (p, v) in Self::parse_props(Resource::Users, body, &["id"], true)? {
            obj.set(p, v);
        }
        Ok(Prepared { obj, members: Vec::new() })
    }

    fn prepare_group(&self, body: &Map<String, Value>, reserved: &HashSet<Uuid>) -> Result<Prepared, ApiError> {
        let id = self.fresh_id(body.get("id"), reserved)?;
        let members = match body.get("members") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => parse_id_list(v, "members")?,
        };
        if members.contains(&id) {
            return Err(ApiError::bad_request("a group cannot be a member of itself"));
        }
        let mut obj = Obj::new(id, ObjectKind::Group);
        for (p, v) in Self::parse_props(Resource::Groups, body, &["id", "members"], true)? {
            obj.set(p, v);
        }
        // Defaults Graph itself fills in on creation.
        for p in [schema::GROUP_TYPES, schema::GROUP_PROXY_ADDRESSES] {
            if obj.get(p).is_none() {
                obj.set(p, json!([]));
            }
        }
        let unified = obj.is_unified();
        if obj.get(schema::GROUP_MAIL_ENABLED).is_none() {
            obj.set(schema::GROUP_MAIL_ENABLED, Value::Bool(unified));
        }
        if obj.get(schema::GROUP_SECURITY_ENABLED).is_none() {
            obj.set(schema::GROUP_SECURITY_ENABLED, Value::Bool(!unified));
        }
        if unified && obj.get(schema::GROUP_VISIBILITY).is_none() {
            obj.set(schema::GROUP_VISIBILITY, "Public".into());
        }
        if obj.get(schema::GROUP_SECURITY_IDENTIFIER).is_none() {
            obj.set(schema::GROUP_SECURITY_IDENTIFIER, schema::cloud_sid(&id).into());
        }
        if obj.get(schema::GROUP_CREATED).is_none() {
            obj.set(schema::GROUP_CREATED, time::iso8601(time::now_ms()).into());
        }
        Ok(Prepared { obj, members })
    }

    fn prepare_other(&self, spec: &NewDirectoryObject, reserved: &HashSet<Uuid>) -> Result<Prepared, ApiError> {
        if matches!(spec.kind, ObjectKind::User | ObjectKind::Group) {
            return Err(ApiError::bad_request("create users and groups through /admin/users and /admin/groups"));
        }
        let given = spec.id.map(|id| Value::String(id.to_string()));
        let id = self.fresh_id(given.as_ref(), reserved)?;
        Ok(Prepared { obj: Obj::new(id, spec.kind), members: Vec::new() })
    }

    fn insert(&mut self, obj: Obj) -> u32 {
        let idx = self.objects.len() as u32;
        self.index.insert(obj.id, idx);
        if obj.kind == ObjectKind::Group {
            self.groups.push(idx);
        }
        self.objects.push(obj);
        self.log(Change::Object { idx, mask: FULL });
        idx
    }

    /// A member to add: it must exist and not be in deletedItems.
    fn member_candidate(&self, id: Uuid, extra: &HashSet<Uuid>) -> Result<(), ApiError> {
        if extra.contains(&id) {
            return Ok(());
        }
        match self.index.get(&id).map(|&i| self.obj(i)) {
            Some(o) if o.life == Life::Active => Ok(()),
            Some(o) if o.life == Life::SoftDeleted => Err(ApiError::bad_request(format!(
                "member {id} is a deleted {} and cannot be added",
                kind_name(o.kind)
            ))),
            _ => Err(ApiError::not_found(format!("member {id} does not exist"))),
        }
    }

    /// Links a new group's initial members; a new group is sent whole, so these links
    /// need no log entries of their own.
    fn link_initial(&mut self, group: u32, members: &[Uuid]) -> usize {
        let idxs: Vec<u32> = members.iter().filter_map(|id| self.index.get(id).copied()).collect();
        let set = &mut self.objects[group as usize].members;
        set.reserve(idxs.len());
        let added = idxs.into_iter().filter(|m| set.insert(*m)).count();
        self.memberships += added;
        added
    }

    pub fn create_user(&mut self, body: &Value) -> Result<u32, ApiError> {
        let body = object_body(body, "the user")?;
        let p = self.prepare_user(&body, &HashSet::new())?;
        Ok(self.insert(p.obj))
    }

    pub fn create_group(&mut self, body: &Value) -> Result<u32, ApiError> {
        let body = object_body(body, "the group")?;
        let p = self.prepare_group(&body, &HashSet::new())?;
        for m in &p.members {
            self.member_candidate(*m, &HashSet::new())?;
        }
        let idx = self.insert(p.obj);
        self.link_initial(idx, &p.members);
        Ok(idx)
    }

    pub fn create_object(&mut self, spec: &NewDirectoryObject) -> Result<u32, ApiError> {
        let p = self.prepare_other(spec, &HashSet::new())?;
        Ok(self.insert(p.obj))
    }

    pub fn update(&mut self, resource: Resource, id: Uuid, body: &Value) -> Result<u32, ApiError> {
        let kind = resource_kind(resource);
        let idx = self.find_active(id, kind)?;
        let body = object_body(body, "the patch")?;
        if let Some(v) = body.get("id")
            && v.as_str().and_then(|s| Uuid::parse_str(s).ok()) != Some(id)
        {
            return Err(ApiError::bad_request("id cannot be changed"));
        }
        if body.contains_key("members") {
            return Err(ApiError::bad_request(
                "members cannot be patched; use /admin/groups/{id}/members and …/members/remove",
            ));
        }
        let props = Self::parse_props(resource, &body, &["id"], false)?;
        let obj = &mut self.objects[idx as usize];
        let mask = props.into_iter().fold(0u32, |mask, (p, v)| if obj.set(p, v) { mask | 1 << p } else { mask });
        if mask != 0 {
            self.log(Change::Object { idx, mask });
        }
        Ok(idx)
    }

    /// Soft delete for users and Microsoft 365 groups, hard delete for everything
    /// else or when `permanent` (graph-api.md §1.3).
    pub fn delete(&mut self, kind: ObjectKind, id: Uuid, permanent: bool) -> Result<(), ApiError> {
        let idx = self.find(id, kind)?;
        let obj = self.obj(idx);
        let soft_capable = match kind {
            ObjectKind::User => true,
            ObjectKind::Group => obj.is_unified(),
            _ => false,
        };
        match obj.life {
            Life::Active if soft_capable && !permanent => {
                self.objects[idx as usize].life = Life::SoftDeleted;
                self.log(Change::Object { idx, mask: REMOVED });
            }
            Life::SoftDeleted if !permanent => {
                return Err(ApiError::not_found(format!(
                    "{} {id} is already in deletedItems; delete it with ?permanent=true",
                    kind_name(kind)
                )));
            }
            _ => self.hard_delete(idx),
        }
        Ok(())
    }

    fn hard_delete(&mut self, idx: u32) {
        for gi in 0..self.groups.len() {
            let g = self.groups[gi];
            if self.objects[g as usize].members.remove(&idx) {
                self.memberships = self.memberships.saturating_sub(1);
                self.log(Change::Link { group: g, member: idx });
            }
        }
        let obj = &mut self.objects[idx as usize];
        self.memberships = self.memberships.saturating_sub(obj.members.len());
        obj.members = IdxSet::default();
        obj.props = Vec::new();
        obj.life = Life::HardDeleted;
        if obj.kind == ObjectKind::Group {
            self.groups.retain(|&g| g != idx);
        }
        self.log(Change::Object { idx, mask: REMOVED });
    }

    pub fn restore(&mut self, kind: ObjectKind, id: Uuid) -> Result<u32, ApiError> {
        let idx = self.find(id, kind)?;
        if self.obj(idx).life != Life::SoftDeleted {
            return Err(ApiError::bad_request(format!("{} {id} is not deleted", kind_name(kind))));
        }
        self.objects[idx as usize].life = Life::Active;
        self.log(Change::Object { idx, mask: FULL });
        Ok(idx)
    }

    /// Returns (links added, ids already members).
    pub fn add_members(&mut self, group: Uuid, ids: &[Uuid]) -> Result<(usize, usize), ApiError> {
        let g = self.find_active(group, ObjectKind::Group)?;
        for id in ids {
            if *id == group {
                return Err(ApiError::bad_request("a group cannot be a member of itself"));
            }
            self.member_candidate(*id, &HashSet::new())?;
        }
        let mut added = 0;
        for id in ids {
            let Some(m) = self.index_of(id) else { continue };
            if self.objects[g as usize].members.insert(m) {
                added += 1;
                self.memberships += 1;
                self.log(Change::Link { group: g, member: m });
            }
        }
        Ok((added, ids.len() - added))
    }

    /// Returns (links removed, ids that were not members). With `strict`, a
    /// non-member is an error.
    pub fn remove_members(&mut self, group: Uuid, ids: &[Uuid], strict: bool) -> Result<(usize, usize), ApiError> {
        let g = self.find_active(group, ObjectKind::Group)?;
        let mut idxs = Vec::with_capacity(ids.len());
        for id in ids {
            let m = match self.index.get(id) {
                Some(&m) if self.obj(m).life != Life::HardDeleted => m,
                _ => return Err(ApiError::not_found(format!("member {id} does not exist"))),
            };
            if strict && !self.obj(g).members.contains(&m) {
                return Err(ApiError::not_found(format!("{id} is not a member of group {group}")));
            }
            idxs.push(m);
        }
        let mut removed = 0;
        for m in idxs {
            if self.objects[g as usize].members.remove(&m) {
                removed += 1;
                self.memberships = self.memberships.saturating_sub(1);
                self.log(Change::Link { group: g, member: m });
            }
        }
        Ok((removed, ids.len() - removed))
    }

    pub fn user_view(&self, id: Uuid) -> Result<UserView, ApiError> {
        let o = self.obj(self.find(id, ObjectKind::User)?);
        let fields = serde_json::from_value(Value::Object(o.to_map(schema::USER_PROPS))).map_err(internal)?;
        Ok(UserView { id, state: o.state(), fields })
    }

    pub fn group_view(&self, id: Uuid, include_members: bool) -> Result<GroupView, ApiError> {
        let o = self.obj(self.find(id, ObjectKind::Group)?);
        let fields = serde_json::from_value(Value::Object(o.to_map(schema::GROUP_PROPS))).map_err(internal)?;
        let members = include_members.then(|| {
            o.members
                .iter()
                .map(|&m| {
                    let mo = self.obj(m);
                    MemberRef { id: mo.id, kind: mo.kind }
                })
                .collect()
        });
        Ok(GroupView { id, state: o.state(), fields, member_count: o.members.len(), members })
    }

    pub fn counts(&self) -> (ObjectCounts, ObjectCounts, usize, usize) {
        let mut users = ObjectCounts::default();
        let mut groups = ObjectCounts::default();
        let mut other = 0;
        for o in &self.objects {
            let c = match o.kind {
                ObjectKind::User => &mut users,
                ObjectKind::Group => &mut groups,
                _ => {
                    other += usize::from(o.life != Life::HardDeleted);
                    continue;
                }
            };
            match o.life {
                Life::Active => c.active += 1,
                Life::SoftDeleted => c.soft_deleted += 1,
                Life::HardDeleted => c.hard_deleted += 1,
            }
        }
        (users, groups, other, self.memberships)
    }

    /// Loads users, groups, other objects and memberships as one version; any error
    /// leaves the tenant untouched.
    pub fn seed(&mut self, body: &Value) -> Result<SeedResult, ApiError> {
        let body = object_body(body, "the seed")?;
        let mut reserved = HashSet::new();
        let mut prepared = Vec::new();
        let list = |key: &str| -> Result<Vec<Value>, ApiError> {
            match body.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) => Ok(a.clone()),
                Some(_) => Err(ApiError::bad_request(format!("seed.{key} must be an array"))),
            }
        };
        if let Some(k) = body.keys().find(|k| !["users", "groups", "objects"].contains(&k.as_str())) {
            return Err(ApiError::bad_request(format!("unknown seed member '{k}' (expected users, groups, objects)")));
        }
        for (i, u) in list("users")?.iter().enumerate() {
            let p = object_body(u, "a seed user")
                .and_then(|m| self.prepare_user(&m, &reserved))
                .map_err(|e| at(e, &format!("users[{i}]")))?;
            reserved.insert(p.obj.id);
            prepared.push(p);
        }
        for (i, o) in list("objects")?.into_iter().enumerate() {
            let spec: NewDirectoryObject =
                serde_json::from_value(o).map_err(|e| ApiError::bad_request(format!("objects[{i}]: {e}")))?;
            let p = self.prepare_other(&spec, &reserved).map_err(|e| at(e, &format!("objects[{i}]")))?;
            reserved.insert(p.obj.id);
            prepared.push(p);
        }
        for (i, g) in list("groups")?.iter().enumerate() {
            let p = object_body(g, "a seed group")
                .and_then(|m| self.prepare_group(&m, &reserved))
                .map_err(|e| at(e, &format!("groups[{i}]")))?;
            reserved.insert(p.obj.id);
            prepared.push(p);
        }
        for p in &prepared {
            for m in &p.members {
                self.member_candidate(*m, &reserved).map_err(|e| at(e, &format!("members of group {}", p.obj.id)))?;
            }
        }
        let mut result = SeedResult {
            version: 0,
            committed_at_ms: 0,
            user_ids: Vec::new(),
            group_ids: Vec::new(),
            object_ids: Vec::new(),
            memberships: 0,
        };
        let mut links = Vec::new();
        for p in prepared {
            match p.obj.kind {
                ObjectKind::User => result.user_ids.push(p.obj.id),
                ObjectKind::Group => result.group_ids.push(p.obj.id),
                _ => result.object_ids.push(p.obj.id),
            }
            let idx = self.insert(p.obj);
            if !p.members.is_empty() {
                links.push((idx, p.members));
            }
        }
        for (g, members) in links {
            result.memberships += self.link_initial(g, &members);
        }
        let c = self.commit();
        result.version = c.version;
        result.committed_at_ms = c.committed_at_ms;
        Ok(result)
    }

    /// Creates a synthetic tenant quickly: ids come from a seeded RNG and each group
    /// takes a contiguous (wrapping) window of users.
    pub fn generate(&mut self, spec: &GenerateSpec) -> Result<GenerateResult, ApiError> {
        let started = std::time::Instant::now();
        validate_generate(spec)?;
        let mut rng = StdRng::seed_from_u64(spec.seed.unwrap_or_else(rand::random));
        let mut next_id = |index: &HashMap<Uuid, u32>| loop {
            let id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
            if !index.contains_key(&id) {
                return id;
            }
        };
        let prefix = &spec.name_prefix;
        let n_users = spec.users as usize;
        // Large groups may need more member users than `users`.
        let total_users = spec.large_groups.iter().map(|&n| n as usize).fold(n_users, usize::max);
        self.objects.reserve(total_users + spec.groups as usize + spec.large_groups.len());
        self.index.reserve(total_users + spec.groups as usize + spec.large_groups.len());
        let mut user_idx = Vec::with_capacity(total_users);
        for i in 0..total_users {
            let mut u = Obj::new(next_id(&self.index), ObjectKind::User);
            u.set(schema::USER_DISPLAY_NAME, format!("{prefix} User {i}").into());
            u.set(schema::USER_PRINCIPAL_NAME, format!("{prefix}.user{i}@{GENERATED_DOMAIN}").into());
            u.set(schema::USER_ACCOUNT_ENABLED, true.into());
            u.set(schema::USER_TYPE, "Member".into());
            if let Some(sid) = &spec.sid_prefix
                && i % 100 < usize::from(spec.synced_percent)
            {
                u.set(schema::USER_ONPREM_SID, format!("{sid}-{}", 1000 + i).into());
                u.set(schema::USER_ONPREM_SYNC_ENABLED, true.into());
                u.set(schema::USER_ONPREM_SAM, format!("{prefix}u{i}").into());
            }
            user_idx.push(self.insert(u));
        }
        let created = time::iso8601(time::now_ms());
        let mut group_ids = Vec::with_capacity(spec.groups as usize);
        let mut memberships = 0;
        let per = spec.members_per_group as usize;
        for g in 0..spec.groups as usize {
            let id = next_id(&self.index);
            let unified = match spec.group_kind {
                GeneratedGroupKind::Security => false,
                GeneratedGroupKind::Unified => true,
                GeneratedGroupKind::Mixed => g % 2 == 1,
            };
            let nick = format!("{prefix}-group-{g}");
            let mut o = Obj::new(id, ObjectKind::Group);
            o.set(schema::GROUP_DISPLAY_NAME, format!("{prefix} Group {g}").into());
            o.set(schema::GROUP_MAIL_NICKNAME, nick.clone().into());
            o.set(schema::GROUP_MAIL_ENABLED, unified.into());
            o.set(schema::GROUP_SECURITY_ENABLED, (!unified).into());
            if unified {
                let mail = format!("{nick}@{GENERATED_DOMAIN}");
                o.set(schema::GROUP_TYPES, json!(["Unified"]));
                o.set(schema::GROUP_PROXY_ADDRESSES, json!([format!("SMTP:{mail}")]));
                o.set(schema::GROUP_MAIL, mail.into());
                o.set(schema::GROUP_VISIBILITY, "Public".into());
            } else {
                o.set(schema::GROUP_TYPES, json!([]));
                o.set(schema::GROUP_PROXY_ADDRESSES, json!([]));
            }
            o.set(schema::GROUP_SECURITY_IDENTIFIER, schema::cloud_sid(&id).into());
            o.set(schema::GROUP_CREATED, created.clone().into());
            if per > 0 {
                o.members.reserve(per);
                let start = g * per;
                o.members.extend((0..per).map(|j| user_idx[(start + j) % n_users]));
                memberships += o.members.len();
            }
            self.insert(o);
            group_ids.push(id);
        }
        for (k, &size) in spec.large_groups.iter().enumerate() {
            let id = next_id(&self.index);
            let mut o = Obj::new(id, ObjectKind::Group);
            o.set(schema::GROUP_DISPLAY_NAME, format!("{prefix} Large Group {k}").into());
            o.set(schema::GROUP_MAIL_NICKNAME, format!("{prefix}-large-{k}").into());
            o.set(schema::GROUP_MAIL_ENABLED, false.into());
            o.set(schema::GROUP_SECURITY_ENABLED, true.into());
            o.set(schema::GROUP_TYPES, json!([]));
            o.set(schema::GROUP_PROXY_ADDRESSES, json!([]));
            o.set(schema::GROUP_SECURITY_IDENTIFIER, schema::cloud_sid(&id).into());
            o.set(schema::GROUP_CREATED, created.clone().into());
            o.members.extend(user_idx.iter().take(size as usize).copied());
            memberships += o.members.len();
            self.insert(o);
            group_ids.push(id);
        }
        self.memberships += memberships;
        let c = self.commit();
        let user_ids = spec.return_user_ids.then(|| user_idx.iter().map(|&i| self.obj(i).id).collect());
        Ok(GenerateResult {
            version: c.version,
            committed_at_ms: c.committed_at_ms,
            users: total_users,
            groups: group_ids.len(),
            memberships,
            group_ids,
            user_ids,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }
}

const GENERATED_DOMAIN: &str = "sim.example";

fn validate_generate(spec: &GenerateSpec) -> Result<(), ApiError> {
    const MAX_USERS: u32 = 2_000_000;
    const MAX_GROUPS: u32 = 200_000;
    const MAX_LINKS: u64 = 20_000_000;
    if spec.users > MAX_USERS || spec.groups > MAX_GROUPS {
        return Err(ApiError::bad_request(format!("at most {MAX_USERS} users and {MAX_GROUPS} groups")));
    }
    if spec.members_per_group > spec.users {
        return Err(ApiError::bad_request("membersPerGroup cannot exceed users (a group has no duplicate members)"));
    }
    let large_links: u64 = spec.large_groups.iter().map(|&n| u64::from(n)).sum();
    if spec.large_groups.len() > 100 || spec.large_groups.iter().any(|&n| n > MAX_USERS) {
        return Err(ApiError::bad_request(format!("at most 100 largeGroups of at most {MAX_USERS} members each")));
    }
    if u64::from(spec.groups) * u64::from(spec.members_per_group) + large_links > MAX_LINKS {
        return Err(ApiError::bad_request(format!("groups × membersPerGroup must be at most {MAX_LINKS}")));
    }
    if spec.synced_percent > 100 {
        return Err(ApiError::bad_request("syncedPercent must be between 0 and 100"));
    }
    if spec.name_prefix.is_empty()
        || !spec.name_prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::bad_request("namePrefix must be non-empty ASCII letters, digits, '-' or '_'"));
    }
    if let Some(sid) = &spec.sid_prefix {
        let sid_def = &schema::USER_PROPS[schema::USER_ONPREM_SID];
        schema::validate(sid_def, &Value::String(sid.clone())).map_err(|_| {
            ApiError::bad_request(format!("sidPrefix '{sid}' is not a SID prefix such as S-1-5-21-1-2-3"))
        })?;
    }
    Ok(())
}

pub fn resource_kind(resource: Resource) -> ObjectKind {
    match resource {
        Resource::Users => ObjectKind::User,
        Resource::Groups => ObjectKind::Group,
    }
}

fn at(mut e: ApiError, place: &str) -> ApiError {
    e.message = format!("{place}: {}", e.message);
    e
}

fn internal(e: serde_json::Error) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "generalException", e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(t: &mut Tenant, name: &str) -> Uuid {
        let i = t.create_user(&json!({"displayName": name})).unwrap();
        t.obj(i).id
    }

    #[test]
    fn versions_only_advance_on_change() {
        let mut t = Tenant::new();
        let u = user(&mut t, "a");
        assert_eq!(t.commit().version, 1);
        t.update(Resource::Users, u, &json!({"displayName": "a"})).unwrap();
        assert_eq!(t.commit().version, 1, "same value is no change");
        t.update(Resource::Users, u, &json!({"displayName": "b"})).unwrap();
        assert_eq!(t.commit().version, 2);
    }

    #[test]
    fn hard_delete_unlinks_everywhere() {
        let mut t = Tenant::new();
        let u = user(&mut t, "a");
        let g1 = t.create_group(&json!({"displayName": "g1", "members": [u.to_string()]})).unwrap();
        let g2 = t.create_group(&json!({"displayName": "g2", "members": [u.to_string()]})).unwrap();
        let before = t.commit();
        assert_eq!(t.counts().3, 2);
        t.delete(ObjectKind::User, u, false).unwrap();
        t.commit();
        assert_eq!(t.counts().3, 2, "soft delete keeps memberships");
        assert!(
            t.log_since(before.version).iter().all(|e| matches!(e.change, Change::Object { .. })),
            "soft delete logs no link change"
        );
        t.delete(ObjectKind::User, u, true).unwrap();
        let after = t.commit();
        assert_eq!(t.counts().3, 0);
        let links: Vec<_> = t
            .log_since(after.version - 1)
            .iter()
            .filter_map(|e| match e.change {
                Change::Link { group, .. } => Some(group),
                Change::Object { .. } => None,
            })
            .collect();
        assert_eq!(links.len(), 2);
        assert!(links.contains(&g1) && links.contains(&g2));
    }

    #[test]
    fn security_group_delete_is_hard_and_unified_is_soft() {
        let mut t = Tenant::new();
        let sec = t.create_group(&json!({"displayName": "s"})).unwrap();
        let m365 = t.create_group(&json!({"displayName": "m", "groupTypes": ["Unified"]})).unwrap();
        let (sec, m365) = (t.obj(sec).id, t.obj(m365).id);
        t.delete(ObjectKind::Group, sec, false).unwrap();
        t.delete(ObjectKind::Group, m365, false).unwrap();
        assert!(t.group_view(sec, false).is_err());
        assert_eq!(t.group_view(m365, false).unwrap().state, ObjectState::SoftDeleted);
        t.restore(ObjectKind::Group, m365).unwrap();
        assert_eq!(t.group_view(m365, false).unwrap().state, ObjectState::Active);
        assert!(t.restore(ObjectKind::Group, sec).is_err());
    }

    #[test]
    fn seed_is_atomic() {
        let mut t = Tenant::new();
        let missing = Uuid::new_v4();
        let err = t
            .seed(&json!({"users": [{"displayName": "a"}], "groups": [{"members": [missing.to_string()]}]}))
            .unwrap_err();
        assert_eq!(err.status, StatusCode::NOT_FOUND);
        assert_eq!(t.objects().len(), 0);
        assert_eq!(t.version(), 0);
    }

    #[test]
    fn group_defaults() {
        let mut t = Tenant::new();
        let g = t.create_group(&json!({"displayName": "m", "groupTypes": ["Unified"]})).unwrap();
        let v = t.group_view(t.obj(g).id, false).unwrap();
        assert_eq!(v.fields.mail_enabled, Some(true));
        assert_eq!(v.fields.security_enabled, Some(false));
        assert_eq!(v.fields.visibility.as_deref(), Some("Public"));
        assert!(v.fields.security_identifier.unwrap().starts_with("S-1-12-1-"));
        assert_eq!(v.fields.proxy_addresses, Some(vec![]));
    }
}
