//! The crash and fault campaign on the simulated cloud: applies killed at seeded journal
//! positions, in the create phase and in a phase of replacements and deletions, each followed
//! by a re-apply; and applies under fault rates from 10 % to 50 %. After each: no duplicate, no
//! leaked machine (labelled as the fleet's but not one of its addresses), nothing missing, and
//! a hand-made machine untouched.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;

use crate::support::Env;

const FLEET: &str = "fleets/ci-shared-runners.yaml";
const JOURNAL: &str = "sim-state/state/journal/ci-shared-runners.jsonl";

/// The fleet's addresses after the first apply and after the change: 10 each.
const OBJECTS: usize = 10;

/// A machine made by hand before anything else, which fleet must never touch.
const HAND_MADE: &str = "hand-made-1";

fn journal_lines(env: &Env) -> usize {
    std::fs::read_to_string(env.path().join(JOURNAL))
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

/// The fleet file changed so that applying it replaces, creates and deletes: the templates get
/// a new version (create the new, update their users, delete the old), the shared-runners
/// managers are renamed (create the new, then delete the old), and the gitlab-shared managers
/// change machine type (a GCE VM keeping its name: delete, then create).
fn changed_fleet(env: &Env) -> String {
    let text = std::fs::read_to_string(crate::support::repo().join(FLEET)).unwrap();
    let changed = text
        .replace(
            "disk: { type: pd-ssd, size_gb: 25 }",
            "disk: { type: pd-ssd, size_gb: 30 }",
        )
        .replace(
            "  shared-runners-manager-{index}:\n",
            "  shared-runners-mgr-{index}:\n",
        );
    // The second manager block is gitlab-shared-runners-manager.
    let at = changed
        .match_indices("    machine_type: n1-standard-4\n")
        .nth(1)
        .expect("a second manager block")
        .0;
    let mut changed = changed;
    changed.replace_range(
        at..at + "    machine_type: n1-standard-4\n".len(),
        "    machine_type: n1-standard-8\n",
    );
    assert_ne!(changed, text);
    env.write("fleets-changed/ci-shared-runners.yaml", &changed)
}

/// The hand-made machine as the cloud shows it.
fn hand_made(env: &Env) -> serde_json::Value {
    env.sim_list()
        .into_iter()
        .find(|object| object["name"] == HAND_MADE)
        .expect("the hand-made machine is gone")
}

/// Asserts the cloud holds the hand-made machine, unchanged, and exactly the fleet's
/// `OBJECTS` objects, each at its own address, and that a plan finds nothing to do: nothing
/// duplicated, leaked or missing.
#[track_caller]
fn assert_whole(env: &Env, file: &str, before: &serde_json::Value, context: &str) {
    assert_eq!(
        &hand_made(env),
        before,
        "{context}: the hand-made machine changed"
    );
    let objects = env.sim_list();
    let fleet: Vec<&serde_json::Value> = objects
        .iter()
        .filter(|o| o["spec"]["labels"]["fleet"] == "ci-shared-runners")
        .collect();
    let addresses: BTreeSet<String> = fleet
        .iter()
        .map(|o| {
            let labels = &o["spec"]["labels"];
            format!("{}.{}", labels["fleet-kind"], labels["fleet-resource"])
        })
        .collect();
    assert_eq!(fleet.len(), OBJECTS, "{context}: {objects:#?}");
    assert_eq!(
        addresses.len(),
        OBJECTS,
        "{context}: duplicates: {objects:#?}"
    );
    assert_eq!(
        objects.len(),
        OBJECTS + 1,
        "{context}: leaked: {objects:#?}"
    );
    let plan = env.fleet(&["plan", file, "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{context}: not converged:\n{}", plan.stdout);
}

/// `count` distinct journal positions in `1..full`, drawn from a fixed seed.
fn kill_points(seed: u64, full: usize, count: usize) -> Vec<usize> {
    let mut state = seed;
    let mut points = BTreeSet::new();
    while points.len() < count.min(full - 1) {
        // xorshift64: reproducible, no dependency.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        points.insert(1 + (state % (full as u64 - 1)) as usize);
    }
    points.into_iter().collect()
}

fn new_env() -> (Env, serde_json::Value) {
    let env = Env::new();
    env.fleet(&[
        "sim",
        "create",
        HAND_MADE,
        "--zone",
        "us-east1-c",
        "--machine-type",
        "n1-standard-2",
    ])
    .ok();
    let before = hand_made(&env);
    (env, before)
}

/// Applies `file` with the kill point at journal line `at` and proves it died there.
#[track_caller]
fn killed_apply(env: &Env, file: &str, at: usize, full: usize, context: &str) {
    let lines_before = journal_lines(env);
    let output = env
        .command(
            &["apply", file, "--auto-approve"],
            &[("FLEET_TEST_ABORT_AFTER", &at.to_string())],
        )
        .output()
        .expect("run fleet");
    assert_eq!(
        output.status.signal(),
        Some(6),
        "{context}: the apply was not killed (status {:?}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
    );
    let written = journal_lines(env) - lines_before;
    assert_eq!(
        written, at,
        "{context}: killed after {written} journal lines"
    );
    assert!(written < full, "{context}: killed after the last line");
}

#[test]
fn applies_killed_at_seeded_journal_positions_converge_without_duplicates_or_leaks() {
    // Full runs, to know how long each phase's journal is.
    let (reference, _) = new_env();
    reference.converge(FLEET);
    let create_phase = journal_lines(&reference);
    let changed = changed_fleet(&reference);
    reference.converge(&changed);
    let change_phase = journal_lines(&reference) - create_phase;
    assert!(create_phase >= 2 * OBJECTS, "{create_phase}");
    assert!(change_phase > 2 * OBJECTS, "{change_phase}");

    for at in kill_points(0x5eed_0001, create_phase, 6) {
        let context = format!("create phase, killed after journal line {at} of {create_phase}");
        let (env, before) = new_env();
        killed_apply(&env, FLEET, at, create_phase, &context);
        let resumed = env.converge(FLEET);
        assert!(
            resumed.stderr.contains("ended without releasing its lock"),
            "{context}: {}",
            resumed.stderr
        );
        assert_whole(&env, FLEET, &before, &context);
    }

    for at in kill_points(0x5eed_0002, change_phase, 6) {
        let context = format!("change phase, killed after journal line {at} of {change_phase}");
        let (env, before) = new_env();
        env.converge(FLEET);
        let changed = changed_fleet(&env);
        killed_apply(&env, &changed, at, change_phase, &context);
        env.converge(&changed);
        assert_whole(&env, &changed, &before, &context);
    }
}

#[test]
fn fault_rates_up_to_half_converge_in_a_bounded_number_of_applies() {
    let mut report = Vec::new();
    for (rate, seed) in [("0.1", 11u64), ("0.2", 12), ("0.3", 13), ("0.5", 15)] {
        let (env, before) = new_env();
        // Each apply is a new run of the fleet's life and sees its own faults: its seed is
        // fixed by the rate and the attempt.
        let mut applies = 0;
        let converged = loop {
            applies += 1;
            let run = env.fleet_with(
                &["apply", FLEET, "--auto-approve"],
                &[
                    ("FLEET_SIM_FAULT_RATE", rate),
                    ("FLEET_SIM_SEED", &(seed * 100 + applies).to_string()),
                ],
            );
            if run.code == 0 {
                break true;
            }
            if applies == 3 {
                break false;
            }
        };
        report.push(format!("rate {rate}: {applies} applies"));
        assert!(
            converged,
            "rate {rate} did not converge in 3 applies: {report:?}"
        );
        assert_whole(&env, FLEET, &before, &format!("fault rate {rate}"));
    }
    // The counts are figures for the engineering notes: shown with `--nocapture`.
    #[allow(clippy::print_stdout)]
    {
        println!("applies to converge: {report:?}");
    }
}
