//! The standalone `rtd` binary.

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let program = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "rtd".into());
    let launcher = rtd_node::Launcher { program, args: Vec::new() };
    std::process::exit(rtd_node::cli_main(&argv, &launcher));
}
