//! `fleet render`: each machine's delivery as its cloud receives it, or with `-o` every file
//! fleet would deliver, per machine, as Chef laid them down.

use std::path::Path;

use fleet_engine::desired::Desired;
use fleet_engine::render;
use fleet_engine::secrets;
use fleet_engine::spec::Limits;
use miette::{miette, IntoDiagnostic, Result, WrapErr};

use crate::cli::RenderArgs;
use crate::output;
use crate::secrets::Secrets;

/// The one machine `--machine` names, refused with the names there are when there is none.
fn only_machine(
    desired: &fleet_engine::desired::Desired,
    shown: Vec<render::show::Shown>,
    name: Option<&str>,
) -> Result<Vec<render::show::Shown>> {
    let Some(name) = name else {
        return Ok(shown);
    };
    // A resource the fleet has that is sent nothing (a template renders no file) is not
    // "no machine": say what it is.
    let silent = desired.resources.values().find(|resource| {
        resource.spec.metadata.is_empty()
            && (resource.cloud_name == name
                || resource.address.as_str() == name
                || resource.address.name() == name)
    });
    if let Some(resource) = silent {
        return Err(miette!(
            code = "fleet::render::nothing_delivered",
            help = "fleet renders files for runner managers, helpers, pool members and hosts; the machines made from a template get theirs from the runner that uses it",
            "`{name}` ({}) is sent nothing: it renders no file",
            resource.address
        ));
    }
    let names: Vec<&str> = shown.iter().map(|s| s.machine.as_str()).collect();
    let joined = names.join(", ");
    let found: Vec<render::show::Shown> =
        shown.iter().filter(|s| s.is_named(name)).cloned().collect();
    if found.is_empty() {
        return Err(miette!(
            code = "fleet::render::machine",
            help = format!("machines of this fleet file: {joined}"),
            "no machine `{name}` in this fleet file"
        ));
    }
    Ok(found)
}

pub(crate) fn run(args: &RenderArgs, secrets_file: Option<&Path>, limits: &Limits) -> Result<u8> {
    let desired = super::compile(&args.file, limits)?;
    let shown = only_machine(
        &desired,
        render::show::deliveries(&desired),
        args.machine.as_deref(),
    )?;
    let Some(dir) = &args.out else {
        let texts: Vec<&str> = shown.iter().map(|s| s.text.as_str()).collect();
        output::out(&texts.join("\n"));
        return Ok(0);
    };
    let wanted: Vec<&str> = shown.iter().map(|s| s.machine.as_str()).collect();
    let machines: Vec<(String, Vec<(String, String)>)> = files_by_machine(&desired)
        .into_iter()
        .filter(|(machine, _)| wanted.contains(&machine.as_str()))
        .collect();
    let values = if args.reveal_secrets {
        let names = secrets::references(
            machines
                .iter()
                .flat_map(|(_, files)| files.iter().map(|(_, text)| text)),
        );
        let source = Secrets::load(secrets_file)?;
        secrets::resolve(&names, &source)?
    } else {
        Default::default()
    };
    let mut written = 0;
    for (machine, files) in &machines {
        for (key, text) in files {
            let Some(path) = render::file_path(key) else {
                continue;
            };
            let mut text = if args.reveal_secrets {
                let mut text = text.clone();
                for (name, value) in &values {
                    text = text.replace(&format!("${{secret:{name}}}"), value);
                }
                text
            } else {
                render::mask_secrets(text)
            };
            if !text.ends_with('\n') {
                text.push('\n');
            }
            // Names were checked as machine and host names; still, nothing is written
            // outside `dir` whatever a name holds.
            let inside = |part: &str| {
                std::path::Path::new(part.trim_start_matches('/'))
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
            };
            if !inside(machine) || !inside(path) {
                return Err(miette!(
                    code = "fleet::render::path",
                    "refusing to write {path} of {machine}: it would land outside {}",
                    dir.display()
                ));
            }
            let target = dir.join(machine).join(path.trim_start_matches('/'));
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .into_diagnostic()
                    .wrap_err_with(|| format!("cannot create {}", parent.display()))?;
            }
            // With the secrets filled in, the files are the owner's only.
            let mode = if args.reveal_secrets { 0o600 } else { 0o644 };
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let _ = std::fs::remove_file(&target);
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&target)
                    .and_then(|mut file| file.write_all(text.as_bytes()))
            }
            .into_diagnostic()
            .wrap_err_with(|| format!("cannot write {}", target.display()))?;
            written += 1;
        }
    }
    output::line(&format!(
        "Rendered {written} files for {} machines into {}{}.",
        machines.len(),
        dir.display(),
        if args.reveal_secrets {
            ""
        } else {
            " (secrets shown as (sensitive); --reveal-secrets to fill them in)"
        }
    ));
    Ok(0)
}

/// Every machine's files and every static host's, by machine name, sorted.
fn files_by_machine(desired: &Desired) -> Vec<(String, Vec<(String, String)>)> {
    let mut machines: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for resource in desired.resources.values() {
        let files: Vec<(String, String)> = resource
            .spec
            .metadata
            .iter()
            .map(|(key, text)| (key.clone(), text.clone()))
            .collect();
        if !files.is_empty() {
            machines.push((resource.cloud_name.clone(), files));
        }
    }
    for (host, files) in &desired.hosts {
        machines.push((
            host.clone(),
            files.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ));
    }
    machines.sort();
    machines
}
