//! The live GCP provider against the stateful GCE REST test server (`gce_server`): the real
//! `fleet` binary with `--cloud live --only-cloud gcp`, `FLEET_GCP_ENDPOINT` pointing at the
//! server and `FLEET_GCP_ANONYMOUS=1`, and the provider library in-process for what the CLI
//! cannot reach (a repeated `requestId`, batches, operation timeouts).

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_engine::provider::{
    CreateRequest, ErrorKind, MachineSpec, Networking, ObjectKind, Provider,
};
use fleet_providers::gcp::{GcpAuth, GcpConfig, GcpProvider};
use google_cloud_compute_v1::model::{instance, Instance, InstanceAggregatedList, Operation};

use crate::gce_server::GceServer;
use crate::support::{actions_of, reasons_of, Env, Run};

const FLEET: &str = "fleets/ci-shared-runners.yaml";
const PROJECT: &str = "gitlab-ci-runners";

/// Runs `fleet --cloud live ARGS --only-cloud gcp --stats` against the server.
fn live(env: &Env, server: &GceServer, args: &[&str]) -> Run {
    let endpoint = server.endpoint();
    let secrets = server.secrets().endpoint();
    let mut all = vec!["--cloud", "live"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--only-cloud", "gcp", "--stats"]);
    env.fleet_with(
        &all,
        &[
            ("FLEET_GCP_ENDPOINT", endpoint.as_str()),
            ("FLEET_GCP_SECRETS_ENDPOINT", secrets.as_str()),
            ("FLEET_GCP_ANONYMOUS", "1"),
        ],
    )
}

/// The `API calls: {…}` line `--stats` prints on standard error.
fn api_calls(run: &Run) -> BTreeMap<String, u64> {
    let line = run
        .stderr
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("API calls: "))
        .unwrap_or_else(|| panic!("no `API calls:` line in\n{}", run.stderr));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad API calls line {line}: {e}"))
}

#[track_caller]
fn converge(env: &Env, server: &GceServer, file: &str) -> Run {
    live(env, server, &["apply", file, "--auto-approve"]).verified()
}

#[track_caller]
fn assert_no_changes(env: &Env, server: &GceServer, file: &str) -> Run {
    live(env, server, &["plan", file, "--detailed-exitcode"]).unchanged()
}

fn instance_names(server: &GceServer) -> Vec<String> {
    let mut names: Vec<String> = server
        .instances()
        .iter()
        .filter_map(|instance| instance.name.clone())
        .collect();
    names.sort();
    names
}

fn template_names(server: &GceServer) -> Vec<String> {
    let mut names: Vec<String> = server
        .templates()
        .iter()
        .filter_map(|template| template.name.clone())
        .collect();
    names.sort();
    names
}

fn metadata_value(instance: &Instance, key: &str) -> Option<String> {
    instance
        .metadata
        .as_ref()?
        .items
        .iter()
        .find(|item| item.key.as_deref() == Some(key))
        .and_then(|item| item.value.clone())
}

/// The calls the provider counted equal the calls the server received.
#[track_caller]
fn assert_counts_agree(provider: &BTreeMap<String, u64>, server: &GceServer) {
    assert_eq!(provider, &server.calls(), "provider and server disagree");
}

#[test]
fn plan_apply_plan_shows_no_changes() {
    let server = GceServer::start(PROJECT);
    let env = Env::new();
    let plan = live(&env, &server, &["plan", FLEET]).ok();
    assert!(
        plan.stdout.contains(&format!(
            "GCP project {PROJECT} (endpoint {})",
            server.endpoint()
        )),
        "{}",
        plan.stdout
    );
    server.reset_calls();

    let apply = converge(&env, &server, FLEET);
    let calls = api_calls(&apply);
    assert_counts_agree(&calls, &server);
    // 3 managers and a Prometheus per zone, 2 templates; one insert and one wait each.
    assert_eq!(calls["compute.instances.insert"], 8, "{calls:?}");
    assert_eq!(calls["compute.instanceTemplates.insert"], 2, "{calls:?}");
    assert_eq!(calls["compute.zoneOperations.wait"], 8, "{calls:?}");
    assert_eq!(calls["compute.globalOperations.wait"], 2, "{calls:?}");
    // Discovery is list calls only: never a GET per instance.
    assert!(!calls.contains_key("compute.instances.get"), "{calls:?}");
    // Each discovery pass (plan, name check, verify, …) is one page of each list.
    assert_eq!(
        calls["compute.instances.aggregatedList"], calls["compute.instanceTemplates.list"],
        "{calls:?}"
    );
    assert!(calls["compute.instances.aggregatedList"] <= 5, "{calls:?}");

    assert_eq!(
        instance_names(&server),
        [
            "gitlab-shared-runners-manager-1",
            "gitlab-shared-runners-manager-2",
            "private-runners-manager-1",
            "private-runners-manager-2",
            "prometheus-01-us-east1-c",
            "prometheus-01-us-east1-d",
            "shared-runners-manager-1",
            "shared-runners-manager-2",
        ]
    );
    let templates = template_names(&server);
    assert_eq!(templates.len(), 2, "{templates:?}");
    assert!(
        templates[0].starts_with("autoscaled-us-east1-c-"),
        "{templates:?}"
    );
    let manager = server.instance("shared-runners-manager-2").unwrap();
    assert_eq!(manager.labels["fleet"], "ci-shared-runners");
    assert_eq!(manager.labels["fleet-resource"], "shared-runners-manager-2");
    assert_eq!(manager.labels["shard"], "srm");
    assert!(manager
        .zone
        .as_deref()
        .unwrap()
        .ends_with("/zones/us-east1-d"));
    assert!(manager
        .machine_type
        .as_deref()
        .unwrap()
        .ends_with("/machineTypes/n1-standard-4"));
    assert_eq!(manager.status, Some(instance::Status::Running));
    let runners = metadata_value(&manager, "gitlab-runner-config").unwrap();
    assert!(
        runners.contains("shared-runners-manager-2.gitlab.com"),
        "{runners}"
    );

    server.reset_calls();
    let replan = assert_no_changes(&env, &server, FLEET);
    let calls = api_calls(&replan);
    assert_counts_agree(&calls, &server);
    // A plan reads: list calls, no mutation, no GET.
    assert!(
        calls.keys().all(|operation| operation.ends_with(".aggregatedList")
            || operation.ends_with(".list")),
        "{calls:?}"
    );
}

#[test]
fn a_config_change_updates_metadata_in_place() {
    let server = GceServer::start(PROJECT);
    let env = Env::new();
    converge(&env, &server, FLEET);
    let before = server.instance("shared-runners-manager-1").unwrap();

    // A second runner for the srm managers changes their config.toml (`gitlab-runner-config` metadata) only.
    let text = std::fs::read_to_string(env.path().join(FLEET)).unwrap();
    let changed = text.replacen(
        "      - name: shared-runners-manager-{index}.gitlab.com\n        template: autoscaled-{zone}\n",
        "      - name: shared-runners-manager-{index}.gitlab.com\n        template: autoscaled-{zone}\n      - name: shared-runners-manager-{index}.staging.gitlab.com\n        template: autoscaled-{zone}\n",
        1,
    );
    assert_ne!(text, changed, "the fleet file changed shape");
    let file = env.write("changed.yaml", &changed);

    let plan = live(&env, &server, &["plan", &file, "--format", "json"])
        .ok()
        .json();
    assert_eq!(
        actions_of(&plan, "manager.shared-runners-manager-1"),
        ["update"],
        "{plan:#}"
    );
    assert_eq!(plan["summary"]["update"], 2, "{}", plan["summary"]);
    assert_eq!(plan["summary"]["create"], 0, "{}", plan["summary"]);

    server.reset_calls();
    let apply = converge(&env, &server, &file);
    let calls = api_calls(&apply);
    assert_counts_agree(&calls, &server);
    assert_eq!(calls["compute.instances.setMetadata"], 2, "{calls:?}");
    // The labels carry the spec and config hashes, so they change too, in place.
    assert_eq!(calls["compute.instances.setLabels"], 2, "{calls:?}");
    assert_eq!(calls["compute.zoneOperations.wait"], 4, "{calls:?}");
    for absent in [
        "compute.instances.insert",
        "compute.instances.bulkInsert",
        "compute.instances.delete",
        // The fingerprints come from discovery: no GET per update.
        "compute.instances.get",
    ] {
        assert!(!calls.contains_key(absent), "{absent} in {calls:?}");
    }
    let after = server.instance("shared-runners-manager-1").unwrap();
    assert_eq!(after.id, before.id, "the VM was recreated");
    let runners = metadata_value(&after, "gitlab-runner-config").unwrap();
    assert!(
        runners.contains("shared-runners-manager-1.staging.gitlab.com"),
        "{runners}"
    );
    assert_ne!(
        after.metadata.as_ref().unwrap().fingerprint,
        before.metadata.as_ref().unwrap().fingerprint
    );
    // What GCE does not list back survived the update.
    assert!(metadata_value(&after, fleet_providers::gcp::MACHINE_KEY).is_some());
    assert_no_changes(&env, &server, &file);
}

#[test]
fn a_template_change_makes_a_new_template_and_removes_the_old() {
    let server = GceServer::start(PROJECT);
    let env = Env::new();
    converge(&env, &server, FLEET);
    let old = template_names(&server);
    let managers_before = server.instances();

    let text = std::fs::read_to_string(env.path().join(FLEET)).unwrap();
    let changed = text.replacen(
        "    machine_type: n1-standard-2\n",
        "    machine_type: n1-highcpu-32\n",
        1,
    );
    assert_ne!(text, changed);
    let file = env.write("bigger-builders.yaml", &changed);
    let plan = live(&env, &server, &["plan", &file, "--format", "json"])
        .ok()
        .json();
    let reasons = reasons_of(&plan, "template.autoscaled-us-east1-c");
    assert!(reasons.contains(&"new_version".to_string()), "{reasons:?}");

    server.reset_calls();
    let apply = converge(&env, &server, &file);
    let calls = api_calls(&apply);
    assert_counts_agree(&calls, &server);
    assert_eq!(calls["compute.instanceTemplates.insert"], 2, "{calls:?}");
    assert_eq!(calls["compute.instanceTemplates.delete"], 2, "{calls:?}");
    assert!(!calls.contains_key("compute.instances.insert"), "{calls:?}");
    let new = template_names(&server);
    assert_eq!(new.len(), 2);
    assert!(
        new.iter().all(|name| !old.contains(name)),
        "{old:?} {new:?}"
    );
    let template = server
        .templates()
        .into_iter()
        .find(|t| t.name.as_deref() == Some(new[0].as_str()))
        .unwrap();
    assert_eq!(
        template.properties.unwrap().machine_type.as_deref(),
        Some("n1-highcpu-32")
    );
    // The managers point at the new versions, in place.
    let manager = server.instance("private-runners-manager-1").unwrap();
    let runners = metadata_value(&manager, "gitlab-runner-config").unwrap();
    assert!(runners.contains(&new[0]), "{runners}");
    let ids_before: Vec<_> = managers_before.iter().map(|i| i.id).collect();
    let ids_after: Vec<_> = server.instances().iter().map(|i| i.id).collect();
    assert_eq!(ids_before, ids_after);
    assert_no_changes(&env, &server, &file);
}

#[test]
fn a_throttled_run_converges() {
    let server = GceServer::start(PROJECT);
    server.throttle_every(Some(4));
    server.set_latency(Duration::from_millis(5));
    let env = Env::new();
    let apply = converge(&env, &server, FLEET);
    assert!(server.throttled() >= 5, "throttled {}", server.throttled());
    let calls = api_calls(&apply);
    assert_counts_agree(&calls, &server);
    // Retried, not duplicated.
    assert_eq!(instance_names(&server).len(), 8);
    assert_eq!(template_names(&server).len(), 2);
    assert!(calls["compute.instances.insert"] >= 8, "{calls:?}");
    assert_no_changes(&env, &server, FLEET);
}

#[test]
fn a_lost_answer_is_retried_with_the_same_request_id_and_makes_one_vm() {
    let server = GceServer::start(PROJECT);
    let env = Env::new();
    // The first three mutations are carried out, but their answers are lost (503).
    server.lose_answers(3);
    let apply = converge(&env, &server, FLEET);
    let calls = api_calls(&apply);
    let inserts = calls["compute.instances.insert"] + calls["compute.instanceTemplates.insert"];
    assert_eq!(inserts, 10 + 3, "{calls:?}");
    assert_eq!(instance_names(&server).len(), 8);
    assert_eq!(template_names(&server).len(), 2);
    assert_no_changes(&env, &server, FLEET);
}

fn provider_config(server: &GceServer) -> GcpConfig {
    let mut config = GcpConfig::new(PROJECT, "us-east1");
    config.endpoint = Some(server.endpoint());
    config.secrets_endpoint = Some(server.secrets().endpoint());
    config.auth = GcpAuth::Anonymous;
    config
}

fn request(name: &str, token: &str) -> CreateRequest {
    CreateRequest {
        kind: ObjectKind::Instance,
        name: name.to_string(),
        spec: MachineSpec {
            machine_type: "t2a-standard-8".into(),
            zone: "us-east1-c".into(),
            image: "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts-arm64".into(),
            disk_type: "pd-ssd".into(),
            disk_size_gb: 100,
            labels: [
                ("fleet".to_string(), "builders".to_string()),
                ("fleet-kind".to_string(), "pool".to_string()),
            ]
            .into(),
            metadata: BTreeMap::new(),
            // As GCE reports a machine on the default network: discovery gives back the spec.
            networking: Networking {
                network: Some("default".into()),
                subnet: Some("default".into()),
                security_groups: Vec::new(),
            },
            identity: Default::default(),
        },
        idempotency_token: token.to_string(),
    }
}

#[tokio::test]
async fn the_same_request_id_makes_one_vm() {
    let server = GceServer::start(PROJECT);
    // Each operation is still running at its first two polls.
    server.set_operation_polls(2);
    let provider = GcpProvider::connect(provider_config(&server))
        .await
        .unwrap();
    let request = request("builder-1", "0123456789abcdef0123456789abcdef");
    let first = provider.create(&request).await.unwrap();
    let second = provider.create(&request).await.unwrap();
    assert_eq!(first.id, "zones/us-east1-c/instances/builder-1");
    assert_eq!(first.id, second.id);
    assert_eq!(server.count("compute.instances.insert"), 2);
    // The repeat got the first call's operation, already done: no more waiting.
    assert_eq!(server.count("compute.zoneOperations.wait"), 3);
    // It looked once that the machine of that operation is still there.
    assert_eq!(server.count("compute.instances.get"), 1);
    assert_eq!(server.instances().len(), 1);
    let discovered = provider.discover("builders").await.unwrap();
    assert_eq!(discovered.len(), 1);
    assert_eq!(discovered[0].spec, request.spec);
    assert_counts_agree(&provider.call_counts(), &server);
}

#[tokio::test]
async fn identical_pool_members_go_in_one_bulk_insert() {
    let server = GceServer::start(PROJECT);
    let provider = GcpProvider::connect(provider_config(&server))
        .await
        .unwrap();
    let requests: Vec<CreateRequest> = (1..=3)
        .map(|n| request(&format!("builder-{n}"), &format!("{n:032x}")))
        .collect();
    let results = provider.create_batch(&requests).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(server.count("compute.instances.bulkInsert"), 1);
    assert_eq!(server.count("compute.instances.insert"), 0);
    assert_eq!(server.count("compute.zoneOperations.wait"), 1);
    let live = provider.discover("builders").await.unwrap();
    assert_eq!(live.len(), 3);
    assert!(live.iter().all(|l| l.spec == requests[0].spec), "{live:?}");

    // Members with labels of their own cannot share a bulkInsert (it names members, it
    // does not label them): one insert each.
    let mut own: Vec<CreateRequest> = (4..=5)
        .map(|n| request(&format!("builder-{n}"), &format!("{n:032x}")))
        .collect();
    for member in &mut own {
        member
            .spec
            .labels
            .insert("fleet-resource".into(), member.name.clone());
    }
    let results = provider.create_batch(&own).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(server.count("compute.instances.bulkInsert"), 1);
    assert_eq!(server.count("compute.instances.insert"), 2);
}

#[tokio::test]
async fn operations_time_out_with_a_clear_message() {
    let server = GceServer::start(PROJECT);
    server.hang_operations(true);
    let mut config = provider_config(&server);
    config.operation_timeout = Duration::from_millis(300);
    let provider = GcpProvider::connect(config).await.unwrap();
    let error = provider
        .create(&request("slow-1", &format!("{:032x}", 9)))
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::Transient);
    assert_eq!(error.code, "operationTimeout");
    assert_eq!(error.operation, "compute.instances.insert");
    assert!(
        error.message.contains("zones/us-east1-c/instances/slow-1")
            && error.message.contains("still RUNNING"),
        "{error}"
    );
}

#[tokio::test]
async fn pages_are_followed_and_unreachable_zones_fail_discovery() {
    let server = GceServer::start(PROJECT);
    let provider = GcpProvider::connect(provider_config(&server))
        .await
        .unwrap();
    let requests: Vec<CreateRequest> = (1..=7)
        .map(|n| request(&format!("builder-{n}"), &format!("{n:032x}")))
        .collect();
    provider.create_batch(&requests).await;
    server.cap_pages(3);
    server.reset_calls();
    assert_eq!(provider.discover("builders").await.unwrap().len(), 7);
    // 7 instances in pages of 3: three aggregatedList calls; one templates page.
    assert_eq!(server.count("compute.instances.aggregatedList"), 3);
    assert_eq!(server.count("compute.instanceTemplates.list"), 1);

    server.set_unreachable(&["us-east1-b"]);
    let error = provider.discover("builders").await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Transient);
    assert_eq!(error.code, "unreachable");
    assert!(error.message.contains("us-east1-b"), "{error}");
    // Asked for what it can see, the provider names the zone instead.
    let partial = provider.discover_reachable("builders").await.unwrap();
    assert_eq!(partial.unreachable_zones, ["us-east1-b"]);
    assert_eq!(partial.objects.len(), 7, "the builders are in us-east1-c");
}

#[test]
fn an_unreachable_zone_is_left_alone_and_the_rest_is_planned() {
    let server = GceServer::start(PROJECT);
    let env = Env::new();
    converge(&env, &server, FLEET);
    let before = instance_names(&server);
    let ids_in_d: Vec<Option<u64>> = before
        .iter()
        .filter(|name| name.ends_with("-2") || name.ends_with("us-east1-d"))
        .map(|name| server.instance(name).unwrap().id)
        .collect();
    assert_eq!(ids_in_d.len(), 4, "{before:?}");
    server.set_unreachable(&["us-east1-d"]);
    server.set_status("prometheus-01-us-east1-c", instance::Status::Terminated);

    let plan = live(&env, &server, &["plan", FLEET, "--format", "json"])
        .ok()
        .json();
    let unreachable = &plan["unreachable"];
    assert_eq!(unreachable.as_array().map(Vec::len), Some(1), "{plan:#}");
    assert_eq!(unreachable[0]["zone"], "us-east1-d");
    let left_out: Vec<&str> = unreachable[0]["not_planned"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(
        left_out,
        [
            "helper.prometheus-01-us-east1-d",
            "manager.gitlab-shared-runners-manager-2",
            "manager.private-runners-manager-2",
            "manager.shared-runners-manager-2",
        ]
    );
    // What fleet cannot see is neither made again nor deleted; the rest is planned.
    assert_eq!(plan["summary"]["create"], 0, "{}", plan["summary"]);
    assert_eq!(plan["summary"]["delete"], 0, "{}", plan["summary"]);
    assert_eq!(
        actions_of(&plan, "helper.prometheus-01-us-east1-c"),
        ["delete", "create"]
    );
    let text = live(&env, &server, &["plan", FLEET]).ok();
    assert!(
        text.stdout
            .contains("! gcp zone us-east1-d did not answer: 4 resource(s) there are left out"),
        "{}",
        text.stdout
    );
    // A CI drift check does not pass over a zone it could not compare.
    let check = live(&env, &server, &["plan", FLEET, "--detailed-exitcode"]);
    assert_eq!(check.code, 2, "{}", check.stderr);
    assert!(
        check
            .stderr
            .contains("not compared, as these zones did not answer: gcp us-east1-d"),
        "{}",
        check.stderr
    );
    // A target in the zone is known, and left out with the rest of it.
    let targeted = live(
        &env,
        &server,
        &[
            "plan",
            FLEET,
            "--target",
            "manager.shared-runners-manager-2",
        ],
    )
    .ok();
    assert!(
        targeted.stdout.contains("manager.shared-runners-manager-2"),
        "{}",
        targeted.stdout
    );

    // Applied, but not verified where the zone did not answer: exit 4.
    let apply = live(&env, &server, &["apply", FLEET, "--auto-approve"]).code(4);
    assert!(
        apply.stdout.contains("Verified where fleet could see")
            && apply.stdout.contains("not answering: gcp us-east1-d"),
        "{}",
        apply.stdout
    );
    assert_eq!(instance_names(&server), before, "nothing was made twice");

    // A plan made while a zone without fleet machines did not answer is stale once it does:
    // nothing else changed in between, the zone is in the live fingerprint.
    server.set_unreachable(&["us-east1-b"]);
    server.set_status("prometheus-01-us-east1-c", instance::Status::Terminated);
    live(&env, &server, &["plan", FLEET, "-o", "partial.json"]).ok();
    server.set_unreachable(&[]);
    let stale = live(&env, &server, &["apply", "partial.json", "--auto-approve"]);
    assert_ne!(stale.code, 0);
    assert!(stale.stderr.contains("stale"), "{}", stale.stderr);
    converge(&env, &server, FLEET);
    let after: Vec<Option<u64>> = before
        .iter()
        .filter(|name| name.ends_with("-2") || name.ends_with("us-east1-d"))
        .map(|name| server.instance(name).unwrap().id)
        .collect();
    assert_eq!(after, ids_in_d, "the machines in us-east1-d were touched");
    assert_no_changes(&env, &server, FLEET);
}

/// A fleet of one GCE pool of 120 builders.
const POOL_FLEET: &str = "fleet: gcp-builders
clouds:
  gcp:
    project: gitlab-ci-runners
    region: us-east1
pools:
  amd64-builder-{n}:
    size: 120
    zone: us-east1-c
    machine_type: n1-highcpu-32
    image: projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts
    disk: { type: pd-ssd, size_gb: 100 }
    role: builder
";

#[test]
fn a_pool_is_made_with_bulk_insert_and_its_members_are_known_by_name() {
    let server = GceServer::start(PROJECT);
    let env = Env::new();
    let file = env.write("gcp-builders.yaml", POOL_FLEET);
    let apply = converge(&env, &server, &file);
    let calls = api_calls(&apply);
    assert_counts_agree(&calls, &server);
    // 120 members: one bulkInsert of 100 and one of 20, no insert each.
    assert_eq!(calls["compute.instances.bulkInsert"], 2, "{calls:?}");
    assert!(!calls.contains_key("compute.instances.insert"), "{calls:?}");
    assert_eq!(instance_names(&server).len(), 120);
    let member = server.instance("amd64-builder-7").unwrap();
    assert_eq!(member.labels["fleet-pool"], "amd64-builder");
    assert_eq!(member.labels["fleet-kind"], "pool");
    assert!(
        !member.labels.contains_key("fleet-resource"),
        "{:?}",
        member.labels
    );
    assert_no_changes(&env, &server, &file);

    // Growing the pool adds its new members in one call.
    let grown = env.write("grown.yaml", &POOL_FLEET.replace("size: 120", "size: 130"));
    server.reset_calls();
    let calls = api_calls(&converge(&env, &server, &grown));
    assert_eq!(calls["compute.instances.bulkInsert"], 1, "{calls:?}");
    assert!(!calls.contains_key("compute.instances.insert"), "{calls:?}");
    assert_eq!(instance_names(&server).len(), 130);

    // A member stopped out of band is known by its name and replaced under it.
    server.set_status("amd64-builder-7", instance::Status::Terminated);
    let plan = live(&env, &server, &["plan", &grown, "--format", "json"])
        .ok()
        .json();
    assert_eq!(plan["summary"]["create"], 0, "{}", plan["summary"]);
    assert_eq!(
        actions_of(&plan, "pool.amd64-builder-7"),
        ["delete", "create"]
    );
    converge(&env, &server, &grown);
    assert_no_changes(&env, &server, &grown);
    assert_eq!(instance_names(&server).len(), 130);
}

#[test]
fn a_throttled_bulk_insert_is_repeated_whole() {
    let server = GceServer::start(PROJECT);
    server.throttle_next("compute.instances.bulkInsert", 3);
    let env = Env::new();
    let file = env.write("gcp-builders.yaml", POOL_FLEET);
    let apply = converge(&env, &server, &file);
    assert_eq!(server.throttled(), 3);
    let calls = api_calls(&apply);
    assert_counts_agree(&calls, &server);
    // Two batches, three refusals: each refused call is repeated as the same batch (same
    // requestId), never broken up into an insert per member.
    assert_eq!(calls["compute.instances.bulkInsert"], 2 + 3, "{calls:?}");
    assert!(!calls.contains_key("compute.instances.insert"), "{calls:?}");
    assert!(
        apply.stderr.contains("rateLimitExceeded") || apply.stdout.contains("rateLimitExceeded"),
        "{}\n{}",
        apply.stdout,
        apply.stderr
    );
    assert_eq!(instance_names(&server).len(), 120);
    assert_no_changes(&env, &server, &file);
}

#[test]
fn a_bulk_insert_whose_answer_was_lost_is_repeated_with_the_same_request_id() {
    let server = GceServer::start(PROJECT);
    // The first mutation, a bulkInsert of 100, is carried out but answered 503.
    server.lose_answers(1);
    let env = Env::new();
    let file = env.write("gcp-builders.yaml", POOL_FLEET);
    let calls = api_calls(&converge(&env, &server, &file));
    // Repeated whole with the same requestId, GCE answered with the first call's operation:
    // no alreadyExists, so no fallback to one insert per member, and no second machine.
    assert_eq!(calls["compute.instances.bulkInsert"], 2 + 1, "{calls:?}");
    assert!(!calls.contains_key("compute.instances.insert"), "{calls:?}");
    assert_eq!(instance_names(&server).len(), 120);
}

#[test]
fn a_failed_bulk_insert_operation_is_retried_under_a_new_request_id() {
    let server = GceServer::start(PROJECT);
    // The first bulkInsert is accepted but its operation fails and makes nothing: repeating
    // its requestId would only fetch that failed operation again.
    server.rate_limit_bulk_operations(1);
    let env = Env::new();
    let file = env.write("gcp-builders.yaml", POOL_FLEET);
    let apply = converge(&env, &server, &file);
    assert!(
        apply.stdout.contains("RATE_LIMIT_EXCEEDED"),
        "{}",
        apply.stdout
    );
    let calls = api_calls(&apply);
    assert_eq!(calls["compute.instances.bulkInsert"], 2 + 1, "{calls:?}");
    assert_eq!(instance_names(&server).len(), 120);
    assert_no_changes(&env, &server, &file);
}

#[test]
fn a_stopped_vm_is_seen_and_replaced() {
    let server = GceServer::start(PROJECT);
    let env = Env::new();
    converge(&env, &server, FLEET);
    server.set_status("prometheus-01-us-east1-c", instance::Status::Terminated);
    let plan = live(&env, &server, &["plan", FLEET, "--format", "json"])
        .ok()
        .json();
    let address = "helper.prometheus-01-us-east1-c";
    assert_eq!(actions_of(&plan, address), ["delete", "create"]);
    assert_eq!(reasons_of(&plan, address), ["not_working", "name_held"]);
    converge(&env, &server, FLEET);
    let helper = server.instance("prometheus-01-us-east1-c").unwrap();
    assert_eq!(helper.status, Some(instance::Status::Running));
    assert_no_changes(&env, &server, FLEET);
}

#[test]
fn a_name_held_by_a_hand_made_vm_blocks_the_apply() {
    let server = GceServer::start(PROJECT);
    server.add_instance(
        "us-east1-c",
        "prometheus-01-us-east1-c",
        &[("team", "infra")],
    );
    let env = Env::new();
    let plan = live(&env, &server, &["plan", FLEET]).code(1);
    assert!(
        plan.stderr
            .contains("1 resource(s) blocked by machines fleet did not make"),
        "{}",
        plan.stderr
    );
    let output = format!("{}{}", plan.stdout, plan.stderr);
    assert!(output.contains("prometheus-01-us-east1-c"), "{output}");
    let run = live(&env, &server, &["apply", FLEET, "--auto-approve"]);
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert_eq!(server.count("compute.instances.insert"), 0);
    assert_eq!(server.count("compute.instances.delete"), 0);
    let held = server.instance("prometheus-01-us-east1-c").unwrap();
    assert_eq!(held.labels.get("team").map(String::as_str), Some("infra"));
}

#[test]
fn a_failed_operation_names_the_machine() {
    let server = GceServer::start(PROJECT);
    server.fail_operations_for("prometheus-01-us-east1-d");
    let env = Env::new();
    let run = live(&env, &server, &["apply", FLEET, "--auto-approve"]);
    assert_ne!(run.code, 0, "{}", run.stdout);
    let output = format!("{}{}", run.stdout, run.stderr);
    assert!(output.contains("ZONE_RESOURCE_POOL_EXHAUSTED"), "{output}");
    assert!(
        output.contains("zones/us-east1-d/instances/prometheus-01-us-east1-d"),
        "{output}"
    );
    // Everything that does not depend on it was made.
    assert_eq!(instance_names(&server).len(), 7);
}

#[test]
fn without_credentials_the_run_stops_before_any_call() {
    let server = GceServer::start(PROJECT);
    let env = Env::new();
    let home = tempfile::tempdir().unwrap();
    let endpoint = server.endpoint();
    let mut command = env.command(
        &[
            "--cloud",
            "live",
            "apply",
            FLEET,
            "--only-cloud",
            "gcp",
            "--auto-approve",
        ],
        &[
            ("FLEET_GCP_ENDPOINT", endpoint.as_str()),
            ("HOME", home.path().to_str().unwrap()),
            // Where the metadata server would be: a closed local port, so nothing leaves
            // the machine.
            ("GCE_METADATA_HOST", "127.0.0.1:9"),
            ("GCE_METADATA_IP", "127.0.0.1:9"),
        ],
    );
    command
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env_remove("FLEET_GCP_ANONYMOUS")
        .env_remove("CLOUDSDK_CONFIG");
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for needle in [
        "No Google Cloud credentials for project gitlab-ci-runners",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "application_default_credentials.json",
        "metadata server",
        "--cloud sim",
    ] {
        assert!(stderr.contains(needle), "{needle} missing from\n{stderr}");
    }
    assert!(server.calls().is_empty(), "{:?}", server.calls());
}

/// The model types are the REST JSON: int64 as strings, camelCase, enums as names, and a
/// response as GCE sends it parses.
#[test]
fn model_types_round_trip_the_rest_json() {
    let gce = serde_json::json!({
        "kind": "compute#instanceAggregatedList",
        "id": "projects/gitlab-ci-runners/aggregated/instances",
        "items": {
            "zones/us-east1-c": {
                "instances": [{
                    "kind": "compute#instance",
                    "id": "6849215632751345678",
                    "creationTimestamp": "2024-01-01T00:00:00.000-07:00",
                    "name": "shared-runners-manager-1",
                    "machineType": "https://www.googleapis.com/compute/v1/projects/gitlab-ci-runners/zones/us-east1-c/machineTypes/n1-standard-4",
                    "status": "TERMINATED",
                    "zone": "https://www.googleapis.com/compute/v1/projects/gitlab-ci-runners/zones/us-east1-c",
                    "disks": [{"boot": true, "diskSizeGb": "100", "type": "PERSISTENT", "mode": "READ_WRITE"}],
                    "metadata": {"kind": "compute#metadata", "fingerprint": "--KE24GB4T0=", "items": [{"key": "fleet-runners", "value": "a"}]},
                    "labels": {"fleet": "ci-shared-runners"},
                    "labelFingerprint": "AAECAwQFBgc="
                }]
            },
            "zones/us-east1-b": {"warning": {"code": "NO_RESULTS_ON_PAGE", "message": "none", "data": [{"key": "scope", "value": "zones/us-east1-b"}]}}
        },
        "nextPageToken": "page-1"
    });
    let list: InstanceAggregatedList = serde_json::from_value(gce.clone()).unwrap();
    let instance = &list.items["zones/us-east1-c"].instances[0];
    assert_eq!(instance.id, Some(6_849_215_632_751_345_678));
    assert_eq!(instance.disks[0].disk_size_gb, Some(100));
    assert_eq!(instance.status, Some(instance::Status::Terminated));
    assert_eq!(
        instance.label_fingerprint.as_deref(),
        Some(&[0u8, 1, 2, 3, 4, 5, 6, 7][..])
    );
    // Compute Engine writes fingerprints in the URL-safe base64 alphabet (`-`, `_`), as in
    // this one from a real instance list; the crate reads and writes them unchanged.
    assert_eq!(
        instance.metadata.as_ref().unwrap().fingerprint.as_deref(),
        Some(&[251u8, 226, 132, 219, 129, 129, 225, 61][..])
    );
    let back = serde_json::to_value(&list).unwrap();
    assert_eq!(
        back["items"]["zones/us-east1-c"]["instances"][0]["id"],
        "6849215632751345678"
    );
    assert_eq!(
        back["items"]["zones/us-east1-c"]["instances"][0]["disks"][0]["diskSizeGb"],
        "100"
    );
    assert_eq!(back, gce);

    let operation: Operation = serde_json::from_value(serde_json::json!({
        "id": "123", "name": "operation-1", "status": "DONE", "progress": 100,
        "error": {"errors": [{"code": "QUOTA_EXCEEDED", "message": "Quota 'CPUS' exceeded"}]}
    }))
    .unwrap();
    assert_eq!(operation.id, Some(123));
    assert_eq!(
        operation.error.unwrap().errors[0].code.as_deref(),
        Some("QUOTA_EXCEEDED")
    );
}

#[test]
fn a_network_and_a_shared_vpc_subnetwork_are_set_and_kept() {
    let server = GceServer::start(PROJECT);
    let env = Env::new();
    // A shared VPC's subnetwork alone: GCE takes its network.
    let text = POOL_FLEET.replace("size: 120", "size: 3").replace(
        "    role: builder\n",
        "    role: builder\n    subnet: projects/net-host/regions/us-east1/subnetworks/runners\n",
    );
    let file = env.write("gcp-builders.yaml", &text);
    let plan = live(&env, &server, &["plan", &file]).ok();
    assert!(
        plan.stdout
            .contains("subnet        projects/net-host/regions/us-east1/subnetworks/runners"),
        "{}",
        plan.stdout
    );
    converge(&env, &server, &file);
    let member = server.instance("amd64-builder-2").unwrap();
    let interface = &member.network_interfaces[0];
    assert_eq!(
        interface.subnetwork.as_deref(),
        Some("https://www.googleapis.com/compute/v1/projects/net-host/regions/us-east1/subnetworks/runners")
    );
    assert_eq!(
        interface.network.as_deref(),
        Some("https://www.googleapis.com/compute/v1/projects/net-host/global/networks/runners")
    );
    // GCE answers with URLs; fleet compares them with what the file says.
    assert_no_changes(&env, &server, &file);

    // Moving the pool to another subnetwork replaces its members.
    let moved = env.write(
        "moved.yaml",
        &text.replace("subnetworks/runners", "subnetworks/runners-2"),
    );
    let plan = live(&env, &server, &["plan", &moved, "--format", "json"])
        .ok()
        .json();
    assert_eq!(
        actions_of(&plan, "pool.amd64-builder-1"),
        ["delete", "create"],
        "{plan:#}"
    );
    assert!(
        !reasons_of(&plan, "pool.amd64-builder-1").contains(&"drift".to_string()),
        "a fleet-file change is not drift"
    );

    // A network of the fleet's own project, by name or by path, is the same network.
    let own = POOL_FLEET.replace("size: 120", "size: 2").replace(
        "    role: builder\n",
        "    role: builder\n    network: projects/gitlab-ci-runners/global/networks/ci\n    subnet: ci-us-east1\n",
    );
    let server = GceServer::start(PROJECT);
    let own = env.write("own.yaml", &own);
    converge(&env, &server, &own);
    let interface = &server
        .instance("amd64-builder-1")
        .unwrap()
        .network_interfaces[0];
    assert_eq!(
        interface.subnetwork.as_deref(),
        Some("https://www.googleapis.com/compute/v1/projects/gitlab-ci-runners/regions/us-east1/subnetworks/ci-us-east1")
    );
    assert_no_changes(&env, &server, &own);
}

#[test]
fn mutating_calls_in_flight_stay_within_the_project_limit() {
    let server = GceServer::start(PROJECT);
    let env = Env::new();
    let file = env.write("gcp-builders.yaml", POOL_FLEET);
    converge(&env, &server, &file);
    // Shrinking to 20 is 100 independent deletions; each call takes 30 ms so they overlap.
    server.set_latency(Duration::from_millis(30));
    let shrunk = env.write("shrunk.yaml", &POOL_FLEET.replace("size: 120", "size: 20"));
    let apply = live(
        &env,
        &server,
        &["apply", &shrunk, "--auto-approve", "--concurrency", "32"],
    )
    .ok();
    assert_eq!(api_calls(&apply)["compute.instances.delete"], 100);
    let most = server.max_mutations_in_flight();
    assert!(
        (2..=8).contains(&most),
        "{most} mutating calls at once; the per-project limit is 8"
    );
    assert_eq!(instance_names(&server).len(), 20);
}

#[test]
fn a_template_used_in_an_unreachable_zone_keeps_its_old_version() {
    let server = GceServer::start(PROJECT);
    let env = Env::new();
    converge(&env, &server, FLEET);
    let old_templates = template_names(&server);
    server.set_unreachable(&["us-east1-d"]);
    // A new machine type for the autoscaled machines of both zones.
    let text = std::fs::read_to_string(env.path().join(FLEET)).unwrap();
    let changed = text.replacen(
        "    machine_type: n1-standard-2\n",
        "    machine_type: n1-standard-4\n",
        1,
    );
    assert_ne!(text, changed, "the fleet file changed shape");
    let file = env.write("changed.yaml", &changed);
    let plan = live(&env, &server, &["plan", &file, "--format", "json"])
        .ok()
        .json();
    // Templates are global and the managers of us-east1-d cannot be repointed: new versions
    // are made, no old one is retired while the zone does not answer.
    for template in [
        "template.autoscaled-us-east1-c",
        "template.autoscaled-us-east1-d",
    ] {
        assert_eq!(actions_of(&plan, template), ["create"], "{plan:#}");
        assert!(reasons_of(&plan, template).contains(&"old_version_kept".to_string()));
    }
    let apply = live(&env, &server, &["apply", &file, "--auto-approve"]).code(4);
    assert!(
        apply.stdout.contains("Verified where fleet could see"),
        "{}",
        apply.stdout
    );
    let templates = template_names(&server);
    assert!(
        old_templates.iter().all(|old| templates.contains(old)),
        "{templates:?}"
    );
    assert_eq!(templates.len(), 4, "{templates:?}");
    // Planning again while the zone is still down retires nothing either.
    let again = live(&env, &server, &["plan", &file, "--format", "json"])
        .ok()
        .json();
    assert_eq!(again["summary"]["delete"], 0, "{}", again["summary"]);

    // Once the zone answers, its managers move to the new version and the old one goes.
    server.set_unreachable(&[]);
    converge(&env, &server, &file);
    assert_eq!(template_names(&server).len(), 2);
    assert_no_changes(&env, &server, &file);
}

#[test]
fn an_auto_approved_apply_plans_again_if_the_cloud_moved_before_the_lock() {
    let server = GceServer::start(PROJECT);
    let env = Env::new();
    converge(&env, &server, FLEET);
    // A change to apply, and a helper that stops right after the plan looked at it.
    let text = std::fs::read_to_string(env.path().join(FLEET)).unwrap();
    let file = env.write(
        "changed.yaml",
        &text.replace("scrape_interval: 15s", "scrape_interval: 30s"),
    );
    assert!(
        text.contains("scrape_interval: 15s"),
        "the fleet file changed shape"
    );
    server.stop_after_lists(1, "prometheus-01-us-east1-c");
    let apply = converge(&env, &server, &file);
    assert!(
        apply
            .stdout
            .contains("The cloud changed between the plan and the lock; planned again"),
        "{}",
        apply.stdout
    );
    assert!(
        apply.stdout.contains("  ∓ helper.prometheus-01-us-east1-c"),
        "{}",
        apply.stdout
    );
    let helper = server.instance("prometheus-01-us-east1-c").unwrap();
    assert_eq!(helper.status, Some(instance::Status::Running));
    assert_no_changes(&env, &server, &file);
}

#[test]
fn autoscaled_vms_appearing_after_the_plan_cost_no_page_and_the_saved_plan_applies() {
    let server = GceServer::start(PROJECT);
    let env = Env::new();
    converge(&env, &server, FLEET);
    server.set_status("prometheus-01-us-east1-c", instance::Status::Terminated);
    live(&env, &server, &["plan", FLEET, "-o", "plan.json"]).ok();
    let fleet_machines = server.instances().len();
    // The runners' autoscaler starts 600 VMs carrying `fleet=` (Prometheus finds them by
    // it) but no `fleet-kind`: more than one page, were they listed.
    for n in 0..600 {
        server.add_instance(
            "us-east1-c",
            &format!("runner-autoscaled-{n:04}"),
            &[("fleet", "ci-shared-runners")],
        );
    }
    server.reset_calls();
    let run = live(&env, &server, &["apply", "plan.json", "--auto-approve"]).verified();
    let calls = api_calls(&run);
    // Discovery before the apply and its verification: one page each.
    assert_eq!(calls["compute.instances.aggregatedList"], 2, "{calls:?}");
    assert_eq!(server.instances().len(), fleet_machines + 600);
    assert_no_changes(&env, &server, FLEET);
}

#[test]
fn a_vm_stopping_from_the_console_is_replaced_once_it_is_seen() {
    let server = GceServer::start(PROJECT);
    let env = Env::new();
    converge(&env, &server, FLEET);
    server.stop("prometheus-01-us-east1-c");
    let plan = live(&env, &server, &["plan", FLEET, "--format", "json"])
        .ok()
        .json();
    // STOPPING does no work: the machine is replaced, its name freed first.
    assert_eq!(
        actions_of(&plan, "helper.prometheus-01-us-east1-c"),
        ["delete", "create"]
    );
    let before = server.instances().len();
    converge(&env, &server, FLEET);
    assert_eq!(server.instances().len(), before, "one machine, not two");
    let vm = server.instance("prometheus-01-us-east1-c").unwrap();
    assert_ne!(vm.status, Some(instance::Status::Terminated));
    assert_no_changes(&env, &server, FLEET);
    assert_eq!(
        server.instance("prometheus-01-us-east1-c").unwrap().status,
        Some(instance::Status::Running),
        "STAGING settles into RUNNING"
    );
}

#[test]
fn service_accounts_land_on_vms_pools_and_templates_and_are_read_back() {
    let server = GceServer::start(PROJECT);
    let env = Env::new();
    let account = "ci-runner@gitlab-ci-runners.iam.gserviceaccount.com";
    let text = std::fs::read_to_string(env.path().join(FLEET)).unwrap();
    // Every machine runs as the runner account (defaults); the autoscaled machines as the
    // project's default account with two narrow scopes, one by short name.
    let text = text
        // The managers' own account of the repository's file gives way to the defaults'.
        .replace(
            "    service_account: runners-manager@gitlab-ci-runners.iam.gserviceaccount.com\n",
            "",
        )
        .replacen(
            "    disk: { type: pd-ssd, size_gb: 50 }\n",
            &format!("    disk: {{ type: pd-ssd, size_gb: 50 }}\n    service_account: {account}\n"),
            1,
        )
        .replacen(
            "    arch: amd64\n",
            "    arch: amd64\n    service_account: default\n    scopes: [logging.write, https://www.googleapis.com/auth/devstorage.read_only]\n",
            1,
        );
    assert!(text.contains("service_account: default"), "{text}");
    let file = env.write("accounts.yaml", &text);
    let plan = live(&env, &server, &["plan", &file]).ok();
    assert!(
        plan.stdout
            .lines()
            .any(|line| line.split_whitespace().eq(["account", account])),
        "{}",
        plan.stdout
    );
    converge(&env, &server, &file);

    let manager = server.instance("private-runners-manager-1").unwrap();
    assert_eq!(manager.service_accounts.len(), 1);
    assert_eq!(manager.service_accounts[0].email.as_deref(), Some(account));
    // No scopes in the file: the account's roles decide, through cloud-platform.
    assert_eq!(
        manager.service_accounts[0].scopes,
        ["https://www.googleapis.com/auth/cloud-platform"]
    );
    let template = server
        .templates()
        .into_iter()
        .find(|t| {
            t.name
                .as_deref()
                .is_some_and(|n| n.starts_with("autoscaled-us-east1-c"))
        })
        .unwrap();
    let accounts = template.properties.unwrap().service_accounts;
    // GCE keeps the default account under its real email, which fleet reads back as `default`.
    assert_eq!(
        accounts[0].email.as_deref(),
        Some(
            format!(
                "{}-compute@developer.gserviceaccount.com",
                crate::gce_server::PROJECT_NUMBER
            )
            .as_str()
        )
    );
    let mut scopes = accounts[0].scopes.clone();
    scopes.sort();
    assert_eq!(
        scopes,
        [
            "https://www.googleapis.com/auth/devstorage.read_only",
            "https://www.googleapis.com/auth/logging.write"
        ]
    );
    assert_no_changes(&env, &server, &file);

    // Another account replaces the managers; other scopes make a new template version.
    let changed = text
        .replace(
            account,
            "ci-other@gitlab-ci-runners.iam.gserviceaccount.com",
        )
        .replace("scopes: [logging.write, ", "scopes: [");
    let changed = env.write("changed.yaml", &changed);
    let plan = live(&env, &server, &["plan", &changed, "--format", "json"])
        .ok()
        .json();
    let address = "manager.private-runners-manager-1";
    assert_eq!(actions_of(&plan, address), ["delete", "create"], "{plan:#}");
    let change = plan["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == address)
        .unwrap()
        .to_string();
    assert!(change.contains("service_account"), "{change}");
    let reasons = reasons_of(&plan, "template.autoscaled-us-east1-c");
    assert!(reasons.contains(&"new_version".to_string()), "{reasons:?}");

    // A pool's members get theirs through one bulkInsert.
    let pool = POOL_FLEET.replace("size: 120", "size: 3").replace(
        "    role: builder\n",
        &format!("    role: builder\n    service_account: {account}\n"),
    );
    let pool = env.write("pool.yaml", &pool);
    server.reset_calls();
    let apply = converge(&env, &server, &pool);
    assert_eq!(api_calls(&apply)["compute.instances.bulkInsert"], 1);
    let member = server.instance("amd64-builder-3").unwrap();
    assert_eq!(member.service_accounts[0].email.as_deref(), Some(account));
    assert_no_changes(&env, &server, &pool);
}

/// A GCE fleet of `count` runner managers, each with a shell runner whose token is the
/// secret `GSM_TOKEN`.
fn managers_with_a_secret(count: usize) -> String {
    format!(
        "fleet: gsm
clouds:
  gcp: {{ project: {PROJECT}, region: us-east1 }}
defaults:
  gcp:
    image: projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts
    disk: {{ type: pd-ssd, size_gb: 50 }}
managers:
  gsm-manager-{{n}}:
    matrix: {{ count: {count} }}
    zone: us-east1-d
    machine_type: n1-standard-4
    service_account: gsm-manager@{PROJECT}.iam.gserviceaccount.com
    runner: {{ version: \"16.11.1\", concurrent: 4 }}
    runners:
      - name: gsm-shell-{{n}}
        executor: shell
        url: https://gitlab.example.com
        token: \"${{secret:GSM_TOKEN}}\"
"
    )
}

/// The Secret Manager calls among `calls`.
fn secret_calls(calls: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    calls
        .iter()
        .filter(|(operation, _)| operation.starts_with("secretmanager."))
        .map(|(operation, count)| (operation.clone(), *count))
        .collect()
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs
        .iter()
        .filter(|(_, count)| *count > 0)
        .map(|(operation, count)| (operation.to_string(), *count))
        .collect()
}

/// Sets `GSM_TOKEN` in the test's secrets file.
fn set_token(env: &Env, base: &str, value: &str) {
    std::fs::write(
        env.path().join("secrets.env"),
        format!("{base}GSM_TOKEN={value}\n"),
    )
    .unwrap();
}

/// No value in anything a viewer of the project reads: any metadata item or label of any
/// instance or template, or any label of a secret.
#[track_caller]
fn assert_no_value_in_metadata_or_labels(server: &GceServer, value: &str) {
    for instance in server.instances() {
        let name = instance.name.clone().unwrap_or_default();
        for item in instance.metadata.iter().flat_map(|m| m.items.iter()) {
            assert!(
                !item.value.as_deref().unwrap_or_default().contains(value),
                "metadata item {:?} of {name} holds a secret value",
                item.key
            );
        }
        assert!(
            instance.labels.values().all(|v| !v.contains(value)),
            "{name}"
        );
    }
    for template in server.templates() {
        let text = serde_json::to_string(&template).unwrap();
        assert!(
            !text.contains(value),
            "template {:?} holds a secret value",
            template.name
        );
    }
    for (resource, stored) in server.secrets().secrets() {
        let labels = serde_json::to_string(&stored.secret.labels).unwrap();
        assert!(
            !labels.contains(value),
            "a label of {resource} holds the value"
        );
    }
}

#[test]
fn secret_values_are_not_sent_to_google_while_compute_engine_is_reached_elsewhere() {
    let server = GceServer::start(PROJECT);
    let env = Env::new();
    let base = std::fs::read_to_string(env.path().join("secrets.env")).unwrap();
    let secret = "glrt-gsm-elsewhere-value";
    set_token(&env, &base, secret);
    let file = env.write("gsm.yaml", &managers_with_a_secret(1));
    // Compute Engine redirected, Secret Manager not: refused before any change.
    let endpoint = server.endpoint();
    let refused = env
        .fleet_with(
            &[
                "--cloud",
                "live",
                "apply",
                &file,
                "--auto-approve",
                "--only-cloud",
                "gcp",
            ],
            &[
                ("FLEET_GCP_ENDPOINT", endpoint.as_str()),
                ("FLEET_GCP_ANONYMOUS", "1"),
            ],
        )
        .code(1);
    assert!(
        refused.stderr.contains("--gcp-secrets-endpoint is not"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("GSM_TOKEN"), "{}", refused.stderr);
    assert!(!refused.stderr.contains(secret) && !refused.stdout.contains(secret));
    assert!(server.instances().is_empty());
    assert_eq!(server.count("compute.instances.insert"), 0);
    // With both, the same apply converges.
    converge(&env, &server, &file);
}

#[test]
fn a_gce_managers_secrets_live_in_secret_manager_and_its_metadata_only_names_them() {
    const N: u64 = 3;
    let server = GceServer::start(PROJECT);
    let env = Env::new();
    let base = std::fs::read_to_string(env.path().join("secrets.env")).unwrap();
    let secret = "glrt-gsm-s3cr3t-value";
    set_token(&env, &base, secret);
    let file = env.write("gsm.yaml", &managers_with_a_secret(N as usize));

    // Apply: per machine one secret made and its one version, before the insert.
    let apply = converge(&env, &server, &file);
    let calls = api_calls(&apply);
    assert_counts_agree(&calls, &server);
    assert_eq!(
        secret_calls(&calls),
        counts(&[
            ("secretmanager.secrets.addVersion", N),
            ("secretmanager.secrets.create", N),
        ])
    );
    assert_eq!(calls["compute.instances.insert"], N, "{calls:?}");
    // The machines' role names exactly the secrets apply made, one by one (the project's
    // number in place of PROJECT_NUMBER).
    let printed = crate::permissions::printed(&env, &file, "manager", "gcp");
    let member = format!("serviceAccount:gsm-manager@{PROJECT}.iam.gserviceaccount.com");
    let expression = printed["gcp"]["conditions"][&member]["expression"]
        .as_str()
        .unwrap_or_else(|| panic!("no condition for {member}: {printed:#}"));
    let granted: std::collections::BTreeSet<String> = expression
        .split('"')
        .skip(1)
        .step_by(2)
        .map(|name| name.replace("PROJECT_NUMBER", PROJECT))
        .collect();
    let made: std::collections::BTreeSet<String> =
        server.secrets().secrets().keys().cloned().collect();
    assert_eq!(granted, made);
    let digest = fleet_engine::secrets::digest("gsm", "GSM_TOKEN", secret);
    let stored = server.secrets().secrets();
    assert_eq!(stored.len() as u64, N, "{stored:#?}");
    for instance in server.instances() {
        let name = instance.name.clone().unwrap();
        let told: fleet_engine::secrets::Delivery =
            serde_json::from_str(&metadata_value(&instance, "fleet-secrets").unwrap()).unwrap();
        assert!(told.values.is_empty(), "{told:?}");
        assert_eq!(told.digests["GSM_TOKEN"], digest);
        let resource = &told.names["GSM_TOKEN"];
        assert!(
            resource.starts_with(&format!(
                "projects/{PROJECT}/secrets/{}gsm-{name}-GSM_TOKEN-",
                fleet_engine::render::delivery::gce_secret_prefix("gsm")
            )),
            "{resource}"
        );
        // The secret it names: the digest as its label, the value as its latest version.
        let kept = &stored[resource];
        assert_eq!(kept.secret.labels["fleet"], "gsm");
        assert_eq!(kept.secret.labels["fleet-kind"], "secret");
        assert_eq!(kept.secret.labels["fleet-digest"], digest);
        assert_eq!(kept.versions, [secret]);
        // config.toml keeps the reference.
        let config = metadata_value(&instance, "gitlab-runner-config").unwrap();
        assert!(config.contains("${secret:GSM_TOKEN}"), "{config}");
    }
    assert_no_value_in_metadata_or_labels(&server, secret);
    assert!(!apply.stdout.contains(secret) && !apply.stderr.contains(secret));

    // A steady plan lists and reads no secret: no Secret Manager call at all.
    server.reset_calls();
    let steady = assert_no_changes(&env, &server, &file);
    let calls = api_calls(&steady);
    assert_counts_agree(&calls, &server);
    assert_eq!(secret_calls(&calls), BTreeMap::new(), "{calls:?}");
    assert!(!steady.stdout.contains(secret) && !steady.stderr.contains(secret));

    // A rotation is planned by name from the digests, without any value or Secret Manager call.
    let rotated = "glrt-gsm-rotated-value";
    set_token(&env, &base, rotated);
    server.reset_calls();
    let planned = live(&env, &server, &["plan", &file, "--format", "json"]).ok();
    assert_eq!(secret_calls(&api_calls(&planned)), BTreeMap::new());
    let plan = planned.json();
    for n in 1..=N {
        let address = format!("manager.gsm-manager-{n}");
        assert_eq!(actions_of(&plan, &address), ["update"], "{plan:#}");
    }
    let text = plan.to_string();
    assert!(
        text.contains("GSM_TOKEN"),
        "the rotation is named: {plan:#}"
    );
    assert!(
        !text.contains(rotated) && !text.contains(secret),
        "{plan:#}"
    );
    let shown = live(&env, &server, &["plan", &file]).ok();
    assert!(shown.stdout.contains("(sensitive)"), "{}", shown.stdout);
    // Applied: one new version and its digest label per machine, then its metadata.
    server.reset_calls();
    let apply = converge(&env, &server, &file);
    let calls = api_calls(&apply);
    assert_counts_agree(&calls, &server);
    assert_eq!(
        secret_calls(&calls),
        counts(&[
            ("secretmanager.secrets.addVersion", N),
            ("secretmanager.secrets.patch", N),
        ])
    );
    assert_eq!(calls["compute.instances.setMetadata"], N, "{calls:?}");
    assert!(!calls.contains_key("compute.instances.insert"), "{calls:?}");
    let new_digest = fleet_engine::secrets::digest("gsm", "GSM_TOKEN", rotated);
    for kept in server.secrets().secrets().values() {
        assert_eq!(kept.versions, [secret, rotated]);
        assert_eq!(kept.secret.labels["fleet-digest"], new_digest);
    }
    assert_no_value_in_metadata_or_labels(&server, rotated);
    assert_no_value_in_metadata_or_labels(&server, secret);
    server.reset_calls();
    let steady = assert_no_changes(&env, &server, &file);
    assert_eq!(secret_calls(&api_calls(&steady)), BTreeMap::new());

    // A change that is no rotation writes no secret.
    let file = env.write(
        "gsm.yaml",
        &managers_with_a_secret(N as usize).replace("concurrent: 4", "concurrent: 5"),
    );
    server.reset_calls();
    let calls = api_calls(&converge(&env, &server, &file));
    assert_eq!(secret_calls(&calls), BTreeMap::new(), "{calls:?}");
    assert_eq!(calls["compute.instances.setMetadata"], N, "{calls:?}");

    // Removing managers deletes their secrets, and only theirs.
    let file = env.write(
        "gsm.yaml",
        &managers_with_a_secret(1).replace("concurrent: 4", "concurrent: 5"),
    );
    server.reset_calls();
    let calls = api_calls(&converge(&env, &server, &file));
    assert_counts_agree(&calls, &server);
    assert_eq!(
        secret_calls(&calls),
        counts(&[("secretmanager.secrets.delete", N - 1)])
    );
    let left = server.secrets().secrets();
    assert_eq!(left.len(), 1, "{left:#?}");
    assert!(left.keys().next().unwrap().contains("-gsm-manager-1-"));
    assert_no_changes(&env, &server, &file);
}

#[test]
fn secret_manager_errors_are_retried_or_told_by_name_and_never_with_the_value() {
    let server = GceServer::start(PROJECT);
    let env = Env::new();
    let base = std::fs::read_to_string(env.path().join("secrets.env")).unwrap();
    let secret = "glrt-gsm-throttled-value";
    set_token(&env, &base, secret);
    let file = env.write("gsm.yaml", &managers_with_a_secret(1));
    // Throttled, with and without Retry-After: the step is retried and converges.
    server
        .secrets()
        .fail_next("secretmanager.secrets.create", 429, Some(1));
    server
        .secrets()
        .fail_next("secretmanager.secrets.addVersion", 429, None);
    let apply = converge(&env, &server, &file);
    let calls = api_calls(&apply);
    assert_counts_agree(&calls, &server);
    // The create throttled, then made; its version throttled: the retried step finds the
    // secret made (409) and adds the version, then sets its labels.
    assert_eq!(
        secret_calls(&calls),
        counts(&[
            ("secretmanager.secrets.addVersion", 2),
            ("secretmanager.secrets.create", 3),
            ("secretmanager.secrets.patch", 1),
        ])
    );
    let stored = server.secrets().secrets();
    let kept = stored.values().next().unwrap();
    assert_eq!(kept.versions, [secret]);
    assert_no_changes(&env, &server, &file);
    // A secret deleted out of band is made again at the next rotation.
    let resource = stored.keys().next().unwrap().clone();
    server.secrets().remove(&resource);
    set_token(&env, &base, "glrt-gsm-after-delete");
    server.reset_calls();
    let calls = api_calls(&converge(&env, &server, &file));
    assert_eq!(
        secret_calls(&calls),
        counts(&[
            ("secretmanager.secrets.addVersion", 2),
            ("secretmanager.secrets.create", 1),
        ])
    );
    assert_eq!(
        server.secrets().secrets()[&resource].versions,
        ["glrt-gsm-after-delete"]
    );
    // A refusal (404 on the project, say) fails the step, naming the secret, not its value.
    set_token(&env, &base, "glrt-gsm-refused-value");
    server
        .secrets()
        .fail_next("secretmanager.secrets.addVersion", 404, None);
    server
        .secrets()
        .fail_next("secretmanager.secrets.create", 403, None);
    let failed = live(&env, &server, &["apply", &file, "--auto-approve"]);
    assert_eq!(failed.code, 3, "{}\n{}", failed.stdout, failed.stderr);
    let all = format!("{}{}", failed.stdout, failed.stderr);
    assert!(all.contains(&resource), "{all}");
    assert!(!all.contains("glrt-gsm-refused-value"), "{all}");
}
