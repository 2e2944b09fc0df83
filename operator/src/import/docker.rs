//! Reads what a Docker Engine API (Docker, or Podman's compatible service) runs: every
//! container (or those matching the filters), inspected, with its image's defaults taken
//! away, the sizes of its volumes, and the networks it joins. Only reads: nothing is started,
//! stopped or changed.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use bollard::Docker;
use bollard::query_parameters::{
    DataUsageOptions, ListContainersOptionsBuilder, ListNetworksOptions,
};
use serde::Deserialize;

use super::model::{
    Container, Device, Gpu, Health, HealthTest, Mount, MountKind, Network, NetworkMode, Observed,
    Origin, Port, gpu_of_device, is_default_network,
};
use crate::quantity::Milli;

/// The PATH Docker and Podman set when the image sets none.
const ENGINE_DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Most files counted when sizing a bind mount.
const MAX_FILES_COUNTED: usize = 1_000_000;

/// The part of `GET /containers/{id}/json` the import reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Inspect {
    id: String,
    name: String,
    config: ContainerConfig,
    host_config: HostConfig,
    mounts: Vec<InspectMount>,
    network_settings: NetworkSettings,
    state: State,
    restart_count: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ContainerConfig {
    image: String,
    env: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    working_dir: String,
    user: String,
    labels: Option<BTreeMap<String, String>>,
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    healthcheck: Option<HealthConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct HealthConfig {
    test: Option<Vec<String>>,
    interval: i64,
    timeout: i64,
    retries: i64,
    start_period: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct HostConfig {
    nano_cpus: i64,
    cpu_quota: i64,
    cpu_period: i64,
    memory: i64,
    restart_policy: Option<RestartPolicy>,
    port_bindings: Option<BTreeMap<String, Option<Vec<PortBinding>>>>,
    devices: Option<Vec<DeviceMapping>>,
    device_requests: Option<Vec<DeviceRequest>>,
    network_mode: String,
    tmpfs: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct RestartPolicy {
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct PortBinding {
    host_port: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct DeviceMapping {
    path_on_host: String,
    path_in_container: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct DeviceRequest {
    driver: String,
    capabilities: Option<Vec<Vec<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct InspectMount {
    #[serde(rename = "Type")]
    kind: String,
    name: Option<String>,
    source: String,
    destination: String,
    #[serde(rename = "RW")]
    rw: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct NetworkSettings {
    networks: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct State {
    status: String,
    health: Option<HealthState>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct HealthState {
    status: String,
}

/// The part of `GET /images/{name}/json` the import reads: what the image sets by itself.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ImageInspect {
    config: ImageConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ImageConfig {
    env: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    labels: Option<BTreeMap<String, String>>,
}

/// What an endpoint runs: its containers and their networks.
pub struct Engine {
    /// The containers, by name.
    pub containers: Vec<Container>,
    /// The networks, by engine name.
    pub networks: BTreeMap<String, Network>,
}

/// Parses `KEY=VALUE` filters into the Docker API's filter map.
pub fn filters(raw: &[String]) -> Result<HashMap<String, Vec<String>>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for f in raw {
        let Some((key, value)) = f.split_once('=') else {
            bail!(
                "--filter {f:?} is not KEY=VALUE (e.g. name=web, label=com.docker.compose.project=homelab, network=edge, status=running)"
            );
        };
        map.entry(key.to_string())
            .or_default()
            .push(value.to_string());
    }
    Ok(map)
}

/// Reads every container of `endpoint` that matches `filters` (stopped ones too).
pub async fn read(endpoint: &str, filters: HashMap<String, Vec<String>>) -> Result<Engine> {
    let docker =
        homeplane_state::observe::docker::connect(endpoint).map_err(|e| anyhow::anyhow!("{e}"))?;
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let summaries = docker
        .list_containers(Some(options))
        .await
        .with_context(|| format!("failed to list the containers of {endpoint}"))?;
    let volume_sizes = volume_sizes(&docker).await;
    let networks = networks(&docker).await;
    let local = endpoint.starts_with("unix://");
    let mut containers = Vec::new();
    for summary in summaries {
        let Some(id) = summary.id else { continue };
        let inspected = docker
            .inspect_container(&id, None)
            .await
            .with_context(|| format!("failed to inspect container {id}"))?;
        let inspect: Inspect = serde_json::to_value(inspected)
            .and_then(serde_json::from_value)
            .with_context(|| format!("failed to read the inspection of container {id}"))?;
        let image = match docker.inspect_image(&inspect.config.image).await {
            Ok(i) => serde_json::to_value(i)
                .and_then(serde_json::from_value)
                .unwrap_or_default(),
            Err(_) => ImageInspect::default(),
        };
        containers.push(container(endpoint, inspect, &image, &volume_sizes, local));
    }
    containers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Engine {
        containers,
        networks: networks.unwrap_or_default(),
    })
}

/// Bytes used by each named volume as the engine reports them (`GET /system/df`); empty when
/// it does not (older engines and Podman answer in another shape: their volumes are measured
/// on disk instead, when the engine is local).
async fn volume_sizes(docker: &Docker) -> BTreeMap<String, u64> {
    let Ok(df) = docker.df(None::<DataUsageOptions>).await else {
        return BTreeMap::new();
    };
    df.volume_usage
        .and_then(|u| u.items)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|item| {
            let name = item.get("Name")?.as_str()?.to_string();
            let size = item.pointer("/UsageData/Size")?.as_i64()?;
            Some((name, u64::try_from(size).ok()?))
        })
        .collect()
}

/// The engine's networks: short names (compose's own name when compose made them) and flags.
async fn networks(docker: &Docker) -> Option<BTreeMap<String, Network>> {
    let list = docker
        .list_networks(None::<ListNetworksOptions>)
        .await
        .ok()?;
    Some(
        list.into_iter()
            .filter_map(|n| {
                let name = n.name?;
                let labels = n.labels.unwrap_or_default();
                let short_name = labels
                    .get("com.docker.compose.network")
                    .cloned()
                    .unwrap_or_else(|| name.clone());
                Some((
                    name.clone(),
                    Network {
                        short_name,
                        internal: n.internal.unwrap_or(false),
                        default: is_default_network(&name),
                    },
                ))
            })
            .collect(),
    )
}

/// Seconds from Docker's nanoseconds, Docker's default when unset.
fn seconds(nanos: i64, default: i32) -> i32 {
    if nanos <= 0 {
        default
    } else {
        i32::try_from((nanos + 999_999_999) / 1_000_000_000).unwrap_or(i32::MAX)
    }
}

fn health(config: &HealthConfig) -> Option<Health> {
    let test = config.test.as_ref()?;
    let (kind, rest) = test.split_first()?;
    let test = match kind.as_str() {
        "CMD" => HealthTest::Exec(rest.to_vec()),
        "CMD-SHELL" => HealthTest::Shell(rest.join(" ")),
        _ => return None, // "NONE", or inherited ([]): no check
    };
    Some(Health {
        test,
        interval_seconds: seconds(config.interval, 30),
        timeout_seconds: seconds(config.timeout, 30),
        retries: if config.retries > 0 {
            i32::try_from(config.retries).unwrap_or(3)
        } else {
            3
        },
        start_period_seconds: seconds(config.start_period, 0),
    })
}

/// `80/tcp` → (80, TCP).
fn parse_port(key: &str) -> Option<(i32, String)> {
    let (number, protocol) = key.split_once('/').unwrap_or((key, "tcp"));
    let protocol = match protocol {
        "udp" => "UDP",
        "sctp" => "SCTP",
        _ => "TCP",
    };
    Some((number.parse().ok()?, protocol.to_string()))
}

/// Bytes under `path` and whether it is a single file; `None` when it cannot be read here.
fn local_usage(path: &Path) -> Option<(u64, bool)> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if meta.is_file() {
        return Some((meta.len(), true));
    }
    let mut total = 0u64;
    let mut files = 0usize;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
            files += 1;
            if files >= MAX_FILES_COUNTED {
                return Some((total, false));
            }
        }
    }
    Some((total, false))
}

fn container(
    endpoint: &str,
    inspect: Inspect,
    image: &ImageInspect,
    volume_sizes: &BTreeMap<String, u64>,
    local: bool,
) -> Container {
    let name = inspect.name.trim_start_matches('/').to_string();
    let config = &inspect.config;
    let mut c = Container::new(
        &name,
        &config.image,
        Origin::Docker {
            endpoint: endpoint.to_string(),
        },
    );

    // Command: only where it differs from the image's own.
    let entrypoint = config.entrypoint.clone().unwrap_or_default();
    let cmd = config.cmd.clone().unwrap_or_default();
    if entrypoint != image.config.entrypoint.clone().unwrap_or_default()
        || cmd != image.config.cmd.clone().unwrap_or_default()
    {
        c.entrypoint = entrypoint;
        c.cmd = cmd;
    }
    c.working_dir = Some(config.working_dir.clone()).filter(|w| !w.is_empty() && w != "/");
    c.user = Some(config.user.clone()).filter(|u| !u.is_empty());

    // Environment: what the container adds to its image, without what the engine adds.
    let image_env: Vec<String> = image.config.env.clone().unwrap_or_default();
    for entry in config.env.iter().flatten() {
        if image_env.contains(entry) {
            continue;
        }
        let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
        let engine_added = key == "container"
            || key == "HOSTNAME"
            || (key == "TERM" && value == "xterm")
            || (key == "PATH" && value == ENGINE_DEFAULT_PATH);
        if !engine_added {
            c.env.push((key.to_string(), value.to_string()));
        }
    }

    // Labels the image does not set.
    let image_labels = image.config.labels.clone().unwrap_or_default();
    c.labels = config
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, v)| image_labels.get(k) != Some(v))
        .collect();

    // Ports: exposed and published.
    let mut ports: BTreeMap<(i32, String), Option<i32>> = BTreeMap::new();
    for key in config.exposed_ports.iter().flat_map(|m| m.keys()) {
        if let Some(p) = parse_port(key) {
            ports.entry(p).or_insert(None);
        }
    }
    for (key, bindings) in inspect.host_config.port_bindings.iter().flatten() {
        if let Some(p) = parse_port(key) {
            let host = bindings
                .iter()
                .flatten()
                .find_map(|b| b.host_port.parse::<i32>().ok());
            let entry = ports.entry(p).or_insert(None);
            if host.is_some() {
                *entry = host;
            }
        }
    }
    c.ports = ports
        .into_iter()
        .map(|((container, protocol), published)| Port {
            container,
            protocol,
            published,
        })
        .collect();

    c.health = config.healthcheck.as_ref().and_then(health);
    c.restart = inspect
        .host_config
        .restart_policy
        .as_ref()
        .map(|r| r.name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "no".into());

    // Limits: NanoCpus (--cpus), else CpuQuota/CpuPeriod; Memory in bytes.
    let hc = &inspect.host_config;
    c.cpu = if hc.nano_cpus > 0 {
        Some(Milli((i128::from(hc.nano_cpus) + 999_999) / 1_000_000))
    } else if hc.cpu_quota > 0 && hc.cpu_period > 0 {
        Some(Milli(
            (i128::from(hc.cpu_quota) * 1000 + i128::from(hc.cpu_period) - 1)
                / i128::from(hc.cpu_period),
        ))
    } else {
        None
    };
    c.memory = (hc.memory > 0).then(|| Milli(i128::from(hc.memory) * 1000));

    // Mounts.
    for m in &inspect.mounts {
        let mount = match m.kind.as_str() {
            "volume" => {
                let name = m.name.clone().unwrap_or_default();
                let measured = if local {
                    local_usage(Path::new(&m.source)).map(|(bytes, _)| bytes)
                } else {
                    None
                };
                Mount {
                    used_bytes: volume_sizes.get(&name).copied().or(measured),
                    kind: MountKind::Volume(name),
                    target: m.destination.clone(),
                    read_only: !m.rw,
                    is_file: false,
                }
            }
            "bind" => {
                let usage = if local {
                    local_usage(Path::new(&m.source))
                } else {
                    None
                };
                Mount {
                    kind: MountKind::Bind(m.source.clone()),
                    target: m.destination.clone(),
                    read_only: !m.rw,
                    used_bytes: usage.map(|(bytes, _)| bytes),
                    is_file: usage.is_some_and(|(_, file)| file),
                }
            }
            "tmpfs" => Mount {
                kind: MountKind::Tmpfs,
                target: m.destination.clone(),
                read_only: false,
                used_bytes: None,
                is_file: false,
            },
            other => {
                c.notes.push(format!(
                    "mount of type {other} at {} was left out",
                    m.destination
                ));
                continue;
            }
        };
        c.mounts.push(mount);
    }
    for target in hc.tmpfs.iter().flat_map(|t| t.keys()) {
        if !c.mounts.iter().any(|m| &m.target == target) {
            c.mounts.push(Mount {
                kind: MountKind::Tmpfs,
                target: target.clone(),
                read_only: false,
                used_bytes: None,
                is_file: false,
            });
        }
    }

    // Devices and GPUs.
    for d in hc.devices.iter().flatten() {
        let container_path = if d.path_in_container.is_empty() {
            d.path_on_host.clone()
        } else {
            d.path_in_container.clone()
        };
        if let Some(gpu) = gpu_of_device(&container_path) {
            c.gpu = Some(gpu);
        }
        c.devices.push(Device {
            host: d.path_on_host.clone(),
            container: container_path,
        });
    }
    for r in hc.device_requests.iter().flatten() {
        let gpu_capability = r
            .capabilities
            .iter()
            .flatten()
            .any(|set| set.iter().any(|cap| cap == "gpu"));
        if gpu_capability || r.driver == "nvidia" {
            c.gpu = Some(Gpu::Nvidia);
        }
    }

    // Networks.
    c.network_mode = match hc.network_mode.as_str() {
        "host" => NetworkMode::Host,
        "none" => NetworkMode::None,
        mode if mode.starts_with("container:") => {
            NetworkMode::Container(mode.trim_start_matches("container:").to_string())
        }
        _ => NetworkMode::Bridge,
    };
    c.networks = inspect
        .network_settings
        .networks
        .iter()
        .flat_map(|n| n.keys().cloned())
        .collect();

    c.observed = Some(Observed {
        id: inspect.id.clone(),
        status: inspect.state.status.clone(),
        health: inspect
            .state
            .health
            .as_ref()
            .map(|h| h.status.clone())
            .filter(|s| !s.is_empty()),
        restart_count: inspect.restart_count,
        nano_cpus: hc.nano_cpus,
        memory: hc.memory,
    });
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspect(json: serde_json::Value) -> Inspect {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn an_inspection_becomes_a_container() {
        let i = inspect(serde_json::json!({
            "Id": "abc", "Name": "/web",
            "Config": {
                "Image": "localhost/web:1",
                "Env": ["DB_PASSWORD=hunter2", "MODE=prod", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm", "container=podman", "LANG=C.UTF-8"],
                "Cmd": ["/bin/busybox", "httpd", "-f", "-p", "80"], "Entrypoint": [],
                "WorkingDir": "/srv", "User": "1000:1000",
                "Labels": {"tier": "web", "org.opencontainers.image.title": "web"},
                "ExposedPorts": {"80/tcp": {}, "9100/tcp": {}},
                "Healthcheck": {"Test": ["CMD-SHELL", "wget -q -O- http://localhost/ || exit 1"], "Interval": 10000000000u64, "Timeout": 0, "Retries": 0}
            },
            "HostConfig": {
                "NanoCpus": 500000000, "CpuQuota": 50000, "CpuPeriod": 100000, "Memory": 268435456,
                "RestartPolicy": {"Name": "unless-stopped"},
                "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]},
                "Devices": [{"PathOnHost": "/dev/kfd", "PathInContainer": "/dev/kfd"}],
                "NetworkMode": "bridge"
            },
            "Mounts": [
                {"Type": "volume", "Name": "data", "Source": "/x", "Destination": "/data", "RW": true},
                {"Type": "bind", "Source": "/srv/conf", "Destination": "/config", "RW": false}
            ],
            "NetworkSettings": {"Networks": {"front": {}, "back": {}}},
            "State": {"Status": "running", "Health": {"Status": "healthy"}},
            "RestartCount": 2
        }));
        let image = ImageInspect {
            config: ImageConfig {
                env: Some(vec!["LANG=C.UTF-8".into()]),
                labels: Some(BTreeMap::from([(
                    "org.opencontainers.image.title".to_string(),
                    "web".to_string(),
                )])),
                ..ImageConfig::default()
            },
        };
        let sizes = BTreeMap::from([("data".to_string(), 3 << 30)]);
        let c = container("unix:///run/docker.sock", i, &image, &sizes, false);
        assert_eq!(c.name, "web");
        assert_eq!(
            c.env,
            [
                ("DB_PASSWORD".to_string(), "hunter2".to_string()),
                ("MODE".to_string(), "prod".to_string())
            ],
            "the image's and the engine's own variables are left out"
        );
        assert_eq!(c.cmd, ["/bin/busybox", "httpd", "-f", "-p", "80"]);
        assert_eq!(c.cpu, Some(Milli(500)));
        assert_eq!(c.memory.map(|m| m.memory()), Some("256Mi".to_string()));
        assert_eq!(c.labels.len(), 1, "image labels are the image's");
        assert_eq!(
            c.ports,
            [
                Port {
                    container: 80,
                    protocol: "TCP".into(),
                    published: Some(8080)
                },
                Port {
                    container: 9100,
                    protocol: "TCP".into(),
                    published: None
                }
            ]
        );
        let h = c.health.as_ref().unwrap();
        assert_eq!(
            h.test,
            HealthTest::Shell("wget -q -O- http://localhost/ || exit 1".into())
        );
        assert_eq!(
            (h.interval_seconds, h.timeout_seconds, h.retries),
            (10, 30, 3)
        );
        assert_eq!(c.gpu, Some(Gpu::Amd));
        assert!(c.stateful(), "a writable volume holds state");
        assert_eq!(c.mounts[0].used_bytes, Some(3 << 30));
        assert!(c.mounts[1].read_only);
        assert_eq!(c.networks, ["back", "front"]);
        assert_eq!(c.restart, "unless-stopped");
        let o = c.observed.unwrap();
        assert_eq!((o.status.as_str(), o.restart_count), ("running", 2));
        assert_eq!(o.health.as_deref(), Some("healthy"));
    }

    #[test]
    fn a_cpu_quota_counts_when_nano_cpus_is_unset() {
        let i = inspect(serde_json::json!({
            "Name": "/q", "Config": {"Image": "x"},
            "HostConfig": {"CpuQuota": 150000, "CpuPeriod": 100000}
        }));
        let c = container(
            "tcp://h:2375",
            i,
            &ImageInspect::default(),
            &BTreeMap::new(),
            false,
        );
        assert_eq!(c.cpu, Some(Milli(1500)));
        assert_eq!(c.memory, None);
    }

    #[test]
    fn filters_are_key_value() {
        let f = filters(&["label=a=b".into(), "name=web".into()]).unwrap();
        assert_eq!(f["label"], ["a=b"]);
        assert!(filters(&["nonsense".into()]).is_err());
    }
}
