//! `fleet secrets`

use std::collections::BTreeMap;
use std::path::Path;

use miette::Result;

use crate::cli::Global;
use crate::output;
use crate::secrets::Secrets;

pub(crate) fn run(global: &Global, file: &Path, check: bool) -> Result<u8> {
    let desired = super::compile(file, &global.limits())?;
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for resource in desired.resources.values() {
        for name in fleet_engine::secrets::references(resource.spec.metadata.values()) {
            users
                .entry(name)
                .or_default()
                .push(resource.address.to_string());
        }
    }
    if users.is_empty() {
        output::out(&format!("{}: no secrets.\n", desired.fleet));
        return Ok(0);
    }
    let source = Secrets::load(global.secrets_file.as_deref())?;
    let mut text = String::new();
    let mut unset = 0;
    for (name, addresses) in &users {
        let (line, set) = crate::secrets::describe(&source, name);
        if !set {
            unset += 1;
        }
        text.push_str(&line);
        text.push_str(&format!("\tused by {}\n", addresses.join(", ")));
    }
    output::out(&text);
    if check && unset > 0 {
        output::warn(&format!(
            "error: {unset} of {} secret(s) have no value; set them before `fleet apply` on a live cloud",
            users.len()
        ));
        return Ok(1);
    }
    Ok(0)
}
