//! The plan made for review: the markdown comment within GitLab's note limit, GitLab's
//! Terraform report, the JSON plan in Terraform's shape, and saved plans told from it.

use crate::support::Env;

/// A fleet of `keep` managers of machine type `machine_type`, and `count` more per
/// environment (two environments), each with its own config.toml.
fn generated_fleet(machine_type: &str, count: usize) -> String {
    let mut text = format!(
        "fleet: big
clouds:
  gcp: {{ project: big-build, region: us-east1 }}
defaults:
  gcp:
    zone: us-east1-c
    image: projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts
    disk: {{ type: pd-ssd, size_gb: 50 }}
    service_account: managers@big-build.iam.gserviceaccount.com
managers:
  keep-{{n}}:
    matrix: {{ count: 3 }}
    cloud: gcp
    machine_type: {machine_type}
    runner: {{ version: \"16.11.1\", concurrent: 10, shutdown_timeout: 3600 }}
    runners:
      - {{ name: \"keep-{{n}}-shell\", url: \"https://gitlab.example.com/\", executor: shell, token: \"${{secret:BIG_TOKEN}}\" }}
"
    );
    if count > 0 {
        text.push_str(&format!(
            "  manager-{{env}}-{{n}}:
    matrix: {{ env: [a, b], count: {count} }}
    cloud: gcp
    machine_type: n1-standard-4
    runner: {{ version: \"16.11.1\", concurrent: 10 }}
    runners:
      - {{ name: \"manager-{{env}}-{{n}}-shell\", url: \"https://gitlab.example.com/\", executor: shell, limit: 4, token: \"${{secret:BIG_TOKEN}}\" }}
"
        ));
    }
    text
}

#[test]
fn a_plan_of_twenty_thousand_managers_is_a_comment_under_gitlabs_limit() {
    let env = Env::new();
    let file = env.write("big.yaml", &generated_fleet("n1-standard-4", 0));
    env.converge(&file);
    // The three kept managers get a new machine type (replaced: the warning), and 20,000
    // managers are new, each with a config.toml of its own (the details that overflow).
    env.write("big.yaml", &generated_fleet("n1-standard-8", 10_000));
    let run = env
        .fleet(&["plan", &file, "--format", "markdown", "-o", "big.plan.json"])
        .ok();
    let md = run.stdout;
    let length = md.chars().count();
    assert!(
        length <= fleet_engine::plan::markdown::MARKDOWN_BUDGET,
        "{length} characters"
    );
    assert!(length > 900_000, "the budget was not used: {length}");
    assert!(
        md.contains("**Plan: 20000 to create, 0 to update, 3 to replace, 0 to delete.**"),
        "{}",
        &md[..2000]
    );
    // The warning names each replaced manager with its impact and procedure, whole.
    let warning = md
        .split("> **Warning: this plan replaces 3 resource(s).**")
        .nth(1)
        .expect("the warning");
    for n in 1..=3 {
        assert!(
            warning.contains(&format!("`manager.keep-{n}` is replaced")),
            "keep-{n}"
        );
    }
    assert_eq!(
        warning
            .matches("Impact: **replace**: a new machine")
            .count(),
        3,
        "{}",
        &warning[..3000]
    );
    assert!(
        md.contains("up to shutdown\\_timeout = 3600 s"),
        "the procedure"
    );
    // Details were cut at a whole block, and the note says so and where the plan is.
    assert!(md.contains("> **Cut short:**"), "no truncation note");
    assert!(md.contains("the plan artifact `big.plan.json`"));
    assert_eq!(
        md.matches("<details>").count(),
        md.matches("</details>").count()
    );
    assert_eq!(md.matches("```diff").count() * 2, md.matches("```").count());
    // The plan it points to is whole.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.path().join("big.plan.json")).unwrap())
            .unwrap();
    assert_eq!(saved["resource_changes"].as_array().unwrap().len(), 20_003);
}

#[test]
fn the_json_plan_answers_terraform_queries_of_actions() {
    let env = Env::new();
    env.converge("fleets/arm-builders.yaml");
    env.fleet(&["sim", "stop", "arm-builder-2"]).ok();
    env.fleet(&["sim", "delete", "arm-builder-4"]).ok();
    let plan = env
        .fleet(&["plan", "fleets/arm-builders.yaml", "--format", "json"])
        .ok()
        .json();
    assert_eq!(plan["format_version"], "1.2");
    assert_eq!(plan["fleet_version"], env!("CARGO_PKG_VERSION"));
    // `.resource_changes[].change.actions`, as jq and OPA policies read it.
    let actions: Vec<(String, Vec<String>)> = plan["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|change| {
            (
                change["address"].as_str().unwrap().to_string(),
                change["change"]["actions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    let words = |list: &[&str]| list.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    assert_eq!(
        actions,
        [
            ("pool.arm-builder-1".to_string(), words(&["no-op"])),
            (
                "pool.arm-builder-2".to_string(),
                words(&["create", "delete"])
            ),
            ("pool.arm-builder-3".to_string(), words(&["no-op"])),
            ("pool.arm-builder-4".to_string(), words(&["create"])),
        ]
    );
    let replaced = &plan["resource_changes"][1];
    for key in ["address", "mode", "type", "name", "provider_name"] {
        assert!(replaced[key].is_string(), "{key}: {replaced:#}");
    }
    assert_eq!(replaced["mode"], "managed");
    assert_eq!(replaced["type"], "pool");
    assert_eq!(replaced["name"], "arm-builder-2");
    let change = &replaced["change"];
    // Before and after in one shape: the stopped machine and the one that replaces it.
    assert_eq!(change["before"]["status"], "stopped");
    assert_eq!(change["after"]["status"], "running");
    assert_eq!(
        change["before"]["machine_type"],
        change["after"]["machine_type"]
    );
    assert!(change["before"]["id"].is_string());
    assert_eq!(change["after_unknown"]["id"], true);
    assert!(change["before_sensitive"].is_object() && change["after_sensitive"].is_object());
    assert_eq!(replaced["reasons"][0]["type"], "not_working");
    let planned = plan["planned_values"]["root_module"]["resources"]
        .as_array()
        .unwrap();
    assert_eq!(planned.len(), 4);
    assert_eq!(plan["pools"][0]["replace"][0], "arm-builder-2");
}

#[test]
fn secrets_are_masked_in_before_and_after_and_flagged_sensitive() {
    let env = Env::new();
    let file = env.write("small.yaml", &generated_fleet("n1-standard-4", 0));
    env.converge(&file);
    env.write("small.yaml", &generated_fleet("n1-standard-8", 0));
    let plan = env.fleet(&["plan", &file, "--format", "json"]).ok();
    assert!(!plan.stdout.contains("sim-placeholder"), "a secret value");
    assert!(
        !plan.stdout.contains("${secret:"),
        "a reference shown unmasked"
    );
    let plan = plan.json();
    let change = &plan["resource_changes"][0]["change"];
    assert_eq!(change["actions"], serde_json::json!(["delete", "create"]));
    assert_eq!(
        change["before"]["metadata"]["fleet-secrets"], "(sensitive)",
        "{change:#}"
    );
    assert_eq!(
        change["before_sensitive"]["metadata"]["fleet-secrets"],
        true
    );
    assert_eq!(
        change["after_sensitive"]["metadata"]["gitlab-runner-config"],
        true
    );
    assert!(change["after"]["metadata"]["gitlab-runner-config"]
        .as_str()
        .unwrap()
        .contains("token = \"(sensitive)\""));
}

#[test]
fn the_gitlab_report_counts_a_replacement_as_a_create_and_a_delete() {
    let env = Env::new();
    env.converge("fleets/arm-builders.yaml");
    env.fleet(&["sim", "stop", "arm-builder-2"]).ok();
    env.fleet(&["sim", "delete", "arm-builder-4"]).ok();
    let run = env
        .fleet(&[
            "plan",
            "fleets/arm-builders.yaml",
            "--format",
            "markdown",
            "--gitlab-report",
            "report.json",
            "-o",
            "plan.json",
        ])
        .ok();
    assert!(run.stdout.starts_with("### fleet plan"), "{}", run.stdout);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(
        report,
        serde_json::json!({"create": 2, "update": 0, "delete": 1})
    );
    // Alongside -o, which still saves the plan that apply takes; nothing else is left beside.
    assert!(env.path().join("plan.json").exists());
    let leftovers: Vec<String> = std::fs::read_dir(env.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_saved_plan_applies_and_the_json_plan_for_tools_is_refused() {
    let env = Env::new();
    env.fleet(&[
        "plan",
        "fleets/arm-builders.yaml",
        "--format",
        "json",
        "-o",
        "plan.json",
    ])
    .ok();
    let shown = env
        .fleet(&["plan", "fleets/arm-builders.yaml", "--format", "json"])
        .ok();
    std::fs::write(env.path().join("shown.json"), &shown.stdout).unwrap();
    // Both carry a format_version; only the saved plan says it is one.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.path().join("plan.json")).unwrap())
            .unwrap();
    assert_eq!(saved["saved_plan"], true);
    assert!(shown.json()["saved_plan"].is_null());

    let refused = env
        .fleet(&["apply", "shown.json", "--auto-approve"])
        .code(1);
    assert!(
        refused
            .stderr
            .contains("this is the JSON plan `fleet plan --format json` prints, not a saved plan"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("fleet plan … -o PLAN"),
        "{}",
        refused.stderr
    );
    assert!(
        env.sim_list().is_empty(),
        "a refused plan changed the cloud"
    );
    let as_fleet = env.fleet(&["plan", "shown.json"]).code(1);
    assert!(
        as_fleet
            .stderr
            .contains("is the JSON plan `fleet plan --format json` prints"),
        "{}",
        as_fleet.stderr
    );

    let applied = env.fleet(&["apply", "plan.json"]).ok();
    assert!(
        applied.stdout.contains("Apply complete: 4 created"),
        "{}",
        applied.stdout
    );
}

#[test]
fn a_plan_saved_before_the_marker_still_applies() {
    let env = Env::new();
    env.fleet(&["plan", "fleets/arm-builders.yaml", "-o", "plan.json"])
        .ok();
    let path = env.path().join("plan.json");
    // A plan saved by a fleet release before `saved_plan` was written: the same, without it.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("  \"saved_plan\": true,\n", "");
    assert!(!text.contains("saved_plan"));
    std::fs::write(&path, text).unwrap();
    let applied = env.fleet(&["apply", "plan.json"]).ok();
    assert!(
        applied.stdout.contains("Apply complete: 4 created"),
        "{}",
        applied.stdout
    );
}

#[test]
fn a_runner_moved_to_another_secret_is_a_line_of_the_reviewed_diff() {
    let env = Env::new();
    let file = env.write("small.yaml", &generated_fleet("n1-standard-4", 0));
    env.converge(&file);
    // The merge request points the runners at another secret the apply job holds: no value
    // changes in the plan, but the reviewer must see which secret each runner now gets.
    env.write(
        "small.yaml",
        &generated_fleet("n1-standard-4", 0).replace("secret:BIG_TOKEN", "secret:OTHER_TOKEN"),
    );
    let markdown = env
        .fleet(&["plan", &file, "--format", "markdown"])
        .ok()
        .stdout;
    assert!(
        markdown.contains("-  token = \"(secret BIG_TOKEN)\"")
            && markdown.contains("+  token = \"(secret OTHER_TOKEN)\""),
        "{markdown}"
    );
    assert!(!markdown.contains("sim-placeholder"), "a secret value");
}
