//! Default `rev` generation: a hybrid clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Issues strictly increasing revs that also keep increasing across process restarts.
///
/// Each rev is the wall clock in microseconds since the Unix epoch, or the previous rev plus one
/// when the clock has not moved on (or went back). A restarted publisher therefore starts above
/// every rev it issued before, as long as it issued fewer than a million revs per second ahead
/// of the clock and the clock was not set back across the restart. Services that keep a version
/// in their database should publish that instead (see the crate docs).
#[derive(Debug, Default)]
pub struct HybridClock {
    /// The last rev handed out; shared by every caller so revs never repeat in this process.
    last: AtomicU64,
}

impl HybridClock {
    /// A clock that has issued nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next rev: greater than every rev this clock returned before.
    pub fn next(&self) -> u64 {
        let now = wall_clock_micros();
        let previous = self
            .last
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(now.max(last.saturating_add(1)))
            })
            .unwrap_or_else(|last| last);
        now.max(previous.saturating_add(1))
    }

    /// Makes every later rev greater than `rev`, e.g. the highest rev a service finds in its
    /// store at start-up.
    pub fn observe(&self, rev: u64) {
        self.last.fetch_max(rev, Ordering::AcqRel);
    }
}

fn wall_clock_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revs_strictly_increase_even_in_a_burst() {
        let clock = HybridClock::new();
        let mut last = 0;
        for _ in 0..10_000 {
            let rev = clock.next();
            assert!(rev > last);
            last = rev;
        }
    }

    #[test]
    fn a_new_clock_starts_above_an_old_one() {
        let old = HybridClock::new();
        let issued = (0..1000).map(|_| old.next()).max().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(HybridClock::new().next() > issued);
    }

    #[test]
    fn observed_revs_are_never_reissued() {
        let clock = HybridClock::new();
        let far_future = wall_clock_micros() + 60_000_000;
        clock.observe(far_future);
        assert_eq!(clock.next(), far_future + 1);
    }

    #[test]
    fn concurrent_callers_never_share_a_rev() {
        let clock = std::sync::Arc::new(HybridClock::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let clock = clock.clone();
                std::thread::spawn(move || (0..5000).map(|_| clock.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count);
    }
}
