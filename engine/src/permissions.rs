//! The least cloud permissions each fleet job needs, from one table per cloud.
//!
//! In: a fleet's [`Desired`] (its name, the `clouds:` it uses, the instance profiles and
//! service accounts its machines run as) and a [`Job`]. Out: an AWS IAM policy document
//! ([`aws_policy`]) and a GCP custom role with the bindings it needs beside it
//! ([`gcp_role`]), each with notes saying what a policy cannot express.
//!
//! The tables ([`AWS_CALLS`], [`GCP_CALLS`]) list every API operation fleet's providers and the
//! machines' watcher send, as the providers count them (`ec2:RunInstances`,
//! `compute.instances.bulkInsert`), with the jobs that send it and the IAM actions or
//! permissions that authorise it (AWS's Service Authorization Reference, including the
//! dependent actions a creation checks; the Compute Engine API reference and its "required
//! permissions" for creating a VM). A new call in a provider needs a row here; the tests
//! compare these lists with the calls the emulators saw.
//!
//! Secret Manager rows are the calls `providers::gcp::secrets` and the GCE watcher send;
//! the Secret Manager test server counts them like the GCE one counts Compute's.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::desired::Desired;
use crate::provider::{Cloud, ObjectKind};
use crate::render::delivery::{aws_partition, parameter_root, INSTANCE_TAG};

/// The identity a set of permissions is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Job {
    /// `fleet plan` in a merge-request pipeline: list calls only, no secret value.
    Plan,
    /// `fleet apply`: everything plan does, and the changes.
    Apply,
    /// The machines' own identity (EC2 instance profile, GCE service account): what the
    /// watcher in the bootstrap calls to fetch its config and secrets.
    Manager,
}

impl Job {
    /// Every job.
    pub const ALL: [Job; 3] = [Job::Plan, Job::Apply, Job::Manager];

    /// The name used on the command line and in the output.
    pub fn as_str(self) -> &'static str {
        match self {
            Job::Plan => "plan",
            Job::Apply => "apply",
            Job::Manager => "manager",
        }
    }
}

/// Where an AWS action is granted: one statement of the policy each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AwsScope {
    /// EC2 `Describe*` calls take no resource-level permission: any resource, in the
    /// fleet's region only (`aws:RequestedRegion`).
    Describe,
    /// Creations (`RunInstances`, `CreateLaunchTemplate`): authorised against the image,
    /// subnet, security groups and volumes too, so any resource, in the fleet's region.
    Launch,
    /// Tags a creation sets (`ec2:CreateTags` with `ec2:CreateAction`), on instances and
    /// launch templates, only with the fleet's own `fleet` tag.
    TagOnLaunch,
    /// Existing instances and launch templates carrying the fleet's `fleet` tag.
    FleetTagged,
    /// Parameters under the fleet's root, `/fleet/<fleet>/`.
    FleetParameters,
    /// Parameters under the fleet's root whose `fleet-instance` tag names the instance whose
    /// role signs the request (`${ec2:SourceInstanceARN}`): each machine its own only.
    OwnParameters,
    /// The roles of the fleet's instance profiles, passed to EC2 only; granted only when the
    /// fleet's instances name a profile.
    PassRole,
}

/// Where a GCP permission is granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GcpScope {
    /// The custom role, bound on the project.
    Project,
    /// The custom role, only when the fleet's instances name a service account.
    ProjectWithAccounts,
    /// On each service account the fleet's instances run as (not the project): acting as
    /// one is what lets a creation give a machine its identity.
    ServiceAccounts,
    /// The custom role, bound to each service account with a condition naming exactly the
    /// secrets of the machines that run as it.
    OwnSecrets,
}

/// Who sends a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Caller {
    /// fleet's provider, in `fleet plan` or `fleet apply`.
    Provider,
    /// The watcher on the machine, with the machine's own identity.
    Watcher,
}

/// One AWS API operation and what authorises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwsCall {
    /// The operation, as the provider counts it.
    pub operation: &'static str,
    /// Who sends it.
    pub caller: Caller,
    /// The jobs that send it.
    pub jobs: &'static [Job],
    /// The IAM actions it needs (its own and the dependent ones), each with its scope.
    pub actions: &'static [(&'static str, AwsScope)],
}

/// One GCP API method and what authorises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcpCall {
    /// The method, as the provider counts it.
    pub operation: &'static str,
    /// Who sends it.
    pub caller: Caller,
    /// The jobs that send it.
    pub jobs: &'static [Job],
    /// The permissions it needs, each with its scope.
    pub permissions: &'static [(&'static str, GcpScope)],
}

const READS: &[Job] = &[Job::Plan, Job::Apply];
const CHANGES: &[Job] = &[Job::Apply];
const MACHINE: &[Job] = &[Job::Manager];

/// Every AWS call fleet and its machines send.
pub const AWS_CALLS: &[AwsCall] = &[
    // Discovery (plan, and apply's own plan and verification). An EC2 operation is
    // authorised by the action of its own name.
    aws(
        "ec2:DescribeInstances",
        READS,
        &[("ec2:DescribeInstances", AwsScope::Describe)],
    ),
    aws(
        "ec2:DescribeVolumes",
        READS,
        &[("ec2:DescribeVolumes", AwsScope::Describe)],
    ),
    aws(
        "ec2:DescribeLaunchTemplates",
        READS,
        &[("ec2:DescribeLaunchTemplates", AwsScope::Describe)],
    ),
    aws(
        "ec2:DescribeLaunchTemplateVersions",
        READS,
        &[("ec2:DescribeLaunchTemplateVersions", AwsScope::Describe)],
    ),
    aws(
        "ec2:DescribeTags",
        READS,
        &[("ec2:DescribeTags", AwsScope::Describe)],
    ),
    // Filtered to `String` and never decrypted; the plan policy denies `kms:Decrypt`.
    aws(
        "ssm:GetParametersByPath",
        READS,
        &[("ssm:GetParametersByPath", AwsScope::FleetParameters)],
    ),
    // Creation: the image's root device, then the launch, whose tags go on with it
    // (`TagSpecifications`) and whose instance profile passes its role.
    aws(
        "ec2:DescribeImages",
        CHANGES,
        &[("ec2:DescribeImages", AwsScope::Describe)],
    ),
    aws(
        "ec2:RunInstances",
        CHANGES,
        &[
            ("ec2:RunInstances", AwsScope::Launch),
            ("ec2:CreateTags", AwsScope::TagOnLaunch),
            ("iam:PassRole", AwsScope::PassRole),
        ],
    ),
    aws(
        "ec2:CreateLaunchTemplate",
        CHANGES,
        &[
            ("ec2:CreateLaunchTemplate", AwsScope::Launch),
            ("ec2:CreateTags", AwsScope::TagOnLaunch),
        ],
    ),
    aws(
        "ec2:CreateLaunchTemplateVersion",
        CHANGES,
        &[("ec2:CreateLaunchTemplateVersion", AwsScope::FleetTagged)],
    ),
    aws(
        "ec2:ModifyLaunchTemplate",
        CHANGES,
        &[("ec2:ModifyLaunchTemplate", AwsScope::FleetTagged)],
    ),
    // Tags of pool members (their names), of updated instances, of template version stamps.
    aws(
        "ec2:CreateTags",
        CHANGES,
        &[("ec2:CreateTags", AwsScope::FleetTagged)],
    ),
    aws(
        "ec2:DeleteTags",
        CHANGES,
        &[("ec2:DeleteTags", AwsScope::FleetTagged)],
    ),
    // Deletion.
    aws(
        "ec2:TerminateInstances",
        CHANGES,
        &[("ec2:TerminateInstances", AwsScope::FleetTagged)],
    ),
    aws(
        "ec2:DeleteLaunchTemplateVersions",
        CHANGES,
        &[("ec2:DeleteLaunchTemplateVersions", AwsScope::FleetTagged)],
    ),
    aws(
        "ec2:DeleteLaunchTemplate",
        CHANGES,
        &[("ec2:DeleteLaunchTemplate", AwsScope::FleetTagged)],
    ),
    // Each instance's files and secrets (`SecureString` under the AWS managed key `aws/ssm`,
    // whose key policy lets the account's principals encrypt through SSM).
    aws(
        "ssm:PutParameter",
        CHANGES,
        &[("ssm:PutParameter", AwsScope::FleetParameters)],
    ),
    aws(
        "ssm:AddTagsToResource",
        CHANGES,
        &[("ssm:AddTagsToResource", AwsScope::FleetParameters)],
    ),
    aws(
        "ssm:DeleteParameters",
        CHANGES,
        &[("ssm:DeleteParameters", AwsScope::FleetParameters)],
    ),
    // The watcher: its own parameters by name, decrypted. `GetParameters`, whose
    // authorisation is per parameter and takes `aws:ResourceTag/...` (the tag is what holds a
    // machine to its own parameters); never `GetParametersByPath`, authorised on the path
    // and returning every level below it, whatever is allowed or denied by name.
    AwsCall {
        operation: "ssm:GetParameters",
        caller: Caller::Watcher,
        jobs: MACHINE,
        actions: &[("ssm:GetParameters", AwsScope::OwnParameters)],
    },
];

const fn aws(
    operation: &'static str,
    jobs: &'static [Job],
    actions: &'static [(&'static str, AwsScope)],
) -> AwsCall {
    AwsCall {
        operation,
        caller: Caller::Provider,
        jobs,
        actions,
    }
}

/// What creating a VM needs beside `compute.instances.create`: its new boot disk, the
/// default network's subnetwork, the metadata and labels it is created with, and the service
/// account it runs as (when the fleet names one).
const GCE_CREATE_VM: &[(&str, GcpScope)] = &[
    ("compute.instances.create", GcpScope::Project),
    ("compute.disks.create", GcpScope::Project),
    ("compute.subnetworks.use", GcpScope::Project),
    ("compute.instances.setMetadata", GcpScope::Project),
    ("compute.instances.setLabels", GcpScope::Project),
    (
        "compute.instances.setServiceAccount",
        GcpScope::ProjectWithAccounts,
    ),
    ("iam.serviceAccounts.actAs", GcpScope::ServiceAccounts),
];

/// Every GCP call fleet and its machines send.
pub const GCP_CALLS: &[GcpCall] = &[
    gcp(
        "compute.instances.aggregatedList",
        READS,
        &[("compute.instances.list", GcpScope::Project)],
    ),
    gcp(
        "compute.instanceTemplates.list",
        READS,
        &[("compute.instanceTemplates.list", GcpScope::Project)],
    ),
    // A stale fingerprint is read again, and a replayed insert looks for its VM.
    gcp(
        "compute.instances.get",
        CHANGES,
        &[("compute.instances.get", GcpScope::Project)],
    ),
    gcp("compute.instances.insert", CHANGES, GCE_CREATE_VM),
    gcp("compute.instances.bulkInsert", CHANGES, GCE_CREATE_VM),
    gcp(
        "compute.instances.setLabels",
        CHANGES,
        &[("compute.instances.setLabels", GcpScope::Project)],
    ),
    gcp(
        "compute.instances.setMetadata",
        CHANGES,
        &[("compute.instances.setMetadata", GcpScope::Project)],
    ),
    gcp(
        "compute.instances.delete",
        CHANGES,
        &[("compute.instances.delete", GcpScope::Project)],
    ),
    gcp(
        "compute.instanceTemplates.insert",
        CHANGES,
        &[("compute.instanceTemplates.create", GcpScope::Project)],
    ),
    gcp(
        "compute.instanceTemplates.delete",
        CHANGES,
        &[("compute.instanceTemplates.delete", GcpScope::Project)],
    ),
    gcp(
        "compute.zoneOperations.wait",
        CHANGES,
        &[("compute.zoneOperations.get", GcpScope::Project)],
    ),
    gcp(
        "compute.zoneOperations.get",
        CHANGES,
        &[("compute.zoneOperations.get", GcpScope::Project)],
    ),
    gcp(
        "compute.globalOperations.wait",
        CHANGES,
        &[("compute.globalOperations.get", GcpScope::Project)],
    ),
    gcp(
        "compute.globalOperations.get",
        CHANGES,
        &[("compute.globalOperations.get", GcpScope::Project)],
    ),
    // Secret Manager: a plan reads none (the digests it compares are in the machine's
    // metadata); an apply creates, adds a version to, relabels and deletes the fleet's
    // secrets; the machine reads its own.
    secret_manager(
        "secretmanager.secrets.create",
        Caller::Provider,
        CHANGES,
        &[("secretmanager.secrets.create", GcpScope::Project)],
    ),
    secret_manager(
        "secretmanager.secrets.addVersion",
        Caller::Provider,
        CHANGES,
        &[("secretmanager.versions.add", GcpScope::Project)],
    ),
    secret_manager(
        "secretmanager.secrets.patch",
        Caller::Provider,
        CHANGES,
        &[("secretmanager.secrets.update", GcpScope::Project)],
    ),
    secret_manager(
        "secretmanager.secrets.delete",
        Caller::Provider,
        CHANGES,
        &[("secretmanager.secrets.delete", GcpScope::Project)],
    ),
    secret_manager(
        "secretmanager.versions.access",
        Caller::Watcher,
        MACHINE,
        &[("secretmanager.versions.access", GcpScope::OwnSecrets)],
    ),
];

const fn gcp(
    operation: &'static str,
    jobs: &'static [Job],
    permissions: &'static [(&'static str, GcpScope)],
) -> GcpCall {
    GcpCall {
        operation,
        caller: Caller::Provider,
        jobs,
        permissions,
    }
}

const fn secret_manager(
    operation: &'static str,
    caller: Caller,
    jobs: &'static [Job],
    permissions: &'static [(&'static str, GcpScope)],
) -> GcpCall {
    GcpCall {
        operation,
        caller,
        jobs,
        permissions,
    }
}

/// An AWS policy for one job of one fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsPolicy {
    /// The job.
    pub job: Job,
    /// The IAM policy document (`aws iam create-policy --policy-document`).
    pub document: Value,
    /// What the document cannot say, in sentences.
    pub notes: Vec<String>,
}

/// A GCP custom role for one job of one fleet, with what is bound beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct GcpRole {
    /// The job.
    pub job: Job,
    /// The project the role is made in.
    pub project: String,
    /// The role id (`gcloud iam roles create ROLE_ID --project P --file F`).
    pub role_id: String,
    /// Its title.
    pub title: String,
    /// Its description.
    pub description: String,
    /// Its permissions, sorted, bound on the project.
    pub permissions: Vec<String>,
    /// Permissions granted on each service account the fleet's machines run as, by email.
    pub on_service_accounts: BTreeMap<String, Vec<String>>,
    /// The role's bindings that need a condition (`--condition`), by member
    /// (`serviceAccount:EMAIL`): (title, CEL expression).
    pub conditions: BTreeMap<String, (String, String)>,
    /// What the role cannot say, in sentences.
    pub notes: Vec<String>,
}

/// The instance profiles fleet's AWS instances name (templates' profiles are passed by
/// whoever launches from them).
fn instance_profiles(desired: &Desired) -> BTreeSet<String> {
    desired
        .resources
        .values()
        .filter(|r| r.cloud == Cloud::Aws && r.object == ObjectKind::Instance)
        .filter_map(|r| r.spec.identity.instance_profile.clone())
        .collect()
}

/// The service accounts fleet's GCE instances run as.
fn service_accounts(desired: &Desired) -> BTreeSet<String> {
    desired
        .resources
        .values()
        .filter(|r| r.cloud == Cloud::Gcp && r.object == ObjectKind::Instance)
        .filter_map(|r| r.spec.identity.service_account.clone())
        .collect()
}

/// The role an instance profile holds, as an ARN pattern: the profile's own name and path,
/// as the console and most tools make them (a profile holds one role, whose name the fleet
/// file does not give).
pub fn role_of_profile(profile: &str) -> String {
    match profile.strip_prefix("arn:") {
        Some(rest) => {
            let parts: Vec<&str> = rest.splitn(5, ':').collect();
            match parts.as_slice() {
                [partition, "iam", "", account, resource] => {
                    let path = resource
                        .strip_prefix("instance-profile/")
                        .unwrap_or(resource);
                    format!("arn:{partition}:iam::{account}:role/{path}")
                }
                _ => format!("arn:aws:iam::*:role/{profile}"),
            }
        }
        None => format!("arn:aws:iam::*:role/{profile}"),
    }
}

/// The IAM policy the job needs for the fleet's AWS resources; `None` when the fleet file
/// has no `clouds.aws`.
pub fn aws_policy(desired: &Desired, job: Job) -> Option<AwsPolicy> {
    let region = desired.clouds.get(&Cloud::Aws)?.region.clone();
    let partition = aws_partition(&region);
    let fleet = desired.fleet.as_str();
    let profiles = instance_profiles(desired);
    let mut by_scope: BTreeMap<AwsScope, BTreeSet<&str>> = BTreeMap::new();
    for call in AWS_CALLS.iter().filter(|c| c.jobs.contains(&job)) {
        for (action, scope) in call.actions {
            if *scope == AwsScope::PassRole && profiles.is_empty() {
                continue;
            }
            by_scope.entry(*scope).or_default().insert(action);
        }
    }
    // `ec2:CreateAction` names the creations whose tags are allowed.
    let creations: Vec<&str> = AWS_CALLS
        .iter()
        .filter(|c| c.jobs.contains(&job))
        .filter(|c| {
            c.actions
                .iter()
                .any(|(_, scope)| *scope == AwsScope::TagOnLaunch)
        })
        .filter_map(|c| c.operation.strip_prefix("ec2:"))
        .collect::<BTreeSet<&str>>()
        .into_iter()
        .collect();
    let in_region = json!({ "StringEquals": { "aws:RequestedRegion": region } });
    let owned = [
        format!("arn:{partition}:ec2:{region}:*:instance/*"),
        format!("arn:{partition}:ec2:{region}:*:launch-template/*"),
    ];
    let parameters = format!(
        "arn:{partition}:ssm:{region}:*:parameter{}*",
        parameter_root(fleet)
    );
    let mut statements = Vec::new();
    for (scope, actions) in &by_scope {
        let actions: Vec<&str> = actions.iter().copied().collect();
        let statement = match scope {
            AwsScope::Describe => json!({
                "Sid": "DescribeInTheFleetsRegion",
                "Effect": "Allow",
                "Action": actions,
                "Resource": "*",
                "Condition": in_region,
            }),
            AwsScope::Launch => json!({
                "Sid": "LaunchInTheFleetsRegion",
                "Effect": "Allow",
                "Action": actions,
                "Resource": "*",
                "Condition": in_region,
            }),
            AwsScope::TagOnLaunch => json!({
                "Sid": "TagWhatALaunchMakesAsTheFleets",
                "Effect": "Allow",
                "Action": actions,
                "Resource": owned,
                "Condition": {
                    "StringEquals": {
                        "ec2:CreateAction": creations,
                        "aws:RequestTag/fleet": fleet,
                    }
                },
            }),
            AwsScope::FleetTagged => json!({
                "Sid": "ChangeOnlyTheFleetsOwnObjects",
                "Effect": "Allow",
                "Action": actions,
                "Resource": owned,
                "Condition": { "StringEquals": { "aws:ResourceTag/fleet": fleet } },
            }),
            AwsScope::FleetParameters => json!({
                "Sid": "TheFleetsParameters",
                "Effect": "Allow",
                "Action": actions,
                "Resource": parameters,
            }),
            AwsScope::OwnParameters => json!({
                "Sid": "ReadOnlyTheCallingInstancesOwnParameters",
                "Effect": "Allow",
                "Action": actions,
                "Resource": parameters,
                "Condition": {
                    "StringEquals": {
                        format!("aws:ResourceTag/{INSTANCE_TAG}"): "${ec2:SourceInstanceARN}",
                    }
                },
            }),
            AwsScope::PassRole => json!({
                "Sid": "PassTheInstanceProfilesRolesToEc2",
                "Effect": "Allow",
                "Action": actions,
                "Resource": profiles.iter().map(|p| role_of_profile(p)).collect::<BTreeSet<_>>(),
                "Condition": { "StringEquals": { "iam:PassedToService": "ec2.amazonaws.com" } },
            }),
        };
        statements.push(statement);
    }
    let mut notes = Vec::new();
    match job {
        Job::Plan => {
            // The AWS managed key `aws/ssm` lets every principal of the account decrypt
            // through SSM, so only an explicit deny keeps a plan from reading secret values.
            statements.push(json!({
                "Sid": "NeverDecryptASecret",
                "Effect": "Deny",
                "Action": ["kms:Decrypt"],
                "Resource": "*",
            }));
            notes.push(
                "A plan reads only String parameters; kms:Decrypt is denied because the AWS \
                 managed key aws/ssm lets every principal of the account decrypt SecureString \
                 values through SSM."
                    .to_string(),
            );
        }
        Job::Apply => {
            // Apply writes secrets (encrypting through SSM) and never reads one back.
            statements.push(json!({
                "Sid": "NeverDecryptASecret",
                "Effect": "Deny",
                "Action": ["kms:Decrypt"],
                "Resource": "*",
            }));
            notes.push(
                "SecureString parameters use the AWS managed key aws/ssm, whose key policy \
                 lets the account's principals encrypt through SSM: no kms statement is needed \
                 to write them, and kms:Decrypt is denied, as apply reads no secret back."
                    .to_string(),
            );
            if !profiles.is_empty() {
                notes.push(
                    "iam:PassRole names each instance profile's role by the profile's own path \
                     and name, as the console makes them; change it if a profile holds a role \
                     named otherwise."
                        .to_string(),
                );
            }
        }
        Job::Manager => {
            // Explicit denies hold even beside a broader grant on the same role (a managed
            // policy such as AmazonSSMManagedInstanceCore allows ssm:GetParameters on `*`).
            let root = parameter_root(fleet);
            let root = root.trim_end_matches('/');
            let mut paths = vec![format!("arn:{partition}:ssm:{region}:*:parameter/")];
            let mut path = String::new();
            for part in root.trim_start_matches('/').split('/') {
                path.push('/');
                path.push_str(part);
                paths.push(format!("arn:{partition}:ssm:{region}:*:parameter{path}"));
            }
            paths.push(parameters.clone());
            statements.push(json!({
                "Sid": "NeverAnotherInstancesParameters",
                "Effect": "Deny",
                "Action": ["ssm:GetParameters"],
                "Resource": parameters,
                "Condition": {
                    "StringNotEquals": {
                        format!("aws:ResourceTag/{INSTANCE_TAG}"): "${ec2:SourceInstanceARN}",
                    }
                },
            }));
            statements.push(json!({
                "Sid": "NeverTheFleetsParametersOtherwise",
                "Effect": "Deny",
                "Action": [
                    "ssm:AddTagsToResource",
                    "ssm:DeleteParameter",
                    "ssm:DeleteParameters",
                    "ssm:GetParameter",
                    "ssm:GetParameterHistory",
                    "ssm:GetParametersByPath",
                    "ssm:LabelParameterVersion",
                    "ssm:PutParameter",
                    "ssm:RemoveTagsFromResource",
                    "ssm:UnlabelParameterVersion",
                ],
                "Resource": paths,
            }));
            notes.push(format!(
                "For the fleet's instance profiles. The watcher reads its own parameters under \
                 {}<instance id>/ decrypted; the AWS managed key aws/ssm grants kms:Decrypt \
                 through SSM to every principal of the account, so no kms statement is needed.",
                parameter_root(fleet)
            ));
            notes.push(format!(
                "Each machine reads only its own parameters: apply tags every parameter it \
                 writes with {INSTANCE_TAG} = the ARN of the one instance it is for, and this \
                 policy allows a read only where that tag equals ${{ec2:SourceInstanceARN}}, \
                 the instance whose role signed the request. A parameter without the tag is \
                 readable by no machine; only the apply job may tag them."
            ));
            notes.push(format!(
                "The denies keep that true beside any other grant on these roles (a managed \
                 policy such as AmazonSSMManagedInstanceCore, or this policy's earlier \
                 fleet-wide version): no read of another instance's parameters, and no listing \
                 (ssm:GetParametersByPath, which returns every level below a path), single \
                 read, history, write or tagging of {root}/* or the paths above it. Detach the \
                 earlier version once every machine has been replaced."
            ));
            notes.push(
                "Launch templates' instance profiles are passed by whatever launches from them \
                 (the runners' autoscaler plugins), which this policy does not cover yet."
                    .to_string(),
            );
        }
    }
    Some(AwsPolicy {
        job,
        document: json!({ "Version": "2012-10-17", "Statement": statements }),
        notes,
    })
}

/// The custom role the job needs for the fleet's GCP resources; `None` when the fleet file
/// has no `clouds.gcp`.
pub fn gcp_role(desired: &Desired, job: Job) -> Option<GcpRole> {
    let target = desired.clouds.get(&Cloud::Gcp)?;
    let project = target.project.clone().unwrap_or_default();
    let fleet = desired.fleet.as_str();
    let accounts = service_accounts(desired);
    let mut permissions = BTreeSet::new();
    let mut on_accounts = BTreeSet::new();
    let mut own_secrets = false;
    for call in GCP_CALLS.iter().filter(|c| c.jobs.contains(&job)) {
        for (permission, scope) in call.permissions {
            match scope {
                GcpScope::Project => {
                    permissions.insert(*permission);
                }
                GcpScope::ProjectWithAccounts if !accounts.is_empty() => {
                    permissions.insert(*permission);
                }
                GcpScope::ProjectWithAccounts => {}
                GcpScope::ServiceAccounts => {
                    if !accounts.is_empty() {
                        on_accounts.insert(*permission);
                    }
                }
                GcpScope::OwnSecrets => {
                    own_secrets = true;
                    permissions.insert(*permission);
                }
            }
        }
    }
    let on_service_accounts: BTreeMap<String, Vec<String>> = accounts
        .iter()
        .filter(|_| !on_accounts.is_empty())
        .map(|account| {
            (
                account_email(account),
                on_accounts.iter().map(|p| p.to_string()).collect(),
            )
        })
        .collect();
    let conditions = if own_secrets {
        secrets_by_account(desired)
            .into_iter()
            .map(|(account, resources)| {
                let expression = resources
                    .iter()
                    .map(|resource| format!("resource.name == \"{resource}\""))
                    .collect::<Vec<_>>()
                    .join(" || ");
                (
                    format!("serviceAccount:{}", account_email(&account)),
                    (
                        format!("fleet {fleet}: the secrets of its machines"),
                        expression,
                    ),
                )
            })
            .collect()
    } else {
        BTreeMap::new()
    };
    let mut notes = Vec::new();
    if !on_service_accounts.is_empty() {
        notes.push(
            "iam.serviceAccounts.actAs is granted on each service account the fleet's machines \
             run as (roles/iam.serviceAccountUser on the account), not on the project."
                .to_string(),
        );
    }
    match job {
        Job::Plan => notes.push(
            "A plan lists instances and templates by label; it reads no secret value.".to_string(),
        ),
        Job::Apply => {}
        Job::Manager => {
            notes.push(
                "For the service accounts the fleet's machines run as. The watcher reads its \
                 config from the metadata server, which needs no permission."
                    .to_string(),
            );
            notes.push(
                "Secret Manager conditions see a secret by project number: put the project's \
                 number for PROJECT_NUMBER in each condition."
                    .to_string(),
            );
            notes.push(
                "Each account's condition names exactly the secrets of the machines that run as \
                 it, so a machine with an account of its own reads its own secrets and nothing \
                 else; machines that share an account share what it may read. Secret Manager \
                 is called with the VM's token, so its access scopes must include \
                 cloud-platform."
                    .to_string(),
            );
            for (account, machines) in machines_sharing_an_account(desired) {
                notes.push(format!(
                    "{} is the identity of {} machines with secrets ({}): each can read the \
                     others' secrets. Give each its own service account to hold it to its own.",
                    account_email(&account),
                    machines.len(),
                    machines.join(", ")
                ));
            }
        }
    }
    let role_id = format!("fleet_{}_{}", fleet.replace('-', "_"), job.as_str());
    Some(GcpRole {
        job,
        project,
        role_id,
        title: format!("fleet {fleet} {}", job.as_str()),
        description: format!(
            "What fleet's {} needs for fleet {fleet} (fleet permissions).",
            match job {
                Job::Plan => "plan job",
                Job::Apply => "apply job",
                Job::Manager => "machines' own identity",
            }
        ),
        permissions: permissions.into_iter().map(str::to_string).collect(),
        on_service_accounts,
        conditions,
        notes,
    })
}

/// The email of a fleet file's `service_account` (`default` is the project's Compute Engine
/// account).
fn account_email(account: &str) -> String {
    if account == "default" {
        "PROJECT_NUMBER-compute@developer.gserviceaccount.com".to_string()
    } else {
        account.to_string()
    }
}

/// Each GCE machine that runs as a service account, with the account.
fn gce_machines_by_account(
    desired: &Desired,
) -> impl Iterator<Item = (&String, &crate::desired::DesiredResource)> {
    desired
        .resources
        .values()
        .filter(|r| r.cloud == Cloud::Gcp && r.object == ObjectKind::Instance)
        .filter_map(|r| r.spec.identity.service_account.as_ref().map(|a| (a, r)))
}

/// The service accounts that more than one GCE machine with secrets runs as, with those
/// machines' names, sorted.
fn machines_sharing_an_account(desired: &Desired) -> BTreeMap<String, Vec<String>> {
    let mut by_account: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (account, resource) in gce_machines_by_account(desired) {
        if crate::secrets::references(resource.spec.metadata.values()).is_empty() {
            continue;
        }
        by_account
            .entry(account.clone())
            .or_default()
            .insert(resource.cloud_name.clone());
    }
    by_account
        .into_iter()
        .filter(|(_, machines)| machines.len() > 1)
        .map(|(account, machines)| (account, machines.into_iter().collect()))
        .collect()
}

/// The Secret Manager resource names of the secrets each service account's GCE machines
/// read, as apply names them (`render::delivery::gce_secret_id` of the machine's GCE id),
/// under the project number IAM conditions see.
fn secrets_by_account(desired: &Desired) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (account, resource) in gce_machines_by_account(desired) {
        let machine = format!(
            "zones/{}/instances/{}",
            resource.spec.zone, resource.cloud_name
        );
        for name in crate::secrets::references(resource.spec.metadata.values()) {
            let id = crate::render::delivery::gce_secret_id(&desired.fleet, &machine, &name);
            out.entry(account.clone())
                .or_default()
                .insert(format!("projects/PROJECT_NUMBER/secrets/{id}"));
        }
    }
    out
}

impl AwsPolicy {
    /// Every action the policy allows, sorted.
    pub fn allowed_actions(&self) -> BTreeSet<String> {
        self.document["Statement"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["Effect"] == "Allow")
            .flat_map(|s| s["Action"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect()
    }
}

impl GcpRole {
    /// The role as the YAML file `gcloud iam roles create --file` reads, with the bindings
    /// it needs and the notes as comments.
    pub fn to_yaml(&self) -> String {
        let mut text = String::new();
        text.push_str(&format!(
            "# gcloud iam roles create {} --project {} --file FILE\n",
            self.role_id, self.project
        ));
        for note in &self.notes {
            text.push_str(&format!("# {note}\n"));
        }
        for (member, (title, expression)) in &self.conditions {
            text.push_str(&format!(
                "# Bind it to {member} with --condition='expression={expression},title={title}'\n"
            ));
        }
        for (account, permissions) in &self.on_service_accounts {
            text.push_str(&format!(
                "# On the service account {account}: {}\n",
                permissions.join(", ")
            ));
        }
        text.push_str(&format!("title: {}\n", yaml_string(&self.title)));
        text.push_str(&format!(
            "description: {}\n",
            yaml_string(&self.description)
        ));
        text.push_str("stage: GA\n");
        text.push_str("includedPermissions:\n");
        for permission in &self.permissions {
            text.push_str(&format!("- {permission}\n"));
        }
        text
    }

    /// The role and its bindings as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "project": self.project,
            "role_id": self.role_id,
            "role": {
                "title": self.title,
                "description": self.description,
                "stage": "GA",
                "includedPermissions": self.permissions,
            },
            "on_service_accounts": self.on_service_accounts,
            "conditions": self.conditions.iter().map(|(member, (title, expression))| {
                (member.clone(), json!({ "title": title, "expression": expression }))
            }).collect::<serde_json::Map<String, Value>>(),
            "notes": self.notes,
        })
    }
}

/// A double-quoted YAML scalar.
fn yaml_string(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::compile;

    fn desired(text: &str) -> Desired {
        compile("perms.yaml", text).unwrap_or_else(|e| panic!("{:?}", miette::Report::new(e)))
    }

    const BOTH: &str = "fleet: perms
clouds:
  aws: { region: eu-central-1 }
  gcp: { project: ci-project, region: us-east1 }
defaults:
  aws: { zone: eu-central-1a, image: ami-0c9f35b1b63e7d2a4, disk: { type: gp3, size_gb: 50 } }
  gcp: { image: projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts }
managers:
  perms-aws-{n}:
    matrix: { count: 1 }
    cloud: aws
    machine_type: m6g.large
    instance_profile: ci-runner
    runner: { version: \"16.11.1\" }
  perms-gcp-{n}:
    matrix: { count: 1 }
    cloud: gcp
    zone: us-east1-c
    machine_type: n1-standard-2
    service_account: ci-runner@ci-project.iam.gserviceaccount.com
    runner: { version: \"16.11.1\" }
";

    #[test]
    fn machines_that_share_a_service_account_are_named_in_the_managers_notes() {
        let shared = "fleet: shares
clouds:
  gcp: { project: ci-project, region: us-east1 }
defaults:
  gcp: { image: projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts }
managers:
  shared-{n}:
    matrix: { count: 2 }
    cloud: gcp
    zone: us-east1-c
    machine_type: n1-standard-2
    service_account: shared-runner@ci-project.iam.gserviceaccount.com
    runner: { version: \"16.11.1\" }
    runners:
      - { name: \"shared-{n}\", executor: shell, url: https://gitlab.example.com, token: \"${secret:SHARED_TOKEN}\" }
  alone-{n}:
    matrix: { count: 1 }
    cloud: gcp
    zone: us-east1-c
    machine_type: n1-standard-2
    service_account: alone-runner@ci-project.iam.gserviceaccount.com
    runner: { version: \"16.11.1\" }
    runners:
      - { name: \"alone-{n}\", executor: shell, url: https://gitlab.example.com, token: \"${secret:ALONE_TOKEN}\" }
";
        let notes = gcp_role(&desired(shared), Job::Manager).unwrap().notes;
        let sharing: Vec<&String> = notes
            .iter()
            .filter(|n| n.contains("each can read"))
            .collect();
        assert_eq!(sharing.len(), 1, "{notes:#?}");
        assert!(
            sharing[0].starts_with(
                "shared-runner@ci-project.iam.gserviceaccount.com is the identity of 2 machines with \
                 secrets (shared-1, shared-2)"
            ),
            "{}",
            sharing[0]
        );
        assert!(
            !notes.iter().any(|n| n.contains("alone-runner@")),
            "{notes:#?}"
        );
    }

    #[test]
    fn every_plan_action_only_reads() {
        let policy = aws_policy(&desired(BOTH), Job::Plan).unwrap();
        for action in policy.allowed_actions() {
            let verb = action.split_once(':').map_or("", |(_, verb)| verb);
            assert!(
                ["Describe", "List", "Get"]
                    .iter()
                    .any(|prefix| verb.starts_with(prefix)),
                "{action}"
            );
        }
        let denied: Vec<&Value> = policy.document["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["Effect"] == "Deny")
            .collect();
        assert_eq!(denied.len(), 1);
        assert_eq!(denied[0]["Action"], json!(["kms:Decrypt"]));
        let role = gcp_role(&desired(BOTH), Job::Plan).unwrap();
        for permission in &role.permissions {
            let verb = permission.rsplit('.').next().unwrap();
            assert!(["list", "get"].contains(&verb), "{permission}");
        }
    }

    #[test]
    fn resources_are_the_fleets_own() {
        let policy = aws_policy(&desired(BOTH), Job::Apply).unwrap();
        let text = policy.document.to_string();
        assert!(text.contains("arn:aws:ssm:eu-central-1:*:parameter/fleet/perms/*"));
        assert!(text.contains("\"aws:ResourceTag/fleet\":\"perms\""));
        assert!(text.contains("arn:aws:iam::*:role/ci-runner"));
        assert!(text.contains("\"ec2:CreateAction\":[\"CreateLaunchTemplate\",\"RunInstances\"]"));
        let manager = aws_policy(&desired(BOTH), Job::Manager).unwrap();
        assert_eq!(
            manager.allowed_actions(),
            BTreeSet::from(["ssm:GetParameters".to_string()])
        );
        // Every read is held to the calling instance's own parameters by their tag.
        let reads: Vec<&Value> = manager.document["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["Effect"] == "Allow")
            .collect();
        assert_eq!(reads.len(), 1);
        assert_eq!(
            reads[0]["Condition"],
            json!({"StringEquals": {"aws:ResourceTag/fleet-instance": "${ec2:SourceInstanceARN}"}})
        );
        let role = gcp_role(&desired(BOTH), Job::Apply).unwrap();
        assert!(role
            .permissions
            .contains(&"compute.instances.setServiceAccount".to_string()));
        assert_eq!(
            role.on_service_accounts
                .get("ci-runner@ci-project.iam.gserviceaccount.com"),
            Some(&vec!["iam.serviceAccounts.actAs".to_string()])
        );
        let manager = gcp_role(&desired(BOTH), Job::Manager).unwrap();
        assert_eq!(manager.permissions, ["secretmanager.versions.access"]);
        // Each account's binding names exactly its machines' secrets.
        for (member, (_, expression)) in &manager.conditions {
            assert!(member.starts_with("serviceAccount:"), "{member}");
            assert!(expression.contains(&format!(
                "resource.name == \"projects/PROJECT_NUMBER/secrets/{}",
                crate::render::delivery::gce_secret_prefix("perms")
            )));
        }
    }

    #[test]
    fn role_arns_follow_the_profiles_path() {
        assert_eq!(
            role_of_profile("ci-runner"),
            "arn:aws:iam::*:role/ci-runner"
        );
        assert_eq!(
            role_of_profile("arn:aws:iam::123456789012:instance-profile/ci/ci-runner"),
            "arn:aws:iam::123456789012:role/ci/ci-runner"
        );
    }

    #[test]
    fn without_identities_nothing_is_passed_or_acted_as() {
        let plain = BOTH
            .replace("    instance_profile: ci-runner\n", "")
            .replace(
                "    service_account: ci-runner@ci-project.iam.gserviceaccount.com\n",
                "",
            );
        let policy = aws_policy(&desired(&plain), Job::Apply).unwrap();
        assert!(!policy.allowed_actions().contains("iam:PassRole"));
        let role = gcp_role(&desired(&plain), Job::Apply).unwrap();
        assert!(role.on_service_accounts.is_empty());
        assert!(!role
            .permissions
            .contains(&"compute.instances.setServiceAccount".to_string()));
    }
}
