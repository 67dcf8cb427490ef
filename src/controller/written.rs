//! The status Serin last wrote for each Canary, so that no decision starts from a
//! Canary the watch has not yet delivered that write for.
//!
//! A reconcile reads the Canary from the watch cache. Under load the watch delivers
//! the operator's own status writes late (10-20 s at 1,000 Canaries in
//! `serin-bench-scale`), and a reconcile started from the older status decided the
//! same step again: the gate and the query ran twice, the route and status were
//! rewritten and `lastStepTime` moved forward. With the record, a Canary older than
//! the last write gets that write's status instead; the record goes once the cache
//! has caught up, so the map holds only Canaries whose writes are in flight.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::crd::{Canary, CanaryStatus};

#[derive(Debug, Clone, PartialEq)]
struct Record {
    uid: String,
    resource_version: String,
    status: CanaryStatus,
}

/// How a cached Canary relates to the last status written for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freshness {
    /// The cache holds our write, or something newer: decide from it.
    CaughtUp,
    /// The cache predates our write: decide from what we wrote.
    Behind,
}

/// Resource versions are opaque to clients, but every API server backed by etcd
/// hands out etcd revisions, which grow. Where either does not parse as one, only
/// equality can be told, and anything else is taken as caught up (the behaviour
/// before this record existed) rather than pinning a status that may be outdated.
fn freshness(cached_uid: &str, cached_rv: &str, record: &Record) -> Freshness {
    if cached_uid != record.uid || cached_rv == record.resource_version {
        return Freshness::CaughtUp;
    }
    match (
        cached_rv.parse::<u64>(),
        record.resource_version.parse::<u64>(),
    ) {
        (Ok(cached), Ok(written)) if cached < written => Freshness::Behind,
        _ => Freshness::CaughtUp,
    }
}

#[derive(Default)]
pub struct Written {
    records: Mutex<HashMap<(String, String), Record>>,
}

fn key(canary: &Canary) -> (String, String) {
    (
        canary.metadata.namespace.clone().unwrap_or_default(),
        canary.metadata.name.clone().unwrap_or_default(),
    )
}

impl Written {
    /// Remembers the Canary the API server returned for a status write.
    pub fn record(&self, returned: &Canary) {
        let (Some(uid), Some(rv)) = (
            returned.metadata.uid.clone(),
            returned.metadata.resource_version.clone(),
        ) else {
            return;
        };
        let record = Record {
            uid,
            resource_version: rv,
            status: returned.status.clone().unwrap_or_default(),
        };
        if let Ok(mut records) = self.records.lock() {
            records.insert(key(returned), record);
        }
    }

    /// Forgets a Canary (deleted, or gone when its status was written).
    pub fn forget(&self, canary: &Canary) {
        if let Ok(mut records) = self.records.lock() {
            records.remove(&key(canary));
        }
    }

    /// The status to decide from when the cached Canary is older than the last write
    /// (`None`: the cached one is current).
    pub fn newer_status(&self, cached: &Canary) -> Option<CanaryStatus> {
        let mut records = self.records.lock().ok()?;
        let k = key(cached);
        let record = records.get(&k)?;
        let uid = cached.metadata.uid.as_deref().unwrap_or("");
        let rv = cached.metadata.resource_version.as_deref().unwrap_or("");
        match freshness(uid, rv, record) {
            Freshness::Behind => Some(record.status.clone()),
            Freshness::CaughtUp => {
                records.remove(&k);
                None
            }
        }
    }

    /// The fresher of the cached status and the last one written, without
    /// forgetting anything (for reading other Canaries than the one reconciled).
    pub fn status_of(&self, cached: &Canary) -> CanaryStatus {
        let fresher = self.records.lock().ok().and_then(|records| {
            let record = records.get(&key(cached))?;
            let uid = cached.metadata.uid.as_deref().unwrap_or("");
            let rv = cached.metadata.resource_version.as_deref().unwrap_or("");
            (freshness(uid, rv, record) == Freshness::Behind).then(|| record.status.clone())
        });
        fresher.unwrap_or_else(|| cached.status_or_default())
    }

    pub fn len(&self) -> usize {
        self.records.lock().map(|r| r.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::CanarySpec;

    fn canary(uid: &str, rv: &str, weight: u32) -> Canary {
        let mut c = Canary::new("web", CanarySpec::default());
        c.metadata.namespace = Some("test".into());
        c.metadata.uid = Some(uid.into());
        c.metadata.resource_version = Some(rv.into());
        c.status = Some(CanaryStatus {
            canary_weight: weight,
            ..Default::default()
        });
        c
    }

    #[test]
    fn freshness_table() {
        let rec = Record {
            uid: "u1".into(),
            resource_version: "200".into(),
            status: CanaryStatus::default(),
        };
        for (uid, rv, want) in [
            ("u1", "199", Freshness::Behind),
            ("u1", "9", Freshness::Behind),
            ("u1", "200", Freshness::CaughtUp),
            ("u1", "201", Freshness::CaughtUp),
            // Another object of the same name (deleted and created again).
            ("u2", "150", Freshness::CaughtUp),
            // Not an etcd revision: only equality can be told.
            ("u1", "abc", Freshness::CaughtUp),
            ("u1", "", Freshness::CaughtUp),
        ] {
            assert_eq!(freshness(uid, rv, &rec), want, "uid {uid} rv {rv:?}");
        }
    }

    #[test]
    fn a_cache_behind_our_write_gets_the_written_status_until_it_catches_up() {
        let w = Written::default();
        assert_eq!(
            w.newer_status(&canary("u1", "100", 5)),
            None,
            "nothing written"
        );
        w.record(&canary("u1", "120", 10));
        assert_eq!(w.len(), 1);
        let stale = canary("u1", "100", 5);
        assert_eq!(
            w.newer_status(&stale).map(|s| s.canary_weight),
            Some(10),
            "the step already taken is not decided again"
        );
        assert_eq!(w.len(), 1, "kept while the cache is behind");
        assert_eq!(
            w.status_of(&stale).canary_weight,
            10,
            "others read the write too"
        );
        assert_eq!(w.len(), 1, "reading does not forget");
        assert_eq!(w.newer_status(&canary("u1", "120", 10)), None);
        assert!(w.is_empty(), "dropped once caught up");
        // A later write by someone else (the cache ahead of our record) wins too.
        w.record(&canary("u1", "130", 15));
        assert_eq!(w.newer_status(&canary("u1", "140", 0)), None);
        assert!(w.is_empty());
    }

    #[test]
    fn forget_and_objects_without_identity() {
        let w = Written::default();
        w.record(&canary("u1", "120", 10));
        w.forget(&canary("u1", "1", 0));
        assert!(w.is_empty());
        let mut anonymous = canary("u1", "120", 10);
        anonymous.metadata.resource_version = None;
        w.record(&anonymous);
        assert!(
            w.is_empty(),
            "a response without a resourceVersion is not recorded"
        );
    }
}
