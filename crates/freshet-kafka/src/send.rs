//! Producing without dropping: a full local queue means wait, not fail.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseRecord, DeliveryFuture, FutureProducer, FutureRecord, ProducerContext, ThreadedProducer};

/// How long to wait before offering a record again to a full queue.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(1);

/// Queues `record` on a threaded producer, waiting while librdkafka's local
/// queue is full; any other error is returned.
pub fn send_threaded<K, P, C>(
    producer: &ThreadedProducer<C>,
    record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> Result<(), KafkaError>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
    C: ProducerContext,
{
    // rdkafka hands the record back inside its error, hence the size.
    #[allow(clippy::result_large_err)]
    let queued = retry_while_queue_full(record, |record| producer.send(record));
    queued
}

/// Queues `record` on a future producer, waiting while librdkafka's local
/// queue is full, and gives its delivery report to await; any other error is
/// returned.
pub fn send_future<K, P>(
    producer: &FutureProducer,
    record: FutureRecord<'_, K, P>,
) -> Result<DeliveryFuture, KafkaError>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    #[allow(clippy::result_large_err)]
    let queued = retry_while_queue_full(record, |record| producer.send_result(record));
    queued
}

/// Offers `record` to `send` until librdkafka's local queue has room for it;
/// any other error is returned. `send` is a producer's send call, which hands
/// the record back with its error.
fn retry_while_queue_full<R, T>(
    mut record: R,
    mut send: impl FnMut(R) -> Result<T, (KafkaError, R)>,
) -> Result<T, KafkaError> {
    loop {
        match send(record) {
            Ok(queued) => return Ok(queued),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(QUEUE_FULL_WAIT);
            }
            Err((error, _)) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_is_waited_out_and_other_errors_returned() {
        let mut full_answers = 3;
        let mut offered = Vec::new();
        let queued = retry_while_queue_full("record", |record| {
            offered.push(record);
            if full_answers > 0 {
                full_answers -= 1;
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), record))
            } else {
                Ok(offered.len())
            }
        });
        assert_eq!(queued.expect("queued once there was room"), 4);
        assert_eq!(offered, ["record"; 4]);

        let failed = retry_while_queue_full((), |record| {
            Err::<(), _>((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), record))
        });
        assert_eq!(failed, Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)));
    }
}
