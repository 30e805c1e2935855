//! Request counters by route and status for `GET /admin/stats`.

use std::collections::BTreeMap;

use crate::model::RequestCount;

#[derive(Default)]
pub struct RequestStats {
    counts: BTreeMap<(String, u16), u64>,
}

impl RequestStats {
    pub fn record(&mut self, endpoint: &str, status: u16) {
        *self.counts.entry((endpoint.to_owned(), status)).or_insert(0) += 1;
    }

    pub fn snapshot(&self) -> Vec<RequestCount> {
        self.counts
            .iter()
            .map(|((endpoint, status), &count)| RequestCount { endpoint: endpoint.clone(), status: *status, count })
            .collect()
    }
}
