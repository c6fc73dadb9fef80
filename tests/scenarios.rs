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
