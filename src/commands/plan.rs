//! `fleet plan`

use fleet_engine::plan::display::{self, TextOptions};
use fleet_engine::plan::gitlab;
use fleet_engine::plan::markdown::{self, MarkdownOptions};
use miette::{IntoDiagnostic, Result, WrapErr};

use crate::cli::{Format, Global, PlanArgs};
use crate::output;

pub(crate) async fn run(global: &Global, args: &PlanArgs) -> Result<u8> {
    let (plan, _, _) = super::plan_fleet_file(global, &args.file, &args.target, true).await?;
    match args.format {
        Format::Text => output::out(&display::text(
            &plan,
            TextOptions {
                color: output::color(),
            },
        )),
        Format::Json => output::out(&display::json(&plan)),
        Format::Markdown => {
            // Where the whole plan is, for a comment cut short: the plan saved beside it.
            let artifact = args.out.as_ref().map(|path| path.display().to_string());
            output::out(&markdown::markdown_with(
                &plan,
                MarkdownOptions {
                    artifact: artifact.as_deref(),
                    ..MarkdownOptions::default()
                },
            ))
        }
    }
    if let Some(path) = &args.gitlab_report {
        let report = gitlab::report(&plan);
        write_atomically(path, &report.json)
            .wrap_err_with(|| format!("cannot write the GitLab report to {}", path.display()))?;
        for (name, count) in &report.clamped {
            output::warn(&format!(
                "warning: the GitLab report says {name} {} ({count} in the plan): GitLab reads at most six digits",
                gitlab::REPORT_MAX
            ));
        }
    }
    if let Some(path) = &args.out {
        write_atomically(path, &plan.to_json())
            .wrap_err_with(|| format!("cannot write the plan to {}", path.display()))?;
        if args.format == Format::Text {
            let mut command = vec!["fleet".to_string()];
            command.extend(global.where_args());
            command.push("apply".to_string());
            command.push(crate::cli::shell_word(&path.display().to_string()));
            output::line(&format!(
                "\nSaved the plan to {}. Apply exactly this plan with:\n  {}",
                path.display(),
                command.join(" ")
            ));
        }
    }
    if !plan.blocked.is_empty() {
        output::warn(&format!(
            "error: {} resource(s) blocked by machines fleet did not make; see above for how to resolve each",
            plan.blocked.len()
        ));
        return Ok(1);
    }
    if !plan.unreachable.is_empty() {
        output::warn(&format!(
            "warning: not compared, as these zones did not answer: {}",
            plan.unreachable_zones()
        ));
    }
    let differs = plan.summary.has_changes() || !plan.unreachable.is_empty();
    Ok(if args.detailed_exitcode && differs {
        2
    } else {
        0
    })
}

/// Writes `text` to a temporary file beside `path` and renames it over `path`, so a reader
/// (a CI job collecting artifacts, a second plan) never sees half of it.
fn write_atomically(path: &std::path::Path, text: &str) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "plan".into(), |name| name.to_string_lossy().into_owned());
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&temporary);
        })
        .into_diagnostic()
}
