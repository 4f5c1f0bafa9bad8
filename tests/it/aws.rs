//! The live AWS provider against moto, the EC2 API emulator (`moto_server` on loopback).
//!
//! Each test starts its own `moto_server` on a free port and runs the real `fleet` binary
//! with `--cloud live --only-cloud aws` and the endpoint overridden. Changes made "by hand"
//! go through the EC2 SDK directly. API calls are counted by the provider (`--stats`) and
//! asserted per scenario.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{
    Filter, InstanceStateName, InstanceType, ResourceType, Tag, TagSpecification,
};

use crate::fault_proxy::{Fault, FaultProxy};
use crate::support::{actions_of, reasons_of, Env, Run};

/// A `moto_server` on a free loopback port, killed on drop.
pub(crate) struct Moto {
    child: Child,
    pub(crate) url: String,
    /// Where moto's request recorder writes, when a test turns it on.
    _recordings: tempfile::TempDir,
}

impl Moto {
    pub(crate) fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let recordings = tempfile::tempdir().expect("scratch directory");
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env(
                "MOTO_RECORDER_FILEPATH",
                recordings.path().join("requests.jsonl"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start moto_server ({error}); the AWS tests need the EC2 emulator: \
                     pip install 'moto[server]'"
                )
            });
        let mut moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _recordings: recordings,
        };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!(
                    "moto_server exited with {status}; is it installed? pip install 'moto[server]'"
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "moto_server did not answer on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }
}

impl Moto {
    /// Calls moto's own API (`/moto-api/...`) and returns the body of its answer.
    pub(crate) fn api(&self, method: &str, path: &str) -> String {
        let address = self.url.trim_start_matches("http://");
        crate::loopback::request(address, method, path).1
    }

    /// The SSM requests moto receives while `during` runs: each one's target, JSON body and
    /// the request as recorded (headers, method, url, body as text).
    pub(crate) fn ssm_requests_during<T>(
        &self,
        during: impl FnOnce() -> T,
    ) -> (T, Vec<(String, serde_json::Value, serde_json::Value)>) {
        self.api("POST", "/moto-api/recorder/reset-recording");
        self.api("POST", "/moto-api/recorder/start-recording");
        let out = during();
        self.api("POST", "/moto-api/recorder/stop-recording");
        let recording = self.api("GET", "/moto-api/recorder/download-recording");
        let requests = recording
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|mut entry| {
                let headers = entry["headers"].as_object()?;
                let target = headers
                    .iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case("x-amz-target"))?
                    .1
                    .as_str()?
                    .strip_prefix("AmazonSSM.")?
                    .to_string();
                let body = entry["body"].as_str().unwrap_or_default();
                let body = if entry["body_encoded"].as_bool() == Some(true) {
                    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body)
                        .ok()
                        .and_then(|bytes| String::from_utf8(bytes).ok())
                        .unwrap_or_default()
                } else {
                    body.to_string()
                };
                let json = serde_json::from_str(&body)
                    .unwrap_or_else(|_| serde_json::Value::String(entry.to_string()));
                entry["body"] = body.into();
                Some((target, json, entry))
            })
            .collect();
        (out, requests)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The variables that point fleet (and the SDK) at moto and nowhere else.
fn aws_vars(moto: &Moto) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", moto.url.clone()),
        ("AWS_ACCESS_KEY_ID", "test".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        // Never look for an instance role or a profile of the machine running the tests.
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ("AWS_CONFIG_FILE", "/nonexistent/aws-config".to_string()),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aws-credentials".to_string(),
        ),
    ]
}

/// A scratch directory whose runs talk to `moto`.
pub(crate) fn env_for(moto: &Moto) -> Env {
    let mut env = Env::new();
    for (key, value) in aws_vars(moto) {
        env = env.with_env(key, &value);
    }
    env
}

/// A scratch directory whose runs talk to moto through a fault-injecting proxy.
pub(crate) fn env_through(moto: &Moto, proxy: &FaultProxy) -> Env {
    env_for(moto).with_env("AWS_ENDPOINT_URL", &proxy.url())
}

/// `fleet --cloud live --only-cloud aws --stats ARGS…`.
fn live(env: &Env, args: &[&str]) -> Run {
    let mut all = vec!["--cloud", "live", "--only-cloud", "aws", "--stats"];
    all.extend_from_slice(args);
    env.fleet(&all)
}

fn plan_json(env: &Env, file: &str) -> serde_json::Value {
    live(env, &["plan", file, "--format", "json"]).ok().json()
}

/// Applies and asserts that fleet verified the result.
#[track_caller]
pub(crate) fn converge(env: &Env, file: &str) -> Run {
    live(env, &["apply", file, "--auto-approve"]).verified()
}

/// Asserts that a plan finds nothing to do.
#[track_caller]
fn assert_no_changes(env: &Env, file: &str) -> Run {
    live(env, &["plan", file, "--detailed-exitcode"]).unchanged()
}

/// The `API calls: {…}` that `--stats` printed.
fn calls(run: &Run) -> serde_json::Map<String, serde_json::Value> {
    let line = run
        .stderr
        .lines()
        .find_map(|line| line.split_once("API calls: ").map(|(_, json)| json))
        .unwrap_or_else(|| panic!("no API call counts in:\n{}", run.stderr));
    match serde_json::from_str(line) {
        Ok(serde_json::Value::Object(map)) => map,
        other => panic!("API calls are not a JSON object: {other:?}"),
    }
}

fn count(calls: &serde_json::Map<String, serde_json::Value>, operation: &str) -> u64 {
    calls.get(operation).and_then(|v| v.as_u64()).unwrap_or(0)
}

fn total(calls: &serde_json::Map<String, serde_json::Value>) -> u64 {
    calls.values().filter_map(|v| v.as_u64()).sum()
}

/// The EC2 API as a person at the console would use it.
pub(crate) struct Ec2 {
    pub(crate) runtime: tokio::runtime::Runtime,
    pub(crate) client: aws_sdk_ec2::Client,
}

/// One instance as the tests look at it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) id: String,
    name: String,
    state: String,
    tags: std::collections::BTreeMap<String, String>,
}

impl Ec2 {
    pub(crate) fn new(moto: &Moto) -> Ec2 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .region(aws_sdk_ec2::config::Region::new("us-east-1"))
            .endpoint_url(&moto.url)
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .build();
        Ec2 {
            runtime,
            client: aws_sdk_ec2::Client::from_conf(config),
        }
    }

    /// Every instance with `fleet=<fleet>`, terminated ones included.
    fn instances(&self, fleet: &str) -> Vec<Seen> {
        let output = self
            .runtime
            .block_on(
                self.client
                    .describe_instances()
                    .filters(Filter::builder().name("tag:fleet").values(fleet).build())
                    .max_results(1000)
                    .send(),
            )
            .expect("DescribeInstances");
        assert!(output.next_token().is_none(), "more than one page");
        let mut seen: Vec<Seen> = output
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .map(|i| {
                let tags: std::collections::BTreeMap<String, String> = i
                    .tags()
                    .iter()
                    .map(|t| {
                        (
                            t.key().unwrap_or_default().to_string(),
                            t.value().unwrap_or_default().to_string(),
                        )
                    })
                    .collect();
                Seen {
                    id: i.instance_id().unwrap_or_default().to_string(),
                    name: tags.get("Name").cloned().unwrap_or_default(),
                    state: i
                        .state()
                        .and_then(|s| s.name())
                        .map(|n| n.as_str().to_string())
                        .unwrap_or_default(),
                    tags,
                }
            })
            .collect();
        seen.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        seen
    }

    /// Instances that are not terminated.
    pub(crate) fn alive(&self, fleet: &str) -> Vec<Seen> {
        self.instances(fleet)
            .into_iter()
            .filter(|i| i.state != InstanceStateName::Terminated.as_str())
            .collect()
    }

    pub(crate) fn by_name(&self, fleet: &str, name: &str) -> Seen {
        let alive = self.alive(fleet);
        let mut matching: Vec<Seen> = alive.iter().filter(|i| i.name == name).cloned().collect();
        assert_eq!(matching.len(), 1, "one live {name} expected: {alive:#?}");
        matching.remove(0)
    }

    fn stop(&self, id: &str) {
        self.runtime
            .block_on(self.client.stop_instances().instance_ids(id).send())
            .expect("StopInstances");
    }

    fn set_tag(&self, id: &str, key: &str, value: &str) {
        self.runtime
            .block_on(
                self.client
                    .create_tags()
                    .resources(id)
                    .tags(Tag::builder().key(key).value(value).build())
                    .send(),
            )
            .expect("CreateTags");
    }

    /// Starts an instance by hand with the given tags (and the SDK's own `ClientToken`).
    fn run_tagged(&self, tags: &[(&str, &str)]) -> String {
        self.run_tagged_with_token("", tags)
    }

    /// Starts an instance with the given tags and `ClientToken` (the SDK's own when empty).
    fn run_tagged_with_token(&self, token: &str, tags: &[(&str, &str)]) -> String {
        let spec = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .set_tags(Some(
                tags.iter()
                    .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
                    .collect(),
            ))
            .build();
        let output = self
            .runtime
            .block_on(
                self.client
                    .run_instances()
                    .image_id("ami-0c9f35b1b63e7d2a4")
                    .instance_type(InstanceType::M6gLarge)
                    .min_count(1)
                    .max_count(1)
                    .set_client_token((!token.is_empty()).then(|| token.to_string()))
                    .tag_specifications(spec)
                    .send(),
            )
            .expect("RunInstances");
        output.instances()[0]
            .instance_id()
            .unwrap_or_default()
            .to_string()
    }

    /// (version number, description, default) of a launch template's versions.
    fn template_versions(&self, name: &str) -> Vec<(i64, String, bool)> {
        let output = self
            .runtime
            .block_on(
                self.client
                    .describe_launch_template_versions()
                    .launch_template_name(name)
                    .send(),
            )
            .expect("DescribeLaunchTemplateVersions");
        output
            .launch_template_versions()
            .iter()
            .map(|v| {
                (
                    v.version_number().unwrap_or_default(),
                    v.version_description().unwrap_or_default().to_string(),
                    v.default_version().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The tags of a launch template, `None` when it does not exist. Read with
    /// `DescribeTags`: moto's `DescribeLaunchTemplates` shows only the tags it was created with.
    fn template_tags(&self, name: &str) -> Option<std::collections::BTreeMap<String, String>> {
        let output = self
            .runtime
            .block_on(
                self.client
                    .describe_launch_templates()
                    .filters(
                        Filter::builder()
                            .name("launch-template-name")
                            .values(name)
                            .build(),
                    )
                    .send(),
            )
            .expect("DescribeLaunchTemplates");
        let id = output
            .launch_templates()
            .first()?
            .launch_template_id()?
            .to_string();
        let tags = self
            .runtime
            .block_on(
                self.client
                    .describe_tags()
                    .filters(Filter::builder().name("resource-id").values(id).build())
                    .send(),
            )
            .expect("DescribeTags");
        Some(
            tags.tags()
                .iter()
                .map(|t| {
                    (
                        t.key().unwrap_or_default().to_string(),
                        t.value().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
        )
    }

    /// A VPC with one subnet in us-east-1a and two security groups, made by hand:
    /// (subnet id, [group ids]).
    fn network(&self) -> (String, [String; 2]) {
        self.runtime.block_on(async {
            let vpc = self
                .client
                .create_vpc()
                .cidr_block("10.20.0.0/16")
                .send()
                .await
                .expect("CreateVpc");
            let vpc = vpc
                .vpc()
                .and_then(|v| v.vpc_id())
                .expect("vpc id")
                .to_string();
            let subnet = self
                .client
                .create_subnet()
                .vpc_id(&vpc)
                .cidr_block("10.20.1.0/24")
                .availability_zone("us-east-1a")
                .send()
                .await
                .expect("CreateSubnet");
            let subnet = subnet
                .subnet()
                .and_then(|s| s.subnet_id())
                .expect("subnet id")
                .to_string();
            let mut groups = Vec::new();
            for name in ["runners", "node-exporter"] {
                let group = self
                    .client
                    .create_security_group()
                    .group_name(name)
                    .description(name)
                    .vpc_id(&vpc)
                    .send()
                    .await
                    .expect("CreateSecurityGroup");
                groups.push(group.group_id().expect("group id").to_string());
            }
            groups.sort();
            (subnet, [groups[0].clone(), groups[1].clone()])
        })
    }

    /// (subnet id, sorted group ids) of an instance.
    fn placement(&self, id: &str) -> (String, Vec<String>) {
        let output = self
            .runtime
            .block_on(self.client.describe_instances().instance_ids(id).send())
            .expect("DescribeInstances");
        let instance = &output.reservations()[0].instances()[0];
        let mut groups: Vec<String> = instance
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_string))
            .collect();
        groups.sort();
        (instance.subnet_id().unwrap_or_default().to_string(), groups)
    }

    /// Changes an instance's security groups, as someone at the console would.
    fn set_groups(&self, id: &str, groups: &[&str]) {
        self.runtime
            .block_on(
                self.client
                    .modify_instance_attribute()
                    .instance_id(id)
                    .set_groups(Some(groups.iter().map(|g| g.to_string()).collect()))
                    .send(),
            )
            .expect("ModifyInstanceAttribute");
    }

    /// (subnet id, sorted group ids) of a launch template's default version.
    fn template_placement(&self, name: &str) -> (String, Vec<String>) {
        let output = self
            .runtime
            .block_on(
                self.client
                    .describe_launch_template_versions()
                    .launch_template_name(name)
                    .versions("$Default")
                    .send(),
            )
            .expect("DescribeLaunchTemplateVersions");
        let data = output.launch_template_versions()[0]
            .launch_template_data()
            .expect("launch template data");
        let interface = data.network_interfaces().first();
        let mut groups: Vec<String> = data.security_group_ids().to_vec();
        groups.extend(interface.map(|i| i.groups().to_vec()).unwrap_or_default());
        groups.sort();
        (
            interface
                .and_then(|i| i.subnet_id())
                .unwrap_or_default()
                .to_string(),
            groups,
        )
    }

    /// The size and type of every volume attached to an instance.
    fn volumes(&self, id: &str) -> Vec<(i32, String)> {
        let output = self
            .runtime
            .block_on(
                self.client
                    .describe_volumes()
                    .filters(
                        Filter::builder()
                            .name("attachment.instance-id")
                            .values(id)
                            .build(),
                    )
                    .send(),
            )
            .expect("DescribeVolumes");
        output
            .volumes()
            .iter()
            .map(|v| {
                (
                    v.size().unwrap_or_default(),
                    v.volume_type()
                        .map(|t| t.as_str().to_string())
                        .unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// A fleet of `size` Graviton builders with 100 GB gp3, named `<fleet>-builder-<n>`.
fn pool_file(fleet: &str, size: usize) -> String {
    format!(
        "fleet: {fleet}
clouds:
  aws: {{ region: us-east-1 }}
defaults:
  aws:
    zone: us-east-1a
    image: ami-0c9f35b1b63e7d2a4
    disk: {{ type: gp3, size_gb: 100 }}
pools:
  {fleet}-builder-{{n}}:
    size: {size}
    machine_type: m6g.2xlarge
    role: builder
    labels:
      arch: armv7
"
    )
}

/// An autoscale template and a runner manager that uses it, on AWS.
fn template_file(fleet: &str, template_type: &str, disk_gb: u32) -> String {
    format!(
        "fleet: {fleet}
clouds:
  aws: {{ region: us-east-1 }}
defaults:
  aws:
    zone: us-east-1a
    image: ami-0c9f35b1b63e7d2a4
    disk: {{ type: gp3, size_gb: 100 }}
templates:
  arm64-aws:
    cloud: aws
    machine_type: {template_type}
    arch: arm64
    disk: {{ type: gp3, size_gb: {disk_gb} }}
managers:
  {fleet}-manager-{{n}}:
    matrix: {{ count: 1 }}
    cloud: aws
    machine_type: m6g.large
    runner: {{ version: \"16.11.1\" }}
    runners:
      - name: {fleet}-arm-runner
        template: arm64-aws
        arch: armv7
"
    )
}

#[test]
fn distribution_aws_part_plans_applies_and_then_has_no_changes() {
    let moto = Moto::start();
    let env = env_for(&moto);
    let ec2 = Ec2::new(&moto);
    let file = "fleets/distribution.yaml";

    let plan = live(&env, &["plan", file]).ok();
    assert!(
        plan.stdout
            .contains(&format!("AWS EC2 us-east-1 (endpoint {})", moto.url)),
        "the plan says where it points:\n{}",
        plan.stdout
    );
    let first = calls(&plan);
    // Discovery of an empty fleet: one instance page and one template page (no volumes,
    // tags or versions to read); then the check that no one holds the desired template's
    // name (the names are not typed, so instances by `Name` and launch templates by name).
    assert_eq!(count(&first, "ec2:DescribeInstances"), 2, "{first:?}");
    assert_eq!(count(&first, "ec2:DescribeVolumes"), 0, "{first:?}");
    assert_eq!(count(&first, "ec2:DescribeLaunchTemplates"), 2, "{first:?}");
    assert_eq!(total(&first), 4, "{first:?}");
    let plan = plan_json(&env, file);
    assert_eq!(actions_of(&plan, "template.arm64-aws"), ["create"]);
    // Only AWS is in scope: the GCP managers and templates are not planned.
    assert!(actions_of(&plan, "template.amd64-gcp").is_empty());

    let apply = converge(&env, file);
    let applied = calls(&apply);
    assert_eq!(
        count(&applied, "ec2:CreateLaunchTemplate"),
        1,
        "{applied:?}"
    );
    assert_eq!(count(&applied, "ec2:RunInstances"), 0, "{applied:?}");

    let versions = ec2.template_versions("arm64-aws");
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert!(versions[0].1.starts_with("arm64-aws-"), "{versions:?}");
    let tags = ec2.template_tags("arm64-aws").expect("launch template");
    assert_eq!(tags.get("fleet").map(String::as_str), Some("distribution"));
    assert_eq!(
        tags.get("fleet-resource").map(String::as_str),
        Some("arm64-aws")
    );

    let again = assert_no_changes(&env, file);
    let steady = calls(&again);
    // Steady state: one page of each list call, the launch template's tags and the
    // versions of the one template.
    assert_eq!(count(&steady, "ec2:DescribeInstances"), 1, "{steady:?}");
    assert_eq!(
        count(&steady, "ec2:DescribeLaunchTemplates"),
        1,
        "{steady:?}"
    );
    assert_eq!(count(&steady, "ec2:DescribeTags"), 1, "{steady:?}");
    assert_eq!(
        count(&steady, "ec2:DescribeLaunchTemplateVersions"),
        1,
        "{steady:?}"
    );
    assert_eq!(total(&steady), 4, "{steady:?}");
}

#[test]
fn a_pool_of_50_is_one_run_instances_call_and_then_has_no_changes() {
    let moto = Moto::start();
    let env = env_for(&moto);
    let ec2 = Ec2::new(&moto);
    let file = env.write("pool.yaml", &pool_file("pool50", 50));

    let apply = converge(&env, &file);
    let applied = calls(&apply);
    assert_eq!(
        count(&applied, "ec2:RunInstances"),
        1,
        "50 identical members are one RunInstances call: {applied:?}"
    );
    // Each member then gets its own name, its address.
    assert_eq!(count(&applied, "ec2:CreateTags"), 50, "{applied:?}");

    let alive = ec2.alive("pool50");
    assert_eq!(alive.len(), 50);
    let names: std::collections::BTreeSet<&str> = alive.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names.len(), 50, "every member has its own name: {names:?}");
    let first = ec2.by_name("pool50", "pool50-builder-1");
    // Members of a pool share their labels; the name tells them apart.
    assert_eq!(first.tags.get("fleet-resource"), None, "{:?}", first.tags);
    assert_eq!(
        first.tags.get("fleet-pool").map(String::as_str),
        Some("pool50-builder")
    );
    assert!(
        alive
            .iter()
            .all(|i| i.tags.get("fleet-spec") == first.tags.get("fleet-spec")),
        "{alive:?}"
    );
    assert_eq!(first.tags.get("arch").map(String::as_str), Some("armv7"));
    assert_eq!(ec2.volumes(&first.id), [(100, "gp3".to_string())]);

    let again = assert_no_changes(&env, &file);
    let steady = calls(&again);
    assert_eq!(count(&steady, "ec2:DescribeInstances"), 1, "{steady:?}");
    assert_eq!(count(&steady, "ec2:DescribeVolumes"), 1, "{steady:?}");
    // The fleet's parameters are one listing too, whatever the number of machines.
    assert_eq!(count(&steady, "ssm:GetParametersByPath"), 1, "{steady:?}");
    assert!(total(&steady) <= 4, "{steady:?}");
}

#[test]
fn an_instance_stopped_out_of_band_is_replaced() {
    let moto = Moto::start();
    let env = env_for(&moto);
    let ec2 = Ec2::new(&moto);
    let file = "fleets/arm-builders.yaml";
    converge(&env, file);
    assert_eq!(ec2.alive("arm-builders").len(), 4);

    let stopped = ec2.by_name("arm-builders", "arm-builder-2");
    ec2.stop(&stopped.id);
    let plan = plan_json(&env, file);
    assert_eq!(
        actions_of(&plan, "pool.arm-builder-2"),
        ["create", "delete"]
    );
    assert_eq!(reasons_of(&plan, "pool.arm-builder-2"), ["not_working"]);

    let apply = converge(&env, file);
    let applied = calls(&apply);
    assert_eq!(count(&applied, "ec2:RunInstances"), 1, "{applied:?}");
    assert_eq!(count(&applied, "ec2:TerminateInstances"), 1, "{applied:?}");
    let replacement = ec2.by_name("arm-builders", "arm-builder-2");
    assert_ne!(replacement.id, stopped.id);
    assert_eq!(ec2.alive("arm-builders").len(), 4);
    assert_no_changes(&env, file);
}

#[test]
fn a_tag_edited_out_of_band_is_drift_and_is_put_back() {
    let moto = Moto::start();
    let env = env_for(&moto);
    let ec2 = Ec2::new(&moto);
    let file = "fleets/arm-builders.yaml";
    converge(&env, file);

    let edited = ec2.by_name("arm-builders", "arm-builder-3");
    ec2.set_tag(&edited.id, "arch", "arm64");
    let plan = plan_json(&env, file);
    assert_eq!(actions_of(&plan, "pool.arm-builder-3"), ["update"]);
    assert_eq!(
        reasons_of(&plan, "pool.arm-builder-3"),
        ["drift", "field_changed"]
    );

    let apply = converge(&env, file);
    let applied = calls(&apply);
    assert_eq!(count(&applied, "ec2:RunInstances"), 0, "{applied:?}");
    assert_eq!(count(&applied, "ec2:CreateTags"), 1, "{applied:?}");
    let fixed = ec2.by_name("arm-builders", "arm-builder-3");
    assert_eq!(fixed.id, edited.id, "a tag is fixed in place");
    assert_eq!(fixed.tags.get("arch").map(String::as_str), Some("armv7"));
    assert_no_changes(&env, file);
}

#[test]
fn orphans_are_deleted() {
    let moto = Moto::start();
    let env = env_for(&moto);
    let ec2 = Ec2::new(&moto);
    let file = env.write("pool.yaml", &pool_file("shrink", 4));
    converge(&env, &file);
    // A machine an earlier apply of this fleet made (it carries one of the fleet's creation
    // tokens) for an address no fleet file has any more (a "hanging droplet").
    let stray = ec2.run_tagged_with_token(
        &fleet_engine::provider::creation_token("shrink", &["stray"]),
        &[
            ("Name", "shrink-stray-1"),
            ("fleet", "shrink"),
            ("fleet-kind", "pool"),
            ("fleet-resource", "shrink-stray-1"),
        ],
    );
    // And a hand-made machine without fleet's labels, which fleet must leave alone.
    let hand_made = ec2.run_tagged(&[("Name", "hand-made-1")]);

    env.write("pool.yaml", &pool_file("shrink", 2));
    let plan = plan_json(&env, &file);
    for address in [
        "pool.shrink-builder-3",
        "pool.shrink-builder-4",
        "pool.shrink-stray-1",
    ] {
        assert_eq!(actions_of(&plan, address), ["delete"], "{address}");
        assert_eq!(reasons_of(&plan, address), ["orphan"], "{address}");
    }
    let apply = converge(&env, &file);
    assert_eq!(count(&calls(&apply), "ec2:TerminateInstances"), 3);
    let alive: Vec<String> = ec2.alive("shrink").into_iter().map(|i| i.name).collect();
    assert_eq!(alive, ["shrink-builder-1", "shrink-builder-2"]);
    let stray_state = ec2
        .instances("shrink")
        .into_iter()
        .find(|i| i.id == stray)
        .map(|i| i.state);
    assert_eq!(stray_state.as_deref(), Some("terminated"));
    let everything = ec2
        .runtime
        .block_on(
            ec2.client
                .describe_instances()
                .instance_ids(&hand_made)
                .send(),
        )
        .expect("DescribeInstances");
    let state = everything.reservations()[0].instances()[0]
        .state()
        .and_then(|s| s.name())
        .cloned();
    assert_eq!(
        state,
        Some(InstanceStateName::Running),
        "the hand-made machine is untouched"
    );
    assert_no_changes(&env, &file);
}

#[test]
fn a_launch_template_change_makes_a_new_version_and_retires_the_old() {
    let moto = Moto::start();
    // moto lacks DeleteLaunchTemplateVersions; the proxy answers it as EC2 does.
    let proxy = FaultProxy::start(&moto.url);
    let env = env_through(&moto, &proxy);
    let ec2 = Ec2::new(&moto);
    let file = env.write("fleet.yaml", &template_file("tmpl", "m6g.2xlarge", 100));
    converge(&env, &file);
    let first = ec2.template_versions("arm64-aws");
    assert_eq!(first.len(), 1, "{first:?}");
    let manager = ec2.by_name("tmpl", "tmpl-manager-1");
    assert!(manager.tags.contains_key("fleet-config"), "{manager:?}");
    assert_no_changes(&env, &file);

    env.write("fleet.yaml", &template_file("tmpl", "m6g.4xlarge", 100));
    let plan = plan_json(&env, &file);
    assert_eq!(
        actions_of(&plan, "template.arm64-aws"),
        ["create", "delete"]
    );
    assert_eq!(reasons_of(&plan, "template.arm64-aws")[0], "new_version");
    // The manager's runner list names the new version: its config.toml is a parameter its
    // watcher reloads, so the manager is updated in place.
    assert_eq!(actions_of(&plan, "manager.tmpl-manager-1"), ["update"]);

    let apply = converge(&env, &file);
    let applied = calls(&apply);
    assert_eq!(
        count(&applied, "ec2:CreateLaunchTemplateVersion"),
        1,
        "{applied:?}"
    );
    assert_eq!(
        count(&applied, "ec2:ModifyLaunchTemplate"),
        1,
        "{applied:?}"
    );
    assert_eq!(
        count(&applied, "ec2:CreateLaunchTemplate"),
        0,
        "{applied:?}"
    );
    let versions = ec2.template_versions("arm64-aws");
    let default = versions.iter().find(|v| v.2).expect("a default version");
    assert_eq!(default.0, 2, "the new version is the default: {versions:?}");
    assert_ne!(default.1, first[0].1);
    // The old version is deleted and no longer fleet's.
    assert_eq!(proxy.calls("DeleteLaunchTemplateVersions"), 1);
    let tags = ec2.template_tags("arm64-aws").expect("launch template");
    assert!(!tags.contains_key("fleet-spec-v1"), "{tags:?}");
    assert!(tags.contains_key("fleet-spec-v2"), "{tags:?}");
    assert_eq!(ec2.by_name("tmpl", "tmpl-manager-1").id, manager.id);
    assert_no_changes(&env, &file);

    // Removing the template from the fleet file deletes the launch template.
    let without = template_file("tmpl", "m6g.4xlarge", 100);
    let without = &without[..without.find("templates:").expect("templates")];
    env.write("fleet.yaml", without);
    converge(&env, &file);
    assert_eq!(ec2.template_tags("arm64-aws"), None);
}

#[test]
fn a_resumed_apply_after_a_killed_one_creates_no_duplicates() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.url);
    let env = env_through(&moto, &proxy);
    let ec2 = Ec2::new(&moto);
    let mut text = pool_file("resume", 30);
    // A second and third shape, so the apply is several calls long.
    for (pool, machine) in [("small", "m6g.large"), ("medium", "m6g.xlarge")] {
        text.push_str(&format!(
            "  resume-{pool}-{{n}}:\n    size: 10\n    machine_type: {machine}\n    role: builder\n"
        ));
    }
    let file = env.write("pool.yaml", &text);
    // Every mutating call is held 50 ms, so naming the first batch's 30 members alone takes
    // over a second: the kill below lands while the apply is under way.
    proxy.set_mutation_latency(Duration::from_millis(50));
    let mut apply = env.spawn(
        &[
            "--cloud",
            "live",
            "--only-cloud",
            "aws",
            "apply",
            &file,
            "--auto-approve",
        ],
        &[],
    );
    // Kill it as soon as the first machine exists.
    let started = Instant::now();
    while ec2.instances("resume").is_empty() {
        let status = apply.try_wait().expect("wait");
        assert!(
            status.is_none(),
            "the apply ended ({status:?}) before it made a machine"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no machine within 60 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    apply.kill().expect("kill the apply");
    let status = apply.wait().expect("wait");
    assert!(!status.success(), "the apply was not killed: {status:?}");
    // Mid-way: machines exist, but not every member is there under its name.
    let left = ec2.alive("resume");
    let named = left
        .iter()
        .filter(|i| !i.name.contains("unassigned"))
        .count();
    assert!(
        !left.is_empty() && named < 50,
        "the kill did not interrupt the apply: {named} members named"
    );

    proxy.set_mutation_latency(Duration::ZERO);
    converge(&env, &file);
    let alive = ec2.alive("resume");
    let names: std::collections::BTreeSet<&str> = alive.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        alive.len(),
        50,
        "no duplicates, nothing left over: {names:?}"
    );
    assert_eq!(names.len(), 50, "{names:?}");
    assert!(names.iter().all(|n| !n.contains("unassigned")), "{names:?}");
    assert_no_changes(&env, &file);
}

#[test]
fn discovering_500_instances_takes_a_few_calls() {
    let moto = Moto::start();
    let env = env_for(&moto);
    let file = env.write("pool.yaml", &pool_file("big", 500));
    let apply = converge(&env, &file);
    // The executor sends at most 100 pool members per batch.
    assert_eq!(count(&calls(&apply), "ec2:RunInstances"), 5);

    let run = assert_no_changes(&env, &file);
    let steady = calls(&run);
    // One DescribeInstances page (1000 a page) and one DescribeVolumes per 200 instances.
    assert_eq!(count(&steady, "ec2:DescribeInstances"), 1, "{steady:?}");
    assert_eq!(count(&steady, "ec2:DescribeVolumes"), 3, "{steady:?}");
    // Builders have no parameters: the fleet's listing is one empty page.
    assert_eq!(count(&steady, "ssm:GetParametersByPath"), 1, "{steady:?}");
    assert!(total(&steady) <= 6, "{steady:?}");
}

#[test]
fn without_credentials_fleet_says_where_it_looked_and_offers_the_simulator() {
    let env = Env::new();
    let mut command = env.command(
        &[
            "--cloud",
            "live",
            "--only-cloud",
            "aws",
            "plan",
            "fleets/arm-builders.yaml",
        ],
        &[
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/nonexistent/aws-config"),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/aws-credentials",
            ),
            // Nothing may leave the machine even if a credential were found.
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ],
    );
    for key in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        command.env_remove(key);
    }
    let output = command.output().expect("run fleet");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    // The help is wrapped to the terminal: compare with the line breaks folded.
    let stderr = stderr.split_whitespace().collect::<Vec<_>>().join(" ");
    for expected in [
        "No AWS credentials found",
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "instance role",
        "--cloud sim",
    ] {
        assert!(
            stderr.contains(expected),
            "`{expected}` missing from:\n{stderr}"
        );
    }
}

#[test]
fn subnet_and_security_groups_are_set_and_kept() {
    let moto = Moto::start();
    let env = env_for(&moto);
    let ec2 = Ec2::new(&moto);
    let (subnet, [runners, exporter]) = ec2.network();
    // The fleet's machines go to a VPC subnet of their own with two groups (defaults), the
    // template's machines with one group (its own setting).
    let text = template_file("net", "m6g.2xlarge", 100)
        .replace(
            "    disk: { type: gp3, size_gb: 100 }\ntemplates:",
            &format!(
                "    disk: {{ type: gp3, size_gb: 100 }}\n    subnet: {subnet}\n    security_groups: [{exporter}, {runners}]\ntemplates:"
            ),
        )
        .replace(
            "    arch: arm64\n",
            &format!("    arch: arm64\n    security_groups: [{runners}]\n"),
        );
    assert!(
        text.contains("subnet:") && text.contains(&format!("[{runners}]")),
        "{text}"
    );
    let mut text = text;
    text.push_str("pools:\n  net-builder-{n}:\n    size: 3\n    machine_type: m6g.2xlarge\n    role: builder\n");
    let file = env.write("fleet.yaml", &text);

    // The runner's machines (docker+machine) are told the subnet too.
    let plan = plan_json(&env, &file);
    let manager = plan["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "manager.net-manager-1")
        .unwrap();
    let config = manager["change"]["after"]["metadata"]["gitlab-runner-config"]
        .as_str()
        .unwrap();
    assert!(
        config.contains(&format!("\"amazonec2-subnet-id={subnet}\"")),
        "{config}"
    );

    let apply = converge(&env, &file);
    // The pool is still one call: its members share their networking.
    assert_eq!(
        count(&calls(&apply), "ec2:RunInstances"),
        2,
        "{}",
        apply.stderr
    );
    let mut both_sorted = vec![runners.clone(), exporter.clone()];
    both_sorted.sort();
    for name in ["net-manager-1", "net-builder-1", "net-builder-3"] {
        let machine = ec2.by_name("net", name);
        assert_eq!(
            ec2.placement(&machine.id),
            (subnet.clone(), both_sorted.clone()),
            "{name}"
        );
    }
    assert_eq!(
        ec2.template_placement("arm64-aws"),
        (subnet.clone(), vec![runners.clone()])
    );
    assert_no_changes(&env, &file);

    // A group changed at the console is drift, put right by a new machine.
    let builder = ec2.by_name("net", "net-builder-2");
    ec2.set_groups(&builder.id, &[&runners]);
    let plan = plan_json(&env, &file);
    let address = "pool.net-builder-2";
    assert_eq!(actions_of(&plan, address), ["create", "delete"], "{plan:#}");
    let reasons = reasons_of(&plan, address);
    assert!(reasons.contains(&"drift".to_string()), "{reasons:?}");
    let changed = plan["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == address)
        .unwrap();
    let text = changed.to_string();
    assert!(text.contains("security_groups"), "{text}");
    converge(&env, &file);
    let replaced = ec2.by_name("net", "net-builder-2");
    assert_ne!(replaced.id, builder.id);
    assert_eq!(ec2.placement(&replaced.id).1, both_sorted);
    assert_no_changes(&env, &file);
}

#[test]
fn throttling_and_server_errors_are_retried_without_duplicates() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.url);
    let env = env_through(&moto, &proxy);
    let ec2 = Ec2::new(&moto);
    let mut text = template_file("busy", "m6g.2xlarge", 100);
    text.push_str(
        "pools:\n  busy-builder-{n}:\n    size: 20\n    machine_type: m6g.2xlarge\n    role: builder\n",
    );
    let file = env.write("fleet.yaml", &text);
    let faults = [
        ("DescribeInstances", Fault::Throttle, 2),
        ("RunInstances", Fault::Throttle, 2),
        ("RunInstances", Fault::ServerError, 1),
        ("CreateLaunchTemplate", Fault::ServerError, 1),
        ("CreateTags", Fault::Throttle, 3),
    ];
    for (action, fault, times) in faults {
        proxy.fail_next(action, fault, times);
    }
    let apply = converge(&env, &file);
    for (action, want) in [
        ("DescribeInstances", 2),
        ("RunInstances", 3),
        ("CreateLaunchTemplate", 1),
        ("CreateTags", 3),
    ] {
        assert_eq!(proxy.faulted(action), want, "{action} faults given");
    }
    for code in ["RequestLimitExceeded", "InternalError"] {
        assert!(
            apply.stdout.contains(code),
            "no retry of {code} shown:\n{}",
            apply.stdout
        );
    }
    // Nothing was made twice: 20 builders and the manager, one launch-template version.
    let alive = ec2.alive("busy");
    assert_eq!(alive.len(), 21, "{alive:#?}");
    let names: std::collections::BTreeSet<&str> = alive.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names.len(), 21, "{names:?}");
    assert_eq!(ec2.template_versions("arm64-aws").len(), 1);
    // The pool went through as one RunInstances and the manager as another, after three
    // refusals: a refused batch is sent again whole, never split into one call per member.
    assert_eq!(proxy.calls("RunInstances"), 3 + 2);
    assert_no_changes(&env, &file);
}

#[test]
fn a_refused_call_names_the_call_the_machine_and_the_code_and_is_not_retried() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.url);
    let env = env_through(&moto, &proxy);
    let ec2 = Ec2::new(&moto);
    let file = env.write("pool.yaml", &pool_file("refused", 3));
    proxy.fail_next("RunInstances", Fault::Unauthorized, 10);
    let run = live(&env, &["apply", &file, "--auto-approve"]);
    assert_ne!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let all = format!("{}\n{}", run.stdout, run.stderr);
    for expected in [
        "pool.refused-builder-1",
        "ec2:RunInstances",
        "UnauthorizedOperation",
    ] {
        assert!(all.contains(expected), "no {expected:?} in:\n{all}");
    }
    assert_eq!(
        proxy.calls("RunInstances"),
        1,
        "a final refusal was retried"
    );
    assert!(ec2.alive("refused").is_empty());
}

#[test]
fn throttling_that_does_not_end_is_given_up_after_the_attempts_allowed() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.url);
    let env = env_through(&moto, &proxy);
    let file = env.write("pool.yaml", &pool_file("capped", 3));
    proxy.fail_next("RunInstances", Fault::Throttle, 1000);
    let run = live(
        &env,
        &["--max-attempts", "3", "apply", &file, "--auto-approve"],
    );
    assert_ne!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(proxy.calls("RunInstances"), 3, "{}", run.stdout);
    let all = format!("{}\n{}", run.stdout, run.stderr);
    assert!(all.contains("RequestLimitExceeded"), "{all}");
}

#[test]
fn mutating_calls_in_flight_stay_within_the_region_limit() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.url);
    let env = env_through(&moto, &proxy);
    let ec2 = Ec2::new(&moto);
    let file = env.write("pool.yaml", &pool_file("wide", 30));
    converge(&env, &file);
    // Shrinking to 2 is 28 independent terminations; each is held 100 ms so they overlap.
    proxy.set_mutation_latency(Duration::from_millis(100));
    env.write("pool.yaml", &pool_file("wide", 2));
    let apply = live(
        &env,
        &["apply", &file, "--auto-approve", "--concurrency", "32"],
    )
    .ok();
    assert_eq!(count(&calls(&apply), "ec2:TerminateInstances"), 28);
    let most = proxy.max_in_flight();
    assert!(
        (2..=8).contains(&most),
        "{most} mutating calls in flight at once; the EC2 region limit is 8"
    );
    assert_eq!(ec2.alive("wide").len(), 2);
}

#[test]
fn the_endpoint_option_wins_over_the_environment() {
    let moto = Moto::start();
    // Nothing listens on port 9: only the option can reach moto.
    let env = env_for(&moto).with_env("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
    let run = live(
        &env,
        &[
            "--aws-endpoint",
            &moto.url,
            "plan",
            "fleets/arm-builders.yaml",
        ],
    )
    .ok();
    assert!(
        run.stdout
            .contains(&format!("AWS EC2 us-east-1 (endpoint {})", moto.url)),
        "{}",
        run.stdout
    );
}

impl Ec2 {
    /// Starts `count` instances by hand, one `RunInstances` (one reservation) each, eight at
    /// a time, with the given tags.
    fn run_many(&self, count: usize, tags: &[(&str, &str)]) {
        let tags: Vec<Tag> = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
            .collect();
        self.runtime.block_on(async {
            let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..count {
                let client = self.client.clone();
                let tags = tags.clone();
                let gate = gate.clone();
                tasks.spawn(async move {
                    let _permit = gate.acquire().await.expect("semaphore");
                    client
                        .run_instances()
                        .image_id("ami-0c9f35b1b63e7d2a4")
                        .instance_type(InstanceType::M6gLarge)
                        .min_count(1)
                        .max_count(1)
                        .tag_specifications(
                            TagSpecification::builder()
                                .resource_type(ResourceType::Instance)
                                .set_tags(Some(tags))
                                .build(),
                        )
                        .send()
                        .await
                        .expect("RunInstances");
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.expect("launch task");
            }
        });
    }
}

#[test]
fn a_page_that_fails_is_asked_for_again_alone() {
    // moto pages DescribeInstances by reservation, so two pages of 1000 take more than 1000
    // reservations: 1,050 single launches make a second page with a little to spare. This
    // is the slowest AWS test (about 45 s on a 2-core machine: some 17 s for moto to launch
    // them, 8 s and 3 s for the two pages, since moto filters every instance on each call);
    // a second page cannot be had for less.
    const INSTANCES: usize = 1050;
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.url);
    let env = env_through(&moto, &proxy);
    let ec2 = Ec2::new(&moto);
    ec2.run_many(
        INSTANCES,
        &[
            ("fleet", "pages"),
            ("fleet-kind", "pool"),
            ("fleet-pool", "pages-copy"),
        ],
    );
    let file = env.write("pool.yaml", &pool_file("pages", 1));
    // The second page is refused twice, as EC2 does under load.
    proxy.fail_next_page("DescribeInstances", Fault::Throttle, 2);
    let run = live(&env, &["plan", &file, "--format", "json"]).ok();
    assert_eq!(proxy.faulted("DescribeInstances"), 2);
    let pages = INSTANCES.div_ceil(1000) as u64;
    let planned = calls(&run);
    // Each page once, the refused page twice more, and one lookup of the missing member's
    // name: a fault on page 2 costs calls for page 2, not a new listing.
    assert_eq!(
        count(&planned, "ec2:DescribeInstances"),
        pages + 2 + 1,
        "{planned:?}"
    );
    let plan = run.json();
    assert_eq!(actions_of(&plan, "pool.pages-builder-1"), ["create"]);
}

#[test]
fn an_instance_shutting_down_is_neither_counted_nor_deleted_again() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.url);
    let env = env_through(&moto, &proxy);
    let ec2 = Ec2::new(&moto);
    let file = env.write("pool.yaml", &pool_file("slow", 2));
    converge(&env, &file);
    let stopped = ec2.by_name("slow", "slow-builder-2");
    ec2.stop(&stopped.id);
    // EC2 reports a terminated instance as shutting-down for a while; moto does not.
    proxy.shut_down_slowly(20);
    let apply = converge(&env, &file);
    assert_eq!(count(&calls(&apply), "ec2:TerminateInstances"), 1);
    assert!(
        proxy.reported_shutting_down() > 0,
        "the replaced machine was never seen shutting down"
    );
    // The machine going away is not a second slow-builder-2, nor an orphan to delete again.
    let plan = plan_json(&env, &file);
    assert!(
        !reasons_of(&plan, "pool.slow-builder-2")
            .iter()
            .any(|reason| reason == "duplicate"),
        "{plan:#}"
    );
    assert!(
        !actions_of(&plan, "pool.slow-builder-2").contains(&"delete".to_string()),
        "{plan:#}"
    );
    assert_no_changes(&env, &file);
    assert!(proxy.reported_shutting_down() > 1);
    assert_eq!(proxy.calls("TerminateInstances"), 1);
    assert_eq!(ec2.alive("slow").len(), 2);
}

#[test]
fn a_new_instance_missing_from_lists_is_waited_for_not_made_again() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.url);
    let env = env_through(&moto, &proxy);
    let ec2 = Ec2::new(&moto);
    let file = env.write("pool.yaml", &pool_file("lag", 3));
    // New instances are left out of the next three lists, as EC2's eventual consistency may.
    proxy.hide_new_instances(3);
    converge(&env, &file);
    assert!(proxy.reported_hidden() >= 3, "the lag never showed");
    assert_eq!(
        proxy.forwarded("RunInstances"),
        1,
        "a member was made twice"
    );
    let alive = ec2.alive("lag");
    assert_eq!(alive.len(), 3, "{alive:#?}");
    assert_no_changes(&env, &file);
}

#[test]
fn a_hand_made_copy_of_a_member_is_left_alone_and_said_to_be_made_outside_fleet() {
    let moto = Moto::start();
    let env = env_for(&moto);
    let ec2 = Ec2::new(&moto);
    let file = env.write("pool.yaml", &pool_file("copy", 4));
    converge(&env, &file);
    let members: Vec<Seen> = (1..=4)
        .map(|n| ec2.by_name("copy", &format!("copy-builder-{n}")))
        .collect();
    // A copy of every member with its exact tags, launched by hand (the SDK's own token): a
    // copy has the lower instance id about half the time.
    let mut copies = Vec::new();
    for member in &members {
        let tags: Vec<(&str, &str)> = member
            .tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        copies.push(ec2.run_tagged(&tags));
    }
    let plan = plan_json(&env, &file);
    for (member, copy) in members.iter().zip(&copies) {
        let address = format!("pool.{}", member.name);
        assert_eq!(
            reasons_of(&plan, &address),
            ["made_outside_fleet"],
            "{address}: {plan:#}"
        );
        let outside = plan["resource_changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| {
                c["address"] == address.as_str() && c["reasons"][0]["type"] == "made_outside_fleet"
            })
            .unwrap();
        assert_eq!(outside["reasons"][0]["id"], copy.as_str(), "{outside:#}");
    }
    assert_no_changes(&env, &file);
    // An apply has nothing to do either: it deletes no copy and makes no member again.
    let apply = live(&env, &["apply", &file, "--auto-approve"]).ok();
    assert_eq!(count(&calls(&apply), "ec2:TerminateInstances"), 0);
    assert_eq!(count(&calls(&apply), "ec2:RunInstances"), 0);
    let alive: Vec<String> = ec2.alive("copy").into_iter().map(|i| i.id).collect();
    assert_eq!(alive.len(), 8, "{alive:?}");
    for member in &members {
        assert!(
            alive.contains(&member.id),
            "fleet deleted its own {}",
            member.name
        );
    }
    for copy in &copies {
        assert!(alive.contains(copy), "the copy {copy} was deleted");
    }
}

#[test]
fn two_applies_from_two_machines_at_once_make_each_member_once() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.url);
    let env = env_through(&moto, &proxy);
    let ec2 = Ec2::new(&moto);
    for round in 1..=5 {
        let fleet = format!("race{round}");
        let file = env.write(&format!("{fleet}.yaml"), &pool_file(&fleet, 10));
        // Two CI jobs, each with a state dir (and so a lock) of its own.
        let start = |state: &str, ci: &str| {
            env.spawn(
                &[
                    "--cloud",
                    "live",
                    "--only-cloud",
                    "aws",
                    "--state-dir",
                    state,
                    "apply",
                    &file,
                    "--auto-approve",
                ],
                &[("CI", ci)],
            )
        };
        let first = start("state-a", "true");
        let second = start("state-b", "false");
        let first = first.wait_with_output().expect("first apply");
        let second = second.wait_with_output().expect("second apply");
        for output in [&first, &second] {
            assert!(
                output.status.success(),
                "round {round}:\n{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let alive = ec2.alive(&fleet);
        let names: std::collections::BTreeSet<&str> =
            alive.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(alive.len(), 10, "round {round}: {alive:#?}");
        assert_eq!(names.len(), 10, "round {round}: {names:?}");
        assert!(names.iter().all(|n| !n.contains("unassigned")), "{names:?}");
        let note = "local to this machine";
        let stderr = String::from_utf8_lossy(&first.stderr);
        assert_eq!(stderr.matches(note).count(), 1, "{stderr}");
        assert!(!String::from_utf8_lossy(&second.stderr).contains(note));
        assert_no_changes(&env, &file);
    }
    // The applies did overlap: a launch was sent twice under one token at least once.
    assert!(
        proxy.calls("RunInstances") > proxy.forwarded("RunInstances"),
        "the two applies never raced: {} launches sent, {} carried out",
        proxy.calls("RunInstances"),
        proxy.forwarded("RunInstances")
    );
}

#[test]
fn a_launch_whose_answer_was_lost_is_not_made_twice() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.url);
    let env = env_through(&moto, &proxy);
    let ec2 = Ec2::new(&moto);
    let file = env.write("pool.yaml", &pool_file("lost", 3));
    // The pool's RunInstances reaches EC2 and makes the machines; fleet hears a 500.
    proxy.fail_next("RunInstances", Fault::AnswerLost, 1);
    converge(&env, &file);
    assert_eq!(proxy.faulted("RunInstances"), 1);
    assert_eq!(
        proxy.calls("RunInstances"),
        2,
        "the lost call was sent again"
    );
    assert_eq!(
        proxy.forwarded("RunInstances"),
        1,
        "and launched nothing more"
    );
    let alive = ec2.alive("lost");
    let names: std::collections::BTreeSet<&str> = alive.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(alive.len(), 3, "{alive:#?}");
    assert_eq!(names.len(), 3, "{names:?}");
    assert_no_changes(&env, &file);
}

#[test]
fn an_autoscaled_machine_appearing_after_the_plan_leaves_it_current() {
    let moto = Moto::start();
    let env = env_for(&moto);
    let ec2 = Ec2::new(&moto);
    // Only the autoscale template: the fleet itself has no instances.
    let text = template_file("auto", "m6g.2xlarge", 100);
    let text = &text[..text.find("managers:").expect("managers")];
    let file = env.write("fleet.yaml", text);
    live(&env, &["plan", &file, "-o", "plan.json"]).ok();
    // The runner's autoscaler starts a build machine from the template, with `fleet=` (from
    // fleet's own machine options) but no `fleet-kind`.
    ec2.run_tagged(&[("fleet", "auto"), ("Name", "runner-autoscaled-1")]);
    live(&env, &["apply", "plan.json", "--auto-approve"]).verified();
    // The machine is not even listed: no root volume of it is looked up.
    let run = assert_no_changes(&env, &file);
    let steady = calls(&run);
    assert_eq!(count(&steady, "ec2:DescribeVolumes"), 0, "{steady:?}");
    assert_eq!(
        ec2.alive("auto").len(),
        1,
        "the build machine is left alone"
    );
}

/// Makes an IAM instance profile in moto, which EC2 there insists exists before it launches
/// with it, and returns its ARN. moto's IAM answers on the same port; the service is chosen by
/// the credential scope of the request, so a plain form POST with that scope is enough.
pub(crate) fn create_instance_profile(moto: &Moto, path: &str, name: &str) -> String {
    use std::io::{Read, Write};
    let address = moto.url.trim_start_matches("http://");
    let body = format!(
        "Action=CreateInstanceProfile&Version=2010-05-08&InstanceProfileName={name}&Path={}",
        path.replace('/', "%2F")
    );
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/iam/aws4_request, \
         SignedHeaders=host, Signature=0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(address).expect("connect to moto");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let arn = answer
        .split_once("<Arn>")
        .and_then(|(_, rest)| rest.split_once("</Arn>"))
        .map(|(arn, _)| arn.to_string())
        .unwrap_or_else(|| panic!("CreateInstanceProfile failed:\n{answer}"));
    assert_eq!(
        arn,
        format!("arn:aws:iam::123456789012:instance-profile{path}{name}")
    );
    arn
}

/// (HttpTokens, hop limit, HttpEndpoint, instance profile ARN) of one instance, read back
/// through the SDK. An endpoint moto leaves out of its answer is shown as `-`.
fn instance_identity(ec2: &Ec2, id: &str) -> (String, i32, String, String) {
    let output = ec2
        .runtime
        .block_on(ec2.client.describe_instances().instance_ids(id).send())
        .expect("DescribeInstances");
    let instance = &output.reservations()[0].instances()[0];
    let options = instance.metadata_options().expect("MetadataOptions");
    (
        options
            .http_tokens()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        options.http_put_response_hop_limit().unwrap_or_default(),
        options
            .http_endpoint()
            .map_or_else(|| "-".to_string(), |e| e.as_str().to_string()),
        instance
            .iam_instance_profile()
            .and_then(|p| p.arn())
            .unwrap_or_default()
            .to_string(),
    )
}

#[test]
fn machines_get_their_instance_profile_and_imdsv2_with_one_hop_and_a_weakened_one_is_replaced() {
    let moto = Moto::start();
    let env = env_for(&moto);
    let ec2 = Ec2::new(&moto);
    let runner_arn = create_instance_profile(&moto, "/ci/", "ci-runner");
    let builder_arn = create_instance_profile(&moto, "/ci/", "ci-builder");
    create_instance_profile(&moto, "/", "ci-other");
    // The manager takes the profile by name from the defaults; the template names it by ARN.
    // What moto 5 keeps: an instance's MetadataOptions as sent, and a launch template's data
    // as sent (profile and options). What it does not: it associates the profile with the
    // first instance of a `RunInstances` only, so a pool of several members would read back
    // without it after the first; this test therefore gives the profile to single machines.
    let text = template_file("idp", "m6g.2xlarge", 100)
        .replace(
            "    disk: { type: gp3, size_gb: 100 }\ntemplates:",
            "    disk: { type: gp3, size_gb: 100 }\n    instance_profile: ci-runner\ntemplates:",
        )
        .replace(
            "    arch: arm64\n",
            &format!("    arch: arm64\n    instance_profile: {builder_arn}\n"),
        );
    assert!(text.contains("instance_profile: ci-runner"), "{text}");
    let file = env.write("fleet.yaml", &text);
    let plan = live(&env, &["plan", &file]).ok();
    assert!(
        plan.stdout
            .lines()
            .any(|line| line.split_whitespace().eq(["profile", "ci-runner"])),
        "{}",
        plan.stdout
    );
    converge(&env, &file);
    // EC2 reports the profile of an instance by ARN; fleet matches it with the name it sent.
    assert_no_changes(&env, &file);

    let manager = ec2.by_name("idp", "idp-manager-1");
    assert_eq!(
        instance_identity(&ec2, &manager.id),
        (
            "required".to_string(),
            1,
            "enabled".to_string(),
            runner_arn.clone()
        )
    );
    let output = ec2
        .runtime
        .block_on(
            ec2.client
                .describe_launch_template_versions()
                .launch_template_name("arm64-aws")
                .versions("$Default")
                .send(),
        )
        .expect("DescribeLaunchTemplateVersions");
    let data = output.launch_template_versions()[0]
        .launch_template_data()
        .expect("launch template data");
    let options = data.metadata_options().expect("MetadataOptions");
    assert_eq!(options.http_tokens().map(|t| t.as_str()), Some("required"));
    assert_eq!(options.http_put_response_hop_limit(), Some(1));
    assert_eq!(options.http_endpoint().map(|e| e.as_str()), Some("enabled"));
    // A launch template keeps the profile as it was sent: here the ARN.
    assert_eq!(
        data.iam_instance_profile().and_then(|p| p.arn()),
        Some(builder_arn.as_str())
    );

    // Someone allows IMDSv1 again at the console: the machine's containers could now read
    // its role with a plain GET. That is drift, and the machine is made again.
    ec2.runtime
        .block_on(
            ec2.client
                .modify_instance_metadata_options()
                .instance_id(&manager.id)
                .http_tokens(aws_sdk_ec2::types::HttpTokensState::Optional)
                .send(),
        )
        .expect("ModifyInstanceMetadataOptions");
    // moto answers the changed options without `HttpEndpoint`; fleet reads a missing part as
    // EC2's default (enabled), so only the tokens are reported weaker.
    assert_eq!(instance_identity(&ec2, &manager.id).0, "optional");
    let plan = plan_json(&env, &file);
    let address = "manager.idp-manager-1";
    assert_eq!(actions_of(&plan, address), ["create", "delete"], "{plan:#}");
    let reasons = reasons_of(&plan, address);
    assert!(reasons.contains(&"drift".to_string()), "{reasons:?}");
    let text_plan = live(&env, &["plan", &file]).code(0).stdout;
    assert!(
        text_plan.contains("metadata_options.http_tokens"),
        "{text_plan}"
    );
    assert!(
        !text_plan.contains("metadata_options.http_endpoint"),
        "{text_plan}"
    );
    converge(&env, &file);
    let replaced = ec2.by_name("idp", "idp-manager-1");
    assert_ne!(replaced.id, manager.id);
    assert_eq!(instance_identity(&ec2, &replaced.id).0, "required");
    assert_no_changes(&env, &file);

    // A hop limit raised so that containers reach the metadata service is drift as well.
    ec2.runtime
        .block_on(
            ec2.client
                .modify_instance_metadata_options()
                .instance_id(&replaced.id)
                .http_tokens(aws_sdk_ec2::types::HttpTokensState::Required)
                .http_put_response_hop_limit(2)
                .send(),
        )
        .expect("ModifyInstanceMetadataOptions");
    let text_plan = live(&env, &["plan", &file]).code(0).stdout;
    assert!(
        text_plan.contains(r#"metadata_options.http_put_response_hop_limit: "2" → "1""#),
        "{text_plan}"
    );

    // Another profile for the manager replaces it too.
    let file = env.write(
        "fleet.yaml",
        &text.replace("instance_profile: ci-runner", "instance_profile: ci-other"),
    );
    let plan = plan_json(&env, &file);
    assert_eq!(actions_of(&plan, address), ["create", "delete"], "{plan:#}");
    let change = plan["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == address)
        .unwrap()
        .to_string();
    assert!(change.contains("instance_profile"), "{change}");
}

/// An EC2 runner manager with a shell runner whose token is a secret.
pub(crate) fn manager_with_secret_file(fleet: &str) -> String {
    format!(
        "fleet: {fleet}
clouds:
  aws: {{ region: us-east-1 }}
defaults:
  aws:
    zone: us-east-1a
    image: ami-0c9f35b1b63e7d2a4
    disk: {{ type: gp3, size_gb: 100 }}
managers:
  {fleet}-manager-{{n}}:
    matrix: {{ count: 1 }}
    cloud: aws
    machine_type: m6g.large
    runner: {{ version: \"16.11.1\", concurrent: 4 }}
    runners:
      - name: {fleet}-shell
        executor: shell
        url: https://gitlab.example.com
        token: \"${{secret:DELIVERY_TOKEN}}\"
"
    )
}

/// An SSM client on moto, as a person at the console would use it.
pub(crate) fn ssm_client(moto: &Moto) -> aws_sdk_ssm::Client {
    let config = aws_sdk_ssm::Config::builder()
        .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
        .region(aws_sdk_ssm::config::Region::new("us-east-1"))
        .endpoint_url(&moto.url)
        .credentials_provider(aws_sdk_ssm::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .build();
    aws_sdk_ssm::Client::from_conf(config)
}

/// The ARN of instance `id` as `ec2:SourceInstanceARN` gives it, its account the `OwnerId` of
/// its reservation.
pub(crate) fn instance_arn(ec2: &Ec2, id: &str) -> String {
    let found = ec2
        .runtime
        .block_on(ec2.client.describe_instances().instance_ids(id).send())
        .expect("DescribeInstances");
    let owner = found.reservations()[0].owner_id().expect("an OwnerId");
    format!("arn:aws:ec2:us-east-1:{owner}:instance/{id}")
}

/// One parameter as the SDK reads it back, undecrypted: its type, stored value and tags.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) kind: String,
    pub(crate) value: String,
    pub(crate) tags: std::collections::BTreeMap<String, String>,
}

/// Every parameter below `path`, by name relative to it.
pub(crate) fn stored(
    ec2: &Ec2,
    ssm: &aws_sdk_ssm::Client,
    path: &str,
) -> std::collections::BTreeMap<String, Stored> {
    let mut out = std::collections::BTreeMap::new();
    let mut token = None;
    loop {
        let page = ec2
            .runtime
            .block_on(
                ssm.get_parameters_by_path()
                    .path(path)
                    .recursive(true)
                    .set_next_token(token)
                    .send(),
            )
            .expect("GetParametersByPath");
        for parameter in page.parameters() {
            let name = parameter.name().unwrap().to_string();
            let tags = ec2
                .runtime
                .block_on(
                    ssm.list_tags_for_resource()
                        .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::Parameter)
                        .resource_id(&name)
                        .send(),
                )
                .expect("ListTagsForResource")
                .tag_list()
                .iter()
                .map(|t| (t.key().to_string(), t.value().to_string()))
                .collect();
            out.insert(
                name[path.len()..].to_string(),
                Stored {
                    kind: parameter.r#type().unwrap().as_str().to_string(),
                    value: parameter.value().unwrap_or_default().to_string(),
                    tags,
                },
            );
        }
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            return out;
        }
    }
}

#[test]
fn an_ec2_runner_manager_gets_its_config_and_secrets_through_parameters_and_reloads_in_place() {
    let moto = Moto::start();
    let env = env_for(&moto);
    let ec2 = Ec2::new(&moto);
    let ssm = ssm_client(&moto);
    let secret = "glrt-delivery-s3cr3t-value";
    // The test's secrets file: the repository's fake ones and this one.
    let secrets_file = env.path().join("secrets.env");
    let secrets = env.add_secret("DELIVERY_TOKEN", secret);
    let file = env.write("delivery.yaml", &manager_with_secret_file("delivery"));

    let plan = plan_json(&env, &file);
    let shown = plan["resource_changes"][0]["change"]["after"]["metadata"]["gitlab-runner-config"]
        .as_str()
        .expect("the plan shows config.toml")
        .to_string();
    assert!(
        shown.contains("(sensitive)") && !shown.contains(secret),
        "{shown}"
    );
    let applied = calls(&converge(&env, &file));
    // Seven parameters, each made with its tags (the instance that may read it, and for the
    // secret its digest) in one call; nothing listed before (no instance yet), one listing
    // to verify.
    let ssm_calls: Vec<(String, u64)> = applied
        .into_iter()
        .filter(|(op, _)| op.starts_with("ssm:"))
        .map(|(op, n)| (op, n.as_u64().unwrap()))
        .collect();
    assert_eq!(
        ssm_calls,
        [
            ("ssm:GetParametersByPath".to_string(), 1),
            ("ssm:PutParameter".to_string(), 7)
        ]
    );

    let instances = ec2.instances("delivery");
    assert_eq!(instances.len(), 1, "{instances:?}");
    let id = instances[0].id.clone();
    let attribute = ec2
        .runtime
        .block_on(
            ec2.client
                .describe_instance_attribute()
                .instance_id(&id)
                .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
                .send(),
        )
        .expect("DescribeInstanceAttribute");
    let user_data = attribute
        .user_data()
        .and_then(|value| value.value())
        .expect("the instance has user data");
    let read = crate::delivery::cloud_init_reads(user_data);
    let document = read["document"].as_str().unwrap();
    // User data holds the bootstrap and where the parameters are: no file, no value.
    let parts = read["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{parts:#?}");
    assert!(!document.contains(secret), "user data holds the secret");
    assert!(
        !document.contains("gitlab.example.com"),
        "user data holds config.toml"
    );
    assert_eq!(
        crate::delivery::written(&read, "/etc/fleet/parameters").unwrap()["content"],
        "/fleet/delivery/"
    );
    assert!(crate::delivery::written(&read, "/etc/gitlab-runner/config.toml").is_none());
    let merged_runcmd: Vec<&str> = read["merged"]["runcmd"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    let watch = merged_runcmd
        .iter()
        .position(|c| *c == "/usr/local/sbin/fleet-watch")
        .expect("the watcher runs at boot");
    let start = merged_runcmd
        .iter()
        .position(|c| *c == "systemctl enable --now gitlab-runner")
        .unwrap();
    assert!(
        watch < start,
        "config.toml is written before gitlab-runner starts"
    );
    let problems = crate::delivery::schema_problems_of_read(env.path(), "manager", &read);
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The parameters: config.toml as the plan showed it, the decision, the secret as a
    // SecureString whose tag is its digest.
    let prefix = format!("/fleet/delivery/{id}/");
    let parameters = stored(&ec2, &ssm, &prefix);
    let names: Vec<&str> = parameters.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "action",
            "bootstrap.sha256",
            "config.toml",
            "index",
            "secret-digests",
            "secrets/DELIVERY_TOKEN",
            "version"
        ]
    );
    assert_eq!(parameters["config.toml"].kind, "String");
    // What the plan showed, its secret reference masked there.
    assert_eq!(
        fleet_engine::render::mask_secrets(&parameters["config.toml"].value),
        shown
    );
    assert!(parameters["config.toml"]
        .value
        .contains("${secret:DELIVERY_TOKEN}"));
    assert_eq!(parameters["version"].value, "16.11.1");
    let action: serde_json::Value = serde_json::from_str(&parameters["action"].value).unwrap();
    assert_eq!(action["class"], "replace");
    let token = &parameters["secrets/DELIVERY_TOKEN"];
    assert_eq!(token.kind, "SecureString");
    let digest = &token.tags["fleet-digest"];
    assert_eq!(digest.len(), 16);
    assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()), "{digest}");
    assert!(!digest.contains(secret));
    // Each parameter names the one instance the machines' policy lets read it: this one, by
    // the ARN `${ec2:SourceInstanceARN}` gives its role's requests (the account as EC2 says).
    let reader = instance_arn(&ec2, &id);
    for (name, parameter) in &parameters {
        assert_eq!(
            parameter.tags.get("fleet-instance"),
            Some(&reader),
            "{name} is not held to its instance"
        );
    }
    // The leak scan: only the SecureString holds the value (moto keeps it as text with a
    // key prefix, which is why its type is what is checked).
    for (name, parameter) in &parameters {
        if parameter.kind != "SecureString" {
            assert!(!parameter.value.contains(secret), "{name} holds the secret");
        }
        assert!(
            parameter.tags.values().all(|v| !v.contains(secret)),
            "a tag of {name} holds the secret"
        );
    }
    for line in secrets.lines() {
        let (name, value) = line.split_once('=').unwrap();
        if name != "DELIVERY_TOKEN" {
            assert!(!document.contains(value), "{name} was delivered unasked");
        }
    }

    // A steady plan reads the parameters once, undecrypted, and no secret: as counted by
    // fleet and as moto received it.
    let (steady, requests) = moto.ssm_requests_during(|| assert_no_changes(&env, &file));
    let ssm_calls: Vec<(String, u64)> = calls(&steady)
        .into_iter()
        .filter(|(op, _)| op.starts_with("ssm:"))
        .map(|(op, n)| (op, n.as_u64().unwrap()))
        .collect();
    assert_eq!(ssm_calls, [("ssm:GetParametersByPath".to_string(), 1)]);
    assert_eq!(requests.len(), 1, "{requests:?}");
    let (target, body, _) = &requests[0];
    assert_eq!(target, "GetParametersByPath");
    assert_eq!(body["Path"], "/fleet/delivery/", "{body}");
    assert_ne!(body["WithDecryption"], true, "{body}");
    assert_eq!(
        body["ParameterFilters"],
        serde_json::json!([{"Key": "Type", "Option": "Equals", "Values": ["String"]}])
    );
    assert!(!steady.stdout.contains(secret) && !steady.stderr.contains(secret));

    // A rotated secret shows by name, is a reload, and rewrites only its parameter's value and
    // digest, on the same instance.
    std::fs::write(
        &secrets_file,
        secrets.replace(secret, "glrt-rotated-s3cr3t-value"),
    )
    .unwrap();
    let plan = plan_json(&env, &file);
    let change = &plan["resource_changes"][0];
    assert_eq!(
        change["change"]["actions"],
        serde_json::json!(["update"]),
        "{change:#}"
    );
    assert!(
        change.to_string().contains("DELIVERY_TOKEN"),
        "the rotation is named: {change:#}"
    );
    assert_eq!(change["impact"]["class"], "reload", "{change:#}");
    assert!(
        !plan.to_string().contains("glrt-rotated"),
        "the plan holds the value"
    );
    converge(&env, &file);
    let rotated = stored(&ec2, &ssm, &prefix);
    assert_ne!(
        rotated["secrets/DELIVERY_TOKEN"].tags["fleet-digest"], *digest,
        "the digest tag follows the value"
    );
    assert!(rotated["secrets/DELIVERY_TOKEN"]
        .value
        .contains("glrt-rotated-s3cr3t-value"));
    std::fs::write(&secrets_file, &secrets).unwrap();
    converge(&env, &file);

    // A `concurrent` change is a reload of the same instance.
    env.write(
        "delivery.yaml",
        &manager_with_secret_file("delivery").replace("concurrent: 4", "concurrent: 5"),
    );
    let plan = plan_json(&env, &file);
    let change = &plan["resource_changes"][0];
    assert_eq!(
        change["change"]["actions"],
        serde_json::json!(["update"]),
        "{change:#}"
    );
    assert_eq!(change["impact"]["class"], "reload", "{change:#}");
    converge(&env, &file);
    let alive: Vec<String> = ec2.alive("delivery").into_iter().map(|i| i.id).collect();
    assert_eq!(alive.len(), 1);
    assert_eq!(alive[0], id, "the same instance");
    let parameters = stored(&ec2, &ssm, &prefix);
    assert!(parameters["config.toml"].value.contains("concurrent = 5"));
    assert!(parameters
        .values()
        .all(|p| p.tags.get("fleet-instance") == Some(&reader)));
    let action: serde_json::Value = serde_json::from_str(&parameters["action"].value).unwrap();
    assert_eq!(action["class"], "reload");
    assert_no_changes(&env, &file);

    // A machine that goes takes its parameters with it.
    env.write(
        "delivery.yaml",
        &manager_with_secret_file("delivery")
            .replace("concurrent: 4", "concurrent: 5")
            .replace("delivery-manager-{n}", "delivery-mgr-{n}"),
    );
    converge(&env, &file);
    assert!(
        stored(&ec2, &ssm, &prefix).is_empty(),
        "parameters left behind"
    );
    let alive: Vec<String> = ec2.alive("delivery").into_iter().map(|i| i.id).collect();
    assert_eq!(alive.len(), 1);
    assert_ne!(alive[0], id);
    let successor = stored(&ec2, &ssm, &format!("/fleet/delivery/{}/", alive[0]));
    assert_eq!(successor.len(), 7);
    // The new machine's parameters are its own, not its predecessor's.
    let reader = instance_arn(&ec2, &alive[0]);
    assert!(successor
        .values()
        .all(|p| p.tags.get("fleet-instance") == Some(&reader)));
    assert_no_changes(&env, &file);
}

#[test]
fn an_ec2_instance_whose_config_was_edited_is_put_back_and_one_whose_parameters_are_gone_is_made_again(
) {
    let moto = Moto::start();
    let env = env_for(&moto);
    let ec2 = Ec2::new(&moto);
    let ssm = ssm_client(&moto);
    env.add_secret("DELIVERY_TOKEN", "glrt-lost-value");
    let file = env.write("lost.yaml", &manager_with_secret_file("lost"));
    converge(&env, &file);
    let id = ec2.alive("lost")[0].id.clone();
    let prefix = format!("/fleet/lost/{id}/");
    let config = stored(&ec2, &ssm, &prefix)["config.toml"].value.clone();
    // config.toml edited at the console: drift, put back in place on the same machine.
    ec2.runtime
        .block_on(
            ssm.put_parameter()
                .name(format!("{prefix}config.toml"))
                .value("concurrent = 99\n")
                .r#type(aws_sdk_ssm::types::ParameterType::String)
                .overwrite(true)
                .send(),
        )
        .expect("PutParameter");
    let plan = plan_json(&env, &file);
    assert_eq!(actions_of(&plan, "manager.lost-manager-1"), ["update"]);
    assert!(
        reasons_of(&plan, "manager.lost-manager-1").contains(&"drift".to_string()),
        "{plan:#}"
    );
    converge(&env, &file);
    assert_eq!(ec2.alive("lost")[0].id, id);
    assert_eq!(stored(&ec2, &ssm, &prefix)["config.toml"].value, config);
    // Parameters without an index are those of an earlier release, whose watcher lists them
    // by path, which the machines' policy no longer allows: the plan says so and makes the
    // machine again, once.
    ec2.runtime
        .block_on(ssm.delete_parameter().name(format!("{prefix}index")).send())
        .expect("DeleteParameter");
    let plan = plan_json(&env, &file);
    assert_eq!(
        actions_of(&plan, "manager.lost-manager-1"),
        ["create", "delete"],
        "{plan:#}"
    );
    assert!(
        plan.to_string()
            .contains("parameters listed by path (an earlier fleet release)"),
        "{plan:#}"
    );
    converge(&env, &file);
    let id = ec2.alive("lost")[0].id.clone();
    let prefix = format!("/fleet/lost/{id}/");
    assert_eq!(stored(&ec2, &ssm, &prefix).len(), 7);
    assert_no_changes(&env, &file);
    // What an apply killed between the launch and the parameters leaves: a machine whose
    // watcher has nothing to read.
    let names: Vec<String> = stored(&ec2, &ssm, &prefix)
        .keys()
        .map(|name| format!("{prefix}{name}"))
        .collect();
    assert_eq!(names.len(), 7);
    ec2.runtime
        .block_on(ssm.delete_parameters().set_names(Some(names)).send())
        .expect("DeleteParameters");
    let plan = plan_json(&env, &file);
    assert_eq!(
        actions_of(&plan, "manager.lost-manager-1"),
        ["create", "delete"],
        "{plan:#}"
    );
    converge(&env, &file);
    let alive = ec2.alive("lost");
    assert_eq!(alive.len(), 1);
    assert_ne!(alive[0].id, id);
    assert_eq!(
        stored(&ec2, &ssm, &format!("/fleet/lost/{}/", alive[0].id)).len(),
        7
    );
    assert_no_changes(&env, &file);
}
