//! Golden plans: the CLI's text and JSON plan for each fleet in `fleets/`, against an empty
//! simulated cloud and after out-of-band changes, compared with `plans/`. Run with
//! `FLEET_BLESS=1` to rewrite them after an intended change, and review the diff.

use crate::support::{repo, Env};

/// Out-of-band changes per fleet, as `fleet sim …` arguments.
fn drift(fleet: &str) -> Vec<Vec<&'static str>> {
    match fleet {
        "distribution" => vec![
            vec!["stop", "runners-manager-distribution-com-blue-1"],
            vec![
                "set",
                "runners-manager-distribution-dev-blue-1",
                "label.color",
                "green",
            ],
        ],
        "ci-shared-runners" => vec![
            vec![
                "set",
                "private-runners-manager-1",
                "machine_type",
                "n1-standard-8",
            ],
            vec!["delete", "prometheus-01-us-east1-d"],
        ],
        "arm-builders" => vec![
            vec!["stop", "arm-builder-2"],
            vec!["delete", "arm-builder-4"],
        ],
        other => panic!("no drift scenario for {other}"),
    }
}

fn check(path: &str, actual: &str, failures: &mut Vec<String>) {
    let file = repo().join(path);
    if std::env::var_os("FLEET_BLESS").is_some() {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, actual).unwrap();
        return;
    }
    match std::fs::read_to_string(&file) {
        Ok(expected) if expected == actual => {}
        Ok(expected) => {
            let first = expected
                .lines()
                .zip(actual.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(expected.lines().count().min(actual.lines().count()));
            failures.push(format!(
                "{path} differs from the CLI's output at line {}:\n  golden: {:?}\n  actual: {:?}",
                first + 1,
                expected.lines().nth(first).unwrap_or("<end>"),
                actual.lines().nth(first).unwrap_or("<end>")
            ));
        }
        Err(_) => failures.push(format!(
            "{path} is missing; run with FLEET_BLESS=1 to write it"
        )),
    }
}

#[test]
fn golden_plans_match_the_cli() {
    let mut failures = Vec::new();
    for fleet in ["distribution", "ci-shared-runners", "arm-builders"] {
        let env = Env::new();
        let file = format!("fleets/{fleet}.yaml");
        for (scenario, prepare) in [("empty", false), ("drift", true)] {
            if prepare {
                env.converge(&file);
                for args in drift(fleet) {
                    let mut full = vec!["sim"];
                    full.extend(args);
                    env.fleet(&full).ok();
                }
            }
            let text = env.fleet(&["plan", &file]).ok().stdout;
            check(
                &format!("plans/{fleet}/{scenario}.txt"),
                &text,
                &mut failures,
            );
            let json = env.fleet(&["plan", &file, "--format", "json"]).ok().stdout;
            check(
                &format!("plans/{fleet}/{scenario}.json"),
                &json,
                &mut failures,
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_same_inputs_give_the_same_plan_bytes() {
    let one = Env::new();
    let two = Env::new();
    for env in [&one, &two] {
        env.converge("fleets/arm-builders.yaml");
        env.fleet(&["sim", "stop", "arm-builder-1"]).ok();
    }
    let a = one
        .fleet(&["plan", "fleets/arm-builders.yaml", "--format", "json"])
        .ok()
        .stdout;
    let b = two
        .fleet(&["plan", "fleets/arm-builders.yaml", "--format", "json"])
        .ok()
        .stdout;
    assert_eq!(a, b);
}
