fn main() -> std::process::ExitCode {
    myhoard::cli::main()
}
