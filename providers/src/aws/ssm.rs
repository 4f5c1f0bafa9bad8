//! SSM Parameter Store: where an EC2 instance's files, decision and secrets live.
//!
//! In: an instance's delivered metadata (`render::delivery::parameters` says which parameter
//! each item becomes) and its parameter prefix, `/fleet/<fleet>/<instance id>/`. Out: the
//! parameters written (files and the decision as `String`, each secret value as a
//! `SecureString` tagged with its salted digest, the digests together as `secret-digests`;
//! each parameter tagged `fleet-instance` with the ARN of the one instance that may read it),
//! read back for a plan (only `String` parameters, never decrypted), and deleted with their
//! instance. Every request is counted as `ssm:<Operation>` beside the EC2 calls.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_ssm::config::retry::RetryConfig;
use aws_sdk_ssm::config::timeout::TimeoutConfig;
use aws_sdk_ssm::types::{
    ParameterStringFilter, ParameterTier, ParameterType, ResourceTypeForTagging, Tag,
};
use aws_sdk_ssm::Client;
use fleet_engine::provider::{ErrorKind, ProviderError};
use fleet_engine::render::delivery::{Parameter, Tier, INSTANCE_TAG};
use fleet_engine::retry::{follow_pages, RetryPolicy};

use super::calls::CallCounter;
use super::errors::{about, sdk_error};

/// `GetParametersByPath` page size (the SSM maximum).
const PATH_PAGE: i32 = 10;
/// `DeleteParameters` takes at most this many names.
const DELETE_BATCH: usize = 10;
/// The tag beside each secret parameter holding its digest (never the value).
pub(crate) const DIGEST_TAG: &str = "fleet-digest";

/// The Parameter Store client of one region.
#[derive(Debug)]
pub(crate) struct Parameters {
    client: Client,
    retry: RetryPolicy,
}

impl Parameters {
    /// A client on the same configuration as EC2's: SDK retries off (the executor and
    /// [`follow_pages`] retry), the same timeouts, counted by the same counter.
    pub(crate) fn new(
        shared: &aws_config::SdkConfig,
        calls: CallCounter,
        retry: RetryPolicy,
    ) -> Parameters {
        let config = aws_sdk_ssm::config::Builder::from(shared)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(60))
                    .build(),
            )
            .interceptor(calls)
            .build();
        Parameters {
            client: Client::from_conf(config),
            retry,
        }
    }

    /// Every `String` parameter under `root`, by full name: `GetParametersByPath` filtered to
    /// type `String`, without decryption, one call per page of 10. A plan reads no secret:
    /// `SecureString` parameters are filtered out by the service, and their digests are read
    /// from `secret-digests`.
    pub(crate) async fn strings_under(
        &self,
        root: &str,
    ) -> Result<BTreeMap<String, String>, ProviderError> {
        let only_strings = ParameterStringFilter::builder()
            .key("Type")
            .option("Equals")
            .values("String")
            .build()
            .map_err(|e| {
                ProviderError::new(
                    ErrorKind::Fatal,
                    "ssm:GetParametersByPath",
                    "Build",
                    e.to_string(),
                )
            })?;
        let mut found = BTreeMap::new();
        follow_pages(
            self.retry,
            |token| {
                let request = self
                    .client
                    .get_parameters_by_path()
                    .path(root)
                    .recursive(true)
                    .with_decryption(false)
                    .parameter_filters(only_strings.clone())
                    .max_results(PATH_PAGE)
                    .set_next_token(token);
                async move {
                    let page = request
                        .send()
                        .await
                        .map_err(|e| sdk_error("ssm:GetParametersByPath", e))?;
                    let next = page.next_token().map(str::to_string);
                    Ok((page, next))
                }
            },
            |page| {
                for parameter in page.parameters() {
                    // The filter asks for `String` only; a parameter of another type is not
                    // read even if a service answered with it.
                    if parameter.r#type() != Some(&ParameterType::String) {
                        continue;
                    }
                    if let (Some(name), Some(value)) = (parameter.name(), parameter.value()) {
                        found.insert(name.to_string(), value.to_string());
                    }
                }
            },
        )
        .await?;
        Ok(found)
    }

    /// Writes `parameters` under `prefix`: secret values first, then the files, the decision
    /// and the index last, so a watcher that reads between two writes finds a decision that
    /// does not match the config it got and waits, and never asks for a parameter not yet
    /// written. Every parameter carries the `fleet-instance` tag naming `reader`, the
    /// instance ARN the machines' policy compares with the caller's (a secret also its
    /// digest). A parameter not among `existing` is made with its tags in the same
    /// `PutParameter`, so no interruption leaves it untagged; one that exists is overwritten
    /// (which keeps its tags) and tagged again after, which also puts back a tag removed by
    /// hand and a secret's new digest.
    pub(crate) async fn put(
        &self,
        prefix: &str,
        parameters: &[Parameter],
        reader: &str,
        existing: &BTreeSet<String>,
        what: &str,
    ) -> Result<(), ProviderError> {
        let mut ordered: Vec<&Parameter> = parameters.iter().collect();
        // Secrets, the files, the decision, then the index the watcher reads first.
        ordered.sort_by_key(|p| match p.name.as_str() {
            _ if p.secure => 0,
            "action" => 2,
            fleet_engine::render::delivery::PARAMETER_INDEX => 3,
            _ => 1,
        });
        for parameter in ordered {
            let name = format!("{prefix}{}", parameter.name);
            let tier = match Tier::for_size(parameter.value.len()) {
                Some(Tier::Standard) => ParameterTier::Standard,
                Some(Tier::Advanced) => ParameterTier::Advanced,
                // Checked at validate time for files; a secret value too large is told here,
                // by name and size only.
                None => {
                    return Err(ProviderError::new(
                        ErrorKind::Fatal,
                        "ssm:PutParameter",
                        "ParameterTooLarge",
                        format!(
                            "{what}: the parameter {name} is {} bytes; SSM holds at most {}",
                            parameter.value.len(),
                            fleet_engine::render::delivery::SSM_ADVANCED_LIMIT
                        ),
                    ))
                }
            };
            let kind = if parameter.secure {
                ParameterType::SecureString
            } else {
                ParameterType::String
            };
            let mut tags = vec![tag(INSTANCE_TAG, reader)?];
            if let Some(digest) = &parameter.digest {
                tags.push(tag(DIGEST_TAG, digest)?);
            }
            let request = self
                .client
                .put_parameter()
                .name(&name)
                .value(&parameter.value)
                .r#type(kind)
                .tier(tier);
            let refused = |e| {
                let mut error = sdk_error("ssm:PutParameter", e);
                // A service's validation message may quote the value it refused; for a secret
                // only the name and the code are told.
                if parameter.secure {
                    error.message = format!("the value of {name} was refused ({})", error.code);
                }
                error
            };
            if !existing.contains(&name) {
                // SSM takes tags only on a creation, never with `Overwrite`.
                match request
                    .clone()
                    .set_tags(Some(tags.clone()))
                    .send()
                    .await
                    .map_err(refused)
                {
                    Ok(_) => continue,
                    // Made since the discovery this apply planned from: overwritten below.
                    Err(error) if error.code == "ParameterAlreadyExists" => {}
                    Err(error) => return Err(about(error, what)),
                }
            }
            request
                .overwrite(true)
                .send()
                .await
                .map_err(|e| about(refused(e), what))?;
            self.client
                .add_tags_to_resource()
                .resource_type(ResourceTypeForTagging::Parameter)
                .resource_id(&name)
                .set_tags(Some(tags))
                .send()
                .await
                .map_err(|e| about(sdk_error("ssm:AddTagsToResource", e), what))?;
        }
        Ok(())
    }

    /// Deletes parameters by full name, 10 a call; names already gone count as deleted.
    pub(crate) async fn delete(&self, names: &[String], what: &str) -> Result<(), ProviderError> {
        for chunk in names.chunks(DELETE_BATCH) {
            self.client
                .delete_parameters()
                .set_names(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| about(sdk_error("ssm:DeleteParameters", e), what))?;
        }
        Ok(())
    }
}

/// One parameter tag.
fn tag(key: &str, value: &str) -> Result<Tag, ProviderError> {
    Tag::builder().key(key).value(value).build().map_err(|e| {
        ProviderError::new(
            ErrorKind::Fatal,
            "ssm:AddTagsToResource",
            "Build",
            e.to_string(),
        )
    })
}
