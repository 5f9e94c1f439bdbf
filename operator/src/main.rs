//! `ladder-operator`: a thin shim over the library.
fn main() -> anyhow::Result<()> {
    ladder_operator::cli::main()
}
