//! What a machine reaches and acts as: networking and identity.
//!
//! In: a declaration's `network`, `subnet`, `security_groups`, `instance_profile`,
//! `service_account` and `scopes` (or the cloud's `defaults`), its cloud, project and region.
//! Out: the [`Networking`] and [`Identity`] sent (a shared-VPC path into the fleet's own
//! project as the bare name, a scope's short name as its URL); problems: keys of the other
//! cloud (with the key this one uses), EC2 ids and GCE names of the wrong shape, a subnetwork
//! of another region, scopes without a service account, and `spec::identity`'s refusals.

use std::collections::BTreeMap;

use miette::SourceSpan;

use super::names::valid_cloud_name;
use super::Expander;
use crate::provider::{Cloud, Identity, Networking};
use crate::spec::diagnostic::{quoted, ProblemKind};
use crate::spec::identity;
use crate::spec::model::{MachineDefaults, ResourceDecl, Spanned};

impl Expander<'_> {
    /// `network`, `subnet` and `security_groups`, from the resource or the cloud's defaults,
    /// checked against what the cloud has.
    pub(super) fn networking(
        &mut self,
        decl: &ResourceDecl,
        defaults: &MachineDefaults,
        (cloud, project, region): (Cloud, Option<&str>, Option<&str>),
        vars: &BTreeMap<String, String>,
    ) -> Networking {
        let network = decl.network.as_ref().or(defaults.network.as_ref());
        let subnet = decl.subnet.as_ref().or(defaults.subnet.as_ref());
        let groups = decl
            .security_groups
            .as_ref()
            .or(defaults.security_groups.as_ref());
        let mut out = Networking::default();
        if let Some(network) = network {
            let value = self.interpolate(network, vars);
            match cloud {
                Cloud::Aws => {
                    let problem = self
                        .new_problem(ProblemKind::InvalidValue, network.span, "EC2 has no `network`", "not an aws key")
                        .with_help("on EC2 the subnet decides the VPC: remove `network` and set `subnet: subnet-…`");
                    self.problem(problem);
                }
                Cloud::Gcp => {
                    let place = GcePlace {
                        what: "network",
                        collection: &["global", "networks"],
                        project,
                        region,
                    };
                    out.network = Some(self.gce_reference(&value, network.span, &place));
                }
            }
        }
        if let Some(subnet) = subnet {
            let value = self.interpolate(subnet, vars);
            match cloud {
                Cloud::Aws => {
                    if !is_aws_id(&value, "subnet-") {
                        let problem = self
                            .new_problem(ProblemKind::InvalidValue, subnet.span, format!("`{}` is not a subnet id", quoted(&value)), "expected `subnet-` and lowercase hex digits")
                            .with_help("use the subnet's id, e.g. `subnet-0a1b2c3d4e5f60718` (`aws ec2 describe-subnets`)");
                        self.problem(problem);
                    }
                    out.subnet = Some(value);
                }
                Cloud::Gcp => {
                    let place = GcePlace {
                        what: "subnetwork",
                        collection: &["regions", "*", "subnetworks"],
                        project,
                        region,
                    };
                    out.subnet = Some(self.gce_reference(&value, subnet.span, &place));
                }
            }
        }
        if let Some(groups) = groups {
            if cloud == Cloud::Gcp {
                if let Some(first) = groups.first() {
                    let problem = self
                        .new_problem(ProblemKind::InvalidValue, first.span, "GCE has no security groups", "not a gcp key")
                        .with_help("GCE applies firewall rules by network and network tag: remove `security_groups`, and choose the `network`/`subnet` whose firewall rules fit");
                    self.problem(problem);
                }
            } else {
                for group in groups {
                    let value = self.interpolate(group, vars);
                    if !is_aws_id(&value, "sg-") {
                        let problem = self
                            .new_problem(ProblemKind::InvalidValue, group.span, format!("`{}` is not a security group id", quoted(&value)), "expected `sg-` and lowercase hex digits")
                            .with_help("use the group's id, e.g. `sg-0123456789abcdef0` (`aws ec2 describe-security-groups`); names are not accepted because they are ambiguous outside the default VPC");
                        self.problem(problem);
                    }
                    out.security_groups.push(value);
                }
                out.security_groups.sort();
                out.security_groups.dedup();
            }
        }
        out
    }

    /// `instance_profile` (EC2), `service_account` and `scopes` (GCE), from the resource or
    /// the cloud's defaults, in the shapes `spec::identity` accepts; each refused on the other
    /// cloud with the key that cloud uses.
    pub(super) fn identity(
        &mut self,
        decl: &ResourceDecl,
        defaults: &MachineDefaults,
        cloud: Cloud,
        vars: &BTreeMap<String, String>,
    ) -> Identity {
        let profile = decl
            .instance_profile
            .as_ref()
            .or(defaults.instance_profile.as_ref());
        let account = decl
            .service_account
            .as_ref()
            .or(defaults.service_account.as_ref());
        let scopes = decl.scopes.as_ref().or(defaults.scopes.as_ref());
        let mut out = Identity::default();
        let check = |this: &mut Self,
                     value: &Spanned<String>,
                     shape: fn(&str) -> Result<String, identity::Refusal>| {
            let text = this.interpolate(value, vars);
            match shape(&text) {
                Ok(accepted) => Some(accepted),
                Err(refusal) => {
                    let problem = this
                        .new_problem(
                            ProblemKind::InvalidValue,
                            value.span,
                            refusal.message,
                            refusal.label,
                        )
                        .with_help(refusal.help);
                    this.problem(problem);
                    None
                }
            }
        };
        match cloud {
            Cloud::Aws => {
                if let Some(profile) = profile {
                    out.instance_profile = check(self, profile, identity::instance_profile);
                }
                if let Some(account) = account {
                    let problem = self
                        .new_problem(ProblemKind::InvalidValue, account.span, "EC2 has no `service_account`", "not an aws key")
                        .with_help("an EC2 machine acts as the role of its instance profile: remove `service_account` and set `instance_profile: NAME` (or its ARN)");
                    self.problem(problem);
                }
                if let Some(first) = scopes.and_then(|s| s.first()) {
                    let problem = self
                        .new_problem(ProblemKind::InvalidValue, first.span, "EC2 has no `scopes`", "not an aws key")
                        .with_help("what an EC2 machine may do is decided by the policies of its instance profile's role: remove `scopes`");
                    self.problem(problem);
                }
            }
            Cloud::Gcp => {
                if let Some(profile) = profile {
                    let problem = self
                        .new_problem(ProblemKind::InvalidValue, profile.span, "GCE has no `instance_profile`", "not a gcp key")
                        .with_help("a GCE machine acts as its service account: remove `instance_profile` and set `service_account: NAME@PROJECT.iam.gserviceaccount.com` (or `default`)");
                    self.problem(problem);
                }
                if let Some(account) = account {
                    out.service_account = check(self, account, identity::service_account);
                }
                match (scopes, &out.service_account) {
                    (Some(scopes), _) if account.is_none() => {
                        if let Some(first) = scopes.first() {
                            let problem = self
                                .new_problem(ProblemKind::InvalidValue, first.span, "`scopes` without a `service_account`", "scopes belong to a service account")
                                .with_help("add `service_account: default` (the project's Compute Engine default account) or the account's email, here or in `defaults.gcp`");
                            self.problem(problem);
                        }
                    }
                    (Some(scopes), Some(_)) => {
                        for scope in scopes {
                            if let Some(url) = check(self, scope, identity::scope) {
                                out.scopes.push(url);
                            }
                        }
                        out.scopes.sort();
                        out.scopes.dedup();
                    }
                    (None, Some(_)) => out.scopes = vec![identity::DEFAULT_SCOPE.to_string()],
                    _ => {}
                }
            }
        }
        out
    }

    /// A GCE network or subnetwork: a name in the project, or a shared-VPC path
    /// `projects/HOST/<collection>/NAME`. A path into the fleet's own project becomes the
    /// bare name, as discovery reports it; a subnetwork's region must be the machine's.
    fn gce_reference(&mut self, value: &str, span: SourceSpan, place: &GcePlace<'_>) -> String {
        let what = place.what;
        let parts: Vec<&str> = value.split('/').collect();
        let example = format!(
            "projects/HOST/{}/NAME",
            place.collection.join("/").replace('*', "REGION")
        );
        let path = match parts.as_slice() {
            [name] if valid_gce_name(name) => return value.to_string(),
            ["projects", project, rest @ ..]
                if !project.is_empty()
                    && rest.len() == place.collection.len() + 1
                    && rest
                        .iter()
                        .zip(place.collection)
                        .all(|(part, want)| (*want == "*" && !part.is_empty()) || part == want)
                    && valid_gce_name(rest[rest.len() - 1]) =>
            {
                (*project, rest.to_vec())
            }
            _ => {
                let problem = self
                    .new_problem(ProblemKind::InvalidValue, span, format!("`{}` is not a {what}", quoted(value)), format!("expected a {what} name or `{example}`"))
                    .with_help(format!("name a {what} of the fleet's project (lowercase letters, digits and `-`), or one of a shared VPC's host project as `{example}`"));
                self.problem(problem);
                return value.to_string();
            }
        };
        let (project, rest) = path;
        if let (["regions", subnet_region, ..], Some(region)) = (rest.as_slice(), place.region) {
            if *subnet_region != region {
                let problem = self
                    .new_problem(ProblemKind::InvalidValue, span, format!("`{value}` is in region {subnet_region}, not the machine's region {region}"), "a machine can only use a subnetwork of its own region")
                    .with_help(format!("use a subnetwork of {region}, or move the machine to a zone of {subnet_region}"));
                self.problem(problem);
            }
        }
        if Some(project) == place.project {
            rest[rest.len() - 1].to_string()
        } else {
            value.to_string()
        }
    }
}

/// A GCE network or subnetwork name.
fn valid_gce_name(name: &str) -> bool {
    valid_cloud_name(name, 63)
}

/// An EC2 id: `prefix` then 8 or 17 lowercase hex digits, as EC2 writes them.
fn is_aws_id(text: &str, prefix: &str) -> bool {
    text.strip_prefix(prefix).is_some_and(|hex| {
        matches!(hex.len(), 8 | 17)
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Where a GCE network reference points, for [`Expander::gce_reference`].
struct GcePlace<'a> {
    /// `network` or `subnetwork`, for messages.
    what: &'a str,
    /// The path between the project and the name (`*` for any one part).
    collection: &'a [&'a str],
    /// The fleet's GCP project.
    project: Option<&'a str>,
    /// The machine's region.
    region: Option<&'a str>,
}
