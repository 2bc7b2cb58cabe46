//! A topic's mailbox: commands from any number of connections to the one task that owns the
//! key, unbounded (a leave must never be lost or wait) and allocated only while something waits
//! in it.
//!
//! A tokio channel allocates a cache-padded header and a block of 32 slots up front: 2 KB per
//! watched task key and 4.5 KB per scene, for a queue that is empty almost always. With a key
//! per panel, that was a tenth of what a key costs.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

/// What both ends share.
struct Shared<T> {
    /// The commands, and whether the receiver is gone: one lock, so that a send either lands
    /// before the receiver leaves (and is dropped with it) or is refused.
    state: Mutex<State<T>>,
    /// Senders alive; none left ends the receiver's stream.
    senders: AtomicUsize,
    /// The receiving task, woken by a send or by the last sender leaving.
    receiver: AtomicWaker,
}

struct State<T> {
    /// Oldest first.
    queue: VecDeque<T>,
    /// Set when the receiver is dropped; later sends are handed back.
    receiver_gone: bool,
}

/// The sending end; cloned for every connection of the topic.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving end, owned by the topic task.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// An empty mailbox.
pub fn mailbox<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            receiver_gone: false,
        }),
        senders: AtomicUsize::new(1),
        receiver: AtomicWaker::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

impl<T> Sender<T> {
    /// Queues `item` without waiting; hands it back if the receiver is gone.
    pub fn send(&self, item: T) -> Result<(), T> {
        {
            let Ok(mut state) = self.shared.state.lock() else {
                return Err(item);
            };
            if state.receiver_gone {
                return Err(item);
            }
            state.queue.push_back(item);
        }
        self.shared.receiver.wake();
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::AcqRel);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.receiver.wake();
        }
    }
}

impl<T> Receiver<T> {
    /// The next item; `None` once every sender is gone and the queue is empty.
    /// Cancel-safe: an item is taken only in the poll that returns it.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(item) = self.try_recv() {
            return Poll::Ready(Some(item));
        }
        self.shared.receiver.register(cx.waker());
        // A send between the look above and the registration woke nobody: look again.
        if let Some(item) = self.try_recv() {
            return Poll::Ready(Some(item));
        }
        if self.shared.senders.load(Ordering::Acquire) == 0 {
            // The last sender's sends happened before it left.
            return Poll::Ready(self.try_recv());
        }
        Poll::Pending
    }

    fn try_recv(&self) -> Option<T> {
        let mut state = self.shared.state.lock().ok()?;
        let item = state.queue.pop_front();
        // A burst of joins may have grown the queue; a quiet topic should not keep its peak.
        if state.queue.is_empty() && state.queue.capacity() > 8 {
            state.queue = VecDeque::new();
        }
        item
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let queued = match self.shared.state.lock() {
            Ok(mut state) => {
                state.receiver_gone = true;
                std::mem::take(&mut state.queue)
            }
            Err(_) => return,
        };
        // Dropped outside the lock: a command may hold a connection's outbox.
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_send_from_many_threads_arrives_in_each_senders_order() {
        let (sender, mut receiver) = mailbox::<(u32, u32)>();
        let senders: Vec<_> = (0..4)
            .map(|thread| {
                let sender = sender.clone();
                std::thread::spawn(move || {
                    for n in 0..5_000 {
                        sender.send((thread, n)).unwrap();
                    }
                })
            })
            .collect();
        let reader = tokio::spawn(async move {
            let mut next = [0u32; 4];
            for _ in 0..20_000 {
                let (thread, n) = receiver.recv().await.expect("a sender is still there");
                assert_eq!(n, next[thread as usize], "out of order");
                next[thread as usize] += 1;
            }
            receiver
        });
        for sender in senders {
            sender.join().unwrap();
        }
        // One sender is still alive, so only the sends themselves can have woken the reader.
        let mut receiver = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the receiver was woken for every send")
            .unwrap();
        let end = tokio::spawn(async move { receiver.recv().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!end.is_finished());
        drop(sender);
        let end = tokio::time::timeout(Duration::from_secs(5), end).await;
        assert!(
            matches!(end, Ok(Ok(None))),
            "the last sender leaving ends the stream"
        );
    }

    #[test]
    fn a_send_after_the_receiver_left_is_handed_back() {
        let (sender, receiver) = mailbox::<&str>();
        sender.send("queued").unwrap();
        drop(receiver);
        assert_eq!(sender.send("late"), Err("late"));
    }
}
