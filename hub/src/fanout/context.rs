//! What every topic needs from the hub: the broker, the subjects, the snapshot timeout and the
//! metrics. Shared by the registries that spawn topics and the topics themselves.

use std::sync::Arc;
use std::time::Duration;

use vwed_publisher::Subjects;

use crate::broker::Broker;
use crate::metrics::Metrics;

/// What every topic needs from the hub.
pub struct TopicContext {
    /// Where events come from and snapshots are requested.
    pub broker: Arc<dyn Broker>,
    /// Maps ids to subjects exactly as publishers do.
    pub subjects: Subjects,
    /// How long one snapshot request may take before it counts as failed.
    pub snapshot_timeout: Duration,
    /// Where topics count what they do.
    pub metrics: Arc<Metrics>,
}
