//! The `homeplane` binary: parse the command line and hand over.

mod backup_cli;
mod cache;
mod cli;
mod conditions;
mod controllers;
mod crdgen;
mod dashboard;
mod drift_cli;
mod duration;
mod history;
mod import;
mod leader;
mod metrics;
mod migrate_cli;
mod plan_cli;
mod quantity;
mod run;
mod startup;
mod telemetry;
mod web;
mod workload;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Called as `kubectl-homeplane` (kubectl's plugin mechanism) or `kubectl_complete-homeplane`
    // (kubectl's completion of plugins), the binary answers as the plugin.
    let invoked = dashboard::plugin::invoked_as();
    if invoked == dashboard::plugin::Invoked::Completer {
        return dashboard::plugin::complete_for_kubectl().await;
    }
    let cli = match invoked {
        dashboard::plugin::Invoked::Plugin => dashboard::plugin::parse(),
        _ => cli::Cli::parse(),
    };
    telemetry::init();
    // reqwest's TLS uses the process-wide rustls provider: the same ring that kube uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match cli.command {
        cli::Command::Run(args) => run::run(args).await,
        cli::Command::Migrate(args) => migrate_cli::run(args).await,
        cli::Command::Drift {
            command: cli::DriftCommand::History(args),
        } => drift_cli::history(args).await,
        cli::Command::Plan(args) => plan_cli::run(args),
        cli::Command::Import(args) => import::run(args).await,
        cli::Command::Restore(args) => backup_cli::restore(args).await,
        cli::Command::Backup(cli::BackupCommand::Decrypt(args)) => backup_cli::decrypt(args).await,
        cli::Command::Backup(cli::BackupCommand::Upload(args)) => backup_cli::upload(args).await,
        cli::Command::Backup(cli::BackupCommand::Pvc(args)) => backup_cli::pvc(args).await,
        cli::Command::Backup(cli::BackupCommand::Encrypt(args)) => backup_cli::encrypt(args).await,
        cli::Command::Backup(cli::BackupCommand::EnsureBucket(args)) => {
            backup_cli::ensure_bucket(args).await
        }
        cli::Command::Dashboard(args) => dashboard::serve_locally(args).await,
        cli::Command::Status(args) => match dashboard::plugin::status(args).await {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        cli::Command::Trace(args) => match dashboard::plugin::trace(args).await {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        cli::Command::Completion { shell } => {
            dashboard::plugin::completion(shell, invoked);
            Ok(())
        }
        cli::Command::Crd { out: Some(dir) } => crdgen::write_all(&dir),
        cli::Command::Crd { out: None } => crdgen::render_all()
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
