//! Builds the providers of a run from the global options.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleet_engine::apply::Providers;
use fleet_engine::desired::{CloudTarget, Desired};
use fleet_engine::provider::{Cloud, Provider};
use fleet_engine::retry::RetryPolicy;
use fleet_providers::aws::{AwsEc2, AwsOptions};
use fleet_providers::sim::{SimCloud, SimConfig};
use miette::{miette, IntoDiagnostic, Result};

use crate::cli::{CloudMode, Global, OnlyCloud};
use crate::output;

/// The clouds of a run and where its state lives.
pub(crate) struct Clouds {
    pub(crate) providers: Providers,
    pub(crate) state_dir: PathBuf,
    /// Kept so the simulator's API-call counts are flushed when the run ends.
    pub(crate) sim: Option<SimCloud>,
    /// `--stats`: print the API calls made on the way out.
    stats: bool,
}

impl Drop for Clouds {
    fn drop(&mut self) {
        if self.stats {
            let mut calls = serde_json::Map::new();
            for (_, provider) in self.providers.iter() {
                for (operation, count) in provider.call_counts() {
                    calls.insert(operation, count.into());
                }
            }
            output::warn(&format!("API calls: {}", serde_json::Value::Object(calls)));
        }
        if let Some(sim) = &self.sim {
            let _ = sim.flush_stats();
        }
    }
}

/// How throttled and transient failures are retried: `--max-attempts`, `--retry-for`.
pub(crate) fn retry_policy(global: &Global) -> RetryPolicy {
    RetryPolicy {
        max_attempts: global.max_attempts,
        max_elapsed: Duration::from_secs(global.retry_for),
        ..RetryPolicy::default()
    }
}

pub(crate) fn only_cloud(global: &Global) -> Option<Cloud> {
    global.only_cloud.map(|only| match only {
        OnlyCloud::Gcp => Cloud::Gcp,
        OnlyCloud::Aws => Cloud::Aws,
    })
}

/// Opens the simulator with the configured latency, rate limit and faults.
pub(crate) fn open_sim(global: &Global) -> Result<SimCloud> {
    if !(0.0..=1.0).contains(&global.sim_fault_rate) {
        return Err(miette!(
            code = "fleet::sim::config",
            help = "FLEET_SIM_FAULT_RATE is a share of calls between 0 and 1, e.g. 0.2",
            "invalid simulator fault rate {}",
            global.sim_fault_rate
        ));
    }
    let config = SimConfig {
        latency: Duration::from_millis(global.sim_latency_ms),
        rate_limit: global.sim_rate_limit.filter(|rate| *rate > 0.0),
        fault_rate: global.sim_fault_rate,
        seed: global.sim_seed,
        list_lag: global.sim_list_lag,
    };
    let sim = SimCloud::open(&global.sim_dir, config)?.with_retry_policy(retry_policy(global));
    sim.fail_creates_matching(global.sim_fail_create.clone());
    Ok(sim)
}

/// The providers for the clouds a desired set uses.
pub(crate) async fn connect(global: &Global, desired: &Desired) -> Result<Clouds> {
    let mut providers = Providers::new();
    match global.cloud {
        CloudMode::Sim => {
            let sim = open_sim(global)?;
            for cloud in Cloud::ALL {
                providers.insert(sim.provider(cloud));
            }
            let state_dir = global
                .state_dir
                .clone()
                .unwrap_or_else(|| global.sim_dir.join("state"));
            std::fs::create_dir_all(&state_dir).into_diagnostic()?;
            Ok(Clouds {
                providers,
                state_dir,
                sim: Some(sim),
                stats: global.stats,
            })
        }
        CloudMode::Live => {
            for (cloud, target) in &desired.clouds {
                if only_cloud(global).is_some_and(|only| only != *cloud) {
                    continue;
                }
                let provider = match cloud {
                    Cloud::Aws => aws_provider(global, target).await?,
                    Cloud::Gcp => gcp_provider(global, target).await?,
                };
                providers.insert(provider);
            }
            let state_dir = global
                .state_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(".fleet/state"));
            std::fs::create_dir_all(&state_dir).into_diagnostic()?;
            Ok(Clouds {
                providers,
                state_dir,
                sim: None,
                stats: global.stats,
            })
        }
    }
}

/// The live AWS provider for `clouds.aws` of a fleet file.
async fn aws_provider(global: &Global, target: &CloudTarget) -> Result<Arc<dyn Provider>> {
    // `--aws-endpoint`; otherwise the SDK's own chain applies (AWS_ENDPOINT_URL, the
    // profile's endpoint_url). Never the fleet file: it may come from a merge request.
    // Credentials come from the standard chain and are checked here, before anything is
    // planned or changed.
    let mut options = AwsOptions::new(target.region.clone());
    options.endpoint = given(&global.aws_endpoint);
    options.retry = retry_policy(global);
    let provider = AwsEc2::connect(options).await?;
    Ok(Arc::new(provider))
}

/// The live GCP provider for `clouds.gcp` of a fleet file.
///
/// The endpoint is `--gcp-endpoint` (or `FLEET_GCP_ENDPOINT`) if set, else Compute Engine
/// itself, and Secret Manager's `--gcp-secrets-endpoint` (`FLEET_GCP_SECRETS_ENDPOINT`) alike (never the fleet file, which may come from a merge request); `FLEET_GCP_ANONYMOUS=1` skips authentication (for a local test server),
/// otherwise Application Default Credentials are required and checked before anything runs.
async fn gcp_provider(global: &Global, target: &CloudTarget) -> Result<Arc<dyn Provider>> {
    use fleet_providers::gcp::{GcpAuth, GcpConfig, GcpProvider};

    let Some(project) = target.project.clone() else {
        return Err(miette!(
            code = "fleet::gcp::project",
            help = "add `clouds: {gcp: {project: …, region: …}}` to the fleet file",
            "no GCP project for the live GCP provider"
        ));
    };
    let mut config = GcpConfig::new(project, target.region.clone());
    config.endpoint = given(&global.gcp_endpoint);
    config.secrets_endpoint = given(&global.gcp_secrets_endpoint);
    config.retry = retry_policy(global);
    if std::env::var("FLEET_GCP_ANONYMOUS").is_ok_and(|value| value == "1" || value == "true") {
        config.auth = GcpAuth::Anonymous;
    }
    let provider = GcpProvider::connect(config).await?;
    Ok(Arc::new(provider))
}

/// An endpoint option, unless it is empty (an exported but blank variable).
fn given(endpoint: &Option<String>) -> Option<String> {
    endpoint
        .as_ref()
        .filter(|endpoint| !endpoint.trim().is_empty())
        .cloned()
}

/// Refuses, before any change, to send GCE machines' secret values to Google's Secret Manager
/// while Compute Engine is reached elsewhere (`--gcp-endpoint`: a test server, a proxy): the
/// values would leave for a service the machines that name them are not in.
pub(crate) fn check_secret_endpoints(
    global: &Global,
    plan: &fleet_engine::plan::Plan,
) -> Result<()> {
    if global.cloud != CloudMode::Live
        || given(&global.gcp_endpoint).is_none()
        || given(&global.gcp_secrets_endpoint).is_some()
    {
        return Ok(());
    }
    let names = fleet_engine::secrets::references(
        plan.actionable()
            .filter_map(|change| change.after.as_ref())
            .filter(|resource| resource.cloud == Cloud::Gcp)
            .flat_map(|resource| resource.spec.metadata.values()),
    );
    if names.is_empty() {
        return Ok(());
    }
    Err(miette!(
        code = "fleet::gcp::secrets_endpoint",
        help = "set --gcp-secrets-endpoint (FLEET_GCP_SECRETS_ENDPOINT) to the Secret Manager that goes with --gcp-endpoint; nothing was changed",
        "--gcp-endpoint is set but --gcp-secrets-endpoint is not: fleet will not send the values of {} to Google's Secret Manager for machines made elsewhere",
        names.into_iter().collect::<Vec<_>>().join(", ")
    ))
}
