//! One module per subcommand; each parses nothing more and calls one engine operation.

mod apply;
mod ci;
mod graph;
mod permissions;
mod plan;
mod render;
mod secrets;
mod sim;
mod validate;

use std::path::Path;

use fleet_engine::desired::Desired;
use fleet_engine::spec::Limits;
use miette::Result;

use crate::cli::{Cli, Command};

/// Runs a command; the `Ok` value is the exit status.
pub(crate) async fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Validate { files } => validate::run(&files, &cli.global.limits()),
        Command::Plan(args) => plan::run(&cli.global, &args).await,
        Command::Apply(args) => apply::run(&cli.global, &args).await,
        Command::Render(args) => render::run(
            &args,
            cli.global.secrets_file.as_deref(),
            &cli.global.limits(),
        ),
        Command::Secrets { file, check } => secrets::run(&cli.global, &file, check),
        Command::Graph { file } => graph::run(&cli.global, &file).await,
        Command::Permissions(args) => permissions::run(&cli.global, &args),
        Command::Sim(command) => sim::run(&cli.global, command),
        Command::Ci(command) => ci::run(&cli.global, command).await,
    }
}

/// The largest saved plan `fleet apply` and `fleet ci` read (a plan of 20,000 changes is
/// about 200 MB): a file over it is refused before it is parsed.
pub(crate) const SAVED_PLAN_LIMIT: u64 = 512 * 1024 * 1024;

/// Whether `path` may be a saved plan: its first byte that is not whitespace is `{`. Reads at
/// most 64 KiB, so a device or a file of any size is told apart at once.
pub(crate) fn may_be_saved_plan(path: &Path) -> bool {
    use std::io::Read;
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = Vec::new();
    if file.take(64 * 1024).read_to_end(&mut head).is_err() {
        return false;
    }
    head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// The plan saved at `path` (read within [`SAVED_PLAN_LIMIT`]), or `None` when the file is
/// none: it does not open with `{`, is not UTF-8, or is JSON of another kind. A JSON plan
/// for tools, or a saved plan that cannot be read, is an error saying what to give instead.
pub(crate) fn read_saved_plan_file(path: &Path) -> Result<Option<fleet_engine::plan::Plan>> {
    if !may_be_saved_plan(path) {
        return Ok(None);
    }
    let Some(text) = read_plan_text(path)? else {
        return Ok(None);
    };
    apply::read_saved_plan(&text).transpose()
}

/// A saved plan's text, read within [`SAVED_PLAN_LIMIT`]; `None` when the file is not UTF-8
/// (then it is no plan, and the fleet-file reader tells where it is broken).
fn read_plan_text(path: &Path) -> Result<Option<String>> {
    use miette::{IntoDiagnostic, WrapErr};
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(SAVED_PLAN_LIMIT + 1).read_to_end(&mut bytes))
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > SAVED_PLAN_LIMIT {
        return Err(miette::miette!(
            code = "fleet::plan_too_large",
            help = "a saved plan this large is not one fleet wrote for a fleet it can apply: split the fleet, or apply the fleet file",
            "{} is larger than {} MiB, the most fleet reads as a saved plan; nothing was read or changed",
            path.display(),
            SAVED_PLAN_LIMIT / (1024 * 1024)
        ));
    }
    Ok(String::from_utf8(bytes).ok())
}

/// A fleet file planned now: loaded and checked, its clouds connected, its secrets' values
/// taken from this run's sources, the plan stamped with the file's SHA-256. With `announce`,
/// the secrets the simulated cloud gives placeholders are said once, before planning.
pub(crate) async fn plan_fleet_file(
    global: &crate::cli::Global,
    path: &Path,
    targets: &[String],
    announce: bool,
) -> Result<(fleet_engine::plan::Plan, Desired, crate::clouds::Clouds)> {
    use crate::clouds;
    let desired = compile(path, &global.limits())?;
    let clouds = clouds::connect(global, &desired).await?;
    let source = crate::secrets::Secrets::for_run(global)?;
    let names = fleet_engine::secrets::references(
        desired
            .resources
            .values()
            .flat_map(|r| r.spec.metadata.values()),
    );
    let options = fleet_engine::ops::PlanOptions {
        targets: targets.to_vec(),
        only_cloud: clouds::only_cloud(global),
        secret_values: crate::secrets::available(&source, names),
        retry: clouds::retry_policy(global),
    };
    if announce {
        source.announce_placeholders();
    }
    let (plan, _) = fleet_engine::ops::plan(&desired, &clouds.providers, &options).await?;
    let plan = with_fleet_file(plan, path, &global.limits())?;
    Ok((plan, desired, clouds))
}

/// Loads and checks a fleet file.
///
/// A plan saved with `fleet plan -o` is not a fleet file: it is said so, with what to do,
/// instead of a list of problems with its keys.
pub(crate) fn compile(path: &Path, limits: &Limits) -> Result<Desired> {
    refuse_saved_plan(path, limits)?;
    Ok(fleet_engine::spec::compile_file(path, limits)?)
}

/// The plan with the SHA-256 of the fleet file it was made from (read again within the
/// size limit), so a saved plan says which revision of the file was reviewed.
pub(crate) fn with_fleet_file(
    plan: fleet_engine::plan::Plan,
    path: &Path,
    limits: &Limits,
) -> Result<fleet_engine::plan::Plan> {
    use miette::{IntoDiagnostic, WrapErr};
    use std::io::Read;
    let most = u64::try_from(limits.file_bytes).unwrap_or(u64::MAX);
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(most).read_to_end(&mut bytes))
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read {}", path.display()))?;
    Ok(plan.with_fleet_file(&bytes))
}

/// A plan saved with `fleet plan -o` where a fleet file belongs: said so, with what to do.
///
/// Only a file that opens with `{` is read whole, and then within the fleet-file size limit:
/// a fleet file is YAML, and anything larger is the loader's to refuse.
pub(crate) fn refuse_saved_plan(path: &Path, limits: &Limits) -> Result<()> {
    use std::io::Read;
    // A YAML fleet file is told apart by its first bytes, without reading it all.
    if !may_be_saved_plan(path) {
        return Ok(());
    }
    let Ok(file) = std::fs::File::open(path) else {
        return Ok(());
    };
    let most = u64::try_from(limits.file_bytes).unwrap_or(u64::MAX);
    let mut bytes = Vec::new();
    if file.take(most).read_to_end(&mut bytes).is_err() {
        return Ok(());
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Ok(());
    };
    if value.get("format_version").is_none() || value.get("fleet").is_none() {
        return Ok(());
    }
    if is_json_plan_for_tools(&value) {
        return Err(miette::miette!(
            code = "fleet::json_plan",
            help = "plan, render and graph read the fleet file it was made from",
            "{} is the JSON plan `fleet plan --format json` prints, not a fleet file",
            path.display()
        ));
    }
    let help = format!(
        "apply it with `fleet apply {}`; plan, render and graph read the fleet file it was made from",
        path.display()
    );
    Err(miette::miette!(
        code = "fleet::saved_plan",
        help = help,
        "{} is a plan saved with `fleet plan -o`, not a fleet file",
        path.display()
    ))
}

/// Whether a JSON document is the plan for tools (`fleet plan --format json`): it names the
/// fleet release that wrote it and is not marked as a saved plan (`saved_plan`).
pub(crate) fn is_json_plan_for_tools(value: &serde_json::Value) -> bool {
    value.get("saved_plan") != Some(&serde_json::Value::Bool(true))
        && value.get("fleet_version").is_some()
}
