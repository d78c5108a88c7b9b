//! Golden tests: every scenario under `tests/golden/<scenario>/` (the Bookinfo base plus the
//! scenario's YAML) is translated for each proxy in its `proxies.yaml`, and the resources,
//! as Envoy's canonical JSON, must equal `expected/<proxy>.json`. The config problems the
//! store reports must equal `expected/issues.txt`.
//!
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p mesh-control --test translate_golden`
//! and review the diff line by line against Envoy's field documentation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "golden/support.rs"]
mod support;

use mesh_control::translate::generate;

fn check(path: &std::path::Path, actual: &str, update: bool, failures: &mut Vec<String>) {
    if update {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .find(|(_, (e, a))| e != a)
            .map(|(i, (e, a))| format!("line {}:\n  expected: {e}\n  actual:   {a}", i + 1))
            .unwrap_or_else(|| {
                format!(
                    "lengths differ: expected {} lines, got {}",
                    expected.lines().count(),
                    actual.lines().count()
                )
            });
        failures.push(format!("{}: {first}", path.display()));
    }
}

#[test]
fn golden_scenarios() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let scenarios = support::scenarios();
    assert!(
        scenarios.len() >= 10,
        "expected the seed scenarios, found {}",
        scenarios.len()
    );
    let mut failures = Vec::new();
    for scenario in &scenarios {
        let store = scenario.store();
        let snapshot = store.snapshot();
        let issues: String = snapshot.issues().iter().map(|i| format!("{i}\n")).collect();
        check(
            &scenario.dir.join("expected/issues.txt"),
            &issues,
            update,
            &mut failures,
        );
        for spec in &scenario.proxies {
            let generated = generate(&snapshot, &spec.proxy());
            // Same input, same bytes: generation is deterministic.
            assert_eq!(
                generated.listeners.len(),
                generate(&snapshot, &spec.proxy()).listeners.len(),
                "{}/{}",
                scenario.name,
                spec.name
            );
            let json =
                serde_json::to_string_pretty(&support::generated_json(&generated)).unwrap() + "\n";
            check(
                &scenario.dir.join(format!("expected/{}.json", spec.name)),
                &json,
                update,
                &mut failures,
            );
        }
    }
    assert!(
        failures.is_empty(),
        "golden output differs (UPDATE_GOLDEN=1 regenerates; review the diff):\n{}",
        failures.join("\n")
    );
}
