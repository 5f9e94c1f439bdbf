//! `plan --to N`: what changing `spec.phase` to N would create, change and
//! retire in the live cluster, step by step, with the data that would move.
//!
//! The plan is computed with the operator's own code, not a second
//! implementation that could drift from it: the spec is validated and
//! rendered at every phase on the way by `ladder_operator::validate` and
//! `ladder_operator::render` (pure), the steps and their approvals follow
//! `ladder_operator::transition`, and the volumes a step leaves or needs are
//! `render::migration::TierVolumes`, as the reconciler computes them.
//!
//! This module is pure: [`render_path`] renders, [`report`] compares the
//! rendering with an [`Inventory`] of the live children and with the
//! server-side dry-run results ([`Compared`]) that `cluster` fetched, so
//! every part of a plan is unit-tested without a cluster.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;

use crate::approval::{self, Step};
use crate::table::{Table, fields, section};
use ladder_crds::catalogue::Phase;
use ladder_crds::scalingphase::{AutoscaleMode, DeletionPolicy, ScalingPhase};
use ladder_operator::apply::volumes::quantity_bytes;
use ladder_operator::render::migration::TierVolumes;
use ladder_operator::render::{self, Desired, Kind};
use ladder_operator::transition::{self, DataTier, RETIRED_BY_LABEL};
use ladder_operator::validate::{self, World};

/// A PersistentVolumeClaim of the namespace, as read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    /// Its name.
    pub name: String,
    /// Requested size (`spec.resources.requests.storage`).
    pub size: Option<String>,
    /// The value of its `ladder.dev/retired-by` label, if a past transition retired it.
    pub retired_by: Option<String>,
}

/// What exists in the namespace now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Children of the ScalingPhase (labelled, controlled by it): `(kind, name)`.
    pub children: BTreeSet<(String, String)>,
    /// Every PersistentVolumeClaim of the namespace.
    pub claims: Vec<Claim>,
    /// Names of every Secret of the namespace.
    pub secrets: BTreeSet<String>,
}

impl Inventory {
    fn has(&self, kind: &str, name: &str) -> bool {
        self.children.contains(&(kind.to_owned(), name.to_owned()))
    }

    fn claim(&self, name: &str) -> Option<&Claim> {
        self.claims.iter().find(|c| c.name == name)
    }
}

/// The server-side dry-run of applying one desired object that exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compared {
    /// The apply would change nothing.
    Same,
    /// The apply would change these fields (JSON paths).
    Differs(Vec<String>),
    /// Not compared, and why (e.g. the dry-run was refused or skipped).
    Unknown(String),
}

/// The spec rendered at each phase of the path from the phase the operator
/// steps from to the planned one.
#[derive(Debug)]
pub struct Rendered {
    /// The phase the operator steps from (`None`: not reconciled yet, the
    /// operator builds the planned phase directly).
    pub from: Option<i32>,
    /// The planned phase.
    pub to: i32,
    /// The rendering of every phase on the path, `from` and `to` included.
    pub phases: BTreeMap<i32, Desired>,
    /// Estimated monthly cost at `to`.
    pub cost: i64,
}

impl Rendered {
    /// What the planned phase renders.
    pub fn target(&self) -> &Desired {
        &self.phases[&self.to]
    }

    fn steps(&self) -> Vec<Step> {
        self.from
            .map(|from| approval::steps(from, self.to))
            .unwrap_or_default()
    }
}

/// Validates and renders the spec with `spec.phase: to` as the operator
/// would: the whole spec must validate at `to` (a refusal there is what the
/// apiserver's CEL rules or the operator's InvalidSpec would say), and each
/// phase on the way is rendered like the reconciler renders the sides of a
/// transition (autoscaling aside).
pub fn render_path(sp: &ScalingPhase, world: &World, to: i32) -> Result<Rendered, String> {
    if Phase::from_number(to).is_none() {
        return Err(format!("phase {to} does not exist: phases are 0 to 4"));
    }
    let mut declared = sp.clone();
    declared.spec.phase = to;
    validate::validate(&declared, world)
        .map_err(|e| format!("spec.phase: {to} would be refused: {e}"))?;
    let from = approval::stepping_from(sp);
    let path: Vec<i32> = match from {
        Some(f) => std::iter::once(f)
            .chain(approval::steps(f, to).into_iter().map(|s| s.to))
            .collect(),
        None => vec![to],
    };
    let mut phases = BTreeMap::new();
    let mut cost = 0;
    for p in path {
        let (v, prof) = validated_at(sp, world, p)
            .map_err(|e| format!("phase {p} of this spec is invalid: {e}"))?;
        if p == to {
            cost = v.estimated_monthly_cost(&prof);
        }
        phases.insert(p, render::render(&v, &prof));
    }
    Ok(Rendered {
        from,
        to,
        phases,
        cost,
    })
}

/// The spec validated as if it declared `phase`, autoscaling aside: what the
/// reconciler renders for each side of a transition.
fn validated_at(
    sp: &ScalingPhase,
    world: &World,
    phase: i32,
) -> Result<(validate::Validated, ladder_crds::catalogue::PhaseProfile), validate::Invalid> {
    let mut at = sp.clone();
    at.spec.phase = phase;
    at.spec.autoscale.mode = AutoscaleMode::Off;
    at.spec.autoscale.max_phase = None;
    at.spec.autoscale.min_phase = None;
    validate::validate(&at, world)
}

/// What happens to one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Action {
    /// Created.
    Create,
    /// Changed in place.
    Change,
    /// Removed (or, for volumes, retired per `deletionPolicy`).
    Retire,
    /// Left as it is.
    Unchanged,
    /// Exists and is re-applied, but the dry-run could not say what changes.
    NotCompared,
}

/// One object of the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectChange {
    /// What happens.
    pub action: Action,
    /// Kubernetes kind.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Why, or which fields change.
    pub detail: String,
}

/// One volume a step copies from or into.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    /// Claim name.
    pub name: String,
    /// Its size (live request, or the rendered template's for a new one).
    pub size: Option<String>,
    /// Whether the claim exists now.
    pub exists: bool,
}

/// The data one step moves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataMove {
    /// The tier the rows leave.
    pub from_tier: String,
    /// The tier they enter.
    pub to_tier: String,
    /// The Job that copies and verifies them (`ladder-app migrate`).
    pub migration_job: String,
    /// The volumes of the tier left (kept, fenced read-only, until Retire).
    pub source_volumes: Vec<Volume>,
    /// The volumes of the tier entered.
    pub target_volumes: Vec<Volume>,
}

/// One step of the path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    /// Phase left.
    pub from: i32,
    /// Phase entered.
    pub to: i32,
    /// The data it moves, when it changes the data tier.
    pub data: Option<DataMove>,
    /// `not needed`, `approved`, or `required: ...`.
    pub approval: String,
    /// Why it would stop by itself (approval, stale volumes), if it would.
    pub blocked_by: Vec<String>,
}

/// The whole plan (also its `-o json|yaml`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanReport {
    /// ScalingPhase name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// The phase the operator steps from (`None`: not reconciled yet).
    pub from: Option<i32>,
    /// The planned phase.
    pub to: i32,
    /// The steps, one phase at a time.
    pub steps: Vec<StepReport>,
    /// Every object that is created, changed or retired (and, in JSON, the unchanged ones).
    pub objects: Vec<ObjectChange>,
    /// Estimated monthly cost now (status) and at the planned phase.
    #[serde(rename = "currentMonthlyCostUSD")]
    pub current_monthly_cost_usd: Option<i64>,
    /// Estimated monthly cost at the planned phase.
    #[serde(rename = "plannedMonthlyCostUSD")]
    pub planned_monthly_cost_usd: i64,
    /// `spec.monthlyBudgetUsd`.
    pub monthly_budget_usd: Option<i64>,
    /// Whether changes were found with a server-side dry-run.
    pub server_dry_run: bool,
    /// What else a human should know.
    pub notes: Vec<String>,
}

impl PlanReport {
    /// Objects with this action.
    pub fn count(&self, action: Action) -> usize {
        self.objects.iter().filter(|o| o.action == action).count()
    }
}

fn tier_name(t: DataTier) -> &'static str {
    match t {
        DataTier::Sqlite => "SQLite (the app's volume)",
        DataTier::Postgres => "PostgreSQL",
        DataTier::Shards => "sharded PostgreSQL",
        DataTier::Distributed => "CockroachDB",
    }
}

fn name_of<K: kube::Resource>(k: &K) -> String {
    k.meta().name.clone().unwrap_or_default()
}

/// A claim a rendering makes.
#[derive(Clone, Debug)]
struct RenderedClaim {
    name: String,
    /// The StatefulSet whose template makes it (`None`: a standalone claim).
    set: Option<String>,
    /// Requested size.
    size: Option<String>,
    /// The `ladder.dev/tier` label of its StatefulSet or of the claim.
    tier: Option<String>,
}

/// Every claim a rendering makes: standalone claims and `<template>-<sts>-<i>`
/// of each StatefulSet replica, with the rendered size.
fn claims_of(d: &Desired) -> Vec<RenderedClaim> {
    let mut out: Vec<RenderedClaim> = d
        .persistent_volume_claims
        .iter()
        .map(|c| RenderedClaim {
            name: name_of(c),
            set: None,
            size: request(c),
            tier: c.labels().get(render::TIER_LABEL).cloned(),
        })
        .collect();
    for sts in &d.stateful_sets {
        out.extend(sts_claims(sts));
    }
    out
}

/// The claims of each replica of a StatefulSet.
fn sts_claims(sts: &StatefulSet) -> Vec<RenderedClaim> {
    let set = name_of(sts);
    let tier = sts.labels().get(render::TIER_LABEL).cloned();
    let replicas = sts.spec.replicas.unwrap_or(1);
    sts.spec
        .volume_claim_templates
        .iter()
        .flatten()
        .flat_map(|t| {
            let (set, tier) = (set.clone(), tier.clone());
            (0..replicas).map(move |i| RenderedClaim {
                name: format!("{}-{set}-{i}", name_of(t)),
                set: Some(set.clone()),
                size: request(t),
                tier: tier.clone(),
            })
        })
        .collect()
}

/// The `ladder.dev/tier` of the volumes that hold a data tier's rows (other
/// volumes a step leaves, such as Redis's cache, hold no rows to move).
fn tier_label(t: DataTier) -> &'static str {
    match t {
        DataTier::Sqlite => "app",
        DataTier::Postgres | DataTier::Shards => "postgres",
        DataTier::Distributed => "cockroach",
    }
}

fn request(c: &k8s_openapi::api::core::v1::PersistentVolumeClaim) -> Option<String> {
    c.spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .map(|q| q.0.clone())
}

fn retain_text(sp: &ScalingPhase) -> String {
    sp.spec
        .transitions
        .retain_old_tier_for
        .as_ref()
        .map_or_else(|| "24h".to_owned(), |d| d.0.clone())
}

/// Compares the rendering with what is live, step by step.
pub fn report(
    sp: &ScalingPhase,
    r: &Rendered,
    live: &Inventory,
    compared: &BTreeMap<(String, String), Compared>,
    server_dry_run: bool,
) -> PlanReport {
    let target = r.target();
    let steps = r.steps();
    let mut objects = Vec::new();

    // Desired objects: created, changed or unchanged.
    for kind in Kind::APPLY_ORDER {
        for name in target.names(kind) {
            let k = kind.name();
            if kind == Kind::Secret {
                if !live.secrets.contains(&name) {
                    objects.push(change(
                        Action::Create,
                        k,
                        &name,
                        "generated once by the operator",
                    ));
                } else {
                    objects.push(change(
                        Action::Unchanged,
                        k,
                        &name,
                        "generated Secrets are never rewritten",
                    ));
                }
                continue;
            }
            if !live.has(k, &name) {
                let detail = match kind {
                    Kind::Job => "the migration Job of a step".to_owned(),
                    _ => String::new(),
                };
                objects.push(change(Action::Create, k, &name, &detail));
                continue;
            }
            let (action, detail) = match compared.get(&(k.to_owned(), name.clone())) {
                Some(Compared::Same) => (Action::Unchanged, String::new()),
                Some(Compared::Differs(paths)) => (Action::Change, paths.join(", ")),
                Some(Compared::Unknown(why)) => (Action::NotCompared, why.clone()),
                None => (Action::NotCompared, "no server-side dry-run".to_owned()),
            };
            objects.push(change(action, k, &name, &detail));
        }
    }

    // Live children the planned phase does not render.
    for (kind, name) in &live.children {
        let Some(k) = Kind::APPLY_ORDER.into_iter().find(|k| k.name() == kind) else {
            continue;
        };
        if matches!(k, Kind::Secret | Kind::PersistentVolumeClaim) || target.names(k).contains(name)
        {
            continue;
        }
        let leaving = steps.iter().find(|s| {
            r.phases
                .get(&s.to)
                .is_some_and(|d| !d.names(k).contains(name))
        });
        let detail = match leaving {
            Some(s) if s.moves_data() => format!(
                "at step {}→{}'s Retire, after the old tier is kept {} (spec.transitions.retainOldTierFor)",
                s.from,
                s.to,
                retain_text(sp)
            ),
            Some(s) => format!("once step {}→{} has cut over", s.from, s.to),
            None => format!("pruned: phase {} does not render it", r.to),
        };
        objects.push(change(Action::Retire, kind, name, &detail));
    }

    // Volumes: new claims, claims that grow, claims of a tier that is left.
    let mut seen_claims = BTreeSet::new();
    for RenderedClaim {
        name: claim,
        set,
        size,
        ..
    } in claims_of(target)
    {
        seen_claims.insert(claim.clone());
        let from_set = set
            .as_deref()
            .map(|s| format!("volume of StatefulSet {s}"))
            .unwrap_or_else(|| "volume".into());
        match live.claim(&claim) {
            None if set.is_some() => objects.push(change(
                Action::Create,
                "PersistentVolumeClaim",
                &claim,
                &format!("{from_set}, {}", size.as_deref().unwrap_or("default size")),
            )),
            // Standalone claims are rendered objects: listed above.
            None => {}
            Some(existing) => {
                let grow = match (
                    existing.size.as_deref().and_then(quantity_bytes),
                    size.as_deref().and_then(quantity_bytes),
                ) {
                    (Some(old), Some(new)) if new > old => Some(true),
                    (Some(old), Some(new)) if new < old => Some(false),
                    _ => None,
                };
                let (old, new) = (
                    existing.size.clone().unwrap_or_default(),
                    size.clone().unwrap_or_default(),
                );
                match grow {
                    Some(true) => objects.push(change(
                        Action::Change,
                        "PersistentVolumeClaim",
                        &claim,
                        &format!(
                            "grows from {old} to {new} (the StorageClass must allow expansion)"
                        ),
                    )),
                    Some(false) => objects.push(change(
                        Action::Unchanged,
                        "PersistentVolumeClaim",
                        &claim,
                        &format!(
                            "stays {old}: volumes never shrink (phase {} asks {new})",
                            r.to
                        ),
                    )),
                    None if set.is_some() => objects.push(change(
                        Action::Unchanged,
                        "PersistentVolumeClaim",
                        &claim,
                        &from_set,
                    )),
                    None => {}
                }
            }
        }
    }
    let mut step_reports = Vec::new();
    for s in &steps {
        let (Some(from_d), Some(to_d)) = (r.phases.get(&s.from), r.phases.get(&s.to)) else {
            continue;
        };
        let leaving = TierVolumes::only_in(from_d, to_d);
        let coming = TierVolumes::only_in(to_d, from_d);
        let by = s.value();
        for c in live.claims.iter().filter(|c| leaving.contains(&c.name)) {
            if seen_claims.contains(&c.name) {
                continue;
            }
            seen_claims.insert(c.name.clone());
            let from_set = claims_of(from_d)
                .into_iter()
                .find(|r| r.name == c.name)
                .and_then(|r| r.set);
            let detail = match (sp.spec.deletion_policy, from_set) {
                (DeletionPolicy::Delete, Some(set)) => format!(
                    "deleted with StatefulSet {set} at step {by}'s Retire (deletionPolicy: Delete)"
                ),
                _ => format!("kept, labelled {RETIRED_BY_LABEL}={by} at step {by}'s Retire"),
            };
            objects.push(change(
                Action::Retire,
                "PersistentVolumeClaim",
                &c.name,
                &detail,
            ));
        }
        let stale: Vec<String> = live
            .claims
            .iter()
            .filter(|c| c.retired_by.is_some() && coming.contains(&c.name))
            .map(|c| c.name.clone())
            .collect();
        let mut blocked_by = Vec::new();
        if !stale.is_empty() {
            blocked_by.push(format!(
                "StaleVolumes: {} retired by a past transition hold stale data; back them up and delete them (or remove their {RETIRED_BY_LABEL} label) first",
                stale.join(", ")
            ));
        }
        let approval = if s.to < s.from && s.moves_data() {
            if sp.spec.transitions.allow_demotion {
                "not needed (allowDemotion)".to_owned()
            } else if approval::approved_value(sp) == Some(by.as_str()) {
                "approved".to_owned()
            } else {
                blocked_by.push(format!(
                    "ApprovalRequired: `kubectl ladder approve {}` (annotation {}={by})",
                    sp.name_any(),
                    transition::APPROVE_ANNOTATION
                ));
                "required".to_owned()
            }
        } else {
            "not needed".to_owned()
        };
        let volumes = |d: &Desired, only: &TierVolumes, tier: DataTier| -> Vec<Volume> {
            claims_of(d)
                .into_iter()
                .filter(|r| only.contains(&r.name) && r.tier.as_deref() == Some(tier_label(tier)))
                .map(|r| {
                    let l = live.claim(&r.name);
                    Volume {
                        size: l.and_then(|c| c.size.clone()).or(r.size),
                        exists: l.is_some(),
                        name: r.name,
                    }
                })
                .collect()
        };
        let (from_tier, to_tier) = (DataTier::of(s.from), DataTier::of(s.to));
        let data = s.moves_data().then(|| DataMove {
            from_tier: tier_name(from_tier).into(),
            to_tier: tier_name(to_tier).into(),
            migration_job: transition::job_name(&sp.name_any(), s.from, s.to),
            source_volumes: volumes(from_d, &leaving, from_tier),
            target_volumes: volumes(to_d, &coming, to_tier),
        });
        step_reports.push(StepReport {
            from: s.from,
            to: s.to,
            data,
            approval,
            blocked_by,
        });
    }
    objects.sort_by(|a, b| {
        (a.action, kind_rank(&a.kind), &a.name).cmp(&(b.action, kind_rank(&b.kind), &b.name))
    });

    let mut notes = Vec::new();
    match r.from {
        None => notes.push(format!(
            "{} has no status yet: the operator builds phase {} directly (no data to move)",
            sp.name_any(),
            r.to
        )),
        Some(f) if f == r.to => notes.push(format!(
            "phase {} is already where the operator is heading",
            r.to
        )),
        Some(_) => {}
    }
    if let Some(t) = sp.status.as_ref().and_then(|s| s.transition.as_ref()) {
        notes.push(format!(
            "a transition {}→{} is in progress (step {:?}); the plan starts where it ends",
            t.from, t.to, t.step
        ));
    }
    if sp.spec.paused {
        notes.push("spec.paused is true: nothing changes until `kubectl ladder resume`".into());
    }
    if sp.spec.autoscale.mode == AutoscaleMode::Auto {
        let cap = sp.spec.autoscale.max_phase.unwrap_or(4);
        if cap > r.to {
            notes.push(format!(
                "autoscale.mode is Auto: the promoter may still raise the phase above {} (up to maxPhase {cap})",
                r.to
            ));
        }
    }
    if let Some(b) = sp.spec.monthly_budget_usd
        && r.cost > b
    {
        notes.push(format!(
            "phase {} costs an estimated ${}/month, above spec.monthlyBudgetUsd (${b}): the Degraded condition will say OverBudget",
            r.to, r.cost
        ));
    }
    if !server_dry_run {
        notes.push("existing objects were not compared (no server-side dry-run)".into());
    }
    PlanReport {
        name: sp.name_any(),
        namespace: sp.namespace().unwrap_or_default(),
        from: r.from,
        to: r.to,
        steps: step_reports,
        objects,
        current_monthly_cost_usd: sp
            .status
            .as_ref()
            .and_then(|s| s.estimated_monthly_cost_usd),
        planned_monthly_cost_usd: r.cost,
        monthly_budget_usd: sp.spec.monthly_budget_usd,
        server_dry_run,
        notes,
    }
}

fn kind_rank(kind: &str) -> usize {
    Kind::APPLY_ORDER
        .iter()
        .position(|k| k.name() == kind)
        .unwrap_or(usize::MAX)
}

fn change(action: Action, kind: &str, name: &str, detail: &str) -> ObjectChange {
    ObjectChange {
        action,
        kind: kind.to_owned(),
        name: name.to_owned(),
        detail: detail.to_owned(),
    }
}

fn phase_label(p: i32) -> String {
    Phase::from_number(p).map_or_else(|| p.to_string(), |ph| ph.to_string())
}

impl PlanReport {
    /// The plan as text: the steps, the data that moves, the objects that
    /// change (unchanged ones are counted, not listed), cost and notes.
    pub fn render(&self, _now: Timestamp) -> String {
        let from = self
            .from
            .map_or_else(|| "not reconciled yet".to_owned(), phase_label);
        let mut out = format!(
            "Plan for {}/{}: {from} → {}\n\n",
            self.namespace,
            self.name,
            phase_label(self.to)
        );
        let mut steps = Table::new(&[
            "step",
            "moves data",
            "approval",
            "migration job",
            "blocked by",
        ]);
        for s in &self.steps {
            steps.row([
                format!("{} → {}", s.from, s.to),
                s.data.as_ref().map_or_else(
                    || "no".to_owned(),
                    |d| format!("{} → {}", d.from_tier, d.to_tier),
                ),
                s.approval.clone(),
                s.data
                    .as_ref()
                    .map(|d| d.migration_job.clone())
                    .unwrap_or_default(),
                s.blocked_by
                    .iter()
                    .map(|b| b.split(':').next().unwrap_or_default().to_owned())
                    .collect::<Vec<_>>()
                    .join(", "),
            ]);
        }
        out.push_str(&section(
            "Steps",
            &if steps.is_empty() {
                String::new()
            } else {
                steps.render()
            },
        ));
        let mut volumes = Table::new(&["step", "role", "volume", "size", "exists"]);
        for s in &self.steps {
            let Some(d) = &s.data else { continue };
            for (role, list) in [("source", &d.source_volumes), ("target", &d.target_volumes)] {
                for v in list {
                    volumes.row([
                        format!("{} → {}", s.from, s.to),
                        role.to_owned(),
                        v.name.clone(),
                        v.size.clone().unwrap_or_default(),
                        if v.exists { "yes" } else { "new" }.to_owned(),
                    ]);
                }
            }
        }
        if !volumes.is_empty() {
            out.push_str(&section(
                "Data that would move (copied and verified by the migration Job; the source is kept fenced read-only until Retire)",
                &volumes.render(),
            ));
        }
        let mut blocked: Vec<String> = Vec::new();
        for s in &self.steps {
            for b in &s.blocked_by {
                blocked.push(format!("{} → {}: {b}", s.from, s.to));
            }
        }
        if !blocked.is_empty() {
            out.push_str(&section("Would wait for", &(blocked.join("\n") + "\n")));
        }
        let mut objects = Table::new(&["action", "kind", "name", "detail"]);
        for o in self
            .objects
            .iter()
            .filter(|o| o.action != Action::Unchanged)
        {
            objects.row([
                format!("{:?}", o.action),
                o.kind.clone(),
                o.name.clone(),
                o.detail.clone(),
            ]);
        }
        let title = if self.server_dry_run {
            "Objects (changes found with a server-side dry-run)"
        } else {
            "Objects"
        };
        let mut body = if objects.is_empty() {
            String::new()
        } else {
            objects.render()
        };
        body.push_str(&format!(
            "{} to create, {} to change, {} to retire, {} unchanged",
            self.count(Action::Create),
            self.count(Action::Change),
            self.count(Action::Retire),
            self.count(Action::Unchanged)
        ));
        match self.count(Action::NotCompared) {
            0 => body.push('\n'),
            n => body.push_str(&format!(", {n} not compared\n")),
        }
        out.push_str(&section(title, &body));
        let cost = match self.current_monthly_cost_usd {
            Some(c) => format!("${c}/month → ${}/month", self.planned_monthly_cost_usd),
            None => format!("${}/month", self.planned_monthly_cost_usd),
        };
        let mut pairs = vec![("Cost", cost)];
        if let Some(b) = self.monthly_budget_usd {
            pairs.push(("Budget", format!("${b}/month")));
        }
        pairs.push((
            "To apply",
            format!(
                "set spec.phase: {} (in Git, when a GitOps tool owns the ScalingPhase)",
                self.to
            ),
        ));
        out.push('\n');
        out.push_str(&fields(&pairs));
        if !self.notes.is_empty() {
            out.push_str(&section(
                "Notes",
                &self
                    .notes
                    .iter()
                    .map(|n| format!("- {n}\n"))
                    .collect::<String>(),
            ));
        }
        out
    }
}

/// The JSON paths where `a` and `b` differ (at most `limit`, shortest first
/// by depth of the walk): objects key by key, arrays index by index.
pub fn differences(a: &serde_json::Value, b: &serde_json::Value, limit: usize) -> Vec<String> {
    fn walk(
        a: &serde_json::Value,
        b: &serde_json::Value,
        path: &str,
        out: &mut Vec<String>,
        limit: usize,
    ) {
        use serde_json::Value;
        if out.len() >= limit || a == b {
            return;
        }
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let child = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        &child,
                        out,
                        limit,
                    );
                }
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
                for (i, (p, q)) in x.iter().zip(y).enumerate() {
                    walk(p, q, &format!("{path}[{i}]"), out, limit);
                }
            }
            _ => out.push(if path.is_empty() {
                ".".into()
            } else {
                path.into()
            }),
        }
    }
    let mut out = Vec::new();
    walk(a, b, "", &mut out, limit);
    out
}

/// An object as compared: without what the server changes on every write
/// (managed fields, resource version, generation) and without status.
pub fn comparable(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
        o.remove("apiVersion");
        o.remove("kind");
        if let Some(m) = o.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            for k in ["managedFields", "resourceVersion", "generation"] {
                m.remove(k);
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use ladder_crds::scalingphase::{ScalingPhaseSpec, ScalingPhaseStatus};
    use ladder_operator::integrations::Integrations;

    fn world() -> World {
        World {
            node_regions: vec!["ap-south".into(), "eu-west".into(), "us-east".into()],
            integrations: Integrations::default(),
        }
    }

    /// `shop` in `prod`, declaring `declared`, running `active`.
    fn shop(declared: i32, active: Option<i32>) -> ScalingPhase {
        let spec: ScalingPhaseSpec =
            serde_yaml::from_str(&format!("phase: {declared}")).expect("spec");
        let mut sp = ScalingPhase::new("shop", spec);
        sp.metadata.namespace = Some("prod".into());
        sp.metadata.uid = Some("11111111-2222-3333-4444-555555555555".into());
        sp.status = active.map(|a| ScalingPhaseStatus {
            active_phase: Some(a),
            estimated_monthly_cost_usd: Some(25),
            ..ScalingPhaseStatus::default()
        });
        sp
    }

    /// What a cluster that runs `phase` of `sp` holds: every rendered
    /// child, every claim of its StatefulSets, every generated Secret.
    fn live_at(sp: &ScalingPhase, phase: i32) -> Inventory {
        let (v, prof) = validated_at(sp, &world(), phase).expect("valid");
        let d = render::render(&v, &prof);
        let mut inv = Inventory::default();
        for kind in Kind::APPLY_ORDER {
            if kind == Kind::Secret {
                inv.secrets = d.names(kind);
                continue;
            }
            for name in d.names(kind) {
                inv.children.insert((kind.name().to_owned(), name));
            }
        }
        inv.claims = claims_of(&d)
            .into_iter()
            .map(|r| Claim {
                name: r.name,
                size: r.size,
                retired_by: None,
            })
            .collect();
        inv
    }

    /// Every live object compares equal (an idle cluster at its phase).
    fn all_same(live: &Inventory) -> BTreeMap<(String, String), Compared> {
        live.children
            .iter()
            .map(|k| (k.clone(), Compared::Same))
            .collect()
    }

    fn plan(sp: &ScalingPhase, to: i32, live: &Inventory) -> PlanReport {
        let r = render_path(sp, &world(), to).expect("renders");
        report(sp, &r, live, &all_same(live), true)
    }

    fn names(p: &PlanReport, action: Action, kind: &str) -> Vec<String> {
        p.objects
            .iter()
            .filter(|o| o.action == action && o.kind == kind)
            .map(|o| o.name.clone())
            .collect()
    }

    #[test]
    fn planning_the_running_phase_changes_nothing() {
        let sp = shop(1, Some(1));
        let live = live_at(&sp, 1);
        let p = plan(&sp, 1, &live);
        assert!(p.steps.is_empty());
        assert_eq!(p.count(Action::Create), 0, "{:#?}", p.objects);
        assert_eq!(p.count(Action::Change), 0);
        assert_eq!(p.count(Action::Retire), 0);
        assert!(p.count(Action::Unchanged) > 10);
        assert!(p.notes.iter().any(|n| n.contains("already where")));
    }

    #[test]
    fn a_promotion_that_moves_no_data_adds_replicas_beside_the_primary() {
        let sp = shop(1, Some(1));
        let live = live_at(&sp, 1);
        let p = plan(&sp, 2, &live);
        assert_eq!(p.steps.len(), 1);
        assert_eq!(p.steps[0].data, None, "1 -> 2 keeps the primary");
        assert_eq!(p.steps[0].approval, "not needed");
        let created = names(&p, Action::Create, "StatefulSet");
        assert_eq!(created, vec!["shop-postgres-replica"]);
        let claims = names(&p, Action::Create, "PersistentVolumeClaim");
        assert_eq!(
            claims,
            vec![
                "data-shop-postgres-replica-0",
                "data-shop-postgres-replica-1",
                "data-shop-postgres-replica-2"
            ]
        );
        // The primary's volume grows with phase 2's larger default.
        let grown: Vec<&ObjectChange> = p
            .objects
            .iter()
            .filter(|o| o.action == Action::Change && o.kind == "PersistentVolumeClaim")
            .collect();
        assert_eq!(grown.len(), 1);
        assert_eq!(grown[0].name, "data-shop-postgres-0");
        assert!(
            grown[0].detail.contains("from 10Gi to 50Gi"),
            "{}",
            grown[0].detail
        );
        assert!(names(&p, Action::Retire, "StatefulSet").is_empty());
        assert!(p.planned_monthly_cost_usd > 25);
    }

    #[test]
    fn a_demotion_that_moves_data_needs_approval_and_names_its_volumes() {
        let sp = shop(1, Some(1));
        let live = live_at(&sp, 1);
        let p = plan(&sp, 0, &live);
        let step = &p.steps[0];
        assert_eq!((step.from, step.to), (1, 0));
        assert_eq!(step.approval, "required");
        assert!(
            step.blocked_by[0].starts_with("ApprovalRequired"),
            "{:?}",
            step.blocked_by
        );
        let data = step.data.as_ref().expect("1 -> 0 moves data");
        assert_eq!(data.migration_job, "shop-migrate-1-to-0");
        assert_eq!(data.from_tier, "PostgreSQL");
        assert_eq!(
            data.source_volumes,
            vec![Volume {
                name: "data-shop-postgres-0".into(),
                size: Some("10Gi".into()),
                exists: true
            }]
        );
        assert_eq!(data.target_volumes.len(), 1);
        assert_eq!(data.target_volumes[0].name, "shop-app-data");
        assert!(!data.target_volumes[0].exists);
        for gone in ["shop-postgres", "shop-redis"] {
            assert!(names(&p, Action::Retire, "StatefulSet").contains(&gone.to_owned()));
        }
        let retired = p
            .objects
            .iter()
            .find(|o| o.action == Action::Retire && o.name == "data-shop-postgres-0")
            .expect("the primary's volume is retired");
        assert!(
            retired
                .detail
                .contains("kept, labelled ladder.dev/retired-by=1-to-0"),
            "{}",
            retired.detail
        );
        let pgb = p
            .objects
            .iter()
            .find(|o| o.action == Action::Retire && o.name == "shop-pgbouncer")
            .expect("PgBouncer leaves");
        assert!(
            pgb.detail
                .contains("Retire, after the old tier is kept 24h"),
            "{}",
            pgb.detail
        );
        assert_eq!(
            names(&p, Action::Create, "PersistentVolumeClaim"),
            vec!["shop-app-data"]
        );
        // Secrets are never retired.
        assert!(names(&p, Action::Retire, "Secret").is_empty());
    }

    #[test]
    fn delete_policy_and_approval_change_the_demotion() {
        let mut sp = shop(0, Some(1));
        sp.spec.deletion_policy = DeletionPolicy::Delete;
        sp.metadata.annotations = Some(
            [(
                transition::APPROVE_ANNOTATION.to_owned(),
                "1-to-0".to_owned(),
            )]
            .into(),
        );
        let live = live_at(&sp, 1);
        let p = plan(&sp, 0, &live);
        assert_eq!(p.steps[0].approval, "approved");
        assert!(p.steps[0].blocked_by.is_empty());
        let retired = p
            .objects
            .iter()
            .find(|o| o.name == "data-shop-postgres-0")
            .expect("listed");
        assert!(
            retired
                .detail
                .contains("deleted with StatefulSet shop-postgres"),
            "{}",
            retired.detail
        );
    }

    #[test]
    fn a_multi_phase_jump_walks_every_step_and_stale_volumes_block() {
        let sp = shop(1, Some(1));
        let mut live = live_at(&sp, 1);
        live.claims.push(Claim {
            name: "data-shop-pg-shard-0-0".into(),
            size: Some("100Gi".into()),
            retired_by: Some("3-to-2".into()),
        });
        let p = plan(&sp, 3, &live);
        let steps: Vec<(i32, i32)> = p.steps.iter().map(|s| (s.from, s.to)).collect();
        assert_eq!(steps, vec![(1, 2), (2, 3)]);
        let last = &p.steps[1];
        let data = last.data.as_ref().expect("2 -> 3 shards the data");
        assert_eq!(data.to_tier, "sharded PostgreSQL");
        assert_eq!(data.migration_job, "shop-migrate-2-to-3");
        assert!(
            data.target_volumes
                .iter()
                .any(|v| v.name == "data-shop-pg-shard-3-0")
        );
        assert!(
            last.blocked_by
                .iter()
                .any(|b| b.starts_with("StaleVolumes") && b.contains("data-shop-pg-shard-0-0")),
            "{:?}",
            last.blocked_by
        );
        assert_eq!(last.approval, "not needed");
        let text = p.render(Timestamp::now());
        assert!(
            text.contains("Would wait for:\n  2 → 3: StaleVolumes"),
            "{text}"
        );
        assert!(text.contains("Data that would move"), "{text}");
    }

    #[test]
    fn dry_run_results_become_changes_with_their_paths() {
        let sp = shop(1, Some(1));
        let live = live_at(&sp, 1);
        let mut compared = all_same(&live);
        compared.insert(
            ("Deployment".into(), "shop-app".into()),
            Compared::Differs(vec!["spec.template.spec.containers[0].env".into()]),
        );
        compared.insert(
            ("Service".into(), "shop-redis".into()),
            Compared::Unknown("dry-run refused: forbidden".into()),
        );
        let r = render_path(&sp, &world(), 1).expect("renders");
        let p = report(&sp, &r, &live, &compared, true);
        assert_eq!(names(&p, Action::Change, "Deployment"), vec!["shop-app"]);
        let text = p.render(Timestamp::now());
        assert!(
            text.contains(
                "  Change        Deployment   shop-app     spec.template.spec.containers[0].env\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  NotCompared   Service      shop-redis   dry-run refused: forbidden\n"),
            "{text}"
        );
        assert!(
            text.contains("0 to create, 1 to change, 0 to retire, 28 unchanged, 1 not compared\n"),
            "{text}"
        );
    }

    #[test]
    fn an_unreconciled_object_is_built_directly() {
        let sp = shop(1, None);
        let p = plan(&sp, 1, &Inventory::default());
        assert_eq!(p.from, None);
        assert!(p.steps.is_empty());
        assert!(p.count(Action::Create) > 10);
        assert_eq!(p.count(Action::Retire), 0);
        assert!(p.notes[0].contains("no status yet"));
    }

    #[test]
    fn a_phase_the_spec_cannot_reach_is_refused_with_the_reason() {
        let sp = shop(1, Some(1));
        let e = render_path(&sp, &world(), 4).expect_err("phase 4 needs spec.auth");
        assert!(
            e.contains("spec.phase: 4 would be refused") && e.contains("auth"),
            "{e}"
        );
        let mut capped = shop(1, Some(1));
        capped.spec.autoscale.max_phase = Some(1);
        let e = render_path(&capped, &world(), 2).expect_err("maxPhase below");
        assert!(e.contains("maxPhase"), "{e}");
    }

    #[test]
    fn differences_name_the_paths_that_differ() {
        let a = serde_json::json!({"spec": {"replicas": 2, "template": {"env": [{"name": "A", "value": "1"}, {"name": "B"}]}}, "metadata": {"name": "x"}});
        let b = serde_json::json!({"spec": {"replicas": 3, "template": {"env": [{"name": "A", "value": "2"}, {"name": "B"}]}}, "metadata": {"name": "x", "labels": {"l": "v"}}});
        assert_eq!(
            differences(&a, &b, 10),
            vec![
                "metadata.labels",
                "spec.replicas",
                "spec.template.env[0].value"
            ]
        );
        assert_eq!(differences(&a, &b, 1).len(), 1);
        assert!(differences(&a, &a, 10).is_empty());
        let longer = serde_json::json!({"spec": {"replicas": 2, "template": {"env": [{"name": "A", "value": "1"}]}}, "metadata": {"name": "x"}});
        assert_eq!(differences(&a, &longer, 10), vec!["spec.template.env"]);
    }

    #[test]
    fn comparable_drops_what_every_write_changes() {
        let v = serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "x", "resourceVersion": "7", "generation": 2, "managedFields": [], "labels": {"a": "b"}},
            "spec": {"type": "ClusterIP"},
            "status": {"loadBalancer": {}}
        });
        assert_eq!(
            comparable(v),
            serde_json::json!({"metadata": {"name": "x", "labels": {"a": "b"}}, "spec": {"type": "ClusterIP"}})
        );
    }
}
