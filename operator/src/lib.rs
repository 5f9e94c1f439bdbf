//! Ladder's operator: CRD types, the phase catalogue, pure renderers and the
//! reconciler that drives a cluster to the phase a `ScalingPhase` declares.

pub mod cli;
pub mod crd;
pub mod load_report;
