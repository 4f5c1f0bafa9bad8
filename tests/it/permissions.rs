//! `fleet permissions` checked against what the emulators were seen to serve, not against
//! fleet's own table.
//!
//! A fleet lives through its whole life on each cloud (created with a pool, a template and a
//! manager with a secret and an identity; then updated in place, a pool replaced, the template
//! given a new version; then deleted), and every request is recorded where it arrives: on
//! AWS by the loopback proxy in front of moto (the call named by the query API's `Action` or
//! the JSON API's `X-Amz-Target`, with its parameters), on GCE by the test server's own
//! counters. The requests are mapped to IAM actions and permissions by a mapping written here
//! from the clouds' references (AWS's Service Authorization Reference with the dependent
//! actions of tag-on-create and instance profiles; the Compute Engine API reference and the
//! permissions creating a VM needs), and what `fleet permissions` prints must be exactly that
//! set, job by job.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;

use crate::aws::{create_instance_profile, env_through, Ec2, Moto};
use crate::fault_proxy::{FaultProxy, Received};
use crate::gce_server::GceServer;
use crate::loopback::Loopback;
use crate::support::{actions_of, Env, Run};

const AWS_FLEET: &str = "fleet: perm
clouds:
  aws: { region: us-east-1 }
defaults:
  aws:
    zone: us-east-1a
    image: ami-0c9f35b1b63e7d2a4
    disk: { type: gp3, size_gb: 100 }
templates:
  arm64-aws:
    cloud: aws
    machine_type: m6g.2xlarge
    arch: arm64
managers:
  perm-manager-{n}:
    matrix: { count: 2 }
    cloud: aws
    machine_type: m6g.large
    instance_profile: ci-runner
    runner: { version: \"16.11.1\", concurrent: 4 }
    runners:
      - name: perm-shell-{n}
        executor: shell
        url: https://gitlab.example.com
        token: \"${secret:PERM_TOKEN}\"
      - name: perm-arm-{n}
        template: arm64-aws
        arch: armv7
pools:
  perm-builder-{n}:
    size: 2
    machine_type: m6g.2xlarge
    role: builder
";

const GCP_ACCOUNT: &str = "ci-runner@gitlab-ci-runners.iam.gserviceaccount.com";

const GCP_FLEET: &str = "fleet: gperm
clouds:
  gcp: { project: gitlab-ci-runners, region: us-east1 }
defaults:
  gcp:
    image: projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts
    disk: { type: pd-ssd, size_gb: 50 }
templates:
  autoscaled:
    cloud: gcp
    zone: us-east1-c
    machine_type: n1-standard-2
    arch: amd64
managers:
  gperm-manager-{n}:
    matrix: { count: 1 }
    cloud: gcp
    zone: us-east1-c
    machine_type: n1-standard-4
    service_account: ci-runner@gitlab-ci-runners.iam.gserviceaccount.com
    runner: { version: \"16.11.1\", concurrent: 4 }
    runners:
      - name: gperm-auto
        template: autoscaled
        url: https://gitlab.com/
        token: \"${secret:GPERM_TOKEN}\"
pools:
  gperm-builder-{n}:
    size: 2
    cloud: gcp
    zone: us-east1-c
    machine_type: n1-standard-2
    role: builder
";

/// The same fleet a day later: a config change (in place), the pool on another machine type
/// (replaced) and the template on another (a new version, the old one retired).
fn changed(text: &str, edits: &[(&str, &str)]) -> String {
    let mut text = text.to_string();
    for (from, to) in edits {
        assert!(text.contains(from), "{from} is not in the fleet file");
        text = text.replacen(from, to, 1);
    }
    text
}

/// The same fleet with nothing in it: everything is deleted.
fn emptied(text: &str) -> String {
    let end = text.find("defaults:").expect("a defaults section");
    text[..end].to_string()
}

/// The IAM actions one AWS request needs, from the Service Authorization Reference: the action
/// of its own name, and the dependent actions its parameters call for (`ec2:CreateTags` for a
/// creation that tags what it makes, `iam:PassRole` for a launch with an instance profile).
fn aws_actions(request: &Received) -> BTreeSet<String> {
    let mut actions = BTreeSet::from([format!("{}:{}", request.service, request.operation)]);
    let has = |prefix: &str| request.form.iter().any(|(key, _)| key.starts_with(prefix));
    let creation = ["RunInstances", "CreateLaunchTemplate"].contains(&request.operation.as_str());
    if request.service == "ec2" && creation && has("TagSpecification.") {
        actions.insert("ec2:CreateTags".to_string());
    }
    if request.service == "ec2" && request.operation == "RunInstances" && has("IamInstanceProfile.")
    {
        actions.insert("iam:PassRole".to_string());
    }
    actions
}

/// The SSM parameters or paths one request names, as parameter ARNs (moto's account).
fn ssm_resources(request: &Received) -> Vec<String> {
    let json = &request.json;
    let names: Vec<String> = match request.operation.as_str() {
        "GetParametersByPath" => vec![json["Path"].as_str().unwrap_or_default().to_string()],
        "PutParameter" => vec![json["Name"].as_str().unwrap_or_default().to_string()],
        "AddTagsToResource" => vec![json["ResourceId"].as_str().unwrap_or_default().to_string()],
        "DeleteParameters" | "GetParameters" => json["Names"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect(),
        other => panic!("an SSM call this test does not know: {other}"),
    };
    names
        .iter()
        .map(|name| format!("arn:aws:ssm:us-east-1:123456789012:parameter{name}"))
        .collect()
}

/// What IAM decides on `action` on the parameter named `name` with `tags` (`None`: there is
/// no such parameter), requested with the role of the instance `caller`: an explicit deny
/// wins, else an allow, else refused. A model of IAM's evaluation for what these policies
/// use, written from the IAM policy reference (moto evaluates none of it):
/// `StringEquals` / `StringNotEquals` on `aws:ResourceTag/KEY`, with
/// `${ec2:SourceInstanceARN}` resolved to the caller, a missing tag matching no
/// `StringEquals` and every `StringNotEquals`. Any other operator or key fails the test.
fn iam_allows(
    policy: &serde_json::Value,
    action: &str,
    name: &str,
    tags: Option<&BTreeMap<String, String>>,
    caller: &str,
) -> bool {
    let arn = format!("arn:aws:ssm:us-east-1:123456789012:parameter{name}");
    let applies = |statement: &serde_json::Value| -> bool {
        let actions: Vec<&str> = match &statement["Action"] {
            serde_json::Value::String(one) => vec![one.as_str()],
            serde_json::Value::Array(many) => many.iter().filter_map(|a| a.as_str()).collect(),
            _ => Vec::new(),
        };
        let resources: Vec<&str> = match &statement["Resource"] {
            serde_json::Value::String(one) => vec![one.as_str()],
            serde_json::Value::Array(many) => many.iter().filter_map(|r| r.as_str()).collect(),
            _ => Vec::new(),
        };
        if !actions.iter().any(|a| arn_matches(a, action))
            || !resources.iter().any(|r| arn_matches(r, &arn))
        {
            return false;
        }
        let Some(conditions) = statement["Condition"].as_object() else {
            return true;
        };
        conditions.iter().all(|(operator, keys)| {
            keys.as_object().unwrap().iter().all(|(key, wanted)| {
                let tag = key
                    .strip_prefix("aws:ResourceTag/")
                    .unwrap_or_else(|| panic!("a condition key this model lacks: {key}"));
                let wanted = wanted
                    .as_str()
                    .unwrap()
                    .replace("${ec2:SourceInstanceARN}", caller);
                let have = tags.and_then(|tags| tags.get(tag));
                match operator.as_str() {
                    "StringEquals" => have == Some(&wanted),
                    "StringNotEquals" => have != Some(&wanted),
                    other => panic!("a condition operator this model lacks: {other}"),
                }
            })
        })
    };
    let statements = statements(policy);
    !statements
        .iter()
        .any(|s| s["Effect"] == "Deny" && applies(s))
        && statements
            .iter()
            .any(|s| s["Effect"] == "Allow" && applies(s))
}

/// Each instance may read exactly the parameters tagged for it: its own (under its id), none
/// of another's, and nothing without a tag; nor list, read singly or write any of them.
#[track_caller]
fn assert_isolated(
    policy: &serde_json::Value,
    tagged: &BTreeMap<String, crate::aws::Stored>,
    instances: &BTreeMap<String, String>,
) {
    assert!(instances.len() >= 2, "{instances:?}");
    for (name, parameter) in tagged {
        let full = format!("/fleet/perm/{name}");
        for (id, arn) in instances {
            let own = name.starts_with(&format!("{id}/"));
            assert_eq!(
                iam_allows(
                    policy,
                    "ssm:GetParameters",
                    &full,
                    Some(&parameter.tags),
                    arn
                ),
                own,
                "{full} read by {id}"
            );
            for other in [
                "ssm:GetParameter",
                "ssm:GetParametersByPath",
                "ssm:PutParameter",
                "ssm:AddTagsToResource",
            ] {
                assert!(
                    !iam_allows(policy, other, &full, Some(&parameter.tags), arn),
                    "{other} on {full} by {id}"
                );
            }
        }
    }
    for arn in instances.values() {
        assert!(!iam_allows(
            policy,
            "ssm:GetParameters",
            "/fleet/perm/i-0/untagged",
            Some(&BTreeMap::new()),
            arn
        ));
        assert!(!iam_allows(
            policy,
            "ssm:GetParametersByPath",
            "/fleet",
            None,
            arn
        ));
        assert!(!iam_allows(
            policy,
            "ssm:GetParametersByPath",
            "/",
            None,
            arn
        ));
    }
}

/// Whether an ARN matches an IAM resource pattern (`*` any run of characters).
fn arn_matches(pattern: &str, arn: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let Some((first, rest)) = parts.split_first() else {
        return pattern == arn;
    };
    let Some(mut left) = arn.strip_prefix(first) else {
        return false;
    };
    for (index, part) in rest.iter().enumerate() {
        if index == rest.len() - 1 {
            return left.ends_with(part);
        }
        match left.find(part) {
            Some(at) => left = &left[at + part.len()..],
            None => return false,
        }
    }
    left.is_empty()
}

/// What `parliament` (the IAM policy linter, from PyPI) finds in a policy document at MEDIUM
/// severity or above, as its JSON lines; empty when it finds nothing.
fn parliament(document: &str) -> String {
    let output = Command::new("parliament")
        .args([
            "--minimum_severity",
            "MEDIUM",
            "--json",
            "--string",
            document,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("parliament is not installed: `pip install parliament` (CI's .ci/run does)");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success() || !stdout.trim().is_empty(),
        "parliament failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.trim().to_string()
}

/// The condition keys the Service Authorization Reference gives for an action, on its
/// resource types and on itself, as parliament ships the reference (`iam_definition.json`).
fn reference_conditions(action: &str) -> BTreeSet<String> {
    let located = Command::new("python3")
        .args([
            "-c",
            "import os, parliament; print(os.path.join(os.path.dirname(parliament.__file__), 'iam_definition.json'))",
        ])
        .output()
        .expect("python3");
    let path = String::from_utf8_lossy(&located.stdout).trim().to_string();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("parliament's IAM reference at {path:?}: {e} (`pip install parliament`)")
    });
    let services: serde_json::Value = serde_json::from_str(&text).expect("the reference is JSON");
    let (prefix, name) = action.split_once(':').unwrap();
    let service = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["prefix"] == prefix)
        .unwrap_or_else(|| panic!("no service {prefix} in the reference"));
    let privilege = service["privileges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["privilege"] == name)
        .unwrap_or_else(|| panic!("no action {action} in the reference"));
    let mut keys = BTreeSet::new();
    for resource_type in privilege["resource_types"].as_array().unwrap() {
        for key in resource_type["condition_keys"].as_array().unwrap() {
            keys.insert(key.as_str().unwrap().to_string());
        }
    }
    keys
}

/// `fleet permissions FILE --for JOB --only-cloud CLOUD --format json`.
pub(crate) fn printed(env: &Env, file: &str, job: &str, cloud: &str) -> serde_json::Value {
    env.fleet(&[
        "permissions",
        file,
        "--for",
        job,
        "--only-cloud",
        cloud,
        "--format",
        "json",
    ])
    .ok()
    .json()
}

/// The allowed actions of a policy document, and its statements.
fn allowed(policy: &serde_json::Value) -> BTreeSet<String> {
    statements(policy)
        .iter()
        .filter(|s| s["Effect"] == "Allow")
        .flat_map(|s| s["Action"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect()
}

fn statements(policy: &serde_json::Value) -> Vec<serde_json::Value> {
    policy["Statement"].as_array().cloned().unwrap_or_default()
}

/// The resource patterns of the statements allowing `action`.
fn resources_for(policy: &serde_json::Value, action: &str) -> Vec<String> {
    statements(policy)
        .iter()
        .filter(|s| s["Effect"] == "Allow")
        .filter(|s| {
            s["Action"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == action))
        })
        .flat_map(|s| match &s["Resource"] {
            serde_json::Value::String(one) => vec![one.clone()],
            serde_json::Value::Array(many) => many
                .iter()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// `fleet --cloud live --only-cloud aws ARGS…`, with the requests it sent.
fn aws_run(env: &Env, proxy: &FaultProxy, args: &[&str]) -> (Run, Vec<Received>) {
    proxy.take_requests();
    let mut all = vec!["--cloud", "live", "--only-cloud", "aws"];
    all.extend_from_slice(args);
    let run = env.fleet(&all);
    (run, proxy.take_requests())
}

/// Runs the EC2 watcher of `id` once, as the machine would (its role from IMDSv2, its
/// parameters read signed through `proxy`), and returns the requests it sent.
fn ec2_watch(env: &Env, ec2: &Ec2, proxy: &FaultProxy, id: &str) -> Vec<Received> {
    let machine = crate::watcher::ec2_machine(env.path(), ec2, id);
    let server = Loopback::serve(
        axum::Router::new()
            .fallback(crate::watcher::imds)
            .with_state(Arc::new(id.to_string())),
    );
    let path = format!(
        "{}:{}",
        machine.bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    proxy.take_requests();
    let output = Command::new("python3")
        .arg(&machine.script)
        .env("PATH", path)
        .env("FLEET_WATCH_IMDS_URL", server.url())
        .env("FLEET_WATCH_SSM_URL", proxy.url())
        .env("FLEET_WATCH_ROOT", &machine.root)
        .env("FLEET_WATCH_TEST_LOG", &machine.log)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "the watcher failed:\n{stdout}");
    assert!(!stdout.contains("cannot read"), "{stdout}");
    let config = std::fs::read_to_string(machine.root.join("etc/gitlab-runner/config.toml"))
        .expect("the watcher wrote config.toml");
    assert!(config.contains("glrt-perm-s3cr3t"), "the secret was read");
    proxy.take_requests()
}

#[test]
fn the_aws_policies_allow_exactly_what_plan_apply_and_the_machine_were_seen_to_call() {
    let moto = Moto::start();
    // Every request goes through the proxy, which records it (and answers
    // `DeleteLaunchTemplateVersions`, which moto lacks).
    let proxy = FaultProxy::start(&moto.url);
    let env = env_through(&moto, &proxy);
    let ec2 = Ec2::new(&moto);
    create_instance_profile(&moto, "/", "ci-runner");
    env.add_secret("PERM_TOKEN", "glrt-perm-s3cr3t");
    let file = env.write("perm.yaml", AWS_FLEET);

    let mut plans: Vec<Received> = Vec::new();
    let mut applies: Vec<Received> = Vec::new();
    let watch = |plans: &mut Vec<Received>, applies: &mut Vec<Received>, text: &str| {
        env.write("perm.yaml", text);
        let (plan, seen) = aws_run(&env, &proxy, &["plan", &file, "--format", "json"]);
        plans.extend(seen);
        let plan = plan.ok().json();
        let (apply, seen) = aws_run(&env, &proxy, &["apply", &file, "--auto-approve"]);
        applies.extend(seen);
        apply.verified();
        plan
    };
    // Created: a launch template, a manager with a secret and an instance profile, a pool.
    let created = watch(&mut plans, &mut applies, AWS_FLEET);
    assert_eq!(actions_of(&created, "pool.perm-builder-1"), ["create"]);
    let manager = ec2.by_name("perm", "perm-manager-1");
    let machine = ec2_watch(&env, &ec2, &proxy, &manager.id);
    // What IAM would decide on the machine's reads and on every parameter of the fleet, from
    // the printed policy and the tags moto holds (moto does not evaluate IAM: see
    // `iam_allows`), here and again after the update.
    let ssm = crate::aws::ssm_client(&moto);
    let tagged = crate::aws::stored(&ec2, &ssm, "/fleet/perm/");
    let own_arn = crate::aws::instance_arn(&ec2, &manager.id);
    let arns = |ec2: &Ec2| -> BTreeMap<String, String> {
        ec2.alive("perm")
            .into_iter()
            .map(|i| (i.id.clone(), crate::aws::instance_arn(ec2, &i.id)))
            .collect()
    };
    let instance_arns = arns(&ec2);
    assert_eq!(
        tagged
            .keys()
            .filter_map(|n| n.split_once('/').map(|(id, _)| id.to_string()))
            .collect::<BTreeSet<_>>()
            .len(),
        2,
        "two managers with parameters: {:?}",
        tagged.keys()
    );
    // A day later: in place, replaced, a new template version.
    let later = changed(
        AWS_FLEET,
        &[
            ("concurrent: 4", "concurrent: 5"),
            (
                "    machine_type: m6g.2xlarge\n    role: builder",
                "    machine_type: m6g.xlarge\n    role: builder",
            ),
            (
                "    machine_type: m6g.2xlarge\n    arch: arm64",
                "    machine_type: m6g.4xlarge\n    arch: arm64",
            ),
        ],
    );
    let plan = watch(&mut plans, &mut applies, &later);
    assert_eq!(actions_of(&plan, "manager.perm-manager-1"), ["update"]);
    let tagged_later = crate::aws::stored(&ec2, &ssm, "/fleet/perm/");
    let instance_arns_later = arns(&ec2);
    assert!(
        actions_of(&plan, "pool.perm-builder-1").contains(&"delete".to_string()),
        "{plan:#}"
    );
    assert_eq!(
        actions_of(&plan, "template.arm64-aws"),
        ["create", "delete"]
    );
    // Gone.
    let plan = watch(&mut plans, &mut applies, &emptied(AWS_FLEET));
    assert_eq!(actions_of(&plan, "manager.perm-manager-1"), ["delete"]);
    assert!(ec2.alive("perm").is_empty());

    let observed = |requests: &[Received]| -> BTreeSet<String> {
        requests.iter().flat_map(aws_actions).collect()
    };
    // The printed policies are for the fleet file as it was made.
    env.write("perm.yaml", AWS_FLEET);
    for (job, requests) in [("plan", &plans), ("apply", &applies), ("manager", &machine)] {
        let printed = printed(&env, &file, job, "aws");
        let policy = &printed["aws"]["policy"];
        assert_eq!(
            allowed(policy),
            observed(requests),
            "--for {job}: the policy allows what the emulator served, no more, no less:\n{policy:#}"
        );
        // Every parameter a request named is under a resource the policy allows it on.
        for request in requests.iter().filter(|r| r.service == "ssm") {
            let action = format!("ssm:{}", request.operation);
            let patterns = resources_for(policy, &action);
            for arn in ssm_resources(request) {
                assert!(
                    patterns.iter().any(|p| arn_matches(p, &arn)),
                    "--for {job}: {action} on {arn} is outside {patterns:?}"
                );
            }
        }
    }
    // A plan only reads, and reads no secret: every SSM read asked for no decryption, and the
    // policy denies decrypting, which the AWS managed key would otherwise allow.
    for request in &plans {
        assert!(
            ["Describe", "List", "Get"]
                .iter()
                .any(|verb| request.operation.starts_with(verb)),
            "a plan sent {}:{}",
            request.service,
            request.operation
        );
        if request.service == "ssm" {
            assert_eq!(request.json["WithDecryption"], false, "{:?}", request.json);
        }
    }
    let plan_policy = printed(&env, &file, "plan", "aws")["aws"]["policy"].clone();
    assert!(
        statements(&plan_policy)
            .iter()
            .any(|s| s["Effect"] == "Deny" && s["Action"] == serde_json::json!(["kms:Decrypt"])),
        "{plan_policy:#}"
    );
    // The machine's reads are decrypted, by name, under its own instance's prefix: the
    // files, decision and digests, then its one secret.
    assert_eq!(machine.len(), 2, "{machine:?}");
    let own_prefix = format!("/fleet/perm/{}/", manager.id);
    for request in &machine {
        assert_eq!(request.operation, "GetParameters");
        assert_eq!(request.json["WithDecryption"], true);
    }
    // The policy lets the machine read exactly its own parameters, as IAM would decide on
    // the tags moto holds: every name it asked for exists and is its own.
    let manager_policy = printed(&env, &file, "manager", "aws")["aws"]["policy"].clone();
    for request in &machine {
        for name in request.json["Names"].as_array().unwrap() {
            let name = name.as_str().unwrap();
            assert!(name.starts_with(&own_prefix), "{name}");
            let relative = name.strip_prefix("/fleet/perm/").unwrap();
            let tags = tagged.get(relative).map(|p| &p.tags);
            assert!(
                tags.is_some(),
                "the watcher asked for {name}, which does not exist"
            );
            assert!(
                iam_allows(&manager_policy, "ssm:GetParameters", name, tags, &own_arn),
                "{name} is refused to its machine"
            );
        }
    }
    assert_isolated(&manager_policy, &tagged, &instance_arns);
    assert_isolated(&manager_policy, &tagged_later, &instance_arns_later); // Tags at launch are allowed only for the creations seen tagging what they made.
    let apply_policy = printed(&env, &file, "apply", "aws")["aws"]["policy"].clone();
    let tagging_creations: BTreeSet<String> = applies
        .iter()
        .filter(|r| {
            r.form
                .iter()
                .any(|(k, _)| k.starts_with("TagSpecification."))
        })
        .map(|r| r.operation.clone())
        .collect();
    let on_launch = statements(&apply_policy)
        .into_iter()
        .find(|s| s["Condition"]["StringEquals"]["ec2:CreateAction"].is_array())
        .expect("a statement for tags at launch");
    let allowed_creations: BTreeSet<String> = on_launch["Condition"]["StringEquals"]
        ["ec2:CreateAction"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    assert_eq!(allowed_creations, tagging_creations);
    // The role passed is the one profile the fleet names.
    assert_eq!(
        resources_for(&apply_policy, "iam:PassRole"),
        ["arn:aws:iam::*:role/ci-runner"]
    );
}

/// The permissions one GCE method needs, from the Compute Engine API reference.
fn gce_permission(method: &str) -> &'static str {
    match method {
        "compute.instances.aggregatedList" | "compute.instances.list" => "compute.instances.list",
        "compute.instances.get" => "compute.instances.get",
        "compute.instances.insert" | "compute.instances.bulkInsert" => "compute.instances.create",
        "compute.instances.delete" => "compute.instances.delete",
        "compute.instances.setLabels" => "compute.instances.setLabels",
        "compute.instances.setMetadata" => "compute.instances.setMetadata",
        "compute.instanceTemplates.list" => "compute.instanceTemplates.list",
        "compute.instanceTemplates.get" => "compute.instanceTemplates.get",
        "compute.instanceTemplates.insert" => "compute.instanceTemplates.create",
        "compute.instanceTemplates.delete" => "compute.instanceTemplates.delete",
        "compute.zoneOperations.get" | "compute.zoneOperations.wait" => {
            "compute.zoneOperations.get"
        }
        "compute.globalOperations.get" | "compute.globalOperations.wait" => {
            "compute.globalOperations.get"
        }
        // Secret Manager's IAM reference: creating a secret, adding a version, updating its
        // labels (a PATCH is `secrets.update`), deleting it, reading a version.
        "secretmanager.secrets.create" => "secretmanager.secrets.create",
        "secretmanager.secrets.addVersion" => "secretmanager.versions.add",
        "secretmanager.secrets.patch" => "secretmanager.secrets.update",
        "secretmanager.secrets.delete" => "secretmanager.secrets.delete",
        "secretmanager.secrets.get" => "secretmanager.secrets.get",
        "secretmanager.versions.access" => "secretmanager.versions.access",
        other => panic!("a GCE method this test does not know: {other}"),
    }
}

/// What creating the VMs the server holds needed beside `compute.instances.create`, from what
/// each was made with (GCE's "required permissions" for creating a VM): a new boot disk, a
/// network interface on a VPC subnetwork, metadata, labels and a service account (and acting
/// as that account).
fn creation_needs(server: &GceServer) -> BTreeSet<String> {
    let mut needs = BTreeSet::new();
    for instance in server.instances() {
        // No disk exists before its VM (the server keeps no disk resources, as GCE lists
        // none with the VM): a boot disk was made by the creation.
        if instance.disks.iter().any(|d| d.boot == Some(true)) {
            needs.insert("compute.disks.create".to_string());
        }
        if !instance.network_interfaces.is_empty() {
            needs.insert("compute.subnetworks.use".to_string());
        }
        if instance
            .metadata
            .as_ref()
            .is_some_and(|m| !m.items.is_empty())
        {
            needs.insert("compute.instances.setMetadata".to_string());
        }
        if !instance.labels.is_empty() {
            needs.insert("compute.instances.setLabels".to_string());
        }
        for account in &instance.service_accounts {
            needs.insert("compute.instances.setServiceAccount".to_string());
            needs.insert(format!(
                "iam.serviceAccounts.actAs on {}",
                account.email.clone().unwrap_or_default()
            ));
        }
    }
    needs
}

/// Deletes a VM as a person at the console would, straight through the REST API, and waits
/// for the deletion to be done.
fn console_delete(server: &GceServer, zone: &str, name: &str) {
    let base = format!("/compute/v1/projects/gitlab-ci-runners/zones/{zone}");
    let answer = http(server, "DELETE", &format!("{base}/instances/{name}"));
    let operation: serde_json::Value = serde_json::from_str(&answer).expect("an operation");
    let operation = operation["name"].as_str().expect("its name").to_string();
    for _ in 0..10 {
        let polled = http(
            server,
            "POST",
            &format!("{base}/operations/{operation}/wait"),
        );
        if polled.contains("\"DONE\"") {
            break;
        }
    }
    assert!(server.instance(name).is_none(), "{name} is still there");
}

/// One plain HTTP/1.0 request to the server; the body of its answer.
fn http(server: &GceServer, method: &str, path: &str) -> String {
    let address = server.endpoint().trim_start_matches("http://").to_string();
    let (head, body) = crate::loopback::request(&address, method, path);
    assert!(head.contains(" 200 "), "{method} {path}: {head}\n\n{body}");
    body
}

/// `fleet --cloud live --only-cloud gcp ARGS…` against the server, with the calls it served.
fn gcp_run(env: &Env, server: &GceServer, args: &[&str]) -> (Run, BTreeMap<String, u64>) {
    server.reset_calls();
    let endpoint = server.endpoint();
    let secrets = server.secrets().endpoint();
    let mut all = vec!["--cloud", "live", "--only-cloud", "gcp"];
    all.extend_from_slice(args);
    let run = env.fleet_with(
        &all,
        &[
            ("FLEET_GCP_ENDPOINT", endpoint.as_str()),
            ("FLEET_GCP_SECRETS_ENDPOINT", secrets.as_str()),
            ("FLEET_GCP_ANONYMOUS", "1"),
        ],
    );
    (run, server.calls())
}

#[test]
fn the_gcp_roles_hold_exactly_what_plan_and_apply_were_seen_to_call() {
    let server = GceServer::start("gitlab-ci-runners");
    let env = Env::new();
    let secrets = env.path().join("secrets.env");
    env.add_secret("GPERM_TOKEN", "glrt-gperm-s3cr3t");
    let file = env.write("gperm.yaml", GCP_FLEET);

    let mut plans: BTreeSet<String> = BTreeSet::new();
    let mut applies: BTreeSet<String> = BTreeSet::new();
    let mut creations: BTreeSet<String> = BTreeSet::new();
    let mut live = |text: &str, lose_answers: u32| {
        env.write("gperm.yaml", text);
        let (plan, calls) = gcp_run(&env, &server, &["plan", &file, "--format", "json"]);
        plans.extend(calls.keys().cloned());
        let plan = plan.ok().json();
        // An insert whose answer is lost is sent again, and the replay looks for its VM.
        server.lose_answers(lose_answers);
        let (apply, calls) = gcp_run(&env, &server, &["apply", &file, "--auto-approve"]);
        apply.verified();
        applies.extend(calls.keys().cloned());
        creations.extend(creation_needs(&server));
        plan
    };
    // The first three mutations are the three creations: every one is sent again.
    let created = live(GCP_FLEET, 3);
    assert_eq!(actions_of(&created, "pool.gperm-builder-1"), ["create"]);
    // The manager deleted at the console is made again: the same creation, whose replayed
    // insert looks for its VM (`instances.get`) and, finding it gone, is sent anew.
    console_delete(&server, "us-east1-c", "gperm-manager-1");
    let again = live(GCP_FLEET, 0);
    assert_eq!(actions_of(&again, "manager.gperm-manager-1"), ["create"]);
    let later = changed(
        GCP_FLEET,
        &[
            ("concurrent: 4", "concurrent: 5"),
            (
                "    machine_type: n1-standard-2\n    role: builder",
                "    machine_type: n1-standard-4\n    role: builder",
            ),
            (
                "    machine_type: n1-standard-2\n    arch: amd64",
                "    machine_type: n1-standard-4\n    arch: amd64",
            ),
        ],
    );
    // The same day the manager's token is rotated: a new version, its digest label updated.
    let rotated = std::fs::read_to_string(&secrets)
        .unwrap()
        .replace("glrt-gperm-s3cr3t", "glrt-gperm-r0tated");
    std::fs::write(&secrets, rotated).unwrap();
    let plan = live(&later, 0);
    assert_eq!(actions_of(&plan, "manager.gperm-manager-1"), ["update"]);
    let plan = live(&emptied(GCP_FLEET), 0);
    assert_eq!(actions_of(&plan, "manager.gperm-manager-1"), ["delete"]);
    assert!(server.instances().is_empty() && server.templates().is_empty());
    // The paths the test meant to take were taken.
    for method in [
        "compute.instances.bulkInsert",
        "compute.instances.get",
        "compute.instances.setMetadata",
        "compute.instanceTemplates.delete",
    ] {
        assert!(applies.contains(method), "{method} not in {applies:?}");
    }

    env.write("gperm.yaml", GCP_FLEET);
    let expected = |methods: &BTreeSet<String>, with_creations: bool| -> BTreeSet<String> {
        let mut permissions: BTreeSet<String> = methods
            .iter()
            .map(|m| gce_permission(m).to_string())
            .collect();
        if with_creations {
            permissions.extend(creations.iter().cloned());
        }
        permissions
    };
    // The applies wrote, rotated and deleted the manager's secret: Secret Manager's
    // calls are among those served (the GCE server counts its Secret Manager's too).
    for method in [
        "secretmanager.secrets.create",
        "secretmanager.secrets.addVersion",
        "secretmanager.secrets.patch",
        "secretmanager.secrets.delete",
    ] {
        assert!(applies.contains(method), "{method} not in {applies:?}");
    }
    assert!(
        !plans.iter().any(|m| m.starts_with("secretmanager.")),
        "a plan reads no secret: {plans:?}"
    );
    // The machine's own calls are observed where its watcher runs:
    // `watcher::the_gce_watcher_reads_its_secrets_from_secret_manager_…`.
    for (job, methods, with_creations) in [("plan", &plans, false), ("apply", &applies, true)] {
        let printed = printed(&env, &file, job, "gcp");
        let gcp = &printed["gcp"];
        let mut held: BTreeSet<String> = gcp["role"]["includedPermissions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p.as_str().map(str::to_string))
            .collect();
        for (account, permissions) in gcp["on_service_accounts"].as_object().unwrap() {
            for permission in permissions.as_array().unwrap() {
                held.insert(format!("{} on {account}", permission.as_str().unwrap()));
            }
        }
        assert_eq!(
            held,
            expected(methods, with_creations),
            "--for {job}: the role holds what the server served, no more, no less:\n{gcp:#}"
        );
    }
    // The machine reads its config from the metadata server: no Compute Engine permission;
    // its own secrets only, by a condition on their names.
    let manager = printed(&env, &file, "manager", "gcp");
    assert_eq!(
        manager["gcp"]["role"]["includedPermissions"],
        serde_json::json!(["secretmanager.versions.access"])
    );
    // The manager's account is bound with a condition naming exactly its machine's secret.
    let conditions = manager["gcp"]["conditions"].as_object().unwrap();
    assert_eq!(
        conditions.keys().collect::<Vec<_>>(),
        [&format!("serviceAccount:{GCP_ACCOUNT}")]
    );
    let expression = conditions[&format!("serviceAccount:{GCP_ACCOUNT}")]["expression"]
        .as_str()
        .unwrap();
    let id = fleet_engine::render::delivery::gce_secret_id(
        "gperm",
        "zones/us-east1-c/instances/gperm-manager-1",
        "GPERM_TOKEN",
    );
    assert_eq!(
        expression,
        format!("resource.name == \"projects/PROJECT_NUMBER/secrets/{id}\"")
    );
    assert!(GCP_FLEET.contains(GCP_ACCOUNT));
}

#[test]
fn the_policy_documents_are_what_the_clouds_tools_read_and_the_same_every_time() {
    let env = Env::new();
    let file = env.write("perm.yaml", AWS_FLEET);
    let first = env.fleet(&[
        "permissions",
        &file,
        "--for",
        "apply",
        "--only-cloud",
        "aws",
    ]);
    let first = first.ok();
    let again = env
        .fleet(&[
            "permissions",
            &file,
            "--for",
            "apply",
            "--only-cloud",
            "aws",
        ])
        .ok();
    assert_eq!(
        first.stdout, again.stdout,
        "the same file prints the same bytes"
    );
    // Standard output is the document alone; the notes go to standard error.
    let document: serde_json::Value =
        serde_json::from_str(&first.stdout).expect("the policy document is JSON");
    assert_eq!(document["Version"], "2012-10-17");
    assert!(first.stderr.contains("note: "), "{}", first.stderr);
    // Each job's document passes parliament, which checks actions, resources and condition
    // keys against the IAM definitions of the Service Authorization Reference: above all that
    // `aws:ResourceTag/…` is a condition `ssm:GetParameters` honours, the one the machines'
    // own reads are held by. (Its one LOW finding, `Resource: *` on `RunInstances` and
    // `CreateLaunchTemplate`, is the region-held launch statement.)
    for job in ["plan", "apply", "manager"] {
        let document = env
            .fleet(&["permissions", &file, "--for", job, "--only-cloud", "aws"])
            .ok()
            .stdout;
        let findings = parliament(&document);
        assert!(findings.is_empty(), "--for {job}: {findings}\n{document}");
    }
    // The check can fail: a condition key `ssm:GetParameters` does not take.
    let misfit = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["ssm:GetParameters"],"Resource":"arn:aws:ssm:us-east-1:*:parameter/fleet/perm/*","Condition":{"Bool":{"ssm:Recursive":"true"}}}]}"#;
    assert!(
        parliament(misfit).contains("UNKNOWN_CONDITION_FOR_ACTION"),
        "parliament did not check the condition key"
    );
    // parliament takes `aws:` keys as global; the reference it ships says per action which
    // keys it honours. The machines' condition is on `aws:ResourceTag/…`, which the
    // reference gives for `ssm:GetParameters` itself, not for `ssm:GetParametersByPath`
    // (authorised on the path, and returning every level below it: the watcher reads by
    // name).
    let manager = printed(&env, &file, "manager", "aws")["aws"]["policy"].clone();
    for statement in statements(&manager) {
        for action in statement["Action"].as_array().unwrap() {
            let action = action.as_str().unwrap();
            let honoured = reference_conditions(action);
            for key in statement["Condition"]
                .as_object()
                .into_iter()
                .flat_map(|operators| operators.values())
                .flat_map(|keys| keys.as_object().unwrap().keys())
            {
                let general = match key.split_once('/') {
                    Some((head, _)) => format!("{head}/${{TagKey}}"),
                    None => key.clone(),
                };
                assert!(
                    honoured.contains(&general),
                    "{action} does not honour {key}: {honoured:?}"
                );
            }
        }
    }
    assert!(!reference_conditions("ssm:GetParametersByPath").contains("aws:ResourceTag/${TagKey}"));
    let gcp_file = env.write("gperm.yaml", GCP_FLEET);
    let role = env
        .fleet(&[
            "permissions",
            &gcp_file,
            "--for",
            "plan",
            "--only-cloud",
            "gcp",
        ])
        .ok();
    let lines: Vec<&str> = role
        .stdout
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert_eq!(lines[0], "title: \"fleet gperm plan\"", "{}", role.stdout);
    assert!(lines.contains(&"includedPermissions:"), "{}", role.stdout);
    assert!(
        lines.contains(&"- compute.instances.list"),
        "{}",
        role.stdout
    );
    // A cloud the file does not use is refused, saying which it does.
    let refused = env
        .fleet(&[
            "permissions",
            &gcp_file,
            "--for",
            "plan",
            "--only-cloud",
            "aws",
        ])
        .code(1);
    assert!(refused.stderr.contains("clouds.aws"), "{}", refused.stderr);
}

#[test]
fn the_permissions_of_every_fleet_in_the_repository_are_the_golden_ones() {
    let env = Env::new();
    let mut failures = Vec::new();
    for fleet in [
        "arm-builders",
        "ci-shared-runners",
        "distribution",
        "mdis-wb31",
    ] {
        for job in ["plan", "apply", "manager"] {
            let run = env
                .fleet(&[
                    "permissions",
                    &format!("fleets/{fleet}.yaml"),
                    "--for",
                    job,
                    "--format",
                    "json",
                ])
                .ok();
            crate::support::golden(
                &format!("plans/{fleet}/permissions-{job}.json"),
                &run.stdout,
                &mut failures,
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The string literals of a source file that name an API operation: `ec2:X`/`ssm:X` on AWS,
/// `compute.collection.method` on GCE.
fn operations_named_in(path: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(crate::support::repo().join(path)).unwrap();
    text.split('"')
        .skip(1)
        .step_by(2)
        .filter(|literal| {
            let aws = ["ec2:", "ssm:"].iter().any(|prefix| {
                literal.strip_prefix(prefix).is_some_and(|name| {
                    name.starts_with(|c: char| c.is_ascii_uppercase())
                        && name.chars().all(|c| c.is_ascii_alphanumeric())
                })
            });
            let parts: Vec<&str> = literal.split('.').collect();
            let gce = parts.len() == 3
                && parts[0] == "compute"
                && parts[1..]
                    .iter()
                    .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphabetic()))
                && !literal.ends_with(".com");
            aws || gce
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn every_operation_a_provider_or_the_watcher_sends_has_a_row_in_the_table() {
    use fleet_engine::permissions::{Caller, AWS_CALLS, GCP_CALLS};
    let rows = |caller: Caller| -> BTreeSet<String> {
        AWS_CALLS
            .iter()
            .filter(|c| c.caller == caller)
            .map(|c| c.operation.to_string())
            .chain(
                GCP_CALLS
                    .iter()
                    .filter(|c| c.caller == caller)
                    .map(|c| c.operation.to_string()),
            )
            .collect()
    };
    let provider = rows(Caller::Provider);
    let mut named = BTreeSet::new();
    for path in [
        "providers/src/aws/mod.rs",
        "providers/src/aws/ssm.rs",
        "providers/src/gcp/mod.rs",
    ] {
        named.extend(operations_named_in(path));
    }
    assert!(named.len() > 25, "the sources were read: {named:?}");
    let missing: Vec<&String> = named.difference(&provider).collect();
    assert!(
        missing.is_empty(),
        "operations the providers send with no permissions row: {missing:?}"
    );
    // The watcher's SSM calls, by the target it signs.
    let bootstrap =
        std::fs::read_to_string(crate::support::repo().join("templates/bootstrap.yaml.hbs"))
            .unwrap();
    let watcher: BTreeSet<String> = bootstrap
        .split("ssm(region, credentials, \"")
        .skip(1)
        .filter_map(|rest| {
            rest.split_once('"')
                .map(|(target, _)| format!("ssm:{target}"))
        })
        .collect();
    assert!(!watcher.is_empty());
    let machine = rows(Caller::Watcher);
    assert!(
        watcher.is_subset(&machine),
        "the watcher sends {watcher:?}; the table has {machine:?}"
    );
}
