//! GitLab's Terraform report: the counts the merge-request widget reads
//! (`artifacts:reports:terraform`).
//!
//! In: a [`Plan`]. Out: `{"create": N, "update": N, "delete": N}`, a replacement counted in
//! `create` and in `delete` as Terraform's `["create","delete"]` is by GitLab's parser, and
//! the counts that had to be clamped to [`REPORT_MAX`].

use super::Plan;

/// The largest count written: GitLab's widget shows up to six digits.
pub const REPORT_MAX: usize = 999_999;

/// A report and what it could not say exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The JSON document, one line.
    pub json: String,
    /// Each count over [`REPORT_MAX`], by name, with its true value; it was written as
    /// [`REPORT_MAX`].
    pub clamped: Vec<(&'static str, usize)>,
}

/// The report of a plan.
pub fn report(plan: &Plan) -> Report {
    let summary = &plan.summary;
    let counts = [
        ("create", summary.create + summary.replace),
        ("update", summary.update),
        ("delete", summary.delete + summary.replace),
    ];
    let clamped = counts
        .iter()
        .filter(|(_, count)| *count > REPORT_MAX)
        .map(|(name, count)| (*name, *count))
        .collect();
    let [create, update, delete] = counts.map(|(_, count)| count.min(REPORT_MAX));
    Report {
        json: format!("{{\"create\":{create},\"update\":{update},\"delete\":{delete}}}\n"),
        clamped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Summary;
    use crate::test_support::{desired_set, plan_of};

    fn plan_with(summary: Summary) -> Plan {
        let mut plan = plan_of(&desired_set(Vec::new()), &[]);
        plan.summary = summary;
        plan
    }

    #[test]
    fn a_replacement_counts_as_a_create_and_a_delete() {
        let report = report(&plan_with(Summary {
            create: 2,
            update: 3,
            replace: 4,
            delete: 1,
            no_op: 9,
            blocked: 0,
        }));
        assert_eq!(report.json, "{\"create\":6,\"update\":3,\"delete\":5}\n");
        assert!(report.clamped.is_empty());
    }

    #[test]
    fn counts_past_six_digits_are_clamped_and_named() {
        let report = report(&plan_with(Summary {
            create: 1_000_000,
            update: 5,
            replace: 1,
            delete: 999_998,
            ..Summary::default()
        }));
        assert_eq!(
            report.json,
            "{\"create\":999999,\"update\":5,\"delete\":999999}\n"
        );
        assert_eq!(report.clamped, [("create", 1_000_001)]);
    }
}
