//! Backend adapters: each implements one port of `assetflow-actors` for one kind of backend.

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
