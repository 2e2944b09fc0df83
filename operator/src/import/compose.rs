//! Reads a compose file (the Compose Specification: services, networks, volumes) into the
//! same model as running containers, for what is declared but not running. Variables are
//! interpolated only from defaults written in the file (`${TAG:-1.2}`); a variable the file
//! does not define, and every key of an `env_file`, comes from a Secret the person fills in —
//! the import never reads a value it would then have to hide.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde_yaml::Value;

use super::model::{
    Container, Device, Gpu, Health, HealthTest, Mount, MountKind, Network, NetworkMode, Origin,
    Port, gpu_of_device,
};
use crate::quantity::Milli;

/// What a compose file declares.
pub struct Project {
    /// The project name (`name:`, else the file's folder).
    pub name: String,
    /// Its services.
    pub containers: Vec<Container>,
    /// Its networks, by the name the engine would give them (`<project>_<network>`).
    pub networks: BTreeMap<String, Network>,
    /// Service name of each container, by container name.
    pub services: BTreeMap<String, String>,
    /// Services that cannot be imported, and why.
    pub left_out: Vec<String>,
}

/// `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}` and `$$`: the text with defaults
/// filled in, and the variables that have none (left as written).
fn interpolate(text: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len());
    let mut unknown = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                out.push_str(&rest[i..]);
                rest = "";
                break;
            };
            let inner = &body[..end];
            let (var, default) = match inner.split_once(":-").or_else(|| inner.split_once('-')) {
                Some((v, d)) => (v, Some(d)),
                None => (inner.split_once(":?").map_or(inner, |(v, _)| v), None),
            };
            match default {
                Some(d) => out.push_str(d),
                None => {
                    unknown.push(var.to_string());
                    out.push_str(&format!("${{{inner}}}"));
                }
            }
            rest = &body[end + 1..];
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if len == 0 {
                out.push('$');
            } else {
                unknown.push(after[..len].to_string());
                out.push_str(&rest[i..i + 1 + len]);
            }
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    (out, unknown)
}

/// Splits a command written as one string the way a POSIX shell would split words (quotes
/// and backslashes; no expansion).
fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => {
                if let Some(n) = chars.next() {
                    current.push(n);
                }
            }
            (Some(_), c) => current.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                if let Some(n) = chars.next() {
                    current.push(n);
                    in_word = true;
                }
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            (None, c) => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(current);
    }
    words
}

/// Seconds of a compose duration (`1m30s`, `10s`, `500ms`, `2h`).
fn duration_seconds(text: &str) -> Option<i32> {
    let mut total_ms: f64 = 0.0;
    let mut number = String::new();
    let mut chars = text.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let unit = match (c, chars.peek()) {
            ('m', Some('s')) => {
                chars.next();
                0.001
            }
            ('u' | 'µ', Some('s')) => {
                chars.next();
                0.000_001
            }
            ('n', Some('s')) => {
                chars.next();
                0.000_000_001
            }
            ('h', _) => 3600.0,
            ('m', _) => 60.0,
            ('s', _) => 1.0,
            _ => return None,
        };
        total_ms += number.parse::<f64>().ok()? * unit * 1000.0;
        number.clear();
    }
    if !number.is_empty() {
        total_ms += number.parse::<f64>().ok()? * 1000.0;
    }
    Some((total_ms / 1000.0).ceil() as i32)
}

/// Bytes of a compose size (`512m`, `1g`, `256M`, `1024`; compose's units are binary).
fn bytes(value: &Value) -> Option<i128> {
    if let Some(n) = value.as_i64() {
        return Some(i128::from(n));
    }
    let text = value.as_str()?.trim().to_ascii_lowercase();
    let text = text.trim_end_matches('b');
    let (number, shift) = match text.chars().last()? {
        'k' => (&text[..text.len() - 1], 10),
        'm' => (&text[..text.len() - 1], 20),
        'g' => (&text[..text.len() - 1], 30),
        't' => (&text[..text.len() - 1], 40),
        _ => (text, 0),
    };
    let n: f64 = number.parse().ok()?;
    Some((n * (1u64 << shift) as f64) as i128)
}

/// Milli-CPUs of `cpus: 0.5` / `"1.5"`.
fn cpus(value: &Value) -> Option<Milli> {
    let n = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    (n > 0.0).then(|| Milli((n * 1000.0).ceil() as i128))
}

fn string_list(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => split_words(s),
        Value::Sequence(items) => items.iter().filter_map(scalar).collect(),
        _ => Vec::new(),
    }
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `KEY: value` maps and `["KEY=value", "KEY"]` lists, as (key, value or None).
fn key_values(value: &Value) -> Vec<(String, Option<String>)> {
    match value {
        Value::Mapping(map) => map
            .iter()
            .filter_map(|(k, v)| Some((scalar(k)?, scalar(v))))
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .filter_map(scalar)
            .map(|item| match item.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (item, None),
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn protocol(p: &str) -> String {
    match p.to_ascii_lowercase().as_str() {
        "udp" => "UDP".into(),
        "sctp" => "SCTP".into(),
        _ => "TCP".into(),
    }
}

/// Ports of `ports:` (short and long syntax) and `expose:`; ranges are noted and skipped.
fn ports(service: &Value, notes: &mut Vec<String>) -> Vec<Port> {
    let mut out: BTreeMap<(i32, String), Option<i32>> = BTreeMap::new();
    for item in service["ports"].as_sequence().into_iter().flatten() {
        if let Value::Mapping(_) = item {
            let Some(target) = item["target"].as_i64().and_then(|t| i32::try_from(t).ok()) else {
                continue;
            };
            let published = scalar(&item["published"]).and_then(|p| p.parse().ok());
            let proto = protocol(item["protocol"].as_str().unwrap_or("tcp"));
            out.insert((target, proto), published);
            continue;
        }
        let Some(text) = scalar(item) else { continue };
        let (spec, proto) = text.split_once('/').unwrap_or((&text, "tcp"));
        let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
        let container = parts[0];
        let published = parts.get(1).and_then(|p| p.parse::<i32>().ok());
        if container.contains('-') {
            notes.push(format!(
                "port range {text} was left out (declare each port)"
            ));
            continue;
        }
        if let Ok(port) = container.parse::<i32>() {
            out.insert((port, protocol(proto)), published);
        }
    }
    for item in service["expose"].as_sequence().into_iter().flatten() {
        let Some(text) = scalar(item) else { continue };
        let (port, proto) = text.split_once('/').unwrap_or((&text, "tcp"));
        if let Ok(port) = port.parse::<i32>() {
            out.entry((port, protocol(proto))).or_insert(None);
        }
    }
    out.into_iter()
        .map(|((container, protocol), published)| Port {
            container,
            protocol,
            published,
        })
        .collect()
}

fn health(value: &Value) -> Option<Health> {
    if value["disable"].as_bool() == Some(true) {
        return None;
    }
    let test = match &value["test"] {
        Value::String(s) => {
            HealthTest::Shell(s.strip_prefix("CMD-SHELL ").unwrap_or(s).to_string())
        }
        Value::Sequence(items) => {
            let words: Vec<String> = items.iter().filter_map(scalar).collect();
            match words.split_first() {
                Some((first, rest)) if first == "CMD" => HealthTest::Exec(rest.to_vec()),
                Some((first, rest)) if first == "CMD-SHELL" => HealthTest::Shell(rest.join(" ")),
                _ => return None,
            }
        }
        _ => return None,
    };
    let seconds = |key: &str, default: i32| {
        value[key]
            .as_str()
            .and_then(duration_seconds)
            .unwrap_or(default)
    };
    Some(Health {
        test,
        interval_seconds: seconds("interval", 30).max(1),
        timeout_seconds: seconds("timeout", 30).max(1),
        retries: value["retries"]
            .as_i64()
            .and_then(|r| i32::try_from(r).ok())
            .filter(|r| *r > 0)
            .unwrap_or(3),
        start_period_seconds: seconds("start_period", 0),
    })
}

/// Keys of an env file (values are not read into the output: they come from a Secret).
fn env_file_keys(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read env_file {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            Some((
                k.trim().to_string(),
                v.trim().trim_matches(['"', '\'']).to_string(),
            ))
        })
        .collect())
}

/// Reads `file`. `hide` receives every value the import must never write (env-file values).
pub fn read(file: &Path, hide: &mut dyn FnMut(&str)) -> Result<Project> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("failed to read compose file {}", file.display()))?;
    let doc: Value =
        serde_yaml::from_str(&text).with_context(|| format!("{} is not YAML", file.display()))?;
    let dir: PathBuf = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let project = doc["name"].as_str().map(str::to_string).unwrap_or_else(|| {
        dir.canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "default".into())
            .to_ascii_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect()
    });
    let Some(services) = doc["services"].as_mapping() else {
        bail!("{} has no services", file.display());
    };
    let file_label = file.display().to_string();

    // Networks: `<project>_<name>` unless `name:` or `external:` says otherwise.
    let mut networks = BTreeMap::new();
    let network_name = |short: &str| -> String {
        let decl = &doc["networks"][short];
        if let Some(n) = decl["name"].as_str() {
            n.to_string()
        } else if decl["external"].as_bool() == Some(true) {
            short.to_string()
        } else {
            format!("{project}_{short}")
        }
    };
    for (key, decl) in doc["networks"].as_mapping().into_iter().flatten() {
        let Some(short) = key.as_str() else { continue };
        networks.insert(
            network_name(short),
            Network {
                short_name: short.to_string(),
                internal: decl["internal"].as_bool().unwrap_or(false),
                default: false,
            },
        );
    }
    let default_network = format!("{project}_default");

    let mut containers = Vec::new();
    let mut left_out = Vec::new();
    let mut service_of = BTreeMap::new();
    for (key, service) in services {
        let Some(service_name) = key.as_str() else {
            continue;
        };
        let mut notes = Vec::new();
        let mut unknown_vars: Vec<String> = Vec::new();
        let mut text_of = |v: &Value| -> Option<String> {
            let (text, unknown) = interpolate(&scalar(v)?);
            unknown_vars.extend(unknown);
            Some(text)
        };
        let Some(image) = text_of(&service["image"]) else {
            left_out.push(format!(
                "compose service {service_name}: it is built from source (build:) and has no image; build and push the image, set image: and import again"
            ));
            continue;
        };
        let name = service["container_name"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| service_name.to_string());
        let mut c = Container::new(
            &name,
            &image,
            Origin::Compose {
                file: file_label.clone(),
            },
        );
        service_of.insert(name.clone(), service_name.to_string());
        let words = |v: &Value, unknown: &mut Vec<String>| -> Vec<String> {
            string_list(v)
                .into_iter()
                .map(|w| {
                    let (text, u) = interpolate(&w);
                    unknown.extend(u);
                    text
                })
                .collect()
        };
        let mut unknown_words = Vec::new();
        c.entrypoint = words(&service["entrypoint"], &mut unknown_words);
        c.cmd = words(&service["command"], &mut unknown_words);
        c.cmd_is_args = c.entrypoint.is_empty();
        c.working_dir = text_of(&service["working_dir"]);
        c.user = text_of(&service["user"]);
        c.restart = service["restart"].as_str().unwrap_or("no").to_string();

        // Environment.
        for (k, v) in key_values(&service["environment"]) {
            match v.map(|v| interpolate(&v)) {
                Some((value, unknown)) if unknown.is_empty() => c.env.push((k, value)),
                _ => c.env_unknown.push(k),
            }
        }
        let env_files: Vec<String> = match &service["env_file"] {
            Value::String(s) => vec![s.clone()],
            Value::Sequence(items) => items
                .iter()
                .filter_map(|i| scalar(i).or_else(|| i["path"].as_str().map(str::to_string)))
                .collect(),
            _ => Vec::new(),
        };
        for f in env_files {
            let path = dir.join(&f);
            match env_file_keys(&path) {
                Ok(entries) => {
                    for (k, v) in entries {
                        hide(&v);
                        if !c.env.iter().any(|(e, _)| e == &k) && !c.env_unknown.contains(&k) {
                            c.env_unknown.push(k);
                        }
                    }
                }
                Err(e) => notes.push(format!("{e:#}; its variables were left out")),
            }
        }

        c.labels = key_values(&service["labels"])
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect();
        c.ports = ports(service, &mut notes);
        c.health = health(&service["healthcheck"]);

        // Limits: deploy.resources.limits, or the older cpus / mem_limit.
        let limits = &service["deploy"]["resources"]["limits"];
        c.cpu = cpus(&limits["cpus"]).or_else(|| cpus(&service["cpus"]));
        c.memory = bytes(&limits["memory"])
            .or_else(|| bytes(&service["mem_limit"]))
            .filter(|b| *b > 0)
            .map(|b| Milli(b * 1000));

        // GPUs and devices.
        for d in service["deploy"]["resources"]["reservations"]["devices"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            let gpu = d["capabilities"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(|cap| cap.as_str() == Some("gpu"));
            if gpu {
                c.gpu = Some(match d["driver"].as_str() {
                    Some(driver) if driver.contains("amd") => Gpu::Amd,
                    _ => Gpu::Nvidia,
                });
            }
        }
        for d in service["devices"].as_sequence().into_iter().flatten() {
            let Some(text) = scalar(d) else { continue };
            let mut parts = text.split(':');
            let host = parts.next().unwrap_or_default().to_string();
            let container = parts
                .next()
                .map(str::to_string)
                .unwrap_or_else(|| host.clone());
            if let Some(gpu) = gpu_of_device(&container) {
                c.gpu = Some(gpu);
            }
            c.devices.push(Device { host, container });
        }

        // Volumes.
        for (i, v) in service["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let (kind, source, target, read_only) = match v {
                Value::Mapping(_) => (
                    v["type"].as_str().unwrap_or("volume").to_string(),
                    v["source"].as_str().map(str::to_string),
                    v["target"].as_str().unwrap_or_default().to_string(),
                    v["read_only"].as_bool().unwrap_or(false),
                ),
                _ => {
                    let Some(text) = text_of(v) else { continue };
                    let parts: Vec<&str> = text.split(':').collect();
                    match parts.as_slice() {
                        [target] => ("volume".into(), None, target.to_string(), false),
                        [source, target] => (
                            String::new(),
                            Some(source.to_string()),
                            target.to_string(),
                            false,
                        ),
                        [source, target, mode, ..] => (
                            String::new(),
                            Some(source.to_string()),
                            target.to_string(),
                            mode.split(',').any(|m| m == "ro"),
                        ),
                        [] => continue,
                    }
                }
            };
            let bind_source = |s: &str| s.starts_with(['.', '/', '~']);
            let mount_kind = match (kind.as_str(), source) {
                ("tmpfs", _) => MountKind::Tmpfs,
                ("bind", Some(s)) => MountKind::Bind(s),
                ("", Some(s)) if bind_source(&s) => MountKind::Bind(s),
                (_, Some(s)) => MountKind::Volume(
                    doc["volumes"][s.as_str()]["name"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or(s),
                ),
                (_, None) => MountKind::Volume(format!("{service_name}-{i}")),
            };
            let (kind, used, is_file) = match mount_kind {
                MountKind::Bind(s) => {
                    let path = if let Some(rel) = s.strip_prefix("./") {
                        dir.join(rel)
                    } else if s == "." {
                        dir.clone()
                    } else {
                        PathBuf::from(&s)
                    };
                    let meta = std::fs::metadata(&path).ok();
                    let is_file = meta.as_ref().is_some_and(std::fs::Metadata::is_file);
                    let used = meta.map(|m| {
                        if m.is_file() {
                            m.len()
                        } else {
                            dir_size(&path)
                        }
                    });
                    (MountKind::Bind(path.display().to_string()), used, is_file)
                }
                other => (other, None, false),
            };
            c.mounts.push(Mount {
                kind,
                target,
                read_only,
                used_bytes: used,
                is_file,
            });
        }
        for t in string_list(&service["tmpfs"]) {
            c.mounts.push(Mount {
                kind: MountKind::Tmpfs,
                target: t.split(':').next().unwrap_or_default().to_string(),
                read_only: false,
                used_bytes: None,
                is_file: false,
            });
        }

        // Networks.
        c.network_mode = match service["network_mode"].as_str() {
            Some("host") => NetworkMode::Host,
            Some("none") => NetworkMode::None,
            Some(mode) if mode.starts_with("service:") || mode.starts_with("container:") => {
                NetworkMode::Container(
                    mode.split_once(':')
                        .map(|(_, n)| n.to_string())
                        .unwrap_or_default(),
                )
            }
            _ => NetworkMode::Bridge,
        };
        c.networks = match &service["networks"] {
            Value::Sequence(items) => items
                .iter()
                .filter_map(|i| i.as_str().map(network_name))
                .collect(),
            Value::Mapping(map) => map
                .keys()
                .filter_map(|k| k.as_str().map(network_name))
                .collect(),
            _ => Vec::new(),
        };
        if c.networks.is_empty() && c.network_mode == NetworkMode::Bridge {
            c.networks.push(default_network.clone());
            networks.entry(default_network.clone()).or_insert(Network {
                short_name: project.clone(),
                internal: false,
                default: false,
            });
        }

        for key in ["secrets", "configs"] {
            if service.get(key).is_some() {
                notes.push(format!(
                    "its compose {key} were left out: create them as Kubernetes Secrets or ConfigMaps and mount them"
                ));
            }
        }
        unknown_vars.extend(unknown_words);
        if !unknown_vars.is_empty() {
            unknown_vars.sort();
            unknown_vars.dedup();
            notes.push(format!(
                "the file takes {} from the environment compose ran in; where they appear outside `environment:` they are left as written",
                unknown_vars.iter().map(|v| format!("${v}")).collect::<Vec<_>>().join(", ")
            ));
        }
        c.notes = notes;
        containers.push(c);
    }
    Ok(Project {
        name: project,
        containers,
        networks,
        services: service_of,
        left_out,
    })
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if let Ok(meta) = entry.path().symlink_metadata() {
                if meta.is_dir() {
                    stack.push(entry.path());
                } else {
                    total += meta.len();
                }
            }
            seen += 1;
            if seen > 1_000_000 {
                return total;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_take_only_the_defaults_the_file_writes() {
        assert_eq!(interpolate("app:${TAG:-1.2}"), ("app:1.2".into(), vec![]));
        assert_eq!(
            interpolate("postgres://app:${DB_PASSWORD}@db/app"),
            (
                "postgres://app:${DB_PASSWORD}@db/app".into(),
                vec!["DB_PASSWORD".to_string()]
            )
        );
        assert_eq!(interpolate("cost $$5"), ("cost $5".into(), vec![]));
        assert_eq!(
            interpolate("$HOME/x"),
            ("$HOME/x".into(), vec!["HOME".to_string()])
        );
    }

    #[test]
    fn words_durations_sizes() {
        assert_eq!(
            split_words(r#"sh -c "echo 'hi there'" x\ y"#),
            ["sh", "-c", "echo 'hi there'", "x y"]
        );
        assert_eq!(duration_seconds("1m30s"), Some(90));
        assert_eq!(duration_seconds("500ms"), Some(1));
        assert_eq!(duration_seconds("10s"), Some(10));
        assert_eq!(bytes(&Value::String("512m".into())), Some(512 << 20));
        assert_eq!(bytes(&Value::String("1g".into())), Some(1 << 30));
        assert_eq!(cpus(&Value::String("0.5".into())), Some(Milli(500)));
    }

    #[test]
    fn a_compose_file_becomes_containers() {
        let dir = std::env::temp_dir().join(format!("hp-compose-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("conf")).unwrap();
        std::fs::write(dir.join("conf/app.ini"), "x=1\n").unwrap();
        std::fs::write(
            dir.join("app.env"),
            "SMTP_PASSWORD=s3cr3t-smtp\nFROM=me@example.org\n",
        )
        .unwrap();
        let file = dir.join("compose.yaml");
        std::fs::write(
            &file,
            r#"
name: homelab
services:
  n8n:
    image: n8nio/n8n:${N8N_VERSION:-1.123.4}
    restart: unless-stopped
    environment:
      TZ: Europe/Berlin
      DB_POSTGRESDB_PASSWORD: ${DB_PASSWORD}
    env_file: app.env
    ports: ["5678:5678"]
    volumes:
      - n8n-data:/home/node/.n8n
      - ./conf:/conf:ro
    networks: [automation, data]
    deploy:
      resources:
        limits: {cpus: "1", memory: 1g}
    healthcheck:
      test: ["CMD-SHELL", "wget -q -O- http://localhost:5678/healthz || exit 1"]
      interval: 30s
      start_period: 1m
  whisper:
    image: onerahmet/openai-whisper-asr-webservice:v1.9.1
    command: --model small
    deploy:
      resources:
        reservations:
          devices: [{driver: nvidia, count: 1, capabilities: [gpu]}]
  builder:
    build: .
networks:
  automation: {}
  data: {internal: true}
volumes:
  n8n-data: {}
"#,
        )
        .unwrap();
        let mut hidden = Vec::new();
        let p = read(&file, &mut |v| hidden.push(v.to_string())).unwrap();
        assert_eq!(p.name, "homelab");
        let n8n = p.containers.iter().find(|c| c.name == "n8n").unwrap();
        assert_eq!(n8n.image, "n8nio/n8n:1.123.4");
        assert_eq!(n8n.env, [("TZ".to_string(), "Europe/Berlin".to_string())]);
        assert_eq!(
            n8n.env_unknown,
            ["DB_POSTGRESDB_PASSWORD", "SMTP_PASSWORD", "FROM"]
        );
        assert!(hidden.contains(&"s3cr3t-smtp".to_string()));
        assert_eq!(n8n.cpu, Some(Milli(1000)));
        assert_eq!(n8n.memory, Some(Milli((1i128 << 30) * 1000)));
        assert_eq!(n8n.ports[0].published, Some(5678));
        assert_eq!(n8n.networks, ["homelab_automation", "homelab_data"]);
        assert!(p.networks["homelab_data"].internal);
        assert!(matches!(n8n.mounts[0].kind, MountKind::Volume(ref v) if v == "n8n-data"));
        assert!(n8n.mounts[1].read_only);
        assert_eq!(n8n.health.as_ref().unwrap().start_period_seconds, 60);
        let whisper = p.containers.iter().find(|c| c.name == "whisper").unwrap();
        assert_eq!(whisper.gpu, Some(Gpu::Nvidia));
        assert_eq!(whisper.cmd, ["--model", "small"]);
        assert!(
            whisper.cmd_is_args,
            "compose's command keeps the image's entrypoint"
        );
        assert_eq!(whisper.networks, ["homelab_default"]);
        assert!(p.left_out[0].contains("builder"), "{:?}", p.left_out);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
