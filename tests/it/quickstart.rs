//! The first things a new user does: the README's main job from a fresh copy with nothing
//! set, the secrets a fleet needs, and the command `fleet plan -o` says to run next.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::gce_server::GceServer;
use crate::support::{repo, Env, Run};

/// The README's main job: the arguments after `cargo run --release --` on the first command
/// line of its first shell block.
fn readme_first_command() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let block = readme
        .split("```sh\n")
        .nth(1)
        .expect("a ```sh block in README.md");
    let line = block.lines().next().expect("a command in the first block");
    let args = line
        .strip_prefix("cargo run --release -- ")
        .unwrap_or_else(|| {
            panic!("the README's first command is not `cargo run --release -- …`: {line}")
        });
    args.split_whitespace().map(str::to_string).collect()
}

/// Every file git tracks, copied into `into`: a fresh clone's work tree, without a build.
fn fresh_copy(into: &Path) {
    let listed = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(repo())
        .output()
        .expect("git ls-files");
    assert!(listed.status.success(), "git ls-files failed");
    for name in listed
        .stdout
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
    {
        let name = String::from_utf8_lossy(name).into_owned();
        let from = repo().join(&name);
        if !from.is_file() {
            continue;
        }
        let to = into.join(&name);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&from, &to).expect("copy");
    }
}

/// Runs the built binary in `dir` with `args`, with none of fleet's variables set, as on a
/// new machine.
fn bare(dir: &Path, args: &[String]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fleet"));
    command
        .current_dir(dir)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FLEET_") {
            command.env_remove(key);
        }
    }
    let output = command.output().expect("run fleet");
    Run::from_output(&output, &args.join(" "))
}

#[test]
fn the_readme_first_command_converges_from_a_fresh_copy_with_no_secret_set() {
    let dir = tempfile::tempdir().expect("temp dir");
    fresh_copy(dir.path());
    let args = readme_first_command();
    let run = bare(dir.path(), &args);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("Verified"), "{}", run.stdout);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(
        all.matches("get a placeholder (sim-placeholder-<NAME>)")
            .count(),
        1,
        "the placeholders are said once:\n{all}"
    );
    // Converged: planning again (same directory, same simulated cloud) shows nothing to do.
    let sim_dir = args
        .iter()
        .position(|arg| arg == "--sim-dir")
        .map(|at| args[at + 1].clone())
        .expect("the README's command names its --sim-dir");
    let file = args
        .iter()
        .find(|arg| arg.ends_with(".yaml"))
        .expect("a fleet file");
    let again = bare(
        dir.path(),
        &[
            "--sim-dir".to_string(),
            sim_dir,
            "plan".to_string(),
            file.clone(),
            "--detailed-exitcode".to_string(),
        ],
    );
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
}

#[test]
fn fleet_secrets_lists_what_a_fleet_needs_and_where_each_is_read_from_never_a_value() {
    let env = Env::new();
    // One set in the environment, one in a secrets file, the rest not set.
    env.write(
        "only-one.env",
        "DISTRIBUTION_dev_ARM64_AWS_TOKEN=glrt-file-value-3141\n",
    );
    let run = env
        .fleet_with(
            &["secrets", "fleets/distribution.yaml"],
            &[
                ("FLEET_SECRETS_FILE", "only-one.env"),
                (
                    "FLEET_SECRET_DISTRIBUTION_COM_AMD64_GCP_TOKEN",
                    "glrt-env-value-2718",
                ),
            ],
        )
        .ok();
    assert!(
        !run.stdout.contains("glrt-"),
        "a value was printed:\n{}",
        run.stdout
    );
    let line = |name: &str| {
        run.stdout
            .lines()
            .find(|line| line.starts_with(&format!("{name}\t")))
            .unwrap_or_else(|| panic!("{name} not listed:\n{}", run.stdout))
            .to_string()
    };
    assert!(line("DISTRIBUTION_com_AMD64_GCP_TOKEN")
        .contains("set in FLEET_SECRET_DISTRIBUTION_COM_AMD64_GCP_TOKEN"));
    assert!(line("DISTRIBUTION_dev_ARM64_AWS_TOKEN").contains("set in only-one.env"));
    let unset = line("DISTRIBUTION_dev_AMD64_GCP_TOKEN");
    assert!(
        unset.contains("not set: FLEET_SECRET_DISTRIBUTION_DEV_AMD64_GCP_TOKEN"),
        "{unset}"
    );
    assert!(
        unset.contains("used by manager.runners-manager-distribution-dev-blue-1"),
        "{unset}"
    );
    assert_eq!(run.stdout.lines().count(), 6, "{}", run.stdout);
}

/// Splits a printed command as a POSIX shell would (plain words and single quotes).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.push(q);
                }
            }
            '\\' => {
                in_word = true;
                word.extend(chars.next());
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[test]
fn the_command_printed_after_plan_o_works_as_printed_and_asks_nothing() {
    let env = Env::new();
    let dir = env.path();
    // A sim dir and a plan name that need quoting, and a secrets file: all must be carried.
    let args: Vec<String> = [
        "--sim-dir",
        "my sim's cloud",
        "--secrets-file",
        "secrets.env",
        "plan",
        "fleets/distribution.yaml",
        "-o",
        "the plan.json",
    ]
    .map(str::to_string)
    .to_vec();
    let planned = bare(dir, &args);
    assert_eq!(planned.code, 0, "{}\n{}", planned.stdout, planned.stderr);
    let printed = planned
        .stdout
        .lines()
        .skip_while(|line| !line.contains("Apply exactly this plan with:"))
        .nth(1)
        .unwrap_or_else(|| panic!("no command after the saved plan:\n{}", planned.stdout))
        .trim()
        .to_string();
    let words = shell_words(&printed);
    assert_eq!(
        words.first().map(String::as_str),
        Some("fleet"),
        "{printed}"
    );
    // Standard input is not a terminal and there is no --auto-approve: a saved plan is the
    // approval, so this must apply without asking.
    let applied = bare(dir, &words[1..]);
    assert_eq!(
        applied.code, 0,
        "`{printed}` did not work as printed:\n{}\n{}",
        applied.stdout, applied.stderr
    );
    assert!(applied.stdout.contains("Verified"), "{}", applied.stdout);
    assert!(
        dir.join("my sim's cloud").is_dir(),
        "the printed command used another simulated cloud"
    );
}

#[test]
fn a_missing_secret_on_a_live_cloud_is_an_error_before_any_change() {
    let server = GceServer::start("distribution-build");
    let env = Env::new();
    let endpoint = server.endpoint();
    let run = env.fleet_with(
        &[
            "--cloud",
            "live",
            "--only-cloud",
            "gcp",
            "apply",
            "fleets/distribution.yaml",
            "--auto-approve",
        ],
        &[
            ("FLEET_GCP_ENDPOINT", endpoint.as_str()),
            ("FLEET_GCP_ANONYMOUS", "1"),
            ("FLEET_SECRETS_FILE", "/dev/null"),
        ],
    );
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("DISTRIBUTION_com_AMD64_GCP_TOKEN"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("sim-placeholder"), "{}", run.stderr);
    let mutations: u64 = server
        .calls()
        .iter()
        .filter(|(operation, _)| {
            let operation = operation.to_lowercase();
            !operation.contains("list") && !operation.ends_with(".get")
        })
        .map(|(_, count)| count)
        .sum();
    assert_eq!(mutations, 0, "calls: {:?}", server.calls());
    assert!(server.instances().is_empty());
}

#[test]
fn a_mistyped_flag_is_an_error_not_changes_present() {
    // `--detailed-exitcode` gives 2 for "changes present": a usage error must not look so.
    let env = Env::new();
    let run = env.fleet(&[
        "plan",
        "fleets/distribution.yaml",
        "--detailed-exitcode",
        "--formt",
        "json",
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("--format"),
        "the tip names the flag:\n{}",
        run.stderr
    );
    assert_eq!(env.fleet(&["--help"]).code, 0);
}

#[test]
fn a_saved_plan_given_where_a_fleet_file_belongs_says_what_it_is() {
    let env = Env::new();
    env.fleet(&["plan", "fleets/distribution.yaml", "-o", "saved.json"])
        .ok();
    for command in ["plan", "graph", "validate"] {
        let run = env.fleet(&[command, "saved.json"]).code(1);
        assert!(
            run.stderr
                .contains("saved.json is a plan saved with `fleet plan -o`, not a fleet file"),
            "{command}:\n{}",
            run.stderr
        );
        assert!(
            run.stderr.contains("fleet apply saved.json"),
            "{}",
            run.stderr
        );
        assert!(!run.stderr.contains("Unknown key"), "{}", run.stderr);
    }
}

#[test]
fn fleet_secrets_check_fails_while_a_secret_has_no_value() {
    let env = Env::new();
    env.write("none.env", "");
    let missing = env.fleet_with(
        &["secrets", "--check", "fleets/distribution.yaml"],
        &[("FLEET_SECRETS_FILE", "none.env")],
    );
    assert_eq!(missing.code, 1, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("6 of 6 secret(s) have no value"),
        "{}",
        missing.stderr
    );
    // The test environment's secrets file sets them all.
    env.fleet(&["secrets", "--check", "fleets/distribution.yaml"])
        .ok();
}
