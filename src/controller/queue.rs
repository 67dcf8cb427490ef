//! `--max-concurrent-releases`: which new revisions may start now, and in what order
//! the others wait (fluxcd/flagger#1069).
//!
//! The queue lives in the Canaries' own status (a `release queue` hold and the time
//! it began), so that it survives a restart and a failover and `kubectl get` shows
//! it. Watch caches lag, and reconciles of different Canaries run concurrently: two
//! of them could both see the last free slot. So a start is also reserved here, under
//! one lock, before the machine runs, and the reservation ends once the Canary's
//! status shows the release (or the machine did not start it).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::machine::{HOLD_QUEUED, Queued};
use crate::crd::{CanaryStatus, Phase};

pub type Key = (String, String);

/// What the queue needs to know of one Canary.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: Key,
    /// A release under way (it holds a slot).
    pub active: bool,
    /// When it joined the queue, if it waits in it.
    pub queued_since: Option<DateTime<Utc>>,
}

impl Entry {
    pub fn of(key: Key, status: &CanaryStatus) -> Entry {
        let queued = status
            .hold_reason
            .as_deref()
            .is_some_and(|r| r.split(':').next() == Some(HOLD_QUEUED));
        Entry {
            key,
            active: status.phase.is_some_and(Phase::is_active),
            queued_since: queued
                .then_some(status.hold_since.as_deref())
                .flatten()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc)),
        }
    }
}

/// Where `me` stands: `None` when it may start now. Those that joined the queue
/// earlier go first (ties by namespace/name); one that has not joined yet joins now.
pub fn place(
    limit: usize,
    me: &Key,
    my_since: DateTime<Utc>,
    others: &[Entry],
    reserved: &HashSet<Key>,
) -> Option<Queued> {
    let mut busy: HashSet<&Key> = others
        .iter()
        .filter(|e| e.active && e.key != *me)
        .map(|e| &e.key)
        .collect();
    busy.extend(reserved.iter().filter(|k| *k != me));
    let ahead = others
        .iter()
        .filter(|e| e.key != *me && !busy.contains(&e.key))
        .filter_map(|e| e.queued_since.map(|t| (t, &e.key)))
        .filter(|(t, k)| (*t, *k) < (my_since, me))
        .count();
    let free = limit.saturating_sub(busy.len());
    (ahead >= free).then(|| Queued {
        position: ahead + 1 - free,
        limit,
    })
}

/// Reservations of starts not yet visible in the Canaries' status.
#[derive(Default)]
pub struct Admission {
    reserved: Mutex<HashMap<Key, Instant>>,
}

/// A reservation the status never confirmed (the write failed and the Canary went
/// elsewhere) must not hold a slot for ever.
const RESERVATION_TTL: Duration = Duration::from_secs(120);

impl Admission {
    /// Places `me` and, when it may start, reserves its slot in the same critical
    /// section, so that concurrent reconciles cannot both take the last one.
    pub fn admit(
        &self,
        limit: usize,
        me: &Key,
        my_since: DateTime<Utc>,
        others: &[Entry],
    ) -> Option<Queued> {
        let Ok(mut reserved) = self.reserved.lock() else {
            // A poisoned lock means a panic elsewhere; starting is what happened
            // before there was a limit.
            return None;
        };
        let now = Instant::now();
        // Active in the status now: counted from there, so the reservation goes.
        reserved.retain(|k, at| {
            now.duration_since(*at) < RESERVATION_TTL
                && !others.iter().any(|e| e.key == *k && e.active)
        });
        let keys: HashSet<Key> = reserved.keys().cloned().collect();
        let placed = place(limit, me, my_since, others, &keys);
        if placed.is_none() {
            reserved.insert(me.clone(), now);
        }
        placed
    }

    /// Drops `me`'s reservation: the machine did not start its release after all (a
    /// closed confirm-rollout gate, a pause).
    pub fn release(&self, me: &Key) {
        if let Ok(mut reserved) = self.reserved.lock() {
            reserved.remove(me);
        }
    }

    pub fn reserved(&self) -> usize {
        self.reserved.lock().map(|r| r.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn key(n: &str) -> Key {
        ("test".into(), n.into())
    }

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    fn active(n: &str) -> Entry {
        Entry {
            key: key(n),
            active: true,
            queued_since: None,
        }
    }

    fn queued(n: &str, since: i64) -> Entry {
        Entry {
            key: key(n),
            active: false,
            queued_since: Some(t(since)),
        }
    }

    #[test]
    fn place_table() {
        let none = HashSet::new();
        let q = |position| Some(Queued { position, limit: 2 });
        for (name, me, since, others, want) in [
            ("nothing running", "a", 10, vec![], None),
            ("one slot left", "a", 10, vec![active("b")], None),
            (
                "all slots taken",
                "a",
                10,
                vec![active("b"), active("c")],
                q(1),
            ),
            (
                "behind an earlier one, no slot",
                "a",
                10,
                vec![active("b"), active("c"), queued("d", 5)],
                q(2),
            ),
            (
                "ahead of a later one",
                "a",
                10,
                vec![active("b"), active("c"), queued("d", 20)],
                q(1),
            ),
            (
                "one free slot goes to the earliest",
                "a",
                10,
                vec![active("b"), queued("d", 5)],
                q(1),
            ),
            (
                "the earliest takes the free slot",
                "a",
                5,
                vec![active("b"), queued("d", 10)],
                None,
            ),
            (
                "same time: ordered by name",
                "a",
                10,
                vec![active("b"), queued("c", 10)],
                None,
            ),
            (
                "itself active (already released) is not counted",
                "a",
                10,
                vec![active("a"), active("b")],
                None,
            ),
        ] {
            let got = place(2, &key(me), t(since), &others, &none);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn a_reservation_counts_until_the_status_shows_the_release() {
        let adm = Admission::default();
        // Limit 1: a starts and reserves; b, reconciled before a's status is seen, waits.
        assert_eq!(adm.admit(1, &key("a"), t(0), &[]), None);
        assert_eq!(
            adm.admit(1, &key("b"), t(1), &[]),
            Some(Queued {
                position: 1,
                limit: 1
            }),
            "the slot a reserved is taken"
        );
        // a's status now says Progressing: counted from there, reservation dropped.
        assert_eq!(
            adm.admit(1, &key("b"), t(1), &[active("a")]),
            Some(Queued {
                position: 1,
                limit: 1
            })
        );
        assert_eq!(adm.reserved(), 0);
        // a did not start after all (its gate was closed): the slot is free again.
        assert_eq!(adm.admit(1, &key("a"), t(0), &[]), None);
        adm.release(&key("a"));
        assert_eq!(adm.admit(1, &key("b"), t(1), &[]), None);
    }

    #[test]
    fn entry_reads_the_queue_from_status() {
        let st = CanaryStatus {
            phase: Some(Phase::Waiting),
            hold_reason: Some(format!(
                "{HOLD_QUEUED}: position 2 for one of 3 release slots"
            )),
            hold_since: Some(t(7).to_rfc3339()),
            ..Default::default()
        };
        assert_eq!(Entry::of(key("a"), &st), queued("a", 7));
        let running = CanaryStatus {
            phase: Some(Phase::Progressing),
            ..Default::default()
        };
        assert_eq!(Entry::of(key("b"), &running), active("b"));
        let paused = CanaryStatus {
            phase: Some(Phase::Succeeded),
            hold_reason: Some("paused: asked".into()),
            hold_since: Some(t(7).to_rfc3339()),
            ..Default::default()
        };
        assert_eq!(Entry::of(key("c"), &paused).queued_since, None);
    }
}
