//! `ladder-app`: a thin shim over the library.

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    ladder_app::server::main_entry().await
}
