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
