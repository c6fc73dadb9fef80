//! The topology as a graph, built once from the config: every actor, source and store a config
//! starts, and every edge between them with the flow counter that measures it. The builder
//! opens the backend of each node the graph holds, `assetflow topology` draws it, and the
//! status page lays it out from `/graph.json`, so the three cannot drift apart.

use assetflow_actors::metrics::{ActorName, Flow};
use serde::Serialize;

use crate::config::{Config, ContentConfig, ContentLayout, ControlConfig, EnricherConfig, HistoryConfig, redact_url};

/// What a node is, for the builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// `[[sources]]` entry `i`, and the Ingest that reads it.
    Source(usize),
    Ingest(usize),
    Enricher,
    Router,
    Decisor,
    ContentStore,
    ControlStore,
    UpsertProducer,
    DropProducer,
    EnrichedProducer,
    HistoryWriter,
}

/// One box of the picture.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    #[serde(skip)]
    pub kind: NodeKind,
    /// Stable id: `source0`, `ingest0`, `enricher`, `router`, `decisor`, `upsert_producer`...
    pub id: String,
    /// What it is, in the words of ARCHITECTURE.md: `Ingest`, `Decisor`, `control store`...
    pub title: String,
    /// Which backend, file or topic it stands for, secrets redacted.
    pub detail: String,
    /// The actor whose mailbox and busy time the node shows, if it is an actor.
    pub actor: Option<&'static str>,
    /// How many run side by side (the decisor's shards); 1 for everything else.
    pub instances: usize,
}

/// One arrow: what goes from one node to another, and the flow counter that counts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// The key of this edge's counter in `/status.json`'s `flows` ([`Flow::key`]).
    pub flow: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

impl Graph {
    /// The graph of a config's topology. `sources` names the inputs as the pipeline will call
    /// them (for `assetflow redrive` that is the dead-letter store, not the configured sources).
    pub fn build(config: &Config, sources: &[String]) -> Graph {
        let mut g = Graph { nodes: Vec::new(), edges: Vec::new() };
        let enricher = config.enriches();
        for (i, name) in sources.iter().enumerate() {
            g.node(NodeKind::Source(i), &format!("source{i}"), "source", name, None);
            g.node(NodeKind::Ingest(i), &format!("ingest{i}"), "Ingest", name, None);
            g.edge(&format!("source{i}"), &format!("ingest{i}"), Flow::SourceIngest.key(name));
            if enricher {
                g.edge(&format!("ingest{i}"), "enricher", Flow::IngestEnricher.key(name));
            } else {
                g.edge(&format!("ingest{i}"), "router", Flow::IngestRouter.key(name));
            }
            g.edge(&format!("ingest{i}"), "history_writer", Flow::IngestHistory.key(name));
        }
        if enricher {
            g.node(
                NodeKind::Enricher,
                "enricher",
                "Enricher",
                &format!("lookup: {}", lookup_label(&config.enricher)),
                Some(ActorName::Enricher),
            );
            g.flow("enricher", "history_writer", Flow::EnricherHistory);
        }
        if config.decides() {
            g.node(NodeKind::Router, "router", "Router", "asset key → shard", Some(ActorName::Router));
            if enricher {
                g.flow("enricher", "router", Flow::EnricherRouter);
            }
            g.node(NodeKind::Decisor, "decisor", "Decisor", "one shard per asset key", Some(ActorName::Decisor));
            g.nodes.last_mut().expect("just pushed").instances = config.pipeline.shards;
            g.flow("router", "decisor", Flow::RouterDecisor);
            g.flow("router", "history_writer", Flow::RouterHistory);
            g.node(NodeKind::ContentStore, "content", "content store", &content_label(&config.content), None);
            g.node(NodeKind::ControlStore, "control", "control store", &control_label(&config.control), None);
            g.node(
                NodeKind::UpsertProducer,
                "upsert_producer",
                "UpsertProducer",
                &config.sinks.upsert.label(),
                Some(ActorName::UpsertProducer),
            );
            g.node(
                NodeKind::DropProducer,
                "drop_producer",
                "DropProducer",
                &config.sinks.drop.label(),
                Some(ActorName::DropProducer),
            );
            // In the order a batch applies them: content, outputs, control records, history.
            g.flow("decisor", "content", Flow::DecisorContent);
            g.flow("decisor", "upsert_producer", Flow::DecisorUpsert);
            g.flow("decisor", "drop_producer", Flow::DecisorDrop);
            g.flow("decisor", "control", Flow::DecisorControl);
            g.flow("decisor", "history_writer", Flow::DecisorHistory);
        } else {
            g.node(
                NodeKind::EnrichedProducer,
                "enriched_producer",
                "EnrichedProducer",
                &config.sinks.enriched.label(),
                Some(ActorName::EnrichedProducer),
            );
            g.flow("enricher", "enriched_producer", Flow::EnricherEnriched);
            g.flow("enriched_producer", "history_writer", Flow::EnrichedHistory);
        }
        let detail =
            format!("history: {}; dead letters: {}", history_label(&config.history), config.sinks.dead_letter.label());
        g.node(NodeKind::HistoryWriter, "history_writer", "HistoryWriter", &detail, Some(ActorName::HistoryWriter));
        g
    }

    fn node(&mut self, kind: NodeKind, id: &str, title: &str, detail: &str, actor: Option<ActorName>) {
        self.nodes.push(Node {
            kind,
            id: id.into(),
            title: title.into(),
            detail: detail.into(),
            actor: actor.map(ActorName::as_str),
            instances: 1,
        });
    }

    fn edge(&mut self, from: &str, to: &str, flow: String) {
        self.edges.push(Edge { from: from.into(), to: to.into(), flow });
    }

    fn flow(&mut self, from: &str, to: &str, flow: Flow) {
        self.edge(from, to, flow.key(""));
    }

    /// Draws the graph in `format`: `text`, `dot`, `mermaid` or `json`. The text forms show
    /// every instance of a node (`Decisor[0]`, `Decisor[1]`...).
    pub fn draw(&self, format: &str) -> String {
        if format == "json" {
            // Plain data with string keys always serializes.
            return serde_json::to_string_pretty(self).unwrap_or_default() + "\n";
        }
        let boxes: Vec<(String, String)> = self.nodes.iter().flat_map(instances).collect();
        let ids_of = |id: &str| -> Vec<String> {
            boxes
                .iter()
                .filter(|(b, _)| b == id || b.strip_prefix(id).is_some_and(is_index))
                .map(|b| b.0.clone())
                .collect()
        };
        let mut arrows = Vec::new();
        for e in &self.edges {
            for a in ids_of(&e.from) {
                for b in ids_of(&e.to) {
                    arrows.push((a.clone(), b));
                }
            }
        }
        let label = |id: &str| boxes.iter().find(|b| b.0 == id).map_or(id.to_string(), |b| b.1.clone());
        let mut out = String::new();
        match format {
            "dot" => {
                out.push_str("digraph assetflow {\n  rankdir=LR;\n  node [shape=box];\n");
                for (id, l) in &boxes {
                    out.push_str(&format!("  {id} [label={l:?}];\n"));
                }
                for (a, b) in &arrows {
                    out.push_str(&format!("  {a} -> {b};\n"));
                }
                out.push_str("}\n");
            }
            "mermaid" => {
                out.push_str("flowchart LR\n");
                for (id, l) in &boxes {
                    out.push_str(&format!("  {id}[\"{}\"]\n", l.replace('"', "'")));
                }
                for (a, b) in &arrows {
                    out.push_str(&format!("  {a} --> {b}\n"));
                }
            }
            _ => {
                for (a, b) in &arrows {
                    out.push_str(&format!("{} -> {}\n", label(a), label(b)));
                }
            }
        }
        out
    }
}

/// `id_suffix` after a node's id names one of its instances (`decisor` + `_3`).
fn is_index(rest: &str) -> bool {
    rest.strip_prefix('_').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The boxes a node is drawn as, with their labels: one per instance.
fn instances(n: &Node) -> Vec<(String, String)> {
    let label = |title: &str| match n.title.as_str() {
        "source" => format!("source: {}", n.detail),
        "Ingest" => format!("Ingest ({})", n.detail),
        t if t.ends_with("Producer") => format!("{title} → {}", n.detail),
        _ => format!("{title} ({})", n.detail),
    };
    // The shards are drawn one by one, however many there are: each owns its own keys.
    if n.id == "decisor" {
        (0..n.instances).map(|i| (format!("{}_{i}", n.id), label(&format!("{}[{i}]", n.title)))).collect()
    } else {
        vec![(n.id.clone(), label(&n.title))]
    }
}

fn lookup_label(e: &EnricherConfig) -> String {
    match e {
        EnricherConfig::None => "none".into(),
        EnricherConfig::File(f) => format!("file {}", f.path.display()),
        EnricherConfig::Postgres(p) => format!("postgres {}", redact_url(&p.url)),
    }
}

fn control_label(c: &ControlConfig) -> String {
    match c {
        ControlConfig::Embedded => "embedded".into(),
        ControlConfig::Dynamodb(t) => format!("dynamodb {}", t.table),
        ControlConfig::Postgres(t) => format!("postgres {} {}", redact_url(&t.url), t.table),
    }
}

fn content_label(c: &ContentConfig) -> String {
    match c {
        ContentConfig::Dir { path: Some(p), layout } => format!("dir {} ({})", p.display(), layout_label(*layout)),
        ContentConfig::Dir { path: None, layout } => format!("dir (state_dir/content, {})", layout_label(*layout)),
        ContentConfig::S3 { bucket, prefix, .. } => format!("s3 {bucket}/{prefix}"),
    }
}

fn layout_label(l: ContentLayout) -> &'static str {
    match l {
        ContentLayout::Packs => "packs",
        ContentLayout::Files => "files",
    }
}

fn history_label(h: &HistoryConfig) -> String {
    match h {
        HistoryConfig::Embedded => "embedded".into(),
        HistoryConfig::Scylla { nodes, keyspace } => format!("scylla {} ({keyspace})", nodes.join(",")),
        HistoryConfig::Postgres(t) => format!("postgres {} {}", redact_url(&t.url), t.table),
        HistoryConfig::Dynamodb(t) => format!("dynamodb {}", t.table),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    fn graph(extra: &str) -> Graph {
        let text = format!("[[sources]]\nkind = \"file\"\npath = \"e.jsonl\"\n{extra}");
        let config = Config::parse(&text, Path::new("/c/config.toml"), &Default::default()).unwrap();
        let sources: Vec<String> = config.sources.iter().map(|s| s.display_name()).collect();
        Graph::build(&config, &sources)
    }

    #[test]
    fn every_edge_joins_two_nodes_and_names_its_own_flow() {
        for extra in ["", "[pipeline]\nstages = [\"enrich\"]\n", "[enricher]\nkind = \"file\"\npath = \"b.json\"\n"] {
            let g = graph(extra);
            let ids: BTreeSet<&str> = g.nodes.iter().map(|n| n.id.as_str()).collect();
            assert_eq!(ids.len(), g.nodes.len(), "node ids are unique");
            let mut flows = BTreeSet::new();
            for e in &g.edges {
                assert!(ids.contains(e.from.as_str()) && ids.contains(e.to.as_str()), "{e:?}");
                assert!(flows.insert(e.flow.clone()), "each edge has its own counter: {e:?}");
            }
        }
    }

    #[test]
    fn the_decision_stage_is_drawn_only_when_it_runs() {
        let full = graph("[pipeline]\nshards = 3\n");
        let decisor = full.nodes.iter().find(|n| n.id == "decisor").unwrap();
        assert_eq!(decisor.instances, 3);
        let text = full.draw("text");
        assert!(text.contains("Decisor[2]") && !text.contains("Decisor[3]"), "{text}");
        let enrich_only = graph("[pipeline]\nstages = [\"enrich\"]\n");
        assert!(enrich_only.nodes.iter().all(|n| n.id != "decisor" && n.id != "router"));
        assert!(enrich_only.draw("text").contains("EnrichedProducer → file out/enriched.jsonl"));
    }

    #[test]
    fn with_nothing_to_look_up_the_ingests_route_their_events_themselves() {
        let none = graph("[pipeline]\nshards = 2\n");
        assert!(none.nodes.iter().all(|n| n.id != "enricher"), "no Enricher runs: {:?}", none.nodes);
        let to_router: Vec<_> = none.edges.iter().filter(|e| e.to == "router").map(|e| e.from.as_str()).collect();
        assert_eq!(to_router, ["ingest0"]);
        let file = graph("[enricher]\nkind = \"file\"\npath = \"b.json\"\n");
        assert!(file.nodes.iter().any(|n| n.id == "enricher"));
        let to_router: Vec<_> = file.edges.iter().filter(|e| e.to == "router").map(|e| e.from.as_str()).collect();
        assert_eq!(to_router, ["enricher"]);
        // Enrich only publishes what the Enricher emits, so it keeps its Enricher.
        let enrich_only = graph("[pipeline]\nstages = [\"enrich\"]\n");
        assert!(enrich_only.nodes.iter().any(|n| n.id == "enricher"));
    }

    #[test]
    fn secrets_stay_out_of_the_picture() {
        let g = graph(
            "[enricher]\nkind = \"postgres\"\nurl = \"postgres://u:hunter2@db/x\"\nquery = \"SELECT 1 WHERE $1=$1\"\n",
        );
        let json = g.draw("json");
        assert!(!json.contains("hunter2") && json.contains("postgres://u:***@db/x"), "{json}");
    }
}
