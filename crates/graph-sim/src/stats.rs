//! Request counters by route and status for `GET /admin/stats`, and delta requests by
//! what they ask for, so a test can tell a round that resumed from one that restarted.

use std::collections::BTreeMap;

use crate::model::{DeltaRequestCount, RequestCount};

#[derive(Default)]
pub struct RequestStats {
    counts: BTreeMap<(String, u16), u64>,
    delta: BTreeMap<(String, DeltaRequestKind), u64>,
}

/// What a delta request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeltaRequestKind {
    /// No token: the first page of a full round.
    Initial,
    /// `$skiptoken`: a following page of a round (a nextLink).
    NextPage,
    /// `$deltatoken`: the first page of an incremental round (a deltaLink).
    DeltaLink,
}

impl DeltaRequestKind {
    pub fn of(skiptoken: bool, deltatoken: bool) -> Self {
        match (skiptoken, deltatoken) {
            (true, _) => DeltaRequestKind::NextPage,
            (false, true) => DeltaRequestKind::DeltaLink,
            (false, false) => DeltaRequestKind::Initial,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            DeltaRequestKind::Initial => "initial",
            DeltaRequestKind::NextPage => "nextLink",
            DeltaRequestKind::DeltaLink => "deltaLink",
        }
    }
}

impl RequestStats {
    pub fn record(&mut self, endpoint: &str, status: u16) {
        *self.counts.entry((endpoint.to_owned(), status)).or_insert(0) += 1;
    }

    pub fn record_delta(&mut self, resource: &str, kind: DeltaRequestKind) {
        *self.delta.entry((resource.to_owned(), kind)).or_insert(0) += 1;
    }

    pub fn delta_snapshot(&self) -> Vec<DeltaRequestCount> {
        self.delta
            .iter()
            .map(|((resource, kind), &count)| DeltaRequestCount {
                resource: resource.clone(),
                kind: kind.as_str().to_owned(),
                count,
            })
            .collect()
    }

    pub fn snapshot(&self) -> Vec<RequestCount> {
        self.counts
            .iter()
            .map(|((endpoint, status), &count)| RequestCount { endpoint: endpoint.clone(), status: *status, count })
            .collect()
    }
}
