//! The watcher (`fleet-watch` in the bootstrap) run as the machine runs it: extracted from
//! the bootstrap fleet delivered, executed by the real `python3` against a loopback metadata
//! server serving what fleet delivered, with stub `systemctl`, `dpkg-query` and `apt-get` first
//! on `PATH` that record their arguments. On GCE the metadata names each secret and the server
//! serves the machine's access token; the values are read from the Secret Manager test server,
//! which answers only that token. Each impact class the plan shows is checked against
//! the commands the machine runs for it, so plan and machine are shown to agree. On EC2 it runs
//! against a loopback IMDSv2 stub and reads, signed, the parameters fleet wrote to moto.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::loopback::Loopback;
use crate::secret_server::SecretServer;
use crate::support::{secret_value, Env};

const MANAGER: &str = "runners-manager-distribution-com-blue-1";
const ATTRIBUTES: &str = "/computeMetadata/v1/instance/attributes/";
const TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// The access token of the machine's service account, as the metadata server hands it out.
const ACCESS_TOKEN: &str = "ya29.test-machine-token";
/// The project the simulated cloud names secrets under.
const SIM_PROJECT: &str = "simulated";

type Items = Arc<Mutex<BTreeMap<String, String>>>;

/// The GCE metadata server as the watcher sees it: attributes by key, answered only to requests
/// that say `Metadata-Flavor: Google`, as the real one does.
struct MetadataServer {
    items: Items,
    server: Loopback,
    /// Where the machine reads its secret values.
    secrets: SecretServer,
}

async fn attribute(State(items): State<Items>, headers: HeaderMap, uri: Uri) -> Response {
    if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        return (
            StatusCode::FORBIDDEN,
            "Missing Metadata-Flavor:Google header",
        )
            .into_response();
    }
    if uri.path() == TOKEN_PATH {
        let token = serde_json::json!({"access_token": ACCESS_TOKEN, "expires_in": 3599, "token_type": "Bearer"});
        return ([("metadata-flavor", "Google")], axum::Json(token)).into_response();
    }
    let Some(key) = uri.path().strip_prefix(ATTRIBUTES) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match items.lock().unwrap().get(key) {
        Some(value) => ([("metadata-flavor", "Google")], value.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

impl MetadataServer {
    fn start() -> MetadataServer {
        let items = Items::default();
        let app = axum::Router::new()
            .fallback(attribute)
            .with_state(items.clone());
        let secrets = SecretServer::start(SIM_PROJECT);
        secrets.require_token(ACCESS_TOKEN);
        MetadataServer {
            items,
            server: Loopback::serve(app),
            secrets,
        }
    }

    /// Serves `metadata` from now on, in place of what was served before. The values in its
    /// `fleet-secrets` become the latest versions of the secrets it names in Secret Manager;
    /// the metadata served holds the names only, as fleet delivers it.
    fn serve(&self, mut metadata: BTreeMap<String, String>) {
        if let Some(text) = metadata.get("fleet-secrets") {
            let mut delivery: fleet_engine::secrets::Delivery = serde_json::from_str(text).unwrap();
            for (name, value) in std::mem::take(&mut delivery.values) {
                let resource = delivery
                    .names
                    .get(&name)
                    .unwrap_or_else(|| panic!("the metadata does not name secret {name}"));
                self.secrets.put(resource, &value);
            }
            metadata.insert(
                "fleet-secrets".into(),
                serde_json::to_string(&delivery).unwrap(),
            );
        }
        *self.items.lock().unwrap() = metadata;
    }

    fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.server.url())
    }

    fn base_url(&self) -> String {
        format!("{}{ATTRIBUTES}", self.server.url())
    }
}

/// A machine's file system and the commands it was made to run.
pub(crate) struct Machine {
    pub(crate) root: PathBuf,
    pub(crate) bin: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) script: PathBuf,
}

impl Machine {
    /// A scratch machine under `dir` running the watcher found in `bootstrap`.
    pub(crate) fn new(dir: &Path, bootstrap: &str) -> Machine {
        let root = dir.join("machine");
        let bin = dir.join("stub-bin");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        let log = dir.join("commands.log");
        for stub in ["systemctl", "dpkg-query", "apt-get"] {
            let path = bin.join(stub);
            std::fs::write(
                &path,
                format!("#!/bin/sh\necho \"{stub} $*\" >> \"$FLEET_WATCH_TEST_LOG\"\n"),
            )
            .unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let script = dir.join("fleet-watch");
        std::fs::write(&script, watcher_script(bootstrap)).unwrap();
        Machine {
            root,
            bin,
            log,
            script,
        }
    }

    /// Runs the watcher once and returns the commands it ran.
    fn watch(&self, metadata: &MetadataServer) -> Vec<String> {
        let output = self.run(metadata);
        assert!(
            output.status.success(),
            "the watcher failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Runs the watcher once, as it is, whatever comes of it.
    fn run(&self, metadata: &MetadataServer) -> std::process::Output {
        let _ = std::fs::remove_file(&self.log);
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new("python3")
            .arg(&self.script)
            .env("PATH", path)
            .env("FLEET_WATCH_METADATA_URL", metadata.base_url())
            .env("FLEET_WATCH_TOKEN_URL", metadata.token_url())
            .env("FLEET_WATCH_SECRETS_URL", metadata.secrets.endpoint())
            .env("FLEET_WATCH_ROOT", &self.root)
            .env("FLEET_WATCH_TEST_LOG", &self.log)
            .output()
            .expect("run python3")
    }

    fn config_path(&self) -> PathBuf {
        self.root.join("etc/gitlab-runner/config.toml")
    }

    /// config.toml as written, after checking that only its owner can read it.
    fn config(&self) -> String {
        let path = self.config_path();
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{} was not written: {e}", path.display()))
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "config.toml has mode {:o}",
            mode & 0o777
        );
        std::fs::read_to_string(path).unwrap()
    }
}

/// The `fleet-watch` script out of a rendered bootstrap: the block under its `content: |`.
fn watcher_script(bootstrap: &str) -> String {
    let lines: Vec<&str> = bootstrap.lines().collect();
    let at = lines
        .iter()
        .position(|line| line.trim() == "- path: /usr/local/sbin/fleet-watch")
        .expect("the bootstrap has no fleet-watch");
    let content = (at..lines.len())
        .find(|&n| lines[n].trim() == "content: |")
        .expect("fleet-watch has no content");
    let indent = lines[content + 1].len() - lines[content + 1].trim_start().len();
    let mut script = String::new();
    for line in &lines[content + 1..] {
        if !line.trim().is_empty() && line.len() - line.trim_start().len() < indent {
            break;
        }
        script.push_str(line.get(indent..).unwrap_or(""));
        script.push('\n');
    }
    script
}

/// The manager's metadata as the cloud holds it after an apply.
fn delivered(env: &Env) -> BTreeMap<String, String> {
    let objects = env.sim_list();
    let machine = objects
        .iter()
        .find(|o| o["name"] == MANAGER)
        .expect("the manager exists");
    serde_json::from_value(machine["spec"]["metadata"].clone()).unwrap()
}

/// What the metadata server holds: the delivered items with the secret values put back in
/// `fleet-secrets` (discovery strips them; the real server has them).
fn with_values(metadata: BTreeMap<String, String>) -> BTreeMap<String, String> {
    with_values_from(metadata, &secret_value)
}

/// [`with_values`] with the values `value` gives.
fn with_values_from(
    mut metadata: BTreeMap<String, String>,
    value: &dyn Fn(&str) -> String,
) -> BTreeMap<String, String> {
    let mut secrets: serde_json::Value = serde_json::from_str(&metadata["fleet-secrets"]).unwrap();
    let names: Vec<String> = secrets["digests"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    secrets["values"] = names
        .iter()
        .map(|name| (name.clone(), serde_json::Value::from(value(name))))
        .collect::<serde_json::Map<_, _>>()
        .into();
    metadata.insert("fleet-secrets".into(), secrets.to_string());
    metadata
}

/// config.toml as the machine should have it: the delivered file, secrets filled in.
fn resolved(metadata: &BTreeMap<String, String>) -> String {
    let mut text = metadata["gitlab-runner-config"].clone();
    for name in fleet_engine::render::secret_names(&metadata["gitlab-runner-config"]) {
        text = text.replace(&format!("${{secret:{name}}}"), &secret_value(&name));
    }
    assert!(!text.contains("${secret:"), "{text}");
    text
}

/// The impact class of the manager in a JSON plan of `file`.
fn planned_class(env: &Env, file: &str) -> String {
    let plan = env.fleet(&["plan", file, "--format", "json"]).ok().json();
    let change = plan["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == format!("manager.{MANAGER}"))
        .unwrap()
        .clone();
    change["impact"]["class"]
        .as_str()
        .unwrap_or_else(|| panic!("no impact: {change:#}"))
        .to_string()
}

/// A converged distribution fleet, its manager's machine after its first run of the watcher,
/// and the metadata server.
fn converged() -> (Env, Machine, MetadataServer, BTreeMap<String, String>) {
    let env = Env::new();
    env.converge("fleets/distribution.yaml");
    let first = delivered(&env);
    let machine = Machine::new(env.path(), &first["user-data"]);
    let metadata = MetadataServer::start();
    metadata.serve(with_values(first.clone()));
    // A new machine: its bootstrap installed gitlab-runner; the watcher writes the config only.
    assert_eq!(machine.watch(&metadata), Vec::<String>::new());
    assert_eq!(machine.config(), resolved(&first));
    (env, machine, metadata, first)
}

/// Edits the distribution fleet file once and returns the edited file's name.
fn edit(env: &Env, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(env.path().join("fleets/distribution.yaml")).unwrap();
    let edited = text.replacen(from, to, 1);
    assert_ne!(text, edited, "the edit {from:?} did not apply");
    env.write("distribution.yaml", &edited)
}

const NEW_RUNNER: &str = "      - name: distribution-{env}-shell-runner
        executor: shell
        url: \"{env.url}\"
        token: \"${secret:DISTRIBUTION_{env}_AMD64_GCP_TOKEN}\"
      # armv7 (Raspberry Pi)";

#[test]
fn the_machine_carries_out_the_impact_the_plan_shows() {
    let install = |version: &str| {
        vec![
            "systemctl stop gitlab-runner".to_string(),
            format!("apt-get install -y --allow-downgrades --allow-change-held-packages gitlab-runner={version}-1"),
            "systemctl start gitlab-runner".to_string(),
        ]
    };
    for (class, from, to, commands) in [
        // Adding a runner: the plan says reload, and the machine restarts nothing.
        ("reload", "      # armv7 (Raspberry Pi)", NEW_RUNNER, vec![]),
        (
            "graceful_restart",
            "log_level: info",
            "log_level: info\n      listen_address: \":9253\"",
            vec!["systemctl restart gitlab-runner".to_string()],
        ),
        (
            "upgrade",
            "version: \"16.11.1\"",
            "version: \"17.0.0\"",
            install("17.0.0"),
        ),
        // 16.9.2 sorts after 16.11.1 as text; as a version it is older.
        (
            "downgrade",
            "version: \"16.11.1\"",
            "version: \"16.9.2\"",
            install("16.9.2"),
        ),
    ] {
        let (env, machine, metadata, _) = converged();
        let file = edit(&env, from, to);
        assert_eq!(planned_class(&env, &file), class);
        // The same words in the text plan and the merge-request comment.
        let words = class.replace('_', " ");
        let text = env.fleet(&["plan", &file]).ok().stdout;
        assert!(text.contains(&format!("impact: {words}")), "{text}");
        let markdown = env
            .fleet(&["plan", &file, "--format", "markdown"])
            .ok()
            .stdout;
        assert!(
            markdown.contains(&format!("<code>manager.{MANAGER}</code>: {words}")),
            "{markdown}"
        );
        env.converge(&file);
        // The delivered decision does not make the fleet look drifted.
        env.fleet(&["plan", &file, "--detailed-exitcode"])
            .unchanged();
        let after = delivered(&env);
        let decision: serde_json::Value = serde_json::from_str(&after["fleet-action"]).unwrap();
        assert_eq!(decision["class"], class, "{decision}");
        metadata.serve(with_values(after.clone()));
        assert_eq!(machine.watch(&metadata), commands, "{class}");
        let config = machine.config();
        assert_eq!(config, resolved(&after), "{class}");
        match class {
            "reload" => assert!(config.contains("distribution-com-shell-runner")),
            "graceful_restart" => assert!(config.contains("listen_address = \":9253\"")),
            _ => {}
        }
        assert!(config.contains(&secret_value("DISTRIBUTION_com_AMD64_GCP_TOKEN")));
        // A decision is carried out once, not at every tick of the timer.
        assert_eq!(machine.watch(&metadata), Vec::<String>::new(), "{class}");
    }
}

#[test]
fn the_gce_watcher_reads_its_secrets_from_secret_manager_with_its_token_and_writes_nothing_without()
{
    let env = Env::new();
    env.converge("fleets/distribution.yaml");
    let first = delivered(&env);
    // The cloud holds the names and digests only.
    let told: fleet_engine::secrets::Delivery =
        serde_json::from_str(&first["fleet-secrets"]).unwrap();
    assert!(told.values.is_empty(), "{told:?}");
    assert!(!told.names.is_empty(), "{told:?}");
    let machine = Machine::new(env.path(), &first["user-data"]);
    let metadata = MetadataServer::start();
    metadata.serve(with_values(first.clone()));
    // Secret Manager does not take the token the machine has: nothing is written, the run
    // fails (the timer tries again), and no value is printed.
    metadata.secrets.require_token("ya29.another-token");
    let refused = machine.run(&metadata);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stdout);
    assert!(
        said.contains("cannot read this machine's secrets: HTTPError 401 reading secret "),
        "{said}"
    );
    assert!(!machine.config_path().exists());
    // With the machine's token, each secret it names is read once and filled in, 0600.
    metadata.secrets.require_token(ACCESS_TOKEN);
    metadata.secrets.reset_calls();
    assert_eq!(machine.watch(&metadata), Vec::<String>::new());
    assert_eq!(machine.config(), resolved(&first));
    assert_eq!(
        metadata.secrets.calls(),
        BTreeMap::from([(
            "secretmanager.versions.access".to_string(),
            told.names.len() as u64
        )])
    );
    // What the machine was seen to call is what `fleet permissions --for manager` grants its
    // service account, no more (Secret Manager's IAM reference: reading a version is
    // `secretmanager.versions.access`).
    let printed = crate::permissions::printed(&env, "fleets/distribution.yaml", "manager", "gcp");
    let granted: Vec<&str> = printed["gcp"]["role"]["includedPermissions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert_eq!(granted, ["secretmanager.versions.access"]);
    // Its binding's condition names the fleet's secrets one by one (which names apply gives
    // them is checked against the live provider in `gcp::a_gce_managers_secrets_…`).
    let conditions = printed["gcp"]["conditions"].as_object().unwrap();
    assert!(!conditions.is_empty(), "{printed:#}");
    for condition in conditions.values() {
        let expression = condition["expression"].as_str().unwrap();
        assert!(
            expression.starts_with("resource.name == \"projects/PROJECT_NUMBER/secrets/fleet-"),
            "{expression}"
        );
    }
    // A decision carried out already reads no secret at the next tick.
    metadata.secrets.reset_calls();
    assert_eq!(machine.watch(&metadata), Vec::<String>::new());
    assert_eq!(metadata.secrets.calls(), BTreeMap::new());
}

#[test]
fn a_half_delivered_update_does_nothing() {
    let (env, machine, metadata, first) = converged();
    let file = edit(
        &env,
        "log_level: info",
        "log_level: info\n      listen_address: \":9253\"",
    );
    env.converge(&file);
    let after = delivered(&env);
    // The new decision has arrived, the config it goes with has not.
    let mut half = after.clone();
    half.insert(
        "gitlab-runner-config".into(),
        first["gitlab-runner-config"].clone(),
    );
    metadata.serve(with_values(half));
    assert_eq!(machine.watch(&metadata), Vec::<String>::new());
    assert_eq!(machine.config(), resolved(&first));
    // The new config without its decision: the old decision names the old config.
    let mut half = after.clone();
    half.insert("fleet-action".into(), first["fleet-action"].clone());
    metadata.serve(with_values(half));
    assert_eq!(machine.watch(&metadata), Vec::<String>::new());
    assert_eq!(machine.config(), resolved(&first));
    // Once all of it is there, it is carried out.
    metadata.serve(with_values(after.clone()));
    assert_eq!(
        machine.watch(&metadata),
        ["systemctl restart gitlab-runner"]
    );
    assert_eq!(machine.config(), resolved(&after));
}

#[test]
fn the_watcher_runs_on_the_images_python() {
    let env = Env::new();
    env.converge("fleets/distribution.yaml");
    let script = env.write(
        "fleet-watch",
        &watcher_script(&delivered(&env)["user-data"]),
    );
    // `3.10-`: nothing the script uses needs a Python newer than Ubuntu 22.04's.
    let vermin = |file: &str| {
        Command::new("vermin")
            .args(["--target=3.10-", "--no-tips", "--violations", file])
            .current_dir(env.path())
            .output()
    };
    let checked =
        vermin(&script).expect("vermin is not installed: `pip install vermin` (CI's .ci/run does)");
    assert!(
        checked.status.success(),
        "the watcher needs a Python newer than 3.10:\n{}",
        String::from_utf8_lossy(&checked.stdout)
    );
    // The check catches what broke the watcher before: tomllib is Python 3.11.
    let old = env.write("old-watch.py", "import tomllib\n");
    assert!(!vermin(&old).unwrap().status.success());
}

#[test]
fn a_rotated_secret_is_written_in_without_a_restart() {
    let (env, machine, metadata, _) = converged();
    let rotated = |name: &str| {
        if name == "DISTRIBUTION_com_AMD64_GCP_TOKEN" {
            "glrt-rotated-value".to_string()
        } else {
            secret_value(name)
        }
    };
    let lines: String = crate::support::secret_names()
        .iter()
        .map(|name| format!("{name}={}\n", rotated(name)))
        .collect();
    env.write("rotated.env", &lines);
    let with_rotated = [("FLEET_SECRETS_FILE", "rotated.env")];
    let plan = env
        .fleet_with(
            &["plan", "fleets/distribution.yaml", "--format", "json"],
            &with_rotated,
        )
        .ok()
        .json();
    let change = plan["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == format!("manager.{MANAGER}"))
        .unwrap()
        .clone();
    assert_eq!(change["impact"]["class"], "reload", "{change:#}");
    env.fleet_with(
        &["apply", "fleets/distribution.yaml", "--auto-approve"],
        &with_rotated,
    )
    .verified();
    metadata.serve(with_values_from(delivered(&env), &rotated));
    assert_eq!(machine.watch(&metadata), Vec::<String>::new());
    let config = machine.config();
    assert!(config.contains("glrt-rotated-value"), "{config}");
    assert!(!config.contains(&secret_value("DISTRIBUTION_com_AMD64_GCP_TOKEN")));
}

/// IMDSv2 as an EC2 instance's watcher sees it: a session token for a `PUT` that asks for one,
/// and the instance's id, region and role credentials only to requests that carry it.
pub(crate) async fn imds(
    State(id): State<Arc<String>>,
    headers: HeaderMap,
    method: axum::http::Method,
    uri: Uri,
) -> Response {
    const TOKEN: &str = "imds-session-token";
    if uri.path() == "/latest/api/token" {
        if method != axum::http::Method::PUT
            || !headers.contains_key("x-aws-ec2-metadata-token-ttl-seconds")
        {
            return StatusCode::BAD_REQUEST.into_response();
        }
        return TOKEN.into_response();
    }
    if headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok())
        != Some(TOKEN)
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let credentials = serde_json::json!({
        "Code": "Success",
        "AccessKeyId": "test",
        "SecretAccessKey": "test",
        "Token": "instance-session",
    });
    match uri.path() {
        "/latest/meta-data/instance-id" => id.to_string().into_response(),
        "/latest/meta-data/placement/region" => "us-east-1".into_response(),
        "/latest/meta-data/iam/security-credentials/" => "fleet-runner".into_response(),
        "/latest/meta-data/iam/security-credentials/fleet-runner" => {
            credentials.to_string().into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

#[test]
fn the_ec2_watcher_reads_its_parameters_with_its_role_and_carries_out_the_decision() {
    let moto = crate::aws::Moto::start();
    let env = crate::aws::env_for(&moto);
    let ec2 = crate::aws::Ec2::new(&moto);
    let secret = "glrt-ec2-watcher-s3cr3t";
    env.add_secret("DELIVERY_TOKEN", secret);
    let fleet = crate::aws::manager_with_secret_file("watched");
    let file = env.write("watched.yaml", &fleet);
    crate::aws::converge(&env, &file);
    let id = ec2.alive("watched")[0].id.clone();
    let machine = ec2_machine(env.path(), &ec2, &id);
    let server = Loopback::serve(
        axum::Router::new()
            .fallback(imds)
            .with_state(Arc::new(id.clone())),
    );
    let run_watcher = || {
        let _ = std::fs::remove_file(&machine.log);
        let path = format!(
            "{}:{}",
            machine.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new("python3")
            .arg(&machine.script)
            .env("PATH", path)
            .env("FLEET_WATCH_IMDS_URL", server.url())
            .env("FLEET_WATCH_SSM_URL", &moto.url)
            .env("FLEET_WATCH_ROOT", &machine.root)
            .env("FLEET_WATCH_TEST_LOG", &machine.log)
            .output()
            .expect("run python3")
    };
    let watch = || {
        let output = run_watcher();
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success(),
            "the watcher failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!stdout.contains("cannot read"), "{stdout}");
        std::fs::read_to_string(&machine.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<String>>()
    };
    // A new machine: config.toml is written, secret filled in, and nothing restarted.
    let (commands, requests) = moto.ssm_requests_during(watch);
    assert_eq!(commands, Vec::<String>::new());
    // Two signed reads of its own parameters by name, decrypted, with the role's session
    // token: its index, then exactly what the index names (1 + ceil(parameters / 10) calls),
    // so it never asks for one it does not have (IAM would refuse the whole call). No path
    // listing. Each signature is the one botocore computes for the same request.
    let prefix = format!("/fleet/watched/{id}/");
    let named: Vec<Vec<String>> = requests
        .iter()
        .map(|(target, body, _)| {
            assert_eq!(target, "GetParameters", "{body}");
            assert_eq!(body["WithDecryption"], true);
            body["Names"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| {
                    n.as_str()
                        .unwrap()
                        .strip_prefix(&prefix)
                        .unwrap()
                        .to_string()
                })
                .collect()
        })
        .collect();
    assert_eq!(
        named,
        [
            vec!["index"],
            vec![
                "action",
                "config.toml",
                "secret-digests",
                "secrets/DELIVERY_TOKEN",
                "version"
            ]
        ],
        "{requests:?}"
    );
    for (_, _, request) in &requests {
        assert_eq!(
            header(request, "x-amz-security-token").as_deref(),
            Some("instance-session")
        );
        assert_eq!(
            signature(request),
            botocore_signature(request),
            "{request:#}"
        );
    }
    let config = machine.config();
    assert!(
        config.contains(&format!("token = \"{secret}\"")),
        "{config}"
    );
    assert!(config.contains("concurrent = 4"), "{config}");
    assert!(!config.contains("${secret:"), "{config}");
    // A `concurrent` change: reload, the same machine, nothing restarted.
    let file = env.write(
        "watched.yaml",
        &fleet.replace("concurrent: 4", "concurrent: 5"),
    );
    crate::aws::converge(&env, &file);
    assert_eq!(ec2.alive("watched")[0].id, id);
    assert_eq!(watch(), Vec::<String>::new());
    let config = machine.config();
    assert!(config.contains("concurrent = 5"), "{config}");
    assert!(config.contains(secret), "{config}");
    // Carried out once.
    assert_eq!(watch(), Vec::<String>::new());
    // A new listen address: a graceful restart.
    let file = env.write(
        "watched.yaml",
        &fleet.replace("concurrent: 4", "concurrent: 5, listen_address: \":9253\""),
    );
    crate::aws::converge(&env, &file);
    assert_eq!(ec2.alive("watched")[0].id, id);
    assert_eq!(watch(), ["systemctl restart gitlab-runner"]);
    let config = machine.config();
    assert!(config.contains("listen_address = \":9253\""), "{config}");
    assert!(config.contains(secret), "{config}");
    // A parameter its index names is gone (an apply interrupted, a hand at the console): the
    // watcher asks for exactly what the index names, writes nothing from the partial read,
    // and fails, to be run again; the next apply puts the parameter back.
    let file = env.write(
        "watched.yaml",
        &fleet.replace("concurrent: 4", "concurrent: 6, listen_address: \":9253\""),
    );
    crate::aws::converge(&env, &file);
    let ssm = crate::aws::ssm_client(&moto);
    ec2.runtime
        .block_on(
            ssm.delete_parameter()
                .name(format!("/fleet/watched/{id}/config.toml"))
                .send(),
        )
        .expect("DeleteParameter");
    let output = run_watcher();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("fleet-watch: parameters not there yet: config.toml"),
        "{stdout}"
    );
    assert!(
        machine.config().contains("concurrent = 5"),
        "written from a partial read"
    );
    crate::aws::converge(&env, &file);
    assert_eq!(ec2.alive("watched")[0].id, id);
    // Put back as a change from no config at all, the plan's class for it (a restart).
    assert_eq!(watch(), ["systemctl restart gitlab-runner"]);
    assert!(machine.config().contains("concurrent = 6"));
}

/// The EC2 machine `id` as cloud-init lays it down from the user data EC2 holds for it: its
/// bootstrap (with the watcher) and the file naming the root of its parameters.
pub(crate) fn ec2_machine(dir: &Path, ec2: &crate::aws::Ec2, id: &str) -> Machine {
    let user_data = ec2
        .runtime
        .block_on(
            ec2.client
                .describe_instance_attribute()
                .instance_id(id)
                .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
                .send(),
        )
        .expect("DescribeInstanceAttribute")
        .user_data()
        .and_then(|v| v.value())
        .unwrap()
        .to_string();
    let read = crate::delivery::cloud_init_reads(&user_data);
    let bootstrap = read["parts"][0]["body"].as_str().unwrap().to_string();
    let machine = Machine::new(dir, &bootstrap);
    // What cloud-init laid down from user data: where the parameters are.
    let root_file = machine.root.join("etc/fleet/parameters");
    std::fs::create_dir_all(root_file.parent().unwrap()).unwrap();
    let written = crate::delivery::written(&read, "/etc/fleet/parameters").unwrap();
    std::fs::write(&root_file, written["content"].as_str().unwrap()).unwrap();
    machine
}

/// A header of a recorded request, by name in any case.
fn header(request: &serde_json::Value, name: &str) -> Option<String> {
    request["headers"]
        .as_object()?
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .and_then(|(_, value)| value.as_str().map(str::to_string))
}

/// The `Signature=` of a recorded request's `Authorization` header.
fn signature(request: &serde_json::Value) -> String {
    let authorization = header(request, "authorization").expect("the request is signed");
    authorization
        .rsplit_once("Signature=")
        .map(|(_, signature)| signature.to_string())
        .unwrap_or_default()
}

/// The SigV4 signature botocore computes for a recorded request: the same headers it signed,
/// the same time, the credentials the IMDS stub hands out.
fn botocore_signature(request: &serde_json::Value) -> String {
    const SIGN: &str = r#"
import json, sys
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
entry = json.load(sys.stdin)
headers = {k.lower(): v for k, v in entry["headers"].items()}
signed = headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
request = AWSRequest(method=entry["method"], url=entry["url"], data=entry["body"].encode(), headers={k: headers[k] for k in signed})
auth = SigV4Auth(Credentials("test", "test", "instance-session"), "ssm", "us-east-1")
request.context["timestamp"] = headers["x-amz-date"]
canonical = auth.canonical_request(request)
print(auth.signature(auth.string_to_sign(request, canonical), request))
"#;
    use std::io::Write;
    let mut python = Command::new("python3")
        .args(["-c", SIGN])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    python
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let output = python.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "botocore could not sign: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}
