//! Plan (pure): which writes to the children this reconcile makes, from
//! the rendered set's hash, what the operator last applied, and what the
//! stores observe.
//!
//! The rule is to write as little as can keep the cluster right:
//! - nothing while `spec.paused`;
//! - the whole set when it changed (or was never applied by this process),
//!   pruning afterwards when something can be stale;
//! - the whole set again every [`super::DRIFT_CHECK`], to undo edits the
//!   watches do not report (a changed Service port, an edited ConfigMap);
//! - only the missing children when some went away (deleted, or relabelled
//!   out of the watches), at once the first time and with a growing delay
//!   when the same ScalingPhase keeps losing children (so a child that can
//!   never show in the stores cannot cause a write loop);
//! - nothing, and a look again shortly, when the missing children are ones
//!   the operator has just written and the watches have not delivered yet.
//!
//! Also here, the pure halves of those writes: which children are stale
//! ([`stale`], pruned after a whole-set apply) and the part of the set a
//! repair re-applies ([`only`]).

use std::time::Duration;

use std::collections::BTreeSet;

use super::observe::{ChildKey, Observation};
use super::stores::{Lookup, Stores};
use super::{DRIFT_CHECK, SETTLE};
use crate::render::{Desired, Kind};

/// What the operator last applied for one ScalingPhase (kept in memory).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Last {
    /// Hash of the whole rendered set it applied.
    pub hash: String,
    /// Time since that whole-set apply.
    pub since_full: Duration,
    /// Time since its last write of any child (whole set or repair).
    pub since_write: Duration,
    /// Repairs in a row without a settled observation in between.
    pub repairs: u32,
}

/// Why the whole set is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// This process has not applied it yet (a new ScalingPhase, or a restart).
    NotYetApplied,
    /// The rendered set changed.
    Changed,
    /// [`super::DRIFT_CHECK`] passed since the last whole-set apply.
    DriftCheck,
}

/// The writes of one reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// `spec.paused`: no child is written.
    Hold,
    /// The children match what was applied: no write.
    UpToDate,
    /// Apply the whole rendered set, then prune when `prune`.
    ApplyAll {
        /// Delete children that are no longer rendered.
        prune: bool,
        /// Why.
        why: Why,
    },
    /// Re-apply only these children, which went missing.
    Repair(Vec<ChildKey>),
    /// Children the operator just wrote are not in the stores yet: no
    /// write, look again after this long.
    Settle(Duration),
}

/// How long after its `repairs`-th repair in a row a ScalingPhase may be
/// repaired again: [`SETTLE`], doubling, at most [`DRIFT_CHECK`].
pub fn repair_delay(repairs: u32) -> Duration {
    SETTLE
        .saturating_mul(1u32 << repairs.min(16))
        .min(DRIFT_CHECK)
}

/// The plan. `phase_changed`: the active phase or the rendered shape moved
/// since the status was written (so children of the old one may be stale).
///
/// Pruning deletes what is not rendered, so it runs only when something can
/// be stale: the set changed, the phase changed, or the drift check. The
/// first apply of an unchanged phase after a restart does not prune; the
/// drift check does, [`DRIFT_CHECK`] later.
pub fn plan(
    paused: bool,
    hash: &str,
    last: Option<&Last>,
    phase_changed: bool,
    seen: &Observation,
) -> Plan {
    if paused {
        return Plan::Hold;
    }
    let Some(last) = last else {
        return Plan::ApplyAll {
            prune: phase_changed,
            why: Why::NotYetApplied,
        };
    };
    if last.hash != hash {
        return Plan::ApplyAll {
            prune: true,
            why: Why::Changed,
        };
    }
    if last.since_full > DRIFT_CHECK {
        return Plan::ApplyAll {
            prune: true,
            why: Why::DriftCheck,
        };
    }
    if seen.missing.is_empty() {
        return Plan::UpToDate;
    }
    // Just written (by the last apply or repair): the watches have not
    // delivered them yet. Or repaired again and again: slow down.
    let wait = if last.repairs == 0 {
        SETTLE
    } else {
        repair_delay(last.repairs)
    };
    match wait.checked_sub(last.since_write) {
        Some(left) if !left.is_zero() => Plan::Settle(left),
        _ => Plan::Repair(seen.missing.clone()),
    }
}

pub(super) fn present(stores: &Stores, kind: Kind, ns: &str, name: &str) -> bool {
    matches!(stores.lookup(kind, ns, name), Lookup::Present(_))
}

/// Children in the stores that ScalingPhase `sp` (uid `uid`) controls and
/// `desired` no longer names, dependents first. Never Secrets or
/// PersistentVolumeClaims: data and credentials outlive a phase change.
pub(super) fn stale(
    stores: &Stores,
    ns: &str,
    sp: &str,
    uid: &str,
    desired: &Desired,
) -> Vec<ChildKey> {
    let mut out = Vec::new();
    for kind in Kind::APPLY_ORDER.into_iter().rev() {
        if matches!(kind, Kind::Secret | Kind::PersistentVolumeClaim) {
            continue;
        }
        let keep = desired.names(kind);
        for meta in stores.children(kind, ns, sp).unwrap_or_default() {
            let owned = meta
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid && o.controller == Some(true));
            let name = meta.name.unwrap_or_default();
            if owned && !keep.contains(&name) {
                out.push((kind, name));
            }
        }
    }
    out
}

/// The part of `desired` named by `keys`.
pub(super) fn only(desired: &Desired, keys: &BTreeSet<ChildKey>) -> Desired {
    let mut part = desired.clone();
    part.retain(|kind, name| keys.contains(&(kind, name.to_owned())));
    part
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::Kind;

    fn last(secs_full: u64, secs_write: u64, repairs: u32) -> Last {
        Last {
            hash: "h1".into(),
            since_full: Duration::from_secs(secs_full),
            since_write: Duration::from_secs(secs_write),
            repairs,
        }
    }

    fn missing(names: &[&str]) -> Observation {
        Observation {
            missing: names
                .iter()
                .map(|n| (Kind::Service, (*n).to_owned()))
                .collect(),
            ..Observation::default()
        }
    }

    #[test]
    fn paused_writes_nothing() {
        assert_eq!(plan(true, "h2", None, true, &missing(&["a"])), Plan::Hold);
    }

    #[test]
    fn a_set_not_yet_applied_is_applied_and_pruned_only_after_a_phase_change() {
        let none = Observation::default();
        assert_eq!(
            plan(false, "h1", None, false, &none),
            Plan::ApplyAll {
                prune: false,
                why: Why::NotYetApplied
            }
        );
        assert_eq!(
            plan(false, "h1", None, true, &none),
            Plan::ApplyAll {
                prune: true,
                why: Why::NotYetApplied
            }
        );
    }

    #[test]
    fn a_changed_set_is_applied_and_pruned() {
        assert_eq!(
            plan(
                false,
                "h2",
                Some(&last(1, 1, 0)),
                false,
                &Observation::default()
            ),
            Plan::ApplyAll {
                prune: true,
                why: Why::Changed
            }
        );
    }

    #[test]
    fn nothing_to_do_when_the_set_is_unchanged_and_present() {
        assert_eq!(
            plan(
                false,
                "h1",
                Some(&last(10, 10, 0)),
                false,
                &Observation::default()
            ),
            Plan::UpToDate
        );
    }

    #[test]
    fn the_drift_check_reapplies_everything() {
        assert_eq!(
            plan(
                false,
                "h1",
                Some(&last(DRIFT_CHECK.as_secs() + 1, 1, 0)),
                false,
                &Observation::default()
            ),
            Plan::ApplyAll {
                prune: true,
                why: Why::DriftCheck
            }
        );
    }

    #[test]
    fn a_missing_child_is_repaired_alone_once_the_last_write_settled() {
        let seen = missing(&["shop-app"]);
        assert_eq!(
            plan(false, "h1", Some(&last(60, 60, 0)), false, &seen),
            Plan::Repair(vec![(Kind::Service, "shop-app".to_owned())])
        );
        // Written a moment ago: the watch has not delivered it yet.
        assert_eq!(
            plan(false, "h1", Some(&last(60, 0, 0)), false, &seen),
            Plan::Settle(SETTLE)
        );
    }

    #[test]
    fn repeated_repairs_slow_down_up_to_the_drift_check() {
        let seen = missing(&["shop-app"]);
        let just_after = |repairs| plan(false, "h1", Some(&last(60, 4, repairs)), false, &seen);
        assert!(
            matches!(just_after(1), Plan::Settle(d) if d == repair_delay(1) - Duration::from_secs(4))
        );
        assert!(repair_delay(2) > repair_delay(1));
        assert_eq!(repair_delay(30), DRIFT_CHECK);
        assert!(matches!(
            plan(false, "h1", Some(&last(60, 60, 1)), false, &seen),
            Plan::Repair(_)
        ));
    }
}
