//! `{variables}` and secret references in fleet-file values.
//!
//! In: a value as written, with its span, and the variables of one expansion (`fleet`, `n`,
//! `index`, matrix axes, `env.KEY` of the machine's environment). Out: the value with the
//! variables substituted, within the fleet-wide expansion budget; problems at the exact
//! characters: unknown variables (with the closest known one), `{env.KEY}` missing in an
//! environment (once per environment and key, its other lines named), empty, invalid and
//! unclosed `${secret:NAME}` references. Config tables come out as render values.

use std::collections::BTreeMap;

use miette::SourceSpan;

use super::{Expander, EXPANDED_BYTES};
use crate::render;
use crate::secrets;
use crate::spec::diagnostic::{closest, quoted, ProblemKind};
use crate::spec::model::{ConfigTable, ConfigValue, Environment, Spanned};

impl Expander<'_> {
    /// Substitutes `{variable}`s; reports unknown ones at their place in the file, and checks
    /// `${secret:NAME}` references (whose names may hold variables).
    pub(super) fn interpolate(
        &mut self,
        text: &Spanned<String>,
        vars: &BTreeMap<String, String>,
    ) -> String {
        // Every value of every expanded resource passes here: a long value in a matrix of many
        // machines is copied once per machine, so the total is bounded, not the file alone.
        if self.expanded_bytes > EXPANDED_BYTES {
            self.over_budget.get_or_insert(text.span);
            return String::new();
        }
        let out = self.interpolate_unbounded(text, vars);
        self.expanded_bytes = self.expanded_bytes.saturating_add(out.len());
        out
    }

    fn interpolate_unbounded(
        &mut self,
        text: &Spanned<String>,
        vars: &BTreeMap<String, String>,
    ) -> String {
        let value = text.value.as_str();
        let mut out = String::with_capacity(value.len());
        let raw = &self.source.text[self.source.clamp(text.span).offset()..];
        let quote_shift = usize::from(raw.starts_with('"') || raw.starts_with('\''));
        let base = text.span.offset() + quote_shift;
        let span_of = |from: usize, to: usize| SourceSpan::from((base + from, to - from));
        // Where the open `${secret:` started in `value`, and where its name starts in `out`.
        let mut secret: Option<(usize, usize)> = None;
        let mut at = 0;
        while at < value.len() {
            let rest = &value[at..];
            let next = rest.find(|c| c == '{' || (secret.is_some() && c == '}'));
            let Some(found) = next else {
                out.push_str(rest);
                break;
            };
            out.push_str(&rest[..found]);
            let open = at + found;
            if value.as_bytes()[open] == b'}' {
                if let Some((start, name_from)) = secret.take() {
                    let name = out[name_from..].to_string();
                    self.check_secret_name(&name, span_of(start, open + 1));
                }
                out.push('}');
                at = open + 1;
                continue;
            }
            // `${…}` is not a variable: `${secret:NAME}` is a secret reference, and anything
            // else (a shell's `${HOME}` in a script) passes through as written.
            if secret.is_none() && value[..open].ends_with('$') {
                if value[open + 1..].starts_with(secrets::REFERENCE_KEYWORD) {
                    out.push('{');
                    out.push_str(secrets::REFERENCE_KEYWORD);
                    secret = Some((open - 1, out.len()));
                    at = open + 1 + secrets::REFERENCE_KEYWORD.len();
                } else {
                    out.push('{');
                    at = open + 1;
                }
                continue;
            }
            let Some(close) = value[open..].find('}') else {
                out.push_str(&value[open..]);
                break;
            };
            let name = &value[open + 1..open + close];
            match vars.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    let span = span_of(open, open + close + 1);
                    self.unknown_variable(name, span, vars);
                }
            }
            at = open + close + 1;
        }
        if let Some((start, _)) = secret {
            let problem = self
                .new_problem(
                    ProblemKind::InvalidValue,
                    span_of(start, value.len()),
                    "Unclosed secret reference",
                    "no `}` ends this `${secret:`",
                )
                .with_help("end the reference with `}`, e.g. `${secret:RUNNER_TOKEN}`");
            self.problem(problem);
        }
        out
    }

    fn check_secret_name(&mut self, name: &str, span: SourceSpan) {
        if name.is_empty() {
            let problem = self
                .new_problem(ProblemKind::InvalidValue, span, "Empty secret name", "`${secret:}` names no secret")
                .with_help("name the secret, e.g. `${secret:RUNNER_TOKEN}`; apply reads it from `FLEET_SECRET_RUNNER_TOKEN` or `--secrets-file`");
            self.problem(problem);
        } else if !secrets::is_valid_name(name) {
            let problem = self
                .new_problem(
                    ProblemKind::InvalidValue,
                    span,
                    format!("Invalid secret name `{}`", quoted(name)),
                    "not a secret name",
                )
                .with_help("secret names are ASCII letters, digits, `_`, `-` and `.`, e.g. `${secret:RUNNER_TOKEN}`");
            self.problem(problem);
        }
    }

    /// `{env.KEY}` where environment `environment` (declared as `env`) has no `KEY`.
    fn missing_env_value(
        &mut self,
        key: &str,
        environment: &str,
        env: &Environment,
        span: SourceSpan,
    ) {
        self.unresolved_uses += 1;
        let id = (environment.to_string(), key.to_string());
        if let Some(&index) = self.missing_env.get(&id) {
            // Named by line in the label rather than drawn: the uses of one key are often
            // far apart, and a snippet spanning them all would bury the message.
            let (line, _) = self.source.line_col(span.offset());
            let problem = &mut self.problems[index];
            let (first_line, _) = self.source.line_col(problem.span.offset());
            let lines = self.missing_env_lines.entry(index).or_default();
            if line != first_line && !lines.contains(&line) {
                lines.push(line);
                let shown: Vec<String> = lines.iter().map(usize::to_string).collect();
                problem.label = format!(
                    "environment `{environment}` has no `{}`; also used on line {}",
                    quoted(key),
                    shown.join(", ")
                );
            }
            return;
        }
        let file = self.file;
        let others: Vec<&str> = file
            .environments
            .iter()
            .filter(|other| other.values.iter().any(|(k, _)| k.value == key))
            .map(|other| other.name.value.as_str())
            .collect();
        let key_shown = quoted(key);
        let help = if others.is_empty() {
            format!("add `{key_shown}: …` to `environments.{environment}`")
        } else {
            format!(
                "add `{key_shown}: …` to `environments.{environment}`, as {} set it",
                others.join(", ")
            )
        };
        let problem = self
            .new_problem(
                ProblemKind::UnknownVariable,
                span,
                format!(
                    "`{{env.{}}}` is not set for environment `{environment}`",
                    quoted(key)
                ),
                format!("environment `{environment}` has no `{}`", quoted(key)),
            )
            .with_secondary(env.name.span, format!("environment `{environment}`"))
            .with_help(help);
        self.missing_env.insert(id, self.problems.len());
        self.problem(problem);
    }

    fn unknown_variable(&mut self, name: &str, span: SourceSpan, vars: &BTreeMap<String, String>) {
        self.unresolved_uses += 1;
        // `{env.KEY}` with an `env` axis: the key is missing in this one environment. It is
        // reported once per environment and key, at its first use, with the lines of the
        // other uses named in its label.
        if let (Some(key), Some(environment)) = (name.strip_prefix("env."), vars.get("env")) {
            let file = self.file;
            let found = file
                .environments
                .iter()
                .find(|env| env.name.value == *environment);
            match found {
                Some(env) => {
                    self.missing_env_value(key, environment, env, span);
                    return;
                }
                // An environment that `environments:` does not define is reported as such.
                None if !file.environments.is_empty() => return,
                None => {}
            }
        }

        let known: Vec<&str> = vars.keys().map(String::as_str).collect();
        let help = match closest(name, known.iter().copied()) {
            Some(suggestion) => format!(
                "did you mean `{{{suggestion}}}`? Variables here: {}",
                braces(&known)
            ),
            None if name.starts_with("env.") => {
                "`{env.KEY}` needs a matrix axis `env` whose values are keys of `environments:`"
                    .to_string()
            }
            None => format!("variables here: {}", braces(&known)),
        };
        let problem = self
            .new_problem(
                ProblemKind::UnknownVariable,
                span,
                format!("Unknown variable `{{{}}}`", quoted(name)),
                "nothing defines this variable",
            )
            .with_help(help);
        self.problem(problem);
    }

    /// Converts fleet-file config values to render values, substituting `{variables}`.
    pub(super) fn config_table(
        &mut self,
        table: &ConfigTable,
        vars: &BTreeMap<String, String>,
    ) -> render::Table {
        table
            .iter()
            .map(|(key, value)| {
                (
                    key.value.clone(),
                    Some(key.span),
                    self.config_value(value, vars),
                )
            })
            .collect()
    }

    fn config_value(
        &mut self,
        value: &ConfigValue,
        vars: &BTreeMap<String, String>,
    ) -> render::Value {
        match value {
            ConfigValue::String(text) => render::Value::Str(self.interpolate(text, vars)),
            ConfigValue::Integer(number) => render::Value::Int(number.value),
            ConfigValue::Float(number) => render::Value::Float(number.value),
            ConfigValue::Bool(flag) => render::Value::Bool(flag.value),
            ConfigValue::Array(items, _) => render::Value::Array(
                items
                    .iter()
                    .map(|item| self.config_value(item, vars))
                    .collect(),
            ),
            ConfigValue::Table(table, _) => render::Value::Table(self.config_table(table, vars)),
        }
    }
}

fn braces(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{{{n}}}"))
        .collect::<Vec<_>>()
        .join(", ")
}
