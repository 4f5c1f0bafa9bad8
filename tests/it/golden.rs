//! Golden plans: the CLI's text, JSON and markdown plan and GitLab report for each fleet in
//! `fleets/`, against an empty simulated cloud and after out-of-band changes, compared with
//! `plans/`. Run with
//! `FLEET_BLESS=1` to rewrite them after an intended change, and review the diff.

use crate::support::{golden, Env};

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
        // Static hosts only: no cloud holds anything of this fleet, so nothing can drift (it
        // is rendered, never applied): its one golden is against the empty cloud.
        "mdis-wb31" => Vec::new(),
        other => panic!("no drift scenario for {other}"),
    }
}

#[test]
fn golden_plans_match_the_cli() {
    let mut failures = Vec::new();
    for fleet in [
        "distribution",
        "ci-shared-runners",
        "arm-builders",
        "mdis-wb31",
    ] {
        let env = Env::new();
        let file = format!("fleets/{fleet}.yaml");
        for (scenario, prepare) in [("empty", false), ("drift", true)] {
            if prepare && drift(fleet).is_empty() {
                continue;
            }
            if prepare {
                env.converge(&file);
                for args in drift(fleet) {
                    let mut full = vec!["sim"];
                    full.extend(args);
                    env.fleet(&full).ok();
                }
            }
            let text = env.fleet(&["plan", &file]).ok().stdout;
            golden(
                &format!("plans/{fleet}/{scenario}.txt"),
                &text,
                &mut failures,
            );
            let json = env.fleet(&["plan", &file, "--format", "json"]).ok().stdout;
            golden(
                &format!("plans/{fleet}/{scenario}.json"),
                &json,
                &mut failures,
            );
            let report = format!("{scenario}.gitlab.json");
            let markdown = env
                .fleet(&[
                    "plan",
                    &file,
                    "--format",
                    "markdown",
                    "--gitlab-report",
                    &report,
                ])
                .ok()
                .stdout;
            golden(
                &format!("plans/{fleet}/{scenario}.md"),
                &markdown,
                &mut failures,
            );
            golden(
                &format!("plans/{fleet}/{scenario}.gitlab.json"),
                &std::fs::read_to_string(env.path().join(&report)).unwrap(),
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
