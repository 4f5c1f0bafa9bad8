//! The embedded simulated cloud: a GCP-like and an AWS-like cloud living in a directory.
//!
//! In: a sim dir and a [`SimConfig`] (latency, rate limit, fault rate, seed). Out: one
//! `engine::provider::Provider` per cloud ([`SimCloud::provider`]), whose calls behave like
//! the real APIs — real operation names, error codes, pagination, idempotency tokens, name
//! rules and catalog checks — plus admin calls ([`SimCloud::list`], [`SimCloud::stop`],
//! [`SimCloud::set`], …) that act out of band, like a person in the cloud console, and the
//! count of API calls made ([`SimCloud::stats`]).
//!
//! The state persists in the directory and may be shared by several processes at once (an
//! apply running while a test stops a machine): `sim.json` (format and a note that this is a
//! simulator), `sim.lock` (the fs4 lock), one JSON file per object under `objects/<cloud>/`,
//! idempotency-token records under `tokens/<cloud>/` and call counts in `stats.json`.
//!
//! Everything is deterministic: ids are hashes of tokens or names, and each injected fault is
//! drawn from a hash of the seed, the operation, its key and the attempt number, never from a
//! shared random generator, so results do not depend on task scheduling.
//!
//! The simulator says so wherever it shows itself: `describe()` reads `simulated GCP (sim
//! dir: …)`, injected errors say `simulated fault`, and `sim.json` says nothing in the
//! directory is real.

mod api;
mod calls;
mod error;
mod store;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleet_engine::catalog;
use fleet_engine::provider::{
    Cloud, InstanceStatus, LiveResource, MachineSpec, Networking, ObjectKind, Provider,
};
use fleet_engine::retry::RetryPolicy;

pub use self::error::SimError;
use self::store::{Store, StoredObject, Txn};

/// How the simulated cloud behaves towards API calls.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// How long every API call takes.
    pub latency: Duration,
    /// API calls per second the whole simulated cloud accepts (both clouds together, this
    /// process); calls above it fail at once as throttled. `None`, or a value that is not a
    /// positive number, means no limit.
    pub rate_limit: Option<f64>,
    /// The probability, from 0.0 to 1.0, that an API call fails with a transient error. For
    /// mutating calls, half of these failures happen after the change was made (the
    /// response was lost), so only the idempotency token prevents a duplicate.
    pub fault_rate: f64,
    /// Seeds the fault draws: the same seed and calls give the same faults.
    pub seed: u64,
    /// Instance list calls that do not show an instance yet after its creation (0: lists
    /// show it at once), to model lists that lag behind writes.
    pub list_lag: u64,
}

impl Default for SimConfig {
    /// No latency, no rate limit, no faults, seed 0.
    fn default() -> SimConfig {
        SimConfig {
            latency: Duration::ZERO,
            rate_limit: None,
            fault_rate: 0.0,
            seed: 0,
            list_lag: 0,
        }
    }
}

/// What the providers and the admin calls share.
pub(crate) struct Inner {
    store: Store,
    gate: calls::Gate,
    /// Name patterns whose creation fails; see [`SimCloud::fail_creates_matching`].
    failing_creates: std::sync::RwLock<Vec<String>>,
    /// See [`SimConfig::list_lag`].
    list_lag: u64,
    /// Per cloud (GCP, AWS): the instances made in this process that no list call has shown
    /// yet, id → fleet label, so a discovery can wait for them.
    awaited: [std::sync::Mutex<BTreeMap<String, String>>; 2],
}

impl Inner {
    /// The pattern `name` matches among the failing-create patterns, if any.
    fn failing_create_pattern(&self, name: &str) -> Option<String> {
        self.failing_creates
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .find(|pattern| glob_matches(pattern, name))
            .cloned()
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters and `?` for
/// one character.
fn glob_matches(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    let (mut p, mut n) = (0, 0);
    // Where the last `*` was, and how much of the name it has taken so far.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((star_p, star_n)) = star {
            p = star_p + 1;
            n = star_n + 1;
            star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

impl Inner {
    fn flush_stats(&self) -> Result<(), SimError> {
        let pending = self.gate.take_pending();
        if let Err(error) = self.store.merge_stats(&pending) {
            self.gate.restore_pending(pending);
            return Err(error);
        }
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Best effort: a process that cannot write its counts loses only its counts.
        let _ = self.flush_stats();
    }
}

/// The fields [`SimCloud::set`] can change.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    MachineType,
    Image,
    DiskType,
    DiskSizeGb,
    Zone,
    Status,
    Label(String),
    Metadata(String),
}

impl Field {
    fn parse(field: &str) -> Option<Field> {
        Some(match field {
            "machine_type" => Field::MachineType,
            "image" => Field::Image,
            "disk_type" => Field::DiskType,
            "disk_size_gb" => Field::DiskSizeGb,
            "zone" => Field::Zone,
            "status" => Field::Status,
            _ => {
                if let Some(key) = field.strip_prefix("label.").filter(|key| !key.is_empty()) {
                    Field::Label(key.to_owned())
                } else if let Some(key) = field
                    .strip_prefix("metadata.")
                    .filter(|key| !key.is_empty())
                {
                    Field::Metadata(key.to_owned())
                } else {
                    return None;
                }
            }
        })
    }
}

const STATUSES: [InstanceStatus; 6] = [
    InstanceStatus::Provisioning,
    InstanceStatus::Running,
    InstanceStatus::Stopping,
    InstanceStatus::Stopped,
    InstanceStatus::Terminated,
    InstanceStatus::Available,
];

/// A simulated cloud over one sim dir. Cheap to clone: clones share the state, the rate
/// limit, the fault counters and the call counts.
#[derive(Clone)]
pub struct SimCloud {
    inner: Arc<Inner>,
    /// How its providers retry list pages and operation polls.
    retry: RetryPolicy,
}

impl fmt::Debug for SimCloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimCloud")
            .field("dir", &self.inner.store.dir_display())
            .field("gate", &self.inner.gate)
            .finish()
    }
}

impl SimCloud {
    /// Opens the simulated cloud in `dir`, creating the directory and its layout if missing.
    ///
    /// # Errors
    /// [`SimError::NotASimDir`] when `dir` holds other files, [`SimError::UnsupportedFormat`]
    /// when another version made it, [`SimError::Io`] when it cannot be read or written.
    pub fn open(dir: &Path, config: SimConfig) -> Result<SimCloud, SimError> {
        let store = Store::open(dir)?;
        let gate = calls::Gate::new(
            config.latency,
            config.rate_limit,
            config.fault_rate,
            config.seed,
        );
        Ok(SimCloud {
            inner: Arc::new(Inner {
                store,
                gate,
                failing_creates: std::sync::RwLock::new(Vec::new()),
                list_lag: config.list_lag,
                awaited: Default::default(),
            }),
            retry: RetryPolicy::default(),
        })
    }

    /// The same simulator, whose providers retry each list page and operation poll under
    /// `retry` (`--max-attempts`, `--retry-for`) instead of the default policy.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> SimCloud {
        self.retry = retry;
        self
    }

    /// The API of one cloud. Both clouds' providers share this simulator's state, rate limit
    /// and call counts.
    pub fn provider(&self, cloud: Cloud) -> Arc<dyn Provider> {
        Arc::new(api::SimProvider::new(
            cloud,
            Arc::clone(&self.inner),
            self.retry,
        ))
    }

    /// Makes every create (single or batched) of an object whose name matches one of
    /// `patterns` fail with a fatal, non-retryable simulated error, to test how failures are
    /// handled. `*` matches any run of characters, `?` one. Replaces earlier patterns; an
    /// empty list turns it off. Holds for this process and every clone and provider of this
    /// simulator; the failing calls are counted like any other.
    pub fn fail_creates_matching(&self, patterns: Vec<String>) {
        *self
            .inner
            .failing_creates
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = patterns;
    }

    /// Adds this process's API-call counts to the sim dir's totals and resets them. Also done,
    /// best effort, when the last clone (and the last provider) is dropped.
    ///
    /// # Errors
    /// [`SimError::Io`] when `stats.json` cannot be written; the counts are kept for the next
    /// try.
    pub fn flush_stats(&self) -> Result<(), SimError> {
        self.inner.flush_stats()
    }

    /// Every instance and template of both clouds, sorted by (cloud, kind, name, id), as the
    /// next list call would show them (EC2 instances `provisioning` while pending and
    /// `deleting` while shutting down or terminated), except that an instance a lagging list
    /// would not show yet is included. Not an API call: it is not counted, does not advance
    /// the list clock and ignores latency, faults and the rate limit.
    ///
    /// # Errors
    /// [`SimError::Io`] or [`SimError::Corrupt`] when the sim dir cannot be read.
    pub fn list(&self) -> Result<Vec<LiveResource>, SimError> {
        let clocks = [
            self.inner.store.clock(Cloud::Gcp)?,
            self.inner.store.clock(Cloud::Aws)?,
        ];
        let mut all = self.inner.store.read(|snapshot| {
            snapshot
                .objects()
                .filter_map(|object| {
                    let now = match object.resource.cloud {
                        Cloud::Gcp => clocks[0],
                        Cloud::Aws => clocks[1],
                    };
                    match api::view(object, now, 0) {
                        api::View::Listed(resource) => Some(*resource),
                        api::View::Hidden | api::View::Vanished => None,
                    }
                })
                .collect::<Vec<_>>()
        })?;
        all.sort_by(|a, b| {
            (a.cloud, a.kind, &a.name, &a.id).cmp(&(b.cloud, b.kind, &b.name, &b.id))
        });
        Ok(all)
    }

    /// API calls by operation name (`compute.instances.insert`, `ec2:RunInstances`, …),
    /// summed over every process that flushed its counts into this sim dir, plus this
    /// process's own. Failed calls count: the cloud saw them.
    ///
    /// # Errors
    /// [`SimError::Io`] or [`SimError::Corrupt`] when `stats.json` cannot be read.
    pub fn stats(&self) -> Result<BTreeMap<String, u64>, SimError> {
        let mut totals = self.inner.store.read_stats()?;
        for (operation, count) in self.inner.gate.pending() {
            *totals.entry(operation).or_default() += count;
        }
        Ok(totals)
    }

    /// Stops an instance, out of band: a GCE instance becomes `Terminated` (GCE's word for a
    /// stopped VM), an EC2 instance `Stopped`. `name` is a cloud name or id.
    ///
    /// # Errors
    /// [`SimError::NotFound`], [`SimError::Ambiguous`], [`SimError::NotAnInstance`].
    pub fn stop(&self, name: &str) -> Result<LiveResource, SimError> {
        self.set_run_state(name, |cloud| match cloud {
            Cloud::Gcp => InstanceStatus::Terminated,
            Cloud::Aws => InstanceStatus::Stopped,
        })
    }

    /// Starts an instance, out of band: it becomes `Running`.
    ///
    /// # Errors
    /// As [`SimCloud::stop`].
    pub fn start(&self, name: &str) -> Result<LiveResource, SimError> {
        self.set_run_state(name, |_| InstanceStatus::Running)
    }

    /// Deletes an instance or template, out of band and at once; returns what was removed.
    /// The token that made it is forgotten with it: a create with that token makes a new
    /// object.
    ///
    /// # Errors
    /// [`SimError::NotFound`], [`SimError::Ambiguous`].
    pub fn delete(&self, name: &str) -> Result<LiveResource, SimError> {
        self.inner.store.write(|txn| {
            let object = self.resolve(txn, name)?;
            txn.remove(&object)?;
            Ok(object.resource)
        })
    }

    /// Changes one field of an instance or template, out of band, to make drift. `field` is
    /// `machine_type`, `image`, `disk_type`, `disk_size_gb`, `zone`, `status`, `label.KEY`
    /// or `metadata.KEY`; an empty value removes a label or metadata key. Machine types and
    /// zones are checked as the cloud console would. Moving a GCE instance to another zone
    /// changes its id, as in GCE.
    ///
    /// # Errors
    /// [`SimError::UnknownField`], [`SimError::InvalidValue`], [`SimError::UnknownZone`],
    /// [`SimError::UnknownMachineType`], [`SimError::MachineTypeNotOffered`],
    /// [`SimError::NameTaken`], and those of [`SimCloud::delete`].
    pub fn set(&self, name: &str, field: &str, value: &str) -> Result<LiveResource, SimError> {
        let parsed = Field::parse(field).ok_or_else(|| SimError::UnknownField {
            field: field.to_owned(),
        })?;
        self.inner.store.write(|txn| {
            let mut object = self.resolve(txn, name)?;
            let old_id = object.resource.id.clone();
            let resource = &mut object.resource;
            let cloud = resource.cloud;
            let invalid = |help: String| SimError::InvalidValue {
                name: name.to_owned(),
                field: field.to_owned(),
                value: value.to_owned(),
                help,
            };
            match parsed {
                Field::MachineType => {
                    validate::check_placement(cloud, &resource.spec.zone, value)
                        .map_err(|problem| problem.to_sim_error(cloud, &resource.name))?;
                    resource.spec.machine_type = value.to_owned();
                }
                Field::Image | Field::DiskType if value.trim().is_empty() => {
                    return Err(invalid(format!("{field} cannot be empty")));
                }
                Field::Image => resource.spec.image = value.to_owned(),
                Field::DiskType => resource.spec.disk_type = value.to_owned(),
                Field::DiskSizeGb => match value.parse::<u32>() {
                    Ok(size) if size > 0 => resource.spec.disk_size_gb = size,
                    _ => return Err(invalid("disk_size_gb is a whole number of GB, at least 1".to_owned())),
                },
                Field::Zone => {
                    validate::check_placement(cloud, value, &resource.spec.machine_type)
                        .map_err(|problem| problem.to_sim_error(cloud, &resource.name))?;
                    resource.spec.zone = value.to_owned();
                    if cloud == Cloud::Gcp && resource.kind == ObjectKind::Instance {
                        resource.id = format!("zones/{value}/instances/{}", resource.name);
                    }
                }
                Field::Status => {
                    let status = STATUSES
                        .into_iter()
                        .find(|status| status.as_str().eq_ignore_ascii_case(value.trim()))
                        .ok_or_else(|| {
                            invalid(format!(
                                "statuses are: {}",
                                STATUSES.map(InstanceStatus::as_str).join(", ")
                            ))
                        })?;
                    match resource.kind {
                        ObjectKind::InstanceTemplate if status != InstanceStatus::Available => {
                            return Err(invalid("a template's status is always `available`".to_owned()));
                        }
                        ObjectKind::Instance if status == InstanceStatus::Available => {
                            return Err(invalid(
                                "`available` is for templates; instances are provisioning, running, stopping, stopped or terminated".to_owned(),
                            ));
                        }
                        _ => resource.status = status,
                    }
                }
                Field::Label(key) => set_or_remove(&mut resource.spec.labels, key, value),
                Field::Metadata(key) => set_or_remove(&mut resource.spec.metadata, key, value),
            }
            if object.resource.id == old_id {
                txn.put(&object)?;
            } else {
                if let Some(existing) = txn.get(cloud, &object.resource.id)? {
                    return Err(SimError::NameTaken {
                        dir: self.inner.store.dir_display().to_owned(),
                        name: existing.resource.name,
                        zone: existing.resource.spec.zone,
                        id: existing.resource.id,
                    });
                }
                txn.change_id(&old_id, &object)?;
            }
            Ok(object.resource)
        })
    }

    /// Creates an instance fleet did not make, out of band: no labels, image `debian-12`, a
    /// 10 GB `pd-standard` (GCP) or `gp3` (AWS) disk, `Running`. The cloud is the zone's.
    ///
    /// # Errors
    /// [`SimError::UnknownZone`], [`SimError::UnknownMachineType`],
    /// [`SimError::MachineTypeNotOffered`], [`SimError::InvalidName`],
    /// [`SimError::NameTaken`] (GCE names are unique per zone).
    pub fn create_unmanaged(
        &self,
        name: &str,
        zone: &str,
        machine_type: &str,
    ) -> Result<LiveResource, SimError> {
        let Some((cloud, region)) = catalog::zone(zone) else {
            return Err(SimError::UnknownZone {
                zone: zone.to_owned(),
                known: format!("known zones are {}", validate::known_zones()),
            });
        };
        validate::check_placement(cloud, zone, machine_type)
            .map_err(|problem| problem.to_sim_error(cloud, name))?;
        validate::check_name(cloud, name).map_err(|problem| problem.to_sim_error(cloud, name))?;
        self.inner.store.write(|txn| {
            let seed = format!("unmanaged:{name}");
            let id = api::new_id(txn, cloud, ObjectKind::Instance, name, zone, &seed)?;
            if let Some(existing) =
                api::name_clash(txn, cloud, ObjectKind::Instance, &id, name, region)?
            {
                return Err(SimError::NameTaken {
                    dir: self.inner.store.dir_display().to_owned(),
                    name: existing.name,
                    zone: existing.spec.zone,
                    id: existing.id,
                });
            }
            let resource = LiveResource {
                creation_token: None,
                cloud,
                kind: ObjectKind::Instance,
                id,
                name: name.to_owned(),
                status: InstanceStatus::Running,
                spec: MachineSpec {
                    machine_type: machine_type.to_owned(),
                    zone: zone.to_owned(),
                    image: "debian-12".to_owned(),
                    disk_type: match cloud {
                        Cloud::Gcp => "pd-standard",
                        Cloud::Aws => "gp3",
                    }
                    .to_owned(),
                    disk_size_gb: 10,
                    labels: BTreeMap::new(),
                    metadata: BTreeMap::new(),
                    networking: Networking::default(),
                    identity: Default::default(),
                },
            };
            let born = txn.clock(cloud)?;
            txn.put(&StoredObject::new(resource.clone(), None, born))?;
            Ok(resource)
        })
    }

    fn set_run_state(
        &self,
        name: &str,
        status: impl Fn(Cloud) -> InstanceStatus,
    ) -> Result<LiveResource, SimError> {
        self.inner.store.write(|txn| {
            let mut object = self.resolve(txn, name)?;
            if object.resource.kind != ObjectKind::Instance {
                return Err(SimError::NotAnInstance {
                    dir: self.inner.store.dir_display().to_owned(),
                    name: object.resource.name,
                });
            }
            object.resource.status = status(object.resource.cloud);
            txn.put(&object)?;
            Ok(object.resource)
        })
    }

    /// The one object with this id, or else with this cloud name.
    fn resolve(&self, txn: &mut Txn<'_>, name: &str) -> Result<StoredObject, SimError> {
        let snapshot = txn.snapshot()?;
        let by_id: Vec<&StoredObject> = snapshot
            .objects()
            .filter(|object| object.resource.id == name)
            .collect();
        let matches = if by_id.is_empty() {
            // An EC2 instance going away keeps its name for a while; the one that is not
            // going away is the one meant.
            let named: Vec<&StoredObject> = snapshot
                .objects()
                .filter(|object| object.resource.name == name)
                .collect();
            let staying: Vec<&StoredObject> = named
                .iter()
                .copied()
                .filter(|object| object.deleted_at.is_none())
                .collect();
            if staying.is_empty() {
                named
            } else {
                staying
            }
        } else {
            by_id
        };
        match matches[..] {
            [] => Err(SimError::NotFound {
                dir: self.inner.store.dir_display().to_owned(),
                name: name.to_owned(),
            }),
            [object] => Ok(object.clone()),
            _ => {
                let mut ids: Vec<String> = matches
                    .iter()
                    .map(|object| format!("{} ({})", object.resource.id, object.resource.cloud))
                    .collect();
                ids.sort();
                Err(SimError::Ambiguous {
                    name: name.to_owned(),
                    count: ids.len(),
                    ids: ids.join(", "),
                })
            }
        }
    }
}

fn set_or_remove(map: &mut BTreeMap<String, String>, key: String, value: &str) {
    if value.is_empty() {
        map.remove(&key);
    } else {
        map.insert(key, value.to_owned());
    }
}
