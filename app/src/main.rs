//! `ladder-app`: a thin shim over the library.
fn main() {}
