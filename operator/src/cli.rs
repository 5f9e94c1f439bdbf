//! The command line: `ladder-operator crd`, `run`, `render` and `simulate`.

use std::io::Write;

use clap::{Parser, Subcommand};

use ladder_crds::scalingphase::ScalingPhase;

/// Ladder's Kubernetes operator.
#[derive(Debug, Parser)]
#[command(name = "ladder-operator", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the CustomResourceDefinitions as a multi-document YAML stream.
    Crd,
    /// Run the operator against the cluster of the current kubeconfig.
    Run(crate::run::RunArgs),
    /// Print the objects a ScalingPhase (YAML file, `-` for stdin) renders to,
    /// without a cluster (generated Secrets are listed, not created).
    Render {
        /// Path of a ScalingPhase manifest.
        file: String,
        /// Regions to assume for the nodes, comma-separated.
        #[arg(long, default_value = "ap-south,eu-west,us-east")]
        regions: String,
        /// Render as if KEDA's ScaledObject CRD were installed.
        #[arg(long)]
        keda: bool,
        /// Render as if cert-manager's CRDs were installed.
        #[arg(long)]
        cert_manager: bool,
        /// Render as if the Prometheus Operator's ServiceMonitor CRD were installed.
        #[arg(long)]
        service_monitors: bool,
    },
    /// Replay a load trace (CSV or a synthetic shape) through the promoter's
    /// decision code and print each decision change.
    Simulate(crate::simulate::SimulateArgs),
}

pub use ladder_crds::{crds, crds_yaml, yaml11_safe};

/// Runs the command line; the binary's `main` calls only this.
pub fn main() -> anyhow::Result<()> {
    // One TLS provider for every client in the process (kube-client, the
    // Prometheus load source, OTLP export). Without it rustls refuses to
    // guess and the first HTTPS client panics. An error only means one was
    // installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            let yaml = crds_yaml()?;
            std::io::stdout().lock().write_all(yaml.as_bytes())?;
            Ok(())
        }
        Command::Run(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(crate::run::run(args))
        }
        Command::Simulate(args) => crate::simulate::run(&args, &mut std::io::stdout().lock()),
        Command::Render {
            file,
            regions,
            keda,
            cert_manager,
            service_monitors,
        } => {
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)?
            };
            let mut sp: ScalingPhase = serde_yaml::from_str(&text)?;
            sp.metadata
                .namespace
                .get_or_insert_with(|| "default".into());
            sp.metadata
                .uid
                .get_or_insert_with(|| "00000000-0000-0000-0000-000000000000".into());
            let world = crate::validate::World {
                node_regions: regions.split(',').map(str::to_owned).collect(),
                integrations: crate::integrations::Integrations {
                    keda,
                    cert_manager,
                    service_monitors,
                },
            };
            let (v, profile) = crate::validate::validate(&sp, &world)
                .map_err(|e| anyhow::anyhow!("invalid: {e}"))?;
            let yaml = crate::render::render(&v, &profile).to_yaml();
            std::io::stdout().lock().write_all(yaml.as_bytes())?;
            Ok(())
        }
    }
}
