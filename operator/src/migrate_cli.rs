//! `homeplane migrate`: the Database controller's migration runner on a folder, for local
//! development and for scripts.

use anyhow::{Context as _, bail};
use sqlx::{Connection, PgConnection};

use crate::cli::MigrateArgs;
use crate::controllers::database::migrate::{self, Options};

/// Runs the migrations of `args.dir` against `args.database_url` and prints what happened.
pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let options = crate::controllers::database::quiet_options(&args.database_url)
        .context("--database-url is not a PostgreSQL URL")?;
    let migrations = read_folder(&args.dir)?;
    let mut conn = PgConnection::connect_with(&options)
        .await
        .context("failed to connect to --database-url")?;
    let options = Options {
        table: args.table,
        target: args.target,
        single_transaction: args.single_transaction,
        accept_changed: args.accept_changed,
        baseline: args.baseline,
        adopt: args.adopt.map(|table| (table, "version".to_string())),
        dry_run: args.dry_run,
        applied_by: format!("homeplane migrate ({})", whoami()),
    };
    let (report, error) = match migrate::run(&mut conn, &migrations, &options).await {
        Ok(report) => (report, None),
        Err((report, error)) => (report, Some(error)),
    };
    for id in &report.recorded {
        println!("recorded {id} (baseline or adopted, not run)");
    }
    let (undo, apply) = if options.dry_run {
        ("would roll back", "would apply")
    } else {
        ("rolled back", "applied")
    };
    for id in &report.rolled_back {
        println!("{undo} {id}");
    }
    for id in &report.newly_applied {
        println!("{apply} {id}");
    }
    println!(
        "{} applied, {} pending{}",
        report.applied,
        report.pending,
        report
            .last
            .as_deref()
            .map(|l| format!(", last {l}"))
            .unwrap_or_default()
    );
    let _ = conn.close().await;
    if let Some(error) = error {
        bail!(error);
    }
    Ok(())
}

/// The migrations of `dir` (its `.sql` files), in order.
fn read_folder(dir: &std::path::Path) -> anyhow::Result<Vec<migrate::Migration>> {
    let mut files = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("failed to read {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(String::from) else {
            continue;
        };
        if !name.ends_with(".sql") {
            continue;
        }
        let sql = std::fs::read_to_string(&path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        files.push(migrate::parse(&name, &sql)?);
    }
    Ok(migrate::order(files)?)
}

fn whoami() -> String {
    std::env::var("USER").unwrap_or_else(|_| "unknown".to_string())
}
