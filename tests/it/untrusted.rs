//! Fleet files are untrusted input: a merge request may edit them, and the pipeline's
//! `fleet plan` runs with the cloud's credentials. A fleet file cannot choose where those
//! credentials go.

use std::io::ErrorKind;
use std::net::TcpListener;

use crate::support::Env;

/// A fleet file whose `clouds.SECTION` names `endpoint`.
fn fleet_naming(endpoint: &str) -> String {
    format!(
        "fleet: f
clouds:
  gcp: {{project: p, region: us-east1, endpoint: \"{endpoint}\"}}
  aws: {{region: us-east-1, endpoint: \"{endpoint}\"}}
defaults:
  gcp: {{zone: us-east1-c, image: ubuntu-2204, machine_type: n1-standard-2}}
  aws: {{zone: us-east-1a, image: ami-1, machine_type: m6g.large}}
helpers:
  prometheus-1: {{cloud: gcp}}
  prometheus-2: {{cloud: aws}}
"
    )
}

/// A loopback listener standing for the host a hostile fleet file names; it records whether
/// anything connected.
struct Trap(TcpListener);

impl Trap {
    fn new() -> Trap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener.set_nonblocking(true).expect("non-blocking");
        Trap(listener)
    }

    fn url(&self) -> String {
        format!("http://{}", self.0.local_addr().expect("local address"))
    }

    /// Whether a connection is waiting: the kernel completes the handshake and queues it
    /// even though nobody accepts, so any attempt by fleet is seen here after it exits.
    fn was_contacted(&self) -> bool {
        match self.0.accept() {
            Ok(_) => true,
            Err(error) if error.kind() == ErrorKind::WouldBlock => false,
            Err(error) => panic!("accept: {error}"),
        }
    }
}

#[test]
fn an_endpoint_in_a_fleet_file_is_refused_at_its_line_with_the_flag_to_use() {
    let env = Env::new();
    let file = env.write(
        "hostile.yaml",
        &fleet_naming("http://attacker.example:8080"),
    );
    let run = env.fleet(&["validate", &file]).code(1);
    for (line, flag) in [("3:", "--gcp-endpoint"), ("4:", "--aws-endpoint")] {
        assert!(
            run.stderr.contains(&format!("[hostile.yaml:{line}")),
            "no diagnostic on line {line}:\n{}",
            run.stderr
        );
        assert!(
            run.stderr.contains(flag),
            "the help names {flag}:\n{}",
            run.stderr
        );
    }
    assert!(
        run.stderr
            .contains("An API endpoint cannot be set in a fleet file"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_fleet_file_cannot_make_fleet_contact_a_host_it_names() {
    let trap = Trap::new();
    // Where the operator's environment points: the only host fleet may reach (also on
    // loopback, so that nothing in this test can leave the machine whatever fleet does).
    let allowed = Trap::new();
    let env = Env::new();
    let file = env.write("hostile.yaml", &fleet_naming(&trap.url()));
    // With live clouds and credentials in the environment: the command that a merge-request
    // pipeline runs.
    for command in ["plan", "apply"] {
        let run = env.fleet_with(
            &["--cloud", "live", command, &file],
            &[
                ("FLEET_GCP_ENDPOINT", allowed.url().as_str()),
                ("AWS_ENDPOINT_URL", allowed.url().as_str()),
                ("FLEET_GCP_ANONYMOUS", "1"),
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ],
        );
        assert_ne!(run.code, 0, "{command} must refuse:\n{}", run.stderr);
        assert!(
            run.stderr
                .contains("An API endpoint cannot be set in a fleet file"),
            "{command}:\n{}",
            run.stderr
        );
    }
    assert!(
        !trap.was_contacted(),
        "fleet connected to the host the fleet file named"
    );
}
