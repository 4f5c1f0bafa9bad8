//! Where secret values come from: `FLEET_SECRET_<NAME>` environment variables, then the
//! `--secrets-file` (`NAME=value` lines; `#` comments). On the simulated cloud, a secret with
//! neither gets a placeholder, so the quick start needs no set-up; live clouds never do.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use fleet_engine::secrets::SecretSource;
use miette::{miette, Result};

/// The run's secrets.
pub(crate) struct Secrets {
    file: BTreeMap<String, String>,
    file_name: Option<String>,
    /// Whether a missing secret gets a placeholder (the simulated cloud only).
    placeholders: bool,
    /// The names that got one, to say so.
    placeheld: Mutex<BTreeSet<String>>,
}

/// The value a secret with no value has on the simulated cloud. Not a secret: it is printed
/// as it is, and machines on the simulator never run anything with it.
pub(crate) fn placeholder(name: &str) -> String {
    format!("sim-placeholder-{name}")
}

/// Whether the placeholder note was printed in this process already.
static ANNOUNCED: AtomicBool = AtomicBool::new(false);

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
            placeholders: false,
            placeheld: Mutex::new(BTreeSet::new()),
        })
    }

    /// The run's secrets for `--cloud`: on the simulated cloud a secret without a value gets
    /// [`placeholder`]; on live clouds a missing secret stays an error before any change.
    pub(crate) fn for_run(global: &crate::cli::Global) -> Result<Secrets> {
        let mut secrets = Secrets::load(global.secrets_file.as_deref())?;
        secrets.placeholders = global.cloud == crate::cli::CloudMode::Sim;
        Ok(secrets)
    }

    /// Says once per process which secrets got a placeholder, if any did.
    pub(crate) fn announce_placeholders(&self) {
        let names = self
            .placeheld
            .lock()
            .map(|names| names.clone())
            .unwrap_or_default();
        if names.is_empty() || ANNOUNCED.swap(true, Ordering::Relaxed) {
            return;
        }
        let names: Vec<String> = names.into_iter().collect();
        crate::output::warn(&format!(
            "note: simulated cloud: {} secret(s) have no value and get a placeholder (sim-placeholder-<NAME>): {}. \
             Live clouds need real values: `fleet secrets FILE` lists them and where each is read from.",
            names.len(),
            names.join(", ")
        ));
    }
}

impl SecretSource for Secrets {
    fn get(&self, name: &str) -> Option<String> {
        let found = std::env::var(variable(name))
            .ok()
            .or_else(|| self.file.get(name).cloned());
        if found.is_some() || !self.placeholders {
            return found;
        }
        if let Ok(mut names) = self.placeheld.lock() {
            names.insert(name.to_string());
        }
        Some(placeholder(name))
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

/// Where a secret would be read from, and whether it is there: one line of `fleet secrets`
/// (never the value), and whether it is set.
pub(crate) fn describe(source: &Secrets, name: &str) -> (String, bool) {
    let variable = variable(name);
    let set_in = if std::env::var_os(&variable).is_some() {
        Some(variable.clone())
    } else if source.file.contains_key(name) {
        Some(
            source
                .file_name
                .clone()
                .unwrap_or_else(|| "the secrets file".to_string()),
        )
    } else {
        None
    };
    let from = match (&set_in, &source.file_name) {
        (Some(place), _) => format!("set in {place}"),
        (None, Some(file)) => format!("not set: {variable} or `{name}=…` in {file}"),
        (None, None) => format!("not set: {variable} or `{name}=…` in --secrets-file FILE"),
    };
    (format!("{name}\t{from}"), set_in.is_some())
}
