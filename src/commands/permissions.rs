//! `fleet permissions`: the least cloud permissions of one job, from the fleet file alone.

use fleet_engine::permissions::{self, Job};
use fleet_engine::provider::Cloud;
use miette::{miette, Result};
use serde_json::json;

use crate::cli::{Global, PermissionsArgs, PermissionsFor, PermissionsFormat};
use crate::{clouds, output};

pub(crate) fn run(global: &Global, args: &PermissionsArgs) -> Result<u8> {
    let desired = super::compile(&args.file, &global.limits())?;
    let job = match args.job {
        PermissionsFor::Plan => Job::Plan,
        PermissionsFor::Apply => Job::Apply,
        PermissionsFor::Manager => Job::Manager,
    };
    let wanted: Vec<Cloud> = match clouds::only_cloud(global) {
        Some(cloud) if !desired.clouds.contains_key(&cloud) => {
            return Err(miette!(
                code = "fleet::permissions::no_such_cloud",
                help = format!(
                    "the fleet file's `clouds:` names {}",
                    desired
                        .clouds
                        .keys()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "{} has no `clouds.{}`: no permissions to print for it",
                args.file.display(),
                cloud.as_str()
            ))
        }
        Some(cloud) => vec![cloud],
        None => [Cloud::Aws, Cloud::Gcp]
            .into_iter()
            .filter(|cloud| desired.clouds.contains_key(cloud))
            .collect(),
    };
    if wanted.is_empty() {
        // A fleet of hosts only (`hosts:`): fleet never calls a cloud for it.
        output::warn(&format!(
            "note: fleet {} has no `clouds:`; fleet calls no cloud for it, so no job needs a permission",
            desired.fleet
        ));
    }
    let aws = wanted
        .contains(&Cloud::Aws)
        .then(|| permissions::aws_policy(&desired, job))
        .flatten();
    let gcp = wanted
        .contains(&Cloud::Gcp)
        .then(|| permissions::gcp_role(&desired, job))
        .flatten();
    match args.format {
        PermissionsFormat::Json => {
            let mut out = json!({ "fleet": desired.fleet, "for": job.as_str() });
            if let Some(policy) = &aws {
                out["aws"] = json!({ "policy": policy.document, "notes": policy.notes });
            }
            if let Some(role) = &gcp {
                out["gcp"] = role.to_json();
            }
            output::line(&serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        PermissionsFormat::Text => {
            let both = aws.is_some() && gcp.is_some();
            if let Some(policy) = &aws {
                if both {
                    output::line(&format!(
                        "# AWS IAM policy: fleet {} {} (aws iam create-policy --policy-document)",
                        desired.fleet,
                        job.as_str()
                    ));
                }
                output::line(&serde_json::to_string_pretty(&policy.document).unwrap_or_default());
                // On standard error, so that standard output stays a policy document.
                for note in &policy.notes {
                    output::warn(&format!("note: {note}"));
                }
            }
            if let Some(role) = &gcp {
                if both {
                    output::line("");
                }
                output::out(&role.to_yaml());
            }
        }
    }
    Ok(0)
}
