//! `fleet plan`, `fleet apply` and `fleet graph` on the simulator: formats, exit codes,
//! saved plans, targets.

use crate::support::{actions_of, Env};

const FLEETS: [&str; 3] = [
    "fleets/distribution.yaml",
    "fleets/ci-shared-runners.yaml",
    "fleets/arm-builders.yaml",
];

#[test]
fn plan_apply_plan_shows_no_changes_for_every_fleet() {
    let env = Env::new();
    for file in FLEETS {
        let first = env.fleet(&["plan", file, "--detailed-exitcode"]).code(2);
        assert!(first.stdout.contains("to create"), "{}", first.stdout);
        env.converge(file);
        let again = env.fleet(&["plan", file, "--detailed-exitcode"]).ok();
        assert!(again.stdout.contains("No changes."), "{}", again.stdout);
    }
    // Three fleets side by side in one cloud, each only sees its own machines.
    assert_eq!(env.sim_list().len(), 5 + 10 + 4);
}

#[test]
fn the_plan_names_machine_type_zone_disk_and_labels() {
    let env = Env::new();
    let run = env.fleet(&["plan", "fleets/distribution.yaml"]).ok();
    let out = &run.stdout;
    assert!(out.contains("simulated GCP (sim dir: sim-state)"), "{out}");
    assert!(out.contains("+ template.arm64-gcp"), "{out}");
    assert!(out.contains("t2a-standard-8"), "{out}");
    assert!(out.contains("us-central1-a"), "{out}");
    assert!(out.contains("pd-ssd, 100 GB"), "{out}");
    assert!(out.contains("fleet=distribution"), "{out}");
    assert!(
        out.contains("Plan: 5 to create, 0 to update, 0 to replace, 0 to delete."),
        "{out}"
    );
    assert!(!out.contains('\x1b'), "colour on a pipe");
}

#[test]
fn json_uses_terraform_action_words() {
    let env = Env::new();
    let plan = env
        .fleet(&["plan", "fleets/arm-builders.yaml", "--format", "json"])
        .ok()
        .json();
    assert_eq!(plan["format_version"], "1.1");
    assert_eq!(plan["summary"]["create"], 4);
    assert_eq!(actions_of(&plan, "pool.arm-builder-1"), ["create"]);
    env.converge("fleets/arm-builders.yaml");
    let plan = env
        .fleet(&["plan", "fleets/arm-builders.yaml", "--format", "json"])
        .ok()
        .json();
    assert_eq!(actions_of(&plan, "pool.arm-builder-1"), ["no-op"]);
}

#[test]
fn markdown_is_a_table_for_merge_requests() {
    let env = Env::new();
    let run = env
        .fleet(&["plan", "fleets/distribution.yaml", "--format", "markdown"])
        .ok();
    assert!(
        run.stdout
            .contains("| `+` | `template.amd64-gcp` | gcp | n1-highcpu-32 | us-east1-c |"),
        "{}",
        run.stdout
    );
}

#[test]
fn target_limits_the_plan_to_matches_and_their_dependencies() {
    let env = Env::new();
    let plan = env
        .fleet(&[
            "plan",
            "fleets/distribution.yaml",
            "--format",
            "json",
            "--target",
            "manager.*-com-*",
        ])
        .ok()
        .json();
    let addresses: Vec<&str> = plan["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["address"].as_str().unwrap())
        .collect();
    assert_eq!(
        addresses,
        [
            "manager.runners-manager-distribution-com-blue-1",
            "template.amd64-gcp",
            "template.arm64-aws",
            "template.arm64-gcp"
        ]
    );
    let run = env
        .fleet(&[
            "plan",
            "fleets/distribution.yaml",
            "--target",
            "manager.nothing-*",
        ])
        .code(1);
    assert!(
        run.stderr
            .contains("--target manager.nothing-* matches no resource"),
        "{}",
        run.stderr
    );
}

#[test]
fn graph_is_dot_with_dependencies() {
    let env = Env::new();
    let run = env.fleet(&["graph", "fleets/ci-shared-runners.yaml"]).ok();
    assert!(
        run.stdout.starts_with("digraph \"ci-shared-runners\" {"),
        "{}",
        run.stdout
    );
    assert!(run
        .stdout
        .contains("\"template.autoscaled-us-east1-c\" -> \"manager.shared-runners-manager-1\";"));
    assert!(run
        .stdout
        .contains("\"manager.private-runners-manager-2\" -> \"helper.prometheus-01-us-east1-d\";"));
    assert!(!run
        .stdout
        .contains("\"manager.private-runners-manager-2\" -> \"helper.prometheus-01-us-east1-c\";"));
}

#[test]
fn saved_plan_applies_exactly_and_a_stale_one_is_refused() {
    let env = Env::new();
    env.fleet(&["plan", "fleets/arm-builders.yaml", "-o", "plan.json"])
        .ok();
    let run = env.fleet(&["apply", "plan.json", "--auto-approve"]).ok();
    assert!(
        run.stdout.contains("Apply complete: 4 created"),
        "{}",
        run.stdout
    );

    env.fleet(&["sim", "stop", "arm-builder-2"]).ok();
    env.fleet(&["plan", "fleets/arm-builders.yaml", "-o", "stale.json"])
        .ok();
    env.fleet(&["sim", "delete", "arm-builder-3"]).ok();
    let before = env.sim_list();
    let run = env
        .fleet(&["apply", "stale.json", "--auto-approve"])
        .code(1);
    assert!(run.stderr.contains("the plan is stale"), "{}", run.stderr);
    assert_eq!(env.sim_list(), before, "a refused plan changed the cloud");
}

#[test]
fn a_saved_plan_edited_by_hand_is_refused() {
    let env = Env::new();
    env.fleet(&["plan", "fleets/arm-builders.yaml", "-o", "plan.json"])
        .ok();
    let path = env.path().join("plan.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("m6g.2xlarge", "m6g.4xlarge");
    std::fs::write(&path, text).unwrap();
    let run = env.fleet(&["apply", "plan.json", "--auto-approve"]).code(1);
    assert!(
        run.stderr.contains("was changed after it was made"),
        "{}",
        run.stderr
    );
    assert!(env.sim_list().is_empty());
}

#[test]
fn apply_without_approval_on_a_pipe_changes_nothing() {
    let env = Env::new();
    let run = env.fleet(&["apply", "fleets/arm-builders.yaml"]).code(1);
    assert!(run.stderr.contains("pass --auto-approve"), "{}", run.stderr);
    assert!(env.sim_list().is_empty());
}

#[test]
fn apply_journal_records_every_step() {
    let env = Env::new();
    env.converge("fleets/arm-builders.yaml");
    let journal = std::fs::read_to_string(
        env.path()
            .join("sim-state/state/journal/arm-builders.jsonl"),
    )
    .unwrap();
    let succeeded = journal
        .lines()
        .filter(|l| l.contains("\"event\":\"succeeded\""))
        .count();
    assert_eq!(succeeded, 4, "{journal}");
    assert!(journal.lines().all(|l| l.contains("\"plan_id\"")));
}

#[test]
fn discovery_is_one_list_call_per_page_not_one_per_machine() {
    let env = Env::new();
    env.converge("fleets/ci-shared-runners.yaml");
    let count = |stats: &serde_json::Map<String, serde_json::Value>, op: &str| {
        stats.get(op).and_then(|v| v.as_u64()).unwrap_or(0)
    };
    let before = env.sim_stats();
    env.fleet(&[
        "plan",
        "fleets/ci-shared-runners.yaml",
        "--detailed-exitcode",
    ])
    .ok();
    let after = env.sim_stats();
    // Ten machines and templates, all found by label: one instance page, one template page.
    assert_eq!(
        count(&after, "compute.instances.aggregatedList")
            - count(&before, "compute.instances.aggregatedList"),
        1
    );
    assert_eq!(
        count(&after, "compute.instanceTemplates.list")
            - count(&before, "compute.instanceTemplates.list"),
        1
    );
    let calls: u64 = after.values().filter_map(|v| v.as_u64()).sum::<u64>()
        - before.values().filter_map(|v| v.as_u64()).sum::<u64>();
    assert_eq!(calls, 2, "a no-change plan made other calls: {after:?}");
}
