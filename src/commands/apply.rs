//! `fleet apply`

use std::io::{BufRead, IsTerminal};
use std::sync::Arc;

use fleet_engine::apply::{ApplyEvent, ApplyOptions, Observer};
use fleet_engine::ops::{self, PlanOptions};
use fleet_engine::plan::display::{self, TextOptions};
use fleet_engine::plan::Plan;
use fleet_engine::state::{Journal, LocalStore, LockInfo};
use miette::{miette, IntoDiagnostic, Result, WrapErr};

use crate::cli::{ApplyArgs, Global};
use crate::clouds;
use crate::output::{self, Progress};

/// Records every apply event, with the plan id and time, in the state store's journal.
struct JournalObserver {
    journal: Box<dyn Journal>,
    plan_id: String,
}

impl Observer for JournalObserver {
    fn event(&self, event: &ApplyEvent, _done: usize, _total: usize) {
        let mut entry = serde_json::to_value(event).unwrap_or_default();
        if let Some(map) = entry.as_object_mut() {
            map.insert("plan_id".into(), self.plan_id.clone().into());
            map.insert("time".into(), fleet_engine::state::utc_now().into());
        }
        let _ = self.journal.append(&entry);
    }
}

fn read_saved_plan(text: &str) -> Option<Result<Plan>> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    value.get("format_version")?;
    Some(serde_json::from_value(value).into_diagnostic().wrap_err(
        "this looks like a saved plan but cannot be read; make it again with `fleet plan … -o PLAN`",
    ))
}

pub(crate) async fn run(global: &Global, args: &ApplyArgs) -> Result<u8> {
    let text = std::fs::read_to_string(&args.file)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read {}", args.file.display()))?;
    let color = output::color();
    let saved = read_saved_plan(&text);
    let from_file = saved.is_none();
    let (plan, desired, clouds) = match saved {
        Some(saved) => {
            let plan = saved?;
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
            output::out(&display::text(&plan, TextOptions { color }));
            (plan, desired, clouds)
        }
        None => {
            let desired = super::compile(&args.file, &global.limits())?;
            let clouds = clouds::connect(global, &desired).await?;
            let source = crate::secrets::Secrets::load(global.secrets_file.as_deref())?;
            let names = fleet_engine::secrets::references(
                desired
                    .resources
                    .values()
                    .flat_map(|r| r.spec.metadata.values()),
            );
            let options = PlanOptions {
                targets: args.target.clone(),
                only_cloud: clouds::only_cloud(global),
                secret_values: crate::secrets::available(&source, names),
                retry: clouds::retry_policy(global),
            };
            let (plan, _) = ops::plan(&desired, &clouds.providers, &options).await?;
            output::out(&display::text(&plan, TextOptions { color }));
            (plan, desired, clouds)
        }
    };
    if !plan.summary.has_changes() && plan.blocked.is_empty() {
        return Ok(0);
    }
    // Every secret the changes need, before anything changes.
    let source = crate::secrets::Secrets::load(global.secrets_file.as_deref())?;
    let secret_values = fleet_engine::secrets::resolve(&ops::secret_references(&plan), &source)?;
    if !args.auto_approve && plan.blocked.is_empty() {
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
    let me = LockInfo::current(format!("fleet apply {}", args.file.display()));
    let progress = Arc::new(Progress::new());
    let options = ApplyOptions {
        concurrency: args.concurrency.max(1),
        secret_values,
        retry: clouds::retry_policy(global),
        // A fleet file applied without review is planned again if the cloud moved; a saved
        // or just-confirmed plan is applied exactly as seen, or not at all.
        replan_when_changed: from_file && args.auto_approve,
    };
    output::line("");
    let plan_id = plan.plan_id.clone();
    let outcome = ops::apply(
        &plan,
        &desired,
        &clouds.providers,
        &store,
        &me,
        &options,
        progress.clone(),
        move |journal| Arc::new(JournalObserver { journal, plan_id }),
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
    match &outcome.verification {
        Some(after) if !after.summary.has_changes() && after.unreachable.is_empty() => {
            output::line(&format!(
                "Verified: the live fleet matches the plan ({} resources re-discovered).",
                after.resource_changes.len()
            ))
        }
        Some(after) if !after.summary.has_changes() => {
            output::line(&format!(
                "Verified where fleet could see ({} resources re-discovered); not answering: {}. Apply again when they answer.",
                after.resource_changes.len(),
                after.unreachable_zones()
            ))
        }
        Some(after) => output::line(&format!(
            "Not converged: {} — run `fleet plan` to see what remains.",
            display::summary_line(after)
        )),
        None => {
            output::line("Could not re-discover the fleet to verify; run `fleet plan` to check.")
        }
    }
    Ok(if report.is_success() { 0 } else { 1 })
}
