//! Helpers for Ladder's end-to-end tests: a client for the local control
//! plane and one temporary namespace per test.
