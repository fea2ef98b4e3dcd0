//! `dsv3`: see `model::cli`.

fn main() -> std::process::ExitCode {
    model::cli::main()
}
