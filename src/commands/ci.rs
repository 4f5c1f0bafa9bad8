//! `fleet ci comment`, `fleet ci expected-changes`, `fleet ci digest`
//!
//! In: a saved plan or a fleet file, GitLab CI's variables and a token. Out: fleet's note
//! on the merge request (one per fleet file, found again by a hidden marker and updated in
//! place, not sent when unchanged), or the changes digest of the reviewed plan read back from
//! that note, for `fleet apply --expect-changes`.

use std::path::Path;
use std::time::Duration;

use fleet_engine::plan::digest::{changes_digest, is_changes_digest};
use fleet_engine::plan::{display, Plan};
use miette::{Diagnostic, Result};
use thiserror::Error;

use crate::cli::{CiCommand, CommentArgs, ExpectedChangesArgs, GitLabArgs, Global};
use crate::gitlab::{GitLab, GitLabError, Note, Settings};
use crate::{clouds, output};

/// The opening of the hidden marker of fleet's note for one fleet file.
const MARKER_OPEN: &str = "<!-- fleet:plan-note file=";
/// The hidden line carrying the changes digest, for `fleet ci expected-changes`.
const DIGEST_OPEN: &str = "<!-- fleet:changes-digest ";

/// What `fleet ci` could not do.
#[derive(Debug, Error, Diagnostic)]
enum CiError {
    #[error(
        "{file} was changed after it was made (its content no longer matches plan id {plan_id})"
    )]
    #[diagnostic(
        code(fleet::ci::modified_plan),
        help("make the plan again with `fleet plan FILE -o PLAN`; the note shows the plan as it was made")
    )]
    ModifiedPlan { file: String, plan_id: String },

    #[error("commit {commit} belongs to no merged merge request, so no plan of it was reviewed")]
    #[diagnostic(
        code(fleet::ci::no_merge_request),
        help("apply a reviewed change from the pipeline of its merge commit on the default branch; a commit pushed there directly has no reviewed plan")
    )]
    NoMergedRequest { commit: String },

    #[error("merge request !{iid} has no fleet plan note for {file}")]
    #[diagnostic(
        code(fleet::ci::no_note),
        help("the merge-request pipeline posts it with `fleet ci comment`; give the fleet file as it was given there (notes seen: {seen})")
    )]
    NoNote {
        iid: u64,
        file: String,
        seen: String,
    },
}

pub(crate) async fn run(global: &Global, command: CiCommand) -> Result<u8> {
    match command {
        CiCommand::Comment(args) => comment(global, &args).await,
        CiCommand::ExpectedChanges(args) => expected_changes(global, &args).await,
        CiCommand::Digest { plan } => {
            let plan = read_plan(&plan)?;
            output::line(&changes_digest(&plan));
            Ok(0)
        }
    }
}

async fn comment(global: &Global, args: &CommentArgs) -> Result<u8> {
    let plan = plan_of(global, &args.file).await?;
    let merge_request = args
        .merge_request
        .clone()
        .filter(|iid| !iid.is_empty())
        .ok_or_else(|| GitLabError::MissingVariable {
            what: "CI_MERGE_REQUEST_IID".to_string(),
            help: "GitLab sets it in merge-request pipelines only: run the job with `rules: - if: $CI_PIPELINE_SOURCE == \"merge_request_event\"`, or give --merge-request IID".to_string(),
        })?;
    let gitlab = client(global, &args.gitlab)?;
    let file = fleet_file_key(&plan.source);
    let body = note_body(&plan, &file);
    let me = gitlab.current_user().await?;
    let notes = gitlab.notes(&merge_request).await?;
    let digest = changes_digest(&plan);
    match own_note(&notes, me, &file) {
        Some(note) if note.body == body => output::line(&format!(
            "Note {} on !{merge_request} is up to date for {file} (plan {}, changes {digest}); nothing sent.",
            note.id, plan.plan_id
        )),
        Some(note) => {
            gitlab.update_note(&merge_request, note.id, &body).await?;
            output::line(&format!(
                "Updated note {} on !{merge_request} for {file} (plan {}, changes {digest}).",
                note.id, plan.plan_id
            ));
        }
        None => {
            let id = gitlab.create_note(&merge_request, &body).await?;
            output::line(&format!(
                "Posted note {id} on !{merge_request} for {file} (plan {}, changes {digest}).",
                plan.plan_id
            ));
        }
    }
    Ok(0)
}

async fn expected_changes(global: &Global, args: &ExpectedChangesArgs) -> Result<u8> {
    let commit = args
        .commit
        .clone()
        .filter(|sha| !sha.is_empty())
        .ok_or_else(|| GitLabError::MissingVariable {
            what: "CI_COMMIT_SHA".to_string(),
            help: "GitLab CI sets it in every job; elsewhere give --commit SHA".to_string(),
        })?;
    let gitlab = client(global, &args.gitlab)?;
    let file = fleet_file_key(&args.file.display().to_string());
    let requests = gitlab.merge_requests_of(&commit).await?;
    let merged: Vec<_> = requests.iter().filter(|mr| mr.state == "merged").collect();
    let chosen = merged
        .iter()
        .find(|mr| mr.merged_as.iter().any(|sha| sha == &commit))
        .or_else(|| merged.first())
        .ok_or_else(|| CiError::NoMergedRequest {
            commit: commit.clone(),
        })?;
    let me = gitlab.current_user().await?;
    let iid = chosen.iid.to_string();
    let notes = gitlab.notes(&iid).await?;
    let found = own_note(&notes, me, &file).and_then(|note| {
        note.body
            .lines()
            .find_map(|line| line.strip_prefix(DIGEST_OPEN)?.strip_suffix(" -->"))
            .filter(|digest| is_changes_digest(digest))
            .map(|digest| (note.id, digest.to_string()))
    });
    let Some((note, digest)) = found else {
        let seen: Vec<String> = notes
            .iter()
            .filter(|note| note.author == Some(me) && !note.system)
            .filter_map(|note| marked_file(&note.body))
            .collect();
        return Err(CiError::NoNote {
            iid: chosen.iid,
            file,
            seen: if seen.is_empty() {
                "none".to_string()
            } else {
                seen.join(", ")
            },
        }
        .into());
    };
    output::warn(&format!(
        "Reviewed changes of {file}: note {note} on !{}.",
        chosen.iid
    ));
    output::line(&digest);
    Ok(0)
}

/// The plan a note shows: a saved plan as it is (refused if edited), or a fleet file planned
/// now with the usual cloud options.
async fn plan_of(global: &Global, path: &Path) -> Result<Plan> {
    // A saved plan is JSON that reads as one (within the saved-plan limit, which is larger
    // than a fleet file's); a flow-style YAML fleet file opening with `{` is not one.
    if let Some(plan) = super::read_saved_plan_file(path)? {
        return checked(plan, path);
    }
    let (plan, _, _) = super::plan_fleet_file(global, path, &[], false).await?;
    Ok(plan)
}

/// A saved plan read from `path`, refused when it is none or was edited.
fn read_plan(path: &Path) -> Result<Plan> {
    // The same reading as `fleet apply`'s: the JSON plan for tools and anything else are told
    // apart, each with what to give instead.
    let plan: Plan = match super::read_saved_plan_file(path)? {
        Some(plan) => plan,
        None => {
            return Err(miette::miette!(
                code = "fleet::ci::not_a_plan",
                help = "save the plan with `fleet plan FLEET_FILE -o plan.json` and give that file",
                "{} is not a plan saved with `fleet plan -o`",
                path.display()
            ))
        }
    };
    checked(plan, path)
}

/// A saved plan, refused when its content no longer matches its id.
fn checked(plan: Plan, path: &Path) -> Result<Plan> {
    if plan.content_hash() != plan.plan_id {
        return Err(CiError::ModifiedPlan {
            file: path.display().to_string(),
            plan_id: plan.plan_id,
        }
        .into());
    }
    Ok(plan)
}

fn client(global: &Global, args: &GitLabArgs) -> Result<GitLab> {
    let token = std::env::var(&args.token_env).ok();
    Ok(GitLab::new(Settings {
        api_url: args.api_url.clone(),
        project: args.project.clone(),
        token_variable: args.token_env.clone(),
        token,
        job_token_present: std::env::var_os("CI_JOB_TOKEN").is_some_and(|v| !v.is_empty()),
        policy: clouds::retry_policy(global),
        max_wait: Duration::from_secs(args.max_wait),
    })?)
}

/// The fleet file as notes know it: the path given, without a leading `./`.
fn fleet_file_key(path: &str) -> String {
    let mut key = path;
    while let Some(rest) = key.strip_prefix("./") {
        key = rest;
    }
    key.to_string()
}

/// The first line of fleet's note for `file`: an HTML comment GitLab does not show. The
/// path is percent-encoded outside `[A-Za-z0-9._/-]`, so no path can end the comment.
fn marker(file: &str) -> String {
    let mut encoded = String::new();
    for byte in file.bytes() {
        if byte.is_ascii_alphanumeric() || b"._/-".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    // `--` cannot stand inside an HTML comment.
    let encoded = encoded.replace("--", "-%2D");
    format!("{MARKER_OPEN}{encoded} -->")
}

/// The fleet file a marked note is for, as its marker spells it.
fn marked_file(body: &str) -> Option<String> {
    let first = body.lines().next()?;
    let encoded = first.strip_prefix(MARKER_OPEN)?.strip_suffix(" -->")?;
    Some(encoded.to_string())
}

/// fleet's note for `file` among `notes`: marked for it and written by the token's user (a
/// note anyone else writes with the marker is neither trusted nor edited).
fn own_note<'a>(notes: &'a [Note], me: u64, file: &str) -> Option<&'a Note> {
    let marker = marker(file);
    notes.iter().find(|note| {
        !note.system && note.author == Some(me) && note.body.lines().next() == Some(&marker)
    })
}

/// The note: the marker, the digest line, a visible line with the plan id and the changes
/// digest, then the markdown plan.
fn note_body(plan: &Plan, file: &str) -> String {
    let digest = changes_digest(plan);
    // The path and the plan's fields come from the pipeline and the plan file: shown as
    // inline code that nothing in them can close, on one line; a revision only as hex.
    let shown_file = fleet_engine::plan::markdown::md_code(file);
    let revision = plan
        .fleet_file_sha256
        .as_deref()
        .filter(|sha| fleet_engine::plan::digest::is_changes_digest(sha))
        .map(|sha| format!(" (sha256 `{}`)", &sha[..12]))
        .unwrap_or_default();
    let plan_id = fleet_engine::plan::markdown::md_code(&plan.plan_id);
    format!(
        "{}\n{DIGEST_OPEN}{digest} -->\n**fleet plan** of {shown_file}{revision}: plan id {plan_id}, changes digest `{digest}`\n\n{}",
        marker(file),
        display::markdown(plan)
    )
}
