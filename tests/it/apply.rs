//! Apply under pressure: faults, throttling, concurrent applies, a killed apply, failures.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::Env;

/// Asserts the cloud holds exactly `count` objects and no two share an address.
#[track_caller]
fn assert_no_duplicates(env: &Env, count: usize) {
    let objects = env.sim_list();
    let addresses: BTreeSet<String> = objects
        .iter()
        .map(|o| {
            // Pool members are known by name, everything else by `fleet-resource`.
            let labels = &o["spec"]["labels"];
            let name = labels["fleet-resource"].as_str().or(o["name"].as_str());
            format!("{}.{}", labels["fleet-kind"], name.unwrap_or_default())
        })
        .collect();
    assert_eq!(objects.len(), count, "{objects:#?}");
    assert_eq!(addresses.len(), count, "duplicate machines: {objects:#?}");
}

#[test]
fn a_faulty_cloud_still_converges_without_duplicates() {
    let env = Env::new()
        .with_env("FLEET_SIM_FAULT_RATE", "0.2")
        .with_env("FLEET_SIM_SEED", "7");
    let run = env.converge("fleets/ci-shared-runners.yaml");
    assert!(
        run.stdout.contains("retrying"),
        "a 20% fault rate caused no retry:\n{}",
        run.stdout
    );
    assert_no_duplicates(&env, 10);
    env.fleet(&[
        "plan",
        "fleets/ci-shared-runners.yaml",
        "--detailed-exitcode",
    ])
    .ok();
}

#[test]
fn a_rate_limited_cloud_is_backed_off_from_and_converges() {
    let env = Env::new().with_env("FLEET_SIM_RATE_LIMIT", "20");
    env.converge("fleets/ci-shared-runners.yaml");
    assert_no_duplicates(&env, 10);
}

#[test]
fn a_second_concurrent_apply_fails_at_once_naming_the_holder() {
    let env = Env::new();
    let mut first = env.spawn(
        &["apply", "fleets/arm-builders.yaml", "--auto-approve"],
        &[("FLEET_SIM_LATENCY_MS", "400")],
    );
    let lock = env.path().join("sim-state/state/locks/arm-builders.lock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&lock).map_or(true, |t| t.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "the first apply never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let second = env
        .fleet(&["apply", "fleets/arm-builders.yaml", "--auto-approve"])
        .code(1);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the second apply waited"
    );
    assert!(
        second.stderr.contains("is locked by another apply"),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains(&format!("pid {}", first.id())),
        "{}",
        second.stderr
    );
    assert!(
        second
            .stderr
            .contains("fleet apply fleets/arm-builders.yaml"),
        "{}",
        second.stderr
    );
    assert!(first.wait().unwrap().success());
    assert_no_duplicates(&env, 4);
}

#[test]
fn a_killed_apply_resumes_without_duplicates_and_its_lock_does_not_block() {
    let env = Env::new();
    let mut first = env.spawn(
        &[
            "apply",
            "fleets/ci-shared-runners.yaml",
            "--auto-approve",
            "--concurrency",
            "2",
        ],
        &[("FLEET_SIM_LATENCY_MS", "150")],
    );
    // Kill it once some, not all, machines exist.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let made = env.sim_list().len();
        if made >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the apply made nothing");
        std::thread::sleep(Duration::from_millis(30));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let partial = env.sim_list().len();
    assert!(
        partial < 10,
        "killed too late to test a resume ({partial} made)"
    );
    let run = env.converge("fleets/ci-shared-runners.yaml");
    assert!(
        run.stderr.contains("ended without releasing its lock"),
        "{}",
        run.stderr
    );
    assert_no_duplicates(&env, 10);
}

#[test]
fn dependents_of_a_failed_step_are_skipped_and_independent_work_goes_on() {
    let env = Env::new();
    let run = env
        .fleet_with(
            &["apply", "fleets/distribution.yaml", "--auto-approve"],
            &[("FLEET_SIM_FAIL_CREATE", "arm64-aws-*")],
        )
        .code(1);
    let out = &run.stdout;
    assert!(out.contains("Apply incomplete: 2 created"), "{out}");
    assert_eq!(
        out.matches("failed:  create template.arm64-aws").count(),
        1,
        "{out}"
    );
    assert!(out.contains("skipped: manager.runners-manager-distribution-com-blue-1 (depends on template.arm64-aws, which failed)"), "{out}");
    assert!(out.contains("skipped: manager.runners-manager-distribution-dev-blue-1 (depends on template.arm64-aws, which failed)"), "{out}");
    assert!(out.contains("Not converged: Plan: 3 to create"), "{out}");
    let templates = env.sim_list();
    assert_eq!(
        templates.len(),
        2,
        "the two GCP templates do not depend on the AWS one"
    );
    // With the fault gone, the next apply finishes the job.
    env.converge("fleets/distribution.yaml");
    assert_no_duplicates(&env, 5);
}
