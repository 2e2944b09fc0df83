//! What the sources say, before anything is built: one [`Container`] per running container
//! (Docker Engine API) or declared service (a compose file), and the networks they join. Both
//! readers fill the same model, so the builder has one input.

use std::collections::BTreeMap;

use crate::quantity::Milli;

/// Where a container's description came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A container of a Docker Engine API (or Podman's compatible one).
    Docker {
        /// The endpoint it was read from.
        endpoint: String,
    },
    /// A service of a compose file that is not running.
    Compose {
        /// The file.
        file: String,
    },
}

/// A port the container serves.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port {
    /// Port inside the container.
    pub container: i32,
    /// `TCP` or `UDP`.
    pub protocol: String,
    /// The host port it was published on, if it was.
    pub published: Option<i32>,
}

/// How Docker checks a container's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The command: exec form, or one shell line (`CMD-SHELL`).
    pub test: HealthTest,
    /// Seconds between checks (Docker's default 30).
    pub interval_seconds: i32,
    /// Seconds a check may take (default 30).
    pub timeout_seconds: i32,
    /// Failures in a row before unhealthy (default 3).
    pub retries: i32,
    /// Seconds after start during which failures do not count (default 0).
    pub start_period_seconds: i32,
}

/// The command of a health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthTest {
    /// `["CMD", "prog", "arg"]`.
    Exec(Vec<String>),
    /// `["CMD-SHELL", "prog arg || exit 1"]`.
    Shell(String),
}

/// What a mount is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// A named volume.
    Volume(String),
    /// A host path.
    Bind(String),
    /// A tmpfs (memory).
    Tmpfs,
}

/// A volume, bind mount or tmpfs of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// What is mounted.
    pub kind: MountKind,
    /// Where, inside the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
    /// Bytes used at import, when known.
    pub used_bytes: Option<u64>,
    /// Whether the source is a single file (a bind mount of a file), when known.
    pub is_file: bool,
}

impl Mount {
    /// Whether the mount holds state the container writes: a writable volume or directory.
    pub fn holds_state(&self) -> bool {
        !self.read_only && !self.is_file && !matches!(self.kind, MountKind::Tmpfs)
    }
}

/// A device passed into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Path on the host.
    pub host: String,
    /// Path in the container.
    pub container: String,
}

/// The kind of GPU a container was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gpu {
    /// `/dev/kfd` or `/dev/dri` (ROCm, VA-API).
    Amd,
    /// `/dev/nvidia*` or a device request for GPUs.
    Nvidia,
}

/// How a container is networked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkMode {
    /// On one or more bridge networks (the default).
    Bridge,
    /// The host's network.
    Host,
    /// No network.
    None,
    /// Sharing another container's network (`container:<name>`).
    Container(String),
}

/// What a running container looked like at import (Docker only), for the state registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The container's id.
    pub id: String,
    /// `running`, `exited`, `created`, …
    pub status: String,
    /// `healthy`, `unhealthy`, `starting`, when it has a health check.
    pub health: Option<String>,
    /// Restarts so far.
    pub restart_count: i64,
    /// `HostConfig.NanoCpus` (0 when unset).
    pub nano_cpus: i64,
    /// `HostConfig.Memory` in bytes (0 when unset).
    pub memory: i64,
}

/// One container (or compose service), as its source describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    /// Its name (Docker's, or the service's / `container_name`).
    pub name: String,
    /// Where it was read.
    pub origin: Origin,
    /// The image reference.
    pub image: String,
    /// The executable and its first arguments (Docker's entrypoint); empty for the image's.
    pub entrypoint: Vec<String>,
    /// The arguments (Docker's cmd).
    pub cmd: Vec<String>,
    /// `cmd` replaces only the image's arguments, keeping its entrypoint (a compose
    /// `command:` without `entrypoint:`); otherwise `cmd` is the whole command line when
    /// `entrypoint` is empty.
    pub cmd_is_args: bool,
    /// Working directory, when set.
    pub working_dir: Option<String>,
    /// `uid[:gid]` or a user name, when set.
    pub user: Option<String>,
    /// Environment (the image's own defaults left out), in order.
    pub env: Vec<(String, String)>,
    /// Environment variables whose values the source does not hold (compose takes them from
    /// the shell or an env file): they come from the Secret.
    pub env_unknown: Vec<String>,
    /// Served ports.
    pub ports: Vec<Port>,
    /// The health check, if any.
    pub health: Option<Health>,
    /// Docker's restart policy: `no`, `always`, `unless-stopped`, `on-failure`.
    pub restart: String,
    /// Labels (the image's own left out).
    pub labels: BTreeMap<String, String>,
    /// CPU limit, when set.
    pub cpu: Option<Milli>,
    /// Memory limit, when set (in thousandths of a byte, like every [`Milli`]).
    pub memory: Option<Milli>,
    /// Volumes, bind mounts and tmpfs mounts.
    pub mounts: Vec<Mount>,
    /// Devices passed in (GPU devices included).
    pub devices: Vec<Device>,
    /// A GPU, from its devices or device requests.
    pub gpu: Option<Gpu>,
    /// Networks it joins (empty: the engine's default network).
    pub networks: Vec<String>,
    /// How it is networked.
    pub network_mode: NetworkMode,
    /// Its state at import (Docker only).
    pub observed: Option<Observed>,
    /// What its source could not carry over, for the README.
    pub notes: Vec<String>,
}

impl Container {
    /// A container with nothing but a name and an image.
    pub fn new(name: &str, image: &str, origin: Origin) -> Self {
        Self {
            name: name.to_string(),
            origin,
            image: image.to_string(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            cmd_is_args: false,
            working_dir: None,
            user: None,
            env: Vec::new(),
            env_unknown: Vec::new(),
            ports: Vec::new(),
            health: None,
            restart: "no".into(),
            labels: BTreeMap::new(),
            cpu: None,
            memory: None,
            mounts: Vec::new(),
            devices: Vec::new(),
            gpu: None,
            networks: Vec::new(),
            network_mode: NetworkMode::Bridge,
            observed: None,
            notes: Vec::new(),
        }
    }

    /// The health check's command as an argument list (`sh -c LINE` for a shell line).
    pub fn health_argv(&self) -> Vec<String> {
        match self.health.as_ref().map(|h| &h.test) {
            Some(HealthTest::Exec(argv)) => argv.clone(),
            Some(HealthTest::Shell(line)) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
            None => Vec::new(),
        }
    }

    /// Whether any mount holds state (the workload becomes a StatefulSet).
    pub fn stateful(&self) -> bool {
        self.mounts.iter().any(Mount::holds_state)
    }
}

/// A network, as the engine describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Network {
    /// The name a person knows it by (compose's short name when compose made it).
    pub short_name: String,
    /// `internal: true`: no way out of the network.
    pub internal: bool,
    /// The engine's default network (`bridge`, `podman`).
    pub default: bool,
}

/// GPU kind of a device path inside the container.
pub fn gpu_of_device(path: &str) -> Option<Gpu> {
    if path == "/dev/kfd" || path.starts_with("/dev/dri") {
        Some(Gpu::Amd)
    } else if path.starts_with("/dev/nvidia") {
        Some(Gpu::Nvidia)
    } else {
        None
    }
}

/// Networks that engines create by themselves.
pub fn is_default_network(name: &str) -> bool {
    matches!(name, "bridge" | "podman" | "default")
}
