//! `box`: run containers in microVMs. The logic lives in [`box_shim::cli`].

use clap::Parser;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BOX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = match box_shim::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        // A usage error is Box's own error: 125, as docker.
        Err(e) => {
            let _ = e.print();
            std::process::exit(125);
        }
    };
    let code = match box_shim::cli::main(cli) {
        Ok(code) => code,
        Err(e) => {
            let code = e.exit_code();
            // The messages already name their causes: one line, no repeated chain.
            eprintln!("box: {}", anyhow::Error::from(e));
            code
        }
    };
    std::process::exit(code);
}
