//! Which of a connection's sources woke it.
//!
//! A connection waits on several things at once: its queue, its socket, its clocks, the drain.
//! Almost every wake-up is a frame to write, and polling everything else each time costs more
//! than the write itself at thousands of connections: a socket read attempt clears a read
//! buffer, a clock and the drain each take a lock. A [`WakeSource`] wraps the task's waker in
//! one that first notes it was used, so the connection polls a source only after that source
//! woke it (or when it was last found ready, since it may hold more).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

/// The state a source's waker shares with the connection.
struct Flag {
    /// Set when the source woke the task, or may have more to give; cleared when it is polled.
    woken: AtomicBool,
    /// The connection's task, woken after the flag is set.
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// One source (or a group of rarely firing sources sharing one) of a connection's wake-ups.
pub struct WakeSource {
    /// Shared with `waker`.
    flag: Arc<Flag>,
    /// Handed to the source in place of the task's own waker; made once, not per poll.
    waker: Waker,
}

impl WakeSource {
    /// A source that will be polled the first time.
    pub fn new() -> Self {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            waker: Waker::from(flag.clone()),
            flag,
        }
    }

    /// Runs `poll` with this source's waker if the source woke the task since it was last
    /// found pending; otherwise it is pending still, and `poll` is not run.
    pub fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.flag.task.register(cx.waker());
        // Cleared before polling: a wake-up during the poll sets it again and is not lost.
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let result = poll(&mut Context::from_waker(&self.waker));
        if result.is_ready() {
            // A ready source may have more (frames already read, a clock that fired twice):
            // look again next time.
            self.flag.woken.store(true, Ordering::Release);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_source_is_polled_again_only_after_it_woke_the_task() {
        let source = WakeSource::new();
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let mut polls = 0;
        let mut poll_receiver = |cx: &mut Context<'_>, polls: &mut u32| {
            source.poll(cx, |cx| {
                *polls += 1;
                receiver.poll_recv(cx)
            })
        };
        // The first poll runs, finds nothing, and registers.
        let first = poll_fn(|cx| Poll::Ready(poll_receiver(cx, &mut polls))).await;
        assert!(first.is_pending());
        assert_eq!(polls, 1);
        // Not woken since: not polled.
        let second = poll_fn(|cx| Poll::Ready(poll_receiver(cx, &mut polls))).await;
        assert!(second.is_pending());
        assert_eq!(polls, 1);
        // A send wakes it; the wait ends with the value.
        let sending = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            sender.send(7).unwrap();
            sender.send(8).unwrap();
        });
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            poll_fn(|cx| poll_receiver(cx, &mut polls)),
        )
        .await
        .expect("the source's wake-up reached the task");
        assert_eq!(got, Some(7));
        // Ready last time, so polled again, and the second value is there.
        let again = poll_fn(|cx| Poll::Ready(poll_receiver(cx, &mut polls))).await;
        assert_eq!(again, Poll::Ready(Some(8)));
        sending.await.unwrap();
    }
}
