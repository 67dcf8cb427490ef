fn main() -> std::process::ExitCode {
    serin::cli::entry::main()
}
