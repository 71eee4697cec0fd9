//! The `orascale` binary: parse the command line, set up logging, hand over to the library.
//! Bad flags or configuration exit with 64 (EX_USAGE).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use orascale::config::{CheckArgs, Cli, Command, DemoArgs, ServeArgs};
use orascale::{app, check, demo, probe, telemetry};

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
    let demo_db = config.demo_db.clone();
    let result = runtime().block_on(app::run(config, app::shutdown_signal(), |running| {
        if let Some(db) = &demo_db {
            print_demo_instructions(db, running.grpc_addr.port());
        }
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "orascale cannot start");
            eprintln!("orascale: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn print_demo_instructions(db: &std::path::Path, port: u16) {
    // Under `cargo run` the binary lives in target/; suggest the command the user typed.
    let exe = std::env::args().next().unwrap_or_default();
    let me = if exe.contains("/target/") {
        "cargo run --release --"
    } else {
        "orascale"
    };
    tracing::info!(
        "demo database {} is ready (table jobs). In another terminal:\n  \
         watch:    {me} probe --addr 127.0.0.1:{port} -m \"query={}\" -m targetQueryValue=5 -m pollInterval=2s --watch\n  \
         values:   {me} probe --addr 127.0.0.1:{port} -m \"query={}\" -m targetQueryValue=5\n  \
         add work: {me} demo enqueue 12\n  \
         drain:    {me} demo drain",
        db.display(),
        demo::QUERY,
        demo::QUERY
    );
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
