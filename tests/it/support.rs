//! Runs the real `fleet` binary in a scratch directory.
//!
//! The directory links the repository's `fleets/` and `templates/` in and keeps the simulated
//! cloud in `sim-state/`, so paths in the output are the same on every machine and golden
//! files stay stable.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Every secret the fleets in `fleets/` reference.
pub(crate) fn secret_names() -> Vec<String> {
    let mut names = Vec::new();
    for env in ["com", "dev"] {
        for kind in ["AMD64_GCP", "ARM64_GCP", "ARM64_AWS"] {
            names.push(format!("DISTRIBUTION_{env}_{kind}_TOKEN"));
        }
    }
    for index in 1..=2 {
        names.push(format!("SRM_{index}_TOKEN"));
        for site in ["COM", "DEV"] {
            names.push(format!("GSRM_{index}_{site}_TOKEN"));
            names.push(format!("PRM_{index}_{site}_TOKEN"));
        }
    }
    for runner in [
        "GFZ_GITLAB_KNB",
        "MDIS_VANILLA_VOLUME",
        "MDIS_DOCS_PROJECT_RUNNER",
        "MDIS_DOCKER",
        "PROJRUNNER_SHELLEXEC",
        "HELMHOLTZ_GROUPRUNNER",
        "MDIS_BLANK_VOLUME",
    ] {
        names.push(format!("WB31_{runner}_TOKEN"));
    }
    names
}

/// The value the tests give a secret: distinctive, so a leak is found by searching for it.
pub(crate) fn secret_value(name: &str) -> String {
    format!("glrt-s3cr3t-{}", name.to_lowercase().replace('_', "-"))
}

pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch directory with a fresh simulated cloud.
pub(crate) struct Env {
    pub(crate) dir: tempfile::TempDir,
    extra: Vec<(String, String)>,
}

/// One finished run.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) args: String,
}

impl Run {
    /// The outcome of a finished `fleet` process run with `args`.
    pub(crate) fn from_output(output: &std::process::Output, args: &str) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            args: args.to_string(),
        }
    }

    /// Asserts the exit status, showing the output when it differs.
    #[track_caller]
    pub(crate) fn code(self, expected: i32) -> Run {
        assert_eq!(
            self.code, expected,
            "`fleet {}` exited {} (expected {expected})\n--- stdout\n{}\n--- stderr\n{}",
            self.args, self.code, self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub(crate) fn ok(self) -> Run {
        self.code(0)
    }

    /// Asserts an apply that succeeded and verified the live fleet against its plan.
    #[track_caller]
    pub(crate) fn verified(self) -> Run {
        let run = self.ok();
        assert!(
            run.stdout
                .contains("Verified: the live fleet matches the plan"),
            "{}\n{}",
            run.stdout,
            run.stderr
        );
        run
    }

    /// Asserts a `plan --detailed-exitcode` that found nothing to do.
    #[track_caller]
    pub(crate) fn unchanged(self) -> Run {
        let run = self.ok();
        assert!(run.stdout.contains("No changes"), "{}", run.stdout);
        run
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "`fleet {}` did not print JSON ({e}):\n{}",
                self.args, self.stdout
            )
        })
    }
}

impl Env {
    pub(crate) fn new() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        // Fleet files are copied, not linked: fleet refuses a fleet file read through a link.
        let fleets = dir.path().join("fleets");
        std::fs::create_dir_all(&fleets).expect("mkdir fleets");
        for entry in std::fs::read_dir(repo().join("fleets")).expect("fleets/") {
            let entry = entry.expect("fleets/ entry");
            if entry.path().is_file() {
                std::fs::copy(entry.path(), fleets.join(entry.file_name())).expect("copy");
            }
        }
        let templates = repo().join("templates");
        if templates.exists() {
            std::os::unix::fs::symlink(&templates, dir.path().join("templates")).expect("symlink");
        }
        let secrets: String = secret_names()
            .iter()
            .map(|name| format!("{name}={}\n", secret_value(name)))
            .collect();
        std::fs::write(dir.path().join("secrets.env"), secrets).expect("secrets file");
        Env {
            dir,
            extra: vec![("FLEET_SECRETS_FILE".to_string(), "secrets.env".to_string())],
        }
    }

    /// Adds `NAME=value` to the run's secrets file (the repository's fake secrets and any
    /// added before) and returns the file's text.
    pub(crate) fn add_secret(&self, name: &str, value: &str) -> String {
        let path = self.path().join("secrets.env");
        let mut text = std::fs::read_to_string(&path).expect("secrets file");
        text.push_str(&format!("{name}={value}\n"));
        std::fs::write(&path, &text).expect("secrets file");
        text
    }

    /// Adds an environment variable to every later run.
    pub(crate) fn with_env(mut self, key: &str, value: &str) -> Env {
        self.extra.push((key.to_string(), value.to_string()));
        self
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file into the scratch directory and returns its relative name.
    pub(crate) fn write(&self, name: &str, text: &str) -> String {
        let path = self.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, text).expect("write");
        name.to_string()
    }

    pub(crate) fn command(&self, args: &[&str], envs: &[(&str, &str)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fleet"));
        command
            .current_dir(self.path())
            .args(["--sim-dir", "sim-state"])
            .args(args)
            .env("NO_COLOR", "1")
            .env("COLUMNS", "100")
            .stdin(Stdio::null());
        for key in [
            "FLEET_CLOUD",
            "FLEET_SIM_DIR",
            "FLEET_STATE_DIR",
            "FLEET_SIM_LATENCY_MS",
            "FLEET_SIM_RATE_LIMIT",
            "FLEET_SIM_FAULT_RATE",
            "FLEET_SIM_SEED",
            "FLEET_SIM_FAIL_CREATE",
            "FLEET_SIM_LIST_LAG",
            "FLEET_SECRETS_FILE",
        ] {
            command.env_remove(key);
        }
        for (key, value) in &self.extra {
            command.env(key, value);
        }
        for (key, value) in envs {
            command.env(key, value);
        }
        command
    }

    /// Runs `fleet --sim-dir sim-state ARGS…`.
    pub(crate) fn fleet(&self, args: &[&str]) -> Run {
        self.fleet_with(args, &[])
    }

    /// Runs with extra environment variables.
    pub(crate) fn fleet_with(&self, args: &[&str], envs: &[(&str, &str)]) -> Run {
        let output = self.command(args, envs).output().expect("run fleet");
        Run::from_output(&output, &args.join(" "))
    }

    /// Starts a run in the background.
    pub(crate) fn spawn(&self, args: &[&str], envs: &[(&str, &str)]) -> Child {
        self.command(args, envs)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fleet")
    }

    /// `sim list` as JSON objects.
    pub(crate) fn sim_list(&self) -> Vec<serde_json::Value> {
        match self.fleet(&["sim", "list"]).ok().json() {
            serde_json::Value::Array(items) => items,
            other => panic!("sim list is not an array: {other}"),
        }
    }

    /// `sim stats` as a map.
    pub(crate) fn sim_stats(&self) -> serde_json::Map<String, serde_json::Value> {
        match self.fleet(&["sim", "stats"]).ok().json() {
            serde_json::Value::Object(map) => map,
            other => panic!("sim stats is not an object: {other}"),
        }
    }

    /// Applies a fleet file and asserts it converged.
    #[track_caller]
    pub(crate) fn converge(&self, file: &str) -> Run {
        self.fleet(&["apply", file, "--auto-approve"]).verified()
    }
}

/// The `actions` of one address in a JSON plan.
pub(crate) fn actions_of(plan: &serde_json::Value, address: &str) -> Vec<String> {
    plan["resource_changes"]
        .as_array()
        .expect("resource_changes")
        .iter()
        .filter(|change| change["address"] == address)
        // The JSON plan for tools has them under `change`, as Terraform's; a saved plan beside.
        .flat_map(|change| {
            change["change"]["actions"]
                .as_array()
                .or(change["actions"].as_array())
                .cloned()
                .unwrap_or_default()
        })
        .map(|a| a.as_str().unwrap_or_default().to_string())
        .collect()
}

/// The reason types of one address in a JSON plan (`fleet plan --format json`).
pub(crate) fn reasons_of(plan: &serde_json::Value, address: &str) -> Vec<String> {
    plan["resource_changes"]
        .as_array()
        .expect("resource_changes")
        .iter()
        .filter(|change| change["address"] == address)
        .flat_map(|change| change["reasons"].as_array().cloned().unwrap_or_default())
        .map(|r| r["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Compares `actual` with the golden file at `path` (relative to the repository), or rewrites
/// it when `FLEET_BLESS` is set; differences are collected so one run reports them all.
pub(crate) fn golden(path: &str, actual: &str, failures: &mut Vec<String>) {
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
