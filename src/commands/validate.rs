//! `fleet validate`

use std::collections::BTreeMap;
use std::path::PathBuf;

use fleet_engine::spec::Limits;
use miette::Result;

use crate::output;

pub(crate) fn run(files: &[PathBuf], limits: &Limits) -> Result<u8> {
    let mut failed = false;
    for path in files {
        if let Err(report) = super::refuse_saved_plan(path, limits) {
            failed = true;
            output::diagnostic(report);
            continue;
        }
        match fleet_engine::spec::compile_file(path, limits) {
            Ok(desired) => {
                let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
                for resource in desired.resources.values() {
                    *counts.entry(resource.kind.section()).or_default() += 1;
                }
                let counts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
                output::line(&format!(
                    "{}: valid (fleet {}, {} resources: {})",
                    path.display(),
                    desired.fleet,
                    desired.resources.len(),
                    counts.join(", ")
                ));
            }
            Err(invalid) => {
                failed = true;
                output::diagnostic(miette::Report::new(invalid));
            }
        }
    }
    Ok(u8::from(failed))
}
