//! One module per subcommand.

pub mod ann;
pub mod caption;
pub mod embed;
pub mod eval;
pub mod index;
pub mod info;
pub mod inspect;
pub mod migrate;
pub mod models;
pub mod search;
pub mod serve;

/// Logs go to stderr; `RUST_LOG` overrides the default `warn` level for dependencies.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("capmatch=info,warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
