//! The connection a [`Publisher`](crate::Publisher) sends on: a NATS client or an in-process
//! [`MemoryBus`]. Everything above this module uses the one interface and never tells them apart.

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::memory::MemoryBus;
use crate::Error;

/// A message that asks for a reply.
pub(crate) struct Request {
    /// The subject it came on; it names the key asked for.
    pub subject: String,
    /// Where to send the reply; `None` when the sender expects none.
    pub reply: Option<String>,
}

#[derive(Clone, Debug)]
pub(crate) enum Link {
    /// A NATS server or cluster; async-nats reconnects by itself.
    Nats(async_nats::Client),
    /// A bus inside this process (the hub's embedded broker, or a test's).
    Memory(MemoryBus),
}

impl Link {
    pub async fn publish(&self, subject: String, payload: Bytes) -> Result<(), Error> {
        match self {
            Link::Nats(client) => client
                .publish(subject, payload)
                .await
                .map_err(Error::Publish),
            Link::Memory(bus) => bus
                .publish(&subject, payload)
                .map(drop)
                .map_err(Error::InProcess),
        }
    }

    pub async fn queue_subscribe(
        &self,
        subject: String,
        queue_group: &str,
    ) -> Result<BoxStream<'static, Request>, Error> {
        Ok(match self {
            Link::Nats(client) => client
                .queue_subscribe(subject, queue_group.to_owned())
                .await
                .map_err(Error::Subscribe)?
                .map(|message| Request {
                    subject: message.subject.to_string(),
                    reply: message.reply.map(|reply| reply.to_string()),
                })
                .boxed(),
            Link::Memory(bus) => bus
                .queue_subscribe(subject, queue_group)
                .map(|message| Request {
                    subject: message.subject,
                    reply: message.reply,
                })
                .boxed(),
        })
    }

    /// How many times the connection was made, the first included: a change means it came back.
    pub fn connects(&self) -> u64 {
        match self {
            Link::Nats(client) => client
                .statistics()
                .connects
                .load(std::sync::atomic::Ordering::Relaxed),
            Link::Memory(_) => 1,
        }
    }

    /// Whether messages published now go out (rather than wait in the client's buffer).
    pub fn is_connected(&self) -> bool {
        match self {
            Link::Nats(client) => {
                client.connection_state() == async_nats::connection::State::Connected
            }
            Link::Memory(_) => true,
        }
    }

    pub async fn flush(&self) -> Result<(), Error> {
        match self {
            Link::Nats(client) => client.flush().await.map_err(Error::Flush),
            // Delivery on the bus is done when `publish` returns.
            Link::Memory(_) => Ok(()),
        }
    }
}
