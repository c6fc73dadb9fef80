//! The `s3` content store: one object per asset key and content hash,
//! `s3://{bucket}/{prefix}{asset_key}/{hash}.json`. Puts are idempotent by construction.

use assetflow_actors::ports::{BackendResult, ContentStore};
use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;

use super::{Aws, RequestCounter, sdk_error};

pub struct S3Content {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    requests: RequestCounter,
}

impl S3Content {
    pub fn new(aws: &Aws, bucket: &str, prefix: &str) -> Self {
        let mut conf = aws_sdk_s3::config::Builder::from(&aws.sdk);
        if aws.endpoint_url.is_some() {
            // Local emulators serve buckets by path, not by host name.
            conf = conf.force_path_style(true);
        }
        S3Content {
            client: aws_sdk_s3::Client::from_conf(conf.build()),
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            requests: aws.requests.clone(),
        }
    }

    fn key(&self, asset_key: &str, hash: &str) -> String {
        format!("{}{asset_key}/{hash}.json", self.prefix)
    }

    /// Creates the bucket unless it exists (local setups).
    pub async fn ensure_bucket(&self) -> BackendResult<()> {
        self.requests.hit("s3", "HeadBucket");
        if self.client.head_bucket().bucket(&self.bucket).send().await.is_ok() {
            return Ok(());
        }
        self.requests.hit("s3", "CreateBucket");
        match self.client.create_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = sdk_error("s3", "CreateBucket", e);
                if err.message.contains("BucketAlreadyOwnedByYou") { Ok(()) } else { Err(err) }
            }
        }
    }
}

#[async_trait]
impl ContentStore for S3Content {
    fn content_ref(&self, asset_key: &str, hash: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(asset_key, hash))
    }

    async fn put(&self, asset_key: &str, hash: &str, body: &[u8]) -> BackendResult<()> {
        self.requests.hit("s3", "PutObject");
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(asset_key, hash))
            .content_type("application/json")
            .body(ByteStream::from(body.to_vec()))
            .send()
            .await
            .map_err(|e| sdk_error("s3", "PutObject", e))?;
        Ok(())
    }
}
