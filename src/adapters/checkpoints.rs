//! Where sources keep their positions: the embedded store, or the DynamoDB control table.

use assetflow_actors::ports::BackendResult;
use async_trait::async_trait;

use super::aws::dynamodb::DynamoControl;
use super::state::StateStore;

/// A small key-value store for source positions.
#[async_trait]
pub trait Checkpoints: Send + Sync + 'static {
    async fn get(&self, key: &str) -> BackendResult<Option<String>>;
    async fn set(&self, key: &str, position: &str) -> BackendResult<()>;
}

#[async_trait]
impl Checkpoints for StateStore {
    async fn get(&self, key: &str) -> BackendResult<Option<String>> {
        Ok(self.checkpoint(key)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }
    async fn set(&self, key: &str, position: &str) -> BackendResult<()> {
        self.set_checkpoint(key.to_owned(), position.as_bytes().to_vec()).await
    }
}

#[async_trait]
impl Checkpoints for DynamoControl {
    async fn get(&self, key: &str) -> BackendResult<Option<String>> {
        self.checkpoint(key).await
    }
    async fn set(&self, key: &str, position: &str) -> BackendResult<()> {
        self.set_checkpoint(key, position).await
    }
}
