//! What serde cannot check: ranges, paths and identifiers. Every rule runs, so a file with
//! several mistakes reports them all at once.

use super::sections::{ControlConfig, HistoryConfig, SourceConfig, StageName};
use super::{Config, Problem};
use crate::adapters::postgres::valid_table;

/// Every problem of a deserialized config, in file order.
pub fn problems(c: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut bad = |key: &str, message: String| out.push(Problem { key: key.to_owned(), message });
    let p = &c.pipeline;
    if p.stages.is_empty() || !p.stages.contains(&StageName::Enrich) {
        bad("pipeline.stages", "expected [\"enrich\", \"decide\"] or [\"enrich\"]".into());
    }
    if p.shards == 0 || p.shards > 256 {
        bad("pipeline.shards", format!("expected 1 to 256 shards, got {}", p.shards));
    }
    if p.mailbox == 0 {
        bad("pipeline.mailbox", "expected a capacity of at least 1".into());
    }
    if p.max_in_flight == 0 {
        bad("pipeline.max_in_flight", "expected at least 1 message in flight".into());
    }
    if c.limits.max_event_bytes == 0 {
        bad("limits.max_event_bytes", "expected at least 1 byte".into());
    }
    if c.sources.is_empty() {
        bad("sources", "expected at least one [[sources]] entry, e.g. kind = \"file\", path = \"events.jsonl\"".into());
    }
    for (i, source) in c.sources.iter().enumerate() {
        if let SourceConfig::Http { listen, .. } = source
            && !is_listen_address(listen)
        {
            bad(&format!("sources[{i}].listen"), format!("expected host:port like \"127.0.0.1:8088\", got {listen:?}"));
        }
    }
    for (i, ptr) in c.enricher.lookup().lookup.iter().enumerate() {
        if !ptr.starts_with('/') {
            bad(
                &format!("enricher.lookup[{i}]"),
                format!("expected a JSON pointer like \"/asset/database\", got {ptr:?}"),
            );
        }
    }
    let d = &c.decisor;
    for (i, path) in d.hash_ignore.iter().enumerate() {
        if path.is_empty() || path.split('.').any(str::is_empty) {
            bad(
                &format!("decisor.hash_ignore[{i}]"),
                format!("expected a dotted path like \"stats.row_count\", got {path:?}"),
            );
        }
    }
    if !(0.0..=1.0).contains(&d.max_drop_fraction) {
        bad("decisor.max_drop_fraction", format!("expected a fraction from 0.0 to 1.0, got {}", d.max_drop_fraction));
    }
    if let HistoryConfig::Scylla { nodes, keyspace } = &c.history {
        if nodes.is_empty() {
            bad("history.nodes", "the scylla history store needs nodes = [\"127.0.0.1:9042\"]".into());
        }
        if !crate::adapters::scylla_history::valid_keyspace(keyspace) {
            bad("history.keyspace", format!("expected a plain identifier (letters, digits, _), got {keyspace:?}"));
        }
    }
    let tables = [
        ("control.table", if let ControlConfig::Postgres(t) = &c.control { Some(&t.table) } else { None }),
        ("history.table", if let HistoryConfig::Postgres(t) = &c.history { Some(&t.table) } else { None }),
    ];
    for (key, table) in tables {
        if let Some(t) = table.filter(|t| !valid_table(t)) {
            bad(key, format!("expected a plain table name (letters, digits, _; at most 63), got {t:?}"));
        }
    }
    if c.retry.attempts == 0 {
        bad("retry.attempts", "expected at least 1 attempt".into());
    }
    if !c.admin.listen.is_empty() && !is_listen_address(&c.admin.listen) {
        bad(
            "admin.listen",
            format!(
                "expected host:port like \"127.0.0.1:9464\", or \"\" to turn the admin server off, got {:?}",
                c.admin.listen
            ),
        );
    }
    out
}

/// `host:port` with a port number, the host a name, an IPv4 address or an IPv6 one in
/// brackets: what a bind could resolve, checked without resolving it (`check-config` must not
/// need DNS, and whether the port is free is only known when the service starts).
fn is_listen_address(listen: &str) -> bool {
    listen.rsplit_once(':').is_some_and(|(host, port)| {
        let host_ok = match host.strip_prefix('[') {
            Some(v6) => v6.strip_suffix(']').is_some_and(|v6| !v6.is_empty()),
            None => !host.is_empty() && !host.contains([':', ']']),
        };
        host_ok && port.parse::<u16>().is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::is_listen_address;

    #[test]
    fn a_listen_address_is_a_host_and_a_port() {
        for good in ["127.0.0.1:9464", "0.0.0.0:0", "localhost:8088", "[::1]:9464", "catalog.internal:80"] {
            assert!(is_listen_address(good), "{good}");
        }
        for bad in ["", "notanaddr", "127.0.0.1", ":9464", "127.0.0.1:", "127.0.0.1:99999", "::1:9464", "[]:80", "h:p"]
        {
            assert!(!is_listen_address(bad), "{bad}");
        }
    }
}
