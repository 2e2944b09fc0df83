//! The AgentRun controller: one run of an Agent as a Job ([`job`]). A run waits as `Queued`
//! while the Agent already has `maxConcurrentRuns` Jobs running (oldest run first), runs as
//! `Running`, and when the Job ends its result contract is read from the container's
//! termination message ([`contract`]): phase Done/Partial/Blocked/Failed, or `NoContract`
//! (with a Warning event) when the run ended without a valid one. A run stopped at
//! `maxRunSeconds` is `Failed` with reason `DeadlineExceeded`.

pub mod contract;
pub mod job;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use homeplane_crds::agent::{Agent, AgentRun, AgentRunPhase, AgentRunStatus, ContractStatus};
use homeplane_crds::nodeclass::NodeClass;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument};

use super::agent::rbac::{AGENT_LABEL, label_value};
use super::{Context, Error, apply_status, backoff, error_policy, now};
use crate::conditions::{self, DEGRADED, Desired, READY};

const CONTROLLER: &str = "agentrun";
/// How often a queued run looks for a free slot.
const QUEUE_POLL: Duration = Duration::from_secs(3);

/// Runs the controller until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=homeplane");
    Controller::new(ctx.watched::<AgentRun>(), watcher::Config::default())
        .owns(ctx.watched::<Job>(), owned)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(
            reconcile,
            |run, error, ctx| error_policy(CONTROLLER, run, error, ctx),
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn runs(run: &AgentRun, ctx: &Context) -> Api<AgentRun> {
    Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default())
}

fn is_final(phase: AgentRunPhase) -> bool {
    !matches!(phase, AgentRunPhase::Queued | AgentRunPhase::Running)
}

/// The outcome of one pass, before it becomes status.
struct Outcome {
    ready: Desired,
    degraded: Option<Desired>,
    action: Action,
    retry: bool,
}

impl Outcome {
    fn waiting(reason: &'static str, message: String, action: Action) -> Self {
        Self {
            ready: Desired::no(READY, reason, message),
            degraded: None,
            action,
            retry: false,
        }
    }

    fn failed(reason: &'static str, message: String) -> Self {
        Self {
            ready: Desired::no(READY, reason, message.clone()),
            degraded: Some(Desired::yes(DEGRADED, reason, message)),
            action: Action::await_change(),
            retry: true,
        }
    }
}

#[instrument(skip_all, fields(agentrun = %run.name_any(), namespace = run.namespace().unwrap_or_default()))]
async fn reconcile(run: Arc<AgentRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let Some(run) = runs(&run, &ctx)
        .get_opt(&run.name_any())
        .await
        .map_err(Error::kube("read the AgentRun"))?
    else {
        return Ok(Action::await_change());
    };
    let mut status = run.status.clone().unwrap_or_default();
    if run.status.is_some() && is_final(status.phase) {
        return Ok(Action::await_change());
    }
    let old = status.clone();
    let generation = run.metadata.generation;
    let outcome = converge(&run, &ctx, &mut status).await?;
    status.observed_generation = generation;
    conditions::set(&mut status.conditions, outcome.ready, generation, now());
    match outcome.degraded {
        Some(d) => conditions::set(&mut status.conditions, d, generation, now()),
        None => conditions::remove(&mut status.conditions, DEGRADED),
    }
    if status != old || run.status.is_none() {
        apply_status(&runs(&run, &ctx), &run, &status).await?;
    }
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    let key = super::key(&run);
    if outcome.retry {
        ctx.metrics.failed(CONTROLLER, "agentrun");
        return Ok(Action::requeue(backoff(ctx.failed(&key))));
    }
    ctx.succeeded(&key);
    Ok(outcome.action)
}

async fn converge(
    run: &AgentRun,
    ctx: &Context,
    status: &mut AgentRunStatus,
) -> Result<Outcome, Error> {
    let ns = run.namespace().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let name = job::job_name(run);
    let existing = jobs
        .get_opt(&name)
        .await
        .map_err(Error::kube("read the run's Job"))?;
    let job = match existing {
        Some(job) => job,
        None => match start(run, ctx, status).await? {
            Ok(job) => job,
            Err(outcome) => return Ok(outcome),
        },
    };
    status.job_name = Some(name.clone());
    let job_status = job.status.clone().unwrap_or_default();
    if status.started_at.is_none() {
        status.started_at = Some(job_status.start_time.clone().unwrap_or(Time(now())));
    }
    let ended = job_status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
    let Some(ended) = ended else {
        status.phase = AgentRunPhase::Running;
        return Ok(Outcome::waiting(
            "Running",
            format!("Job {name} is running"),
            Action::await_change(),
        ));
    };

    // The run is over: when, how long, and with what contract.
    let completed = job_status
        .completion_time
        .clone()
        .or(ended.last_transition_time.clone())
        .unwrap_or(Time(now()));
    let seconds = status
        .started_at
        .as_ref()
        .map(|s| completed.0.as_second() - s.0.as_second())
        .unwrap_or(0);
    status.completed_at = Some(completed);
    status.duration = Some(contract::duration(seconds));
    let max = run_seconds(run, ctx).await?;
    if ended.type_ == "Failed" && ended.reason.as_deref() == Some("DeadlineExceeded") {
        status.phase = AgentRunPhase::Failed;
        let message = format!(
            "the run did not finish within maxRunSeconds ({}); the Job was stopped and no result contract was returned",
            max.map(|m| format!("{m}s"))
                .unwrap_or_else(|| "its budget".into())
        );
        ctx.event(run, EventType::Warning, "DeadlineExceeded", message.clone())
            .await;
        return Ok(Outcome {
            ready: Desired::no(READY, "DeadlineExceeded", message.clone()),
            degraded: Some(Desired::yes(DEGRADED, "DeadlineExceeded", message)),
            action: Action::await_change(),
            retry: false,
        });
    }
    let message = super::job_container_end(ctx, &ns, &name, job::CONTAINER)
        .await?
        .and_then(|t| t.message)
        .filter(|m| !m.trim().is_empty());
    let parsed = match message {
        Some(text) => contract::parse(&text),
        None => Err("the agent container returned no termination message".to_string()),
    };
    match parsed {
        Ok(result) => {
            status.phase = contract::phase(result.status);
            status.files_changed_count =
                i32::try_from(result.files_changed.len()).unwrap_or(i32::MAX);
            status.tests_run_count = i32::try_from(result.tests_run.len()).unwrap_or(i32::MAX);
            let word = match result.status {
                ContractStatus::Done => "DONE",
                ContractStatus::Partial => "PARTIAL",
                ContractStatus::Blocked => "BLOCKED",
                ContractStatus::Failed => "FAILED",
            };
            let message = format!(
                "the run ended {word} after {}: {}",
                status.duration.clone().unwrap_or_default(),
                if result.summary.is_empty() {
                    "no summary"
                } else {
                    result.summary.as_str()
                }
            );
            info!(phase = ?status.phase, "run finished with a contract");
            status.result = Some(result);
            Ok(Outcome {
                ready: Desired::yes(READY, "ContractReturned", message),
                degraded: None,
                action: Action::await_change(),
                retry: false,
            })
        }
        Err(why) => {
            status.phase = AgentRunPhase::NoContract;
            let job_outcome = if ended.type_ == "Complete" {
                "succeeded"
            } else {
                "failed"
            };
            let message = format!(
                "the run ended ({job_outcome}) without a valid result contract: {why}; an agent must write the contract as JSON to {}",
                job::RESULT_PATH
            );
            ctx.event(run, EventType::Warning, "NoContract", message.clone())
                .await;
            Ok(Outcome {
                ready: Desired::no(READY, "NoContract", message.clone()),
                degraded: Some(Desired::yes(DEGRADED, "NoContract", message)),
                action: Action::await_change(),
                retry: false,
            })
        }
    }
}

/// The Agent's `maxRunSeconds`, if the Agent still exists.
async fn run_seconds(run: &AgentRun, ctx: &Context) -> Result<Option<i64>, Error> {
    Ok(
        Api::<Agent>::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default())
            .get_opt(&run.spec.agent)
            .await
            .map_err(Error::kube("read the Agent"))?
            .map(|a| a.spec.budget.max_run_seconds),
    )
}

/// Starts the run's Job when the Agent has a free slot; the error is the outcome of a run that
/// must wait (or cannot start).
async fn start(
    run: &AgentRun,
    ctx: &Context,
    status: &mut AgentRunStatus,
) -> Result<Result<Job, Outcome>, Error> {
    let ns = run.namespace().unwrap_or_default();
    status.phase = AgentRunPhase::Queued;
    let Some(agent) = Api::<Agent>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&run.spec.agent)
        .await
        .map_err(Error::kube("read the Agent"))?
    else {
        return Ok(Err(Outcome::failed(
            "AgentMissing",
            format!(
                "Agent {ns}/{} does not exist; create it or fix spec.agent",
                run.spec.agent
            ),
        )));
    };
    if agent
        .status
        .as_ref()
        .and_then(|s| s.service_account_name.as_ref())
        .is_none()
    {
        return Ok(Err(Outcome::waiting(
            "Queued",
            format!("waiting for Agent {}'s ServiceAccount", agent.name_any()),
            Action::requeue(QUEUE_POLL),
        )));
    }
    let class = match &agent.spec.placement {
        Some(p) => match Api::<NodeClass>::all(ctx.client.clone())
            .get_opt(&p.class)
            .await
            .map_err(Error::kube("read the NodeClass"))?
        {
            Some(c) => Some(c),
            None => {
                return Ok(Err(Outcome::failed(
                    "NodeClassMissing",
                    format!(
                        "Agent {}'s placement names NodeClass {}, which does not exist",
                        agent.name_any(),
                        p.class
                    ),
                )));
            }
        },
        None => None,
    };
    let class_name = class.as_ref().map(|c| c.name_any()).unwrap_or_default();
    let job = match job::build(
        run,
        &agent,
        class.as_ref().map(|c| job::class(&class_name, &c.spec)),
    ) {
        Ok(job) => job,
        Err(message) => {
            return Ok(Err(Outcome::failed(
                "InvalidPlacement",
                format!("{message}; fix the Agent's placement or budget"),
            )));
        }
    };

    // One start at a time, so that two runs never both take the last slot.
    let _slot = ctx.run_starts.lock().await;
    let max = agent.spec.budget.max_concurrent_runs.max(1);
    let agent_jobs = Api::<Job>::namespaced(ctx.client.clone(), &ns)
        .list(
            &ListParams::default()
                .labels(&format!("{AGENT_LABEL}={}", label_value(&agent.name_any()))),
        )
        .await
        .map_err(Error::kube("list the Agent's Jobs"))?;
    let running = agent_jobs
        .iter()
        .filter(|j| {
            !j.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True"
                    })
                })
        })
        .count();
    let started: std::collections::BTreeSet<String> = agent_jobs
        .iter()
        .filter_map(|j| j.labels().get(job::RUN_LABEL).cloned())
        .collect();
    // Oldest queued run first.
    let mut queued: Vec<AgentRun> = runs(run, ctx)
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("list the AgentRuns"))?
        .items
        .into_iter()
        .filter(|r| r.spec.agent == run.spec.agent)
        .filter(|r| !started.contains(&label_value(&r.name_any())))
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .filter(|r| r.status.as_ref().is_none_or(|s| !is_final(s.phase)))
        .collect();
    queued.sort_by(|a, b| {
        (a.creation_timestamp(), a.name_any()).cmp(&(b.creation_timestamp(), b.name_any()))
    });
    let free = usize::try_from(max).unwrap_or(1).saturating_sub(running);
    let position = queued.iter().position(|r| r.name_any() == run.name_any());
    if free == 0 || position.is_none_or(|p| p >= free) {
        let ahead = position.unwrap_or(0);
        return Ok(Err(Outcome::waiting(
            "Queued",
            format!(
                "waiting for a free slot: {running} of {max} run(s) of Agent {} are running, {ahead} queued ahead",
                agent.name_any()
            ),
            Action::requeue(QUEUE_POLL),
        )));
    }
    let created = match Api::<Job>::namespaced(ctx.client.clone(), &ns)
        .create(&PostParams::default(), &job)
        .await
    {
        Ok(job) => job,
        Err(kube::Error::Api(e)) if e.code == 409 => {
            Api::<Job>::namespaced(ctx.client.clone(), &ns)
                .get(&job::job_name(run))
                .await
                .map_err(Error::kube("read the run's Job"))?
        }
        Err(kube::Error::Api(e)) if e.code == 422 || e.code == 403 => {
            return Ok(Err(Outcome::failed(
                "JobRejected",
                format!("the API server refused the run's Job: {}", e.message),
            )));
        }
        Err(source) => {
            return Err(Error::Kube {
                action: "create the run's Job",
                source,
            });
        }
    };
    info!(job = %created.name_any(), "started the run");
    ctx.event(
        run,
        EventType::Normal,
        "Started",
        format!(
            "started Job {} under ServiceAccount agent-{}",
            created.name_any(),
            agent.name_any()
        ),
    )
    .await;
    status.started_at = Some(Time(now()));
    Ok(Ok(created))
}
