//! What a pod asks of its node: CPU, memory and GPUs, requests and limits, counted the way the
//! scheduler counts them. Shared by the capacity check before workloads are created, the
//! NodeClass plan and `homeplane plan`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity::Milli;

/// What one pod asks for, in exact units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Asks {
    /// CPU requested (the limit where no request is given).
    pub cpu_request: Milli,
    /// CPU limit; `None` when a container has none.
    pub cpu_limit: Option<Milli>,
    /// Memory requested (the limit where no request is given).
    pub memory_request: Milli,
    /// Memory limit; `None` when a container has none.
    pub memory_limit: Option<Milli>,
    /// GPUs of the class's GPU resource.
    pub gpu: Milli,
}

/// The quantity `name` of a resource map (requests, limits, allocatable), if it parses.
pub fn quantity(map: Option<&BTreeMap<String, Quantity>>, name: &str) -> Option<Milli> {
    map.and_then(|m| m.get(name))
        .and_then(|q| Milli::parse(&q.0).ok())
}

/// Sums what the containers of a pod ask for; an init container counts where it asks for more
/// than all regular containers together (as the scheduler counts it).
pub fn asks(pod: &Pod, gpu_resource: Option<&str>) -> Asks {
    let Some(spec) = pod.spec.as_ref() else {
        return Asks::default();
    };
    let one = |c: &Container| {
        let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
        let cpu_limit = quantity(limits, "cpu");
        let memory_limit = quantity(limits, "memory");
        // A container with a limit and no request gets the limit as its request.
        let gpu = gpu_resource
            .and_then(|g| quantity(requests, g).or_else(|| quantity(limits, g)))
            .unwrap_or_default();
        Asks {
            cpu_request: quantity(requests, "cpu").or(cpu_limit).unwrap_or_default(),
            cpu_limit,
            memory_request: quantity(requests, "memory")
                .or(memory_limit)
                .unwrap_or_default(),
            memory_limit,
            gpu,
        }
    };
    let add_limit = |a: Option<Milli>, b: Option<Milli>| match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        _ => None,
    };
    let mut total = Asks {
        cpu_limit: Some(Milli::ZERO),
        memory_limit: Some(Milli::ZERO),
        ..Asks::default()
    };
    for c in &spec.containers {
        let a = one(c);
        total.cpu_request += a.cpu_request;
        total.memory_request += a.memory_request;
        total.gpu += a.gpu;
        total.cpu_limit = add_limit(total.cpu_limit, a.cpu_limit);
        total.memory_limit = add_limit(total.memory_limit, a.memory_limit);
    }
    for c in spec.init_containers.iter().flatten() {
        let a = one(c);
        total.cpu_request = total.cpu_request.max(a.cpu_request);
        total.memory_request = total.memory_request.max(a.memory_request);
        total.gpu = total.gpu.max(a.gpu);
    }
    total
}

/// Whether a pod still holds what it asks for (not Succeeded or Failed).
pub fn active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded") | Some("Failed"))
}
