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
    assert_eq!(plan["format_version"], "1.2");
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

fn stat(stats: &serde_json::Map<String, serde_json::Value>, operation: &str) -> u64 {
    stats
        .get(operation)
        .and_then(|count| count.as_u64())
        .unwrap_or(0)
}

#[test]
fn a_5000_instance_plan_under_30_percent_faults_retries_each_faulted_page_once() {
    let env = Env::new();
    let big = std::fs::read_to_string(env.path().join("fleets/arm-builders.yaml"))
        .unwrap()
        .replace("size: 4", "size: 5000");
    let file = env.write("big.yaml", &big);
    env.converge(&file);
    let before = env.sim_stats();
    let run = env.fleet_with(
        &["plan", &file, "--detailed-exitcode"],
        &[("FLEET_SIM_FAULT_RATE", "0.3"), ("FLEET_SIM_SEED", "3")],
    );
    run.unchanged();
    let after = env.sim_stats();
    let delta = |operation: &str| stat(&after, operation) - stat(&before, operation);
    // 5,000 instances are 5 pages of 1,000 and one page of launch templates: each page is
    // asked for once, and once more for each fault on it; nothing else is listed again.
    let instance_faults = delta("fault:ec2:DescribeInstances");
    let template_faults = delta("fault:ec2:DescribeLaunchTemplates");
    assert!(
        instance_faults + template_faults > 0,
        "the seed gave no fault: {after:?}"
    );
    assert_eq!(delta("ec2:DescribeInstances"), 5 + instance_faults);
    assert_eq!(delta("ec2:DescribeLaunchTemplates"), 1 + template_faults);
}

#[test]
fn a_list_that_lags_behind_its_writes_makes_no_duplicate_and_the_apply_verifies() {
    let prompt = Env::new();
    prompt.converge("fleets/arm-builders.yaml");
    let prompt_lists = stat(&prompt.sim_stats(), "ec2:DescribeInstances");
    let env = Env::new().with_env("FLEET_SIM_LIST_LAG", "3");
    env.converge("fleets/arm-builders.yaml");
    let stats = env.sim_stats();
    // The verification does not see the new builders for three list calls: it lists again,
    // three more times than against a prompt cloud, and then verifies.
    assert_eq!(
        stat(&stats, "ec2:DescribeInstances"),
        prompt_lists + 3,
        "{stats:?}"
    );
    assert_eq!(stat(&stats, "ec2:RunInstances"), 1, "{stats:?}");
    let listed = env.sim_list();
    assert_eq!(listed.len(), 4, "{listed:?}");
    env.fleet(&["plan", "fleets/arm-builders.yaml", "--detailed-exitcode"])
        .unchanged();
    // A second apply right away has nothing to do and makes nothing.
    let again = env
        .fleet(&["apply", "fleets/arm-builders.yaml", "--auto-approve"])
        .ok();
    assert!(again.stdout.contains("No changes"), "{}", again.stdout);
    assert_eq!(stat(&env.sim_stats(), "ec2:RunInstances"), 1);
    assert_eq!(env.sim_list().len(), 4);
}

#[test]
fn autoscaled_machines_appearing_after_the_plan_leave_the_saved_plan_valid() {
    use fleet_engine::provider::{labels, Cloud, CreateRequest, MachineSpec, ObjectKind};
    use fleet_providers::sim::{SimCloud, SimConfig};

    let env = Env::new();
    env.converge("fleets/arm-builders.yaml");
    env.fleet(&["sim", "stop", "arm-builder-2"]).ok();
    env.fleet(&["plan", "fleets/arm-builders.yaml", "-o", "plan.json"])
        .ok();
    // The runners' autoscaler starts 1,001 build machines: they carry `fleet=` (Prometheus
    // finds them by it) but no `fleet-kind`.
    let sim = SimCloud::open(&env.path().join("sim-state"), SimConfig::default()).unwrap();
    let requests: Vec<CreateRequest> = (0..1001)
        .map(|n| CreateRequest {
            kind: ObjectKind::Instance,
            name: format!("runner-autoscaled-{n:04}"),
            spec: MachineSpec {
                machine_type: "m6g.2xlarge".into(),
                zone: "us-east-1a".into(),
                image: "ami-0c9f35b1b63e7d2a4".into(),
                disk_type: "gp3".into(),
                disk_size_gb: 100,
                labels: [(labels::FLEET.to_string(), "arm-builders".to_string())].into(),
                metadata: Default::default(),
                networking: Default::default(),
                identity: Default::default(),
            },
            idempotency_token: format!("autoscaler-{n}"),
        })
        .collect();
    let made = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(sim.provider(Cloud::Aws).create_batch(&requests));
    assert!(made.iter().all(Result::is_ok));
    drop(sim);
    let before = env.sim_stats();
    let run = env
        .fleet(&["apply", "plan.json", "--auto-approve"])
        .verified();
    assert!(run.stdout.contains("1 created"), "{}", run.stdout);
    // Not one page of them: the list filter leaves them out. The apply lists twice (before
    // and to verify), one page each.
    let after = env.sim_stats();
    assert_eq!(
        stat(&after, "ec2:DescribeInstances") - stat(&before, "ec2:DescribeInstances"),
        2,
        "{after:?}"
    );
    assert_eq!(
        env.sim_list().len(),
        1001 + 4 + 1,
        "the stopped one is going"
    );
}
