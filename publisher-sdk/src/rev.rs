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
        self.next_at(wall_clock_micros())
    }

    /// The next rev as if the wall clock read `now_micros` (microseconds since the Unix epoch):
    /// `now_micros` itself when it is above the last rev, else the last rev plus one. Either
    /// way it is greater than every rev this clock returned or [observed](Self::observe) before.
    ///
    /// [`next`](Self::next) calls it with the system clock. It exists so that a test, or the
    /// shared vectors (`vectors/clock.json`), can replay a clock that stands still or goes
    /// back, and so that a service with a clock of its own can use that one.
    pub fn next_at(&self, now_micros: u64) -> u64 {
        let previous = self
            .last
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(now_micros.max(last.saturating_add(1)))
            })
            .unwrap_or_else(|last| last);
        now_micros.max(previous.saturating_add(1))
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
    fn a_clock_that_goes_back_still_gives_increasing_revs() {
        let clock = HybridClock::new();
        assert_eq!(clock.next_at(5_000), 5_000);
        assert_eq!(clock.next_at(4_000), 5_001);
        assert_eq!(clock.next_at(5_001), 5_002);
        assert_eq!(clock.next_at(7_000), 7_000);
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
