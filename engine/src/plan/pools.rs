//! The members of each fixed-size pool, grouped by what the plan does to them.
//!
//! In: a plan's changes. Out: one [`PoolChanges`] per pool (its members, and the names of
//! those created, updated, replaced and deleted), so that a pool of 200 builders reads as one
//! line, `pool arm-builder: 200 members, 3 to replace: arm-builder-7, -19, -88`, in the text
//! and markdown plans, and as one entry of `pools` in the JSON plan. It is the only grouping
//! of pool members; the displays render it, they do not group again.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::diff::{Action, Change};
use crate::provider::{labels, Cloud};
use crate::spec::model::ResourceKind;

/// What the plan does to the members of one pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolChanges {
    /// The pool's name, as its members' `fleet-pool` label carries it (`arm-builder`).
    pub pool: String,
    /// Its cloud.
    pub cloud: Cloud,
    /// Members the fleet file wants (created, changed or unchanged), not those deleted.
    pub members: usize,
    /// Members left as they are.
    pub unchanged: usize,
    /// Cloud names of the members created (`+`).
    pub create: Vec<String>,
    /// Cloud names of the members updated in place (`~`).
    pub update: Vec<String>,
    /// Cloud names of the members replaced (`±` and `∓`).
    pub replace: Vec<String>,
    /// Cloud names of the members deleted (`-`): orphans past the pool's size, duplicates.
    pub delete: Vec<String>,
}

impl PoolChanges {
    /// Whether the plan changes any member.
    pub fn has_changes(&self) -> bool {
        !(self.create.is_empty()
            && self.update.is_empty()
            && self.replace.is_empty()
            && self.delete.is_empty())
    }

    /// The members an action group touches: `create`, `update`, `replace` or `delete`.
    pub fn names(&self, group: Group) -> &[String] {
        match group {
            Group::Create => &self.create,
            Group::Update => &self.update,
            Group::Replace => &self.replace,
            Group::Delete => &self.delete,
        }
    }

    /// One line: `pool arm-builder: 200 members, 3 to replace: arm-builder-7, -19, -88`.
    pub fn line(&self) -> String {
        let mut line = format!("pool {}: {} members", self.pool, self.members);
        for group in Group::ALL {
            let names = self.names(group);
            if !names.is_empty() {
                let _ = write!(
                    line,
                    ", {} to {}: {}",
                    names.len(),
                    group.verb(),
                    short_names(&self.pool, names)
                );
            }
        }
        if !self.has_changes() {
            line.push_str(", unchanged");
        }
        line
    }

    /// `200 members, 3 to replace: arm-builder-7, -19, -88`, for one action group only.
    pub fn group_line(&self, group: Group) -> String {
        let names = self.names(group);
        format!(
            "{} members, {} to {}: {}",
            self.members,
            names.len(),
            group.verb(),
            short_names(&self.pool, names)
        )
    }
}

/// The four things a plan does, replacements of either order together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Group {
    /// `+`
    Create,
    /// `~`
    Update,
    /// `±` and `∓`
    Replace,
    /// `-`
    Delete,
}

impl Group {
    /// In the order plans show them.
    pub const ALL: [Group; 4] = [Group::Create, Group::Update, Group::Replace, Group::Delete];

    /// The group of an action; `None` for a no-op.
    pub fn of(action: Action) -> Option<Group> {
        match action {
            Action::NoOp => None,
            Action::Create => Some(Group::Create),
            Action::Update => Some(Group::Update),
            Action::ReplaceCreateBeforeDestroy | Action::ReplaceDestroyBeforeCreate => {
                Some(Group::Replace)
            }
            Action::Delete => Some(Group::Delete),
        }
    }

    /// `create`, `update`, `replace`, `delete`.
    pub fn verb(self) -> &'static str {
        match self {
            Group::Create => "create",
            Group::Update => "update",
            Group::Replace => "replace",
            Group::Delete => "delete",
        }
    }
}

/// The pool a change belongs to, from its members' `fleet-pool` label; `None` for anything
/// that is not a pool member.
pub fn pool_of(change: &Change) -> Option<&str> {
    if change.kind != ResourceKind::Pool {
        return None;
    }
    fn labelled(spec: &crate::provider::MachineSpec) -> Option<&str> {
        spec.labels.get(labels::POOL).map(String::as_str)
    }
    change
        .after
        .as_ref()
        .and_then(|after| labelled(&after.spec))
        .or_else(|| {
            change
                .before
                .as_ref()
                .and_then(|before| labelled(&before.spec))
        })
        .or(Some(change.address.name()))
}

/// Every pool with members in `changes`, sorted by name, members in plan order.
pub fn pools(changes: &[Change]) -> Vec<PoolChanges> {
    let mut by_pool: BTreeMap<&str, PoolChanges> = BTreeMap::new();
    for change in changes {
        let Some(pool) = pool_of(change) else {
            continue;
        };
        let entry = by_pool.entry(pool).or_insert_with(|| PoolChanges {
            pool: pool.to_string(),
            cloud: change.cloud,
            members: 0,
            unchanged: 0,
            create: Vec::new(),
            update: Vec::new(),
            replace: Vec::new(),
            delete: Vec::new(),
        });
        if change.after.is_some() {
            entry.members += 1;
        }
        let name = change.cloud_name().to_string();
        match Group::of(change.action) {
            None => entry.unchanged += 1,
            Some(Group::Create) => entry.create.push(name),
            Some(Group::Update) => entry.update.push(name),
            Some(Group::Replace) => entry.replace.push(name),
            Some(Group::Delete) => entry.delete.push(name),
        }
    }
    by_pool.into_values().collect()
}

/// Member names as a pool line shows them: the first in full, the rest by what follows the
/// pool's name (`arm-builder-7, -19, -88`), and runs of three or more consecutive numbers as
/// a range (`arm-builder-1 to -200`). Names not starting with the pool's name stay whole.
pub fn short_names(pool: &str, names: &[String]) -> String {
    let mut numbered: Vec<(Option<u64>, &str)> = names
        .iter()
        .map(|name| {
            let number = name
                .strip_prefix(pool)
                .and_then(|rest| rest.strip_prefix('-'))
                .filter(|digits| !digits.starts_with('0') || digits.len() == 1)
                .and_then(|digits| digits.parse::<u64>().ok());
            (number, name.as_str())
        })
        .collect();
    // Members sort by number, so the runs are found whatever order the plan lists them in
    // (addresses sort as text: arm-builder-10 before arm-builder-2).
    numbered.sort_by(|a, b| match (a.0, b.0) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.1.cmp(b.1),
    });
    let mut parts: Vec<String> = Vec::new();
    let mut index = 0;
    while index < numbered.len() {
        let (number, name) = numbered[index];
        let shown = |name: &str, first: bool| -> String {
            match name.strip_prefix(pool) {
                Some(rest) if !first && !rest.is_empty() => rest.to_string(),
                _ => name.to_string(),
            }
        };
        let first = parts.is_empty();
        let Some(start) = number else {
            parts.push(shown(name, first));
            index += 1;
            continue;
        };
        let mut end = index;
        while end + 1 < numbered.len()
            && numbered[end + 1].0 == Some(start + (end + 1 - index) as u64)
        {
            end += 1;
        }
        if end - index >= 2 {
            parts.push(format!(
                "{} to {}",
                shown(name, first),
                shown(numbered[end].1, false)
            ));
            index = end + 1;
        } else {
            parts.push(shown(name, first));
            index += 1;
        }
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn members_are_named_by_what_follows_the_pool_name() {
        assert_eq!(
            short_names(
                "arm-builder",
                &names(&["arm-builder-7", "arm-builder-19", "arm-builder-88"])
            ),
            "arm-builder-7, -19, -88"
        );
    }

    #[test]
    fn runs_of_numbers_are_ranges_in_number_order() {
        let list: Vec<String> = (1..=200).map(|n| format!("arm-builder-{n}")).collect();
        let mut shuffled = list.clone();
        shuffled.sort();
        assert_eq!(
            short_names("arm-builder", &shuffled),
            "arm-builder-1 to -200"
        );
        assert_eq!(
            short_names(
                "b",
                &names(&["b-1", "b-2", "b-4", "b-5", "b-6", "b-9", "stray"])
            ),
            "b-1, -2, -4 to -6, -9, stray"
        );
    }
}
