//! `assetflow redrive`: dead letters go through the pipeline again with `attempts` one higher,
//! are parked past `redrive.max_attempts`, and are never replayed twice by redrive itself.

mod common;

use common::{Outputs, assetflow, bin, prepare, scenarios};

fn basics() -> tempfile::TempDir {
    let scenario = scenarios().into_iter().find(|p| p.ends_with("basics")).expect("basics scenario");
    let dir = prepare(&scenario);
    assert!(assetflow(dir.path(), &["run"]).status.success());
    dir
}

fn redrive(dir: &std::path::Path, env: &[(&str, &str)], extra: &[&str]) -> String {
    let mut cmd = bin();
    cmd.arg("redrive").args(extra).current_dir(dir).env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

#[test]
fn a_guarded_completion_redriven_with_the_guard_lifted_drops() {
    let dir = basics();
    let before = Outputs::read(dir.path());
    assert_eq!(before.drops.len(), 2);
    // The operator checked the half-way crawl and accepts its drops.
    let report = redrive(dir.path(), &[("ASSETFLOW__DECISOR__MAX_DROP_FRACTION", "1.0")], &[]);
    assert!(report.contains("2 replayed"), "{report}");
    let after = Outputs::read(dir.path());
    let mut new_drops: Vec<&str> = after.drops[2..].iter().map(|d| d["asset_key"].as_str().unwrap()).collect();
    new_drops.sort();
    assert_eq!(new_drops, vec!["pg/hr/public/staff", "pg/sales/public/customers"]);
    assert!(after.drops[2..].iter().all(|d| d["event_id"] == "b20"));
    // The bad line failed again, one attempt later.
    let last = after.dead_letters.last().unwrap();
    assert_eq!(last["error"]["kind"], "invalid_json");
    assert_eq!(last["attempts"], 2);
    assert_eq!(after.dead_letters.len(), 3);
}

#[test]
fn past_max_attempts_a_dead_letter_is_parked_and_kept() {
    let dir = basics();
    let env = [("ASSETFLOW__REDRIVE__MAX_ATTEMPTS", "2")];
    // attempts 1 -> replayed (fails as attempts 2); the guard fails again as attempts 2 too.
    let r1 = redrive(dir.path(), &env, &[]);
    assert!(r1.contains("2 replayed, 0 parked"), "{r1}");
    // Only the two new dead letters are read: both at attempts 2, both parked.
    let r2 = redrive(dir.path(), &env, &[]);
    assert!(r2.contains("0 replayed, 2 parked"), "{r2}");
    let r3 = redrive(dir.path(), &env, &[]);
    assert!(r3.contains("0 replayed, 0 parked"), "{r3}");
    let out = Outputs::read(dir.path());
    assert_eq!(out.dead_letters.len(), 4, "parked dead letters stay in the store");
}

#[test]
fn max_limits_how_many_are_replayed() {
    let dir = basics();
    let r = redrive(dir.path(), &[], &["--max", "1"]);
    assert!(r.contains("1 replayed"), "{r}");
    let r = redrive(dir.path(), &[], &["--max", "5"]);
    // The one left from the first batch, and the one the first redrive wrote.
    assert!(r.contains("2 replayed"), "{r}");
}
