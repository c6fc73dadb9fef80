//! assetflow: the service binary's library: config, adapters, topology and commands.
//!
//! - [`config`]: `config.toml` as typed data, with env expansion, overrides and validation.
//! - [`adapters`]: one module per backend, each implementing a port of `assetflow-actors`.
//! - [`topology`]: builds the adapters a config names, and draws the graph.
//! - [`commands`]: `run`, `check-config`, `topology`, `history`, `assets`.
//! - [`admin`]: the admin HTTP server: health, readiness, metrics, the live status page.
//! - [`generate`]: `assetflow gen`, the deterministic crawl streams of tests and benchmarks.
//! - [`allocator`]: the options jemalloc runs with.

pub mod adapters;
pub mod admin;
pub mod allocator;
pub mod commands;
pub mod config;
pub mod generate;
pub mod topology;
