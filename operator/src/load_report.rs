//! The `LoadReport` custom resource (`ladder.dev/v1alpha1`): written by each
//! ladder-app instance, read by the operator's promoter.
//!
//! Owned by the app work (issue 4); the operator only reads it.
