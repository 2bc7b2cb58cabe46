//! The broker a test's hub and owner service share: a real `nats-server`, or the hub's embedded
//! in-process bus. Behaviour tests run once on each, from one definition (see
//! [`on_both_brokers!`](crate::on_both_brokers)).

use std::sync::Arc;
use std::time::Duration;

use vwed_hub::broker::{Broker, MemoryBroker};
use vwed_publisher::{MemoryBus, Publisher};

use crate::Nats;

/// Which broker a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// A `nats-server` process of the test's own.
    Nats,
    /// The embedded bus the hub runs on without `--nats-url`.
    Memory,
}

/// A running broker of either kind.
pub enum TestBroker {
    /// A real server, which tests may also stop and restart.
    Nats(Box<Nats>),
    /// A bus shared by the hub and the owner, both in this process.
    Memory(MemoryBus),
}

impl TestBroker {
    /// Starts a broker of `kind`.
    pub async fn start(kind: BrokerKind) -> Self {
        match kind {
            BrokerKind::Nats => Self::Nats(Box::new(Nats::start().await)),
            BrokerKind::Memory => Self::Memory(MemoryBus::new()),
        }
    }

    /// The NATS server, for tests of NATS faults.
    pub fn nats(&mut self) -> &mut Nats {
        match self {
            Self::Nats(nats) => nats,
            Self::Memory(_) => panic!("this test needs a NATS broker"),
        }
    }

    /// The NATS URL the hub is configured with; `None` for the embedded bus.
    pub fn nats_url(&self) -> Option<String> {
        match self {
            Self::Nats(nats) => Some(nats.url()),
            Self::Memory(_) => None,
        }
    }

    /// The hub's side of the embedded bus; `None` on NATS (the hub connects by URL).
    pub fn hub_broker(&self) -> Option<Arc<dyn Broker>> {
        match self {
            Self::Nats(_) => None,
            Self::Memory(bus) => Some(Arc::new(MemoryBroker::new(bus))),
        }
    }

    /// A publisher with a connection of its own, as a separate service would have.
    pub async fn publisher(&self) -> Publisher {
        match self {
            Self::Nats(nats) => Publisher::new(
                async_nats::ConnectOptions::new()
                    .retry_on_initial_connect()
                    .max_reconnects(None)
                    .reconnect_delay_callback(|_| Duration::from_millis(100))
                    .connect(nats.url())
                    .await
                    .expect("the publisher connects to NATS"),
            ),
            Self::Memory(bus) => Publisher::in_process(bus.clone()),
        }
    }
}

/// Defines each listed behaviour test (an `async fn name(kind: BrokerKind)` in scope) twice: as
/// `name::nats` and `name::memory`, so both brokers pass the same cases.
#[macro_export]
macro_rules! on_both_brokers {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test(flavor = "multi_thread")]
                async fn nats() {
                    super::$case($crate::BrokerKind::Nats).await
                }

                #[tokio::test(flavor = "multi_thread")]
                async fn memory() {
                    super::$case($crate::BrokerKind::Memory).await
                }
            }
        )*
    };
}
