//! Backend adapters: each implements one port of `assetflow-actors` for one kind of backend.
//!
//! - Sources: [`file_source`], [`http_source`], [`kafka`], and Kinesis and SQS in [`aws`];
//!   where they keep their positions, [`checkpoints`].
//! - Enrichers: [`file_lookup`], [`postgres`].
//! - Control table: [`state`] (embedded, fjall), [`postgres`], DynamoDB in [`aws`].
//! - Content: [`content_pack`] (the `dir` store's packs, the default), [`content_dir`] (one file
//!   per asset), S3 in [`aws`].
//! - History: [`history_log`] (embedded segment files), [`scylla_history`], [`postgres`],
//!   DynamoDB in [`aws`].
//! - Sinks and dead letters: [`file_sink`], [`dead_letter_file`], [`kafka`], SQS in [`aws`].
//! - Shared by the embedded stores: [`group_sync`], one journal sync for every writer waiting.

pub mod aws;
pub mod checkpoints;
pub mod content_dir;
pub mod content_pack;
pub mod dead_letter_file;
pub mod file_lookup;
pub mod file_sink;
pub mod file_source;
pub mod group_sync;
pub mod history_log;
pub mod http_source;
pub mod kafka;
pub mod postgres;
pub mod scylla_history;
pub mod state;
