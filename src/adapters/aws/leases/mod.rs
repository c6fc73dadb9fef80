//! Kinesis shard leases in DynamoDB, as the Kinesis Client Library keeps them: the table and
//! its conditional writes (`table.rs`), and which leases a worker takes (`plan.rs`, pure).
//!
//! Not yet wired into the `kinesis` source (issue #16): these are its parts, tested on their own.

pub mod plan;
pub mod table;
