//! What a MemoryServer runs, as pure functions: the memory server itself, a managed Redis and
//! an embedding model workload when the spec asks for them, each wired to the others through
//! the server's environment. Also used by `homeplane plan`.

use homeplane_crds::common::Placement;
use homeplane_crds::memory::MemoryServer;
use k8s_openapi::api::core::v1::EnvVar;
use kube::ResourceExt;

use crate::workload::{NamedPort, Workload, env_from_secret};

/// Port the memory server serves on.
pub const SERVER_PORT: i32 = 8080;
/// Port of the managed Redis.
pub const REDIS_PORT: i32 = 6379;

/// Name of the managed Redis workload.
pub fn cache_name(ms: &MemoryServer) -> String {
    format!("{}-cache", ms.name_any())
}

/// Name of the embedding model workload.
pub fn embedding_name(ms: &MemoryServer) -> String {
    format!("{}-embedding", ms.name_any())
}

/// The Redis URL the server uses (never with credentials in it: an external URL's password
/// stays in the spec, and goes to the pod only).
pub fn redis_url(ms: &MemoryServer) -> Option<String> {
    if let Some(url) = &ms.spec.cache.external {
        return Some(url.clone());
    }
    ms.spec.cache.managed.as_ref().map(|_| {
        format!(
            "redis://{}.{}.svc:{REDIS_PORT}",
            cache_name(ms),
            ms.namespace().unwrap_or_default()
        )
    })
}

/// The embedding URL and model the server uses.
pub fn embedding(ms: &MemoryServer) -> Option<(String, String)> {
    if let Some(e) = &ms.spec.embedding.endpoint {
        return Some((e.url.clone(), e.model.clone()));
    }
    ms.spec.embedding.model.as_ref().map(|m| {
        (
            format!(
                "http://{}.{}.svc:{}",
                embedding_name(ms),
                ms.namespace().unwrap_or_default(),
                m.port
            ),
            m.model.clone(),
        )
    })
}

fn value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// The server's environment. `role_secret` is the Secret the Database controller keeps for
/// the memory role; its `uri` key becomes `DATABASE_URL` without homeplane ever reading it.
pub fn server_env(ms: &MemoryServer, role_secret: &str) -> Vec<EnvVar> {
    let mut env = vec![
        env_from_secret("DATABASE_URL", role_secret, "uri"),
        value("MEMORY_SCHEMA", &ms.spec.database.schema),
    ];
    if let Some(url) = redis_url(ms) {
        env.push(value("REDIS_URL", url));
    }
    if let Some((url, model)) = embedding(ms) {
        env.push(value("EMBEDDING_URL", url));
        env.push(value("EMBEDDING_MODEL", model));
    }
    env.push(value("EPISODIC_TTL", &ms.spec.layers.episodic_ttl));
    env.push(value(
        "PERMANENT_LAYER",
        if ms.spec.layers.permanent {
            "true"
        } else {
            "false"
        },
    ));
    env.push(value("PORT", SERVER_PORT.to_string()));
    env
}

fn workload(
    name: String,
    app: &str,
    component: &str,
    image: &str,
    port: (&str, i32),
    placement: &Placement,
) -> Workload {
    Workload {
        name,
        app: app.into(),
        component: Some(component.into()),
        image: image.into(),
        args: Vec::new(),
        env: Vec::new(),
        ports: vec![NamedPort {
            name: port.0.into(),
            port: port.1,
        }],
        readiness_path: None,
        readiness_command: Vec::new(),
        storage: None,
        replicas: 1,
        placement: placement.clone(),
    }
}

/// Everything the MemoryServer runs. `role_secret` is `None` offline (the plan needs only the
/// sizes), which leaves `DATABASE_URL` out.
pub fn workloads(ms: &MemoryServer, role_secret: Option<&str>) -> Vec<Workload> {
    let mut server = workload(
        ms.name_any(),
        "memory-server",
        "server",
        &ms.spec.image,
        ("http", SERVER_PORT),
        &ms.spec.placement,
    );
    server.env = server_env(ms, role_secret.unwrap_or_default());
    if role_secret.is_none() {
        server.env.retain(|e| e.name != "DATABASE_URL");
    }
    let mut all = vec![server];
    if let Some(m) = &ms.spec.cache.managed {
        let mut cache = workload(
            cache_name(ms),
            "redis",
            "cache",
            &m.image,
            ("redis", REDIS_PORT),
            &m.placement,
        );
        // Keep Redis inside its memory limit instead of being killed at it.
        cache.args = vec![
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
        ];
        all.push(cache);
    }
    if let Some(m) = &ms.spec.embedding.model {
        let mut model = workload(
            embedding_name(ms),
            "embedding",
            "embedding",
            &m.image,
            ("http", m.port),
            &m.placement,
        );
        model.env = vec![value("MODEL", &m.model)];
        all.push(model);
    }
    all
}

/// The server's in-cluster endpoint.
pub fn endpoint(ms: &MemoryServer) -> String {
    format!(
        "http://{}.{}.svc:{SERVER_PORT}",
        ms.name_any(),
        ms.namespace().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(yaml: &str) -> MemoryServer {
        serde_yaml::from_str(yaml).unwrap()
    }

    const MANAGED: &str = r#"
apiVersion: homeplane.dev/v1alpha1
kind: MemoryServer
metadata: {name: memory, namespace: ai}
spec:
  image: ghcr.io/example/memory:1
  placement: {class: pi, cpu: 500m, memory: 512Mi}
  database: {name: homelab}
  cache:
    managed: {placement: {class: pi, cpu: 100m, memory: 128Mi}}
  embedding:
    model: {image: ghcr.io/example/embed:1, model: nomic-embed-text, placement: {class: gpu, gpu: 1}}
  layers: {episodicTtl: 72h, permanent: false}
"#;

    #[test]
    fn managed_dependencies_become_workloads_wired_into_the_server() {
        let ms = memory(MANAGED);
        let ws = workloads(&ms, Some("homelab-memory"));
        let names: Vec<&str> = ws.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["memory", "memory-cache", "memory-embedding"]);
        assert_eq!(ws[2].placement.class, "gpu");
        let env: Vec<(String, String)> = ws[0]
            .env
            .iter()
            .map(|e| {
                let v = e.value.clone().unwrap_or_else(|| {
                    let r = e
                        .value_from
                        .as_ref()
                        .unwrap()
                        .secret_key_ref
                        .as_ref()
                        .unwrap();
                    format!("secret:{}/{}", r.name, r.key)
                });
                (e.name.clone(), v)
            })
            .collect();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("DATABASE_URL"), Some("secret:homelab-memory/uri"));
        assert_eq!(get("REDIS_URL"), Some("redis://memory-cache.ai.svc:6379"));
        assert_eq!(
            get("EMBEDDING_URL"),
            Some("http://memory-embedding.ai.svc:8080")
        );
        assert_eq!(get("EMBEDDING_MODEL"), Some("nomic-embed-text"));
        assert_eq!(get("EPISODIC_TTL"), Some("72h"));
        assert_eq!(get("PERMANENT_LAYER"), Some("false"));
        assert_eq!(get("MEMORY_SCHEMA"), Some("memory"));
    }

    #[test]
    fn external_dependencies_are_only_wired() {
        let ms = memory(
            r#"
apiVersion: homeplane.dev/v1alpha1
kind: MemoryServer
metadata: {name: memory, namespace: ai}
spec:
  image: ghcr.io/example/memory:1
  placement: {class: pi}
  database: {name: homelab}
  cache: {external: "redis://cache.lan:6379"}
  embedding: {endpoint: {url: "http://gpu.lan:11434", model: nomic-embed-text}}
"#,
        );
        let ws = workloads(&ms, None);
        assert_eq!(ws.len(), 1);
        assert!(ws[0].env.iter().all(|e| e.name != "DATABASE_URL"));
        assert_eq!(redis_url(&ms).as_deref(), Some("redis://cache.lan:6379"));
        assert_eq!(endpoint(&ms), "http://memory.ai.svc:8080");
    }
}
