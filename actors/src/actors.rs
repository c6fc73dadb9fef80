//! The actors of the pipeline and the messages between them.
//!
//! ```text
//! sources ─▶ Ingest ─▶ Enricher ─▶ Router ─▶ Decisor[0..n] ─┬─▶ UpsertProducer ─▶ upsert sink
//!               │          │          │                      ├─▶ DropProducer   ─▶ drop sink
//!               │          └─(enrich only)─▶ EnrichedProducer ─▶ enriched sink
//!               └── dead letters ─────┴──────────────────────┴─▶ HistoryWriter ─▶ history, dead-letter sink
//! ```
//!
//! Redrive feeds dead letters back into the Enricher, once or every `redrive.interval`. Every
//! one runs its work under the [`crate::supervise::Supervisor`].
//!
//! ```text
//! ```

pub mod decisor;
pub mod enricher;
pub mod history;
pub mod ingest;
pub mod producer;
pub mod redrive;
pub mod router;

pub use decisor::Decisor;
pub use enricher::Enricher;
pub use history::HistoryWriter;
pub use ingest::Ingest;
pub use producer::{DropProducer, EnrichedProducer, UpsertProducer};
pub use redrive::Redrive;
pub use router::Router;

use chrono::{DateTime, Utc};

use crate::decision::Business;
use crate::event::AssetEvent;

/// An event with its business data, on its way to a decision.
#[derive(Debug)]
pub struct Enriched {
    pub event: AssetEvent,
    pub business: Business,
    pub enriched_at: DateTime<Utc>,
}
