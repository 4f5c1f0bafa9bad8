//! Declarations into members: pools, matrices and static hosts.
//!
//! In: one resource declaration. Out: one expansion per member of its pool or combination of
//! its matrix axes, each with its variables (`fleet`, `n`, `index`, the axes and, for an
//! `env` axis, the environment's `env.KEY` values), as machines or as static hosts; problems:
//! a count of zero, an environment `environments:` does not define, host names that are no
//! host names (or are paths), hosts that name a template.

use std::collections::BTreeMap;

use super::{Expander, Host, Machine, Runner, RunnerSettings};
use crate::desired::CloudTarget;
use crate::provider::Cloud;
use crate::spec::diagnostic::{quoted, ProblemKind};
use crate::spec::model::{ResourceDecl, ResourceKind, RunnerGlobal, Spanned};

use super::names::valid_host_name;

impl Expander<'_> {
    pub(super) fn expand_decl(
        &mut self,
        decl: &ResourceDecl,
        clouds: &BTreeMap<Cloud, CloudTarget>,
        out: &mut Vec<Machine>,
    ) {
        let file = self.file;
        let count = decl.count.as_ref().map_or(1, |count| count.value);
        if count == 0 {
            if let Some(count) = &decl.count {
                let problem = self
                    .new_problem(
                        ProblemKind::InvalidValue,
                        count.span,
                        "A count of zero",
                        "expands to nothing",
                    )
                    .with_help("remove the resource to have none, or set a count of 1 or more");
                self.problem(problem);
            }
        }
        let mut combinations: Vec<Vec<(String, Spanned<String>)>> = vec![Vec::new()];
        for axis in &decl.matrix {
            combinations = combinations
                .into_iter()
                .flat_map(|combination| {
                    axis.values.iter().map(move |value| {
                        let mut next = combination.clone();
                        next.push((axis.name.value.clone(), value.clone()));
                        next
                    })
                })
                .collect();
        }
        let mut index = 0;
        for combination in &combinations {
            for n in 1..=count {
                index += 1;
                let mut vars = BTreeMap::new();
                vars.insert("fleet".to_string(), file.fleet.value.clone());
                vars.insert("n".to_string(), n.to_string());
                vars.insert("index".to_string(), index.to_string());
                for (axis, value) in combination {
                    vars.insert(axis.clone(), value.value.clone());
                    if axis == "env" {
                        match file
                            .environments
                            .iter()
                            .find(|env| env.name.value == value.value)
                        {
                            Some(env) => {
                                for (key, val) in &env.values {
                                    vars.insert(format!("env.{}", key.value), val.value.clone());
                                }
                            }
                            None if !file.environments.is_empty() => {
                                let names: Vec<&str> = file
                                    .environments
                                    .iter()
                                    .map(|e| e.name.value.as_str())
                                    .collect();
                                let problem = self
                                    .new_problem(
                                        ProblemKind::DanglingReference,
                                        value.span,
                                        format!("Unknown environment `{}`", quoted(&value.value)),
                                        "not a key of `environments:`",
                                    )
                                    .with_help(format!(
                                        "environments defined: {}",
                                        names.join(", ")
                                    ));
                                self.problem(problem);
                            }
                            None => {}
                        }
                    }
                }
                if self.over_budget.is_some() {
                    // The one problem is said at the end; what a half-expanded resource would
                    // add (empty names, zones) is noise.
                    return;
                }
                if decl.kind == ResourceKind::Host {
                    let host = self.expand_host(decl, &vars);
                    self.hosts.push(host);
                } else if let Some(expanded) = self.expand_one(decl, &vars, clouds) {
                    if self.over_budget.is_some() {
                        return;
                    }
                    out.push(expanded);
                }
            }
        }
    }

    pub(super) fn runner_settings(
        &mut self,
        runner: &RunnerGlobal,
        vars: &BTreeMap<String, String>,
    ) -> RunnerSettings {
        RunnerSettings {
            version: runner.version.as_ref().map(|v| self.interpolate(v, vars)),
            global: self.config_table(&runner.config, vars),
            span: runner.span,
        }
    }

    pub(super) fn expand_host(
        &mut self,
        decl: &ResourceDecl,
        vars: &BTreeMap<String, String>,
    ) -> Host {
        let name = self.interpolate(&decl.name, vars);
        // A host's name becomes a directory of `fleet render -o`: it must be a host name, not
        // a path (`../..`, `/etc`) that would write outside the output directory.
        if !valid_host_name(&name) {
            let problem = self
                .new_problem(
                    ProblemKind::InvalidValue,
                    decl.name.span,
                    format!("Invalid host name `{}`", quoted(&name)),
                    "not a host name",
                )
                .with_help("host names are dot-separated labels of lowercase letters, digits and `-` (e.g. `wb31` or `wb31.example.org`), at most 253 characters");
            self.problem(problem);
        }
        let runners = decl
            .runners
            .iter()
            .map(|runner| {
                if let Some(template) = &runner.template {
                    let problem = self
                        .new_problem(ProblemKind::InvalidValue, template.span, "A static host cannot autoscale from a template", "fleet makes no machines for a host")
                        .with_help("remove `template`; a host's runners use executors such as docker or shell");
                    self.problem(problem);
                }
                Runner {
                    name_span: runner.name.span,
                    config: self.config_table(&runner.config, vars),
                    name: self.interpolate(&runner.name, vars),
                    template: None,
                    arch: runner.arch.clone(),
                    executor_span: runner.executor.as_ref().map(|e| e.span),
                    executor: runner.executor.as_ref().map_or_else(|| "docker".to_string(), |e| e.value.clone()),
                }
            })
            .collect();
        Host {
            name,
            name_span: decl.name.span,
            role: decl
                .role
                .as_ref()
                .map_or_else(|| "runner-host".to_string(), |r| r.value.clone()),
            runner: decl.runner.as_ref().map(|r| self.runner_settings(r, vars)),
            runners,
        }
    }
}
