//! The `homeplane` binary: parse the command line, start logging, dispatch to the library.

use clap::Parser;
use homeplane_operator::cli::{self, BackupCommand, Command, DriftCommand};
use homeplane_operator::dashboard::plugin::{self, Invoked};
use homeplane_operator::{
    backup_cli, crdgen, dashboard, drift_cli, import, migrate_cli, plan_cli, run, telemetry,
};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Called as `kubectl-homeplane` (kubectl's plugin mechanism) or `kubectl_complete-homeplane`
    // (kubectl's completion of plugins), the binary answers as the plugin.
    let invoked = plugin::invoked_as();
    if invoked == Invoked::Completer {
        return plugin::complete_for_kubectl().await;
    }
    let cli = match invoked {
        Invoked::Plugin => plugin::parse(),
        _ => cli::Cli::parse(),
    };
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
        Command::Dashboard(args) => dashboard::serve_locally(args).await,
        Command::Status(args) => match plugin::status(args).await {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Trace(args) => match plugin::trace(args).await {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Completion { shell } => {
            plugin::completion(shell, invoked);
            Ok(())
        }
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
