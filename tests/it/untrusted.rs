//! Fleet files are untrusted input: a merge request may edit them, and the pipeline's
//! `fleet plan` runs with the cloud's credentials. A fleet file cannot choose where those
//! credentials go.

use std::io::ErrorKind;
use std::net::TcpListener;

use crate::support::Env;

/// A fleet file whose `clouds.SECTION` names `endpoint`.
fn fleet_naming(endpoint: &str) -> String {
    format!(
        "fleet: f
clouds:
  gcp: {{project: p, region: us-east1, endpoint: \"{endpoint}\"}}
  aws: {{region: us-east-1, endpoint: \"{endpoint}\"}}
defaults:
  gcp: {{zone: us-east1-c, image: ubuntu-2204, machine_type: n1-standard-2}}
  aws: {{zone: us-east-1a, image: ami-1, machine_type: m6g.large}}
helpers:
  prometheus-1: {{cloud: gcp}}
  prometheus-2: {{cloud: aws}}
"
    )
}

/// A loopback listener standing for the host a hostile fleet file names; it records whether
/// anything connected.
struct Trap(TcpListener);

impl Trap {
    fn new() -> Trap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener.set_nonblocking(true).expect("non-blocking");
        Trap(listener)
    }

    fn url(&self) -> String {
        format!("http://{}", self.0.local_addr().expect("local address"))
    }

    /// Whether a connection is waiting: the kernel completes the handshake and queues it
    /// even though nobody accepts, so any attempt by fleet is seen here after it exits.
    fn was_contacted(&self) -> bool {
        match self.0.accept() {
            Ok(_) => true,
            Err(error) if error.kind() == ErrorKind::WouldBlock => false,
            Err(error) => panic!("accept: {error}"),
        }
    }
}

#[test]
fn an_endpoint_in_a_fleet_file_is_refused_at_its_line_with_the_flag_to_use() {
    let env = Env::new();
    let file = env.write(
        "hostile.yaml",
        &fleet_naming("http://attacker.example:8080"),
    );
    let run = env.fleet(&["validate", &file]).code(1);
    for (line, flag) in [("3:", "--gcp-endpoint"), ("4:", "--aws-endpoint")] {
        assert!(
            run.stderr.contains(&format!("[hostile.yaml:{line}")),
            "no diagnostic on line {line}:\n{}",
            run.stderr
        );
        assert!(
            run.stderr.contains(flag),
            "the help names {flag}:\n{}",
            run.stderr
        );
    }
    assert!(
        run.stderr
            .contains("An API endpoint cannot be set in a fleet file"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_fleet_file_cannot_make_fleet_contact_a_host_it_names() {
    let trap = Trap::new();
    // Where the operator's environment points: the only host fleet may reach (also on
    // loopback, so that nothing in this test can leave the machine whatever fleet does).
    let allowed = Trap::new();
    let env = Env::new();
    let file = env.write("hostile.yaml", &fleet_naming(&trap.url()));
    // With live clouds and credentials in the environment: the command that a merge-request
    // pipeline runs.
    for command in ["plan", "apply"] {
        let run = env.fleet_with(
            &["--cloud", "live", command, &file],
            &[
                ("FLEET_GCP_ENDPOINT", allowed.url().as_str()),
                ("AWS_ENDPOINT_URL", allowed.url().as_str()),
                ("FLEET_GCP_ANONYMOUS", "1"),
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ],
        );
        assert_ne!(run.code, 0, "{command} must refuse:\n{}", run.stderr);
        assert!(
            run.stderr
                .contains("An API endpoint cannot be set in a fleet file"),
            "{command}:\n{}",
            run.stderr
        );
    }
    assert!(
        !trap.was_contacted(),
        "fleet connected to the host the fleet file named"
    );
}

#[test]
fn a_host_name_cannot_make_render_write_outside_its_output_directory() {
    let env = Env::new();
    let wb31 = std::fs::read_to_string(env.path().join("fleets/mdis-wb31.yaml")).unwrap();
    for hostile in ["../../escaped", "/tmp/elsewhere", "a/../../b"] {
        let text = wb31.replace("\n  wb31:\n", &format!("\n  \"{hostile}\":\n"));
        assert_ne!(text, wb31, "the host key was not replaced");
        let file = env.write("hostile.yaml", &text);
        let run = env.fleet_with(
            &["render", &file, "-o", "out"],
            &[("FLEET_SECRETS_FILE", "secrets.env")],
        );
        assert_eq!(run.code, 1, "{hostile}:\n{}\n{}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains("Invalid host name"),
            "{hostile}:\n{}",
            run.stderr
        );
        assert!(!env.path().join("out").exists(), "render wrote something");
    }
    assert!(!env.path().join("../escaped").exists());
    assert!(!std::path::Path::new("/tmp/elsewhere").exists());
}

#[test]
fn a_fleet_file_that_is_a_link_is_refused_without_quoting_what_it_points_at() {
    let env = Env::new();
    // Stands for ~/.aws/credentials or a service-account key on the CI machine.
    env.write(
        "credentials",
        "[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY\n",
    );
    std::os::unix::fs::symlink("../credentials", env.path().join("fleets/innocent.yaml")).unwrap();
    std::fs::create_dir(env.path().join("real")).unwrap();
    std::fs::copy(
        env.path().join("fleets/distribution.yaml"),
        env.path().join("real/distribution.yaml"),
    )
    .unwrap();
    std::os::unix::fs::symlink("real", env.path().join("linked-dir")).unwrap();
    for file in ["fleets/innocent.yaml", "linked-dir/distribution.yaml"] {
        for command in ["validate", "plan"] {
            let run = env.fleet(&[command, file]).code(1);
            let all = format!("{}{}", run.stdout, run.stderr);
            assert!(
                all.contains("is read through a symbolic link"),
                "{command} {file}:\n{all}"
            );
            assert!(!all.contains("wJalr"), "the linked file was quoted:\n{all}");
            assert!(
                !all.contains("AKIDEXAMPLE"),
                "the linked file was quoted:\n{all}"
            );
        }
    }
}

#[test]
fn a_table_key_cannot_add_lines_to_config_toml() {
    let env = Env::new();
    let file = env.write(
        "keys.yaml",
        r#"fleet: mdis
hosts:
  h1:
    address: h1.example.org
    runner:
      version: "16.0.2"
      concurrent: 4
    runners:
      - name: r1
        url: https://git.example.org/
        executor: kubernetes
        kubernetes:
          "a]\n  injected = 1\n[[runners]]\n  name = \"r2\"\n  url = \"https://evil.example/\"\n  executor = \"shell\"\n[runners.kubernetes.z":
            k: v
"#,
    );
    env.fleet(&["render", &file, "-o", "out"]).ok();
    let text =
        std::fs::read_to_string(env.path().join("out/h1/etc/gitlab-runner/config.toml")).unwrap();
    let parsed: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let runners = parsed["runners"].as_array().expect("[[runners]]");
    assert_eq!(runners.len(), 1, "a key added a runner:\n{text}");
    assert_eq!(runners[0]["executor"].as_str(), Some("kubernetes"));
    assert!(parsed.get("injected").is_none(), "{text}");
    let kubernetes = runners[0]["kubernetes"]
        .as_table()
        .expect("[runners.kubernetes]");
    assert_eq!(kubernetes.len(), 1, "the key stays one key:\n{text}");
}

#[test]
fn a_file_of_thousands_of_problems_shows_the_first_hundred_and_counts_the_rest() {
    let env = Env::new();
    let keys: String = (0..20_000)
        .map(|i| format!("unknown_key_{i}: 1\n"))
        .collect();
    let file = env.write("many.yaml", &format!("fleet: f\n{keys}"));
    let run = env.fleet(&["validate", &file]).code(1);
    assert!(
        run.stderr
            .contains("20000 problems in the fleet file; the first 100 are shown"),
        "{}",
        &run.stderr[..run.stderr.len().min(2000)]
    );
    assert_eq!(run.stderr.matches("fleet::spec::unknown_key").count(), 100);
    assert!(
        run.stderr.contains("[many.yaml:2:1]"),
        "the first problem first"
    );
}

/// Runs `fleet validate FILE` with 512 MiB of address space, asserts it exits 1 (a
/// diagnostic, not an abort) and returns its standard error.
#[track_caller]
fn invalid_under_a_memory_cap(env: &Env, file: &str) -> String {
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 524288 && exec \"$0\" validate \"$1\"")
        .arg(env!("CARGO_BIN_EXE_fleet"))
        .arg(file)
        .current_dir(env.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("run fleet under a memory cap");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    stderr
}

/// Runs fleet with `args` under `kib` KiB of address space, in the sim, and returns its exit
/// code and standard error.
fn capped(env: &Env, kib: u64, args: &[&str]) -> (Option<i32>, String) {
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {kib} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_fleet"))
        .args(["--sim-dir", "sim-state"])
        .args(args)
        .current_dir(env.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("run fleet under a memory cap");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn apply_reads_what_it_is_given_within_bounds_and_locates_what_is_not_text() {
    let env = Env::new();
    // Not UTF-8: the same located diagnostic `fleet plan` gives, not an I/O error.
    let bad = env.path().join("latin1.yaml");
    std::fs::write(
        &bad,
        b"fleet: f\nclouds:\n  gcp: {project: p, region: us-east1}\n# caf\xe9\n",
    )
    .unwrap();
    let (code, stderr) = capped(&env, 524_288, &["apply", "latin1.yaml", "--auto-approve"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("Not UTF-8"), "{stderr}");
    assert!(stderr.contains("latin1.yaml:4:6"), "{stderr}");
    // A device that never ends is read only up to the fleet-file limit.
    let (code, stderr) = capped(&env, 524_288, &["apply", "/dev/zero", "--auto-approve"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("problem in the fleet file"), "{stderr}");
    // JSON past the saved-plan limit (a sparse file: no disk is used) is refused by its
    // size, before it is parsed, and so is it as the reviewed plan of --expect-changes.
    let huge = env.path().join("huge.json");
    let file = std::fs::File::create(&huge).unwrap();
    std::io::Write::write_all(&mut &file, b"{").unwrap();
    file.set_len(600 * 1024 * 1024).unwrap();
    let (code, stderr) = capped(&env, 1_572_864, &["apply", "huge.json", "--auto-approve"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("larger than 512 MiB"), "{stderr}");
    assert!(
        stderr.contains("the most fleet reads as a saved plan"),
        "{stderr}"
    );
    let (code, stderr) = capped(&env, 1_572_864, &["ci", "digest", "huge.json"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("larger than 512 MiB"), "{stderr}");
}

#[test]
fn an_alias_bomb_of_long_strings_is_refused_under_a_memory_cap() {
    // Few nodes, many bytes: one megabyte string aliased 90,000 times (90 GB when copied).
    let env = Env::new();
    let aliases = vec!["*a"; 90_000].join(", ");
    let text = format!(
        "fleet: f\nx: &a \"{}\"\ny: [{aliases}]\n",
        "A".repeat(1_000_000)
    );
    let file = env.write("strings.yaml", &text);
    let stderr = invalid_under_a_memory_cap(&env, &file);
    assert!(stderr.contains("Aliases copy more than"), "{stderr}");
    assert!(
        stderr.contains("strings.yaml:3:"),
        "located at the alias: {stderr}"
    );
}

#[test]
fn a_long_value_in_a_large_matrix_is_refused_under_a_memory_cap() {
    // A 1 MB file whose value is copied into each of 10,000 machines: 10 GB expanded.
    let env = Env::new();
    let text = format!(
        "fleet: f
clouds:
  gcp: {{project: p, region: us-east1}}
defaults:
  gcp: {{zone: us-east1-c, image: i, machine_type: n1-standard-2}}
managers:
  m-{{n}}:
    matrix: {{count: 10000}}
    runner: {{version: \"16.11.1\"}}
    runners:
      - name: a
        url: https://gitlab.example.com/
        executor: shell
        environment: [\"X={}\"]
",
        "B".repeat(1_000_000)
    );
    let file = env.write("fanout.yaml", &text);
    let stderr = invalid_under_a_memory_cap(&env, &file);
    assert!(stderr.contains("1 problem in the fleet file"), "{stderr}");
    assert!(
        stderr.contains("The fleet's values expand to more than 128 MiB"),
        "{stderr}"
    );
    assert!(
        stderr.contains("fanout.yaml:") && stderr.contains("expansion stopped here"),
        "located where expansion stopped: {stderr}"
    );
}

#[test]
fn values_from_a_fleet_file_cannot_add_markup_to_the_merge_request_comment() {
    let env = Env::new();
    let fleet = |image: &str| {
        format!(
            "fleet: f
clouds:
  gcp: {{project: p, region: us-east1}}
defaults:
  gcp: {{zone: us-east1-c, machine_type: n1-standard-2}}
helpers:
  prometheus-1:
    image: \"{image}\"
"
        )
    };
    let file = env.write("f.yaml", &fleet("ubuntu-2204"));
    env.converge(&file);
    let hostile = "x</details><img src=https://evil.example/p.png> [click](https://evil.example) `a` | b **bold**";
    env.write("f.yaml", &fleet(hostile));
    let run = env.fleet(&["plan", &file, "--format", "markdown"]).ok();
    let md = run.stdout;
    assert!(md.contains("image"), "the change is shown:\n{md}");
    assert!(!md.contains("<img"), "an image tag got through:\n{md}");
    assert!(
        !md.contains(" [click](") && md.contains("\\[click\\]"),
        "a link got through:\n{md}"
    );
    assert!(!md.contains("**bold**"), "markup got through:\n{md}");
    assert_eq!(
        md.matches("<details>").count(),
        md.matches("</details>").count(),
        "a section was closed early:\n{md}"
    );
    for line in md.lines().filter(|line| line.starts_with("| `")) {
        // Six columns: a `|` in a value is escaped, never a new cell.
        let cells = line.replace("\\|", "").matches('|').count();
        assert_eq!(cells, 7, "{line}");
    }
}

#[test]
fn files_that_may_hold_secret_values_are_the_owners_only() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.converge("fleets/distribution.yaml");
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let mut objects = 0;
    let mut stack = vec![env.path().join("sim-state")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "json")
                && !path.components().any(|c| c.as_os_str() == "state")
            {
                objects += 1;
                assert_eq!(mode(&path), 0o600, "{}", path.display());
            }
        }
    }
    assert!(
        objects > 5,
        "the simulated cloud's objects were found ({objects})"
    );
    env.fleet(&[
        "render",
        "fleets/mdis-wb31.yaml",
        "-o",
        "out",
        "--reveal-secrets",
    ])
    .ok();
    let config = env.path().join("out/wb31/etc/gitlab-runner/config.toml");
    assert_eq!(mode(&config), 0o600, "revealed config.toml");
}
