//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several replicas exactly
//! one reconciles. The leader renews the lease every `retry_period`; a standby takes it over
//! once it has not seen the lease change for `lease_duration` — judged on its own clock, from
//! the moment it observed the current record (as client-go does), never by comparing the
//! holder's `renewTime` with its own clock, so clock skew cannot make two leaders. Every renew
//! attempt has a timeout of its own: a leader that has not renewed within `renew_deadline`
//! of its last successful renew (measured from when that renew was sent) stops leading, and
//! the caller stops all work at once (`run.rs`) — before any standby can see the lease expire.
//! A leader that shuts down releases the lease so a standby takes over at once.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;
use tracing::{info, warn};

/// Timing of the election, as in client-go's leaderelection package.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long a lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up leading.
    pub renew_deadline: Duration,
    /// How often candidates try to acquire and the leader renews.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Why leading failed or ended.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Lease could not be read or written.
    #[error("failed to read or write the leader Lease {namespace}/{name}")]
    Lease {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// The leader could not renew in time, or another replica took the lease.
    #[error("lost the leader Lease {namespace}/{name}: {why}")]
    Lost {
        namespace: String,
        name: String,
        why: String,
    },
}

/// One candidate in the election.
pub struct Elector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    timing: Timing,
    /// The lease record last seen and when this replica saw it (its own clock).
    observed: Mutex<Option<(Record, Instant)>>,
    /// When the last successful acquire or renew was sent.
    renewed: Mutex<Option<Instant>>,
}

/// What identifies one write of the lease: a standby restarts its wait whenever it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<String>,
    transitions: Option<i32>,
    resource_version: Option<String>,
}

impl Record {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec.and_then(|s| s.holder_identity.clone()),
            renew_time: spec.and_then(|s| s.renew_time.as_ref().map(|t| t.0.to_string())),
            transitions: spec.and_then(|s| s.lease_transitions),
            resource_version: lease.metadata.resource_version.clone(),
        }
    }
}

/// The outcome of one attempt.
enum Attempt {
    Leading,
    HeldBy(String),
}

impl Elector {
    /// A candidate named `identity` for the Lease `namespace/name`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: Timing,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            timing,
            observed: Mutex::new(None),
            renewed: Mutex::new(None),
        }
    }

    /// When the last successful acquire or renew was sent (now, if none was).
    pub fn renewed_at(&self) -> Instant {
        self.renewed
            .lock()
            .ok()
            .and_then(|r| *r)
            .unwrap_or_else(Instant::now)
    }

    fn renewed(&self, sent: Instant) {
        if let Ok(mut r) = self.renewed.lock() {
            *r = Some(sent);
        }
    }

    /// When this replica first saw `record` (now, if it is new to it).
    fn observe(&self, record: Record) -> Instant {
        let now = Instant::now();
        let Ok(mut observed) = self.observed.lock() else {
            return now;
        };
        match observed.as_ref() {
            Some((seen, at)) if *seen == record => *at,
            _ => {
                *observed = Some((record, now));
                now
            }
        }
    }

    fn lost(&self, why: String) -> Error {
        Error::Lost {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            why,
        }
    }

    fn lease_error(&self, source: kube::Error) -> Error {
        Error::Lease {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }

    /// Waits until this candidate holds the lease; returns when the winning attempt was sent
    /// (the moment the lease's validity is counted from).
    pub async fn acquire(&self) -> Result<Instant, Error> {
        let mut last_holder = String::new();
        loop {
            let sent = Instant::now();
            let attempt =
                tokio::time::timeout(self.timing.renew_deadline, self.try_acquire_or_renew());
            let attempt = match attempt.await {
                Ok(attempt) => attempt,
                Err(_) => {
                    warn!("a leader election attempt timed out; retrying");
                    continue;
                }
            };
            match attempt {
                Ok(Attempt::Leading) => {
                    info!(lease = %self.name, identity = %self.identity, "became leader");
                    self.renewed(sent);
                    return Ok(sent);
                }
                Ok(Attempt::HeldBy(holder)) => {
                    if holder != last_holder {
                        info!(lease = %self.name, %holder, "another replica leads; standing by");
                        last_holder = holder;
                    }
                }
                // A missing namespace or forbidden access will not fix itself: say so.
                Err(Error::Lease {
                    source: kube::Error::Api(status),
                    ..
                }) if status.code == 403 || status.code == 404 => {
                    return Err(self.lease_error(kube::Error::Api(status)));
                }
                Err(error) => warn!(error = %error, "leader election attempt failed; retrying"),
            }
            tokio::time::sleep(self.timing.retry_period).await;
        }
    }

    /// Renews the lease while leading, from the successful attempt sent at `since`; returns
    /// when leadership is lost: the lease is held by another replica, or no renew succeeded
    /// within `renew_deadline` of the last successful one being sent. Each attempt is cut off at
    /// that deadline, so this returns on time even when the API server does not answer.
    pub async fn hold(&self, since: Instant) -> Error {
        let mut renewed = since;
        loop {
            tokio::time::sleep(self.timing.retry_period).await;
            let deadline = renewed + self.timing.renew_deadline;
            let sent = Instant::now();
            let attempt = tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await;
            match attempt {
                Ok(Ok(Attempt::Leading)) => {
                    renewed = sent;
                    self.renewed(sent);
                }
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    return self.lost(format!("the lease is now held by {holder}"));
                }
                Ok(Err(error)) if Instant::now() + self.timing.retry_period < deadline => {
                    warn!(error = %error, "failed to renew the leader lease; retrying");
                }
                Ok(Err(_)) | Err(_) => {
                    return self.lost(format!(
                        "not renewed within the renew deadline of {}s",
                        self.timing.renew_deadline.as_secs()
                    ));
                }
            }
        }
    }

    /// Gives the lease up so that a standby takes over without waiting for it to expire.
    pub async fn release(&self) {
        let Ok(mut lease) = self.api.get(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.name, "released the leader lease"),
            Err(error) => warn!(error = %error, "failed to release the leader lease"),
        }
    }

    async fn try_acquire_or_renew(&self) -> Result<Attempt, Error> {
        let now = Timestamp::now();
        let duration_secs = i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(15);
        let existing = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.lease_error(e))?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leading),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    Ok(Attempt::HeldBy("another replica".into()))
                }
                Err(e) => Err(self.lease_error(e)),
            };
        };
        let seen = self.observe(Record::of(&lease));
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        if !ours {
            if let Some(holder) = holder {
                // Valid until it has not changed for its duration, on this replica's clock.
                let secs = spec.lease_duration_seconds.unwrap_or(duration_secs).max(1);
                let valid_for = Duration::from_secs(u64::try_from(secs).unwrap_or(15));
                if seen + valid_for > Instant::now() {
                    return Ok(Attempt::HeldBy(holder));
                }
            }
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(duration_secs);
        spec.renew_time = Some(MicroTime(now));
        // replace() carries the resourceVersion we read: if another replica wrote in between,
        // the API server answers 409 and that replica wins this round.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.observe(Record::of(&written));
                Ok(Attempt::Leading)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                Ok(Attempt::HeldBy("another replica".into()))
            }
            Err(e) => Err(self.lease_error(e)),
        }
    }
}

#[cfg(test)]
mod tests;
