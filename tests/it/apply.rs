//! Apply under pressure: faults, throttling, concurrent applies, a killed apply, failures.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};

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
    let env = Env::new();
    // The plan is made without a limit; the apply, in a process of its own, starts with the
    // cloud's allowance part spent by its discovery while its own pacing allows a full burst,
    // so the cloud throttles some of its first calls.
    env.fleet(&["plan", "fleets/ci-shared-runners.yaml", "-o", "plan.json"])
        .ok();
    let run = env
        .fleet_with(
            &["apply", "plan.json", "--auto-approve"],
            &[("FLEET_SIM_RATE_LIMIT", "8")],
        )
        .verified();
    // Throttling happened: the cloud counted more insert calls than there are objects, and
    // with no fault injected every extra call is one it refused as over the limit.
    let stats = env.sim_stats();
    let count = |op: &str| stats.get(op).and_then(|v| v.as_u64()).unwrap_or(0);
    let inserts = count("compute.instances.insert") + count("compute.instanceTemplates.insert");
    let throttled = inserts - 10;
    assert!(throttled > 0, "the cloud throttled nothing: {stats:?}");
    // It was backed off from: each refused call waited and was repeated, and said so.
    let backoffs: Vec<&str> = run
        .stdout
        .lines()
        .filter(|line| line.contains("rateLimitExceeded") && line.contains("retrying in"))
        .collect();
    assert_eq!(backoffs.len() as u64, throttled, "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!("({throttled} retries)")),
        "{}",
        run.stdout
    );
    assert_no_duplicates(&env, 10);
}

#[test]
fn a_second_concurrent_apply_is_refused_while_the_first_holds_the_lock() {
    let env = Env::new();
    let mut first = env.spawn(
        &["apply", "fleets/arm-builders.yaml", "--auto-approve"],
        &[("FLEET_SIM_LATENCY_MS", "400")],
    );
    // The first apply prints its first step once it holds the lock and has checked the plan.
    let mut lines = BufReader::new(first.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines
            .next()
            .expect("the first apply ended before starting a step")
            .expect("read");
        let started = line.contains(": started");
        seen.push(line);
        if started {
            break;
        }
    }
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let second = env
        .fleet(&["apply", "fleets/arm-builders.yaml", "--auto-approve"])
        .code(1);
    // The refusal names the first apply: holder details exist only while it holds the lock.
    assert!(
        second.stderr.contains("is locked by another apply"),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains(&format!("pid {} ", first.id())),
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
    assert!(!second.stdout.contains(": started"), "{}", second.stdout);
    assert!(first.wait().unwrap().success());
    seen.extend(rest.join().unwrap());
    assert!(
        seen.iter()
            .any(|line| line.contains("Verified: the live fleet matches the plan")),
        "{seen:#?}"
    );
    assert_no_duplicates(&env, 4);
}

#[test]
fn dependents_of_a_failed_step_are_skipped_and_independent_work_goes_on() {
    let env = Env::new();
    let run = env
        .fleet_with(
            &["apply", "fleets/distribution.yaml", "--auto-approve"],
            &[("FLEET_SIM_FAIL_CREATE", "arm64-aws-*")],
        )
        .code(3);
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

#[test]
fn a_saved_plan_without_changes_is_refused_once_the_cloud_moved() {
    let env = Env::new();
    env.converge("fleets/arm-builders.yaml");
    let plan = env
        .fleet(&["plan", "fleets/arm-builders.yaml", "-o", "noop.json"])
        .ok();
    assert!(plan.stdout.contains("No changes"), "{}", plan.stdout);
    // Fresh, it is applied as what it is: nothing to do, and the cloud confirms it.
    env.fleet(&["apply", "noop.json", "--auto-approve"]).ok();
    let member = env.sim_list()[0]["name"].as_str().unwrap().to_string();
    env.fleet(&["sim", "delete", &member]).ok();
    let run = env.fleet(&["apply", "noop.json", "--auto-approve"]).code(1);
    assert!(run.stderr.contains("the plan is stale"), "{}", run.stderr);
    // Its "No changes" is shown as what the plan said when it was made, not as the cloud now.
    assert!(
        run.stdout.contains("Saved plan ") && run.stdout.contains("(noop.json), as it was made:"),
        "{}",
        run.stdout
    );
    let again = env.fleet(&["plan", "fleets/arm-builders.yaml", "--detailed-exitcode"]);
    assert_eq!(again.code, 2, "{}", again.stdout);
    assert!(again.stdout.contains("1 to create"), "{}", again.stdout);
}

#[test]
fn a_journal_on_a_full_disk_stops_the_apply_before_any_change() {
    let env = Env::new();
    let journal = env.path().join("sim-state/state/journal");
    std::fs::create_dir_all(&journal).unwrap();
    // Every write to the journal fails as on a full disk.
    std::os::unix::fs::symlink("/dev/full", journal.join("arm-builders.jsonl")).unwrap();
    let run = env
        .fleet(&["apply", "fleets/arm-builders.yaml", "--auto-approve"])
        .code(5);
    assert!(
        run.stderr.contains("the journal could not be written")
            && run.stderr.contains("journal/arm-builders.jsonl")
            && run.stderr.contains("No space left on device"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout.contains("not started: create pool."),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains(": started"), "{}", run.stdout);
    assert!(
        env.sim_list().is_empty(),
        "a step ran that no journal line records"
    );
}

#[test]
fn a_journal_that_cannot_be_opened_is_an_error_before_any_change() {
    let env = Env::new();
    // A directory where the journal file should be.
    let journal = env
        .path()
        .join("sim-state/state/journal/arm-builders.jsonl");
    std::fs::create_dir_all(&journal).unwrap();
    let run = env
        .fleet(&["apply", "fleets/arm-builders.yaml", "--auto-approve"])
        .code(1);
    assert!(
        run.stderr.contains("journal/arm-builders.jsonl"),
        "{}",
        run.stderr
    );
    assert!(env.sim_list().is_empty());
}

#[test]
fn a_half_written_lock_holder_is_reported_unknown_never_pid_0() {
    use fleet_engine::state::{LocalStore, LockInfo, StateStore};

    let env = Env::new();
    // Another apply holds the lock; its details are cut off mid-way.
    let store = LocalStore::open(&env.path().join("sim-state/state")).unwrap();
    let held = store
        .lock("arm-builders", &LockInfo::current("fleet apply elsewhere"))
        .unwrap();
    let holder = store.holder_path("arm-builders");
    let whole = std::fs::read_to_string(&holder).unwrap();
    std::fs::write(&holder, &whole[..whole.len() / 2]).unwrap();
    let run = env
        .fleet(&["apply", "fleets/arm-builders.yaml", "--auto-approve"])
        .code(1);
    assert!(
        run.stderr.contains("is locked by another apply")
            && run.stderr.contains("its holder is unknown"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("pid 0"), "{}", run.stderr);
    // Written whole, the refusal names the holder.
    std::fs::write(&holder, &whole).unwrap();
    let run = env
        .fleet(&["apply", "fleets/arm-builders.yaml", "--auto-approve"])
        .code(1);
    assert!(
        run.stderr.contains(&format!("pid {} ", std::process::id()))
            && run.stderr.contains("fleet apply elsewhere"),
        "{}",
        run.stderr
    );
    drop(held);
    assert!(env.sim_list().is_empty());
    env.converge("fleets/arm-builders.yaml");
}

#[test]
fn an_interrupted_apply_finishes_its_running_steps_starts_no_more_and_says_so() {
    let env = Env::new();
    let mut apply = env.spawn(
        &[
            "apply",
            "fleets/ci-shared-runners.yaml",
            "--auto-approve",
            "--concurrency",
            "1",
        ],
        &[("FLEET_SIM_LATENCY_MS", "200")],
    );
    let mut lines = BufReader::new(apply.stdout.take().expect("stdout")).lines();
    let mut out = Vec::new();
    // Interrupt once the first step is done.
    for line in lines.by_ref() {
        let line = line.expect("read");
        let done = line.contains(": done (");
        out.push(line);
        if done {
            break;
        }
    }
    let sent = std::process::Command::new("kill")
        .args(["-INT", &apply.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    out.extend(lines.map_while(Result::ok));
    let status = apply.wait().unwrap();
    let out = out.join("\n");
    assert_eq!(status.code(), Some(3), "{out}");
    assert!(
        out.contains("not started, because the apply was interrupted"),
        "{out}"
    );
    let made = env.sim_list().len();
    assert!((1..10).contains(&made), "{made} made:\n{out}");
    // Every step is accounted for: done, or not started.
    let accounted = out.matches(": done (").count()
        + out
            .matches("not started, because the apply was interrupted")
            .count();
    assert_eq!(accounted, 10, "{out}");
    env.converge("fleets/ci-shared-runners.yaml");
    assert_no_duplicates(&env, 10);
}
