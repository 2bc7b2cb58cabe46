//! Lost-message notices for one subscription at a time.
//!
//! A broker drops messages for a subscription that fell behind and names it (NATS: the slow
//! consumer's subscription id; the in-process bus: its subscription id). Only that key's events
//! may be missing, so only its topic needs a fresh snapshot: each subscription's stream yields
//! [`Received::Lost`] once per notice burst, ahead of what comes next.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::task::AtomicWaker;
use futures::{Stream, StreamExt};

use super::{Received, Subscription};

/// The subscriptions to tell, by the id their broker names them with.
#[derive(Clone, Default)]
pub struct LossNotices {
    /// Shared with each watched subscription, which removes itself when dropped.
    watched: Arc<Mutex<HashMap<u64, Arc<Flag>>>>,
}

/// Set when messages were lost; the subscription's task is woken to hear of it.
#[derive(Default)]
struct Flag {
    /// Messages were lost since the stream last said so.
    lost: AtomicBool,
    /// The task polling the subscription.
    waker: AtomicWaker,
}

impl LossNotices {
    /// `messages` as a [`Subscription`] that also yields [`Received::Lost`] when the broker
    /// reports losses for `id`. Without an id, losses are never reported to it (the broker then
    /// reports them to everyone).
    pub fn watch(&self, id: Option<u64>, messages: BoxStream<'static, Bytes>) -> Subscription {
        let flag = Arc::new(Flag::default());
        if let Some(id) = id {
            self.lock().insert(id, flag.clone());
        }
        Watched {
            id,
            messages,
            flag,
            notices: self.clone(),
        }
        .boxed()
    }

    /// Tells subscription `id` that messages were lost; false when no such subscription is
    /// watched (the caller then warns everyone).
    pub fn lost(&self, id: u64) -> bool {
        let Some(flag) = self.lock().get(&id).cloned() else {
            return false;
        };
        flag.lost.store(true, Ordering::Release);
        flag.waker.wake();
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Flag>>> {
        // Each change is one insert or remove: a panic elsewhere leaves the map whole.
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A subscription's messages, with its loss notices in front of them.
struct Watched {
    /// The id losses are reported under, if the broker gave one.
    id: Option<u64>,
    /// The broker's stream.
    messages: BoxStream<'static, Bytes>,
    /// Set by [`LossNotices::lost`].
    flag: Arc<Flag>,
    /// To stop being watched when dropped.
    notices: LossNotices,
}

impl Stream for Watched {
    type Item = Received;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Received>> {
        self.flag.waker.register(cx.waker());
        if self.flag.lost.swap(false, Ordering::AcqRel) {
            return Poll::Ready(Some(Received::Lost));
        }
        self.messages
            .poll_next_unpin(cx)
            .map(|message| message.map(Received::Message))
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.notices.lock().remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_loss_is_told_to_its_subscription_alone_ahead_of_its_next_message() {
        let notices = LossNotices::default();
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let mut mine = notices.watch(Some(7), tokio_stream_from(receiver));
        let (_other_sender, other_receiver) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let mut other = notices.watch(Some(8), tokio_stream_from(other_receiver));
        sender.send(Bytes::from_static(b"a")).unwrap();
        assert!(notices.lost(7));
        assert!(
            !notices.lost(99),
            "an unknown id is for the caller to handle"
        );
        assert!(matches!(mine.next().await, Some(Received::Lost)));
        assert!(matches!(mine.next().await, Some(Received::Message(m)) if m == "a"));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), other.next())
                .await
                .is_err(),
            "the other subscription heard nothing"
        );
        drop(mine);
        assert!(
            !notices.lost(7),
            "a dropped subscription is no longer watched"
        );
    }

    fn tokio_stream_from(
        mut receiver: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
    ) -> BoxStream<'static, Bytes> {
        futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)).boxed()
    }
}
