//! Chef-equivalent configuration: rendered files, their validation, secrets, config diffs and
//! the impact of each change on the running gitlab-runner.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{golden, repo, secret_names, secret_value, Env};

const FLEETS: [&str; 4] = [
    "distribution",
    "ci-shared-runners",
    "arm-builders",
    "mdis-wb31",
];

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Renders a fleet file into a directory of the scratch space and returns it.
fn render_to(env: &Env, file: &str, name: &str) -> PathBuf {
    let out = env.path().join(name);
    env.fleet(&["render", file, "-o", out.to_str().unwrap()])
        .ok();
    out
}

#[test]
fn rendered_files_of_every_fleet_match_their_golden_copies() {
    let env = Env::new();
    let mut failures = Vec::new();
    for fleet in FLEETS {
        let out = env.path().join(format!("out-{fleet}"));
        env.fleet(&[
            "render",
            &format!("fleets/{fleet}.yaml"),
            "-o",
            out.to_str().unwrap(),
        ])
        .ok();
        let files = files_under(&out);
        assert!(!files.is_empty(), "{fleet} rendered nothing");
        for file in files {
            let relative = file.strip_prefix(&out).unwrap().display().to_string();
            let text = std::fs::read_to_string(&file).unwrap();
            golden(
                &format!("plans/{fleet}/rendered/{relative}"),
                &text,
                &mut failures,
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn promtool_accepts_every_rendered_prometheus_config() {
    let promtool = Command::new("promtool").arg("--version").output();
    assert!(
        promtool.is_ok_and(|o| o.status.success()),
        "promtool is not installed: `apt-get install prometheus` (CI's .ci/run does)"
    );
    let env = Env::new();
    let mut checked = 0;
    for fleet in FLEETS {
        let out = env.path().join(format!("out-{fleet}"));
        env.fleet(&[
            "render",
            &format!("fleets/{fleet}.yaml"),
            "-o",
            out.to_str().unwrap(),
        ])
        .ok();
        for file in files_under(&out)
            .into_iter()
            .filter(|f| f.ends_with("prometheus.yml"))
        {
            promtool_accepts(&file);
            checked += 1;
        }
    }
    assert_eq!(
        checked, 2,
        "one prometheus.yml per Prometheus helper of ci-shared-runners"
    );
    // A federating helper renders a valid config too.
    let text = std::fs::read_to_string(env.path().join("fleets/ci-shared-runners.yaml"))
        .unwrap()
        .replace("      scrape_interval: 15s\n", "      scrape_interval: 15s\n      federate: [\"prometheus-01.nyc1.example.net:9090\"]\n");
    let file = env.write("federating.yaml", &text);
    let out = render_to(&env, &file, "out-federating");
    let config = out.join("prometheus-01-us-east1-c/etc/prometheus/prometheus.yml");
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains("metrics_path: /federate"));
    promtool_accepts(&config);
}

/// Asserts `promtool check config` accepts the file.
#[track_caller]
fn promtool_accepts(file: &std::path::Path) {
    let result = Command::new("promtool")
        .args(["check", "config"])
        .arg(file)
        .output()
        .expect("run promtool");
    assert!(
        result.status.success(),
        "promtool rejects {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
}

#[test]
fn a_misspelt_runner_key_points_at_its_fleet_file_line() {
    let env = Env::new();
    let text = std::fs::read_to_string(env.path().join("fleets/distribution.yaml"))
        .unwrap()
        .replacen("request_concurrency: 2", "request_concurency: 2", 1)
        .replacen("MaxGrowthRate: 5", "MaxGrowthRat: 5", 1);
    let file = env.write("typo.yaml", &text);
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let run = env.fleet(&["validate", &file]).code(1);
    let stderr = &run.stderr;
    assert!(
        stderr.contains("Unknown config.toml key `request_concurency` in [[runners]]"),
        "{stderr}"
    );
    assert!(
        stderr.contains("did you mean `request_concurrency`?"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("[typo.yaml:{}:9]", line_of("request_concurency"))),
        "{stderr}"
    );
    assert!(
        stderr.contains("Unknown config.toml key `MaxGrowthRat` in [runners.machine]"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("[typo.yaml:{}:11]", line_of("MaxGrowthRat"))),
        "{stderr}"
    );
}

#[test]
fn the_static_host_wb31_renders_the_seed_runner_settings() {
    let env = Env::new();
    let out = env.path().join("out");
    env.fleet(&[
        "render",
        "fleets/mdis-wb31.yaml",
        "-o",
        out.to_str().unwrap(),
    ])
    .ok();
    let text = std::fs::read_to_string(out.join("wb31/etc/gitlab-runner/config.toml")).unwrap();
    let config: toml::Table = toml::from_str(&text).unwrap();
    let runners = config["runners"].as_array().unwrap();
    assert_eq!(runners.len(), 7);
    let runner = runners
        .iter()
        .find(|r| r["name"].as_str() == Some("wb31-mdis-docker"))
        .unwrap();
    assert_eq!(runner["url"].as_str(), Some("https://git.gfz.de/"));
    assert_eq!(runner["id"].as_integer(), Some(1168));
    assert_eq!(runner["executor"].as_str(), Some("docker"));
    assert_eq!(runner["token"].as_str(), Some("(sensitive)"));
    let docker = runner["docker"].as_table().unwrap();
    assert_eq!(docker["image"].as_str(), Some("docker:24"));
    assert_eq!(docker["privileged"].as_bool(), Some(true));
    assert_eq!(docker["tls_verify"].as_bool(), Some(false));
    assert_eq!(docker["shm_size"].as_integer(), Some(0));
    let volumes: Vec<&str> = docker["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        volumes,
        [
            "/cache",
            "/certs/client",
            "/var/www/dis/15-foundation:/builds/icdp-osg/mdis:rw"
        ]
    );
    let pull: Vec<&str> = docker["pull_policy"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(pull, ["if-not-present"]);
    let shell = runners
        .iter()
        .find(|r| r["name"].as_str() == Some("wb31-projrunner-shellexec"))
        .unwrap();
    assert_eq!(shell["executor"].as_str(), Some("shell"));
    // --reveal-secrets fills the token in, for hosts whose files are laid down by hand.
    let revealed = env.path().join("revealed");
    env.fleet(&[
        "render",
        "fleets/mdis-wb31.yaml",
        "-o",
        revealed.to_str().unwrap(),
        "--reveal-secrets",
    ])
    .ok();
    let text =
        std::fs::read_to_string(revealed.join("wb31/etc/gitlab-runner/config.toml")).unwrap();
    assert!(text.contains(&secret_value("WB31_MDIS_DOCKER_TOKEN")));
}

#[test]
fn no_output_of_any_fleet_holds_a_secret_value() {
    let env = Env::new();
    let mut outputs: Vec<(String, String)> = Vec::new();
    let mut record = |what: String, run: crate::support::Run| {
        outputs.push((format!("{what} (stdout)"), run.stdout));
        outputs.push((format!("{what} (stderr)"), run.stderr));
    };
    for fleet in FLEETS {
        let file = format!("fleets/{fleet}.yaml");
        record(format!("validate {fleet}"), env.fleet(&["validate", &file]));
        record(format!("render {fleet}"), env.fleet(&["render", &file]));
        render_to(&env, &file, &format!("out-{fleet}"));
        if fleet == "mdis-wb31" {
            continue;
        }
        for format in ["text", "json", "markdown"] {
            record(
                format!("plan {fleet} {format}"),
                env.fleet(&["plan", &file, "--format", format]),
            );
        }
        env.fleet(&["plan", &file, "-o", &format!("{fleet}.plan.json")])
            .ok();
        record(
            format!("apply {fleet}"),
            env.fleet(&["apply", &file, "--auto-approve"]).ok(),
        );
        record(
            format!("plan after apply {fleet}"),
            env.fleet(&["plan", &file, "--format", "json"]),
        );
    }
    record("sim list".into(), env.fleet(&["sim", "list"]));
    // Files fleet wrote: renders, saved plans, the state store (locks, journal).
    for file in files_under(env.path()) {
        let relative = file.strip_prefix(env.path()).unwrap().display().to_string();
        // The input, the simulated Secret Manager (where GCE machines' values live), and the
        // simulated EC2's own copy of what its machines were given. Simulated GCE machines and
        // their token records are scanned: their metadata names secrets, never holds one.
        if relative == "secrets.env"
            || relative.starts_with("sim-state/secrets/gcp/")
            || relative.starts_with("sim-state/objects/aws")
            || relative.starts_with("sim-state/tokens/aws")
        {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(&file) {
            outputs.push((relative, text));
        }
    }
    for golden in files_under(&repo().join("plans")) {
        outputs.push((
            golden.display().to_string(),
            std::fs::read_to_string(&golden).unwrap_or_default(),
        ));
    }
    let mut leaks = Vec::new();
    for name in secret_names() {
        let value = secret_value(&name);
        for (what, text) in &outputs {
            if text.contains(&value) {
                leaks.push(format!("{name} in {what}"));
            }
        }
    }
    assert!(leaks.is_empty(), "secret values leaked: {leaks:#?}");
    assert!(
        outputs.iter().any(|(_, text)| text.contains("(sensitive)")),
        "nothing was masked: the scan saw no secret at all"
    );
    // The machines did get them: the simulated cloud delivered them (its own storage).
    let delivered = files_under(&env.path().join("sim-state")).iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| t.contains(&secret_value("SRM_1_TOKEN")))
    });
    assert!(
        delivered,
        "the secret never reached shared-runners-manager-1"
    );
}

#[test]
fn a_rotated_secret_is_seen_without_being_shown() {
    let env = Env::new();
    env.converge("fleets/distribution.yaml");
    let rotated = secret_names()
        .iter()
        .map(|name| {
            let value = if name == "DISTRIBUTION_com_AMD64_GCP_TOKEN" {
                "glrt-rotated-value".to_string()
            } else {
                secret_value(name)
            };
            format!("{name}={value}\n")
        })
        .collect::<String>();
    std::fs::write(env.path().join("rotated.env"), rotated).unwrap();
    let run = env
        .fleet_with(
            &["plan", "fleets/distribution.yaml"],
            &[("FLEET_SECRETS_FILE", "rotated.env")],
        )
        .ok();
    assert!(
        run.stdout
            .contains("~ manager.runners-manager-distribution-com-blue-1"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("secret DISTRIBUTION_com_AMD64_GCP_TOKEN changed: (sensitive)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("Plan: 0 to create, 1 to update"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("glrt-rotated-value"));
}

/// One plan per impact class, from an applied distribution fleet and one edit of its file.
#[test]
fn each_impact_class_is_shown_with_its_procedure_and_diff() {
    let mut failures = Vec::new();
    for (class, from, to, expect) in [
        (
            "reload",
            "concurrent: 30",
            "concurrent: 40",
            "impact: reload",
        ),
        (
            "graceful-restart",
            "log_level: info",
            "log_level: info\n      listen_address: \":9253\"",
            "impact: graceful restart",
        ),
        (
            "upgrade",
            "version: \"16.11.1\"",
            "version: \"17.0.0\"",
            "impact: upgrade",
        ),
        (
            "downgrade",
            "version: \"16.11.1\"",
            "version: \"16.9.2\"",
            "impact: downgrade",
        ),
        (
            "replace",
            "machine_type: n1-standard-4",
            "machine_type: n1-standard-8",
            "impact: replace",
        ),
    ] {
        let env = Env::new();
        env.converge("fleets/distribution.yaml");
        let text = std::fs::read_to_string(env.path().join("fleets/distribution.yaml")).unwrap();
        let edited = text.replacen(from, to, 1);
        assert_ne!(text, edited, "{class}: edit did not apply");
        let file = env.write("distribution.yaml", &edited);
        let run = env.fleet(&["plan", &file]).ok();
        assert!(run.stdout.contains(expect), "{class}:\n{}", run.stdout);
        golden(
            &format!("plans/impact/{class}.txt"),
            &run.stdout,
            &mut failures,
        );
        let json = env.fleet(&["plan", &file, "--format", "json"]).ok().json();
        let manager = json["resource_changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["address"] == "manager.runners-manager-distribution-com-blue-1")
            .unwrap()
            .clone();
        assert_eq!(
            manager["impact"]["class"],
            class.replace('-', "_"),
            "{manager:#}"
        );
        if class != "replace" {
            assert!(
                manager["files"][0]["diff"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("@@")
                    || class == "upgrade"
                    || class == "downgrade",
                "{manager:#}"
            );
            // Apply carries it out in place; the simulated machine shows what it was given.
            env.converge(&file);
            let objects = env.sim_list();
            let machine = objects
                .iter()
                .find(|o| o["name"] == "runners-manager-distribution-com-blue-1")
                .unwrap();
            let delivered = machine["spec"]["metadata"]["gitlab-runner-config"]
                .as_str()
                .unwrap();
            let version = machine["spec"]["metadata"]["gitlab-runner-version"]
                .as_str()
                .unwrap();
            match class {
                "reload" => assert!(delivered.contains("concurrent = 40")),
                "graceful-restart" => assert!(delivered.contains("listen_address = \":9253\"")),
                "downgrade" => assert_eq!(version, "16.9.2"),
                _ => assert_eq!(version, "17.0.0"),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every fleet file in `fleets/`, by name.
fn every_fleet() -> Vec<String> {
    let mut fleets: Vec<String> = std::fs::read_dir(repo().join("fleets"))
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".yaml").map(str::to_string)
        })
        .collect();
    fleets.sort();
    fleets
}

/// The `#cloud-config` documents of a user-data file: the file itself, or each such part of a
/// MIME multi-part one (`cloud-init schema` reads one document).
fn cloud_config_documents(text: &str) -> Vec<String> {
    let boundary = text
        .lines()
        .take_while(|line| !line.is_empty())
        .find_map(|line| {
            let (_, rest) = line.split_once("boundary=")?;
            Some(rest.trim_matches('"').to_string())
        });
    let Some(boundary) = boundary else {
        return vec![text.to_string()];
    };
    text.split(&format!("--{boundary}"))
        .filter_map(|part| {
            let (_, body) = part.split_once("\n\n")?;
            body.starts_with("#cloud-config").then(|| body.to_string())
        })
        .collect()
}

#[test]
fn cloud_init_accepts_every_rendered_bootstrap() {
    let cloud_init = Command::new("cloud-init").arg("--version").output();
    assert!(
        cloud_init.is_ok_and(|o| o.status.success()),
        "cloud-init is not installed: `apt-get install cloud-init` (CI's .ci/run does)"
    );
    let env = Env::new();
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    for fleet in every_fleet() {
        let out = render_to(
            &env,
            &format!("fleets/{fleet}.yaml"),
            &format!("out-{fleet}"),
        );
        for file in files_under(&out)
            .into_iter()
            .filter(|f| f.ends_with("var/lib/cloud/user-data.yaml"))
        {
            let text = std::fs::read_to_string(&file).unwrap();
            for (index, document) in cloud_config_documents(&text).into_iter().enumerate() {
                let part = out.join(format!("part-{}-{index}.yaml", checked.len()));
                std::fs::write(&part, &document).unwrap();
                let result = Command::new("cloud-init")
                    .args(["schema", "--config-file"])
                    .arg(&part)
                    .output()
                    .unwrap();
                if !result.status.success() {
                    failures.push(format!(
                        "cloud-init rejects {}:\n{}{}",
                        file.display(),
                        String::from_utf8_lossy(&result.stdout),
                        String::from_utf8_lossy(&result.stderr)
                    ));
                }
                checked.push(file.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // One bootstrap per machine: 4 builders, 6 managers and 2 helpers, 2 managers, 1 host.
    assert_eq!(checked.len(), 15, "{checked:#?}");
}

/// Edits one line of a fleet file and asserts that `fleet validate` refuses it with a
/// diagnostic at that line saying each of `expected`.
fn refused_at_its_line(fleet: &str, from: &str, to: &str, expected: &[&str]) {
    let env = Env::new();
    let text = std::fs::read_to_string(env.path().join(format!("fleets/{fleet}.yaml"))).unwrap();
    let edited = text.replacen(from, to, 1);
    assert_ne!(text, edited, "the edit `{to}` did not apply");
    let file = env.write("edited.yaml", &edited);
    // The edited line: the first that differs from the original.
    let line = (text.lines().zip(edited.lines()))
        .position(|(before, after)| before != after)
        .unwrap()
        + 1;
    let first_line = edited.lines().nth(line - 1).unwrap().trim();
    let run = env.fleet(&["validate", &file]).code(1);
    let stderr = &run.stderr;
    assert!(
        stderr.contains(&format!("[edited.yaml:{line}:")),
        "not located at line {line} (`{first_line}`):\n{stderr}"
    );
    for needle in expected {
        assert!(stderr.contains(needle), "missing `{needle}`:\n{stderr}");
    }
    // Rendering refuses it too: no file is written for a value its consumer would refuse.
    env.fleet(&["render", &file]).code(1);
}

#[test]
fn a_scrape_interval_prometheus_cannot_read_is_refused_at_its_line() {
    refused_at_its_line(
        "ci-shared-runners",
        "scrape_interval: 15s",
        "scrape_interval: every 15 seconds",
        &[
            "Invalid scrape interval `every 15 seconds`",
            "write a Prometheus duration",
        ],
    );
}

#[test]
fn a_shutdown_timeout_that_is_not_seconds_is_refused_at_its_line() {
    refused_at_its_line(
        "distribution",
        "shutdown_timeout: 432000",
        "shutdown_timeout: \"forever\"",
        &[
            "Wrong type for config.toml key `shutdown_timeout` in the global section",
            "the string `\"forever\"` where gitlab-runner reads a whole number of seconds",
        ],
    );
}

#[test]
fn a_negative_concurrent_is_refused_at_its_line() {
    refused_at_its_line(
        "distribution",
        "concurrent: 30",
        "concurrent: -1",
        &[
            "Invalid config.toml value for `concurrent` in the global section",
            "`-1` is below 1",
            "gitlab-runner exits with a fatal error when `concurrent` is below 1",
        ],
    );
}

#[test]
fn a_zero_concurrent_is_refused_at_its_line() {
    refused_at_its_line(
        "mdis-wb31",
        "concurrent: 4",
        "concurrent: 0",
        &[
            "Invalid config.toml value for `concurrent` in the global section",
            "`0` is below 1",
        ],
    );
}

#[test]
fn privileged_yes_is_a_string_and_refused_at_its_line() {
    refused_at_its_line(
        "distribution",
        "privileged: true",
        "privileged: yes",
        &[
            "Wrong type for config.toml key `privileged` in [runners.docker]",
            "the string `\"yes\"` where gitlab-runner reads a boolean",
            "write `privileged: true` or `privileged: false` without quotes",
        ],
    );
}

#[test]
fn a_misspelt_executor_is_refused_at_its_line_with_the_right_one() {
    refused_at_its_line(
        "mdis-wb31",
        "executor: shell",
        "executor: shel",
        &[
            "Invalid config.toml value for `executor` in [[runners]]",
            "`shel` is not one of gitlab-runner's `executor` values",
            "did you mean `shell`?",
        ],
    );
}

#[test]
fn a_url_without_a_scheme_is_refused_at_its_line() {
    refused_at_its_line(
        "mdis-wb31",
        "        url: https://codebase.helmholtz.cloud/",
        "        url: git.gfz.de",
        &[
            "Invalid config.toml value for `url` in [[runners]]",
            "`git.gfz.de` is not a URL with a scheme and a host",
            "write `url: https://git.gfz.de`",
        ],
    );
}

#[test]
fn two_runners_of_one_name_are_refused_at_the_second() {
    refused_at_its_line(
        "mdis-wb31",
        "      - name: wb31-mdis-blank-volume",
        "      - name: wb31-mdis-docker",
        &[
            "Duplicate runner name `wb31-mdis-docker`",
            "the first runner of this name",
        ],
    );
}

#[test]
fn a_federate_target_with_a_quote_lands_quoted_and_prometheus_reads_it() {
    let env = Env::new();
    let text = std::fs::read_to_string(env.path().join("fleets/ci-shared-runners.yaml"))
        .unwrap()
        .replace(
            "      scrape_interval: 15s\n",
            "      scrape_interval: 15s\n      federate: ['a\"b:9090']\n",
        );
    let file = env.write("quoted.yaml", &text);
    let out = render_to(&env, &file, "out-quoted");
    let config = out.join("prometheus-01-us-east1-c/etc/prometheus/prometheus.yml");
    let rendered = std::fs::read_to_string(&config).unwrap();
    assert!(
        rendered.contains("          - \"a\\\"b:9090\"\n"),
        "{rendered}"
    );
    promtool_accepts(&config);
}

#[test]
fn a_scrape_pattern_naming_one_manager_scrapes_exactly_that_one() {
    let env = Env::new();
    let text = std::fs::read_to_string(env.path().join("fleets/ci-shared-runners.yaml"))
        .unwrap()
        .replace(
            "      - manager.*-runners-manager-{index}\n",
            "      - manager.shared-runners-manager-{index}\n",
        );
    let file = env.write("narrow.yaml", &text);
    let wide = render_to(&env, "fleets/ci-shared-runners.yaml", "out-wide");
    let narrow = render_to(&env, &file, "out-narrow");
    let path = "prometheus-01-us-east1-c/etc/prometheus/prometheus.yml";
    let wide = std::fs::read_to_string(wide.join(path)).unwrap();
    let config = narrow.join(path);
    let narrow = std::fs::read_to_string(&config).unwrap();
    assert_ne!(wide, narrow, "narrowing `scrape:` changed nothing");
    // The runner-manager job keeps exactly that manager; the node job that manager and the
    // autoscaled machines of its template.
    assert!(
        narrow.contains("        regex: \"(shared-runners-manager-1)\"\n"),
        "{narrow}"
    );
    for other in [
        "gitlab-shared-runners-manager-1",
        "private-runners-manager-1",
        "shared-runners-manager-2",
    ] {
        assert!(!narrow.contains(other), "{other} is scraped:\n{narrow}");
        assert!(wide.contains(other) || other.ends_with("-2"), "{wide}");
    }
    promtool_accepts(&config);
}

#[test]
fn a_bad_value_in_the_second_runner_points_at_its_own_line() {
    // The first runner's `limit: 15` is fine; the diagnostic is at the second runner's line.
    refused_at_its_line(
        "distribution",
        "        limit: 10",
        "        limit: -5",
        &[
            "Invalid config.toml value for `limit` in [[runners]]",
            "`-5` is below 0",
        ],
    );
}

#[test]
fn a_machine_name_without_its_placeholder_is_refused_at_its_line() {
    refused_at_its_line(
        "distribution",
        "          MaxGrowthRate: 5\n",
        "          MaxGrowthRate: 5\n          MachineName: build\n",
        &[
            "Invalid config.toml value for `MachineName` in [runners.machine]",
            "`build` has no `%s`",
            "MachineName: \"build-%s\"",
        ],
    );
}
