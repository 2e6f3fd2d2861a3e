//! The `kaname` command line: run, check, explain, demo, token, keys, schema.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{app, demo, devtools, explain, fd_budget, tls, EXIT_INVALID_CONFIG};

/// kaname (要): a sidecar proxy configured by one YAML file.
#[derive(Parser)]
#[command(name = "kaname", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// The config file; defaults to $KANAME_CONFIG, else kaname.yaml.
    #[arg(short, long, env = "KANAME_CONFIG", default_value = "kaname.yaml")]
    config: String,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Once ready (and after each reload), write the bound addresses here
    /// as JSON: {"admin": "127.0.0.1:9901", "listeners": {"main": "…"}}.
    /// With `listen: 127.0.0.1:0` this is how a supervisor or a test
    /// learns the ports the kernel chose.
    #[arg(long, value_name = "FILE")]
    ready_file: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    ///
    /// KANAME_WORKERS=N sets the threads serving traffic (default: one per
    /// CPU the process may use, cgroup quota included; 1 = a
    /// single-threaded runtime).
    Run(RunArgs),
    /// Validate the config file and print every error.
    Check(ConfigArg),
    /// Print each listener's routes and their chain of layers.
    Explain(ConfigArg),
    /// Start an echo upstream and a sidecar with every filter on, on loopback.
    Demo,
    /// Print a signed JWT for development and tests (HS*, RS*, PS*, ES*, EdDSA).
    Token(devtools::TokenArgs),
    /// Make a key pair: DIR/KID.pem (private) and its public JWK added to DIR/jwks.json.
    Keys(devtools::KeysArgs),
    /// Print the JSON Schema (draft 2020-12) of the config file.
    ///
    /// For editors (`kaname schema > kaname.schema.json`, then
    /// `# yaml-language-server: $schema=kaname.schema.json` as a config's
    /// first line) and linters. docs/kaname.schema.json is a copy.
    Schema,
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match cli.command {
        Command::Run(a) => {
            raise_fd_limit();
            app::run_file(&a.config.config, a.ready_file)
        }
        Command::Check(a) => check(&a.config),
        Command::Explain(a) => match kaname_config::load(&a.config) {
            Ok(cfg) => {
                print!("{}", explain::explain(&cfg));
                ExitCode::SUCCESS
            }
            Err(errors) => report(&errors),
        },
        Command::Demo => demo::run(),
        Command::Token(a) => devtools::token::main(&a),
        Command::Keys(a) => devtools::keys::main(&a),
        Command::Schema => {
            print!("{}", kaname_config::schema_json());
            ExitCode::SUCCESS
        }
    }
}

/// Each client and upstream connection is a file descriptor, and the usual
/// soft limit (1024) would refuse connections long before memory runs out:
/// raise it to the hard limit, as servers do.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => {
            tracing::debug!(limit = n, "open file limit");
            fd_budget::set_limit(n);
        }
        Err(e) => {
            eprintln!("warning: could not raise the open file limit: {e}");
            if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
                fd_budget::set_limit(soft);
            }
        }
    }
}

fn report(errors: &kaname_config::ConfigErrors) -> ExitCode {
    for e in &errors.0 {
        eprintln!("{e}");
    }
    ExitCode::from(EXIT_INVALID_CONFIG)
}

fn check(file: &str) -> ExitCode {
    match kaname_config::load(file) {
        Ok(cfg) => {
            // TLS files are read here, not by the config crate.
            let tls_errors = tls::files::check_report(&cfg);
            if !tls_errors.is_empty() {
                for e in &tls_errors {
                    eprintln!("{e}");
                }
                return ExitCode::from(EXIT_INVALID_CONFIG);
            }
            for w in kaname_config::warnings(&cfg) {
                eprintln!("warning: {w}");
            }
            let routes: usize = cfg.listeners.iter().map(|l| l.routes.len()).sum();
            println!(
                "{file}: ok ({}, {}, {}, {})",
                count(cfg.listeners.len(), "listener"),
                count(routes, "route"),
                count(cfg.upstreams.len(), "upstream"),
                count(cfg.filters.len(), "filter")
            );
            ExitCode::SUCCESS
        }
        Err(errors) => report(&errors),
    }
}

/// `1 listener`, `2 routes`.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
