//! Every folder of `../shared/scenarios`, run through the binary exactly as its README says.

mod common;

use common::{Outputs, assetflow, compare, prepare, scenarios};

#[test]
fn every_shared_scenario_passes() {
    let mut failures = Vec::new();
    for scenario in scenarios() {
        let name = scenario.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let dir = prepare(&scenario);
        let out = assetflow(dir.path(), &["run", "--config", "config.toml"]);
        if !out.status.success() {
            failures.push(format!("{name}: exit {:?}\n{}", out.status.code(), String::from_utf8_lossy(&out.stderr)));
            continue;
        }
        let got = Outputs::read(dir.path());
        let dups = got.duplicate_ids();
        if !dups.is_empty() {
            failures.push(format!("{name}: decision ids appear twice in a clean run: {dups:?}"));
        }
        if let Err(e) = compare(&scenario.join("expected.json"), &got) {
            failures.push(format!("{name}:\n{e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_second_run_over_the_same_folder_adds_nothing() {
    // The checkpoint says the file is done: restarting must not decide anything again.
    let scenario = scenarios().into_iter().next().expect("a scenario");
    let dir = prepare(&scenario);
    assert!(assetflow(dir.path(), &["run"]).status.success());
    let first = Outputs::read(dir.path());
    assert!(!first.upserts.is_empty());
    assert!(assetflow(dir.path(), &["run"]).status.success());
    let second = Outputs::read(dir.path());
    assert_eq!(first.upserts.len(), second.upserts.len());
    assert_eq!(first.drops.len(), second.drops.len());
    assert_eq!(first.dead_letters.len(), second.dead_letters.len());
}

#[test]
fn every_upsert_content_ref_reads_back_its_asset_in_both_layouts() {
    let scenario = scenarios().into_iter().next().expect("a scenario");
    for layout in ["packs", "files"] {
        let dir = prepare(&scenario);
        let config = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
        let config = config.replace("[content]\n", &format!("[content]\nlayout = \"{layout}\"\n"));
        assert!(config.contains(&format!("layout = \"{layout}\"")), "the scenario config has a [content] section");
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        assert!(assetflow(dir.path(), &["run"]).status.success());
        let got = Outputs::read(dir.path());
        assert!(!got.upserts.is_empty());
        for upsert in &got.upserts {
            let cref = upsert["content_ref"].as_str().expect("an upsert has a content_ref");
            assert_eq!(cref.contains("/packs/"), layout == "packs", "{cref}");
            let out = assetflow(dir.path(), &["content", cref]);
            assert!(out.status.success(), "{layout}: {cref}: {}", String::from_utf8_lossy(&out.stderr));
            let mut content: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the content is JSON");
            // Content is stored once per key and hash, and the hash leaves out the scenario's
            // `hash_ignore` (stats.row_count): a later upsert at the same hash may differ there.
            let mut asset = upsert["asset"].clone();
            for v in [&mut content, &mut asset] {
                v["stats"].as_object_mut().map(|s| s.remove("row_count"));
            }
            assert_eq!(content, asset, "{layout}: {cref}");
        }
    }
}

/// With `enricher.kind = "none"` the ingests route their events to the Router themselves (no
/// Enricher runs): every scenario decides exactly as with its business file, less the business.
#[test]
fn with_no_enricher_every_scenario_decides_as_with_one() {
    // What does not depend on enrichment: no business, no timestamps, no content location.
    fn decisions(out: &Outputs) -> Vec<String> {
        let mut all: Vec<String> = out
            .upserts
            .iter()
            .chain(&out.drops)
            .chain(&out.dead_letters)
            .map(|r| {
                let mut r = r.clone();
                for key in ["business", "decided_at", "failed_at", "content_ref"] {
                    r.as_object_mut().map(|o| o.remove(key));
                }
                r.to_string()
            })
            .collect();
        all.sort();
        all
    }
    for scenario in scenarios() {
        let name = scenario.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let with = prepare(&scenario);
        assert!(assetflow(with.path(), &["run"]).status.success(), "{name}");
        let with = Outputs::read(with.path());
        assert!(with.upserts.iter().any(|u| !u["business"].is_null()), "{name}: the scenario enriches");

        let without = prepare(&scenario);
        let config = std::fs::read_to_string(without.path().join("config.toml")).unwrap();
        let config =
            config.replace("[enricher]\nkind = \"file\"\npath = \"business.json\"\n", "[enricher]\nkind = \"none\"\n");
        assert!(config.contains("kind = \"none\""), "the scenario config names its enricher as expected");
        std::fs::write(without.path().join("config.toml"), config).unwrap();
        let out = assetflow(without.path(), &["topology"]);
        let drawn = String::from_utf8_lossy(&out.stdout);
        assert!(!drawn.contains("Enricher"), "{name}: no Enricher is drawn, as none runs: {drawn}");
        let out = assetflow(without.path(), &["run"]);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let without = Outputs::read(without.path());
        assert!(without.upserts.iter().chain(&without.drops).all(|r| r["business"].is_null()), "{name}");

        assert_eq!(decisions(&without), decisions(&with), "{name}");
    }
}
