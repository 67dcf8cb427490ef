//! The operator's own last status write per Canary, for as long as the watch cache
//! has not caught up with it.
//!
//! A reconcile starts from the cached Canary. The watch delivers the operator's
//! status write a moment later, normally; after an API server restart (the watch
//! reconnecting with back-off) or under load (seen 10-20 s late at 1000 Canaries) it
//! can be seconds late, and a reconcile started meanwhile from the older status
//! decides the same step again: a repeated "Advance", its gate and query re-run, the
//! step's clock moved. The patch's response is the object as written, so while the
//! cache still shows a version from before the write, that response is the fresher
//! view.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use kube::ResourceExt;

use crate::crd::Canary;

/// Versions kept per Canary at most: a watch further behind than this many of our
/// own writes is let through (and the step may repeat, as it did without this).
const MAX_BEHIND: usize = 64;

struct Entry {
    /// resourceVersions the cache may still show that are older than `written`.
    older: BTreeSet<String>,
    written: Arc<Canary>,
}

#[derive(Default)]
pub struct Written(Mutex<HashMap<(String, String), Entry>>);

fn key(c: &Canary) -> (String, String) {
    (c.namespace_or_default(), c.name_any())
}

impl Written {
    /// Records that `input` (the object the decision started from) was patched into
    /// `written`.
    pub fn record(&self, input: &Canary, written: Canary) {
        let Ok(mut m) = self.0.lock() else { return };
        let mut older = m.remove(&key(input)).map(|e| e.older).unwrap_or_default();
        if let Some(rv) = input.resource_version() {
            older.insert(rv);
        }
        if older.len() > MAX_BEHIND {
            return;
        }
        m.insert(
            key(input),
            Entry {
                older,
                written: Arc::new(written),
            },
        );
    }

    /// The object to decide from: the last write's result while `cached` is one of
    /// the versions before it, else `None` (the cache shows the write or something
    /// newer, and the record is dropped).
    pub fn fresher(&self, cached: &Canary) -> Option<Arc<Canary>> {
        let Ok(mut m) = self.0.lock() else {
            return None;
        };
        let k = key(cached);
        let entry = m.get(&k)?;
        let stale = cached
            .resource_version()
            .is_some_and(|rv| entry.older.contains(&rv))
            && cached.uid() == entry.written.uid();
        if stale {
            return Some(entry.written.clone());
        }
        m.remove(&k);
        None
    }

    /// Forgets a Canary that is gone.
    pub fn forget(&self, c: &Canary) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(&key(c));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{CanarySpec, CanaryStatus};

    fn at(rv: &str, weight: u32) -> Canary {
        let mut c = Canary::new("web", CanarySpec::default());
        c.metadata.namespace = Some("test".into());
        c.metadata.uid = Some("u1".into());
        c.metadata.resource_version = Some(rv.into());
        c.status = Some(CanaryStatus {
            canary_weight: weight,
            ..Default::default()
        });
        c
    }

    fn weight(c: &Canary) -> u32 {
        c.status
            .as_ref()
            .map(|s| s.canary_weight)
            .unwrap_or_default()
    }

    #[test]
    fn a_cache_behind_the_last_write_is_replaced_by_it() {
        let w = Written::default();
        // Decided from rv 1 (weight 0), wrote weight 20 (rv 2).
        w.record(&at("1", 0), at("2", 20));
        // The watch has not delivered rv 2: the next decision starts from it anyway.
        let fresh = w.fresher(&at("1", 0)).expect("the written object");
        assert_eq!(weight(&fresh), 20);
        // Deciding from it and writing again (rv 3) while the cache is still at 1.
        w.record(&fresh, at("3", 40));
        assert_eq!(w.fresher(&at("1", 0)).map(|c| weight(&c)), Some(40));
        assert_eq!(w.fresher(&at("2", 20)).map(|c| weight(&c)), Some(40));
        // The cache caught up (or moved past, e.g. a spec edit): it wins from now on.
        assert!(w.fresher(&at("3", 40)).is_none());
        assert!(w.fresher(&at("1", 0)).is_none(), "record dropped");
    }

    #[test]
    fn a_recreated_canary_is_not_mistaken_for_the_old_one() {
        let w = Written::default();
        w.record(&at("1", 0), at("2", 20));
        let mut new = at("1", 0);
        new.metadata.uid = Some("u2".into());
        assert!(w.fresher(&new).is_none());
        w.record(&at("5", 0), at("6", 20));
        w.forget(&at("6", 20));
        assert!(w.fresher(&at("5", 0)).is_none());
    }
}
