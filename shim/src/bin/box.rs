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
    let cli = box_shim::cli::Cli::parse();
    let code = match box_shim::cli::main(cli).map_err(anyhow::Error::from) {
        Ok(code) => code,
        Err(e) => {
            // The messages already name their causes: one line, no repeated chain.
            eprintln!("box: {e}");
            125
        }
    };
    std::process::exit(code);
}
