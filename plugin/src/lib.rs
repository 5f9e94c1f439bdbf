//! `kubectl ladder`: a kubectl plugin for Ladder's ScalingPhases.
//!
//! kubectl runs any `kubectl-<name>` binary on its `PATH` as `kubectl <name>`
//! (`cargo install --path plugin`, or krew with `deploy/krew/ladder.yaml`).
//!
//! - `status [NAME]`: phase, target, load against the phase's ceiling, the
//!   recommendation, the transition step, approvals, cost, conditions,
//!   components and history ([`status`]); without a name, one line per
//!   ScalingPhase.
//! - `plan [NAME] --to N`: what `spec.phase: N` would create, change and
//!   retire in the live cluster, step by step, with the data that would
//!   move ([`plan`], rendered with the operator's own pure code and compared
//!   with server-side dry-run applies).
//! - `approve [NAME]`: the approval annotation for the demotion that waits
//!   for one ([`approval`]), as Argo CD's `approve-transition` action writes it.
//! - `pause [NAME]`, `resume [NAME]`: `spec.paused`.
//! - `history [NAME]`: the phases it went through and how long each lasted.
//!
//! Output is a table by default, or the same report as `-o json|yaml`. The
//! pure parts (reports, tables, the plan's comparison) are unit-tested; the
//! binary is tested against the local control plane by `e2e/tests/plugin.rs`.

pub mod approval;
pub mod cluster;
pub mod plan;
pub mod status;
pub mod table;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;

use crate::approval::Step;
use crate::status::{HistoryRow, StatusReport, SummaryRow};
use ladder_operator::transition::APPROVE_ANNOTATION;

/// Ladder's kubectl plugin: status, plans, approvals and pauses of ScalingPhases.
#[derive(Debug, Parser)]
#[command(name = "kubectl-ladder", bin_name = "kubectl ladder", version, about)]
pub struct Cli {
    /// Where and how.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes (like kubectl's).
#[derive(Debug, Args)]
pub struct Global {
    /// Namespace; the kubeconfig context's, else `default`.
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
    /// Path of the kubeconfig file; else `$KUBECONFIG`, else `~/.kube/config`.
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use; else the current one.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable tables.
    Table,
    /// The report as JSON.
    Json,
    /// The report as YAML.
    Yaml,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Phase, target, load, recommendation, transition, approvals, cost, conditions, components and history.
    Status {
        /// The ScalingPhase; without one, every ScalingPhase of the namespace, one line each.
        name: Option<String>,
        /// List the ScalingPhases of every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// What changing spec.phase to N would create, change and retire, and the data that would move.
    Plan {
        /// The ScalingPhase (optional when the namespace has only one).
        name: Option<String>,
        /// The phase to plan for (0-4).
        #[arg(long, value_parser = clap::value_parser!(i32).range(0..=4))]
        to: i32,
        /// Do not compare existing objects with server-side dry-run applies
        /// (they need the same permissions as the operator's writes).
        #[arg(long)]
        no_dry_run: bool,
    },
    /// Approve the demotion that moves data and waits for an approval (annotation ladder.dev/approve-transition).
    Approve {
        /// The ScalingPhase (optional when the namespace has only one).
        name: Option<String>,
        /// The step to approve, such as `3-to-2` or `shards-4-to-2` (fewer shards in phase 3); by
        /// default the resharding to fewer shards that waits, else the next step down that moves data.
        #[arg(long)]
        step: Option<String>,
    },
    /// Stop the operator from changing the ScalingPhase's children (spec.paused: true).
    Pause {
        /// The ScalingPhase (optional when the namespace has only one).
        name: Option<String>,
    },
    /// Let the operator change the children again (spec.paused: false).
    Resume {
        /// The ScalingPhase (optional when the namespace has only one).
        name: Option<String>,
    },
    /// The phases the ScalingPhase went through, and how long each lasted.
    History {
        /// The ScalingPhase (optional when the namespace has only one).
        name: Option<String>,
    },
}

/// What `approve`, `pause` and `resume` did (also their `-o json|yaml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionReport {
    /// ScalingPhase name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// `approve`, `pause` or `resume`.
    pub action: String,
    /// Whether the object was written (false: it already said so).
    pub changed: bool,
    /// What was done, for humans.
    pub message: String,
    /// What may undo it or what comes next.
    pub warnings: Vec<String>,
}

impl ActionReport {
    fn render(&self) -> String {
        let mut out = format!("{}\n", self.message);
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        out
    }
}

/// Runs the command line; the binary's `main` calls only this.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let text = rt.block_on(run(cli))?;
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

/// Runs one command and returns what to print.
pub async fn run(cli: Cli) -> anyhow::Result<String> {
    let g = &cli.global;
    let (client, ns) = cluster::connect(
        g.kubeconfig.as_deref(),
        g.context.as_deref(),
        g.namespace.as_deref(),
    )
    .await?;
    let now = Timestamp::now();
    let out = g.output;
    match cli.command {
        Command::Status {
            name: None,
            all_namespaces,
        } => {
            let sps = cluster::list(&client, (!all_namespaces).then_some(ns.as_str())).await?;
            let rows: Vec<SummaryRow> = sps.iter().map(SummaryRow::of).collect();
            if out == Output::Table && rows.is_empty() {
                return Ok(if all_namespaces {
                    "No ScalingPhases found.\n".to_owned()
                } else {
                    format!("No ScalingPhases found in namespace {ns}.\n")
                });
            }
            emit(out, &rows, || {
                status::summary_table(&rows, all_namespaces, now)
            })
        }
        Command::Status {
            name: Some(name), ..
        } => {
            let sp = cluster::get(&client, &ns, Some(&name)).await?;
            let r = StatusReport::of(&sp);
            emit(out, &r, || r.render(now))
        }
        Command::History { name } => {
            let sp = cluster::get(&client, &ns, name.as_deref()).await?;
            let history = sp.status.clone().unwrap_or_default().history;
            let rows: Vec<HistoryRow> = status::history_rows(&history, now);
            emit(out, &rows, || status::history_table(&history, now).render())
        }
        Command::Plan {
            name,
            to,
            no_dry_run,
        } => {
            let sp = cluster::get(&client, &ns, name.as_deref()).await?;
            let (world, world_notes) = cluster::world(&client).await;
            let rendered = plan::render_path(&sp, &world, to).map_err(anyhow::Error::msg)?;
            let (inventory, live) = cluster::inventory(&client, &sp, world.integrations).await?;
            let compared = if no_dry_run {
                Default::default()
            } else {
                cluster::dry_run(
                    &client,
                    &sp.namespace().unwrap_or_default(),
                    rendered.target(),
                    &live,
                )
                .await
            };
            let mut report = plan::report(&sp, &rendered, &inventory, &compared, !no_dry_run);
            report.notes.extend(world_notes);
            emit(out, &report, || report.render(now))
        }
        Command::Approve { name, step } => {
            let sp = cluster::get(&client, &ns, name.as_deref()).await?;
            // Fewer shards in phase 3 (a resharding) first: no phase step
            // is pending then.
            let reshard = match &step {
                Some(s) if s.trim().starts_with("shards-") => Some(s.trim().to_owned()),
                Some(_) => None,
                None => approval::reshard_approval(&sp),
            };
            let r = match reshard {
                Some(value) => approve_value(&client, &sp, value, Vec::new()).await?,
                None => {
                    let step = match step {
                        Some(s) => Step::parse(&s).map_err(anyhow::Error::msg)?,
                        None => approval::next_approval(&sp).map_err(anyhow::Error::msg)?,
                    };
                    approve(&client, &sp, step).await?
                }
            };
            emit(out, &r, || r.render())
        }
        Command::Pause { name } => {
            let sp = cluster::get(&client, &ns, name.as_deref()).await?;
            let r = set_paused(&client, &sp, true).await?;
            emit(out, &r, || r.render())
        }
        Command::Resume { name } => {
            let sp = cluster::get(&client, &ns, name.as_deref()).await?;
            let r = set_paused(&client, &sp, false).await?;
            emit(out, &r, || r.render())
        }
    }
}

/// The report in the chosen format.
fn emit<T: Serialize>(
    out: Output,
    value: &T,
    table: impl FnOnce() -> String,
) -> anyhow::Result<String> {
    Ok(match out {
        Output::Table => table(),
        Output::Json => serde_json::to_string_pretty(value)? + "\n",
        Output::Yaml => ladder_crds::yaml11_safe(&serde_yaml::to_string(value)?),
    })
}

async fn approve(
    client: &kube::Client,
    sp: &ladder_crds::scalingphase::ScalingPhase,
    step: Step,
) -> anyhow::Result<ActionReport> {
    let value = step.value();
    let mut warnings = Vec::new();
    if !step.moves_data() {
        warnings.push(format!(
            "step {value} moves no data: the operator does not wait for an approval of it"
        ));
    }
    // Steps further down that will need their own approval.
    let target = ladder_operator::validate::effective_phase(sp);
    let later: Vec<String> = approval::steps(step.to, target.min(step.to))
        .into_iter()
        .filter(|s| s.moves_data())
        .map(Step::value)
        .collect();
    if !later.is_empty() {
        warnings.push(format!(
            "the way down to phase {target} needs another approval later: {}",
            later.join(", ")
        ));
    }
    approve_value(client, sp, value, warnings).await
}

/// Sets the approval annotation to `value` (a phase step or a resharding).
async fn approve_value(
    client: &kube::Client,
    sp: &ladder_crds::scalingphase::ScalingPhase,
    value: String,
    warnings: Vec<String>,
) -> anyhow::Result<ActionReport> {
    let name = sp.name_any();
    let changed = approval::approved_value(sp) != Some(value.as_str());
    if changed {
        let body = serde_json::json!({"metadata": {"annotations": {APPROVE_ANNOTATION: value}}});
        cluster::patch(client, sp, &body).await?;
    }
    Ok(ActionReport {
        namespace: sp.namespace().unwrap_or_default(),
        action: "approve".into(),
        changed,
        message: if changed {
            format!(
                "scalingphase/{name} approved: {APPROVE_ANNOTATION}={value}; the operator starts the step on its next reconcile"
            )
        } else {
            format!("scalingphase/{name} already approved ({APPROVE_ANNOTATION}={value})")
        },
        warnings,
        name,
    })
}

async fn set_paused(
    client: &kube::Client,
    sp: &ladder_crds::scalingphase::ScalingPhase,
    paused: bool,
) -> anyhow::Result<ActionReport> {
    let name = sp.name_any();
    let verb = if paused { "paused" } else { "resumed" };
    let changed = sp.spec.paused != paused;
    let mut warnings = Vec::new();
    if changed {
        cluster::patch(client, sp, &serde_json::json!({"spec": {"paused": paused}})).await?;
        let owners = approval::paused_owners(sp, cluster::FIELD_MANAGER);
        if !owners.is_empty() {
            warnings.push(format!(
                "spec.paused is also applied by {}: its next apply sets it back; change it there (in Git) for it to last",
                owners.join(", ")
            ));
        }
    }
    if paused {
        warnings.push(
            "status is still reported; a transition in progress stays at its step until resumed"
                .into(),
        );
    }
    Ok(ActionReport {
        namespace: sp.namespace().unwrap_or_default(),
        action: if paused { "pause" } else { "resume" }.into(),
        changed,
        message: if changed {
            format!("scalingphase/{name} {verb} (spec.paused: {paused})")
        } else {
            format!("scalingphase/{name} already {verb} (spec.paused: {paused})")
        },
        warnings,
        name,
    })
}
