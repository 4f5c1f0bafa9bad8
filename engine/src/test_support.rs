//! Builders for the engine's unit tests: desired resources, live objects, plans made of them
//! by the real diff, and a fake provider that records its calls and fails or panics on cue.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::desired::{spec_hash, Address, CloudTarget, Desired, DesiredResource};
use crate::diff;
use crate::plan::Plan;
use crate::provider::{
    labels, Cloud, CreateRequest, DeleteRequest, ErrorKind, InstanceStatus, LiveResource,
    MachineSpec, ObjectKind, Provider, ProviderError, ProviderLimits, UpdateRequest,
};
use crate::spec::model::ResourceKind;

/// The fleet every builder uses.
pub(crate) const FLEET: &str = "unit";

/// A desired resource of `kind` named `name` on GCP, with fleet's labels and spec hash.
pub(crate) fn desired(kind: ResourceKind, name: &str) -> DesiredResource {
    let object = if kind == ResourceKind::Template {
        ObjectKind::InstanceTemplate
    } else {
        ObjectKind::Instance
    };
    let mut spec = MachineSpec {
        machine_type: "n1-standard-2".to_string(),
        zone: "us-east1-c".to_string(),
        image: "debian-12".to_string(),
        disk_type: "pd-ssd".to_string(),
        disk_size_gb: 50,
        labels: BTreeMap::new(),
        metadata: BTreeMap::new(),
        networking: Default::default(),
        identity: Default::default(),
    };
    for (key, value) in [
        (labels::FLEET, FLEET),
        (labels::KIND, kind.as_str()),
        (labels::RESOURCE, name),
        (labels::ROLE, "test"),
    ] {
        spec.labels.insert(key.to_string(), value.to_string());
    }
    let hash = spec_hash(Cloud::Gcp, object, &spec);
    spec.labels.insert(labels::SPEC_HASH.to_string(), hash);
    DesiredResource {
        address: Address::new(kind, name),
        kind,
        cloud: Cloud::Gcp,
        object,
        cloud_name: name.to_string(),
        spec,
        depends_on: Vec::new(),
    }
}

/// The live object that `want` became, with the cloud id `id`.
pub(crate) fn live(want: &DesiredResource, id: &str) -> LiveResource {
    LiveResource {
        cloud: want.cloud,
        kind: want.object,
        id: id.to_string(),
        name: want.cloud_name.clone(),
        status: if want.object == ObjectKind::Instance {
            InstanceStatus::Running
        } else {
            InstanceStatus::Available
        },
        spec: want.spec.clone(),
        creation_token: None,
    }
}

/// A desired set of these resources.
pub(crate) fn desired_set(resources: Vec<DesiredResource>) -> Desired {
    let mut clouds = BTreeMap::new();
    clouds.insert(
        Cloud::Gcp,
        CloudTarget {
            project: Some("unit-project".to_string()),
            region: "us-east1".to_string(),
        },
    );
    Desired {
        fleet: FLEET.to_string(),
        source: "unit.yaml".to_string(),
        clouds,
        resources: resources
            .into_iter()
            .map(|resource| (resource.address.clone(), resource))
            .collect(),
        hosts: BTreeMap::new(),
    }
}

/// The plan the real diff makes of `desired` against `live`.
pub(crate) fn plan_of(desired: &Desired, live: &[LiveResource]) -> Plan {
    let diff = diff::diff(desired, live, &[], None, &BTreeMap::new());
    Plan::new(
        desired,
        vec![Cloud::Gcp],
        BTreeMap::new(),
        Vec::new(),
        "unit-fingerprint".to_string(),
        diff,
    )
}

/// A GCP provider that keeps objects in memory, records every mutating call by cloud name,
/// and fails or panics on the names it is told to.
#[derive(Default)]
pub(crate) struct FakeProvider {
    /// `create NAME`, `update NAME`, `delete NAME`, in call order.
    pub(crate) calls: Mutex<Vec<String>>,
    /// What discovery returns.
    pub(crate) objects: Mutex<Vec<LiveResource>>,
    /// Names whose creation panics.
    pub(crate) panic_on: Vec<String>,
    /// Names whose creation or deletion fails for good.
    pub(crate) fail_on: Vec<String>,
    /// Whether discovery fails.
    pub(crate) discovery_fails: bool,
    /// Whether discovery fails once something was created (verification cannot run).
    pub(crate) discovery_fails_after_create: bool,
    /// Whether created objects stay out of discovery (the cloud lost them).
    pub(crate) hide_created: bool,
}

impl FakeProvider {
    pub(crate) fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn called(&self, verb: &str, name: &str) -> Result<(), ProviderError> {
        self.calls.lock().unwrap().push(format!("{verb} {name}"));
        if self.fail_on.iter().any(|fail| fail == name) {
            return Err(ProviderError::new(
                ErrorKind::Fatal,
                format!("fake.{verb}"),
                "refused",
                format!("the fake refuses to {verb} {name}"),
            ));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Provider for FakeProvider {
    fn cloud(&self) -> Cloud {
        Cloud::Gcp
    }

    fn describe(&self) -> String {
        "fake GCP".to_string()
    }

    fn limits(&self) -> ProviderLimits {
        ProviderLimits {
            max_concurrent_mutations: 4,
            calls_per_second: None,
        }
    }

    async fn discover(&self, _fleet: &str) -> Result<Vec<LiveResource>, ProviderError> {
        let created = self
            .calls
            .lock()
            .unwrap()
            .iter()
            .any(|call| call.starts_with("create"));
        if self.discovery_fails || (self.discovery_fails_after_create && created) {
            return Err(ProviderError::new(
                ErrorKind::Fatal,
                "fake.list",
                "refused",
                "the fake refuses to list",
            ));
        }
        Ok(self.objects.lock().unwrap().clone())
    }

    async fn find_by_names(&self, _names: &[String]) -> Result<Vec<LiveResource>, ProviderError> {
        Ok(Vec::new())
    }

    async fn create(&self, request: &CreateRequest) -> Result<LiveResource, ProviderError> {
        if self.panic_on.contains(&request.name) {
            panic!("the fake panics creating {}", request.name);
        }
        self.called("create", &request.name)?;
        let made = LiveResource {
            cloud: Cloud::Gcp,
            kind: request.kind,
            id: format!("id-{}", request.name),
            name: request.name.clone(),
            status: if request.kind == ObjectKind::Instance {
                InstanceStatus::Running
            } else {
                InstanceStatus::Available
            },
            spec: request.spec.clone(),
            creation_token: None,
        };
        if !self.hide_created {
            self.objects.lock().unwrap().push(made.clone());
        }
        Ok(made)
    }

    async fn update(&self, request: &UpdateRequest) -> Result<LiveResource, ProviderError> {
        self.called("update", &request.id)?;
        let mut objects = self.objects.lock().unwrap();
        let object = objects
            .iter_mut()
            .find(|object| object.id == request.id)
            .ok_or_else(|| {
                ProviderError::new(ErrorKind::NotFound, "fake.update", "notFound", "gone")
            })?;
        object.spec.labels = request.labels.clone();
        object.spec.metadata = request.metadata.clone();
        Ok(object.clone())
    }

    async fn delete(&self, request: &DeleteRequest) -> Result<(), ProviderError> {
        self.called("delete", &request.name)?;
        self.objects
            .lock()
            .unwrap()
            .retain(|object| object.id != request.id);
        Ok(())
    }
}
