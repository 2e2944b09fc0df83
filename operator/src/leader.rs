//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several replicas exactly
//! one reconciles. The leader renews the lease every `retry_period`; a standby takes it over
//! once it has not been renewed for `lease_duration`. A leader that cannot renew within
//! `renew_deadline` stops leading (the process exits and is restarted), and a leader that shuts
//! down releases the lease so a standby takes over at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
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
        }
    }

    fn lease_error(&self, source: kube::Error) -> Error {
        Error::Lease {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }

    /// Waits until this candidate holds the lease.
    pub async fn acquire(&self) -> Result<(), Error> {
        let mut last_holder = String::new();
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading) => {
                    info!(lease = %self.name, identity = %self.identity, "became leader");
                    return Ok(());
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

    /// Renews the lease while leading; returns an error when leadership is lost.
    pub async fn hold(&self) -> Error {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.timing.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading) => last_renewal = tokio::time::Instant::now(),
                Ok(Attempt::HeldBy(holder)) => {
                    return Error::Lost {
                        namespace: self.namespace.clone(),
                        name: self.name.clone(),
                        why: format!("the lease is now held by {holder}"),
                    };
                }
                Err(error) => {
                    warn!(error = %error, "failed to renew the leader lease");
                    if last_renewal.elapsed() > self.timing.renew_deadline {
                        return Error::Lost {
                            namespace: self.namespace.clone(),
                            name: self.name.clone(),
                            why: format!(
                                "not renewed within the renew deadline of {}s",
                                self.timing.renew_deadline.as_secs()
                            ),
                        };
                    }
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
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        if !ours {
            if let Some(holder) = holder {
                let renewed = spec
                    .renew_time
                    .as_ref()
                    .map(|t| t.0)
                    .unwrap_or(Timestamp::UNIX_EPOCH);
                let valid_for = SignedDuration::from_secs(i64::from(
                    spec.lease_duration_seconds.unwrap_or(duration_secs),
                ));
                if renewed
                    .checked_add(valid_for)
                    .is_ok_and(|expires| expires > now)
                {
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
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                Ok(Attempt::HeldBy("another replica".into()))
            }
            Err(e) => Err(self.lease_error(e)),
        }
    }
}
