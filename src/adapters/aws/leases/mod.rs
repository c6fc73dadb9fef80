//! Kinesis shard leases in DynamoDB, as the Kinesis Client Library keeps them: the table and
//! its conditional writes (`table.rs`), and which leases a worker takes (`plan.rs`, pure). The
//! `kinesis` source runs them when its config names a `lease_table` (`../kinesis.rs`).

pub mod plan;
pub mod table;
