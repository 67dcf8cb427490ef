//! `kubectl serin ...`: kubectl runs plugins by this name from the PATH.

fn main() -> std::process::ExitCode {
    serin::cli::entry::main()
}
