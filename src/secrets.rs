//! Where secret values come from: `FLEET_SECRET_<NAME>` environment variables, then the
//! `--secrets-file` (`NAME=value` lines; `#` comments).

use std::collections::BTreeMap;
use std::path::Path;

use fleet_engine::secrets::SecretSource;
use miette::{miette, Result};

/// The run's secrets.
pub(crate) struct Secrets {
    file: BTreeMap<String, String>,
    file_name: Option<String>,
}

/// `FLEET_SECRET_` and the name upper-cased, other characters as `_`.
fn variable(name: &str) -> String {
    let tail: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("FLEET_SECRET_{tail}")
}

impl Secrets {
    pub(crate) fn load(file: Option<&Path>) -> Result<Secrets> {
        let mut values = BTreeMap::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|error| {
                miette!(
                    code = "fleet::secrets::file",
                    help = "give a readable file of NAME=value lines",
                    "cannot read the secrets file {}: {error}",
                    path.display()
                )
            })?;
            for (number, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let Some((name, value)) = line.split_once('=') else {
                    // The line may hold a secret: name only its number.
                    return Err(miette!(
                        code = "fleet::secrets::file",
                        help = "each line is NAME=value",
                        "{}: line {} is not NAME=value",
                        path.display(),
                        number + 1
                    ));
                };
                values.insert(name.trim().to_string(), value.to_string());
            }
        }
        Ok(Secrets {
            file: values,
            file_name: file.map(|p| p.display().to_string()),
        })
    }
}

impl SecretSource for Secrets {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(variable(name))
            .ok()
            .or_else(|| self.file.get(name).cloned())
    }

    fn looked_for(&self, name: &str) -> String {
        match &self.file_name {
            Some(file) => format!("{name}: set {} or add `{name}=…` to {file}", variable(name)),
            None => format!(
                "{name}: set {} or give --secrets-file FILE with `{name}=…`",
                variable(name)
            ),
        }
    }
}

/// The values of these names that are available, leaving the rest out.
pub(crate) fn available(
    source: &Secrets,
    names: impl IntoIterator<Item = String>,
) -> BTreeMap<String, String> {
    names
        .into_iter()
        .filter_map(|name| source.get(&name).map(|value| (name, value)))
        .collect()
}
