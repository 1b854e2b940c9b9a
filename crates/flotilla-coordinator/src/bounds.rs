//! Eviction rules of the process-wide maps that would otherwise grow with the coordinator's
//! history (see "Invariants" in ARCHITECTURE.md for the list of every in-memory map and its bound).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::state::{Shared, TimerEntry};

/// `last_seen` of a client is written at most this often, milliseconds.
pub(crate) const TOUCH_INTERVAL_MS: u64 = 60_000;
/// Once `Shared::last_touch` holds this many clients, the entries older than
/// [`TOUCH_INTERVAL_MS`] (which would be written again anyway) are dropped.
pub(crate) const MAX_TOUCH_ENTRIES: usize = 4096;
/// Once the timer heap holds this many entries, those of jobs no longer in the job table are
/// dropped (they would be skipped when they fire anyway).
pub(crate) const TIMER_PRUNE_AT: usize = 1024;

/// Whether `client`'s `last_seen` should be written now; records the write. Bounded: see
/// [`MAX_TOUCH_ENTRIES`].
pub(crate) fn touch_due(map: &mut HashMap<u64, u64>, client: u64, now: u64) -> bool {
    let last = map.get(&client).copied().unwrap_or(0);
    if now.saturating_sub(last) <= TOUCH_INTERVAL_MS {
        return false;
    }
    if !map.contains_key(&client) && map.len() >= MAX_TOUCH_ENTRIES {
        map.retain(|_, t| now.saturating_sub(*t) <= TOUCH_INTERVAL_MS);
    }
    map.insert(client, now);
    true
}

/// Drops the timers of jobs that have left the job table, once the heap is large. Amortised: the
/// threshold doubles with what is left, so pruning costs O(1) per pushed timer.
pub(crate) fn prune_timers(heap: &mut BinaryHeap<Reverse<TimerEntry>>, shared: &Shared) {
    if heap.len() < TIMER_PRUNE_AT || !heap.len().is_power_of_two() {
        return;
    }
    let Ok(jobs) = shared.jobs.read() else { return };
    heap.retain(|Reverse(e)| jobs.contains_key(&e.job));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_touch_forgets_idle_clients_once_full() {
        let mut map = HashMap::new();
        let t0 = 1_000_000;
        for c in 0..MAX_TOUCH_ENTRIES as u64 {
            assert!(touch_due(&mut map, c, t0));
        }
        assert!(!touch_due(&mut map, 0, t0 + 1), "written a moment ago");
        // A new client later: the idle ones are dropped first.
        let later = t0 + TOUCH_INTERVAL_MS + 1;
        assert!(touch_due(&mut map, u64::MAX, later));
        assert_eq!(map.len(), 1);
        assert!(
            touch_due(&mut map, 0, later),
            "an idle client is written again"
        );
    }
}
