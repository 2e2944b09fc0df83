//! The dashboard's model as text for a terminal: `kubectl homeplane status` (the "what needs
//! me" page) and `kubectl homeplane trace` (a dependency chain down to its first broken link).

use std::fmt::Write as _;

use super::model::{self, Attention, Link, Tile};
use super::snapshot::Snapshot;

/// The status page as text.
pub fn status(snapshot: &Snapshot, attention: &Attention, tiles: &[Tile]) -> String {
    let mut out = String::new();
    let now = snapshot.now;
    if attention.items.is_empty() {
        let ready: usize = tiles.iter().map(|t| t.ready).sum();
        let _ = writeln!(
            out,
            "Nothing needs you: {ready} object(s) Ready, no drift{}.",
            if attention.in_progress.is_empty() {
                String::new()
            } else {
                format!(", {} in progress", attention.in_progress.len())
            }
        );
    } else {
        let _ = writeln!(
            out,
            "{} thing(s) need you, worst first:",
            attention.items.len()
        );
        let _ = writeln!(out);
        for item in &attention.items {
            let since = item
                .since
                .map(|s| format!("{} ago", model::ago(now, s)))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "{:<8} {:<13} {}  ({}, since {since})",
                item.level.to_uppercase(),
                item.what,
                item.title,
                item.reason
            );
            if !item.message.is_empty() {
                let _ = writeln!(out, "         {}", one_line(&item.message));
            }
            let _ = writeln!(out, "         {}", item.command);
        }
    }
    if !attention.in_progress.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "In progress:");
        for item in &attention.in_progress {
            let _ = writeln!(
                out,
                "  {}  ({}) {}",
                item.title,
                item.reason,
                one_line(&item.message)
            );
        }
    }
    let _ = writeln!(out);
    let mut line = String::new();
    for t in tiles {
        let total = t.ready + t.progressing + t.failed;
        if total == 0 {
            continue;
        }
        if t.kind == "Drift" {
            let _ = write!(line, "{}: {} drifted   ", t.kind, t.failed);
        } else {
            let _ = write!(line, "{}: {}/{} ready", t.kind, t.ready, total);
            if t.failed > 0 {
                let _ = write!(line, " ({} failed)", t.failed);
            }
            line.push_str("   ");
        }
    }
    let _ = writeln!(out, "{}", line.trim_end());
    out
}

/// A dependency chain as an indented tree, then its first broken link.
pub fn trace(chain: &Link) -> String {
    let mut out = String::new();
    tree(&mut out, chain, "", "", true);
    let _ = writeln!(out);
    match chain.first_broken() {
        Some(link) => {
            let _ = writeln!(
                out,
                "First broken link: {} ({}){}",
                link.label(),
                link.health.word(),
                if link.note.is_empty() {
                    String::new()
                } else {
                    format!(": {}", one_line(&link.note))
                }
            );
        }
        None => {
            let _ = writeln!(out, "Every link is healthy.");
        }
    }
    out
}

fn tree(out: &mut String, link: &Link, prefix: &str, branch: &str, _last: bool) {
    let mark = if link.first_broken {
        "  <- first broken link"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "{prefix}{branch}{}  [{}] {}{mark}",
        link.label(),
        link.health.word(),
        one_line(&link.note)
    );
    let child_prefix = match branch {
        "" => prefix.to_string(),
        "└─ " => format!("{prefix}   "),
        _ => format!("{prefix}│  "),
    };
    for (i, child) in link.children.iter().enumerate() {
        let last = i + 1 == link.children.len();
        tree(
            out,
            child,
            &child_prefix,
            if last { "└─ " } else { "├─ " },
            last,
        );
    }
}

/// The text on one line (messages may hold newlines), shortened to 200 characters.
fn one_line(text: &str) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > 200 {
        let cut: String = line.chars().take(199).collect();
        format!("{cut}…")
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::Health;
    use super::*;

    #[test]
    fn a_trace_marks_its_first_broken_link() {
        let chain = Link {
            kind: "MemoryServer".into(),
            namespace: "data".into(),
            name: "memory".into(),
            href: None,
            health: Health::Waiting,
            note: "WaitingForDatabase: Database homelab is not Ready".into(),
            children: vec![Link {
                kind: "Secret".into(),
                namespace: "data".into(),
                name: "pg-admin".into(),
                href: None,
                health: Health::Missing,
                note: "admin credentials: the Secret does not exist".into(),
                children: vec![],
                first_broken: true,
            }],
            first_broken: false,
        };
        let text = trace(&chain);
        assert!(
            text.starts_with("MemoryServer data/memory  [waiting]"),
            "{text}"
        );
        assert!(
            text.contains("└─ Secret data/pg-admin  [missing]"),
            "{text}"
        );
        assert!(
            text.contains("First broken link: Secret data/pg-admin (missing): admin credentials"),
            "{text}"
        );
    }
}
