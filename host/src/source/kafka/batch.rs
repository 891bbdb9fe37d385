//! The one thing a partition's worker and its lanes ask of the pipeline:
//! settle a batch of messages (see [`crate::settle::settle`]), handed in by
//! whoever starts the consumer.

use std::sync::Arc;

use rdkafka::message::{BorrowedMessage, OwnedMessage};

use crate::dispatch::Dispatcher;
use crate::shutdown::Shutdown;

/// How a batch of a partition is settled (see [`crate::settle::settle`]):
/// each returns how many records from the start are settled.
pub trait SettleBatch: Send + Sync {
    /// Messages as librdkafka holds them: the fast path.
    fn borrowed(
        &self,
        dispatcher: &mut Dispatcher,
        batch: &[BorrowedMessage<'_>],
        stop: &Shutdown,
    ) -> usize;
    /// Messages kept by a partition that holds, or given to a lane.
    fn owned(&self, dispatcher: &mut Dispatcher, batch: &[OwnedMessage], stop: &Shutdown) -> usize;
}

pub type Settle = Arc<dyn SettleBatch>;
