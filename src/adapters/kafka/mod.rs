//! Kafka (rdkafka, bundled librdkafka): the `kafka` source (a consumer group committing the
//! acknowledged prefix of each partition), the `kafka` sinks (an idempotent producer), and the
//! failure topic read back for redrive (`dead_letters`).

pub mod dead_letters;
mod group;
pub mod sink;
pub mod source;

use assetflow_actors::ports::{BackendError, FailureKind};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Maps a Kafka error: broker-side and transport trouble is transient, a message or a setting
/// the broker refuses is not.
pub fn kafka_error(op: &str, e: &KafkaError) -> BackendError {
    let permanent = matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidConfig
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidRecord
        )
    ) || matches!(e, KafkaError::ClientConfig(..) | KafkaError::ClientCreation(..));
    BackendError::new("kafka", op, e, if permanent { FailureKind::Permanent } else { FailureKind::Transient })
}
