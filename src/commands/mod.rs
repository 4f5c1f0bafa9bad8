//! One module per subcommand; each parses nothing more and calls one engine operation.

mod apply;
mod graph;
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
        Command::Secrets { file } => secrets::run(&cli.global, &file),
        Command::Graph { file } => graph::run(&cli.global, &file).await,
        Command::Sim(command) => sim::run(&cli.global, command),
    }
}

/// Loads and checks a fleet file.
pub(crate) fn compile(path: &Path, limits: &Limits) -> Result<Desired> {
    Ok(fleet_engine::spec::compile_file(path, limits)?)
}
