//! The `homeplane` binary: parse the command line, start logging, dispatch to the library.

use clap::Parser;
use homeplane_operator::cli::{BackupCommand, Cli, Command, DriftCommand};
use homeplane_operator::{
    backup_cli, crdgen, drift_cli, import, migrate_cli, plan_cli, run, telemetry,
};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    telemetry::init();
    // reqwest's TLS uses the process-wide rustls provider: the same ring that kube uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match cli.command {
        Command::Run(args) => run::run(args).await,
        Command::Migrate(args) => migrate_cli::run(args).await,
        Command::Drift {
            command: DriftCommand::History(args),
        } => drift_cli::history(args).await,
        Command::Plan(args) => plan_cli::run(args),
        Command::Import(args) => import::run(args).await,
        Command::Restore(args) => backup_cli::restore(args).await,
        Command::Backup(BackupCommand::Decrypt(args)) => backup_cli::decrypt(args).await,
        Command::Backup(BackupCommand::Upload(args)) => backup_cli::upload(args).await,
        Command::Backup(BackupCommand::Pvc(args)) => backup_cli::pvc(args).await,
        Command::Backup(BackupCommand::Encrypt(args)) => backup_cli::encrypt(args).await,
        Command::Backup(BackupCommand::EnsureBucket(args)) => backup_cli::ensure_bucket(args).await,
        Command::Crd { out: Some(dir) } => crdgen::write_all(&dir),
        Command::Crd { out: None } => crdgen::render_all()
            .map(|y| print!("{y}"))
            .map_err(Into::into),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
