//! The AWS adapters (Kinesis and SQS sources, SQS sinks and dead-letter store, DynamoDB control
//! table and history, S3 content bucket), all through the real aws-sdk clients configured by `[aws]`.
//!
//! SDK retries are off: every call goes through the pipeline's own `[retry]` policy, so there
//! is one retry behaviour to configure and every request is counted by [`RequestCounter`].

pub mod dynamodb;
pub mod history;
pub mod kinesis;
pub mod leases;
pub mod s3;
pub mod sqs;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use assetflow_actors::ports::{BackendError, FailureKind};
use aws_config::{BehaviorVersion, Region};
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::config::AwsConfig;

/// AWS requests made, by service and operation: what batching saves is measured here.
#[derive(Debug, Default, Clone)]
pub struct RequestCounter {
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl RequestCounter {
    pub fn hit(&self, service: &str, op: &str) {
        let mut m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(format!("{service}.{op}")).or_default() += 1;
    }
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }
}

/// The shared SDK configuration of `[aws]`, and the request counter every client reports to.
#[derive(Clone)]
pub struct Aws {
    pub sdk: aws_config::SdkConfig,
    pub endpoint_url: Option<String>,
    pub requests: RequestCounter,
}

impl Aws {
    /// Loads the SDK configuration: region, optional endpoint (a local emulator), static
    /// credentials if the config gives them (local setups), else the default credential chain.
    pub async fn load(cfg: &AwsConfig) -> Aws {
        use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
        let http =
            aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(CryptoMode::Ring)).build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .http_client(http)
            .retry_config(aws_config::retry::RetryConfig::disabled());
        let endpoint_url = Some(cfg.endpoint_url.clone()).filter(|u| !u.is_empty());
        if let Some(url) = &endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) {
            loader = loader.credentials_provider(aws_credential_types::Credentials::from_keys(id, secret, None));
        }
        Aws { sdk: loader.load().await, endpoint_url, requests: RequestCounter::default() }
    }
}

/// Error codes that mean "slow down and try again".
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "SlowDown",
    "LimitExceededException",
    "KMSThrottlingException",
];

/// Maps an SDK error to a [`BackendError`] naming the service and operation.
pub fn sdk_error<E>(service: &str, op: &str, e: SdkError<E>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let message = match &e {
        SdkError::ServiceError(ctx) => {
            let err = ctx.err();
            format!(
                "{} (HTTP {}): {}",
                err.code().unwrap_or("error"),
                ctx.raw().status().as_u16(),
                err.message().unwrap_or("no message")
            )
        }
        other => DisplayErrorContext(other).to_string(),
    };
    let kind = match &e {
        SdkError::ServiceError(ctx) => {
            let code = ctx.err().code().unwrap_or_default();
            let status = ctx.raw().status().as_u16();
            if code == "ConditionalCheckFailedException" || code == "TransactionCanceledException" {
                FailureKind::Conflict
            } else if status >= 500 || status == 429 || THROTTLING.contains(&code) {
                FailureKind::Transient
            } else {
                FailureKind::Permanent
            }
        }
        SdkError::ConstructionFailure(_) => FailureKind::Permanent,
        _ => FailureKind::Transient,
    };
    BackendError::new(service, op, message, kind)
}

/// A request that could not even be built (a missing required field): a bug, not an outage.
pub fn build_error(service: &str, op: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::permanent(service, op, format!("building the request: {e}"))
}
