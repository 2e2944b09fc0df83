//! `homeplane drift history PROPERTY`: the recorded transitions of one state-registry property.

use anyhow::Context as _;

use crate::cli::DriftHistoryArgs;
use crate::history;

/// Prints the transitions of `args.property`, oldest first.
pub async fn history(args: DriftHistoryArgs) -> anyhow::Result<()> {
    let pool = history::connect(&args.history_database_url)
        .await
        .context("failed to open homeplane's database")?;
    let rows = history::drift::list(
        &pool,
        &args.property,
        args.namespace.as_deref(),
        args.limit.max(1),
    )
    .await
    .context("failed to read the drift history")?;
    if rows.is_empty() {
        println!("no transitions recorded for {}", args.property);
        return Ok(());
    }
    let text = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
    let lines: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.at.clone(),
                r.registry.clone(),
                r.from_state.clone().unwrap_or_else(|| "-".to_string()),
                r.to_state.clone(),
                text(&r.desired),
                text(&r.observed),
                text(&r.message),
            ]
        })
        .collect();
    let header = [
        "TIME", "REGISTRY", "FROM", "TO", "DESIRED", "OBSERVED", "MESSAGE",
    ];
    let mut widths = header.map(str::len);
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let print = |cells: &[String]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    print(&header.map(str::to_string));
    for line in &lines {
        print(line);
    }
    Ok(())
}
