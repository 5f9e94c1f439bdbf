//! Ladder's operator: CRD types, the phase catalogue, pure renderers and the
//! reconciler that drives a cluster to the phase a `ScalingPhase` declares.
//!
//! The pipeline (see [`reconcile`]): read world → [`validate`] → [`render`]
//! (pure) → [`apply`] (server-side apply, prune) → [`status`].

pub mod apply;
pub mod catalogue;
pub mod cli;
pub mod contract;
pub mod crd;
pub mod integrations;
pub mod leader;
pub mod load_report;
pub mod metrics;
pub mod reconcile;
pub mod render;
pub mod run;
pub mod status;
pub mod storage;
pub mod telemetry;
pub mod validate;
