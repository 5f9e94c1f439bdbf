//! `ladder-operator`: a thin shim over the library.
fn main() {}
