//! Ladder's operator: pure renderers and the reconciler that drives a cluster to the phase a `ScalingPhase` declares.
//!
//! The pipeline (see [`reconcile`]): read world → [`validate`] → [`render`]
//! (pure) → [`apply`] (server-side apply, prune) → [`status`].
//!
//! The API types, the phase catalogue and the env contract live in the
//! `ladder-crds` crate, which the companion app shares.

pub mod apply;
pub mod cli;
pub mod integrations;
pub mod leader;
pub mod load_source;
pub mod metrics;
pub mod promoter;
pub mod reconcile;
pub mod render;
pub mod run;
pub mod simulate;
pub mod status;
pub mod transition;
pub mod validate;
