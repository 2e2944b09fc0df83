//! Bringing n8n's copy of one workflow to its declaration: read n8n's copy, then create it, or
//! update and (de)activate it, or only report a difference (`onDrift: Report`), and record what
//! n8n now holds. The `Drifted` condition and the Created/Updated/DriftCorrected events are
//! decided here; `Ready` comes back as the outcome.

use homeplane_crds::workflow::{DriftAction, Workflow, WorkflowStatus};
use kube::ResourceExt;
use kube::runtime::events::EventType;
use serde_json::Value;
use tracing::info;

use super::definition::{self, Payload};
use super::n8n::N8n;
use super::{ADOPT_ANNOTATION, DRIFTED, last_execution, n8n_failed};
use crate::conditions::{self, Desired};
use crate::controllers::{Context, now};
use crate::reconcile::Outcome;

/// One pass of keeping a workflow in sync.
pub struct Sync<'a> {
    wf: &'a Workflow,
    ctx: &'a Context,
    client: &'a N8n<'a>,
    payload: &'a Payload,
    status: &'a mut WorkflowStatus,
    desired_hash: String,
    /// A new declaration (or a first pass) is applied whatever n8n holds; drift is only a
    /// difference that appeared while the declaration stayed the same.
    declaration_changed: bool,
    /// What differed from the declaration in n8n.
    drift: Vec<String>,
}

impl<'a> Sync<'a> {
    /// A pass over `wf`, whose body for n8n is `payload`.
    pub fn new(
        wf: &'a Workflow,
        ctx: &'a Context,
        client: &'a N8n<'a>,
        payload: &'a Payload,
        status: &'a mut WorkflowStatus,
    ) -> Self {
        let desired_hash = definition::canonical_hash(&payload.body);
        let declaration_changed = status.definition_hash.as_deref() != Some(desired_hash.as_str())
            || status.observed_generation != wf.metadata.generation;
        Self {
            wf,
            ctx,
            client,
            payload,
            status,
            desired_hash,
            declaration_changed,
            drift: Vec::new(),
        }
    }

    /// Observe n8n's copy, then create it or bring it back; record the result.
    pub async fn run(mut self) -> Outcome {
        // A Workflow without an id yet takes over the n8n workflow its annotation names.
        let adopting = self
            .status
            .n8n_id
            .is_none()
            .then(|| self.wf.annotations().get(ADOPT_ANNOTATION).cloned())
            .flatten();
        let observed = match self.status.n8n_id.as_ref().or(adopting.as_ref()) {
            Some(id) => match self.client.get_workflow(id).await {
                Ok(found) => found,
                Err(e) => return n8n_failed(self.wf, "read the workflow", &e),
            },
            None => None,
        };
        if let (Some(id), Some(_)) = (&adopting, &observed) {
            info!(n8n_id = %id, "adopted the workflow in n8n");
            self.status.n8n_id = Some(id.clone());
            let note = format!("took over n8n workflow {id} (annotation {ADOPT_ANNOTATION})");
            self.ctx
                .event(self.wf, EventType::Normal, "Adopted", note)
                .await;
        }
        let applied = match observed {
            None => self.create().await,
            Some(observed) => self.update(&observed).await,
        };
        match applied {
            Ok(id) => self.synced(&id).await,
            Err(outcome) => outcome,
        }
    }

    fn set(&mut self, condition: Desired) {
        let generation = self.wf.metadata.generation;
        conditions::set(&mut self.status.conditions, condition, generation, now());
    }

    /// Creates the workflow (again, when it was deleted in n8n and may be put back).
    async fn create(&mut self) -> Result<String, Outcome> {
        if let Some(old_id) = self.status.n8n_id.clone() {
            if !self.declaration_changed && self.wf.spec.on_drift == DriftAction::Report {
                let message = format!(
                    "workflow {old_id} was deleted in n8n; onDrift is Report, so homeplane leaves it deleted (set onDrift: Correct or change the spec to create it again)"
                );
                self.report_drift("DeletedInN8n", &message).await;
                return Err(Outcome::blocked("DeletedInN8n", message));
            }
            self.drift
                .push(format!("workflow {old_id} was deleted in n8n"));
        }
        let created = self
            .client
            .create_workflow(&self.payload.body)
            .await
            .map_err(|e| n8n_failed(self.wf, "create the workflow", &e))?;
        let Some(id) = created
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            let message = "n8n created the workflow but returned no id";
            return Err(Outcome::retry("N8nError", message));
        };
        info!(n8n_id = %id, "created the workflow in n8n");
        self.status.n8n_id = Some(id.clone());
        let note = format!("created n8n workflow {id}");
        self.ctx
            .event(self.wf, EventType::Normal, "Created", note)
            .await;
        if self.wf.spec.active {
            self.client
                .set_active(&id, true)
                .await
                .map_err(|e| n8n_failed(self.wf, "activate the workflow", &e))?;
        }
        Ok(id)
    }

    /// Compares n8n's copy with the declaration and puts the declaration back, unless drift is
    /// only to be reported.
    async fn update(&mut self, observed: &Value) -> Result<String, Outcome> {
        let id = self.status.n8n_id.clone().unwrap_or_default();
        let spec = &self.wf.spec;
        let differs = definition::canonical_hash(observed) != self.desired_hash;
        let active = observed
            .get("active")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if differs {
            self.drift
                .extend(definition::differences(&self.payload.body, observed));
            if self.drift.is_empty() {
                self.drift.push("the definition was changed in n8n".into());
            }
        }
        if active != spec.active {
            let state = if active { "active" } else { "inactive" };
            self.drift.push(format!("it is {state} in n8n"));
        }
        let act = self.declaration_changed || spec.on_drift == DriftAction::Correct;
        if !self.drift.is_empty() && !act {
            let message = format!(
                "n8n workflow {id} differs from the declaration: {}; onDrift is Report, so homeplane changes nothing (set onDrift: Correct to put the declaration back)",
                self.drift.join("; ")
            );
            self.status.last_execution = last_execution(self.client, &id).await;
            self.status.active = Some(active);
            self.report_drift("EditedInN8n", &message).await;
            return Err(Outcome::ready("DriftReported", message));
        }
        if differs {
            self.client
                .update_workflow(&id, &self.payload.body)
                .await
                .map_err(|e| n8n_failed(self.wf, "update the workflow", &e))?;
            info!(n8n_id = %id, "updated the workflow in n8n");
        }
        if active != spec.active {
            let what = match spec.active {
                true => "activate the workflow",
                false => "deactivate the workflow",
            };
            self.client
                .set_active(&id, spec.active)
                .await
                .map_err(|e| n8n_failed(self.wf, what, &e))?;
        }
        if !self.drift.is_empty() && self.declaration_changed {
            let note = format!("updated n8n workflow {id} to the new declaration");
            self.ctx
                .event(self.wf, EventType::Normal, "Updated", note)
                .await;
        }
        Ok(id)
    }

    /// `Drifted=True` with `reason`, and a Warning event the first time.
    async fn report_drift(&mut self, reason: &'static str, message: &str) {
        if !conditions::is_true(&self.status.conditions, DRIFTED) {
            let note = message.to_string();
            self.ctx
                .event(self.wf, EventType::Warning, "Drifted", note)
                .await;
        }
        self.set(Desired::yes(DRIFTED, reason, message));
    }

    /// The declaration is fully in n8n: record it. Only now, so that a pass that failed half-way
    /// is retried as a new declaration, not mistaken for drift.
    async fn synced(mut self, id: &str) -> Outcome {
        let corrected = !self.drift.is_empty() && !self.declaration_changed;
        self.status.definition_hash = Some(self.desired_hash.clone());
        self.status.active = Some(self.wf.spec.active);
        let drift = self.drift.join("; ");
        if corrected {
            let note = format!("put the declaration back in n8n (onDrift Correct): {drift}");
            self.ctx
                .event(self.wf, EventType::Normal, "DriftCorrected", note)
                .await;
            self.set(Desired::no(
                DRIFTED,
                "Corrected",
                format!("drift was corrected: {drift}"),
            ));
        } else {
            let message = format!("n8n workflow {id} matches the declaration");
            self.set(Desired::no(DRIFTED, "InSync", message));
        }
        self.status.last_execution = last_execution(self.client, id).await;
        let state = if self.wf.spec.active {
            "active"
        } else {
            "inactive"
        };
        let mut message = format!("n8n workflow {id} matches the declaration and is {state}");
        if !self.payload.ignored.is_empty() {
            message.push_str(&format!(
                "; fields n8n's API does not accept were left out: {}",
                self.payload.ignored.join(", ")
            ));
        }
        Outcome::ready("Synced", message)
    }
}
