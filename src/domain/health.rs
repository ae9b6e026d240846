//! Drift: has a source stopped yielding what it used to? A site redesign
//! rarely fails a run: the pages still answer 200, the selectors simply match
//! nothing. Each finished run is judged against the source's earlier good
//! runs (no error, items yielded, not degraded themselves):
//!
//! - a run with no items, when the earlier good runs had items, is
//!   `degraded` ("yielded no items; earlier runs yielded 400");
//! - a field filled in most items before ([`WAS_FILLED`]) and empty in most
//!   items now (filled in under [`NOW_FILLED`]) is `degraded` too, naming the
//!   field and both shares.
//!
//! A run that fails keeps the health it had (the failure shows in the
//! source's state); the next good run judges again, so a source returns to
//! `ok` by itself. The judgement is stored in the run record, so it is kept
//! with the run history and replicated with it.

use serde::{Deserialize, Serialize};

use super::RunRecord;

/// Earlier good runs compared with.
pub const BASELINE_RUNS: usize = 5;
/// A field filled in at least this share of items in earlier runs ...
pub const WAS_FILLED: f64 = 0.8;
/// ... and now in less than this share is drift.
pub const NOW_FILLED: f64 = 0.5;

/// Whether a source still yields what it used to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Ok,
    Degraded,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Degraded => "degraded",
        }
    }
}

/// The health after `run`, given the source's `earlier` runs (newest first).
pub fn assess(run: &RunRecord, earlier: &[RunRecord]) -> (Health, Option<String>) {
    if run.error.is_some() {
        return earlier
            .first()
            .map_or((Health::Ok, None), |r| (r.health, r.health_reason.clone()));
    }
    let baseline: Vec<&RunRecord> = earlier
        .iter()
        .filter(|r| r.error.is_none() && r.items > 0 && r.health == Health::Ok)
        .take(BASELINE_RUNS)
        .collect();
    if baseline.is_empty() {
        return (Health::Ok, None);
    }
    if run.items == 0 {
        let before = baseline[0].items;
        return (
            Health::Degraded,
            Some(format!(
                "the last run yielded no items; earlier runs yielded {before} (has the site changed?)"
            )),
        );
    }
    // Only runs that counted their fields can tell a field's usual share.
    let counted: Vec<&&RunRecord> = baseline.iter().filter(|r| !r.filled.is_empty()).collect();
    let total: u64 = counted.iter().map(|r| r.items).sum();
    if total == 0 {
        return (Health::Ok, None);
    }
    let mut drifted = Vec::new();
    for (field, now) in &run.filled {
        let before: u64 = counted
            .iter()
            .map(|r| r.filled.get(field).copied().unwrap_or(0))
            .sum();
        let was = before as f64 / total as f64;
        let is = *now as f64 / run.items as f64;
        if was >= WAS_FILLED && is < NOW_FILLED {
            drifted.push(format!(
                "field '{field}' is filled in {:.0}% of items, was {:.0}%",
                is * 100.0,
                was * 100.0
            ));
        }
    }
    if drifted.is_empty() {
        (Health::Ok, None)
    } else {
        (Health::Degraded, Some(drifted.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(items: u64, filled: &[(&str, u64)]) -> RunRecord {
        RunRecord {
            items,
            filled: filled.iter().map(|(f, n)| ((*f).to_owned(), *n)).collect(),
            ..RunRecord::default()
        }
    }

    #[test]
    fn a_first_run_is_ok_whatever_it_yields() {
        assert_eq!(assess(&run(0, &[]), &[]).0, Health::Ok);
    }

    #[test]
    fn no_items_after_good_runs_is_degraded_until_items_return() {
        let earlier = [run(20, &[("title", 20)])];
        let (health, reason) = assess(&run(0, &[("title", 0)]), &earlier);
        assert_eq!(health, Health::Degraded);
        assert!(reason.unwrap().contains("no items"));
        // A second empty run is still judged against the good one.
        let mut bad = run(0, &[]);
        bad.health = Health::Degraded;
        let (health, _) = assess(&run(0, &[]), &[bad.clone(), earlier[0].clone()]);
        assert_eq!(health, Health::Degraded);
        let (health, reason) = assess(&run(20, &[("title", 20)]), &[bad, earlier[0].clone()]);
        assert_eq!((health, reason), (Health::Ok, None));
    }

    #[test]
    fn a_field_that_empties_is_named() {
        let earlier = [run(20, &[("title", 20), ("price", 19)])];
        let (health, reason) = assess(&run(20, &[("title", 20), ("price", 2)]), &earlier);
        assert_eq!(health, Health::Degraded);
        let reason = reason.unwrap();
        assert!(
            reason.contains("'price'") && reason.contains("10%"),
            "{reason}"
        );
        // A field that was always sparse is no drift.
        let earlier = [run(20, &[("note", 5)])];
        assert_eq!(assess(&run(20, &[("note", 0)]), &earlier).0, Health::Ok);
    }

    #[test]
    fn a_failed_run_keeps_the_health_it_had() {
        let mut degraded = run(0, &[]);
        degraded.health = Health::Degraded;
        degraded.health_reason = Some("x".into());
        let mut failed = run(0, &[]);
        failed.error = Some("boom".into());
        assert_eq!(assess(&failed, &[degraded]).0, Health::Degraded);
    }
}
