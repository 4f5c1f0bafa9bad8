//! `fleet apply`

use std::io::{BufRead, IsTerminal};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fleet_engine::apply::ApplyOptions;
use fleet_engine::ops;
use fleet_engine::plan::display::{self, TextOptions};
use fleet_engine::plan::Plan;
use fleet_engine::state::{LocalStore, LockInfo};
use miette::{miette, IntoDiagnostic, Result, WrapErr};

use crate::cli::{ApplyArgs, Global};
use crate::clouds;
use crate::output::{self, Progress};

/// Exit status of `fleet apply` (documented in `fleet apply --help` and the README): every
/// step succeeded and the re-discovered fleet matches the plan.
const CONVERGED: u8 = 0;
/// A step failed, was skipped because one it depends on failed, or was not started.
const STEPS_FAILED: u8 = 3;
/// Every step succeeded, but the fleet is not verified: not converged, a zone did not
/// answer, or it could not be re-discovered.
const NOT_VERIFIED: u8 = 4;
/// The journal could not be written, so fleet stopped starting steps.
const JOURNAL_FAILED: u8 = 5;

/// The crash tests' kill point: abort right after this many journal lines (test use only).
fn abort_after_journal_lines() -> Option<u64> {
    std::env::var("FLEET_TEST_ABORT_AFTER")
        .ok()
        .and_then(|value| value.parse().ok())
}

/// A flag set by the first Ctrl-C, so the executor starts no further step and lets the
/// running ones finish; a second Ctrl-C stops at once.
fn interrupt_stops_new_steps() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        set.store(true, Ordering::SeqCst);
        output::warn(
            "Interrupted: no further step starts; the running ones finish and are reported (interrupt again to stop at once).",
        );
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    });
    flag
}

pub(crate) fn read_saved_plan(text: &str) -> Option<Result<Plan>> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    value.get("format_version")?;
    if super::is_json_plan_for_tools(&value) {
        return Some(Err(miette!(
            code = "fleet::apply::json_plan",
            help = "save the plan to apply with `fleet plan … -o PLAN` and apply that file; `--format json` prints the plan for tools (Terraform's shape), which is not applied",
            "this is the JSON plan `fleet plan --format json` prints, not a saved plan"
        )));
    }
    Some(serde_json::from_value(value).into_diagnostic().wrap_err(
        "this looks like a saved plan but cannot be read; make it again with `fleet plan … -o PLAN`",
    ))
}

/// Stops (exit 1, nothing changed) unless `plan`'s changes are the reviewed ones: `expected`
/// is a changes digest, or the path of the reviewed saved plan, which also lets the message
/// name each resource that differs.
fn check_expected_changes(plan: &Plan, expected: &str) -> Result<()> {
    use fleet_engine::plan::digest;
    let now = digest::changes_digest(plan);
    let path = std::path::Path::new(expected);
    let (reviewed_digest, reviewed_plan) = if digest::is_changes_digest(expected) {
        (expected.to_ascii_lowercase(), None)
    } else if path.is_file() {
        let reviewed = super::read_saved_plan_file(path)?.ok_or_else(|| {
            miette!(
                "{} is not a plan saved with `fleet plan -o`",
                path.display()
            )
        })?;
        if reviewed.content_hash() != reviewed.plan_id {
            return Err(miette!(
                code = "fleet::apply::modified_plan",
                help = "give the reviewed plan as `fleet plan -o` saved it, or the digest its merge-request note shows",
                "{} was changed after it was made (its content no longer matches plan id {})",
                path.display(),
                reviewed.plan_id
            ));
        }
        (digest::changes_digest(&reviewed), Some(reviewed))
    } else {
        return Err(miette!(
            code = "fleet::apply::expect_changes",
            help = "give the changes digest from the merge request's plan note (64 hex digits, `fleet ci expected-changes FILE` prints it) or the reviewed saved plan",
            "--expect-changes {expected:?} is neither a changes digest nor a saved plan"
        ));
    };
    if reviewed_digest == now {
        output::line(&format!(
            "The changes are the reviewed ones (changes digest {now})."
        ));
        return Ok(());
    }
    let mut lines = Vec::new();
    match &reviewed_plan {
        Some(reviewed) => {
            lines.extend(
                digest::differences(reviewed, plan)
                    .iter()
                    .map(|difference| format!("  {difference}")),
            );
            for cloud in plan.scope_clouds.iter().chain(&reviewed.scope_clouds) {
                let (before, after) = (reviewed.clouds.get(cloud), plan.clouds.get(cloud));
                if before != after {
                    let show = |target: Option<&fleet_engine::desired::CloudTarget>| {
                        target.map_or("none".to_string(), |t| match &t.project {
                            Some(project) => format!("project {project}, region {}", t.region),
                            None => format!("region {}", t.region),
                        })
                    };
                    lines.push(format!(
                        "  {cloud}: reviewed for {}, planned now for {}",
                        show(before),
                        show(after)
                    ));
                    break;
                }
            }
            if reviewed.fleet != plan.fleet {
                lines.push(format!(
                    "  the reviewed plan is of fleet {}, this one of fleet {}",
                    reviewed.fleet, plan.fleet
                ));
            }
            if let (Some(before), Some(after)) =
                (&reviewed.fleet_file_sha256, &plan.fleet_file_sha256)
            {
                if before != after {
                    lines.push(format!(
                        "  the fleet file is not the reviewed revision (sha256 {} reviewed, {} now)",
                        &before[..before.len().min(12)],
                        &after[..after.len().min(12)]
                    ));
                }
            }
        }
        None => {
            lines.push("  the changes planned now:".to_string());
            lines.extend(plan.actionable().map(|change| {
                format!(
                    "    {} {} ({})",
                    change.action.symbol(),
                    change.address,
                    change.action.verb()
                )
            }));
            if plan.actionable().next().is_none() {
                lines.push("    none".to_string());
            }
        }
    }
    Err(miette!(
        code = "fleet::apply::unexpected_changes",
        help = "nothing was changed. Review the changes in a merge request (its plan note shows the new digest) and merge it; or, if the cloud moved since the review, plan it again there",
        "The changes planned now are not the reviewed ones (reviewed changes digest {reviewed_digest}, now {now}):\n{}",
        lines.join("\n")
    ))
}

pub(crate) async fn run(global: &Global, args: &ApplyArgs) -> Result<u8> {
    // A malformed expectation is told before the cloud is asked anything.
    if let Some(expected) = &args.expect_changes {
        if !fleet_engine::plan::digest::is_changes_digest(expected)
            && !std::path::Path::new(expected).is_file()
        {
            return Err(miette!(
                code = "fleet::apply::expect_changes",
                help = "give the changes digest from the merge request's plan note (64 hex digits, `fleet ci expected-changes FILE` prints it) or the reviewed saved plan",
                "--expect-changes {expected:?} is neither a changes digest nor a saved plan"
            ));
        }
    }
    // A saved plan is JSON; anything else is read as a fleet file, whose reader bounds its
    // size and locates bytes that are not text.
    let saved = super::read_saved_plan_file(&args.file)?;
    let color = output::color();
    let from_file = saved.is_none();
    let (plan, desired, clouds) = match saved {
        Some(plan) => {
            // --expect-changes approves what the fleet file plans now; a saved plan in its
            // place would be applied as it is, past every check of the fleet file (its plan
            // id is a hash anyone can compute), so the two are never taken together.
            if args.expect_changes.is_some() {
                return Err(miette!(
                    code = "fleet::apply::expect_changes_saved_plan",
                    help = "give the fleet file: `fleet apply FLEET_FILE --expect-changes DIGEST` plans it again and applies only the reviewed changes; nothing was changed",
                    "{} is a saved plan, not a fleet file: --expect-changes checks a plan made now from the fleet file",
                    args.file.display()
                ));
            }
            if plan.content_hash() != plan.plan_id {
                return Err(miette!(
                    code = "fleet::apply::modified_plan",
                    help = "make the plan again with `fleet plan … -o PLAN`; a saved plan is applied exactly as reviewed",
                    "{} was changed after it was made (its content no longer matches plan id {})",
                    args.file.display(),
                    plan.plan_id
                ));
            }
            if !args.target.is_empty() {
                return Err(miette!(
                    code = "fleet::apply::target",
                    help = "a saved plan is applied exactly as it is: give --target to `fleet plan` instead",
                    "--target cannot narrow a saved plan"
                ));
            }
            let desired = ops::desired_of(&plan);
            let clouds = clouds::connect(global, &desired).await?;
            for (cloud, described) in &plan.providers {
                let now = clouds.providers.get(*cloud).map(|p| p.describe());
                if now.as_deref() != Some(described.as_str()) {
                    return Err(miette!(
                        code = "fleet::apply::other_cloud",
                        help = "apply a saved plan with the same --cloud and --sim-dir it was made with",
                        "this plan was made against {described} for {cloud}, but this run points at {}",
                        now.unwrap_or_else(|| "nothing".to_string())
                    ));
                }
            }
            // What the plan said when it was made; whether the cloud still matches is checked
            // next, under the lock, and a plan that went stale is refused.
            output::line(&format!(
                "Saved plan {} ({}), as it was made:",
                plan.plan_id,
                args.file.display()
            ));
            output::out(&display::text(&plan, TextOptions { color }));
            (plan, desired, clouds)
        }
        None => {
            let (plan, desired, clouds) =
                super::plan_fleet_file(global, &args.file, &args.target, true).await?;
            output::out(&display::text(&plan, TextOptions { color }));
            (plan, desired, clouds)
        }
    };
    if let Some(expected) = &args.expect_changes {
        check_expected_changes(&plan, expected)?;
    }
    let nothing_to_do = !plan.summary.has_changes() && plan.blocked.is_empty();
    // A plan just made from the fleet file saw the cloud a moment ago; a saved plan without
    // changes is still checked against the cloud below, like any saved plan.
    if nothing_to_do && from_file {
        return Ok(CONVERGED);
    }
    // Every secret the changes need, before anything changes.
    let source = crate::secrets::Secrets::for_run(global)?;
    let secret_values = fleet_engine::secrets::resolve(&ops::secret_references(&plan), &source)?;
    clouds::check_secret_endpoints(global, &plan)?;
    source.announce_placeholders();
    // A saved plan is the approval: it was reviewed as it is, and is refused if it is stale.
    // Changes checked against the reviewed ones (--expect-changes) are approved by that review.
    let approved = args.auto_approve || args.expect_changes.is_some();
    if from_file && !approved && plan.blocked.is_empty() && !nothing_to_do {
        if !std::io::stdin().is_terminal() {
            return Err(miette!(
                code = "fleet::apply::confirm",
                help = "pass --auto-approve to apply without asking (as CI does)",
                "refusing to apply without confirmation: standard input is not a terminal"
            ));
        }
        output::out("\nDo you want to perform these actions? Only 'yes' is accepted: ");
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .into_diagnostic()?;
        if answer.trim() != "yes" {
            output::line("Apply cancelled; nothing was changed.");
            return Ok(1);
        }
    }
    let store = LocalStore::open(&clouds.state_dir)?;
    if std::env::var("CI").is_ok_and(|value| value == "true") {
        output::warn(&format!("note: the state dir {} is local to this machine: its lock keeps applies here apart, not applies from other CI jobs (creation tokens still keep them from making a machine twice)", clouds.state_dir.display()));
    }
    let me = LockInfo::current(format!("fleet apply {}", args.file.display()));
    let progress = Arc::new(Progress::new());
    let options = ApplyOptions {
        concurrency: args.concurrency.max(1),
        secret_values,
        retry: clouds::retry_policy(global),
        // A fleet file applied without review is planned again if the cloud moved; a saved
        // or just-confirmed plan is applied exactly as seen, or not at all.
        // With --expect-changes a plan made again could differ from the reviewed changes.
        replan_when_changed: from_file && args.auto_approve && args.expect_changes.is_none(),
        abort_after_journal_lines: abort_after_journal_lines(),
        interrupted: Some(interrupt_stops_new_steps()),
    };
    output::line("");
    let outcome = ops::apply(
        &plan,
        &desired,
        &clouds.providers,
        &store,
        &me,
        &options,
        progress.clone(),
    )
    .await?;
    progress.finish();
    if let Some(previous) = &outcome.took_over_from {
        output::warn(&format!(
            "note: the previous apply (pid {} on {}, since {} UTC) ended without releasing its lock; it was taken over",
            previous.pid, previous.host, previous.since
        ));
    }
    let report = &outcome.report;
    if nothing_to_do && report.is_success() && outcome.converged() {
        output::line("The cloud is as the plan saw it: nothing to do.");
        return Ok(CONVERGED);
    }
    output::line(&format!(
        "\nApply {}: {} created, {} updated, {} deleted in {:.1} s ({} retries).",
        if report.is_success() {
            "complete"
        } else {
            "incomplete"
        },
        report.created,
        report.updated,
        report.deleted,
        report.seconds,
        report.retries
    ));
    for failure in &report.failed {
        output::line(&format!(
            "  failed:  {} {}: {}",
            failure.step, failure.address, failure.error
        ));
    }
    for (skipped, because) in &report.skipped {
        output::line(&format!(
            "  skipped: {skipped} (depends on {because}, which failed)"
        ));
    }
    for step in &report.not_started {
        output::line(&format!("  not started: {} {}", step.step, step.address));
    }
    if let Some(error) = &report.journal_error {
        output::warn(&format!(
            "error: the journal could not be written, so fleet started no further step: {error}"
        ));
    }
    match &outcome.verification {
        Ok(after) if !after.summary.has_changes() && after.unreachable.is_empty() => {
            output::line(&format!(
                "Verified: the live fleet matches the plan ({} resources re-discovered).",
                after.resource_changes.len()
            ))
        }
        Ok(after) if !after.summary.has_changes() => {
            output::line(&format!(
                "Verified where fleet could see ({} resources re-discovered); not answering: {}. Apply again when they answer.",
                after.resource_changes.len(),
                after.unreachable_zones()
            ))
        }
        Ok(after) => output::line(&format!(
            "Not converged: {} — run `fleet plan` to see what remains.",
            display::summary_line(after)
        )),
        Err(error) => output::line(&format!(
            "Not verified: could not re-discover the fleet ({}); run `fleet plan` to check.",
            fleet_engine::apply::with_causes(error)
        )),
    }
    Ok(if report.journal_error.is_some() {
        JOURNAL_FAILED
    } else if !report.is_success() {
        STEPS_FAILED
    } else if !outcome.converged() {
        NOT_VERIFIED
    } else {
        CONVERGED
    })
}
