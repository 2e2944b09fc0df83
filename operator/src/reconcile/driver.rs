//! The pipeline every controller runs in: fetch the object as stored → (first look: mark the
//! generation `Reconciling`) → the controller's pass (dereference → validate → build → apply,
//! filling its status) → the outcome settled into kstatus conditions → the status written when
//! it changed → an event when the news is bad → the next wake-up from the retry policy.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::controller::Config;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

use super::outcome::{Cure, Outcome, State, with_causes};
use super::status::{self, Object};
use super::watch::{self, Reporter};
use crate::conditions::READY;
use crate::controllers::{Context, Error};

/// How long a progressing object waits before it is looked at again, unless it says.
pub const PROGRESS_POLL: Duration = Duration::from_secs(10);

/// Reconciliations of one controller that run at once. Unbounded (kube-rs's default), an
/// operator restarted beside 1,000 objects opened 814 connections to the API server at once
/// (one per concurrent request, about 18 KiB of buffers each) and peaked at 120 MiB of heap
/// (bench/results/memory-heap.txt); controller-runtime runs one at a time unless told.
pub const CONCURRENCY: u16 = 8;

/// One controller: its kind, its name, how often it looks again, and its pass.
pub trait Reconciler: Send + Sync + 'static {
    /// The kind it reconciles.
    type Object: Object;
    /// The controller's name in logs and metrics (`nodeclass`).
    const NAME: &'static str;
    /// How often a settled object is looked at again without a change.
    const RESYNC: Duration = Duration::from_secs(300);
    /// A finalizer that makes [`Reconciler::cleanup`] run before the object goes away.
    const FINALIZER: Option<&'static str> = None;
    /// How long the final status write of a pass keeps trying through API errors before the
    /// pass fails. Zero for controllers whose passes can simply run again; a one-shot run (a
    /// Backup) whose result exists only in this pass waits for the API server to come back.
    const STATUS_PATIENCE: Duration = Duration::ZERO;
    /// How long the controller waits for more changes of an object before reconciling it.
    const DEBOUNCE: Duration = Duration::ZERO;

    /// One pass over `obj` (as stored): reads what it needs, applies what it decides, fills
    /// `status` (the object's status, or a default one) and says where the object stands.
    /// Errors are transient failures (retried), but for [`Error::Spec`].
    fn reconcile(
        &self,
        obj: &Self::Object,
        status: &mut <Self::Object as Object>::Status,
        ctx: &Context,
    ) -> impl Future<Output = Result<Outcome, Error>> + Send;

    /// Whether `obj` is a one-shot object whose run is over (a finished Backup or AgentRun): it
    /// is never reconciled again, and its status stays as the last pass wrote it.
    fn settled(&self, _obj: &Self::Object) -> bool {
        false
    }

    /// Called when an object is found gone (deleted without a finalizer), with its
    /// [`key`]: what the controller remembers of it can be forgotten.
    fn gone(&self, _key: &str, _ctx: &Context) {}

    /// Runs when an object with the finalizer is deleted; must work even if no pass ran.
    fn cleanup(
        &self,
        _obj: &Self::Object,
        _ctx: &Context,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        async { Ok(()) }
    }
}

/// Runs `controller` with `reconciler` until `shutdown`: every pass goes through the frame, and
/// what the stream yields besides results (watch failures, objects that cannot be read) is
/// reported.
pub async fn run<R: Reconciler>(
    reconciler: R,
    controller: Controller<R::Object>,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) {
    let reconciler = Arc::new(reconciler);
    let reporter = Arc::new(Reporter::new(R::NAME, ctx.clone(), controller.store()));
    controller
        .with_config(
            Config::default()
                .concurrency(CONCURRENCY)
                .debounce(R::DEBOUNCE),
        )
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(
            move |obj, ctx| reconcile(reconciler.clone(), obj, ctx),
            error_policy::<R>,
            ctx,
        )
        .for_each(move |result| {
            let reporter = reporter.clone();
            async move { reporter.report(result).await }
        })
        .await;
}

/// The key of an object for the retry policy: `kind/namespace/name`.
pub fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// One reconciliation: the object re-read as stored (the cache may predate the last status
/// write), its finalizer, the pass; one that passed is counted with its time and the part of
/// it spent computing.
pub async fn reconcile<R: Reconciler>(
    reconciler: Arc<R>,
    cached: Arc<R::Object>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let metrics = Arc::clone(&ctx.metrics);
    let (result, busy) = Busy::new(reconcile_stored(reconciler, cached, ctx)).await;
    let (action, passed) = result?;
    if passed {
        metrics.reconciled(R::NAME, started.elapsed(), busy);
    }
    Ok(action)
}

/// [`reconcile`]'s work; says whether the object was passed over (not gone, unreadable or
/// settled).
async fn reconcile_stored<R: Reconciler>(
    reconciler: Arc<R>,
    cached: Arc<R::Object>,
    ctx: Arc<Context>,
) -> Result<(Action, bool), Error> {
    let span = info_span!("reconcile", controller = R::NAME, object = %key(cached.as_ref()));
    let api = R::Object::api(ctx.client.clone(), cached.namespace().as_deref());
    let fresh = match api
        .get_opt(&cached.name_any())
        .instrument(span.clone())
        .await
    {
        Ok(Some(obj)) => obj,
        Ok(None) => {
            reconciler.gone(&key(cached.as_ref()), &ctx);
            return Ok((Action::await_change(), false));
        }
        Err(kube::Error::SerdeError(error)) => {
            watch::unreadable(&ctx, cached.as_ref(), &error.to_string()).await;
            return Ok((Action::await_change(), false));
        }
        Err(source) => return Err(Error::kube("read the object")(source)),
    };
    if reconciler.settled(&fresh) {
        return Ok((Action::await_change(), false));
    }
    let action = match R::FINALIZER {
        None => {
            pass(reconciler.as_ref(), &fresh, &ctx)
                .instrument(span)
                .await?
        }
        Some(name) => finalizer(&api, name, Arc::new(fresh), |event| async {
            match event {
                FinalizerEvent::Apply(obj) => pass(reconciler.as_ref(), &obj, &ctx).await,
                FinalizerEvent::Cleanup(obj) => reconciler
                    .cleanup(&obj, &ctx)
                    .await
                    .map(|()| Action::await_change()),
            }
        })
        .instrument(span)
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))?,
    };
    Ok((action, true))
}

/// The pass over one stored object: first look, the controller's work, status, event, action.
async fn pass<R: Reconciler>(
    reconciler: &R,
    obj: &R::Object,
    ctx: &Context,
) -> Result<Action, Error> {
    let generation = obj.meta().generation;
    let api = R::Object::api(ctx.client.clone(), obj.namespace().as_deref());
    let old = obj.status().cloned();
    let mut status = old.clone().unwrap_or_default();
    if status::is_new(obj) {
        let (observed, list) = R::Object::kstatus(&mut status);
        status::begin(observed, list, generation, crate::controllers::now());
        status::write(&api, obj, &status).await?;
    }
    let before = status.clone();
    let outcome = match reconciler.reconcile(obj, &mut status, ctx).await {
        Ok(outcome) => outcome,
        Err(error) => {
            warn!(controller = R::NAME, error = %with_causes(&error), "pass failed");
            Outcome::from_error(&error)
        }
    };
    let key = key(obj);
    let retry = match outcome.state {
        State::Retry => Some(ctx.retries.failed(&key)),
        _ => {
            ctx.retries.succeeded(&key);
            None
        }
    };
    let (observed, list) = R::Object::kstatus(&mut status);
    let news = is_news(list, &outcome);
    let since = retry.map(|r| r.since);
    status::settle(
        observed,
        list,
        &outcome,
        generation,
        since,
        crate::controllers::now(),
    );
    if status != before || old.is_none() {
        status::write_patiently(&api, obj, &status, R::STATUS_PATIENCE).await?;
    }
    if outcome.is_failure() {
        ctx.metrics.failed(R::NAME, outcome.reason);
        if news {
            ctx.event(
                obj,
                EventType::Warning,
                outcome.reason,
                outcome.message.clone(),
            )
            .await;
        }
    }
    Ok(next(&outcome, retry.map(|r| r.delay), R::RESYNC))
}

/// When to look again after `outcome`: a retry after the backoff's `delay`; otherwise when the
/// outcome says, or the resync (soon for work in flight); a bad spec waits for its change.
fn next(outcome: &Outcome, delay: Option<Duration>, resync: Duration) -> Action {
    let after = |default: Duration| Action::requeue(outcome.requeue.unwrap_or(default));
    match outcome.state {
        State::Retry => Action::requeue(delay.unwrap_or(resync)),
        State::Ready | State::Stalled(Cure::World) => after(resync),
        State::Progressing => after(PROGRESS_POLL),
        State::Stalled(Cure::Spec) => outcome
            .requeue
            .map_or_else(Action::await_change, Action::requeue),
    }
}

/// Whether a failure is news: the `Ready` condition did not already report it.
fn is_news(list: &[Condition], outcome: &Outcome) -> bool {
    outcome.is_failure()
        && !list
            .iter()
            .any(|c| c.type_ == READY && c.status == "False" && c.reason == outcome.reason)
}

/// What happens when the frame itself fails (the object or its status could not be read or
/// written): counted, logged, a Warning event when it can be sent, and retried with the same
/// policy as any transient failure.
pub fn error_policy<R: Reconciler>(
    obj: Arc<R::Object>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics.failed(R::NAME, error.category());
    let retry = ctx.retries.failed(&key(obj.as_ref()));
    let text = with_causes(error);
    warn!(controller = R::NAME, object = %key(obj.as_ref()), error = %text, delay = ?retry.delay, "reconcile failed");
    let note = format!("{text}; retrying in {}", super::retry::human(retry.delay));
    let reason = error.reason();
    tokio::spawn(async move {
        ctx.event(obj.as_ref(), EventType::Warning, reason, note)
            .await;
    });
    Action::requeue(retry.delay)
}

/// A future and the CPU time its polls took on the thread that ran them: what a reconciliation
/// costs on the async runtime, without the time it waits for the API server, PostgreSQL or n8n,
/// and without the time the kernel gave the thread's core to another process in the middle of a
/// poll (on a busy 2-core machine that is most of a poll's wall time). Work it hands to the
/// blocking pool (template rendering) is waited for, so not counted.
struct Busy<F> {
    inner: Pin<Box<F>>,
    busy: Duration,
}

impl<F: Future> Busy<F> {
    fn new(inner: F) -> Self {
        Self {
            inner: Box::pin(inner),
            busy: Duration::ZERO,
        }
    }
}

impl<F: Future> Future for Busy<F> {
    type Output = (F::Output, Duration);

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let started = thread_cpu_time();
        let polled = self.inner.as_mut().poll(cx);
        self.busy += thread_cpu_time().saturating_sub(started);
        let busy = self.busy;
        polled.map(|out| (out, busy))
    }
}

/// The CPU time the calling thread has used (a poll runs on one thread from start to end).
fn thread_cpu_time() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod busy_tests {
    use super::*;

    /// Time spent waiting is not counted; time spent computing in a poll is.
    #[tokio::test]
    async fn counts_the_polls_not_the_waits() {
        let (_, busy) = Busy::new(async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let spun = Instant::now();
            while spun.elapsed() < Duration::from_millis(20) {
                std::hint::spin_loop();
            }
        })
        .await;
        assert!(busy >= Duration::from_millis(15), "{busy:?}");
        assert!(busy < Duration::from_millis(400), "{busy:?}");
    }

    /// A poll that holds its thread without computing (the kernel ran something else) is not
    /// counted either: the measure is the thread's CPU time, not the clock on the wall.
    #[tokio::test]
    async fn a_thread_that_is_not_running_is_not_busy() {
        let (_, busy) = Busy::new(async {
            std::thread::sleep(Duration::from_millis(300));
        })
        .await;
        assert!(busy < Duration::from_millis(100), "{busy:?}");
    }
}
