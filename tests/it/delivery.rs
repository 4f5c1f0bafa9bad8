//! Deliveries: what each machine is sent, read back as cloud-init reads it.
//!
//! The golden deliveries of every machine of every fleet in `fleets/` (`plans/delivery/`,
//! rewritten with `FLEET_BLESS=1`), each EC2 document split and merged by cloud-init's own
//! code and checked by `cloud-init schema`, the size diagnostic at the machine's line, and
//! `fleet render`, which shows each machine the delivery its golden copy holds.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use fleet_engine::provider::{Cloud, ObjectKind};
use fleet_engine::render::delivery;

use crate::support::{golden, repo, Env};

/// Reads user data the way cloud-init 22.4 does on first boot: base64 as EC2 returns it,
/// then cloud-init's `UserDataProcessor` (which gunzips and splits the MIME parts) and its
/// cloud-config handler (which merges the parts by their `Merge-Type`). Prints JSON: the
/// document as cloud-init saw it, each part (type, headers, body) and the merged config.
const CLOUD_INIT_READER: &str = r#"
import base64, json, sys, tempfile
from cloudinit import handlers, user_data, util
from cloudinit.handlers.cloud_config import CloudConfigPartHandler

class Paths:
    # The two lookups the processor and the handler make, pointed at scratch places.
    def __init__(self, path):
        self.path = path
    def get_ipath(self, name=None):
        return self.path
    def get_ipath_cur(self, name=None):
        return self.path
    def get_cpath(self, name=None):
        return tempfile.mkdtemp()

blob = base64.b64decode(sys.stdin.read())
document = util.decomp_gzip(blob, quiet=True)
out = tempfile.NamedTemporaryFile(suffix=".yaml", delete=False).name
message = user_data.UserDataProcessor(Paths(out)).process(blob)
handler = CloudConfigPartHandler(Paths(out))
handler.handle_part(None, handlers.CONTENT_START, None, None, None, None)
parts = []
for part in message.walk():
    if part.get_content_maintype() == "multipart":
        continue
    body = part.get_payload(decode=True).decode()
    parts.append({"type": part.get_content_type(), "headers": dict(part.items()), "body": body})
    if part.get_content_type() == "text/cloud-config":
        handler.handle_part(None, "text/cloud-config", part.get_filename() or "", body, None, dict(part.items()))
print(json.dumps({
    "gzip": blob[:2] == b"\x1f\x8b",
    "document": document if isinstance(document, str) else document.decode(),
    "parts": parts,
    "merged": handler.cloud_buf,
}))
"#;

/// The Python that runs cloud-init: the interpreter its own command starts with.
fn cloud_init_python() -> String {
    let found = Command::new("sh")
        .args(["-c", "command -v cloud-init"])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
    assert!(
        !path.is_empty(),
        "cloud-init is not installed: `apt-get install cloud-init` (CI's .ci/run does)"
    );
    let script = std::fs::read_to_string(&path).unwrap();
    let shebang = script.lines().next().unwrap_or_default();
    let interpreter = shebang.trim_start_matches("#!").trim();
    // `#!/usr/bin/env python3` names no interpreter of its own: take python3 from PATH then.
    match interpreter.strip_prefix("/usr/bin/env ") {
        Some(name) => name.trim().to_string(),
        None => interpreter.to_string(),
    }
}

/// EC2 user data (base64, as sent and as `DescribeInstanceAttribute` returns it) read by
/// cloud-init: see [`CLOUD_INIT_READER`].
pub(crate) fn cloud_init_reads(user_data_base64: &str) -> serde_json::Value {
    let mut python = Command::new(cloud_init_python())
        .args(["-c", CLOUD_INIT_READER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cloud-init's python");
    use std::io::Write;
    python
        .stdin
        .take()
        .unwrap()
        .write_all(user_data_base64.as_bytes())
        .unwrap();
    let output = python.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "cloud-init could not read the user data: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the reader's JSON")
}

/// The problems `cloud-init schema` has with one cloud-config document (empty: none).
pub(crate) fn schema_problems(dir: &Path, name: &str, document: &str) -> Vec<String> {
    let file = dir.join(name);
    std::fs::write(&file, document).unwrap();
    let result = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&file)
        .output()
        .expect("cloud-init schema");
    if result.status.success() {
        Vec::new()
    } else {
        vec![format!(
            "cloud-init schema rejects {name}:\n{}{}\n{document}",
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        )]
    }
}

/// Every cloud-config part, and the config merged from them, checked by `cloud-init schema`.
pub(crate) fn schema_problems_of_read(
    dir: &Path,
    name: &str,
    read: &serde_json::Value,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (index, part) in read["parts"].as_array().unwrap().iter().enumerate() {
        assert_eq!(part["type"], "text/cloud-config", "{name}: {part}");
        problems.extend(schema_problems(
            dir,
            &format!("{name}.part-{index}.yaml"),
            part["body"].as_str().unwrap(),
        ));
    }
    let merged = format!(
        "#cloud-config\n{}",
        serde_json::to_string_pretty(&read["merged"]).unwrap()
    );
    problems.extend(schema_problems(
        dir,
        &format!("{name}.merged.yaml"),
        &merged,
    ));
    problems
}

/// A `write_files` entry of a merged config by path.
pub(crate) fn written<'a>(
    read: &'a serde_json::Value,
    path: &str,
) -> Option<&'a serde_json::Value> {
    read["merged"]["write_files"]
        .as_array()?
        .iter()
        .find(|entry| entry["path"] == path)
}

/// Standard base64, as EC2 takes user data.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (index, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            out.push(if index <= chunk.len() {
                char::from(ALPHABET[((n >> shift) & 63) as usize])
            } else {
                '='
            });
        }
    }
    out
}

/// A machine's GCE metadata as a golden text: each item under its key.
fn gce_golden(metadata: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (key, value) in metadata {
        out.push_str(&format!(
            "==> metadata item `{key}` ({} bytes)\n",
            value.len()
        ));
        out.push_str(value);
        if !value.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

#[test]
fn golden_deliveries_of_every_machine_match_and_cloud_init_reads_the_ec2_ones() {
    let scratch = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut ec2_machines = 0;
    let mut fleets: Vec<String> = std::fs::read_dir(repo().join("fleets"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".yaml")
                .map(str::to_string)
        })
        .collect();
    fleets.sort();
    for fleet in &fleets {
        let path = format!("fleets/{fleet}.yaml");
        let text = std::fs::read_to_string(repo().join(&path)).unwrap();
        let desired = fleet_engine::spec::compile(&path, &text)
            .unwrap_or_else(|invalid| panic!("{path} does not compile: {invalid:?}"));
        let mut expected_files = Vec::new();
        for resource in desired.resources.values() {
            let metadata = &resource.spec.metadata;
            if metadata.is_empty() {
                continue;
            }
            let (file, text) = match resource.cloud {
                Cloud::Aws => {
                    // An instance is sent its bootstrap and parameter root; its files are
                    // parameters. A launch template's machines get the files in user data.
                    let (document, sent) = match resource.object {
                        ObjectKind::Instance => {
                            let root = delivery::parameter_root(&desired.fleet);
                            (
                                delivery::ec2_instance_document(metadata, &root).unwrap(),
                                delivery::ec2_instance_user_data(metadata, &root).unwrap(),
                            )
                        }
                        ObjectKind::InstanceTemplate => (
                            delivery::ec2_document(metadata).unwrap(),
                            delivery::ec2_user_data(metadata).unwrap(),
                        ),
                    };
                    let read = cloud_init_reads(&base64(&sent));
                    assert_eq!(
                        read["document"],
                        document.as_str(),
                        "{}",
                        resource.cloud_name
                    );
                    failures.extend(schema_problems_of_read(
                        scratch.path(),
                        &resource.cloud_name,
                        &read,
                    ));
                    ec2_machines += 1;
                    (format!("{}.ec2-user-data", resource.cloud_name), document)
                }
                Cloud::Gcp => (
                    format!("{}.gce-metadata", resource.cloud_name),
                    gce_golden(metadata),
                ),
            };
            assert!(
                !text.contains("glrt-"),
                "a secret value in the delivery of {}",
                resource.cloud_name
            );
            golden(
                &format!("plans/delivery/{fleet}/{file}"),
                &text,
                &mut failures,
            );
            expected_files.push(file);
        }
        // A golden file of a machine that is gone is stale, not a pass.
        let dir = repo().join("plans/delivery").join(fleet);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !expected_files.contains(&name) {
                if std::env::var_os("FLEET_BLESS").is_some() {
                    std::fs::remove_file(entry.path()).unwrap();
                } else {
                    failures.push(format!(
                        "plans/delivery/{fleet}/{name} is no machine's delivery"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The 4 arm builders of arm-builders.
    assert_eq!(ec2_machines, 4);
}

/// An EC2 runner manager whose config.toml gzip cannot bring under 16 KB: runners whose
/// names are hash digits.
fn oversized_file(runners: usize) -> String {
    let mut text = String::from(
        "fleet: big
clouds:
  aws: { region: us-east-1 }
defaults:
  aws:
    zone: us-east-1a
    image: ami-0c9f35b1b63e7d2a4
    disk: { type: gp3, size_gb: 100 }
managers:
  big-manager-{n}:
    matrix: { count: 1 }
    cloud: aws
    machine_type: m6g.large
    runner: { version: \"16.11.1\" }
    runners:
",
    );
    let mut name = String::from("seed");
    for _ in 0..runners {
        name = fleet_engine::desired::short_hash(&[&name]);
        text.push_str(&format!(
            "      - {{ name: r-{name}, executor: shell, url: \"https://gitlab.com/{name}\" }}\n"
        ));
    }
    text
}

#[test]
fn ec2_user_data_too_large_even_gzipped_is_a_diagnostic_at_the_machine() {
    let env = Env::new();
    let file = env.write("big.yaml", &oversized_file(600));
    let run = env.fleet(&["validate", &file]).code(1);
    let stderr = &run.stderr;
    // The machine's name is on line 10 of the file.
    assert!(
        stderr.contains("[big.yaml:10:"),
        "not located at the machine:\n{stderr}"
    );
    assert!(
        stderr.contains("The SSM parameter `config.toml` of big-manager-1 is too large"),
        "{stderr}"
    );
    assert!(
        stderr.contains("an Advanced SSM parameter holds at most 8192 bytes"),
        "{stderr}"
    );
    // Fewer runners fit one Advanced parameter: the same file validates.
    let file = env.write("fits.yaml", &oversized_file(40));
    env.fleet(&["validate", &file]).ok();
}

/// An EC2 runner manager whose runner token is a secret.
const EC2_MANAGER: &str = "fleet: boot
clouds:
  aws: { region: us-east-1 }
defaults:
  aws:
    zone: us-east-1a
    image: ami-0c9f35b1b63e7d2a4
    disk: { type: gp3, size_gb: 100 }
managers:
  boot-manager-{n}:
    matrix: { count: 1 }
    cloud: aws
    machine_type: m6g.large
    runner: { version: \"16.11.1\" }
    runners:
      - name: boot-shell
        executor: shell
        url: https://gitlab.example.com
        token: \"${secret:BOOT_TOKEN}\"
";

#[test]
fn an_ec2_managers_user_data_holds_references_only_and_its_watcher_runs_on_the_images_python() {
    let desired = fleet_engine::spec::compile("boot.yaml", EC2_MANAGER).unwrap();
    let manager = desired.resources.values().next().unwrap();
    // What apply sends: the files and the secret values the config references.
    let values: BTreeMap<String, String> = [(
        "BOOT_TOKEN".to_string(),
        "glrt-boot-value 'quoted'".to_string(),
    )]
    .into();
    let mut metadata = manager.spec.metadata.clone();
    let secrets = fleet_engine::secrets::delivery("boot", &metadata, &values).unwrap();
    metadata.insert(
        fleet_engine::render::SECRETS.to_string(),
        serde_json::to_string(&secrets).unwrap(),
    );
    let sent = delivery::ec2_instance_user_data(&metadata, "/fleet/boot/").unwrap();
    let read = cloud_init_reads(&base64(&sent));
    let document = read["document"].as_str().unwrap();
    assert!(!document.contains("glrt-boot-value"), "{document}");
    assert!(written(&read, "/etc/gitlab-runner/config.toml").is_none());
    assert!(written(&read, "/etc/fleet/secrets.json").is_none());
    assert_eq!(
        written(&read, "/etc/fleet/parameters").unwrap()["content"],
        "/fleet/boot/"
    );
    // The value goes to its SecureString parameter only.
    let parameters = delivery::parameters(&metadata);
    let holding: Vec<(&str, bool)> = parameters
        .iter()
        .filter(|p| p.value.contains("glrt-boot-value"))
        .map(|p| (p.name.as_str(), p.secure))
        .collect();
    assert_eq!(holding, [("secrets/BOOT_TOKEN", true)]);
    let watcher = written(&read, "/usr/local/sbin/fleet-watch").expect("the watcher is laid down");
    let scratch = tempfile::tempdir().unwrap();
    let script = scratch.path().join("fleet-watch");
    std::fs::write(&script, watcher["content"].as_str().unwrap()).unwrap();
    // `3.10-`: nothing the script uses needs a Python newer than Ubuntu 22.04's.
    let checked = Command::new("vermin")
        .args(["--target=3.10-", "--no-tips", "--violations"])
        .arg(&script)
        .output()
        .expect("vermin is not installed: `pip install vermin` (CI's .ci/run does)");
    assert!(
        checked.status.success(),
        "the EC2 watcher needs a Python newer than 3.10:\n{}",
        String::from_utf8_lossy(&checked.stdout)
    );
    let problems = schema_problems_of_read(scratch.path(), "boot", &read);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn fleet_render_shows_each_machines_delivery_as_its_golden_copy_holds_it() {
    let env = Env::new();
    // An EC2 instance: its user-data document, exactly the golden delivery, sent as it is.
    let run = env
        .fleet(&[
            "render",
            "fleets/arm-builders.yaml",
            "--machine",
            "arm-builder-1",
        ])
        .ok();
    let golden_document = std::fs::read_to_string(
        repo().join("plans/delivery/arm-builders/arm-builder-1.ec2-user-data"),
    )
    .unwrap();
    let header = format!(
        "==> arm-builder-1 (pool.arm-builder-1, EC2 instance) <==\n==> user data ({} bytes, sent as it is)\n",
        golden_document.len()
    );
    assert_eq!(run.stdout, format!("{header}{golden_document}"));
    // A GCE instance: every metadata item as the golden delivery holds it; its secrets are
    // named, and their values (set in this run's secrets file) appear nowhere.
    let machine = "runners-manager-distribution-com-blue-1";
    let run = env
        .fleet(&["render", "fleets/distribution.yaml", "--machine", machine])
        .ok();
    let golden_items = std::fs::read_to_string(repo().join(format!(
        "plans/delivery/distribution/{machine}.gce-metadata"
    )))
    .unwrap();
    assert!(
        run.stdout.starts_with(&format!(
            "==> {machine} (manager.{machine}, GCE instance) <==\n{golden_items}"
        )),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains(
        "==> metadata item `fleet-secrets`: written by apply, the digests of DISTRIBUTION_com_AMD64_GCP_TOKEN, DISTRIBUTION_com_ARM64_AWS_TOKEN, DISTRIBUTION_com_ARM64_GCP_TOKEN and the names of the Secret Manager secrets holding their values (no value)\n"
    ));
    assert!(run
        .stdout
        .contains("token = \"${secret:DISTRIBUTION_com_AMD64_GCP_TOKEN}\""));
    // Every machine of the fleet, in order of name, and no secret value even when asked for
    // without `-o`.
    let all = env.fleet(&["render", "fleets/distribution.yaml"]).ok();
    let headers: Vec<&str> = all.stdout.lines().filter(|l| l.ends_with(" <==")).collect();
    assert_eq!(
        headers,
        [
            "==> runners-manager-distribution-com-blue-1 (manager.runners-manager-distribution-com-blue-1, GCE instance) <==",
            "==> runners-manager-distribution-dev-blue-1 (manager.runners-manager-distribution-dev-blue-1, GCE instance) <==",
        ]
    );
    assert!(!all.stdout.contains("glrt-"), "{}", all.stdout);
    // `--reveal-secrets` fills in files written with `-o` only: what is printed never.
    let revealed = env
        .fleet(&["render", "fleets/distribution.yaml", "--reveal-secrets"])
        .code(1);
    assert!(!revealed.stdout.contains("glrt-"));
    // A name the fleet does not have is refused with the names it has.
    let unknown = env
        .fleet(&[
            "render",
            "fleets/arm-builders.yaml",
            "--machine",
            "arm-builder-9",
        ])
        .code(1);
    assert!(
        unknown
            .stderr
            .contains("no machine `arm-builder-9` in this fleet file")
            && unknown.stderr.contains("arm-builder-1, arm-builder-2"),
        "{}",
        unknown.stderr
    );
    // A template the fleet has is sent nothing, and is told as such.
    let template = env
        .fleet(&[
            "render",
            "fleets/distribution.yaml",
            "--machine",
            "amd64-gcp",
        ])
        .code(1);
    assert!(
        template
            .stderr
            .contains("`amd64-gcp` (template.amd64-gcp) is sent nothing"),
        "{}",
        template.stderr
    );
}

#[test]
fn fleet_render_shows_an_ec2_managers_parameters_by_name_and_tier_and_its_secrets_as_sensitive() {
    let env = Env::new();
    let file = env.write("boot.yaml", EC2_MANAGER);
    let run = env
        .fleet_with(
            &["render", &file, "--machine", "manager.boot-manager-1"],
            &[("FLEET_SECRET_BOOT_TOKEN", "glrt-boot-value")],
        )
        .ok();
    let desired = fleet_engine::spec::compile("boot.yaml", EC2_MANAGER).unwrap();
    let manager = desired.resources.values().next().unwrap();
    let metadata = &manager.spec.metadata;
    let document = delivery::ec2_instance_document(metadata, "/fleet/boot/").unwrap();
    let config = &metadata[fleet_engine::render::RUNNER_CONFIG];
    let bootstrap = &metadata[fleet_engine::render::USER_DATA];
    let expected = format!(
        "==> boot-manager-1 (manager.boot-manager-1, EC2 instance) <==
==> user data ({} bytes, sent as it is)
{document}==> SSM parameters under /fleet/boot/<instance id>/ (6)
==> parameter `config.toml` (String, Standard, {} bytes)
{config}==> parameter `version` (String, Standard, 7 bytes)
16.11.1
==> parameter `secrets/BOOT_TOKEN` (SecureString, tier by its value's size): (sensitive), written by apply
==> parameter `secret-digests` (String): the secrets' salted digests, written by apply
==> parameter `bootstrap.sha256` (String, Standard, 64 bytes)
{}
==> parameter `index` (String): the names the watcher reads (and `action` where apply writes one), written last by apply
[\"config.toml\",\"secret-digests\",\"secrets/BOOT_TOKEN\",\"version\"]
==> parameter `action`: written by each apply that changes the machine, the decision its plan shows
",
        document.len(),
        config.len(),
        delivery::bootstrap_digest(bootstrap),
    );
    assert_eq!(run.stdout, expected);
    assert!(config.contains("${secret:BOOT_TOKEN}"));
    assert!(!run.stdout.contains("glrt-boot-value"));
}
