//! `fleet sim …`: out-of-band actions on the simulated cloud.

use miette::{IntoDiagnostic, Result};

use crate::cli::{Global, SimCommand};
use crate::{clouds, output};

pub(crate) fn run(global: &Global, command: SimCommand) -> Result<u8> {
    let sim = clouds::open_sim(global)?;
    let changed = match command {
        SimCommand::List => {
            let mut objects = sim.list()?;
            // The simulated machines hold delivered secrets; fleet never prints them.
            objects
                .iter_mut()
                .for_each(fleet_engine::secrets::mask_live);
            output::line(&serde_json::to_string_pretty(&objects).into_diagnostic()?);
            return Ok(0);
        }
        SimCommand::Stats => {
            let stats = sim.stats()?;
            output::line(&serde_json::to_string_pretty(&stats).into_diagnostic()?);
            return Ok(0);
        }
        SimCommand::Stop { name } => sim.stop(&name)?,
        SimCommand::Start { name } => sim.start(&name)?,
        SimCommand::Delete { name } => {
            let gone = sim.delete(&name)?;
            output::line(&format!("deleted {} ({})", gone.name, gone.id));
            return Ok(0);
        }
        SimCommand::Set { name, field, value } => sim.set(&name, &field, &value)?,
        SimCommand::Create {
            name,
            zone,
            machine_type,
        } => sim.create_unmanaged(&name, &zone, &machine_type)?,
    };
    output::line(&format!(
        "{} ({}): {}, {} in {}",
        changed.name,
        changed.id,
        changed.status.as_str(),
        changed.spec.machine_type,
        changed.spec.zone
    ));
    Ok(0)
}
