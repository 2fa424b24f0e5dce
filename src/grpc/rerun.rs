//! Rerunning a finished instance from one of its events (the Dapr dialect's
//! `RerunWorkflowFromEvent`): input checks and status mapping; the rule is
//! [`crate::engine::rerun`], the store creates the prepared instance whole.

use tonic::Status;

use super::{Service, status};
use crate::engine::rerun::{self, RerunRequest};
use crate::limits;

impl Service {
    /// Starts a new instance from `source`'s history up to `request.event_id` and returns its
    /// id (generated when `request.new_instance_id` is empty).
    pub(crate) async fn rerun(&self, source: &str, mut request: RerunRequest) -> Result<String, Status> {
        limits::instance_id("sourceInstanceID", source).map_err(Status::invalid_argument)?;
        if request.new_instance_id.is_empty() {
            request.new_instance_id = uuid::Uuid::new_v4().to_string();
        }
        limits::instance_id("newInstanceID", &request.new_instance_id).map_err(Status::invalid_argument)?;
        if let Some(child) = &request.new_child_instance_id {
            limits::instance_id("newChildWorkflowInstanceID", child).map_err(Status::invalid_argument)?;
        }
        let found = self.store.get_instance(source).await.map_err(status::store)?;
        let instance = found.ok_or_else(|| Status::not_found(format!("no instance with id '{source}'")))?;
        let history = self.store.history(source).await.map_err(status::store)?;
        let now = self.now();
        let mut new_id = || uuid::Uuid::new_v4().simple().to_string();
        let commit = rerun::rerun(&instance, &history, &request, now, &mut new_id).map_err(|e| status::rerun(source, e))?;
        let changed = self.store.create_with_history(commit, now).await.map_err(status::store)?;
        crate::metrics::METRICS.orchestrations_started(1);
        self.dispatcher.changed(&changed);
        Ok(request.new_instance_id)
    }
}
