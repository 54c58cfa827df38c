//! mailgate: one binary, one process. Mail flows one way through stages:
//! listener → inbound session → checks → spool → scheduler → delivery.
//! `main` only parses arguments and hands over to the library (`lib.rs`).

use std::process::ExitCode;

use clap::Parser;

use mailgate::cli::{self, Cli, Command, ConfigAction};
use mailgate::config::{Config, LogFormat};
use mailgate::server;

/// jemalloc instead of glibc's malloc. The report store's events are built
/// by the sessions on one thread, kept for the writer's gathering window and
/// freed on another; glibc makes every session's allocations dearer for it
/// (`malloc_consolidate`, bin searches). With jemalloc recording costs about
/// 22 µs of CPU per message instead of 49, the accept and relay paths use
/// about 9 % less CPU, and 1,000 idle sessions stay at 37 MiB (glibc: 38;
/// mimalloc, tried before: 46-51). Large buffers are kept and reused rather
/// than allocated zeroed per message: jemalloc zeroes a large allocation
/// with `madvise`. BENCHMARKS.md, "The allocator".
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Check(args) = &cli.command {
        return cli::check_domain(cli.config.as_deref(), args);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("mailgate: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // `user hash` needs no configuration.
    if let Command::User { action } = cli.command {
        return cli::user(action);
    }
    if let Command::Bounce { action: cli::BounceAction::Classify { reply, files, json } } = &cli.command {
        return cli::bounce_classify(reply, files, *json);
    }
    // `config check` reports every problem itself.
    if let Command::Config { action: ConfigAction::Check } = cli.command {
        return cli::config_check(cli.config.as_deref());
    }
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve => {
            init_logging(config.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(server::serve(config))
        }
        Command::Queue { action } => cli::queue(&config, cli.token_file.as_deref(), action),
        Command::Dkim { action } => cli::dkim(&config, action),
        Command::Records { next_cert } => cli::records(&config, next_cert.as_deref()),
        Command::Verify(args) => cli::verify(&config, args),
        Command::Reports { action } => cli::reports(&config, cli.token_file.as_deref(), action),
        Command::Suppression { action } => cli::suppression(&config, cli.token_file.as_deref(), action),
        Command::Spf { action } => mailgate::advisor::suggest_cli::spf(&config, action),
        Command::Dmarc { action } => mailgate::advisor::whatif_cli::dmarc(&config, action),
        Command::User { .. } | Command::Config { .. } | Command::Bounce { .. } | Command::Check(_) => Ok(()),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAILGATE_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
