//! The `orascale` binary: parse the command line, set up logging, hand over to the library.
//! Bad flags or configuration exit with 64 (EX_USAGE).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use orascale::cli::{check, demo, probe};
use orascale::config::{CheckArgs, Cli, Command, DemoArgs, ServeArgs};
use orascale::{app, telemetry};

const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    orascale::tls::install_crypto_provider();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors.
            return if e.use_stderr() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Probe(args) => {
            let result = runtime().block_on(probe::run(args));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("orascale probe: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Check(args) => check_connections(args),
        Command::Demo(args) => demo_action(args),
    }
}

fn check_connections(args: CheckArgs) -> ExitCode {
    let config = match args.serve.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("orascale: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let report = match runtime().block_on(check::check(&config, &args)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("orascale check: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        print!("{}", check::render_table(&report));
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime")
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match args.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("orascale: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    telemetry::init_logging(config.log_format);
    // `serve --demo`: the demo database is the CLI's, made here before the server starts, so
    // the library's server never names the CLI.
    if let Some(db) = &config.demo_db
        && let Err(e) = demo::prepare(db)
    {
        return cannot_start(format!("demo database: {}: {e}", db.display()), 1);
    }
    let demo_db = config.demo_db.clone();
    let tls = config.tls.is_some();
    let result = runtime().block_on(app::run(config, app::shutdown_signal(), |running| {
        if let Some(db) = &demo_db {
            // The commands must run as printed, from any directory: the program as it was
            // started (cargo run passes a relative target/… path), the database by full path.
            let argv0 = std::env::args().next().unwrap_or_default();
            let me = demo::program(&argv0, std::env::current_exe().ok().as_deref());
            let db = demo::absolute(db);
            // Plain lines for a person: the log would escape the newlines (and quote the rest).
            eprintln!("{}", demo::walkthrough(&me, &db, running.grpc_addr, tls));
        }
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cannot_start(&e, e.exit_code()),
    }
}

/// Reports why the server cannot start and exits with `code`.
fn cannot_start(e: impl std::fmt::Display, code: u8) -> ExitCode {
    // Once: the log goes to stderr already (as JSON with --log-format json), unless RUST_LOG
    // filters errors out; then stderr gets the line itself.
    if tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!("orascale cannot start: {e}");
    } else {
        eprintln!("orascale cannot start: {e}");
    }
    ExitCode::from(code)
}

fn demo_action(args: DemoArgs) -> ExitCode {
    match demo::act(&args.db, args.action) {
        Ok(queued) => {
            println!("{queued} queued jobs in {}", args.db.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("orascale demo: {}: {e}", args.db.display());
            ExitCode::FAILURE
        }
    }
}
