//! The delta engine: query options, planning a round from the tenant or its change
//! log, cutting it into pages, and rendering objects as Graph does (graph-api.md §1).
//!
//! A round is planned once, when it starts: the set of objects and member links it
//! reports is fixed then, and its deltaLink carries the tenant version it started
//! at. Property values are read when a page is rendered, so a change made during a
//! round may show early and is reported again by the next round (Graph also
//! replays changes; clients must be idempotent).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::seq::SliceRandom;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::config::{PagingConfig, RemovedReason};
use crate::errors::ApiError;
use crate::schema::{self, ApiVersion, Resource};
use crate::store::{Change, FULL, IdxMap, IdxSet, Life, REMOVED, Tenant, resource_kind};

/// At most this many ids in `$filter=id eq … or …` (graph-api.md §1.1).
pub const MAX_FILTER_IDS: usize = 50;

/// What a round tracks and returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// `$select` names as requested (canonical casing), `None` without `$select`.
    pub select_names: Option<Vec<String>>,
    select: Option<Vec<usize>>,
    /// Whether `members@delta` is tracked.
    pub members: bool,
    pub filter: Option<Vec<Uuid>>,
}

impl Query {
    pub fn new(
        resource: Resource,
        api: ApiVersion,
        select: Option<&str>,
        filter: Option<Vec<Uuid>>,
    ) -> Result<Query, ApiError> {
        let raw = select.map(str::trim).filter(|s| !s.is_empty());
        let Some(raw) = raw else {
            return Ok(Query { select_names: None, select: None, members: resource == Resource::Groups, filter });
        };
        let defs = resource.props();
        let mut names = Vec::new();
        let mut props = Vec::new();
        let mut members = false;
        for name in raw.split(',').map(str::trim) {
            let canonical = if name.eq_ignore_ascii_case("id") {
                "id"
            } else if resource == Resource::Groups && name.eq_ignore_ascii_case("members") {
                members = true;
                "members"
            } else {
                match schema::find(defs, name) {
                    Some(p) if api == ApiVersion::Beta || !defs[p].beta_only => {
                        if !props.contains(&p) {
                            props.push(p);
                        }
                        defs[p].name
                    }
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "Could not find a property named '{name}' on type '{}'.",
                            resource.odata_type_name()
                        )));
                    }
                }
            };
            if !names.iter().any(|n| n == canonical) {
                names.push(canonical.to_owned());
            }
        }
        Ok(Query { select_names: Some(names), select: Some(props), members, filter })
    }

    /// Properties whose change brings an object back: the selected ones, or all.
    fn tracked(&self, resource: Resource, api: ApiVersion) -> u32 {
        match &self.select {
            None => schema::all_mask(resource.props(), api),
            Some(props) => props.iter().fold(0, |m, p| m | 1 << p),
        }
    }

    pub(crate) fn returned(&self, resource: Resource, api: ApiVersion) -> Vec<usize> {
        match &self.select {
            None => schema::default_props(resource.props(), api),
            Some(props) => props.clone(),
        }
    }

    /// `(displayName,members)` for `@odata.context`, empty without `$select`.
    pub fn context_suffix(&self) -> String {
        match &self.select_names {
            Some(names) => format!("({})", names.join(",")),
            None => String::new(),
        }
    }
}

/// Parses `id eq '…' or id eq '…'`, the only filter delta supports.
pub fn parse_filter(raw: &str) -> Result<Vec<Uuid>, ApiError> {
    let unsupported = || {
        ApiError::bad_request(format!(
            "Unsupported $filter '{raw}': delta supports only \"id eq '{{guid}}' or id eq '{{guid}}' …\""
        ))
    };
    let mut ids = Vec::new();
    let mut words = raw.split_whitespace();
    loop {
        let (Some(field), Some(op), Some(value)) = (words.next(), words.next(), words.next()) else {
            return Err(unsupported());
        };
        if !field.eq_ignore_ascii_case("id") || !op.eq_ignore_ascii_case("eq") {
            return Err(unsupported());
        }
        let inner = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).ok_or_else(unsupported)?;
        let id = Uuid::parse_str(inner)
            .map_err(|_| ApiError::bad_request(format!("'{inner}' in $filter is not a valid GUID")))?;
        if !ids.contains(&id) {
            ids.push(id);
        }
        match words.next() {
            None => break,
            Some(w) if w.eq_ignore_ascii_case("or") => {}
            Some(_) => return Err(unsupported()),
        }
    }
    if ids.len() > MAX_FILTER_IDS {
        return Err(ApiError::bad_request(format!(
            "$filter on delta supports at most {MAX_FILTER_IDS} ids; got {}",
            ids.len()
        )));
    }
    Ok(ids)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repr {
    /// Every returned property (new, restored, or initial sync).
    Full,
    /// Updated; the mask holds the tracked properties that changed.
    Changed(u32),
    /// `@removed` with this reason.
    Removed(&'static str),
}

/// Flag on a member index in `Item::members`: the link was removed.
const LINK_REMOVED: u32 = 1 << 31;

pub struct Item {
    pub obj: u32,
    pub repr: Repr,
    /// Member links to report; `LINK_REMOVED` marks removals.
    pub members: Vec<u32>,
}

fn filter_set(t: &Tenant, q: &Query) -> Option<IdxSet> {
    q.filter.as_ref().map(|ids| ids.iter().filter_map(|id| t.index_of(id)).collect())
}

/// The initial round: every live object, with its whole membership.
pub fn plan_initial(t: &Tenant, resource: Resource, q: &Query, soft_deleted_too: bool) -> Vec<Item> {
    let kind = resource_kind(resource);
    let filter = filter_set(t, q);
    let candidates: Box<dyn Iterator<Item = u32>> = match (&filter, resource) {
        (Some(f), _) => Box::new(f.iter().copied()),
        (None, Resource::Groups) => Box::new(t.group_indices().iter().copied()),
        (None, Resource::Users) => Box::new(0..t.objects().len() as u32),
    };
    let mut items = Vec::new();
    for idx in candidates {
        let o = t.obj(idx);
        if o.kind != kind {
            continue;
        }
        match o.life {
            Life::Active => {
                let members = if q.members { o.members.iter().copied().collect() } else { Vec::new() };
                items.push(Item { obj: idx, repr: Repr::Full, members });
            }
            // Soft-deleted objects may show in an initial sync (graph-api.md §1.3).
            Life::SoftDeleted if soft_deleted_too => {
                items.push(Item { obj: idx, repr: Repr::Removed("changed"), members: Vec::new() });
            }
            _ => {}
        }
    }
    items
}

/// A deltaLink round: what changed after version `since`.
pub fn plan_incremental(t: &Tenant, resource: Resource, api: ApiVersion, q: &Query, since: u64) -> Vec<Item> {
    let kind = resource_kind(resource);
    let filter = filter_set(t, q);
    let wanted = |idx: u32| t.obj(idx).kind == kind && filter.as_ref().is_none_or(|f| f.contains(&idx));
    let mut masks: IdxMap<u32> = IdxMap::default();
    let mut links: IdxMap<IdxSet> = IdxMap::default();
    let mut order = Vec::new();
    for e in t.log_since(since) {
        match e.change {
            Change::Object { idx, mask } if wanted(idx) => {
                let m = masks.entry(idx).or_insert_with(|| {
                    order.push(idx);
                    0
                });
                *m |= mask;
            }
            Change::Link { group, member } if q.members && wanted(group) => {
                if !masks.contains_key(&group) && !links.contains_key(&group) {
                    order.push(group);
                }
                links.entry(group).or_default().insert(member);
            }
            _ => {}
        }
    }
    let tracked = q.tracked(resource, api);
    let mut seen = HashSet::new();
    let mut items = Vec::new();
    for idx in order {
        if !seen.insert(idx) {
            continue;
        }
        let o = t.obj(idx);
        let mask = masks.get(&idx).copied().unwrap_or(0);
        let item = match o.life {
            Life::HardDeleted => Item { obj: idx, repr: Repr::Removed("deleted"), members: Vec::new() },
            Life::SoftDeleted => Item { obj: idx, repr: Repr::Removed("changed"), members: Vec::new() },
            Life::Active if mask & FULL != 0 => {
                // Created or restored since `since`: the whole current membership, and
                // also the links removed since then. A client replaying an old token
                // (it crashed before storing the newer deltaLink) may already hold
                // those links from the lost round; Graph's change tracking reports a
                // link removed after the token whatever the object's own change is.
                let members = if q.members {
                    let removed = links
                        .get(&idx)
                        .into_iter()
                        .flatten()
                        .filter(|m| !o.members.contains(m))
                        .map(|&m| m | LINK_REMOVED);
                    o.members.iter().copied().chain(removed).collect()
                } else {
                    Vec::new()
                };
                Item { obj: idx, repr: Repr::Full, members }
            }
            Life::Active => {
                let changed = mask & tracked & !(FULL | REMOVED);
                let members: Vec<u32> = links
                    .get(&idx)
                    .map(|set| set.iter().map(|&m| if o.members.contains(&m) { m } else { m | LINK_REMOVED }).collect())
                    .unwrap_or_default();
                if changed == 0 && members.is_empty() {
                    continue;
                }
                Item { obj: idx, repr: Repr::Changed(changed), members }
            }
        };
        items.push(item);
    }
    items
}

/// One object occurrence on a page: an item and a slice of its member links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub item: u32,
    pub start: u32,
    pub end: u32,
}

pub struct Layout {
    pub entries: Vec<Entry>,
    /// Each page is `entries[a..b]`.
    pub pages: Vec<(u32, u32)>,
}

/// Cuts items into pages: random page sizes, member lists split into slices with the
/// group repeated on the following pages, and optional empty pages.
pub fn layout(items: &[Item], paging: &PagingConfig, rng: &mut impl Rng) -> Layout {
    let slice = paging.member_slice.max(1);
    let (lo, hi) = (paging.min_objects_per_page.max(1), paging.max_objects_per_page.max(1));
    let mut draw = move || {
        if lo >= hi { hi } else { rng.random_range(lo..=hi) }
    };
    let mut entries = Vec::new();
    // End of each non-empty page in `entries`.
    let mut ends = Vec::new();
    let (mut count, mut links, mut cap) = (0usize, 0usize, draw());
    for (i, item) in items.iter().enumerate() {
        let n = item.members.len();
        let mut start = 0;
        loop {
            let end = (start + slice).min(n);
            let m = end - start;
            if count > 0 && (count >= cap || links + m > slice) {
                ends.push(entries.len() as u32);
                (count, links, cap) = (0, 0, draw());
            }
            entries.push(Entry { item: i as u32, start: start as u32, end: end as u32 });
            count += 1;
            links += m;
            start = end;
            if start >= n {
                break;
            }
        }
    }
    if count > 0 {
        ends.push(entries.len() as u32);
    }
    let mut pages = Vec::with_capacity(ends.len() + 1);
    let mut start = 0;
    for (n, end) in ends.into_iter().enumerate() {
        pages.push((start, end));
        start = end;
        if paging.empty_page_every.is_some_and(|k| (n as u32 + 1).is_multiple_of(k)) {
            pages.push((end, end));
        }
    }
    if pages.is_empty() {
        pages.push((0, 0));
    }
    Layout { entries, pages }
}

/// A round whose later pages are served through `$skiptoken`s.
pub struct Round {
    pub resource: Resource,
    pub api: ApiVersion,
    pub query: Query,
    /// The deltaLink of the last page resumes after this version.
    pub start_version: u64,
    /// Whether `Prefer: return=minimal` applies (deltaLink rounds only).
    pub incremental: bool,
    items: Vec<Item>,
    layout: Layout,
    /// Properties of groups spanning several pages, rendered once so that every
    /// repetition carries the same values.
    rendered: IdxMap<Map<String, Value>>,
    last_used: Instant,
    /// Entries and member links held, to bound the memory of all held rounds.
    weight: usize,
}

impl Round {
    pub fn new(
        resource: Resource,
        api: ApiVersion,
        query: Query,
        start_version: u64,
        incremental: bool,
        mut items: Vec<Item>,
        paging: &PagingConfig,
    ) -> Round {
        let mut rng = rand::rng();
        if paging.shuffle {
            items.shuffle(&mut rng);
        }
        let layout = layout(&items, paging, &mut rng);
        let weight = layout.entries.len() + items.iter().map(|i| i.members.len()).sum::<usize>();
        Round {
            resource,
            api,
            query,
            start_version,
            incremental,
            items,
            layout,
            rendered: IdxMap::default(),
            last_used: Instant::now(),
            weight,
        }
    }

    pub fn page_count(&self) -> usize {
        self.layout.pages.len()
    }

    /// The objects of page `page`, with current property values.
    pub fn render_page(
        &mut self,
        t: &Tenant,
        page: usize,
        minimal: bool,
        removed: RemovedReason,
        member_types: bool,
    ) -> Vec<Value> {
        self.last_used = Instant::now();
        let Some(&(a, b)) = self.layout.pages.get(page) else {
            return Vec::new();
        };
        let returned = self.query.returned(self.resource, self.api);
        let minimal = minimal && self.incremental;
        let slice = self.layout.entries[a as usize..b as usize].to_vec();
        let mut out = Vec::with_capacity(slice.len());
        for e in slice {
            let item = &self.items[e.item as usize];
            let spans_pages = e.start > 0 || (e.end as usize) < item.members.len();
            let mut obj = if spans_pages {
                self.rendered
                    .entry(e.item)
                    .or_insert_with(|| render_props(t, item, &returned, minimal, removed))
                    .clone()
            } else {
                render_props(t, item, &returned, minimal, removed)
            };
            if e.end > e.start && !obj.contains_key("@removed") {
                let members: Vec<Value> = item.members[e.start as usize..e.end as usize]
                    .iter()
                    .map(|&m| render_member(t, m, member_types))
                    .collect();
                obj.insert("members@delta".into(), Value::Array(members));
            }
            out.push(Value::Object(obj));
        }
        out
    }
}

fn render_props(
    t: &Tenant,
    item: &Item,
    returned: &[usize],
    minimal: bool,
    shape: RemovedReason,
) -> Map<String, Value> {
    let o = t.obj(item.obj);
    let mut m = Map::new();
    m.insert("id".into(), o.id.to_string().into());
    let removed = match (item.repr, o.life) {
        (Repr::Removed(reason), _) => Some(reason),
        // Deleted after the round was planned.
        (_, Life::HardDeleted) => Some("deleted"),
        (_, Life::SoftDeleted) => Some("changed"),
        (_, Life::Active) => None,
    };
    if let Some(reason) = removed {
        let annotation = match shape {
            RemovedReason::Documented => json!({ "reason": reason }),
            RemovedReason::Omitted => json!({}),
            RemovedReason::Unknown => json!({ "reason": "unknownFutureValue" }),
        };
        m.insert("@removed".into(), annotation);
        return m;
    }
    let defs = t.obj(item.obj).resource().map(Resource::props).unwrap_or(&[]);
    for &p in returned {
        let Some(def) = defs.get(p) else { continue };
        match (item.repr, minimal) {
            (Repr::Changed(mask), true) => {
                if mask & (1 << p) != 0 {
                    m.insert(def.name.into(), o.get(p).cloned().unwrap_or(Value::Null));
                }
            }
            _ => {
                if let Some(v) = o.get(p) {
                    m.insert(def.name.into(), v.clone());
                }
            }
        }
    }
    m
}

fn render_member(t: &Tenant, m: u32, with_type: bool) -> Value {
    let o = t.obj(m & !LINK_REMOVED);
    let mut link = json!({ "id": o.id.to_string() });
    if with_type {
        link["@odata.type"] = o.kind.odata_type().into();
    }
    if m & LINK_REMOVED != 0 {
        link["@removed"] = json!({ "reason": "deleted" });
    }
    link
}

/// Rounds awaiting their next page, by id.
#[derive(Default)]
pub struct Rounds {
    map: HashMap<u64, Round>,
}

/// Bounds on held rounds (count, and entries plus member links, about 4–12 bytes
/// each); the least recently used rounds are dropped beyond them.
const MAX_ROUNDS: usize = 256;
const MAX_WEIGHT: usize = 40_000_000;

impl Rounds {
    pub fn insert(&mut self, round: Round, ttl: Duration) -> u64 {
        self.purge(ttl);
        let mut held: usize = self.map.values().map(|r| r.weight).sum();
        while self.map.len() >= MAX_ROUNDS || (held + round.weight > MAX_WEIGHT && !self.map.is_empty()) {
            let Some((&oldest, _)) = self.map.iter().min_by_key(|(_, r)| r.last_used) else {
                break;
            };
            if let Some(r) = self.map.remove(&oldest) {
                held = held.saturating_sub(r.weight);
                tracing::warn!(round = oldest, "dropping a held delta round to bound memory");
            }
        }
        loop {
            let id: u64 = rand::random();
            if let std::collections::hash_map::Entry::Vacant(v) = self.map.entry(id) {
                v.insert(round);
                return id;
            }
        }
    }

    pub fn get_mut(&mut self, id: u64, ttl: Duration) -> Option<&mut Round> {
        self.purge(ttl);
        self.map.get_mut(&id)
    }

    pub fn purge(&mut self, ttl: Duration) {
        self.map.retain(|_, r| r.last_used.elapsed() <= ttl);
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(sizes: &[usize]) -> Vec<Item> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Item { obj: i as u32, repr: Repr::Full, members: (0..n as u32).collect() })
            .collect()
    }

    fn paging(max: usize, slice: usize, empty: Option<u32>) -> PagingConfig {
        PagingConfig {
            max_objects_per_page: max,
            min_objects_per_page: max,
            member_slice: slice,
            empty_page_every: empty,
            shuffle: false,
            page_delay_ms: 0,
        }
    }

    #[test]
    fn filter_parsing() {
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        assert_eq!(parse_filter(&format!("id eq '{a}'")).unwrap(), vec![a]);
        assert_eq!(parse_filter(&format!(" id eq '{a}' OR id eq '{b}' ")).unwrap(), vec![a, b]);
        assert!(parse_filter("displayName eq 'x'").is_err());
        assert!(parse_filter(&format!("id eq '{a}' and id eq '{b}'")).is_err());
        assert!(parse_filter("id eq 'nope'").is_err());
        let many: Vec<String> = (0..51).map(|_| format!("id eq '{}'", Uuid::new_v4())).collect();
        assert!(parse_filter(&many.join(" or ")).is_err());
    }

    #[test]
    fn select_parsing() {
        let q = Query::new(Resource::Groups, ApiVersion::V1, Some("DisplayName,members,id"), None).unwrap();
        assert_eq!(q.select_names.as_deref(), Some(&["displayName".to_owned(), "members".into(), "id".into()][..]));
        assert!(q.members);
        assert_eq!(q.context_suffix(), "(displayName,members,id)");
        assert!(Query::new(Resource::Groups, ApiVersion::V1, Some("writebackConfiguration"), None).is_err());
        assert!(Query::new(Resource::Groups, ApiVersion::Beta, Some("writebackConfiguration"), None).is_ok());
        assert!(Query::new(Resource::Users, ApiVersion::V1, Some("members"), None).is_err());
        assert!(Query::new(Resource::Users, ApiVersion::V1, None, None).is_ok_and(|q| !q.members));
    }

    #[test]
    fn large_membership_repeats_group_on_following_pages() {
        let l = layout(&items(&[3, 1200, 0]), &paging(10, 500, None), &mut rand::rng());
        let pages: Vec<Vec<Entry>> = l.pages.iter().map(|&(a, b)| l.entries[a as usize..b as usize].to_vec()).collect();
        assert_eq!(pages.len(), 4);
        assert_eq!(pages[0], vec![Entry { item: 0, start: 0, end: 3 }]);
        assert_eq!(pages[1], vec![Entry { item: 1, start: 0, end: 500 }]);
        assert_eq!(pages[2], vec![Entry { item: 1, start: 500, end: 1000 }]);
        assert_eq!(pages[3], vec![Entry { item: 1, start: 1000, end: 1200 }, Entry { item: 2, start: 0, end: 0 }]);
    }

    #[test]
    fn page_sizes_and_empty_pages() {
        let l = layout(&items(&[0; 7]), &paging(3, 500, Some(1)), &mut rand::rng());
        let sizes: Vec<u32> = l.pages.iter().map(|&(a, b)| b - a).collect();
        assert_eq!(sizes, vec![3, 0, 3, 0, 1, 0]);
        let l = layout(&[], &paging(3, 500, None), &mut rand::rng());
        assert_eq!(l.pages, vec![(0, 0)]);
    }
}
