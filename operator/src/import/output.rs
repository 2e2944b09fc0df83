//! Writes the import: a folder per namespace with its `kustomization.yaml`, a root
//! `kustomization.yaml` that names them (the path a Flux Kustomization points at), the
//! README, and the plan. Every file is checked for the secret values the sources held before
//! anything is written: a value found anywhere stops the import.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::build::NamespaceOut;
use super::report::Report;

/// The file of a namespace's BackupPolicy proposals.
pub const BACKUP_FILE: &str = "backup-policies.yaml";

/// Makes `out`, which must not exist or be empty.
pub fn prepare(out: &Path) -> Result<()> {
    if out.exists() {
        let mut entries = std::fs::read_dir(out)
            .with_context(|| format!("--out {} is not a folder", out.display()))?;
        if entries.next().is_some() {
            bail!(
                "--out {} is not empty; give a new folder (the import never overwrites files)",
                out.display()
            );
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("failed to create {}", out.display()))
}

fn yaml(docs: &[Value]) -> Result<String> {
    let mut text = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            text.push_str("---\n");
        }
        text.push_str(&serde_yaml::to_string(d)?);
    }
    Ok(text)
}

fn kustomization(resources: &[String]) -> String {
    let mut text = String::from(
        "# Written by homeplane import.\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n",
    );
    for r in resources {
        let _ = writeln!(text, "- {r}");
    }
    text
}

/// Writes the namespaces' files and kustomizations.
pub fn write(
    out: &Path,
    namespaces: &BTreeMap<String, NamespaceOut>,
    backups_complete: bool,
    report: &Report,
) -> Result<()> {
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for (ns, content) in namespaces {
        let mut resources = Vec::new();
        // The namespace first, then the rest in name order.
        let mut names: Vec<&String> = content.files.keys().collect();
        names.sort_by_key(|n| (n.as_str() != "namespace.yaml", n.as_str()));
        for name in names {
            let docs = &content.files[name];
            files.insert(format!("{ns}/{name}"), yaml(docs)?);
            if name != BACKUP_FILE || backups_complete {
                resources.push(name.clone());
            }
        }
        files.insert(
            format!("{ns}/kustomization.yaml"),
            kustomization(&resources),
        );
    }
    let roots: Vec<String> = namespaces.keys().cloned().collect();
    files.insert("kustomization.yaml".into(), kustomization(&roots));
    for (path, text) in &files {
        if report.leak_in(text).is_some() {
            bail!(
                "refusing to write {path}: it would contain a secret value read from the sources (a bug of homeplane import; nothing was written)"
            );
        }
    }
    for (path, text) in files {
        let full = out.join(&path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&full, text)
            .with_context(|| format!("failed to write {}", full.display()))?;
    }
    Ok(())
}

/// Writes the README and the plan.
pub fn finish(
    out: &Path,
    namespaces: &[String],
    plan: &str,
    fits: bool,
    report: &Report,
) -> Result<()> {
    let readme = readme(out, namespaces, plan, fits, report);
    for text in [&readme, &plan.to_string()] {
        if report.leak_in(text).is_some() {
            bail!(
                "refusing to write the README: it would contain a secret value (a bug of homeplane import)"
            );
        }
    }
    std::fs::write(out.join("plan.txt"), plan)?;
    std::fs::write(out.join("README.md"), readme)?;
    Ok(())
}

fn list(text: &mut String, items: &[String], empty: &str) {
    if items.is_empty() {
        let _ = writeln!(text, "{empty}");
    }
    for i in items {
        let _ = writeln!(text, "- {i}");
    }
}

fn readme(out: &Path, namespaces: &[String], plan: &str, fits: bool, report: &Report) -> String {
    let dir = out.display();
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Imported homelab\n\nWritten by `homeplane import` from what ran and what was declared. One folder per \
         namespace (a Docker network each), each with its `kustomization.yaml`; the root \
         `kustomization.yaml` names them all, so this folder is what a Flux `Kustomization` points \
         at. Nothing here holds a secret value.\n"
    );
    let _ = writeln!(t, "## Apply it\n");
    let namespace_files: Vec<String> = namespaces
        .iter()
        .map(|ns| format!("-f {dir}/{ns}/namespace.yaml"))
        .collect();
    let _ = writeln!(
        t,
        "The Secrets must exist before the objects that read them — above all before a `Database`, \
         which otherwise gives its roles new passwords. So: the namespaces first, then the \
         Secrets, then the rest.\n\n```sh\n\
         kubectl apply {}\n\
         # create the Secrets listed below\n\
         kubectl apply -k {dir}\n\
         kubectl get drift -A\n```\n",
        namespace_files.join(" ")
    );
    let _ = writeln!(t, "## Secrets to create\n");
    if report.secrets.is_empty() {
        let _ = writeln!(t, "None.\n");
    } else {
        let _ = writeln!(
            t,
            "Their values were left out: put each one in place of `...` (the old container's \
             environment, your password manager).\n\n```sh"
        );
        for s in &report.secrets {
            let _ = writeln!(t, "# {}\n{}", s.purpose, s.command());
            for line in s.handover() {
                let _ = writeln!(t, "{line}");
            }
        }
        let _ = writeln!(t, "```\n");
    }
    let _ = writeln!(t, "## Imported\n");
    list(&mut t, &report.imported, "Nothing.");
    let _ = writeln!(t, "\n## Left out, and why\n");
    list(&mut t, &report.left_out, "Nothing.");
    let _ = writeln!(t, "\n## Check by hand before you switch over\n");
    list(&mut t, &report.check, "Nothing.");
    let _ = writeln!(
        t,
        "\n## Does it fit?\n\n`homeplane plan` on this folder ({}):\n\n```\n{}```",
        if fits {
            "it fits"
        } else {
            "it does NOT fit: see what is named below"
        },
        plan
    );
    t
}
