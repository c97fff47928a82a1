fn main() -> std::process::ExitCode {
    leafd::main()
}
