//! `fleet graph`

use std::path::Path;

use fleet_engine::ops::{self, PlanOptions};
use fleet_engine::plan::display;
use miette::Result;

use crate::cli::Global;
use crate::{clouds, output};

pub(crate) async fn run(global: &Global, file: &Path) -> Result<u8> {
    let desired = super::compile(file, &global.limits())?;
    let clouds = clouds::connect(global, &desired).await?;
    let options = PlanOptions {
        only_cloud: clouds::only_cloud(global),
        retry: clouds::retry_policy(global),
        ..PlanOptions::default()
    };
    let (plan, _) = ops::plan(&desired, &clouds.providers, &options).await?;
    output::out(&display::dot(&plan));
    Ok(0)
}
