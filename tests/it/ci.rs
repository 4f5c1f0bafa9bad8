//! `fleet ci` against the loopback GitLab server (`gitlab_server.rs`), asserting the requests
//! it receives; `fleet apply --expect-changes` on the simulated cloud; and the example
//! pipeline `examples/gitlab-ci.yml`, loaded with the tree's YAML parser.

use crate::gitlab_server::{GitLabServer, Recorded, FLEET_USER, MERGE_REQUEST, PROJECT};
use crate::support::{repo, Env, Run};

/// The token the server accepts: distinctive, so a leak is found by searching for it.
const TOKEN: &str = "glpat-T0k3n-n3v3r-pr1nt3d";

const ARM: &str = "fleets/arm-builders.yaml";
const DISTRIBUTION: &str = "fleets/distribution.yaml";

/// GitLab CI's variables for a merge-request pipeline of `server`.
fn ci_env(server: &GitLabServer) -> Vec<(String, String)> {
    vec![
        ("CI_API_V4_URL".to_string(), server.api_url()),
        ("CI_PROJECT_ID".to_string(), PROJECT.to_string()),
        (
            "CI_MERGE_REQUEST_IID".to_string(),
            MERGE_REQUEST.to_string(),
        ),
        ("GITLAB_TOKEN".to_string(), TOKEN.to_string()),
        ("CI_JOB_TOKEN".to_string(), String::new()),
    ]
}

/// Runs `fleet ARGS` with `vars` and asserts the token is in neither output stream.
fn run(env: &Env, args: &[&str], vars: &[(String, String)]) -> Run {
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let run = env.fleet_with(args, &vars);
    assert!(
        ![&run.stdout, &run.stderr].iter().any(|output| {
            let joined: String = output
                .chars()
                .filter(|c| !c.is_whitespace() && *c != '│')
                .collect();
            joined.contains(TOKEN)
        }),
        "the token was printed by `fleet {}`:\n{}\n{}",
        run.args,
        run.stdout,
        run.stderr
    );
    run
}

/// Saves a plan of `file` as `out` and returns its changes digest (`fleet ci digest`).
fn save_plan(env: &Env, file: &str, out: &str) -> String {
    env.fleet(&["plan", file, "-o", out]).ok();
    env.fleet(&["ci", "digest", out])
        .ok()
        .stdout
        .trim()
        .to_string()
}

/// Whether a diagnostic holds `text`, whatever the lines it was wrapped into (miette wraps
/// at spaces and after hyphens), compared without whitespace and frame characters.
fn has(output: &str, text: &str) -> bool {
    let flat = |t: &str| -> String {
        t.chars()
            .filter(|c| !c.is_whitespace() && *c != '│')
            .collect()
    };
    flat(output).contains(&flat(text))
}

/// `METHOD PATH` of each request, without the API prefix.
fn lines(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .map(|r| r.line().replace("/api/v4", ""))
        .collect()
}

fn writes(requests: &[Recorded]) -> Vec<String> {
    lines(requests)
        .into_iter()
        .filter(|line| line.starts_with("POST") || line.starts_with("PUT"))
        .collect()
}

fn plan_id(env: &Env, plan: &str) -> String {
    let text = std::fs::read_to_string(env.path().join(plan)).expect("saved plan");
    let value: serde_json::Value = serde_json::from_str(&text).expect("plan JSON");
    value["plan_id"].as_str().expect("plan_id").to_string()
}

#[test]
fn the_note_is_created_then_updated_in_place_then_left_alone_when_unchanged() {
    let server = GitLabServer::start(TOKEN);
    let env = Env::new();
    let vars = ci_env(&server);
    let first_digest = save_plan(&env, ARM, "first.json");

    let posted = run(&env, &["ci", "comment", "first.json"], &vars).ok();
    assert!(posted.stdout.contains("Posted note"), "{}", posted.stdout);
    let notes = server.notes(MERGE_REQUEST);
    assert_eq!(notes.len(), 1);
    let note = &notes[0];
    assert!(note
        .body
        .starts_with("<!-- fleet:plan-note file=fleets/arm-builders.yaml -->\n"));
    // The visible line shows the plan id and the changes digest.
    let visible = note.body.lines().nth(2).expect("visible line");
    assert!(visible.contains(&plan_id(&env, "first.json")), "{visible}");
    assert!(visible.contains(&first_digest), "{visible}");
    // The plan itself follows, its pool as one row.
    assert!(
        note.body.contains("4 to create: arm-builder-1 to -4"),
        "{}",
        note.body
    );
    let requests = server.requests();
    assert_eq!(
        lines(&requests),
        [
            "GET /user".to_string(),
            format!("GET /projects/{PROJECT}/merge_requests/{MERGE_REQUEST}/notes"),
            format!("POST /projects/{PROJECT}/merge_requests/{MERGE_REQUEST}/notes"),
        ]
    );
    assert!(requests.iter().all(|r| r.token.as_deref() == Some(TOKEN)));

    // A second push: the fleet is applied in between, so the plan differs.
    env.converge(ARM);
    let second_digest = save_plan(&env, ARM, "second.json");
    assert_ne!(first_digest, second_digest);
    server.clear_requests();
    let updated = run(&env, &["ci", "comment", "second.json"], &vars).ok();
    assert!(
        updated.stdout.contains("Updated note"),
        "{}",
        updated.stdout
    );
    assert_eq!(
        writes(&server.requests()),
        [format!(
            "PUT /projects/{PROJECT}/merge_requests/{MERGE_REQUEST}/notes/{}",
            note.id
        )]
    );
    let notes = server.notes(MERGE_REQUEST);
    assert_eq!(notes.len(), 1, "the note is updated, not added");
    assert!(notes[0].body.contains(&second_digest));
    assert!(notes[0].body.contains(&plan_id(&env, "second.json")));

    // The same plan again: the note is read, nothing is sent.
    server.clear_requests();
    let same = run(&env, &["ci", "comment", "second.json"], &vars).ok();
    assert!(same.stdout.contains("up to date"), "{}", same.stdout);
    assert_eq!(
        lines(&server.requests()),
        [
            "GET /user".to_string(),
            format!("GET /projects/{PROJECT}/merge_requests/{MERGE_REQUEST}/notes"),
        ]
    );
}

#[test]
fn two_fleet_files_keep_two_notes() {
    let server = GitLabServer::start(TOKEN);
    let env = Env::new();
    let vars = ci_env(&server);
    save_plan(&env, ARM, "arm.json");
    save_plan(&env, DISTRIBUTION, "distribution.json");
    run(&env, &["ci", "comment", "arm.json"], &vars).ok();
    run(&env, &["ci", "comment", "distribution.json"], &vars).ok();
    // A fleet file planned in the job itself, spelt with `./`, is the same fleet file: its
    // note is updated (the plan names the file as given, so its id differs), not added.
    let arm_note = server.notes(MERGE_REQUEST)[0].id;
    server.clear_requests();
    run(
        &env,
        &["ci", "comment", "./fleets/arm-builders.yaml"],
        &vars,
    )
    .ok();
    assert_eq!(
        writes(&server.requests()),
        [format!(
            "PUT /projects/{PROJECT}/merge_requests/{MERGE_REQUEST}/notes/{arm_note}"
        )]
    );
    let notes = server.notes(MERGE_REQUEST);
    let firsts: Vec<&str> = notes
        .iter()
        .map(|note| note.body.lines().next().unwrap_or_default())
        .collect();
    assert_eq!(
        firsts,
        [
            "<!-- fleet:plan-note file=fleets/arm-builders.yaml -->",
            "<!-- fleet:plan-note file=fleets/distribution.yaml -->"
        ]
    );
}

#[test]
fn a_note_on_a_later_page_is_found_and_a_copy_by_someone_else_is_left_alone() {
    let server = GitLabServer::start(TOKEN);
    server.set_page_cap(2);
    let env = Env::new();
    let vars = ci_env(&server);
    // Three notes by people come first; one of them copies fleet's marker.
    server.add_note(MERGE_REQUEST, 7, "Looks good to me");
    let forged = server.add_note(
        MERGE_REQUEST,
        8,
        "<!-- fleet:plan-note file=fleets/arm-builders.yaml -->\nnot fleet's",
    );
    server.add_note(MERGE_REQUEST, 7, "Please rebase");
    save_plan(&env, ARM, "first.json");
    run(&env, &["ci", "comment", "first.json"], &vars).ok();
    let ours = server.notes(MERGE_REQUEST)[3].id;
    // Page 1 holds two notes, page 2 the third and fleet's: both pages were asked for.
    let pages: Vec<String> = server
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/notes"))
        .map(|r| r.query.get("page").cloned().unwrap_or_default())
        .collect();
    assert_eq!(pages, ["1", "2"]);

    for link_only in [false, true] {
        // Link-only pagination is followed too; the page number is taken from it, the URL is not.
        server.set_link_only(link_only);
        env.converge(ARM);
        let (stopped, out) = if link_only {
            ("arm-builder-3", "third.json")
        } else {
            ("arm-builder-2", "second.json")
        };
        env.fleet(&["sim", "stop", stopped]).ok();
        save_plan(&env, ARM, out);
        server.clear_requests();
        run(&env, &["ci", "comment", out], &vars).ok();
        assert_eq!(
            writes(&server.requests()),
            [format!(
                "PUT /projects/{PROJECT}/merge_requests/{MERGE_REQUEST}/notes/{ours}"
            )],
            "link only: {link_only}"
        );
        assert!(server
            .requests()
            .iter()
            .all(|r| r.path.starts_with("/api/v4/")));
    }
    let notes = server.notes(MERGE_REQUEST);
    assert_eq!(notes.len(), 4);
    let copy = notes.iter().find(|note| note.id == forged).expect("copy");
    assert!(copy.body.ends_with("not fleet's"));
    assert_eq!(notes[3].author, FLEET_USER);
}

#[test]
fn too_many_requests_is_retried_after_retry_after_and_then_succeeds() {
    let server = GitLabServer::start(TOKEN);
    let env = Env::new();
    let vars = ci_env(&server);
    save_plan(&env, ARM, "plan.json");
    server.answer_next(429, Some(30));
    server.answer_next(429, Some(30));
    // --max-wait 0: the test does not wait the 30 seconds GitLab asks for.
    let done = run(
        &env,
        &["ci", "comment", "plan.json", "--max-wait", "0"],
        &vars,
    )
    .ok();
    assert!(
        has(
            &done.stderr,
            "answered 429 Too Many Requests (Retry-After: 30 s) (attempt 1 of 10)"
        ),
        "{}",
        done.stderr
    );
    assert!(has(&done.stderr, "(attempt 2 of 10)"), "{}", done.stderr);
    let requests = lines(&server.requests());
    assert_eq!(
        requests,
        [
            "GET /user".to_string(),
            "GET /user".to_string(),
            "GET /user".to_string(),
            format!("GET /projects/{PROJECT}/merge_requests/{MERGE_REQUEST}/notes"),
            format!("POST /projects/{PROJECT}/merge_requests/{MERGE_REQUEST}/notes"),
        ]
    );
    assert_eq!(server.notes(MERGE_REQUEST).len(), 1);
}

#[test]
fn server_errors_are_retried_a_bounded_number_of_times() {
    let server = GitLabServer::start(TOKEN);
    let env = Env::new();
    let vars = ci_env(&server);
    save_plan(&env, ARM, "plan.json");
    server.answer_always(503);
    let failed = run(
        &env,
        &[
            "--max-attempts",
            "3",
            "ci",
            "comment",
            "plan.json",
            "--max-wait",
            "0",
        ],
        &vars,
    )
    .code(1);
    assert_eq!(server.requests().len(), 3);
    assert!(
        has(&failed.stderr, "GitLab kept answering 503 Service Unavailable to GET /user; gave up after 3 attempt(s)"),
        "{}",
        failed.stderr
    );

    // A 429 whose Retry-After is beyond the time budget is not waited for.
    let server = GitLabServer::start(TOKEN);
    let vars = ci_env(&server);
    server.answer_next(429, Some(3600));
    let throttled = run(
        &env,
        &["--retry-for", "60", "ci", "comment", "plan.json"],
        &vars,
    )
    .code(1);
    assert_eq!(server.requests().len(), 1);
    assert!(
        has(&throttled.stderr, "429 Too Many Requests"),
        "{}",
        throttled.stderr
    );
}

#[test]
fn unauthorized_forbidden_and_not_found_say_what_to_fix() {
    let server = GitLabServer::start(TOKEN);
    server.set_read_only_token("glpat-read-only-t0k3n");
    let env = Env::new();
    save_plan(&env, ARM, "plan.json");

    let mut vars = ci_env(&server);
    vars.push(("GITLAB_TOKEN".to_string(), "glpat-wrong-t0k3n".to_string()));
    let refused = run(&env, &["ci", "comment", "plan.json"], &vars).code(1);
    assert!(!has(&refused.stderr, "glpat-wrong-t0k3n"));
    assert!(
        has(
            &refused.stderr,
            "GitLab refused the token in GITLAB_TOKEN (401 Unauthorized)"
        ),
        "{}",
        refused.stderr
    );
    assert!(has(&refused.stderr, "project access token"));
    assert_eq!(server.requests().len(), 1, "a 401 is not retried");

    server.clear_requests();
    let mut vars = ci_env(&server);
    vars.push((
        "FLEET_NOTES_TOKEN".to_string(),
        "glpat-read-only-t0k3n".to_string(),
    ));
    let forbidden = run(
        &env,
        &[
            "ci",
            "comment",
            "plan.json",
            "--token-env",
            "FLEET_NOTES_TOKEN",
        ],
        &vars,
    )
    .code(1);
    assert!(!has(&forbidden.stderr, "glpat-read-only-t0k3n"));
    assert!(
        has(&forbidden.stderr, &format!(
            "GitLab answered 403 Forbidden to POST /projects/{PROJECT}/merge_requests/{MERGE_REQUEST}/notes: the token in FLEET_NOTES_TOKEN may not do this"
        )),
        "{}",
        forbidden.stderr
    );
    assert!(has(&forbidden.stderr, "`api` scope"));
    assert_eq!(writes(&server.requests()).len(), 1, "a 403 is not retried");

    let mut vars = ci_env(&server);
    vars.push(("CI_MERGE_REQUEST_IID".to_string(), "999".to_string()));
    let missing = run(&env, &["ci", "comment", "plan.json"], &vars).code(1);
    assert!(
        has(
            &missing.stderr,
            &format!(
                "GitLab answered 404 Not Found to GET /projects/{PROJECT}/merge_requests/999/notes"
            )
        ),
        "{}",
        missing.stderr
    );
    assert!(has(&missing.stderr, "CI_MERGE_REQUEST_IID"));
    assert!(server.notes(MERGE_REQUEST).is_empty());
}

#[test]
fn an_api_url_refused_is_told_without_its_password() {
    let env = Env::new();
    save_plan(&env, ARM, "plan.json");
    for url in [
        "ftp://fleet:url-s3cr3t@gitlab.example.com/api/v4",
        "http://fleet:url-s3cr3t@[not-a-host/api/v4",
    ] {
        let vars = vec![
            ("CI_API_V4_URL".to_string(), url.to_string()),
            ("CI_PROJECT_ID".to_string(), "7".to_string()),
            ("CI_MERGE_REQUEST_IID".to_string(), "3".to_string()),
            ("GITLAB_TOKEN".to_string(), TOKEN.to_string()),
        ];
        let refused = run(&env, &["ci", "comment", "plan.json"], &vars).code(1);
        assert!(
            has(
                &refused.stderr,
                "is not a URL GitLab's API can be reached at"
            ),
            "{}",
            refused.stderr
        );
        assert!(!has(&refused.stderr, "url-s3cr3t"), "{}", refused.stderr);
        assert!(!has(&refused.stdout, "url-s3cr3t"));
        assert!(has(&refused.stderr, "…@"), "{}", refused.stderr);
    }
}

#[test]
fn only_a_job_token_is_refused_with_the_token_to_create() {
    let server = GitLabServer::start(TOKEN);
    let env = Env::new();
    save_plan(&env, ARM, "plan.json");
    let mut vars = ci_env(&server);
    vars.push(("GITLAB_TOKEN".to_string(), String::new()));
    vars.push(("CI_JOB_TOKEN".to_string(), "job-t0k3n-value".to_string()));
    let refused = run(&env, &["ci", "comment", "plan.json"], &vars).code(1);
    assert!(!has(&refused.stderr, "job-t0k3n-value"));
    assert!(
        has(
            &refused.stderr,
            "CI_JOB_TOKEN is there, but a job token cannot write merge-request notes"
        ),
        "{}",
        refused.stderr
    );
    assert!(has(
        &refused.stderr,
        "project access token with the `api` scope"
    ));
    assert!(server.requests().is_empty());
}

#[test]
fn the_reviewed_digest_is_read_back_after_merge_and_applied() {
    let server = GitLabServer::start(TOKEN);
    let env = Env::new();
    let vars = ci_env(&server);
    let reviewed = save_plan(&env, ARM, "plan.json");
    save_plan(&env, DISTRIBUTION, "distribution.json");
    // Someone else's note with fleet's marker and another digest comes first: not trusted.
    let forged_digest = "0".repeat(64);
    server.add_note(
        MERGE_REQUEST,
        8,
        &format!(
            "<!-- fleet:plan-note file=fleets/arm-builders.yaml -->\n<!-- fleet:changes-digest {forged_digest} -->"
        ),
    );
    run(&env, &["ci", "comment", "plan.json"], &vars).ok();
    run(&env, &["ci", "comment", "distribution.json"], &vars).ok();
    server.add_merge_request("c0ffee", 3, "opened");
    server.add_merge_request("c0ffee", MERGE_REQUEST, "merged");

    // The default-branch pipeline: no merge request variable there.
    let mut after_merge: Vec<(String, String)> = ci_env(&server)
        .into_iter()
        .filter(|(key, _)| key != "CI_MERGE_REQUEST_IID")
        .collect();
    after_merge.push(("CI_MERGE_REQUEST_IID".to_string(), String::new()));
    after_merge.push(("CI_COMMIT_SHA".to_string(), "c0ffee".to_string()));
    server.clear_requests();
    let read = run(&env, &["ci", "expected-changes", ARM], &after_merge).ok();
    assert_eq!(read.stdout, format!("{reviewed}\n"));
    assert_eq!(
        lines(&server.requests()),
        [
            format!("GET /projects/{PROJECT}/repository/commits/c0ffee/merge_requests"),
            "GET /user".to_string(),
            format!("GET /projects/{PROJECT}/merge_requests/{MERGE_REQUEST}/notes"),
        ]
    );
    assert!(writes(&server.requests()).is_empty());

    let applied = env
        .fleet(&["apply", ARM, "--expect-changes", &reviewed])
        .verified();
    assert!(applied.stdout.contains("The changes are the reviewed ones"));
    assert_eq!(env.sim_list().len(), 4);

    // A commit pushed without a merge request has nothing reviewed.
    let mut pushed = after_merge.clone();
    pushed.push(("CI_COMMIT_SHA".to_string(), "d00d".to_string()));
    let none = run(&env, &["ci", "expected-changes", ARM], &pushed).code(1);
    assert!(
        has(
            &none.stderr,
            "commit d00d belongs to no merged merge request"
        ),
        "{}",
        none.stderr
    );
    // A fleet file the merge request has no note for.
    let other = run(
        &env,
        &["ci", "expected-changes", "fleets/mdis-wb31.yaml"],
        &after_merge,
    )
    .code(1);
    assert!(
        has(
            &other.stderr,
            &format!(
                "merge request !{MERGE_REQUEST} has no fleet plan note for fleets/mdis-wb31.yaml"
            )
        ),
        "{}",
        other.stderr
    );
}

#[test]
fn apply_with_the_reviewed_changes_applies() {
    let env = Env::new();
    let reviewed = save_plan(&env, ARM, "reviewed.json");
    let applied = env
        .fleet(&["apply", ARM, "--expect-changes", &reviewed])
        .verified();
    assert!(applied.stdout.contains(&format!(
        "The changes are the reviewed ones (changes digest {reviewed})"
    )));
    assert_eq!(env.sim_list().len(), 4);
}

#[test]
fn a_saved_plan_in_place_of_the_fleet_file_is_not_applied_as_the_reviewed_changes() {
    let env = Env::new();
    let reviewed = save_plan(&env, ARM, "reviewed.json");
    // A merge request that puts a saved plan where the fleet file was: its digest is what the
    // note showed, but it would skip every check of the fleet file.
    let refused = env
        .fleet(&["apply", "reviewed.json", "--expect-changes", &reviewed])
        .code(1);
    assert!(
        has(&refused.stderr, "is a saved plan, not a fleet file"),
        "{}",
        refused.stderr
    );
    assert!(env.sim_list().is_empty());
    // A malformed digest is told before anything is planned.
    let malformed = env
        .fleet(&["apply", ARM, "--expect-changes", "deadbeef"])
        .code(1);
    assert!(
        has(
            &malformed.stderr,
            "is neither a changes digest nor a saved plan"
        ),
        "{}",
        malformed.stderr
    );
    assert!(
        !malformed.stdout.contains("to create"),
        "{}",
        malformed.stdout
    );
}

#[test]
fn apply_stops_when_the_changes_are_not_the_reviewed_ones() {
    let env = Env::new();
    let reviewed = save_plan(&env, ARM, "reviewed.json");
    // After the review, the fleet file grew by one builder.
    let text = std::fs::read_to_string(env.path().join(ARM)).expect("fleet file");
    env.write(ARM, &text.replace("size: 4", "size: 5"));

    let by_digest = env
        .fleet(&["apply", ARM, "--expect-changes", &reviewed])
        .code(1);
    assert!(
        has(
            &by_digest.stderr,
            &format!(
            "The changes planned now are not the reviewed ones (reviewed changes digest {reviewed}"
        )
        ),
        "{}",
        by_digest.stderr
    );
    assert!(
        has(&by_digest.stderr, "+ pool.arm-builder-5 (create)"),
        "{}",
        by_digest.stderr
    );
    assert!(has(&by_digest.stderr, "nothing was changed"));

    let by_plan = env
        .fleet(&["apply", ARM, "--expect-changes", "reviewed.json"])
        .code(1);
    assert!(
        has(
            &by_plan.stderr,
            "+ pool.arm-builder-5 (create) is planned now but was not reviewed"
        ),
        "{}",
        by_plan.stderr
    );
    assert!(
        has(
            &by_plan.stderr,
            "the fleet file is not the reviewed revision"
        ),
        "{}",
        by_plan.stderr
    );
    assert!(!has(&by_plan.stderr, "arm-builder-1 (create)"));
    // A reviewed plan edited afterwards is not an expectation.
    let saved = std::fs::read_to_string(env.path().join("reviewed.json")).expect("plan");
    env.write("edited.json", &saved.replace("m6g.2xlarge", "m6g.4xlarge"));
    let edited = env
        .fleet(&["apply", ARM, "--expect-changes", "edited.json"])
        .code(1);
    assert!(
        has(&edited.stderr, "edited.json was changed after it was made"),
        "{}",
        edited.stderr
    );
    // Nothing was created, and no cloud call but discovery was made.
    assert!(env.sim_list().is_empty());
    assert!(env
        .sim_stats()
        .keys()
        .all(|operation| !operation.contains("RunInstances")));
}

#[test]
fn autoscaled_machines_appearing_between_the_plans_do_not_change_the_digest() {
    let env = Env::new();
    let reviewed = save_plan(&env, ARM, "reviewed.json");
    // The runners' autoscaled build machines carry `fleet=` but no `fleet-kind`.
    for name in ["autoscaled-1", "autoscaled-2"] {
        env.fleet(&[
            "sim",
            "create",
            name,
            "--zone",
            "us-east-1a",
            "--machine-type",
            "m6g.large",
        ])
        .ok();
        env.fleet(&["sim", "set", name, "label.fleet", "arm-builders"])
            .ok();
    }
    assert_eq!(save_plan(&env, ARM, "now.json"), reviewed);
    env.fleet(&["apply", ARM, "--expect-changes", &reviewed])
        .verified();
    let names: Vec<String> = env
        .sim_list()
        .iter()
        .filter_map(|object| object["name"].as_str().map(str::to_string))
        .collect();
    assert_eq!(names.len(), 6, "{names:?}");
}

#[test]
fn the_example_pipeline_plans_on_merge_requests_and_applies_the_reviewed_changes_one_at_a_time() {
    use yaml_rust2::{Yaml, YamlLoader};
    let text =
        std::fs::read_to_string(repo().join("examples/gitlab-ci.yml")).expect("example pipeline");
    let docs = YamlLoader::load_from_str(&text).expect("the example pipeline is YAML");
    assert_eq!(docs.len(), 1);
    let pipeline = &docs[0];
    let script = |job: &str| -> String {
        pipeline[job]["script"]
            .as_vec()
            .unwrap_or_else(|| panic!("{job}: script"))
            .iter()
            .map(|line| line.as_str().expect("script line").to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let rule = |job: &str| -> String {
        pipeline[job]["rules"][0]["if"]
            .as_str()
            .unwrap_or_else(|| panic!("{job}: rules"))
            .to_string()
    };
    let stages: Vec<&str> = pipeline["stages"]
        .as_vec()
        .expect("stages")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(stages, ["plan", "apply"]);
    // Every fleet file that is planned has its plan and apply jobs; hosts-only fleets none.
    let files: Vec<&str> = pipeline[".per-fleet-file"]["parallel"]["matrix"][0]["FLEET_FILE"]
        .as_vec()
        .expect("a FLEET_FILE matrix")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let mut planned: Vec<String> = std::fs::read_dir(repo().join("fleets"))
        .unwrap()
        .map(|entry| format!("fleets/{}", entry.unwrap().file_name().to_string_lossy()))
        .filter(|path| {
            std::fs::read_to_string(repo().join(path)).is_ok_and(|text| text.contains("\nclouds:"))
        })
        .collect();
    planned.sort();
    let mut listed: Vec<String> = files.iter().map(|f| f.to_string()).collect();
    listed.sort();
    assert_eq!(listed, planned);
    for job in ["plan", "apply"] {
        assert_eq!(pipeline[job]["extends"].as_str(), Some(".per-fleet-file"));
    }

    assert_eq!(pipeline["plan"]["stage"].as_str(), Some("plan"));
    assert_eq!(
        rule("plan"),
        "$CI_PIPELINE_SOURCE == \"merge_request_event\""
    );
    let plan = script("plan");
    assert!(plan.contains("fleet plan \"$FLEET_FILE\" -o plan.json --gitlab-report"));
    assert!(plan.contains("fleet ci comment plan.json"));
    let artifacts = &pipeline["plan"]["artifacts"];
    assert_eq!(artifacts["paths"][0].as_str(), Some("plan.json"));
    assert!(artifacts["reports"]["terraform"].as_str().is_some());
    assert!(pipeline["plan"]["resource_group"].is_badvalue());

    assert_eq!(pipeline["apply"]["stage"].as_str(), Some("apply"));
    assert_eq!(rule("apply"), "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH");
    assert_eq!(
        pipeline["apply"]["resource_group"].as_str(),
        Some("fleet-apply")
    );
    let apply = script("apply");
    assert!(apply.contains("EXPECTED=$(fleet ci expected-changes \"$FLEET_FILE\")"));
    assert!(apply.contains("fleet apply \"$FLEET_FILE\" --expect-changes \"$EXPECTED\""));
    // Plans run with the read-only credentials; the write ones are the apply job's own.
    assert!(text.contains("fleet permissions --for plan"));
    assert!(pipeline["apply"]["variables"]["AWS_ACCESS_KEY_ID"]
        .as_str()
        .is_some_and(|value| value.starts_with("$APPLY_")));
    assert!(pipeline["plan"]["variables"].is_badvalue());
}
