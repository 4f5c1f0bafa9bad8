//! `fleet plan`

use fleet_engine::ops::{self, PlanOptions};
use fleet_engine::plan::display::{self, TextOptions};
use miette::{IntoDiagnostic, Result, WrapErr};

use crate::cli::{Format, Global, PlanArgs};
use crate::{clouds, output};

pub(crate) async fn run(global: &Global, args: &PlanArgs) -> Result<u8> {
    let desired = super::compile(&args.file, &global.limits())?;
    let clouds = clouds::connect(global, &desired).await?;
    let source = crate::secrets::Secrets::for_run(global)?;
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
    source.announce_placeholders();
    let (plan, _) = ops::plan(&desired, &clouds.providers, &options).await?;
    let plan = super::with_fleet_file(plan, &args.file, &global.limits())?;
    match args.format {
        Format::Text => output::out(&display::text(
            &plan,
            TextOptions {
                color: output::color(),
            },
        )),
        Format::Json => output::out(&plan.to_json()),
        Format::Markdown => output::out(&display::markdown(&plan)),
    }
    if let Some(path) = &args.out {
        std::fs::write(path, plan.to_json())
            .into_diagnostic()
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
