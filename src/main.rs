fn main() -> std::process::ExitCode {
    authgate::cli::run()
}
