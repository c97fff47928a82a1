fn main() -> std::process::ExitCode {
    leafd::cli::main()
}
