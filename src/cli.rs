//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use fleet_engine::spec::Limits;

/// Infrastructure as code for CI runner fleets.
///
/// Fleet files (YAML) describe runner managers, helpers, fixed-size pools and autoscale
/// templates. `fleet plan` diffs them against the live cloud and shows what would change;
/// `fleet apply` makes it so. Every object fleet creates carries labels (`fleet`,
/// `fleet-kind`, `fleet-spec`, and `fleet-resource` or, on pool members, `fleet-pool`),
/// which is how live state is discovered: there is no state file.
///
/// Quick start on the embedded simulated cloud (no account needed):
///
///   fleet --sim-dir sim-state plan fleets/distribution.yaml
///   fleet --sim-dir sim-state apply fleets/distribution.yaml --auto-approve
#[derive(Debug, Parser)]
#[command(name = "fleet", version, max_term_width = 100, verbatim_doc_comment)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Where fleet points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum CloudMode {
    /// The embedded simulated cloud in --sim-dir.
    Sim,
    /// The real clouds (GCP Compute Engine, AWS EC2) with the standard credentials.
    Live,
}

/// One cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OnlyCloud {
    /// Google Compute Engine.
    Gcp,
    /// Amazon EC2.
    Aws,
}

#[derive(Debug, Args)]
pub(crate) struct Global {
    /// Which cloud to talk to.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "sim",
        env = "FLEET_CLOUD"
    )]
    pub(crate) cloud: CloudMode,

    /// Directory of the simulated cloud (created if missing).
    #[arg(
        long,
        global = true,
        default_value = ".fleet/sim",
        env = "FLEET_SIM_DIR"
    )]
    pub(crate) sim_dir: PathBuf,

    /// Directory of locks and the apply journal [default: <sim-dir>/state with --cloud sim,
    /// .fleet/state otherwise].
    #[arg(long, global = true, env = "FLEET_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,

    /// Secret values as NAME=value lines, for `${secret:NAME}` references (checked after the
    /// FLEET_SECRET_<NAME> environment variables).
    #[arg(long, global = true, value_name = "FILE", env = "FLEET_SECRETS_FILE")]
    pub(crate) secrets_file: Option<PathBuf>,

    /// Print the API calls this run made, by operation, on standard error.
    #[arg(long, global = true)]
    pub(crate) stats: bool,

    /// Limit discovery and changes to one cloud of a mixed fleet.
    #[arg(long, global = true, value_enum)]
    pub(crate) only_cloud: Option<OnlyCloud>,

    /// EC2 endpoint for `--cloud live`, e.g. an emulator on loopback. Wins over the SDK's own
    /// settings (`AWS_ENDPOINT_URL`, the profile's `endpoint_url`). Fleet files cannot set one.
    #[arg(long, global = true, value_name = "URL")]
    pub(crate) aws_endpoint: Option<String>,

    /// Compute Engine endpoint for `--cloud live`, e.g. a test server on loopback (with
    /// `FLEET_GCP_ANONYMOUS=1` in the environment to send no credentials to it). Fleet files
    /// cannot set one.
    #[arg(long, global = true, value_name = "URL", env = "FLEET_GCP_ENDPOINT")]
    pub(crate) gcp_endpoint: Option<String>,

    /// Secret Manager endpoint for `--cloud live`, where GCE machines' secrets are written,
    /// e.g. a test server on loopback. Fleet files cannot set one. Required with
    /// `--gcp-endpoint` when an apply writes secrets; the machines always read Google's.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "FLEET_GCP_SECRETS_ENDPOINT"
    )]
    pub(crate) gcp_secrets_endpoint: Option<String>,

    /// Attempts per cloud call that is throttled or fails transiently (5xx), the first
    /// included, with jittered exponential backoff between them.
    #[arg(
        long,
        global = true,
        env = "FLEET_MAX_ATTEMPTS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub(crate) max_attempts: u32,

    /// Stop retrying a call this many seconds after its first attempt.
    #[arg(
        long,
        global = true,
        env = "FLEET_RETRY_FOR",
        value_name = "SECONDS",
        default_value_t = 300
    )]
    pub(crate) retry_for: u64,

    /// Largest fleet file read, in bytes.
    #[arg(long, global = true, value_name = "BYTES", env = "FLEET_MAX_FILE_SIZE",
        default_value_t = Limits::DEFAULT_FILE_BYTES, hide_short_help = true)]
    pub(crate) max_file_size: usize,

    /// Most YAML nodes that aliases (`*name`) may copy in one fleet file, all together.
    #[arg(long, global = true, value_name = "N", env = "FLEET_MAX_ALIAS_NODES",
        default_value_t = Limits::DEFAULT_ALIAS_NODES, hide_short_help = true)]
    pub(crate) max_alias_nodes: usize,

    /// Most members of one pool (`size`) or one matrix entry (`matrix.count`).
    #[arg(long, global = true, value_name = "N", env = "FLEET_MAX_POOL_SIZE",
        default_value_t = Limits::DEFAULT_POOL_SIZE, hide_short_help = true)]
    pub(crate) max_pool_size: u32,

    /// Most combinations of one matrix (the product of its axes' lengths).
    #[arg(long, global = true, value_name = "N", env = "FLEET_MAX_MATRIX",
        default_value_t = Limits::DEFAULT_MATRIX_COMBINATIONS, hide_short_help = true)]
    pub(crate) max_matrix: usize,

    /// Most resources a fleet file may expand to, hosts included.
    #[arg(long, global = true, value_name = "N", env = "FLEET_MAX_RESOURCES",
        default_value_t = Limits::DEFAULT_RESOURCES, hide_short_help = true)]
    pub(crate) max_resources: usize,

    /// Simulator: latency of every API call, in milliseconds.
    #[arg(
        long,
        global = true,
        env = "FLEET_SIM_LATENCY_MS",
        default_value_t = 0,
        hide_short_help = true
    )]
    pub(crate) sim_latency_ms: u64,

    /// Simulator: API calls per second before it answers "rate limit exceeded".
    #[arg(
        long,
        global = true,
        env = "FLEET_SIM_RATE_LIMIT",
        hide_short_help = true
    )]
    pub(crate) sim_rate_limit: Option<f64>,

    /// Simulator: share of API calls that fail with a transient fault (0 to 1).
    #[arg(
        long,
        global = true,
        env = "FLEET_SIM_FAULT_RATE",
        default_value_t = 0.0,
        hide_short_help = true
    )]
    pub(crate) sim_fault_rate: f64,

    /// Simulator: seed of the fault injection, for reproducible runs.
    #[arg(
        long,
        global = true,
        env = "FLEET_SIM_SEED",
        default_value_t = 0,
        hide_short_help = true
    )]
    pub(crate) sim_seed: u64,

    /// Simulator: names (`*` wildcards, comma-separated) whose creation always fails, to see
    /// how apply handles a failure.
    #[arg(
        long,
        global = true,
        env = "FLEET_SIM_FAIL_CREATE",
        value_delimiter = ',',
        hide_short_help = true
    )]
    pub(crate) sim_fail_create: Vec<String>,

    /// Simulator: list calls that do not show an instance yet after its creation, to see
    /// lists that lag behind writes handled.
    #[arg(
        long,
        global = true,
        env = "FLEET_SIM_LIST_LAG",
        default_value_t = 0,
        hide_short_help = true
    )]
    pub(crate) sim_list_lag: u64,
}

impl Global {
    /// The limits fleet files are compiled under.
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            file_bytes: self.max_file_size,
            alias_nodes: self.max_alias_nodes,
            pool_size: self.max_pool_size,
            matrix_combinations: self.max_matrix,
            resources: self.max_resources,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Check fleet files: syntax, keys, references, machine types, zones, architectures.
    ///
    /// Reports every problem at once with file, line and column (the first 100, all counted).
    ///
    /// Exit status: 0 every file is valid, 1 a problem in any (usage errors exit 1 too).
    Validate {
        /// Fleet files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show what apply would change: create +, update ~, replace ± or ∓, delete -.
    ///
    /// Exit status: 0 success (with --detailed-exitcode: no changes), 1 error (a usage error
    /// too), 2 changes present or a zone that did not answer (with --detailed-exitcode).
    Plan(PlanArgs),
    /// Make the cloud match a fleet file, or apply a plan saved with `fleet plan -o`.
    ///
    /// A saved plan is applied exactly as it is, without asking (it is the approval), and
    /// refused if the live state changed since it was made (a plan without changes too). A
    /// fleet file is planned and applied after you confirm (or with --auto-approve). Only one
    /// apply per fleet runs at a time on one machine (the lock is in --state-dir); applies
    /// from several machines at once still make each machine once.
    ///
    /// Exit status: 0 applied and verified (the cloud matches the plan everywhere), 1 error
    /// before any change, 3 steps failed, were skipped or not started, 4 every step succeeded
    /// but the fleet is not verified (not converged, a zone did not answer, or it could not be
    /// re-discovered), 5 the journal could not be written (fleet stopped starting steps).
    Apply(ApplyArgs),
    /// Show each machine's delivery exactly as its cloud receives it, or with -o write every
    /// file fleet delivers to each machine (config.toml, prometheus.yml, the bootstrap), as
    /// Chef laid them down: for review, or for hosts fleet does not create.
    ///
    /// Printed, per machine sorted by name (`==> NAME (ADDRESS, KIND) <==`): on GCE each
    /// metadata item as sent; on EC2 the user-data document (the cloud-init MIME multi-part,
    /// shown decompressed when it is sent gzip-compressed, with both sizes) and, for an
    /// instance, its SSM parameters by name with type and tier; a static host's files by path.
    /// Files keep their `${secret:NAME}` references as delivered; secret values are
    /// `(sensitive)`, never shown.
    ///
    /// Exit status: 0 rendered, 1 a problem in the fleet file, a --machine the fleet does not
    /// have, or a file that cannot be written.
    Render(RenderArgs),
    /// List the secrets a fleet file needs (`${secret:NAME}`), where each is read from and
    /// whether it is set, and which machines use it. Never prints a value.
    ///
    /// On the simulated cloud a secret with no value gets a placeholder; live clouds need
    /// every one before apply changes anything.
    ///
    /// Exit status: 0, or with --check 1 when any secret has no value.
    Secrets {
        /// Fleet file.
        file: PathBuf,
        /// Exit 1 when any secret the fleet needs has no value (for a CI job before apply).
        #[arg(long)]
        check: bool,
    },
    /// Print the least cloud permissions a job needs for a fleet file's resources: an AWS IAM
    /// policy document and a GCP custom role (with the bindings beside it).
    ///
    /// `--for plan`: the merge-request job; list calls only, and never a secret value (the
    /// AWS policy denies kms:Decrypt). `--for apply`: what apply creates, changes and deletes,
    /// held to the fleet's own objects (its `fleet` tag, its parameters, its instance
    /// profiles' roles, its service accounts). `--for manager`: the machines' own identity,
    /// what the watcher on each machine reads its config and secrets with.
    ///
    /// `--only-cloud aws` prints the policy document alone (for `aws iam create-policy
    /// --policy-document file://…`), `--only-cloud gcp` the role file alone (for `gcloud iam
    /// roles create --file …`). Nothing is called; the output depends on the file only.
    ///
    /// Exit status: 0 printed, 1 a problem in the fleet file.
    Permissions(PermissionsArgs),
    /// Print the plan's dependency graph as Graphviz DOT.
    ///
    /// Exit status: 0 printed, 1 error.
    Graph {
        /// Fleet file.
        file: PathBuf,
    },
    /// Act on the simulated cloud out of band, as a person in the cloud console would.
    #[command(subcommand)]
    Sim(SimCommand),
    /// GitLab CI: the plan as a merge-request note, and the reviewed changes after merge.
    #[command(subcommand)]
    Ci(CiCommand),
}

/// Output format of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// For people; colour on a terminal unless NO_COLOR is set.
    Text,
    /// For tools, in the shape of `terraform show -json` (`resource_changes[].change.actions`,
    /// `before`, `after`, `planned_values`); not a saved plan: save one with -o.
    Json,
    /// For a merge-request comment.
    Markdown,
}

#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    /// Fleet file.
    pub(crate) file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub(crate) format: Format,
    /// Save the plan (JSON) for `fleet apply PLAN`.
    #[arg(short = 'o', long = "out")]
    pub(crate) out: Option<PathBuf>,
    /// Also write GitLab's Terraform report to FILE (`artifacts:reports:terraform`):
    /// `{"create": N, "update": N, "delete": N}`, a replacement counted in create and delete.
    #[arg(long, value_name = "FILE")]
    pub(crate) gitlab_report: Option<PathBuf>,
    /// Exit 0 when there are no changes, 2 when there are (or when a zone did not answer, so
    /// part of the fleet could not be compared), 1 on error.
    #[arg(long)]
    pub(crate) detailed_exitcode: bool,
    /// Limit the plan to addresses matching PATTERN (`*` wildcards) and what they depend on.
    #[arg(long, value_name = "PATTERN")]
    pub(crate) target: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    /// Fleet file, or a plan saved with `fleet plan -o`.
    pub(crate) file: PathBuf,
    /// Apply a fleet file's plan without asking. A saved plan never asks.
    #[arg(long)]
    pub(crate) auto_approve: bool,
    /// Limit to addresses matching PATTERN and what they depend on (fleet files only).
    #[arg(long, value_name = "PATTERN")]
    pub(crate) target: Vec<String>,
    /// Cloud calls in flight at once.
    #[arg(long, default_value_t = 16)]
    pub(crate) concurrency: usize,
    /// Apply only if the changes planned now are the ones reviewed: DIGEST is the changes
    /// digest from the merge request's plan note (`fleet ci expected-changes`), or the path of
    /// the reviewed saved plan. Otherwise stop before any change (exit 1) and say which
    /// resources differ. The reviewed changes are the approval: no question is asked, and a
    /// cloud that changes between this plan and the lock is refused, not planned again.
    #[arg(long, value_name = "DIGEST")]
    pub(crate) expect_changes: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CiCommand {
    /// Post the plan as a note on the merge request (GitLab REST API), or update fleet's
    /// earlier note for the same fleet file; an unchanged note is not sent again.
    ///
    /// Reads CI_API_V4_URL, CI_PROJECT_ID and CI_MERGE_REQUEST_IID (set by GitLab in
    /// merge-request pipelines) and the token in GITLAB_TOKEN (or --token-env), sent as
    /// PRIVATE-TOKEN and never printed. CI_JOB_TOKEN cannot write notes: use a project access
    /// token with the `api` scope.
    ///
    /// Exit status: 0 the note is posted or already up to date, 1 error.
    Comment(CommentArgs),
    /// Print the changes digest of the reviewed plan for a fleet file, read from fleet's note
    /// on the merge request that brought the commit CI_COMMIT_SHA, for
    /// `fleet apply FILE --expect-changes DIGEST` on the default branch.
    ///
    /// Exit status: 0 printed, 1 no merged merge request or no note for the file, or an error.
    ExpectedChanges(ExpectedChangesArgs),
    /// Print the changes digest of a saved plan (what the plan note shows).
    ///
    /// Exit status: 0 printed, 1 error.
    Digest {
        /// A plan saved with `fleet plan -o`.
        plan: PathBuf,
    },
}

/// Where GitLab is and how fleet signs in.
#[derive(Debug, Args)]
pub(crate) struct GitLabArgs {
    /// GitLab's REST API, e.g. https://gitlab.example.com/api/v4.
    #[arg(long, value_name = "URL", env = "CI_API_V4_URL")]
    pub(crate) api_url: Option<String>,
    /// The project: its id or its full path.
    #[arg(long, value_name = "ID", env = "CI_PROJECT_ID")]
    pub(crate) project: Option<String>,
    /// The environment variable holding the API token (a project access token with the `api`
    /// scope); it is sent as PRIVATE-TOKEN and never printed.
    #[arg(long, value_name = "NAME", default_value = "GITLAB_TOKEN")]
    pub(crate) token_env: String,
    /// Longest wait before a retry, in seconds, whatever GitLab's Retry-After asks; attempts
    /// and the time budget are --max-attempts and --retry-for.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub(crate) max_wait: u64,
}

#[derive(Debug, Args)]
pub(crate) struct CommentArgs {
    /// A plan saved with `fleet plan -o` (the pipeline plans once), or a fleet file to plan now.
    pub(crate) file: PathBuf,
    /// The merge request's IID.
    #[arg(long, value_name = "IID", env = "CI_MERGE_REQUEST_IID")]
    pub(crate) merge_request: Option<String>,
    #[command(flatten)]
    pub(crate) gitlab: GitLabArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ExpectedChangesArgs {
    /// The fleet file whose reviewed plan is wanted (as it was given to `fleet plan`).
    pub(crate) file: PathBuf,
    /// The merged commit.
    #[arg(long, value_name = "SHA", env = "CI_COMMIT_SHA")]
    pub(crate) commit: Option<String>,
    #[command(flatten)]
    pub(crate) gitlab: GitLabArgs,
}

/// The job `fleet permissions` prints permissions for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PermissionsFor {
    /// `fleet plan` in a merge-request pipeline: read-only, no secret values.
    Plan,
    /// `fleet apply`: creating, changing and deleting the fleet's own objects.
    Apply,
    /// The machines' own identity: what the watcher reads its config and secrets with.
    Manager,
}

/// Output format of `fleet permissions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PermissionsFormat {
    /// The documents the clouds' tools read (AWS policy JSON, GCP role YAML), notes as
    /// comments.
    Text,
    /// One JSON object: per cloud, the document, its bindings and notes.
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct PermissionsArgs {
    /// Fleet file.
    pub(crate) file: PathBuf,
    /// The job: plan, apply or manager.
    #[arg(long = "for", value_enum)]
    pub(crate) job: PermissionsFor,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub(crate) format: PermissionsFormat,
}

#[derive(Debug, Args)]
pub(crate) struct RenderArgs {
    /// Fleet file.
    pub(crate) file: PathBuf,
    /// Directory to write `<machine>/etc/gitlab-runner/config.toml` and the rest into;
    /// without it, each machine's delivery is printed.
    #[arg(short = 'o', long = "out")]
    pub(crate) out: Option<PathBuf>,
    /// Only this machine: its cloud name (a template's versioned or plain name), its address
    /// (`manager.NAME`) or a static host's name.
    #[arg(long, value_name = "NAME")]
    pub(crate) machine: Option<String>,
    /// With -o, fill in secret values instead of `(sensitive)`; every referenced secret must
    /// be given. What is printed never holds a value.
    #[arg(long, requires = "out")]
    pub(crate) reveal_secrets: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SimCommand {
    /// Print every instance and template as a JSON array.
    List,
    /// Print API call counts by operation as a JSON object.
    Stats,
    /// Stop an instance (GCE: TERMINATED; EC2: stopped).
    Stop {
        /// Cloud name or id.
        name: String,
    },
    /// Start a stopped instance.
    Start {
        /// Cloud name or id.
        name: String,
    },
    /// Delete an instance or template.
    Delete {
        /// Cloud name or id.
        name: String,
    },
    /// Change one field: machine_type, image, disk_type, disk_size_gb, zone, status,
    /// label.KEY or metadata.KEY (an empty value removes a label).
    Set {
        /// Cloud name or id.
        name: String,
        /// Field.
        field: String,
        /// New value.
        value: String,
    },
    /// Create an instance fleet did not make (no labels).
    Create {
        /// Cloud name.
        name: String,
        /// Zone; decides the cloud (us-east1-c is GCP, us-east-1a is AWS).
        #[arg(long)]
        zone: String,
        /// Machine type.
        #[arg(long)]
        machine_type: String,
    },
}

impl Global {
    /// The options that say where a run points (cloud, simulator and state directories, one
    /// cloud, endpoints, secrets file), as they would be typed, so that a command printed for
    /// the user to run next (`fleet apply PLAN` after `fleet plan -o PLAN`) works as printed.
    pub(crate) fn where_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut push = |flag: &str, value: String| {
            args.push(flag.to_string());
            args.push(shell_word(&value));
        };
        match self.cloud {
            CloudMode::Sim => {
                if self.sim_dir != std::path::Path::new(".fleet/sim") {
                    push("--sim-dir", self.sim_dir.display().to_string());
                }
            }
            CloudMode::Live => push("--cloud", "live".to_string()),
        }
        if let Some(dir) = &self.state_dir {
            push("--state-dir", dir.display().to_string());
        }
        if let Some(only) = self.only_cloud.and_then(|only| only.to_possible_value()) {
            push("--only-cloud", only.get_name().to_string());
        }
        if let Some(url) = &self.aws_endpoint {
            push("--aws-endpoint", url.clone());
        }
        if let Some(url) = &self.gcp_endpoint {
            push("--gcp-endpoint", url.clone());
        }
        if let Some(url) = &self.gcp_secrets_endpoint {
            push("--gcp-secrets-endpoint", url.clone());
        }
        if let Some(file) = &self.secrets_file {
            push("--secrets-file", file.display().to_string());
        }
        args
    }
}

/// A word as a POSIX shell reads it: as it is when it is plain, else in single quotes.
pub(crate) fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}
