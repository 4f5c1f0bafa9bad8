//! `fleet validate`: every kind of problem, reported at its exact place, all at once.

use crate::support::Env;

const HEAD: &str = "fleet: f
clouds:
  gcp: {project: p, region: us-east1}
  aws: {region: us-east-1}
defaults:
  gcp: {zone: us-east1-c, image: ubuntu-2204, machine_type: n1-standard-2}
  aws: {zone: us-east-1a, image: ami-1, machine_type: m6g.large}
";

/// Validates `text` and returns stderr, asserting exit 1.
fn invalid(text: &str) -> String {
    let env = Env::new();
    let file = env.write("bad.yaml", text);
    let run = env.fleet(&["validate", &file]).code(1);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    run.stderr
}

/// Asserts one problem with this code is reported at `line:column` with this text.
#[track_caller]
fn expect(stderr: &str, code: &str, at: &str, text: &str) {
    let location = format!("[bad.yaml:{at}]");
    let found = stderr
        .split("Error: ")
        .any(|block| block.starts_with(code) && block.contains(&location) && block.contains(text));
    assert!(found, "no {code} at {at} saying {text:?} in:\n{stderr}");
}

#[test]
fn yaml_syntax_error_points_at_the_break() {
    let stderr = invalid("fleet: f\nmanagers:\n  m-1: {zone: [a, b}\n");
    assert!(stderr.contains("fleet::spec::yaml_syntax"), "{stderr}");
    assert!(stderr.contains("[bad.yaml:3:"), "{stderr}");
    assert!(stderr.contains("Invalid YAML"), "{stderr}");
}

#[test]
fn misspelt_key_suggests_the_right_one() {
    let stderr = invalid(&format!(
        "{HEAD}managers:\n  m-1:\n    cloud: gcp\n    machine_tyep: n1-standard-4\n"
    ));
    expect(
        &stderr,
        "fleet::spec::unknown_key",
        "11:5",
        "did you mean `machine_type`?",
    );
}

#[test]
fn missing_required_fields_are_named() {
    let stderr =
        invalid("clouds:\n  aws: {region: us-east-1}\npools:\n  p-{n}:\n    zone: us-east-1a\n");
    expect(
        &stderr,
        "fleet::spec::missing_field",
        "1:1",
        "Missing required field `fleet`",
    );
    expect(
        &stderr,
        "fleet::spec::missing_field",
        "4:3",
        "Missing required field `size`",
    );
    expect(
        &stderr,
        "fleet::spec::missing_field",
        "4:3",
        "Missing required field `machine_type`",
    );
}

#[test]
fn wrong_types_and_duplicate_keys() {
    let stderr = invalid(&format!(
        "{HEAD}managers:\n  m-1:\n    cloud: gcp\n    disk: {{size_gb: big}}\n    zone: us-east1-c\n    zone: us-east1-d\n"
    ));
    expect(
        &stderr,
        "fleet::spec::wrong_type",
        "11:21",
        "`big` is not a whole number",
    );
    expect(
        &stderr,
        "fleet::spec::duplicate_key",
        "13:5",
        "Duplicate key `zone`",
    );
}

#[test]
fn duplicate_names_after_expansion_show_both_places() {
    let stderr = invalid(&format!(
        "{HEAD}managers:\n  m-{{env}}:\n    matrix: {{env: [com], count: 2}}\n    cloud: gcp\nhelpers:\n  m-com:\n    cloud: gcp\n"
    ));
    expect(
        &stderr,
        "fleet::spec::duplicate_name",
        "9:3",
        "Duplicate resource `manager.m-com`",
    );
    expect(
        &stderr,
        "fleet::spec::duplicate_name",
        "13:3",
        "Two machines named `m-com` in gcp",
    );
    assert!(stderr.contains("first made here"), "{stderr}");
}

#[test]
fn dangling_references_suggest_what_exists() {
    let stderr = invalid(&format!(
        "{HEAD}templates:\n  amd64-gcp: {{cloud: gcp, machine_type: n1-highcpu-32}}\nmanagers:\n  m-1:\n    cloud: gcp\n    depends_on: [template.amd64-gpc]\n    runners:\n      - name: r\n        template: amd64-gpc\n"
    ));
    expect(
        &stderr,
        "fleet::spec::dangling_reference",
        "13:18",
        "did you mean `template.amd64-gcp`?",
    );
    expect(
        &stderr,
        "fleet::spec::dangling_reference",
        "16:19",
        "Unknown template `amd64-gpc`",
    );
}

#[test]
fn dependency_cycles_name_the_loop() {
    let stderr = invalid(&format!(
        "{HEAD}managers:\n  a:\n    cloud: gcp\n    depends_on: [helper.b]\nhelpers:\n  b:\n    cloud: gcp\n    depends_on: [manager.a]\n"
    ));
    expect(
        &stderr,
        "fleet::spec::dependency_cycle",
        "11:18",
        "manager.a → helper.b depend on each other",
    );
}

#[test]
fn catalog_facts_machine_types_zones_and_architectures() {
    let stderr = invalid(&format!(
        "{HEAD}templates:\n  arm64-gcp:\n    cloud: gcp\n    machine_type: t2a-standard-8\n  wrong-cloud:\n    cloud: gcp\n    machine_type: m6g.2xlarge\n  nowhere:\n    cloud: aws\n    zone: us-east-1z\nmanagers:\n  m-1:\n    cloud: gcp\n    zone: us-central1-a\n    runners:\n      - name: pi\n        template: arm64-gcp\n        arch: armv7\n"
    ));
    expect(
        &stderr,
        "fleet::catalog::machine_type_not_offered",
        "11:19",
        "us-central1, europe-west4, asia-southeast1",
    );
    expect(
        &stderr,
        "fleet::catalog::unknown_machine_type",
        "14:19",
        "`m6g.2xlarge` is an aws machine type",
    );
    expect(
        &stderr,
        "fleet::spec::unknown_zone",
        "17:11",
        "Unknown zone `us-east-1z`",
    );
    expect(
        &stderr,
        "fleet::catalog::architecture_mismatch",
        "25:15",
        "do not support the 32-bit Arm instruction set",
    );
}

#[test]
fn unknown_variables_are_underlined_inside_the_pattern() {
    let stderr = invalid(&format!(
        "{HEAD}managers:\n  m-{{env}}-{{colour}}:\n    matrix: {{env: [com], color: [blue]}}\n    cloud: gcp\n"
    ));
    expect(
        &stderr,
        "fleet::spec::unknown_variable",
        "9:11",
        "did you mean `{color}`?",
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let stderr = invalid(&format!(
        "{HEAD}bogus: 1\nmanagers:\n  m-1:\n    cloud: gcp\n    machine_type: n1-standard-99\n    zone: us-east9-z\n"
    ));
    assert!(
        stderr.contains("bad.yaml: 3 problems in the fleet file"),
        "{stderr}"
    );
    expect(
        &stderr,
        "fleet::spec::unknown_key",
        "8:1",
        "Unknown key `bogus`",
    );
    expect(
        &stderr,
        "fleet::catalog::unknown_machine_type",
        "12:19",
        "n1-standard-99",
    );
    expect(
        &stderr,
        "fleet::spec::unknown_zone",
        "13:11",
        "Unknown zone `us-east9-z`",
    );
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let env = Env::new();
    let run = env.fleet(&["validate", "fleets/nope.yaml"]).code(1);
    assert!(
        run.stderr
            .contains("Cannot read fleet file fleets/nope.yaml"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_real_fleets_are_valid() {
    let env = Env::new();
    for (file, summary) in [
        (
            "fleets/distribution.yaml",
            "5 resources: 2 managers, 3 templates",
        ),
        (
            "fleets/ci-shared-runners.yaml",
            "10 resources: 2 helpers, 6 managers, 2 templates",
        ),
        ("fleets/arm-builders.yaml", "4 resources: 4 pools"),
    ] {
        let run = env.fleet(&["validate", file]).ok();
        assert!(run.stdout.contains(summary), "{file}: {}", run.stdout);
    }
}

#[test]
fn networking_keys_are_checked_per_cloud() {
    let stderr = invalid(&format!(
        "{HEAD}managers:
  g-1:
    cloud: gcp
    network: Bad_Net
    subnet: projects/host/regions/us-east1/subnetworks/runners
    security_groups: [sg-0123456789abcdef0]
  a-1:
    cloud: aws
    network: default
    subnet: my-subnet
    security_groups: [sg-0123456789abcdef0, runners]
  r-1:
    cloud: gcp
    subnet: projects/h/regions/us-central1/subnetworks/x
  u-1:
    cloud: aws
    security_groups: [sg-0123456789ABCDEF0]
"
    ));
    let code = "fleet::spec::invalid_value";
    expect(&stderr, code, "11:14", "is not a network");
    expect(&stderr, code, "13:23", "GCE has no security groups");
    expect(&stderr, code, "16:14", "on EC2 the subnet decides the VPC");
    expect(&stderr, code, "17:13", "`my-subnet` is not a subnet id");
    expect(
        &stderr,
        code,
        "18:45",
        "`runners` is not a security group id",
    );
    // The shared-VPC subnetwork and the well-formed group id are fine.
    assert!(!stderr.contains("is not a subnetwork"), "{stderr}");
    expect(
        &stderr,
        code,
        "21:13",
        "is in region us-central1, not the machine's",
    );
    expect(
        &stderr,
        code,
        "24:23",
        "`sg-0123456789ABCDEF0` is not a security group id",
    );
    assert!(stderr.contains("7 problems"), "{stderr}");
    assert!(
        !stderr.contains("`sg-0123456789abcdef0` is not"),
        "{stderr}"
    );
}

// ---- A total loader: any bytes give located problems, never a panic, a truncation or an
// unbounded allocation.

/// Writes raw bytes (not necessarily UTF-8) into the scratch directory.
fn write_bytes(env: &Env, name: &str, bytes: &[u8]) -> String {
    std::fs::write(env.path().join(name), bytes).expect("write");
    name.to_string()
}

/// Runs `fleet ARGS…` with its address space capped at 512 MiB, as a CI runner with little
/// memory would: a file that made fleet allocate in proportion to a number in it aborts here.
fn fleet_capped(env: &Env, args: &[&str]) -> crate::support::Run {
    let inner = env.command(args, &[]);
    let mut capped = std::process::Command::new("sh");
    capped
        .arg("-c")
        .arg("ulimit -v 524288 && exec \"$0\" \"$@\"")
        .arg(inner.get_program())
        .args(inner.get_args())
        .current_dir(env.path());
    for (key, value) in inner.get_envs() {
        match value {
            Some(value) => capped.env(key, value),
            None => capped.env_remove(key),
        };
    }
    let output = capped.output().expect("run fleet under a memory cap");
    crate::support::Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        args: args.join(" "),
    }
}

#[test]
fn a_nul_byte_in_a_comment_is_located_and_plan_refuses_instead_of_deleting() {
    let env = Env::new();
    let original = std::fs::read_to_string(crate::support::repo().join("fleets/arm-builders.yaml"))
        .expect("read the fleet");
    let file = env.write("arm.yaml", &original);
    env.converge(&file);
    // A NUL in the comment above `image:` used to end the file there: the pool vanished, the
    // file was "valid" and the plan deleted the four builders.
    let broken = original.replacen("# An Ubuntu", "# An\0 Ubuntu", 1);
    let line = broken[..broken.find('\0').unwrap()].matches('\n').count() + 1;
    env.write("arm.yaml", &broken);
    let validate = env.fleet(&["validate", &file]).code(1);
    let location = format!("[arm.yaml:{line}:9]");
    assert!(
        validate.stderr.contains("fleet::spec::encoding") && validate.stderr.contains(&location),
        "{}",
        validate.stderr
    );
    assert!(
        validate.stderr.contains("A NUL byte"),
        "{}",
        validate.stderr
    );
    let plan = env.fleet(&["plan", &file]).code(1);
    assert!(plan.stderr.contains(&location), "{}", plan.stderr);
    assert!(!plan.stdout.contains("delete"), "{}", plan.stdout);
    let builders = env
        .sim_list()
        .into_iter()
        .filter(|object| object.to_string().contains("arm-builder-"))
        .count();
    assert_eq!(builders, 4, "the builders are still there");
}

#[test]
fn a_leading_byte_order_mark_is_skipped_and_locations_stay_exact() {
    let env = Env::new();
    let mut bytes = "\u{feff}".as_bytes().to_vec();
    bytes.extend_from_slice(format!("{HEAD}bogus: 1\n").as_bytes());
    let file = write_bytes(&env, "bad.yaml", &bytes);
    let run = env.fleet(&["validate", &file]).code(1);
    assert!(run.stderr.contains("1 problem"), "{}", run.stderr);
    expect(
        &run.stderr,
        "fleet::spec::unknown_key",
        "8:1",
        "Unknown key `bogus`",
    );
    // A valid file with a byte-order mark is valid.
    let mut bytes = "\u{feff}".as_bytes().to_vec();
    bytes.extend_from_slice(HEAD.as_bytes());
    write_bytes(&env, "good.yaml", &bytes);
    env.fleet(&["validate", "good.yaml"]).ok();
    // Anywhere else it is an invisible character in a value: refused where it is.
    let stderr = invalid(&format!(
        "{HEAD}managers:\n  m-1:\u{feff}\n    cloud: gcp\n"
    ));
    expect(
        &stderr,
        "fleet::spec::encoding",
        "9:7",
        "A byte-order mark inside the fleet file",
    );
}

#[test]
fn non_ascii_text_before_a_typo_keeps_its_location_exact() {
    // Comments and block scalars with multi-byte characters before the typo: every one used
    // to shift the location (or panic, when the shifted offset fell inside a character).
    let stderr = invalid(&format!(
        "# naïve café 🦀\n{HEAD}managers:\n  m-1:\n    description: |\n      Ünïcödé 東京 🦀🦀\n      more\n    cloud: gcp\n    machine_tyep: n1-standard-4 # é\n"
    ));
    expect(
        &stderr,
        "fleet::spec::unknown_key",
        "15:5",
        "did you mean `machine_type`?",
    );
    // On the same line, the column counts characters, as editors do.
    let stderr = invalid(&format!("{HEAD}managers: {{é-1: {{zöne: x}}}}\n"));
    expect(
        &stderr,
        "fleet::spec::unknown_key",
        "8:18",
        "Unknown key `zöne`",
    );
}

#[test]
fn invalid_utf8_is_located_at_its_byte() {
    let env = Env::new();
    let mut bytes = format!("{HEAD}# caf").into_bytes();
    bytes.push(0xE9);
    bytes.extend_from_slice(b" latin-1\nmanagers: {}\n");
    let file = write_bytes(&env, "bad.yaml", &bytes);
    let run = env.fleet(&["validate", &file]).code(1);
    expect(
        &run.stderr,
        "fleet::spec::encoding",
        "8:6",
        "byte 0xE9 is not UTF-8",
    );
    assert!(!run.stderr.contains("Cannot read"), "{}", run.stderr);
}

#[test]
fn a_70000_character_key_or_value_is_reported_without_a_panic() {
    let long = "k".repeat(70_000);
    // As a key it is a YAML syntax error at column 70,001; as a value, an invalid fleet name.
    for text in [
        format!("{HEAD}{long}: 1\n"),
        HEAD.replacen("fleet: f", &format!("fleet: {long}"), 1),
        format!("{HEAD}managers:\n  m-1: {{cloud: gcp, \"{long}\": 1}}\n"),
    ] {
        let stderr = invalid(&text);
        assert!(
            stderr.contains("bad.yaml:"),
            "{}",
            &stderr[..stderr.len().min(2000)]
        );
        assert!(
            stderr.len() < 10_000,
            "{} bytes of diagnostics",
            stderr.len()
        );
    }
}

#[test]
fn sizes_that_would_exhaust_memory_are_refused_under_a_memory_cap() {
    let env = Env::new();
    let mut bomb =
        String::from("fleet: f\na0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for level in 1..10 {
        let previous = format!("*a{}", level - 1);
        bomb.push_str(&format!(
            "a{level}: &a{level} [{}]\n",
            vec![previous; 9].join(", ")
        ));
    }
    assert!(bomb.len() < 700, "{} bytes", bomb.len());
    let cases = [
        ("bomb.yaml", bomb, "7:10", "Aliases copy more than 100000 YAML nodes"),
        (
            "size.yaml",
            format!("{HEAD}pools:\n  p-{{n}}:\n    size: 2147483648\n    cloud: aws\n"),
            "10:11",
            "`size` of 2147483648 is more than the limit of 10000 members",
        ),
        (
            "million.yaml",
            format!("{HEAD}pools:\n  p-{{n}}:\n    size: 1000000\n    cloud: aws\n"),
            "10:11",
            "`size` of 1000000 is more than the limit",
        ),
        (
            "count.yaml",
            format!("{HEAD}managers:\n  m-{{n}}:\n    matrix: {{count: 65536}}\n    cloud: gcp\n"),
            "10:21",
            "`matrix.count` of 65536 is more than the limit",
        ),
        (
            "matrix.yaml",
            format!(
                "{HEAD}helpers:\n  h-{{a}}-{{b}}-{{c}}:\n    matrix:\n      a: &v [{}]\n      b: *v\n      c: *v\n    cloud: gcp\n",
                (0..30).map(|i| format!("v{i}")).collect::<Vec<_>>().join(", ")
            ),
            "13:7",
            "The matrix makes more than 10000 combinations",
        ),
    ];
    for (name, text, at, message) in cases {
        let file = env.write(name, &text);
        let run = fleet_capped(&env, &["validate", &file]).code(1);
        let location = format!("[{name}:{at}]");
        assert!(
            run.stderr.contains("fleet::spec::limit")
                && run.stderr.contains(&location)
                && run.stderr.contains(message),
            "{name}: no limit at {at} saying {message:?} in:\n{}",
            run.stderr
        );
    }
}

#[test]
fn the_limit_options_raise_each_limit() {
    let env = Env::new();
    let pool = env.write(
        "pool.yaml",
        &format!("{HEAD}pools:\n  p-{{n}}:\n    size: 10001\n    cloud: aws\n"),
    );
    env.fleet(&["validate", &pool]).code(1);
    let run = env
        .fleet(&["--max-pool-size", "10001", "validate", &pool])
        .ok();
    assert!(run.stdout.contains("10001 resources"), "{}", run.stdout);

    let fleet = env.write(
        "fleet.yaml",
        &format!("{HEAD}managers:\n  m-{{a}}-{{n}}:\n    matrix: {{a: [x, y, z], count: 4}}\n    cloud: gcp\n"),
    );
    let run = env
        .fleet(&["--max-resources", "11", "validate", &fleet])
        .code(1);
    assert!(
        run.stderr
            .contains("The fleet expands to more than 11 resources")
            && run.stderr.contains("--max-resources N"),
        "{}",
        run.stderr
    );
    env.fleet(&["--max-resources", "12", "validate", &fleet])
        .ok();
    let run = env
        .fleet(&["--max-matrix", "2", "validate", &fleet])
        .code(1);
    assert!(
        run.stderr.contains("more than 2 combinations"),
        "{}",
        run.stderr
    );
    env.fleet(&["--max-matrix", "3", "validate", &fleet]).ok();

    // A file of 5 MiB, mostly comments: over the default of 4 MiB.
    let big = format!(
        "{HEAD}{}",
        "# padding padding padding padding padding padding\n".repeat(105_000)
    );
    let big_file = env.write("big.yaml", &big);
    let run = env.fleet(&["validate", &big_file]).code(1);
    assert!(
        run.stderr.contains("--max-file-size BYTES"),
        "{}",
        run.stderr
    );
    env.fleet(&["--max-file-size", "6000000", "validate", &big_file])
        .ok();

    let aliases = env.write(
        "aliases.yaml",
        &format!("{HEAD}managers:\n  m-1:\n    cloud: gcp\n    labels: &l {{a: b, c: d}}\n  m-2:\n    cloud: gcp\n    labels: *l\n"),
    );
    let run = env
        .fleet(&["--max-alias-nodes", "4", "validate", &aliases])
        .code(1);
    assert!(
        run.stderr.contains("more than 4 YAML nodes"),
        "{}",
        run.stderr
    );
    env.fleet(&["--max-alias-nodes", "5", "validate", &aliases])
        .ok();
}

#[test]
fn an_empty_or_malformed_secret_reference_is_refused_where_it_is() {
    let stderr = invalid(&format!(
        "{HEAD}managers:\n  m-1:\n    cloud: gcp\n    runner: {{version: \"16.11.1\"}}\n    runners:\n      - name: a\n        token: \"${{secret:}}\"\n      - name: b\n        token: \"x-${{secret:A B}}\"\n      - name: c\n        token: \"${{secret:OPEN\"\n"
    ));
    expect(
        &stderr,
        "fleet::spec::invalid_value",
        "14:17",
        "Empty secret name",
    );
    expect(
        &stderr,
        "fleet::spec::invalid_value",
        "16:19",
        "Invalid secret name `A B`",
    );
    expect(
        &stderr,
        "fleet::spec::invalid_value",
        "18:17",
        "Unclosed secret reference",
    );
    assert!(!stderr.contains("FLEET_SECRET_ "), "{stderr}");
}

#[test]
fn an_environment_value_missing_in_one_environment_is_reported_once_naming_it() {
    let stderr = invalid(&format!(
        "{HEAD}environments:\n  com: {{url: https://gitlab.com/}}\n  dev: {{other: x}}\nmanagers:\n  m-{{env}}-{{n}}:\n    matrix: {{env: [com, dev], count: 2}}\n    cloud: gcp\n    runner: {{version: \"16.11.1\"}}\n    runners:\n      - {{name: a, url: \"{{env.url}}\"}}\n      - {{name: b, url: \"{{env.url}}\"}}\n      - {{name: c, url: \"{{env.url}}\"}}\n"
    ));
    assert!(stderr.contains("1 problem in the fleet file"), "{stderr}");
    expect(
        &stderr,
        "fleet::spec::unknown_variable",
        "17:25",
        "`{env.url}` is not set for environment `dev`",
    );
    assert!(stderr.contains("also used on line 18, 19"), "{stderr}");
    assert!(
        stderr.contains("add `url: …` to `environments.dev`"),
        "{stderr}"
    );
}

#[test]
fn gcp_label_values_may_be_international_lowercase() {
    let env = Env::new();
    let good = env.write(
        "good.yaml",
        &format!("{HEAD}managers:\n  m-1:\n    cloud: gcp\n    labels: {{team: café, city: 東京, owner: straße_2, ñandú: x-1}}\n"),
    );
    env.fleet(&["validate", &good]).ok();
    let stderr = invalid(&format!(
        "{HEAD}managers:\n  m-1:\n    cloud: gcp\n    labels: {{team: Café, x: \"a b\", y: {}, Ünï: x}}\n",
        "é".repeat(64)
    ));
    expect(
        &stderr,
        "fleet::spec::invalid_value",
        "11:20",
        "Invalid label value `Café`",
    );
    expect(
        &stderr,
        "fleet::spec::invalid_value",
        "11:29",
        "Invalid label value `a b`",
    );
    expect(
        &stderr,
        "fleet::spec::invalid_value",
        "11:39",
        "Invalid label value",
    );
    expect(
        &stderr,
        "fleet::spec::invalid_value",
        "11:105",
        "Invalid label key `Ünï`",
    );
}

#[test]
fn identity_keys_are_checked_for_shape_and_cloud() {
    let stderr = invalid(&format!(
        "{HEAD}managers:
  a-1:
    cloud: aws
    instance_profile: ci runner
  a-2:
    cloud: aws
    instance_profile: arn:aws:iam::1234:instance-profile/ci
  a-3:
    cloud: aws
    service_account: default
    scopes: [cloud-platform]
  g-1:
    cloud: gcp
    service_account: ci-runner@my-project.example.com
  g-2:
    cloud: gcp
    instance_profile: ci-runner
  g-3:
    cloud: gcp
    scopes: [cloud-platform]
  g-4:
    cloud: gcp
    service_account: default
    scopes: [cloud-platform, Cloud-Platform]
  g-5:
    cloud: gcp
    service_account: 123-compute@developer.gserviceaccount.com
  ok-1:
    cloud: gcp
    service_account: ci-runner@my-project.iam.gserviceaccount.com
  ok-2:
    cloud: aws
    instance_profile: arn:aws:iam::123456789012:instance-profile/ci/ci-runner
"
    ));
    let code = "fleet::spec::invalid_value";
    expect(
        &stderr,
        code,
        "11:23",
        "`ci runner` is not an instance profile name",
    );
    expect(&stderr, code, "14:23", "is not an instance profile ARN");
    expect(&stderr, code, "17:22", "EC2 has no `service_account`");
    assert!(stderr.contains("`instance_profile: NAME`"), "{stderr}");
    expect(&stderr, code, "18:14", "EC2 has no `scopes`");
    expect(&stderr, code, "21:22", "is not a service account email");
    expect(&stderr, code, "24:23", "GCE has no `instance_profile`");
    assert!(
        stderr.contains("`service_account: NAME@PROJECT.iam.gserviceaccount.com`"),
        "{stderr}"
    );
    expect(
        &stderr,
        code,
        "27:14",
        "`scopes` without a `service_account`",
    );
    expect(&stderr, code, "31:30", "is not an OAuth scope");
    expect(
        &stderr,
        code,
        "34:22",
        "is the Compute Engine default account",
    );
    assert!(stderr.contains("9 problems"), "{stderr}");
}

#[test]
fn identity_keys_in_the_defaults_of_the_wrong_cloud_are_refused_where_they_are_written() {
    let stderr = invalid(
        "fleet: f
clouds:
  gcp: {project: p, region: us-east1}
  aws: {region: us-east-1}
defaults:
  gcp: {zone: us-east1-c, image: ubuntu-2204, machine_type: n1-standard-2, instance_profile: ci}
  aws: {zone: us-east-1a, image: ami-1, machine_type: m6g.large, service_account: default}
managers:
  g-1: {cloud: gcp}
  g-2: {cloud: gcp}
  a-1: {cloud: aws}
",
    );
    let code = "fleet::spec::invalid_value";
    expect(&stderr, code, "6:94", "GCE has no `instance_profile`");
    expect(&stderr, code, "7:83", "EC2 has no `service_account`");
    // Two resources inherit the same default: one problem, at the default.
    assert!(stderr.contains("2 problems"), "{stderr}");
}

#[test]
fn a_misspelt_required_key_is_one_problem_not_also_a_missing_one() {
    let stderr = invalid(
        "fleet: f
clouds:
  gcp: {project: p, region: us-east1}
defaults:
  gcp: {zone: us-east1-c, image: i}
managers:
  m-1:
    machine_typ: n1-standard-2
pools:
  p:
    machine_type: n1-standard-2
    siz: 3
",
    );
    assert!(stderr.contains("2 problems in the fleet file"), "{stderr}");
    assert!(stderr.contains("did you mean `machine_type`?"), "{stderr}");
    assert!(stderr.contains("did you mean `size`?"), "{stderr}");
    assert!(!stderr.contains("Missing required field"), "{stderr}");
}

#[test]
fn a_gce_manager_with_secrets_needs_a_service_account_with_the_cloud_platform_scope() {
    let manager = |identity: &str| {
        format!(
            "{HEAD}managers:\n  m-1:\n    cloud: gcp\n{identity}    runner: {{version: \"16.11.1\"}}\n    runners:\n      - name: r\n        url: https://gitlab.com/\n        token: \"${{secret:M_TOKEN}}\"\n        executor: shell\n"
        )
    };
    // No account: the watcher would have no token to read Secret Manager with.
    let stderr = invalid(&manager(""));
    expect(
        &stderr,
        "fleet::spec::invalid_value",
        "9:3",
        "`m-1` uses M_TOKEN but runs as no service account",
    );
    assert!(stderr.contains("an account of the managers'"), "{stderr}");
    // An account whose scopes Secret Manager does not take.
    let stderr = invalid(&manager(
        "    service_account: fleet-manager@my-project.iam.gserviceaccount.com\n    scopes: [logging.write]\n",
    ));
    expect(
        &stderr,
        "fleet::spec::invalid_value",
        "9:3",
        "its scopes leave out `cloud-platform`",
    );
    // A malformed account is that one problem, not also "runs as no service account".
    let stderr = invalid(&manager("    service_account: Fleet Manager\n"));
    expect(
        &stderr,
        "fleet::spec::invalid_value",
        "11:22",
        "is not a service account email",
    );
    assert!(stderr.contains("1 problem in the fleet file"), "{stderr}");
    assert!(!stderr.contains("runs as no service account"), "{stderr}");
    // With both, it is valid.
    let env = Env::new();
    let file = env.write(
        "good.yaml",
        &manager("    service_account: fleet-manager@my-project.iam.gserviceaccount.com\n"),
    );
    env.fleet(&["validate", &file]).ok();
}

#[test]
fn two_pool_patterns_that_name_one_pool_are_refused() {
    // `arm-builder-{n}` and `arm-builder{n}` are both pool `arm-builder`: a plan would show
    // one pool and let one member stand for the other's.
    let stderr = invalid(&format!(
        "{HEAD}pools:\n  arm-builder-{{n}}:\n    cloud: aws\n    size: 2\n  arm-builder{{n}}:\n    cloud: aws\n    size: 2\n    machine_type: m6g.xlarge\n"
    ));
    expect(
        &stderr,
        "fleet::spec::duplicate_name",
        "12:3",
        "Two pools named `arm-builder`",
    );
    assert_eq!(stderr.matches("Two pools named").count(), 1, "{stderr}");
}
