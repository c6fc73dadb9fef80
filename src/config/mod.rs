//! `config.toml`: the topology as data (docs/CONFIG.md). Loading expands `${VAR}`, applies
//! `ASSETFLOW__SECTION__KEY` overrides, fills in each section's default `kind`, deserializes
//! into the typed sections, resolves relative paths against the file's folder, and validates
//! what serde cannot, reporting every problem of the file at once.
//!
//! - `sections`: the sections as types, one enum variant per `kind`, with their defaults.
//! - `validation`: the rules serde cannot express.

mod sections;
mod validation;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use sections::*;

/// One thing wrong with a config: the key and what would be right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

/// Why a config could not be used; every message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{file}: cannot read the config file: {reason}. Pass --config FILE, or run from a folder that has config.toml"
    )]
    Read { file: String, reason: std::io::Error },
    #[error("{file}: not valid TOML: {message}")]
    Syntax { file: String, message: String },
    /// One line per problem, each `file: key `k`: what is wrong`.
    #[error("{}", lines(file, problems))]
    Invalid { file: String, problems: Vec<Problem> },
}

fn lines(file: &str, problems: &[Problem]) -> String {
    let each: Vec<String> = problems.iter().map(|p| format!("{file}: key `{}`: {}", p.key, p.message)).collect();
    each.join("\n")
}

fn key_err(file: &Path, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        file: file.display().to_string(),
        problems: vec![Problem { key: key.into(), message: message.into() }],
    }
}

/// A whole `config.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub pipeline: PipelineConfig,
    pub limits: LimitsConfig,
    pub sources: Vec<SourceConfig>,
    pub enricher: EnricherConfig,
    pub decisor: DecisorConfig,
    pub control: ControlConfig,
    pub content: ContentConfig,
    pub history: HistoryConfig,
    pub sinks: SinksConfig,
    pub redrive: RedriveConfig,
    pub retry: RetryConfig,
    pub supervision: SupervisionConfig,
    pub admin: AdminConfig,
    pub aws: AwsConfig,
    pub shutdown: ShutdownConfig,
    /// The folder relative paths resolve against (the config file's).
    #[serde(skip)]
    pub base_dir: PathBuf,
    #[serde(skip)]
    pub file: PathBuf,
}

impl Config {
    /// Loads `path` with the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (text, env) = read(path)?;
        Self::parse(&text, path, &env)
    }

    /// Only the `[aws]` section of a config file (with its `${VAR}`s and overrides applied): what
    /// `assetflow gen --kinesis-stream` needs, from a file that may hold nothing else.
    pub fn load_aws(path: &Path) -> Result<AwsConfig, ConfigError> {
        let (text, env) = read(path)?;
        let doc = prepared(&text, path, &env)?;
        let Some(aws) = doc.get("aws").cloned() else { return Ok(AwsConfig::default()) };
        serde_path_to_error::deserialize(aws).map_err(|e| {
            let p = field_problem(e, "aws.");
            key_err(path, p.key, p.message)
        })
    }

    /// Parses config text as if read from `path`, with `env` as the environment.
    pub fn parse(text: &str, path: &Path, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let doc = prepared(text, path, env)?;
        let (mut config, failed) = deserialize_each(doc.clone());
        if failed.is_empty() {
            for key in unknown_keys(&doc, &config) {
                let from = set_by(&key, env).map(|how| format!(" ({how})")).unwrap_or_default();
                tracing::warn!(
                    "{file}: unknown key `{key}`{from} is ignored (check its spelling against docs/CONFIG.md)"
                );
            }
        }
        config.file = path.to_path_buf();
        config.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        // A section that could not be read stands at its default here: rules about it, or
        // about what holds it, would only repeat that problem in other words.
        let mut problems = failed.clone();
        problems.extend(validation::problems(&config).into_iter().filter(|p| {
            !failed.iter().any(|f| p.key.starts_with(f.key.as_str()) || f.key.starts_with(p.key.as_str()))
        }));
        // The file may say something else: a value from the environment is named as such.
        for p in &mut problems {
            if let Some(how) = set_by(&p.key, env) {
                p.message.push_str(&format!(" ({how})"));
            }
        }
        if problems.is_empty() { Ok(config) } else { Err(ConfigError::Invalid { file, problems }) }
    }

    /// A path from the config, resolved against the config file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() { p.to_path_buf() } else { self.base_dir.join(p) }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.resolve(&self.pipeline.state_dir)
    }

    pub fn decides(&self) -> bool {
        self.pipeline.stages.contains(&StageName::Decide)
    }

    /// Whether the topology has an Enricher: it has one unless it decides with nothing to look
    /// up (`enricher.kind = "none"`), where each Ingest routes its events itself.
    pub fn enriches(&self) -> bool {
        !(self.decides() && matches!(self.enricher, EnricherConfig::None))
    }
}

/// Reads the document one part at a time (each top-level section, each `[[sources]]` entry,
/// each sink), so that one unreadable part does not hide the problems of the others. The parts
/// that fail are left at their defaults in the returned config and reported as problems.
fn deserialize_each(mut doc: toml::Value) -> (Config, Vec<Problem>) {
    let mut failed = Vec::new();
    let Some(table) = doc.as_table_mut() else {
        return (Config::default(), vec![Problem { key: "(top level)".into(), message: "expected a table".into() }]);
    };
    let keys: Vec<String> = table.keys().cloned().collect();
    for key in keys {
        let Some(value) = table.get_mut(&key) else { continue };
        match (key.as_str(), value) {
            ("sources", toml::Value::Array(entries)) => {
                for (i, entry) in entries.iter_mut().enumerate() {
                    if let Err(e) = serde_path_to_error::deserialize::<_, SourceConfig>(entry.clone()) {
                        failed.push(field_problem(e, &format!("sources[{i}].")));
                        // A stand-in keeps the entries after it at their places, so that the
                        // rules about them name the index the file gives them.
                        *entry = toml::Value::Table([("kind".to_owned(), "stdin".into())].into_iter().collect());
                    }
                }
            }
            ("sinks", toml::Value::Table(sinks)) => {
                let names: Vec<String> = sinks.keys().cloned().collect();
                for name in names {
                    let one = toml::Value::Table(
                        sinks.iter().filter(|(k, _)| **k == name).map(|(k, v)| (k.clone(), v.clone())).collect(),
                    );
                    if let Err(e) = serde_path_to_error::deserialize::<_, SinksConfig>(one) {
                        failed.push(field_problem(e, "sinks."));
                        sinks.remove(&name);
                    }
                }
            }
            (_, value) => {
                let one = toml::Value::Table([(key.clone(), value.clone())].into_iter().collect());
                if let Err(e) = serde_path_to_error::deserialize::<_, Config>(one) {
                    failed.push(field_problem(e, ""));
                    table.remove(&key);
                }
            }
        }
    }
    match serde_path_to_error::deserialize::<_, Config>(doc) {
        Ok(config) => (config, failed),
        Err(e) => {
            failed.push(field_problem(e, ""));
            (Config::default(), failed)
        }
    }
}

/// Keys of the document that no field of the config took: each section is written back out
/// and the two key sets compared, which sees through `kind`-tagged sections too.
fn unknown_keys(doc: &toml::Value, config: &Config) -> Vec<String> {
    let Ok(known) = toml::Value::try_from(config) else { return Vec::new() };
    let (mut given, mut taken) = (BTreeSet::new(), BTreeSet::new());
    key_paths(doc, "", &mut given);
    key_paths(&known, "", &mut taken);
    let unknown: Vec<&String> = given.difference(&taken).collect();
    // A misspelt section is one mistake, not one per key under it.
    unknown
        .iter()
        .filter(|k| !unknown.iter().any(|u| k.starts_with(&format!("{u}.")) || k.starts_with(&format!("{u}["))))
        .map(|k| (*k).clone())
        .collect()
}

/// Every table key under `v`, as dotted paths (array entries as `[i]`). A key whose value is a
/// map of the user's own (librdkafka `options`) ends the walk.
fn key_paths(v: &toml::Value, at: &str, out: &mut BTreeSet<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, item) in t {
                let path = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                out.insert(path.clone());
                if k != "options" {
                    key_paths(item, &path, out);
                }
            }
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                key_paths(item, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn one_line(e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => format!("{msg} (at byte {})", span.start),
        None => msg,
    }
}

/// A config file's text, and the environment its `${VAR}`s and overrides come from.
fn read(path: &Path) -> Result<(String, BTreeMap<String, String>), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|reason| ConfigError::Read { file: path.display().to_string(), reason })?;
    Ok((text, std::env::vars().collect()))
}

/// The TOML document of a config file, `${VAR}`s expanded and `ASSETFLOW_…` overrides applied.
fn prepared(text: &str, path: &Path, env: &BTreeMap<String, String>) -> Result<toml::Value, ConfigError> {
    let mut doc: toml::Value = toml::from_str(text)
        .map_err(|e| ConfigError::Syntax { file: path.display().to_string(), message: one_line(&e) })?;
    expand_env(&mut doc, "", path, env)?;
    apply_overrides(&mut doc, path, env)?;
    default_kinds(&mut doc);
    Ok(doc)
}

/// A value that does not fit its key, as one problem naming the key. A missing field is named
/// in the key itself (`sinks.upsert.queue_url`), and so is the `kind` a variant was chosen by.
fn field_problem<E: std::fmt::Display>(e: serde_path_to_error::Error<E>, under: &str) -> Problem {
    let at = e.path().to_string();
    let mut key = format!("{under}{}", if at == "." { "" } else { at.as_str() });
    if key.ends_with('.') {
        key.pop();
    }
    // toml appends "in `key`" on a second line; the key is already named.
    let message = e.inner().to_string().lines().next().unwrap_or_default().to_owned();
    if let Some(field) = message.strip_prefix("missing field `").and_then(|m| m.strip_suffix('`')) {
        return Problem { key: format!("{key}.{field}"), message: format!("missing; this `kind` needs `{field}`") };
    }
    if message.starts_with("unknown variant") && !key.ends_with("kind") {
        key.push_str(".kind");
    }
    let key = if key.is_empty() || key == "." { "(top level)".to_string() } else { key };
    Problem { key, message }
}

/// Gives every kind-tagged section that leaves `kind` out its default kind.
fn default_kinds(doc: &mut toml::Value) {
    for (path, kind) in DEFAULT_KINDS {
        let mut at = Some(&mut *doc);
        for part in path.split('.') {
            at = at.and_then(|v| v.get_mut(part));
        }
        if let Some(toml::Value::Table(t)) = at {
            t.entry("kind").or_insert_with(|| toml::Value::String(kind.to_owned()));
        }
    }
}

/// Replaces every `${VAR}` (or `${VAR:-default}`) in string values; an unset variable without
/// a default is an error naming the key.
fn expand_env(v: &mut toml::Value, key: &str, file: &Path, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    match v {
        toml::Value::String(s) if s.contains("${") => {
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let after = &rest[start + 2..];
                let Some(end) = after.find('}') else {
                    return Err(key_err(file, key, "unclosed `${` in the value"));
                };
                // `${VAR:-default}`: the default when VAR is unset or empty, as in the shell.
                let (name, default) = match after[..end].split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (&after[..end], None),
                };
                match (env.get(name).filter(|v| !(default.is_some() && v.is_empty())), default) {
                    (Some(val), _) => out.push_str(val),
                    (None, Some(default)) => out.push_str(default),
                    (None, None) => {
                        return Err(key_err(
                            file,
                            key,
                            format!("environment variable `{name}` is not set; set it or write the value in the file"),
                        ));
                    }
                }
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_env(item, &format!("{key}[{i}]"), file, env)?;
            }
        }
        toml::Value::Table(t) => {
            for (k, item) in t.iter_mut() {
                let sub = if key.is_empty() { k.clone() } else { format!("{key}.{k}") };
                expand_env(item, &sub, file, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `ASSETFLOW__SECTION__KEY=value` sets `section.key` (numbers index arrays: `SOURCES__0__PATH`).
/// How the environment had a hand in `key` (`sources[0].path`, as a problem names it): the
/// `ASSETFLOW__…` variable that set it or a table it is in, or one that set a key inside it (a
/// source entry's problem names only the entry).
fn set_by(key: &str, env: &BTreeMap<String, String>) -> Option<String> {
    let key = key.replace('[', ".").replace(']', "");
    let set = |name: &String| {
        let rest = name.strip_prefix("ASSETFLOW__")?;
        Some((name.clone(), rest.split("__").map(str::to_lowercase).collect::<Vec<_>>().join(".")))
    };
    let overrides: Vec<(String, String)> = env.keys().filter_map(set).collect();
    if let Some((name, _)) = overrides.iter().find(|(_, set)| key == *set || key.starts_with(&format!("{set}."))) {
        return Some(format!("set by {name}"));
    }
    let inside: Vec<&str> = overrides
        .iter()
        .filter(|(_, set)| set.starts_with(&format!("{key}.")))
        .map(|(name, _)| name.as_str())
        .collect();
    (!inside.is_empty()).then(|| format!("{} set a key inside it", inside.join(", ")))
}

fn apply_overrides(doc: &mut toml::Value, file: &Path, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("ASSETFLOW__") else {
            continue;
        };
        let segments: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
        if segments.iter().any(String::is_empty) {
            continue;
        }
        let key = segments.join(".");
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        let mut cur = &mut *doc;
        for (i, seg) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            cur = match cur {
                toml::Value::Table(t) => {
                    if last {
                        t.insert(seg.clone(), value.clone());
                        break;
                    }
                    t.entry(seg.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()))
                }
                toml::Value::Array(a) => {
                    let idx: usize = seg.parse().map_err(|_| {
                        key_err(file, &key, format!("override {name}: `{seg}` should be an array index"))
                    })?;
                    let Some(item) = a.get_mut(idx) else {
                        return Err(key_err(file, &key, format!("override {name}: there is no entry {idx}")));
                    };
                    if last {
                        *item = value.clone();
                        break;
                    }
                    item
                }
                _ => {
                    return Err(key_err(file, &key, format!("override {name}: `{seg}` is not inside a table")));
                }
            };
        }
    }
    Ok(())
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for anything printed.
pub fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let auth_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..auth_end].rfind('@') {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                return format!("{}{user}:***@{}", &url[..scheme_end + 3], &rest[at + 1..]);
            }
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::parse(text, Path::new("/cfg/config.toml"), &env)
    }

    const MIN: &str = "[[sources]]\nkind = \"file\"\npath = \"events.jsonl\"\n";

    #[test]
    fn defaults_and_relative_paths() {
        let c = parse(MIN, &[]).unwrap();
        assert_eq!(c.pipeline.shards, 4);
        assert_eq!(c.state_dir(), PathBuf::from("/cfg/data"));
        assert_eq!(c.decisor.completion_timeout, Duration::from_secs(300));
    }

    #[test]
    fn env_expansion_and_overrides() {
        let text = format!("{MIN}[pipeline]\nstate_dir = \"${{DIR}}/x\"\n");
        let c = parse(
            &text,
            &[("DIR", "/tmp"), ("ASSETFLOW__PIPELINE__SHARDS", "8"), ("ASSETFLOW__SOURCES__0__FOLLOW", "true")],
        )
        .unwrap();
        assert_eq!(c.pipeline.state_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.pipeline.shards, 8);
        assert!(matches!(c.sources[0], SourceConfig::File { follow: true, .. }));
        let err = parse(&text, &[]).unwrap_err().to_string();
        assert!(err.contains("pipeline.state_dir") && err.contains("DIR"), "{err}");
        // A default stands in for an unset or empty variable, as in the shell.
        let text = format!("{MIN}[pipeline]\nstate_dir = \"${{DIR:-/srv/af}}/x\"\n");
        assert_eq!(parse(&text, &[]).unwrap().pipeline.state_dir, PathBuf::from("/srv/af/x"));
        assert_eq!(parse(&text, &[("DIR", "")]).unwrap().pipeline.state_dir, PathBuf::from("/srv/af/x"));
        assert_eq!(parse(&text, &[("DIR", "/tmp")]).unwrap().pipeline.state_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn a_bad_value_from_the_environment_names_its_variable() {
        // The file sets neither key: a message naming only the key would send its reader to a
        // file that holds nothing wrong.
        let err = parse(MIN, &[("ASSETFLOW__PIPELINE__SHARDS", "four"), ("ASSETFLOW__SOURCES__0__FOLLOW", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`pipeline.shards`") && err.contains("(set by ASSETFLOW__PIPELINE__SHARDS)"), "{err}");
        assert!(
            err.contains("`sources[0]") && err.contains("(ASSETFLOW__SOURCES__0__FOLLOW set a key inside it)"),
            "{err}"
        );
        let err = parse(&format!("{MIN}[pipeline]\nshards = 0\n"), &[("ASSETFLOW__PIPELINE__MAILBOX", "0")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("(set by ASSETFLOW__PIPELINE__MAILBOX)"), "{err}");
        assert_eq!(err.matches("set by").count(), 1, "the file's own mistake is the file's: {err}");
    }

    #[test]
    fn errors_name_the_key() {
        let err = parse(&format!("{MIN}[pipeline]\nshards = \"four\"\n"), &[]).unwrap_err().to_string();
        assert!(err.contains("pipeline.shards"), "{err}");
        let err = parse("[[sources]]\nkind = \"carrier-pigeon\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("sources[0]") && err.contains("carrier-pigeon"), "{err}");
        let err = parse(&format!("{MIN}[decisor]\nmax_drop_fraction = 2.0\n"), &[]).unwrap_err().to_string();
        assert!(err.contains("decisor.max_drop_fraction"), "{err}");
        let err = parse(&format!("{MIN}[decisor]\ncompletion_timeout = \"soon\"\n"), &[]).unwrap_err().to_string();
        assert!(err.contains("decisor.completion_timeout"), "{err}");
    }

    fn problems(text: &str) -> Vec<Problem> {
        match parse(text, &[]) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn every_mistake_of_a_file_is_reported_at_once() {
        // A range, a type and a missing field, in three sections: serde alone stops at one.
        let text = format!(
            "{MIN}[pipeline]\nshards = 0\n[decisor]\ncompletion_timeout = \"soon\"\n[sinks.upsert]\nkind = \"sqs\"\n"
        );
        let mut keys: Vec<String> = problems(&text).into_iter().map(|p| p.key).collect();
        keys.sort();
        assert_eq!(keys, ["decisor.completion_timeout", "pipeline.shards", "sinks.upsert.queue_url"]);
        let err = parse(&text, &[]).unwrap_err().to_string();
        assert_eq!(err.lines().count(), 3, "{err}");
        assert!(err.lines().all(|l| l.starts_with("/cfg/config.toml: key `")), "one line each, naming the file: {err}");

        // Three broken entries of one list, and rules about other sections.
        let text = "[[sources]]\nkind = \"file\"\n[[sources]]\nkind = \"kafka\"\nbrokers = \"b\"\n\
                    [[sources]]\nkind = \"http\"\nlisten = \"8088\"\n\
                    [decisor]\nmax_drop_fraction = 2.0\n[admin]\nlisten = \"localhost\"\n";
        let mut keys: Vec<String> = problems(text).into_iter().map(|p| p.key).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["admin.listen", "decisor.max_drop_fraction", "sources[0].path", "sources[1].topic", "sources[2].listen"]
        );
    }

    #[test]
    fn each_kind_reads_its_own_fields_and_a_left_out_kind_is_the_default() {
        let c = parse(&format!("{MIN}[content]\npath = \"blobs\"\n"), &[]).unwrap();
        assert!(
            matches!(&c.content, ContentConfig::Dir { path: Some(p), layout: ContentLayout::Packs } if p == Path::new("blobs"))
        );
        let c = parse(&format!("{MIN}[content]\nlayout = \"files\"\n"), &[]).unwrap();
        assert!(matches!(&c.content, ContentConfig::Dir { path: None, layout: ContentLayout::Files }));
        let err = parse(&format!("{MIN}[content]\nlayout = \"pack\"\n"), &[]).unwrap_err().to_string();
        assert!(
            err.contains("`layout` must be \"packs\" or \"files\", got \"pack\"") && !err.contains("content.kind"),
            "{err}"
        );
        let c =
            parse(&format!("{MIN}[enricher]\nkind = \"file\"\npath = \"b.json\"\ncache_ttl = \"2s\"\n"), &[]).unwrap();
        let EnricherConfig::File(f) = &c.enricher else { panic!("{:?}", c.enricher) };
        assert_eq!((f.cache_ttl, f.lookup.len()), (Duration::from_secs(2), 3));
        assert!(matches!(c.control, ControlConfig::Embedded) && matches!(c.history, HistoryConfig::Embedded));
        // A key no kind reads is reported, through the kind-tagged sections too.
        let doc =
            prepared(&format!("{MIN}[content]\nkind = \"dir\"\npth = \"x\"\n"), Path::new("c.toml"), &BTreeMap::new())
                .unwrap();
        let (config, failed) = deserialize_each(doc.clone());
        assert!(failed.is_empty());
        assert_eq!(unknown_keys(&doc, &config), ["content.pth"]);
        let doc =
            prepared(&format!("{MIN}[pipelin]\nshards = 2\nmailbox = 9\n"), Path::new("c.toml"), &BTreeMap::new())
                .unwrap();
        let (config, _) = deserialize_each(doc.clone());
        assert_eq!(unknown_keys(&doc, &config), ["pipelin"], "a misspelt section is reported once");
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(redact_url("postgres://app:hunter2@db:5432/x"), "postgres://app:***@db:5432/x");
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
    }
}
