//! `kubectl-ladder`: see the library's docs.

fn main() -> std::process::ExitCode {
    match kubectl_ladder::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr().lock(), "error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
