//! Giving freed heap memory back to the operating system.
//!
//! Under connection churn the hub's live heap returns to what its keys need (a few hundred
//! kilobytes with no client), but glibc's malloc keeps the freed memory in its per-thread
//! arenas and returns to the system only what lies at the top of an arena. Chunks that are
//! still in use (a topic's state, a broker buffer) pin the pages between them, so resident
//! memory creeps up with the number of sessions served and stays there after every client has
//! left. In the `churn` bench, after 20,000 sessions: 543 KB in use, 12.4 MB held by the
//! arenas; `malloc_trim` took RSS from 21.7 MB to 12.4 MB (docs/PERFORMANCE.md, "Churn").
//!
//! `malloc_trim(0)` releases every whole free page inside the arenas (with `MADV_DONTNEED`),
//! not just their tops. It holds each arena's lock while it walks that arena's free chunks, so
//! it runs on a blocking thread, and at most once per interval.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Releases free heap pages to the system every `interval` until `stop`; a zero interval
/// never does. Does nothing where the allocator is not glibc's.
pub async fn trim_periodically(interval: Duration, stop: CancellationToken) {
    if interval.is_zero() || !SUPPORTED {
        return;
    }
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: nothing has been freed yet.
    ticks.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(trim).await {
            Ok(released) => {
                tracing::trace!(released, took = ?started.elapsed(), "returned free heap pages");
            }
            Err(error) => tracing::warn!(%error, "heap trim failed"),
        }
    }
}

/// Whether [`trim`] can release anything here.
pub const SUPPORTED: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// Releases free heap pages now; true when some memory was released.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim has no preconditions; it only takes the allocator's own locks.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Bytes the allocator has taken from the system (in use and free, including free pages a trim
/// gave back, which no longer count in RSS) and bytes in use, where it can say (glibc).
pub fn heap_bytes() -> Option<(u64, u64)> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 has no preconditions and returns a plain struct.
        let info = unsafe { libc::mallinfo2() };
        // `arena` is what the arenas took with sbrk/mmap, `hblkhd` what large blocks took with
        // mmap of their own; `uordblks` is in use within the arenas.
        let held = (info.arena + info.hblkhd) as u64;
        let in_use = (info.uordblks + info.hblkhd) as u64;
        Some((held, in_use))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_scattered_between_live_chunks_is_given_back() {
        if !SUPPORTED {
            return;
        }
        // Many small chunks, every 16th kept: what a churn of connections leaves behind
        // between a topic's long-lived state. The freed ones stay with the allocator...
        let mut chunks: Vec<Vec<u8>> = (0..40_000).map(|i| vec![i as u8; 700]).collect();
        let kept: Vec<Vec<u8>> = chunks.iter_mut().step_by(16).map(std::mem::take).collect();
        drop(chunks);
        let (held_before, in_use) = heap_bytes().expect("glibc reports its heap");
        assert!(
            held_before > in_use + 16 * 1024 * 1024,
            "{held_before} {in_use}"
        );
        // ...until trimmed: pages wholly free inside the arena go back to the system.
        assert!(trim(), "some memory was released");
        drop(kept);
    }
}
