fn main() -> std::process::ExitCode {
    aoai_operator::cli::main()
}
