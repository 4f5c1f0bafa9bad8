//! Day two: changes made outside fleet, machines fleet did not make, orphans, template
//! versions.

use crate::support::{actions_of, reasons_of, Env};

fn plan_json(env: &Env, file: &str) -> serde_json::Value {
    env.fleet(&["plan", file, "--format", "json"]).ok().json()
}

#[test]
fn a_stopped_builder_is_replaced_because_it_counts_against_the_cap() {
    let env = Env::new();
    env.converge("fleets/arm-builders.yaml");
    env.fleet(&["sim", "stop", "arm-builder-2"]).ok();
    let plan = plan_json(&env, "fleets/arm-builders.yaml");
    // EC2 names are not unique, so the new builder comes up before the stopped one goes.
    assert_eq!(
        actions_of(&plan, "pool.arm-builder-2"),
        ["create", "delete"]
    );
    assert_eq!(reasons_of(&plan, "pool.arm-builder-2"), ["not_working"]);
    let text = env.fleet(&["plan", "fleets/arm-builders.yaml"]).ok().stdout;
    assert!(
        text.contains("found stopped: it counts against the cap but does no work"),
        "{text}"
    );
    env.converge("fleets/arm-builders.yaml");
    let (going, builders): (Vec<_>, Vec<_>) = env
        .sim_list()
        .into_iter()
        .partition(|b| b["status"] == "deleting");
    assert_eq!(builders.len(), 4);
    assert!(
        builders.iter().all(|b| b["status"] == "running"),
        "{builders:?}"
    );
    // The stopped one was terminated and is still listed, shutting down, for a while.
    assert_eq!(going.len(), 1, "{going:?}");
    assert_eq!(going[0]["name"], "arm-builder-2");
}

fn sim_count(env: &Env, operation: &str) -> u64 {
    env.sim_stats()
        .get(operation)
        .and_then(|count| count.as_u64())
        .unwrap_or(0)
}

fn listed_names(env: &Env) -> Vec<String> {
    env.sim_list()
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn an_ec2_instance_shutting_down_is_not_counted_not_deleted_twice_and_then_gone() {
    let env = Env::new();
    env.converge("fleets/arm-builders.yaml");
    let smaller = std::fs::read_to_string(env.path().join("fleets/arm-builders.yaml"))
        .unwrap()
        .replace("size: 4", "size: 3");
    let file = env.write("smaller.yaml", &smaller);
    env.converge(&file);
    let terminations = sim_count(&env, "ec2:TerminateInstances");
    assert_eq!(terminations, 1);
    // Right after the apply, arm-builder-4 is shutting down, still listed by EC2.
    let going: Vec<String> = env
        .sim_list()
        .iter()
        .filter(|o| o["status"] == "deleting")
        .map(|o| o["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(going, ["arm-builder-4"]);
    // While it shuts down and then is terminated, it is neither an orphan to delete again
    // nor a member of the pool: the smaller fleet has nothing to do, the full one lacks it.
    for _ in 0..2 {
        env.fleet(&["plan", &file, "--detailed-exitcode"])
            .unchanged();
    }
    assert!(listed_names(&env).contains(&"arm-builder-4".to_string()));
    let plan = plan_json(&env, "fleets/arm-builders.yaml");
    assert_eq!(actions_of(&plan, "pool.arm-builder-4"), ["create"]);
    // That plan listed twice (its discovery, then the names it did not find): the fourth
    // list call since the termination found it gone.
    assert_eq!(
        listed_names(&env),
        ["arm-builder-1", "arm-builder-2", "arm-builder-3"]
    );
    env.fleet(&["plan", &file, "--detailed-exitcode"])
        .unchanged();
    assert_eq!(
        sim_count(&env, "ec2:TerminateInstances"),
        terminations,
        "never deleted twice"
    );
    // Made again, it is a new machine: the token that made the first has expired with it.
    env.converge("fleets/arm-builders.yaml");
    assert_eq!(listed_names(&env).len(), 4);
    env.fleet(&["plan", "fleets/arm-builders.yaml", "--detailed-exitcode"])
        .unchanged();
}

#[test]
fn a_stopped_gce_manager_is_replaced_delete_first() {
    let env = Env::new();
    env.converge("fleets/distribution.yaml");
    env.fleet(&["sim", "stop", "runners-manager-distribution-com-blue-1"])
        .ok();
    let plan = plan_json(&env, "fleets/distribution.yaml");
    let address = "manager.runners-manager-distribution-com-blue-1";
    assert_eq!(actions_of(&plan, address), ["delete", "create"]);
    assert_eq!(reasons_of(&plan, address), ["not_working", "name_held"]);
    env.converge("fleets/distribution.yaml");
}

#[test]
fn a_field_changed_by_hand_is_drift_and_forces_replacement() {
    let env = Env::new();
    env.converge("fleets/ci-shared-runners.yaml");
    env.fleet(&[
        "sim",
        "set",
        "private-runners-manager-1",
        "machine_type",
        "n1-standard-8",
    ])
    .ok();
    let plan = plan_json(&env, "fleets/ci-shared-runners.yaml");
    let address = "manager.private-runners-manager-1";
    assert_eq!(actions_of(&plan, address), ["delete", "create"]);
    assert_eq!(
        reasons_of(&plan, address),
        ["field_changed", "drift", "name_held"]
    );
    let text = env
        .fleet(&["plan", "fleets/ci-shared-runners.yaml"])
        .ok()
        .stdout;
    assert!(
        text.contains("machine_type: \"n1-standard-8\" → \"n1-standard-4\" (forces replacement)"),
        "{text}"
    );
    assert!(
        text.contains("drift: changed outside fleet since the last apply"),
        "{text}"
    );
    assert!(
        text.contains("Plan: 0 to create, 0 to update, 1 to replace, 0 to delete."),
        "{text}"
    );
}

#[test]
fn a_label_changed_by_hand_is_updated_in_place() {
    let env = Env::new();
    env.converge("fleets/distribution.yaml");
    env.fleet(&[
        "sim",
        "set",
        "runners-manager-distribution-dev-blue-1",
        "label.color",
        "green",
    ])
    .ok();
    let plan = plan_json(&env, "fleets/distribution.yaml");
    let address = "manager.runners-manager-distribution-dev-blue-1";
    assert_eq!(actions_of(&plan, address), ["update"]);
    assert_eq!(reasons_of(&plan, address), ["drift", "field_changed"]);
    let before = env.sim_list();
    let id_before = before
        .iter()
        .find(|o| o["name"] == "runners-manager-distribution-dev-blue-1")
        .unwrap()["id"]
        .clone();
    env.converge("fleets/distribution.yaml");
    let after = env.sim_list();
    let machine = after
        .iter()
        .find(|o| o["name"] == "runners-manager-distribution-dev-blue-1")
        .unwrap();
    assert_eq!(
        machine["id"], id_before,
        "an in-place update must keep the machine"
    );
    assert_eq!(machine["spec"]["labels"]["color"], "blue");
}

#[test]
fn a_machine_deleted_by_hand_is_created_again() {
    let env = Env::new();
    env.converge("fleets/ci-shared-runners.yaml");
    env.fleet(&["sim", "delete", "prometheus-01-us-east1-d"])
        .ok();
    let plan = plan_json(&env, "fleets/ci-shared-runners.yaml");
    assert_eq!(
        actions_of(&plan, "helper.prometheus-01-us-east1-d"),
        ["create"]
    );
    assert_eq!(plan["summary"]["create"], 1);
    assert_eq!(plan["summary"]["no_op"], 9);
    env.converge("fleets/ci-shared-runners.yaml");
}

#[test]
fn a_machine_fleet_did_not_make_is_never_taken_over() {
    let env = Env::new();
    env.fleet(&[
        "sim",
        "create",
        "arm-builder-3",
        "--zone",
        "us-east-1a",
        "--machine-type",
        "m6g.large",
    ])
    .ok();
    let run = env.fleet(&["plan", "fleets/arm-builders.yaml"]).code(1);
    assert!(
        run.stdout.contains("! pool.arm-builder-3"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("was not made by fleet, so fleet will neither delete nor overwrite it"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("Plan: 3 to create, 0 to update, 0 to replace, 0 to delete. 1 blocked."),
        "{}",
        run.stdout
    );
    let run = env
        .fleet(&["apply", "fleets/arm-builders.yaml", "--auto-approve"])
        .code(1);
    assert!(run.stderr.contains("blocked"), "{}", run.stderr);
    let objects = env.sim_list();
    assert_eq!(
        objects.len(),
        1,
        "apply must not run while a resource is blocked"
    );
    assert_eq!(objects[0]["spec"]["machine_type"], "m6g.large");
    // Leaving it out with --target lets the rest go ahead, still without touching it.
    env.fleet(&[
        "apply",
        "fleets/arm-builders.yaml",
        "--auto-approve",
        "--target",
        "pool.arm-builder-1",
        "--target",
        "pool.arm-builder-2",
    ])
    .ok();
    assert_eq!(env.sim_list().len(), 3);
}

#[test]
fn an_orphan_is_deleted_and_others_are_left_alone() {
    let env = Env::new();
    env.converge("fleets/arm-builders.yaml");
    env.fleet(&[
        "sim",
        "create",
        "hand-made",
        "--zone",
        "us-east-1a",
        "--machine-type",
        "m6g.large",
    ])
    .ok();
    let smaller = std::fs::read_to_string(env.path().join("fleets/arm-builders.yaml"))
        .unwrap()
        .replace("size: 4", "size: 3");
    let file = env.write("smaller.yaml", &smaller);
    let plan = plan_json(&env, &file);
    assert_eq!(actions_of(&plan, "pool.arm-builder-4"), ["delete"]);
    assert_eq!(reasons_of(&plan, "pool.arm-builder-4"), ["orphan"]);
    env.converge(&file);
    // The orphan is shutting down: still listed by EC2, going away.
    let names: Vec<String> = env
        .sim_list()
        .iter()
        .filter(|o| o["status"] != "deleting")
        .map(|o| o["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "arm-builder-1",
            "arm-builder-2",
            "arm-builder-3",
            "hand-made"
        ]
    );
}

#[test]
fn a_template_change_makes_a_new_version_and_repoints_its_users() {
    let env = Env::new();
    env.converge("fleets/distribution.yaml");
    let bigger = std::fs::read_to_string(env.path().join("fleets/distribution.yaml"))
        .unwrap()
        .replace("machine_type: n1-highcpu-32", "machine_type: n1-highcpu-16");
    let file = env.write("bigger.yaml", &bigger);
    let plan = plan_json(&env, &file);
    assert_eq!(
        actions_of(&plan, "template.amd64-gcp"),
        ["create", "delete"]
    );
    assert_eq!(
        reasons_of(&plan, "template.amd64-gcp"),
        ["new_version", "field_changed"]
    );
    assert_eq!(
        actions_of(&plan, "manager.runners-manager-distribution-com-blue-1"),
        ["update"]
    );
    let run = env.converge(&file);
    // The old version goes only after both managers were repointed.
    let lines: Vec<&str> = run.stdout.lines().collect();
    let position = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle) && l.contains("done"))
            .unwrap_or_else(|| panic!("{needle} not done:\n{}", run.stdout))
    };
    let delete_old = position("delete template.amd64-gcp");
    assert!(position("update manager.runners-manager-distribution-com-blue-1") < delete_old);
    assert!(position("update manager.runners-manager-distribution-dev-blue-1") < delete_old);
    let templates: Vec<String> = env
        .sim_list()
        .iter()
        .filter(|o| {
            o["kind"] == "instance_template" && o["spec"]["labels"]["fleet-resource"] == "amd64-gcp"
        })
        .map(|o| o["spec"]["machine_type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(templates, ["n1-highcpu-16"]);
}
