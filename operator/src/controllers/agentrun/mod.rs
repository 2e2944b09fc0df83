//! The AgentRun controller: one run of an Agent as a Job ([`job`]). A run waits as `Queued`
//! while the Agent already has `maxConcurrentRuns` Jobs running (oldest run first), runs as
//! `Running`, and when the Job ends its result contract is read from the container's
//! termination message ([`contract`]): phase Done/Partial/Blocked/Failed, or `NoContract`
//! (with a Warning event) when the run ended without a valid one. A run stopped at
//! `maxRunSeconds` is `Failed` with reason `DeadlineExceeded`. Pipeline: dereference (the run's
//! Job, or the Agent and its slots) -> build (the Job, pure) -> apply (create it when a slot is
//! free) -> status (phase, contract).

pub mod contract;
pub mod job;

use std::sync::Arc;
use std::time::Duration;

use homeplane_crds::agent::{Agent, AgentRun, AgentRunPhase, AgentRunStatus, ContractStatus};
use homeplane_crds::nodeclass::NodeClass;
use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, PostParams};
use kube::runtime::events::EventType;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::agent::rbac::{AGENT_LABEL, label_value};
use super::{Context, Error, now};
use crate::reconcile::{self, Outcome, Reconciler, watch};

/// How often a queued run looks for a free slot.
const QUEUE_POLL: Duration = Duration::from_secs(3);
/// How often a running run's Job is looked at when nothing wakes the controller.
const JOB_POLL: Duration = Duration::from_secs(60);

/// The AgentRun controller.
pub struct AgentRuns;

/// Runs the controller until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=homeplane");
    let controller = Controller::new(ctx.watched::<AgentRun>(), watch::config())
        .owns(ctx.watched::<Job>(), owned);
    reconcile::run(AgentRuns, controller, ctx, shutdown).await;
}

fn runs(run: &AgentRun, ctx: &Context) -> Api<AgentRun> {
    Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default())
}

fn is_final(phase: AgentRunPhase) -> bool {
    !matches!(phase, AgentRunPhase::Queued | AgentRunPhase::Running)
}

impl Reconciler for AgentRuns {
    type Object = AgentRun;
    const NAME: &'static str = "agentrun";
    const RESYNC: Duration = JOB_POLL;

    fn settled(&self, run: &AgentRun) -> bool {
        run.status.as_ref().is_some_and(|s| is_final(s.phase))
    }

    async fn reconcile(
        &self,
        run: &AgentRun,
        status: &mut AgentRunStatus,
        ctx: &Context,
    ) -> Result<Outcome, Error> {
        let ns = run.namespace().unwrap_or_default();
        let name = job::job_name(run);
        let existing = Api::<Job>::namespaced(ctx.client.clone(), &ns)
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
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
        let Some(ended) = ended else {
            status.phase = AgentRunPhase::Running;
            let message = format!("Job {name} is running");
            return Ok(Outcome::progressing("Running", message).after(JOB_POLL));
        };
        finish(run, ctx, status, &job, &ended).await
    }
}

/// The run is over: when, how long, and with what contract.
async fn finish(
    run: &AgentRun,
    ctx: &Context,
    status: &mut AgentRunStatus,
    job: &Job,
    ended: &JobCondition,
) -> Result<Outcome, Error> {
    let ns = run.namespace().unwrap_or_default();
    let name = job.name_any();
    let completed = job
        .status
        .as_ref()
        .and_then(|s| s.completion_time.clone())
        .or(ended.last_transition_time.clone())
        .unwrap_or(Time(now()));
    let seconds = status
        .started_at
        .as_ref()
        .map(|s| completed.0.as_second() - s.0.as_second())
        .unwrap_or(0);
    status.completed_at = Some(completed);
    status.duration = Some(contract::duration(seconds));
    if ended.type_ == "Failed" && ended.reason.as_deref() == Some("DeadlineExceeded") {
        status.phase = AgentRunPhase::Failed;
        let max = run_seconds(run, ctx).await?;
        let message = format!(
            "the run did not finish within maxRunSeconds ({}); the Job was stopped and no result contract was returned",
            max.map(|m| format!("{m}s"))
                .unwrap_or_else(|| "its budget".into())
        );
        return Ok(Outcome::blocked("DeadlineExceeded", message));
    }
    let message = super::job_container_end(ctx, &ns, &name, job::CONTAINER)
        .await?
        .and_then(|t| t.message)
        .filter(|m| !m.trim().is_empty());
    let parsed = match message {
        Some(text) => contract::parse(&text),
        None => Err("the agent container returned no termination message".to_string()),
    };
    let result = match parsed {
        Ok(result) => result,
        Err(why) => {
            status.phase = AgentRunPhase::NoContract;
            let job_outcome = match ended.type_.as_str() {
                "Complete" => "succeeded",
                _ => "failed",
            };
            let message = format!(
                "the run ended ({job_outcome}) without a valid result contract: {why}; an agent must write the contract as JSON to {}",
                job::RESULT_PATH
            );
            return Ok(Outcome::blocked("NoContract", message));
        }
    };
    status.phase = contract::phase(result.status);
    status.files_changed_count = i32::try_from(result.files_changed.len()).unwrap_or(i32::MAX);
    status.tests_run_count = i32::try_from(result.tests_run.len()).unwrap_or(i32::MAX);
    let word = match result.status {
        ContractStatus::Done => "DONE",
        ContractStatus::Partial => "PARTIAL",
        ContractStatus::Blocked => "BLOCKED",
        ContractStatus::Failed => "FAILED",
    };
    let summary = match result.summary.is_empty() {
        true => "no summary",
        false => result.summary.as_str(),
    };
    let duration = status.duration.clone().unwrap_or_default();
    let message = format!("the run ended {word} after {duration}: {summary}");
    info!(phase = ?status.phase, "run finished with a contract");
    status.result = Some(result);
    Ok(Outcome::ready("ContractReturned", message))
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
    status.phase = AgentRunPhase::Queued;
    let (agent, class) = match dereference(run, ctx).await? {
        Ok(found) => found,
        Err(outcome) => return Ok(Err(outcome)),
    };
    let class_name = class.as_ref().map(|c| c.name_any()).unwrap_or_default();
    let placed = class.as_ref().map(|c| job::class(&class_name, &c.spec));
    let job = match job::build(run, &agent, placed) {
        Ok(job) => job,
        Err(message) => {
            let message = format!("{message}; fix the Agent's placement or budget");
            return Ok(Err(Outcome::blocked("InvalidPlacement", message)));
        }
    };
    // One start at a time, so that two runs never both take the last slot.
    let _slot = ctx.run_starts.lock().await;
    if let Some(waiting) = queue_position(run, &agent, ctx).await? {
        return Ok(Err(waiting));
    }
    let created = match create(run, ctx, &job).await? {
        Ok(created) => created,
        Err(outcome) => return Ok(Err(outcome)),
    };
    info!(job = %created.name_any(), "started the run");
    let note = format!(
        "started Job {} under ServiceAccount agent-{}",
        created.name_any(),
        agent.name_any()
    );
    ctx.event(run, EventType::Normal, "Started", note).await;
    status.started_at = Some(Time(now()));
    Ok(Ok(created))
}

/// The run's Agent (with its ServiceAccount ready) and the NodeClass of its placement; the
/// error is the outcome of a run that must wait for them.
async fn dereference(
    run: &AgentRun,
    ctx: &Context,
) -> Result<Result<(Agent, Option<NodeClass>), Outcome>, Error> {
    let ns = run.namespace().unwrap_or_default();
    let Some(agent) = Api::<Agent>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&run.spec.agent)
        .await
        .map_err(Error::kube("read the Agent"))?
    else {
        let message = format!(
            "Agent {ns}/{} does not exist; create it or fix spec.agent",
            run.spec.agent
        );
        return Ok(Err(Outcome::retry("AgentMissing", message)));
    };
    let account = agent
        .status
        .as_ref()
        .and_then(|s| s.service_account_name.as_ref());
    if account.is_none() {
        let message = format!("waiting for Agent {}'s ServiceAccount", agent.name_any());
        return Ok(Err(
            Outcome::progressing("Queued", message).after(QUEUE_POLL)
        ));
    }
    let Some(placement) = &agent.spec.placement else {
        return Ok(Ok((agent, None)));
    };
    let class = Api::<NodeClass>::all(ctx.client.clone())
        .get_opt(&placement.class)
        .await
        .map_err(Error::kube("read the NodeClass"))?;
    match class {
        Some(class) => Ok(Ok((agent, Some(class)))),
        None => {
            let message = format!(
                "Agent {}'s placement names NodeClass {}, which does not exist",
                agent.name_any(),
                placement.class
            );
            Ok(Err(Outcome::retry("NodeClassMissing", message)))
        }
    }
}

/// `None` when the run may take a slot now: the Agent has fewer unfinished Jobs than
/// `maxConcurrentRuns` and the run is among the oldest queued. Otherwise the outcome of waiting.
async fn queue_position(
    run: &AgentRun,
    agent: &Agent,
    ctx: &Context,
) -> Result<Option<Outcome>, Error> {
    let ns = run.namespace().unwrap_or_default();
    let max = agent.spec.budget.max_concurrent_runs.max(1);
    let selector = format!("{AGENT_LABEL}={}", label_value(&agent.name_any()));
    let agent_jobs = Api::<Job>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube("list the Agent's Jobs"))?;
    let running = agent_jobs.iter().filter(|j| !job_ended(j)).count();
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
    if free > 0 && position.is_some_and(|p| p < free) {
        return Ok(None);
    }
    let message = format!(
        "waiting for a free slot: {running} of {max} run(s) of Agent {} are running, {} queued ahead",
        agent.name_any(),
        position.unwrap_or(0)
    );
    Ok(Some(
        Outcome::progressing("Queued", message).after(QUEUE_POLL),
    ))
}

/// Whether a Job has ended (Complete or Failed).
fn job_ended(job: &Job) -> bool {
    let conditions = job.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|cs| {
        cs.iter()
            .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
    })
}

/// Creates the run's Job (or finds the one a previous pass created); the error is the outcome
/// of a Job the API server refused.
async fn create(run: &AgentRun, ctx: &Context, job: &Job) -> Result<Result<Job, Outcome>, Error> {
    let jobs = Api::<Job>::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
    match jobs.create(&PostParams::default(), job).await {
        Ok(job) => Ok(Ok(job)),
        Err(kube::Error::Api(e)) if e.code == 409 => jobs
            .get(&job::job_name(run))
            .await
            .map(Ok)
            .map_err(Error::kube("read the run's Job")),
        Err(kube::Error::Api(e)) if e.code == 422 => {
            let message = format!("the API server refused the run's Job: {}", e.message);
            Ok(Err(Outcome::blocked("JobRejected", message)))
        }
        Err(kube::Error::Api(e)) if e.code == 403 => {
            let message = format!("the API server refused the run's Job: {}", e.message);
            Ok(Err(Outcome::retry("JobRejected", message)))
        }
        Err(source) => Err(Error::Kube {
            action: "create the run's Job",
            source,
        }),
    }
}
