//! The `file` enricher: business rows from a JSON array, matched on their key fields; and the
//! `none` enricher, which finds nothing.

use std::collections::HashMap;
use std::path::Path;

use assetflow_actors::ports::{BackendResult, Lookup};
use async_trait::async_trait;
use serde_json::{Map, Value};

pub struct FileLookup {
    rows: HashMap<Vec<String>, Map<String, Value>>,
}

impl FileLookup {
    /// Loads `path`; each row's `key_fields` (in `lookup` order) are its key, the rest its business.
    pub fn load(path: &Path, key_fields: &[String]) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let rows: Vec<Map<String, Value>> = serde_json::from_str(&text)
            .map_err(|e| format!("{}: expected a JSON array of objects: {e}", path.display()))?;
        let mut index = HashMap::with_capacity(rows.len());
        for (i, mut row) in rows.into_iter().enumerate() {
            let mut key = Vec::with_capacity(key_fields.len());
            for field in key_fields {
                match row.remove(field) {
                    Some(Value::String(s)) => key.push(s),
                    Some(Value::Number(n)) => key.push(n.to_string()),
                    _ => {
                        return Err(format!("{}: row {i} has no string field `{field}` to match on", path.display()));
                    }
                }
            }
            index.insert(key, row);
        }
        Ok(FileLookup { rows: index })
    }
}

#[async_trait]
impl Lookup for FileLookup {
    async fn lookup(&self, params: &[String]) -> BackendResult<Option<Map<String, Value>>> {
        Ok(self.rows.get(params).cloned())
    }
}

pub struct NoLookup;

#[async_trait]
impl Lookup for NoLookup {
    async fn lookup(&self, _: &[String]) -> BackendResult<Option<Map<String, Value>>> {
        Ok(None)
    }
}
