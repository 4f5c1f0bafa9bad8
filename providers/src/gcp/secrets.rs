//! Secret Manager: where a GCE machine's secret values live.
//!
//! In: the secrets `render::delivery::gce_secrets` made of a machine's delivery (one secret
//! per fleet, machine and name, its labels and value), what the machine was told before (the
//! digests and resource names in its `fleet-secrets` metadata, as discovery saw them). Out:
//! secrets created with their labels, a new version only where the digest changed, the
//! `fleet-digest` label following the value, and secrets deleted with their machine (or once
//! no longer referenced). Never a read of a value: fleet writes versions and the machine alone
//! accesses them. Every request is counted as `secretmanager.<call>` beside the Compute calls.

use std::collections::BTreeMap;

use fleet_engine::provider::ProviderError;
use fleet_engine::render::delivery::GceSecret;
use google_cloud_secretmanager_v1::client::SecretManagerService;
use google_cloud_secretmanager_v1::model::{replication, Replication, Secret, SecretPayload};

use super::error::{self, GceReason};

/// `secrets.create`.
pub(crate) const CREATE: &str = "secretmanager.secrets.create";
/// `secrets.addVersion`.
pub(crate) const ADD_VERSION: &str = "secretmanager.secrets.addVersion";
/// `secrets.patch` (the labels).
pub(crate) const PATCH: &str = "secretmanager.secrets.patch";
/// `secrets.delete`.
pub(crate) const DELETE: &str = "secretmanager.secrets.delete";

/// The Secret Manager client of one project.
#[derive(Debug, Clone)]
pub(crate) struct SecretStore {
    pub(crate) client: SecretManagerService,
    pub(crate) project: String,
}

/// What a machine was told about one secret: its digest and resource name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Told {
    pub(crate) digest: Option<String>,
    pub(crate) resource: String,
}

impl SecretStore {
    /// Writes `secrets` for a machine that was told `before` (by secret name): a secret it
    /// was not told about is created with its first version; one whose digest changed gets
    /// a new version, then the new digest as its label. A secret whose digest is unchanged
    /// costs no call. `count` counts each request.
    pub(crate) async fn write(
        &self,
        secrets: &[GceSecret],
        before: &BTreeMap<String, Told>,
        count: &(dyn Fn(&str) + Sync),
        what: &str,
    ) -> Result<(), ProviderError> {
        for secret in secrets {
            match before.get(&secret.name) {
                Some(told)
                    if told.resource == secret.resource
                        && told.digest.as_deref() == Some(secret.digest.as_str()) => {}
                Some(told) if told.resource == secret.resource => {
                    match self.add_version(secret, count, what).await {
                        // Deleted out of band: made again.
                        Err(failure) if failure.reason == GceReason::NotFound => {
                            self.create(secret, count, what).await?;
                        }
                        other => {
                            other.map_err(ProviderError::from)?;
                            self.patch_labels(secret, count, what).await?;
                        }
                    }
                }
                _ => self.create(secret, count, what).await?,
            }
        }
        Ok(())
    }

    /// `secrets.create` with the labels, then its first version. A secret that exists
    /// already (left by an apply that stopped before its machine was told, or a replaced
    /// machine's) holds a value fleet cannot know without reading it, so it gets a new
    /// version and its labels are set.
    async fn create(
        &self,
        secret: &GceSecret,
        count: &(dyn Fn(&str) + Sync),
        what: &str,
    ) -> Result<(), ProviderError> {
        count(CREATE);
        let body = Secret::new()
            .set_labels(secret.labels.clone())
            .set_replication(Replication::new().set_automatic(replication::Automatic::default()));
        let created = self
            .client
            .create_secret()
            .set_parent(format!("projects/{}", self.project))
            .set_secret_id(&secret.id)
            .set_secret(body)
            .send()
            .await;
        let existed = match created {
            Ok(_) => false,
            Err(failure) => {
                let failure = error::from_gax(CREATE, &about(what, secret), &failure);
                if failure.reason != GceReason::AlreadyExists {
                    return Err(failure.into());
                }
                true
            }
        };
        self.add_version(secret, count, what)
            .await
            .map_err(ProviderError::from)?;
        if existed {
            self.patch_labels(secret, count, what).await?;
        }
        Ok(())
    }

    /// `secrets.addVersion` with the value.
    async fn add_version(
        &self,
        secret: &GceSecret,
        count: &(dyn Fn(&str) + Sync),
        what: &str,
    ) -> Result<(), error::GceError> {
        count(ADD_VERSION);
        self.client
            .add_secret_version()
            .set_parent(&secret.resource)
            .set_payload(SecretPayload::new().set_data(secret.value.clone().into_bytes()))
            .send()
            .await
            .map(|_| ())
            .map_err(|failure| {
                let mut failure = error::from_gax(ADD_VERSION, &about(what, secret), &failure);
                // A service's validation message may quote what it refused; for a value only
                // the secret and the code are told.
                failure.error.message = format!(
                    "{}: the new version of {} was refused ({})",
                    what, secret.resource, failure.error.code
                );
                failure
            })
    }

    /// `secrets.patch` of the labels: the digest now follows the latest version.
    async fn patch_labels(
        &self,
        secret: &GceSecret,
        count: &(dyn Fn(&str) + Sync),
        what: &str,
    ) -> Result<(), ProviderError> {
        count(PATCH);
        let body = Secret::new()
            .set_name(&secret.resource)
            .set_labels(secret.labels.clone());
        self.client
            .update_secret()
            .set_secret(body)
            .set_update_mask(google_cloud_wkt::FieldMask::default().set_paths(["labels"]))
            .send()
            .await
            .map(|_| ())
            .map_err(|failure| error::from_gax(PATCH, &about(what, secret), &failure).into())
    }

    /// Deletes secrets by resource name; one already gone counts as deleted.
    pub(crate) async fn delete(
        &self,
        resources: &[String],
        count: &(dyn Fn(&str) + Sync),
        what: &str,
    ) -> Result<(), ProviderError> {
        for resource in resources {
            count(DELETE);
            match self.client.delete_secret().set_name(resource).send().await {
                Ok(()) => {}
                Err(failure) => {
                    let failure = error::from_gax(DELETE, &format!("{what}: {resource}"), &failure);
                    if failure.reason != GceReason::NotFound {
                        return Err(failure.into());
                    }
                }
            }
        }
        Ok(())
    }
}

/// `machine: projects/P/secrets/ID`, for errors.
fn about(what: &str, secret: &GceSecret) -> String {
    format!("{what}: {}", secret.resource)
}
