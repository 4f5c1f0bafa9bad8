//! Tests of the simulated cloud through its public surface: the providers and the admin
//! calls, over real sim dirs in the system's temporary directory.
//!
//! No test measures wall-clock time or sleeps to wait for something: they count API calls
//! (the sim's stats), step the sim's list clock with list calls, and check pacing (latency,
//! the rate limit) on tokio's paused clock, where time moves only as the sim waits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleet_engine::provider::{
    labels, Cloud, CreateRequest, DeleteRequest, ErrorKind, InstanceStatus, LiveResource,
    MachineSpec, Networking, ObjectKind, ProviderError, UpdateRequest,
};
use miette::Diagnostic;

use super::{SimCloud, SimConfig, SimError};

/// A fresh directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "fleet-sim-test-{test}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(dir: &TempDir) -> SimCloud {
    SimCloud::open(dir.path(), SimConfig::default()).expect("the sim dir opens")
}

fn spec(zone: &str, machine_type: &str, fleet: &str) -> MachineSpec {
    let disk_type = if zone.starts_with("us-east-") || zone.starts_with("eu-") {
        "gp3"
    } else {
        "pd-ssd"
    };
    MachineSpec {
        machine_type: machine_type.to_owned(),
        zone: zone.to_owned(),
        image: "debian-12".to_owned(),
        disk_type: disk_type.to_owned(),
        disk_size_gb: 50,
        labels: BTreeMap::from([
            (labels::FLEET.to_owned(), fleet.to_owned()),
            (labels::KIND.to_owned(), "pool".to_owned()),
        ]),
        metadata: BTreeMap::from([("startup-script".to_owned(), "#!/bin/sh".to_owned())]),
        networking: Networking::default(),
        identity: Default::default(),
    }
}

fn instance(name: &str, zone: &str, machine_type: &str, token: &str) -> CreateRequest {
    CreateRequest {
        kind: ObjectKind::Instance,
        name: name.to_owned(),
        spec: spec(zone, machine_type, "blue"),
        idempotency_token: token.to_owned(),
    }
}

fn template(name: &str, zone: &str, machine_type: &str, token: &str) -> CreateRequest {
    CreateRequest {
        kind: ObjectKind::InstanceTemplate,
        ..instance(name, zone, machine_type, token)
    }
}

/// `discover` through the provider of `cloud`, which must succeed.
async fn discover(sim: &SimCloud, cloud: Cloud, fleet: &str) -> Vec<LiveResource> {
    sim.provider(cloud)
        .discover(fleet)
        .await
        .expect("discover succeeds")
}

fn names(resources: &[LiveResource]) -> Vec<&str> {
    resources
        .iter()
        .map(|resource| resource.name.as_str())
        .collect()
}

fn count(sim: &SimCloud, operation: &str) -> u64 {
    sim.stats()
        .expect("stats are readable")
        .get(operation)
        .copied()
        .unwrap_or(0)
}

/// Retries retryable errors like the executor does, up to `attempts` times.
async fn with_retries<T, F, Fut>(
    attempts: usize,
    mut call: F,
) -> (Result<T, ProviderError>, Vec<ProviderError>)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ProviderError>>,
{
    let mut failures = Vec::new();
    for _ in 0..attempts {
        match call().await {
            Err(error) if error.kind.is_retryable() => failures.push(error),
            other => return (other, failures),
        }
    }
    (
        Err(failures.last().cloned().expect("at least one attempt")),
        failures,
    )
}

#[tokio::test]
async fn created_objects_survive_reopening_the_sim_dir() {
    let dir = TempDir::new("persist");
    let (gcp_ids, aws_id) = {
        let sim = open(&dir);
        let gcp = sim.provider(Cloud::Gcp);
        let aws = sim.provider(Cloud::Aws);
        let manager = gcp
            .create(&instance(
                "runners-manager-blue-1",
                "us-east1-c",
                "n1-standard-4",
                "t1",
            ))
            .await
            .unwrap();
        let autoscale = gcp
            .create(&template(
                "autoscale-blue-v1",
                "us-east1-c",
                "n1-highcpu-32",
                "t2",
            ))
            .await
            .unwrap();
        let arm = aws
            .create(&instance(
                "armv7-builder-1",
                "us-east-1a",
                "m6g.2xlarge",
                "t3",
            ))
            .await
            .unwrap();
        assert_eq!(
            manager.id,
            "zones/us-east1-c/instances/runners-manager-blue-1"
        );
        assert_eq!(manager.status, InstanceStatus::Running);
        assert_eq!(autoscale.id, "global/instanceTemplates/autoscale-blue-v1");
        assert_eq!(autoscale.status, InstanceStatus::Available);
        assert!(arm.id.starts_with("i-") && arm.id.len() == 19, "{}", arm.id);
        assert!(arm.id[2..].chars().all(|c| c.is_ascii_hexdigit()));
        assert!(
            gcp.describe().starts_with("simulated GCP"),
            "{}",
            gcp.describe()
        );
        assert!(
            aws.describe().starts_with("simulated AWS"),
            "{}",
            aws.describe()
        );
        ((manager.id, autoscale.id), arm.id)
    };

    let sim = open(&dir);
    let gcp = discover(&sim, Cloud::Gcp, "blue").await;
    assert_eq!(
        gcp.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        vec![gcp_ids.0, gcp_ids.1],
        "instances first, then templates"
    );
    let aws = discover(&sim, Cloud::Aws, "blue").await;
    assert_eq!(aws.len(), 1);
    assert_eq!(aws[0].id, aws_id);
    assert_eq!(aws[0].spec, spec("us-east-1a", "m6g.2xlarge", "blue"));
    assert!(discover(&sim, Cloud::Gcp, "green").await.is_empty());

    let listed = sim.list().unwrap();
    assert_eq!(
        names(&listed),
        [
            "runners-manager-blue-1",
            "autoscale-blue-v1",
            "armv7-builder-1"
        ],
        "sorted by cloud, kind, name"
    );
    let note = std::fs::read_to_string(dir.path().join("sim.json")).unwrap();
    assert!(note.contains("simulated"), "{note}");
}

#[tokio::test]
async fn a_replayed_token_dedupes_until_what_it_made_has_vanished() {
    let dir = TempDir::new("token");
    let sim = open(&dir);
    for cloud in Cloud::ALL {
        let zone = match cloud {
            Cloud::Gcp => ("us-east1-b", "e2-medium"),
            Cloud::Aws => ("us-east-2a", "t3.medium"),
        };
        let provider = sim.provider(cloud);
        let request = instance("helper-1", zone.0, zone.1, "same-token");
        let first = provider.create(&request).await.unwrap();
        let second = provider.create(&request).await.unwrap();
        assert_eq!(first, second);

        let stopped = sim.stop(&first.id).unwrap();
        let replayed = provider.create(&request).await.unwrap();
        assert_eq!(
            replayed.status, stopped.status,
            "the current object is returned"
        );
        let of_cloud = |sim: &SimCloud| {
            sim.list()
                .unwrap()
                .into_iter()
                .filter(|resource| resource.cloud == cloud)
                .count()
        };
        assert_eq!(of_cloud(&sim), 1, "nothing was made twice");

        // Deleted by hand: gone at once, and its token with it.
        sim.delete(&first.id).unwrap();
        let again = provider.create(&request).await.unwrap();
        assert_eq!(
            discover(&sim, cloud, "blue").await.len(),
            1,
            "an expired token makes the machine again"
        );
        provider
            .delete(&DeleteRequest {
                kind: ObjectKind::Instance,
                id: again.id.clone(),
                name: again.name.clone(),
                idempotency_token: "d".to_owned(),
            })
            .await
            .unwrap();
        if cloud == Cloud::Aws {
            // Shutting down and then terminated for four list calls, the token still
            // answering with it; then gone, and the token forgotten.
            for _ in 0..4 {
                let listed = discover(&sim, cloud, "blue").await;
                assert_eq!(listed.len(), 1);
                assert_eq!(listed[0].status, InstanceStatus::Deleting);
                let replayed = provider.create(&request).await.unwrap();
                assert_eq!(replayed.id, again.id, "the going instance is the answer");
            }
        }
        assert!(discover(&sim, cloud, "blue").await.is_empty(), "{cloud}");
        provider.create(&request).await.unwrap();
        assert_eq!(discover(&sim, cloud, "blue").await.len(), 1);
    }
    assert_eq!(sim.list().unwrap().len(), 2);
    assert_eq!(count(&sim, "compute.instances.insert"), 5);
    assert_eq!(count(&sim, "ec2:RunInstances"), 9);
}

#[tokio::test]
async fn a_machine_s_identity_is_kept_and_listed_back() {
    let dir = TempDir::new("identity");
    let sim = open(&dir);
    let mut ec2 = instance("runner-1", "us-east-1a", "m6g.large", "id-1");
    ec2.spec.identity.instance_profile = Some("ci-runner".to_owned());
    let mut gce = template("autoscale-v1", "us-east1-c", "n1-standard-2", "id-2");
    gce.spec.identity.service_account = Some("default".to_owned());
    gce.spec.identity.scopes = vec!["https://www.googleapis.com/auth/cloud-platform".to_owned()];
    sim.provider(Cloud::Aws).create(&ec2).await.unwrap();
    sim.provider(Cloud::Gcp).create(&gce).await.unwrap();
    // A reopened sim dir reads them from its files.
    let sim = open(&dir);
    let listed = discover(&sim, Cloud::Aws, "blue").await;
    assert_eq!(listed[0].spec.identity, ec2.spec.identity);
    let listed = discover(&sim, Cloud::Gcp, "blue").await;
    assert_eq!(listed[0].spec.identity, gce.spec.identity);
}

#[tokio::test]
async fn a_create_cut_off_between_token_and_object_is_finished_by_its_retry() {
    let dir = TempDir::new("crash");
    let sim = open(&dir);
    let aws = sim.provider(Cloud::Aws);
    let request = instance("runner-1", "eu-central-1b", "c5.2xlarge", "crash-token");
    let made = aws.create(&request).await.unwrap();
    // What a crash after the token was written and before the object was leaves behind.
    let file = dir
        .path()
        .join("objects/aws/instances")
        .join(format!("{}.json", made.id));
    std::fs::remove_file(&file).unwrap();
    let sim = open(&dir);
    assert!(sim.list().unwrap().is_empty());

    let retried = sim.provider(Cloud::Aws).create(&request).await.unwrap();
    assert_eq!(retried.id, made.id, "the same machine, not a second one");
    assert_eq!(sim.list().unwrap().len(), 1);
}

#[tokio::test]
async fn gce_names_are_unique_per_zone_and_ec2_instance_names_are_not() {
    let dir = TempDir::new("names");
    let sim = open(&dir);
    let gcp = sim.provider(Cloud::Gcp);
    gcp.create(&instance("prometheus", "us-east1-c", "e2-standard-2", "a"))
        .await
        .unwrap();
    let clash = gcp
        .create(&instance("prometheus", "us-east1-c", "e2-standard-2", "b"))
        .await
        .unwrap_err();
    assert_eq!(clash.kind, ErrorKind::Fatal);
    assert_eq!(clash.code, "alreadyExists");
    assert_eq!(clash.operation, "compute.instances.insert");
    assert!(
        clash
            .message
            .contains("zones/us-east1-c/instances/prometheus"),
        "{}",
        clash.message
    );
    gcp.create(&instance("prometheus", "us-east1-d", "e2-standard-2", "c"))
        .await
        .expect("the same name in another zone is another instance");
    gcp.create(&template("autoscale-v1", "us-east1-c", "n1-highcpu-8", "d"))
        .await
        .unwrap();
    let template_clash = gcp
        .create(&template(
            "autoscale-v1",
            "europe-west4-a",
            "n1-highcpu-8",
            "e",
        ))
        .await
        .unwrap_err();
    assert_eq!(template_clash.code, "alreadyExists", "templates are global");

    let bad_name = gcp
        .create(&instance("Runner_1", "us-east1-c", "e2-medium", "f"))
        .await
        .unwrap_err();
    assert_eq!(
        (bad_name.kind, bad_name.code.as_str()),
        (ErrorKind::Fatal, "invalid")
    );

    let aws = sim.provider(Cloud::Aws);
    let one = aws
        .create(&instance("builder", "us-east-1a", "t3.large", "g"))
        .await
        .unwrap();
    let two = aws
        .create(&instance("builder", "us-east-1a", "t3.large", "h"))
        .await
        .unwrap();
    assert_ne!(one.id, two.id);
    aws.create(&template("autoscale-v1", "us-east-1a", "t3.large", "i"))
        .await
        .unwrap();
    let lt_clash = aws
        .create(&template("autoscale-v1", "us-east-1c", "t3.large", "j"))
        .await
        .unwrap_err();
    assert_eq!(
        lt_clash.code,
        "InvalidLaunchTemplateName.AlreadyExistsException"
    );
    aws.create(&template("autoscale-v1", "eu-central-1a", "t3.large", "k"))
        .await
        .expect("launch template names are unique per region only");

    let ambiguous = sim.stop("builder").unwrap_err();
    assert!(
        matches!(ambiguous, SimError::Ambiguous { count: 2, .. }),
        "{ambiguous:?}"
    );
    let help = ambiguous.help().unwrap().to_string();
    assert!(help.contains(&one.id) && help.contains(&two.id), "{help}");
}

#[tokio::test]
async fn machine_types_and_zones_the_cloud_would_refuse_are_refused() {
    let dir = TempDir::new("catalog");
    let sim = open(&dir);
    let gcp = sim.provider(Cloud::Gcp);
    let not_offered = gcp
        .create(&instance("arm-1", "us-east1-c", "t2a-standard-8", "a"))
        .await
        .unwrap_err();
    assert_eq!(not_offered.kind, ErrorKind::Fatal);
    assert_eq!(not_offered.code, "invalid");
    assert!(
        not_offered
            .message
            .contains("does not exist in zone 'us-east1-c'"),
        "{}",
        not_offered.message
    );
    assert!(
        not_offered.message.contains("us-central1"),
        "{}",
        not_offered.message
    );
    gcp.create(&instance("arm-1", "us-central1-a", "t2a-standard-8", "b"))
        .await
        .expect("t2a is offered in us-central1");

    let other_cloud_zone = gcp
        .create(&instance("x", "us-east-1a", "e2-medium", "c"))
        .await
        .unwrap_err();
    assert_eq!(
        (other_cloud_zone.kind, other_cloud_zone.code.as_str()),
        (ErrorKind::Fatal, "invalid")
    );
    let aws = sim.provider(Cloud::Aws);
    let gce_type_on_aws = aws
        .create(&template("lt", "us-east-1a", "n1-standard-4", "d"))
        .await
        .unwrap_err();
    assert_eq!(gce_type_on_aws.code, "InvalidParameterValue");
    assert_eq!(gce_type_on_aws.operation, "ec2:CreateLaunchTemplate");
    assert_eq!(
        sim.list().unwrap().len(),
        1,
        "only the valid machine exists"
    );

    let admin = sim
        .create_unmanaged("arm-2", "us-east1-c", "t2a-standard-8")
        .unwrap_err();
    assert!(
        matches!(admin, SimError::MachineTypeNotOffered { .. }),
        "{admin:?}"
    );
    assert!(admin.help().unwrap().to_string().contains("us-central1"));
    let unknown_zone = sim
        .create_unmanaged("x", "mars-1a", "e2-medium")
        .unwrap_err();
    assert_eq!(
        unknown_zone.code().unwrap().to_string(),
        "fleet::sim::unknown_zone"
    );
    assert!(unknown_zone
        .help()
        .unwrap()
        .to_string()
        .contains("us-east-1a"));
}

#[tokio::test]
async fn discover_costs_one_list_call_per_page_like_the_real_apis() {
    let dir = TempDir::new("pages");
    let sim = open(&dir);
    for (cloud, zone, machine_type) in [
        (Cloud::Aws, "us-east-1a", "c5.4xlarge"),
        (Cloud::Gcp, "us-east1-c", "n1-highcpu-32"),
    ] {
        let provider = sim.provider(cloud);
        let requests: Vec<CreateRequest> = (0..1200)
            .map(|n| {
                instance(
                    &format!("pool-{n:04}"),
                    zone,
                    machine_type,
                    &format!("{cloud}-{n}"),
                )
            })
            .collect();
        let created = provider.create_batch(&requests).await;
        assert!(created.iter().all(Result::is_ok));
        provider
            .create(&template(
                "autoscale-v1",
                zone,
                machine_type,
                &format!("{cloud}-template"),
            ))
            .await
            .unwrap();
        // An instance of another fleet and an unmanaged one are not discovered.
        let mut other = instance("other", zone, machine_type, &format!("{cloud}-other"));
        other
            .spec
            .labels
            .insert(labels::FLEET.to_owned(), "green".to_owned());
        provider.create(&other).await.unwrap();
        sim.create_unmanaged("hand-made", zone, machine_type)
            .unwrap();
    }
    assert_eq!(
        count(&sim, "ec2:RunInstances"),
        2,
        "one batched call and one for `other`"
    );
    assert_eq!(count(&sim, "compute.instances.bulkInsert"), 1);

    let aws = discover(&sim, Cloud::Aws, "blue").await;
    assert_eq!(aws.len(), 1201);
    assert_eq!(aws[0].name, "pool-0000");
    assert_eq!(aws[1200].kind, ObjectKind::InstanceTemplate);
    assert_eq!(count(&sim, "ec2:DescribeInstances"), 2);
    assert_eq!(count(&sim, "ec2:DescribeLaunchTemplates"), 1);

    let gcp = discover(&sim, Cloud::Gcp, "blue").await;
    assert_eq!(gcp.len(), 1201);
    assert!(gcp.iter().all(|resource| resource.cloud == Cloud::Gcp));
    assert_eq!(count(&sim, "compute.instances.aggregatedList"), 3);
    assert_eq!(count(&sim, "compute.instanceTemplates.list"), 1);

    let found = sim
        .provider(Cloud::Gcp)
        .find_by_names(&[
            "hand-made".to_owned(),
            "pool-0007".to_owned(),
            "nowhere".to_owned(),
        ])
        .await
        .unwrap();
    assert_eq!(names(&found), ["hand-made", "pool-0007"]);
    assert!(
        found[0].spec.labels.is_empty(),
        "unmanaged objects have no labels"
    );
    assert_eq!(count(&sim, "compute.instances.aggregatedList"), 4);

    // Counts survive the process, and add up over processes.
    sim.flush_stats().unwrap();
    let later = open(&dir);
    discover(&later, Cloud::Aws, "blue").await;
    drop(later);
    assert_eq!(count(&open(&dir), "ec2:DescribeInstances"), 4);
}

#[tokio::test]
async fn faults_make_a_retrying_client_converge_without_duplicates() {
    let dir = TempDir::new("faults");
    let config = SimConfig {
        fault_rate: 0.3,
        seed: 7,
        ..SimConfig::default()
    };
    let sim = SimCloud::open(dir.path(), config)
        .unwrap()
        .with_retry_policy(eager_retries());
    let mut lost_responses = 0;
    for cloud in Cloud::ALL {
        let provider = sim.provider(cloud);
        let (zone, machine_type) = match cloud {
            Cloud::Gcp => ("europe-west4-b", "n2-standard-8"),
            Cloud::Aws => ("us-east-1d", "m5.xlarge"),
        };
        for n in 0..40 {
            let request = instance(
                &format!("runner-{n}"),
                zone,
                machine_type,
                &format!("token-{n}"),
            );
            let (result, failures) = with_retries(8, || provider.create(&request)).await;
            result.expect("8 retries are enough at a 30% fault rate");
            assert!(failures
                .iter()
                .all(|error| error.kind == ErrorKind::Transient));
            lost_responses += failures
                .iter()
                .filter(|error| error.message.contains("response was lost"))
                .count();
        }
        let (discovered, _) = with_retries(8, || provider.discover("blue")).await;
        assert_eq!(
            discovered.unwrap().len(),
            40,
            "exactly one machine per token on {cloud}"
        );
    }
    assert!(
        lost_responses > 0,
        "some creates were made but their responses lost"
    );
    assert_eq!(sim.list().unwrap().len(), 80);
    assert!(
        count(&sim, "compute.instances.insert") > 40,
        "faulted calls were retried"
    );
}

#[tokio::test]
async fn the_same_seed_and_calls_give_the_same_ids_and_faults() {
    async fn run(dir: &TempDir) -> (Vec<String>, BTreeMap<String, u64>) {
        let config = SimConfig {
            fault_rate: 0.5,
            seed: 42,
            ..SimConfig::default()
        };
        let sim = SimCloud::open(dir.path(), config).unwrap();
        let aws = sim.provider(Cloud::Aws);
        for n in 0..10 {
            let request = instance("same-name", "us-east-1b", "t3.micro", &format!("t{n}"));
            let _ = with_retries(20, || aws.create(&request)).await;
        }
        let ids = sim
            .list()
            .unwrap()
            .into_iter()
            .map(|resource| resource.id)
            .collect();
        (ids, sim.stats().unwrap())
    }
    let first = run(&TempDir::new("determinism-a")).await;
    let second = run(&TempDir::new("determinism-b")).await;
    assert_eq!(first.0.len(), 10);
    assert_eq!(first, second);
    assert!(first.1["ec2:RunInstances"] > 10, "faults happened");
}

#[tokio::test]
async fn calls_over_the_rate_limit_fail_as_throttled_and_make_nothing() {
    let dir = TempDir::new("ratelimit");
    // One call, then one per 1,000 s: the calls after the first are over the limit however
    // slowly the test runs. The pace itself is checked in `calls` on given instants.
    let config = SimConfig {
        rate_limit: Some(0.001),
        ..SimConfig::default()
    };
    let sim = SimCloud::open(dir.path(), config)
        .unwrap()
        .with_retry_policy(fleet_engine::retry::RetryPolicy {
            max_attempts: 1,
            ..eager_retries()
        });
    let gcp = sim.provider(Cloud::Gcp);
    assert_eq!(gcp.limits().calls_per_second, Some(0.001));
    assert_eq!(gcp.limits().max_concurrent_mutations, 16);
    let aws = sim.provider(Cloud::Aws);
    aws.create(&instance("a", "us-east-2b", "t3.micro", "a"))
        .await
        .unwrap();
    let throttled = gcp
        .create(&instance("b", "us-east1-b", "e2-small", "b"))
        .await
        .unwrap_err();
    assert_eq!(throttled.kind, ErrorKind::Throttled);
    assert_eq!(throttled.code, "rateLimitExceeded");
    assert!(throttled.message.contains("403"), "{}", throttled.message);
    let aws_throttled = aws.discover("blue").await.unwrap_err();
    assert_eq!(aws_throttled.kind, ErrorKind::Throttled);
    assert_eq!(aws_throttled.code, "RequestLimitExceeded");
    assert_eq!(
        sim.list().unwrap().len(),
        1,
        "the throttled create made nothing"
    );
    // Both clouds share the limit; throttled calls are counted: the cloud saw them.
    assert_eq!(count(&sim, "ec2:RunInstances"), 1);
    assert_eq!(count(&sim, "compute.instances.insert"), 1);
}

#[tokio::test]
async fn admin_changes_show_in_discovery() {
    let dir = TempDir::new("admin");
    let sim = open(&dir);
    let gcp = sim.provider(Cloud::Gcp);
    let aws = sim.provider(Cloud::Aws);
    let manager = gcp
        .create(&instance(
            "runners-manager-blue-1",
            "us-east1-c",
            "n1-standard-4",
            "m",
        ))
        .await
        .unwrap();
    let builder = aws
        .create(&instance("builder-1", "us-east-1a", "m6g.large", "b"))
        .await
        .unwrap();

    let stopped = sim.stop("runners-manager-blue-1").unwrap();
    assert_eq!(
        stopped.status,
        InstanceStatus::Terminated,
        "GCE calls a stopped VM TERMINATED"
    );
    let discovered = discover(&sim, Cloud::Gcp, "blue").await;
    assert_eq!(
        discovered[0].status,
        InstanceStatus::Terminated,
        "stopped GCE VMs are listed"
    );
    assert_eq!(
        sim.stop(&builder.id).unwrap().status,
        InstanceStatus::Stopped
    );
    assert_eq!(
        sim.start(&builder.id).unwrap().status,
        InstanceStatus::Running
    );

    sim.set(&builder.id, "status", "terminated").unwrap();
    assert_eq!(
        discover(&sim, Cloud::Aws, "blue").await[0].status,
        InstanceStatus::Deleting,
        "terminated EC2 is listed, going away"
    );
    sim.set(&builder.id, "status", "running").unwrap();

    let changed = sim
        .set("runners-manager-blue-1", "machine_type", "n1-standard-8")
        .unwrap();
    assert_eq!(changed.spec.machine_type, "n1-standard-8");
    sim.set("runners-manager-blue-1", "disk_size_gb", "100")
        .unwrap();
    sim.set("runners-manager-blue-1", "label.team", "ci")
        .unwrap();
    sim.set("runners-manager-blue-1", "metadata.startup-script", "")
        .unwrap();
    let drifted = &discover(&sim, Cloud::Gcp, "blue").await[0];
    assert_eq!(drifted.spec.disk_size_gb, 100);
    assert_eq!(drifted.label("team"), Some("ci"));
    assert!(drifted.spec.metadata.is_empty());

    let moved = sim.set(&manager.id, "zone", "us-east1-d").unwrap();
    assert_eq!(
        moved.id,
        "zones/us-east1-d/instances/runners-manager-blue-1"
    );
    let replay = gcp
        .create(&instance(
            "runners-manager-blue-1",
            "us-east1-c",
            "n1-standard-4",
            "m",
        ))
        .await
        .unwrap();
    assert_eq!(replay.id, moved.id, "the token follows the moved instance");

    sim.set("runners-manager-blue-1", "label.fleet", "")
        .unwrap();
    assert!(
        discover(&sim, Cloud::Gcp, "blue").await.is_empty(),
        "unlabelled is unmanaged"
    );

    let unknown_field = sim.set("builder-1", "colour", "red").unwrap_err();
    assert_eq!(
        unknown_field.code().unwrap().to_string(),
        "fleet::sim::unknown_field"
    );
    assert!(unknown_field
        .help()
        .unwrap()
        .to_string()
        .contains("label.KEY"));
    let bad_type = sim
        .set("builder-1", "machine_type", "m7z.huge")
        .unwrap_err();
    assert!(
        matches!(bad_type, SimError::UnknownMachineType { .. }),
        "{bad_type:?}"
    );
    let bad_zone = sim.set("builder-1", "zone", "us-east1-c").unwrap_err();
    assert!(
        bad_zone.help().unwrap().to_string().contains("us-east-1a"),
        "{bad_zone:?}"
    );
    let bad_size = sim.set("builder-1", "disk_size_gb", "lots").unwrap_err();
    assert_eq!(
        bad_size.code().unwrap().to_string(),
        "fleet::sim::invalid_value"
    );

    let unmanaged = sim
        .create_unmanaged("legacy-runner", "us-east-1a", "t3.medium")
        .unwrap();
    assert_eq!(unmanaged.cloud, Cloud::Aws);
    assert_eq!(
        (
            unmanaged.spec.image.as_str(),
            unmanaged.spec.disk_type.as_str()
        ),
        ("debian-12", "gp3")
    );
    assert!(discover(&sim, Cloud::Aws, "blue")
        .await
        .iter()
        .all(|r| r.name != "legacy-runner"));
    let found = aws
        .find_by_names(&["legacy-runner".to_owned()])
        .await
        .unwrap();
    // EC2 reports the ClientToken of what it lists: none for a hand-made instance.
    let expected = LiveResource {
        creation_token: Some(String::new()),
        ..unmanaged.clone()
    };
    assert_eq!(found, vec![expected]);
    let taken = sim
        .create_unmanaged("runners-manager-blue-1", "us-east1-d", "e2-medium")
        .unwrap_err();
    assert!(matches!(taken, SimError::NameTaken { .. }), "{taken:?}");

    let removed = sim.delete("legacy-runner").unwrap();
    assert_eq!(removed.id, unmanaged.id);
    let gone = sim.delete("legacy-runner").unwrap_err();
    assert_eq!(gone.code().unwrap().to_string(), "fleet::sim::not_found");
    assert!(gone.help().unwrap().to_string().contains("sim list"));

    let admin_calls: u64 = sim.stats().unwrap().values().sum();
    // Two creates, one replayed create, the wait for each of the two GCE creates' operations,
    // five discovers of two pages, one find_by_names of two.
    assert_eq!(
        admin_calls,
        2 + 1 + 2 + 5 * 2 + 2,
        "admin calls are not counted"
    );
}

#[tokio::test]
async fn another_handle_on_the_same_dir_sees_changes_at_once() {
    let dir = TempDir::new("shared");
    let apply = open(&dir);
    let console = open(&dir);
    let gcp = apply.provider(Cloud::Gcp);
    let made = gcp
        .create(&instance("helper", "us-central1-b", "e2-medium", "t"))
        .await
        .unwrap();
    assert_eq!(
        discover(&apply, Cloud::Gcp, "blue").await[0].status,
        InstanceStatus::Running
    );
    console.stop("helper").unwrap();
    assert_eq!(
        discover(&apply, Cloud::Gcp, "blue").await[0].status,
        InstanceStatus::Terminated
    );
    console.delete(&made.id).unwrap();
    assert!(discover(&apply, Cloud::Gcp, "blue").await.is_empty());
    let again = gcp
        .create(&instance("helper", "us-central1-b", "e2-medium", "t"))
        .await
        .unwrap();
    assert_eq!(again.id, made.id);
    assert_eq!(
        console.list().unwrap().len(),
        1,
        "the token of a vanished machine has expired: it is made again, once"
    );
}

#[tokio::test]
async fn update_sends_only_what_changed_and_delete_is_idempotent() {
    let dir = TempDir::new("update");
    let sim = open(&dir);
    for cloud in Cloud::ALL {
        let provider = sim.provider(cloud);
        let (zone, machine_type) = match cloud {
            Cloud::Gcp => ("asia-southeast1-a", "t2a-standard-4"),
            Cloud::Aws => ("us-east-2c", "c6g.2xlarge"),
        };
        let made = provider
            .create(&instance("helper-1", zone, machine_type, "u"))
            .await
            .unwrap();
        let mut request = UpdateRequest {
            id: made.id.clone(),
            labels: made.spec.labels.clone(),
            metadata: made.spec.metadata.clone(),
            idempotency_token: "u1".to_owned(),
        };
        request
            .labels
            .insert(labels::SPEC_HASH.to_owned(), "abc".to_owned());
        let updated = provider.update(&request).await.unwrap();
        assert_eq!(updated.label(labels::SPEC_HASH), Some("abc"));
        assert_eq!(updated.spec.metadata, made.spec.metadata);
        request
            .metadata
            .insert("config.toml".to_owned(), "concurrent = 4".to_owned());
        provider.update(&request).await.unwrap();
        provider.update(&request).await.unwrap();

        let delete = DeleteRequest {
            kind: ObjectKind::Instance,
            id: made.id.clone(),
            name: made.name.clone(),
            idempotency_token: "d".to_owned(),
        };
        provider.delete(&delete).await.unwrap();
        provider
            .delete(&delete)
            .await
            .expect("deleting what is gone succeeds");
        let gone = provider.update(&request).await.unwrap_err();
        assert_eq!(gone.kind, ErrorKind::NotFound, "{cloud}");
    }
    let stats = sim.stats().unwrap();
    assert_eq!(
        stats["compute.instances.setLabels"], 2,
        "one change and one 404"
    );
    assert_eq!(
        stats["compute.instances.setMetadata"], 1,
        "the unchanged update sent nothing"
    );
    assert_eq!(stats["compute.instances.delete"], 2);
    assert_eq!(stats["ec2:CreateTags"], 2);
    assert_eq!(stats["ec2:ModifyInstanceAttribute"], 1);
    assert_eq!(stats["ec2:TerminateInstances"], 2);
    let left = sim.list().unwrap();
    assert_eq!(left.len(), 1, "the EC2 instance is still shutting down");
    assert_eq!(
        (left[0].cloud, left[0].status),
        (Cloud::Aws, InstanceStatus::Deleting)
    );
}

#[tokio::test]
async fn a_simulated_gce_machine_holds_references_and_its_secrets_live_in_a_store_of_their_own() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("secrets");
    let sim = open(&dir);
    let provider = sim.provider(Cloud::Gcp);
    let secret = "glrt-sim-s3cr3t";
    let delivery = |value: &str| {
        serde_json::to_string(&fleet_engine::secrets::Delivery {
            digests: BTreeMap::from([(
                "T".to_owned(),
                fleet_engine::secrets::digest("blue", "T", value),
            )]),
            values: BTreeMap::from([("T".to_owned(), value.to_owned())]),
            ..Default::default()
        })
        .unwrap()
    };
    let mut request = instance("helper-1", "asia-southeast1-a", "t2a-standard-4", "s");
    request
        .spec
        .metadata
        .insert("fleet-secrets".to_owned(), delivery(secret));
    let made = provider.create(&request).await.unwrap();
    let store = super::store::Store::open(dir.path()).unwrap();
    let secrets = store.secrets(Cloud::Gcp).unwrap();
    assert_eq!(secrets.len(), 1, "{secrets:?}");
    let (resource, kept) = secrets.iter().next().unwrap();
    assert_eq!((kept.value.as_str(), kept.versions), (secret, 1));
    assert_eq!(
        kept.labels["fleet-digest"],
        fleet_engine::secrets::digest("blue", "T", secret)
    );
    // No file but the secret's holds the value, and that one is the owner's only.
    let mut holding = Vec::new();
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if std::fs::read_to_string(&path)
            .unwrap_or_default()
            .contains(secret)
        {
            holding.push(path);
        }
    }
    assert_eq!(holding.len(), 1, "{holding:?}");
    assert!(holding[0].starts_with(dir.path().join("secrets")));
    let mode = std::fs::metadata(&holding[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let listed = discover(&sim, Cloud::Gcp, "blue").await;
    let told: fleet_engine::secrets::Delivery =
        serde_json::from_str(&listed[0].spec.metadata["fleet-secrets"]).unwrap();
    assert_eq!(told.names["T"], *resource);
    assert!(told.values.is_empty());
    // The same value again changes nothing; a rotated one is a new version.
    let update = |metadata: &str| UpdateRequest {
        id: made.id.clone(),
        labels: request.spec.labels.clone(),
        metadata: BTreeMap::from([
            ("startup-script".to_owned(), "#!/bin/sh".to_owned()),
            ("fleet-secrets".to_owned(), metadata.to_owned()),
        ]),
        idempotency_token: "u".to_owned(),
    };
    provider.update(&update(&delivery(secret))).await.unwrap();
    assert_eq!(count(&sim, "compute.instances.setMetadata"), 0);
    provider
        .update(&update(&delivery("rotated")))
        .await
        .unwrap();
    let kept = &store.secrets(Cloud::Gcp).unwrap()[resource];
    assert_eq!((kept.value.as_str(), kept.versions), ("rotated", 2));
    // Deleting the machine deletes its secrets.
    provider
        .delete(&DeleteRequest {
            kind: ObjectKind::Instance,
            id: made.id.clone(),
            name: made.name.clone(),
            idempotency_token: "d".to_owned(),
        })
        .await
        .unwrap();
    assert!(store.secrets(Cloud::Gcp).unwrap().is_empty());
}

#[tokio::test]
async fn create_batch_makes_one_call_per_shape_and_keeps_tokens() {
    let dir = TempDir::new("batch");
    let sim = open(&dir);
    let gcp = sim.provider(Cloud::Gcp);
    let mut requests: Vec<CreateRequest> = (0..3)
        .map(|n| {
            instance(
                &format!("pool-{n}"),
                "us-east1-b",
                "n2-standard-4",
                &format!("p{n}"),
            )
        })
        .collect();
    requests.insert(1, instance("odd-one", "us-east1-b", "n2-standard-8", "odd"));
    requests.push(template(
        "pool-template-v1",
        "us-east1-b",
        "n2-standard-4",
        "tpl",
    ));
    let results = gcp.create_batch(&requests).await;
    let made: Vec<String> = results
        .into_iter()
        .map(|result| result.unwrap().name)
        .collect();
    assert_eq!(
        made,
        ["pool-0", "odd-one", "pool-1", "pool-2", "pool-template-v1"]
    );
    assert_eq!(count(&sim, "compute.instances.bulkInsert"), 1);
    assert_eq!(count(&sim, "compute.instances.insert"), 1);
    assert_eq!(count(&sim, "compute.instanceTemplates.insert"), 1);

    let again = gcp.create_batch(&requests).await;
    assert!(again.iter().all(Result::is_ok));
    assert_eq!(
        sim.list().unwrap().len(),
        5,
        "replayed tokens create nothing"
    );

    let template_id = sim
        .list()
        .unwrap()
        .into_iter()
        .find(|r| r.kind == ObjectKind::InstanceTemplate)
        .unwrap()
        .id;
    let immutable = gcp
        .update(&UpdateRequest {
            id: template_id,
            labels: BTreeMap::new(),
            metadata: BTreeMap::new(),
            idempotency_token: "x".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        immutable.kind,
        ErrorKind::Fatal,
        "templates cannot be changed in place"
    );
}

#[tokio::test]
async fn a_directory_of_other_files_is_not_taken_over() {
    let dir = TempDir::new("foreign");
    std::fs::create_dir_all(dir.path()).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let refused = SimCloud::open(dir.path(), SimConfig::default()).unwrap_err();
    assert_eq!(
        refused.code().unwrap().to_string(),
        "fleet::sim::not_a_sim_dir"
    );
    assert!(!dir.path().join("objects").exists(), "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_racing_on_the_same_tokens_make_each_machine_once() {
    let dir = TempDir::new("race");
    // Two handles lock through two open files, exactly as two processes do.
    let first = open(&dir);
    let second = open(&dir);
    let mut tasks = tokio::task::JoinSet::new();
    for sim in [&first, &second] {
        for n in 0..30 {
            let aws = sim.provider(Cloud::Aws);
            let request = instance(
                &format!("runner-{n}"),
                "us-east-1f",
                "m5.large",
                &format!("race-{n}"),
            );
            tasks.spawn(async move { aws.create(&request).await.unwrap().id });
        }
    }
    let mut ids = Vec::new();
    while let Some(id) = tasks.join_next().await {
        ids.push(id.unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 30, "both callers got the same 30 machines");
    assert_eq!(first.list().unwrap().len(), 30);
    assert_eq!(discover(&second, Cloud::Aws, "blue").await.len(), 30);
}

#[tokio::test]
async fn creates_of_names_matching_a_failing_pattern_fail_for_good() {
    let dir = TempDir::new("fail-create");
    let sim = open(&dir);
    sim.fail_creates_matching(vec!["arm64-aws-*".to_owned()]);
    let aws = sim.provider(Cloud::Aws);
    let refused = aws
        .create(&template("arm64-aws-v1", "us-east-1a", "m6g.large", "a"))
        .await
        .unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Fatal, "not retried");
    assert!(
        refused.message.contains("arm64-aws-*"),
        "{}",
        refused.message
    );
    let batch = [
        instance("arm64-aws-1", "us-east-1a", "m6g.large", "b"),
        instance("amd64-aws-1", "us-east-1a", "m6g.large", "c"),
    ];
    let results = aws.create_batch(&batch).await;
    assert!(results[0].is_err() && results[1].is_ok());
    assert_eq!(names(&sim.list().unwrap()), ["amd64-aws-1"]);

    sim.fail_creates_matching(Vec::new());
    aws.create(&template("arm64-aws-v1", "us-east-1a", "m6g.large", "a"))
        .await
        .expect("the same request succeeds once the pattern is gone");
}

#[test]
fn failing_create_patterns_match_whole_names() {
    use super::glob_matches;
    assert!(glob_matches("arm64-aws-*", "arm64-aws-v1a2b"));
    assert!(glob_matches("*-blue-?", "runners-manager-com-blue-1"));
    assert!(glob_matches("exact", "exact"));
    assert!(!glob_matches("arm64-aws-*", "x-arm64-aws-v1"));
    assert!(!glob_matches("*-blue-?", "runners-blue-12"));
}

/// A policy that retries at once, for tests that count calls and do not care about pacing.
fn eager_retries() -> fleet_engine::retry::RetryPolicy {
    fleet_engine::retry::RetryPolicy {
        max_attempts: 20,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(1),
        max_elapsed: Duration::from_secs(600),
    }
}

#[tokio::test]
async fn a_fault_on_a_list_page_costs_one_more_call_for_that_page_only() {
    let dir = TempDir::new("page-faults");
    {
        let sim = open(&dir);
        let requests: Vec<CreateRequest> = (0..2500)
            .map(|n| {
                instance(
                    &format!("pool-{n:04}"),
                    "us-east-1a",
                    "m5.large",
                    &format!("p{n}"),
                )
            })
            .collect();
        let made = sim.provider(Cloud::Aws).create_batch(&requests).await;
        assert!(made.iter().all(Result::is_ok));
    }
    let config = SimConfig {
        fault_rate: 0.3,
        seed: 11,
        ..SimConfig::default()
    };
    let sim = SimCloud::open(dir.path(), config)
        .unwrap()
        .with_retry_policy(eager_retries());
    let before = sim.stats().unwrap();
    let found = discover(&sim, Cloud::Aws, "blue").await;
    assert_eq!(found.len(), 2500);
    let after = sim.stats().unwrap();
    let delta = |operation: &str| {
        after.get(operation).copied().unwrap_or(0) - before.get(operation).copied().unwrap_or(0)
    };
    let faults = delta("fault:ec2:DescribeInstances") + delta("fault:ec2:DescribeLaunchTemplates");
    assert!(
        faults > 0,
        "seed 11 gave no fault on a list page: {after:?}"
    );
    // Three pages of instances and one of templates, each asked for once more per fault.
    assert_eq!(
        delta("ec2:DescribeInstances"),
        3 + delta("fault:ec2:DescribeInstances")
    );
    assert_eq!(
        delta("ec2:DescribeLaunchTemplates"),
        1 + delta("fault:ec2:DescribeLaunchTemplates")
    );
}

#[tokio::test]
async fn ec2_instances_are_pending_then_running_and_go_through_shutting_down_to_gone() {
    let dir = TempDir::new("ec2-states");
    let sim = open(&dir);
    let aws = sim.provider(Cloud::Aws);
    let made = aws
        .create(&instance("builder-1", "us-east-1a", "m6g.large", "s"))
        .await
        .unwrap();
    let statuses = |listed: Vec<LiveResource>| -> Vec<InstanceStatus> {
        listed.iter().map(|resource| resource.status).collect()
    };
    assert_eq!(
        statuses(discover(&sim, Cloud::Aws, "blue").await),
        [InstanceStatus::Provisioning],
        "pending at the first list call"
    );
    assert_eq!(
        statuses(discover(&sim, Cloud::Aws, "blue").await),
        [InstanceStatus::Running]
    );
    assert_eq!(
        discover(&sim, Cloud::Aws, "blue").await[0]
            .creation_token
            .as_deref(),
        Some("s"),
        "EC2 reports the ClientToken"
    );
    let delete = DeleteRequest {
        kind: ObjectKind::Instance,
        id: made.id.clone(),
        name: made.name.clone(),
        idempotency_token: "d".to_owned(),
    };
    aws.delete(&delete).await.unwrap();
    for _ in 0..4 {
        assert_eq!(
            statuses(discover(&sim, Cloud::Aws, "blue").await),
            [InstanceStatus::Deleting],
            "shutting-down, then terminated"
        );
        aws.delete(&delete)
            .await
            .expect("deleting what goes succeeds");
    }
    assert!(discover(&sim, Cloud::Aws, "blue").await.is_empty());
    assert!(sim.list().unwrap().is_empty());
    assert_eq!(count(&sim, "ec2:DescribeInstances"), 8);
}

#[tokio::test]
async fn a_lagging_list_is_asked_again_until_it_shows_what_this_process_made() {
    let dir = TempDir::new("lag");
    let config = SimConfig {
        list_lag: 3,
        ..SimConfig::default()
    };
    let sim = SimCloud::open(dir.path(), config.clone())
        .unwrap()
        .with_retry_policy(eager_retries());
    let gcp = sim.provider(Cloud::Gcp);
    gcp.create(&instance("manager-1", "us-east1-c", "n1-standard-4", "l1"))
        .await
        .unwrap();
    // Three list calls do not show it yet; the provider that made it lists until one does.
    assert_eq!(
        names(&discover(&sim, Cloud::Gcp, "blue").await),
        ["manager-1"]
    );
    assert_eq!(count(&sim, "compute.instances.aggregatedList"), 4);
    // Another process, which made nothing, takes the first answer.
    gcp.create(&instance("manager-2", "us-east1-c", "n1-standard-4", "l2"))
        .await
        .unwrap();
    sim.flush_stats().unwrap();
    let other = SimCloud::open(dir.path(), config).unwrap();
    assert_eq!(
        names(&discover(&other, Cloud::Gcp, "blue").await),
        ["manager-1"]
    );
    assert_eq!(count(&other, "compute.instances.aggregatedList"), 5);
    // Planned again from that lagging view, the create carries the same token: one machine.
    gcp.create(&instance("manager-2", "us-east1-c", "n1-standard-4", "l2"))
        .await
        .unwrap();
    assert_eq!(sim.list().unwrap().len(), 2);
}
