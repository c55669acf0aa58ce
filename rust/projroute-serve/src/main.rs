//! The `projroute-serve` binary: `projroute-serve PATH [OPTIONS]` (see `--help`).

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(projroute_serve::main(std::env::args_os()) as u8)
}
