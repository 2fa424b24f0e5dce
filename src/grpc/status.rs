//! The one mapping from the layers' errors to gRPC statuses. Each layer below says what went
//! wrong in its own terms (the store's [`StoreError`], the dispatcher's [`Refused`], the
//! engine's [`InvalidAction`] and [`RerunError`], the hubs' [`HubError`], the keys'
//! [`Denied`]); only here do they become codes and messages. Internal failures are logged here
//! with their cause.

use tonic::Status;
use tracing::warn;

use crate::auth::Denied;
use crate::dispatch::Refused;
use crate::engine::rerun::RerunError;
use crate::store::StoreError;
use crate::taskhub::HubError;

/// A store failure. Database failures and corrupt data are logged here with their cause; the
/// client is told the category (a full disk, a lost connection, a refused transaction) and
/// that nothing was written, never the database's own text.
pub(crate) fn store(e: StoreError) -> Status {
    match e {
        StoreError::AlreadyExists(..) => Status::already_exists(e.to_string()),
        StoreError::LeaseLost => Status::failed_precondition(e.to_string()),
        // Retriable: the SDKs retry or surface it, and nothing was half-written.
        StoreError::Database(_) | StoreError::BatchFailed(_) => {
            warn!(error = %e, "database failure answered as UNAVAILABLE");
            Status::unavailable(format!("{}; nothing was written, try again", e.plain_cause()))
        }
        StoreError::Corrupt(_) => {
            warn!(error = %e, "corrupt stored data answered as INTERNAL");
            Status::internal("stored data could not be read; the cause is in the sidecar's log")
        }
    }
}

/// A worker's answer the dispatcher refused.
pub(crate) fn refused(e: Refused) -> Status {
    match e {
        Refused::Store(e) => store(e),
        Refused::Stale(_) | Refused::NoOrchestration(_) | Refused::NoActivity { .. } | Refused::AmbiguousEntity => {
            Status::failed_precondition(e.to_string())
        }
        Refused::ChunksTooLarge => Status::resource_exhausted(e.to_string()),
        Refused::NoInstanceId
        | Refused::OtherInstance { .. }
        | Refused::OtherTask { .. }
        | Refused::ChunkOutOfOrder { .. }
        | Refused::Invalid(_)
        | Refused::NotStorable(_) => Status::invalid_argument(e.to_string()),
    }
}

/// A rerun the engine refused; the codes of the event checks are Dapr's own.
pub(crate) fn rerun(source: &str, e: RerunError) -> Status {
    let message = format!("cannot rerun '{source}': {e}");
    match e {
        RerunError::NotFinished(_) => Status::failed_precondition(message),
        RerunError::NoSuchEvent(_) | RerunError::NotRerunnable(..) => Status::not_found(message),
        RerunError::Child | RerunError::ChildIdOnActivity(_) => Status::invalid_argument(message),
    }
}

/// A call for a task hub this sidecar does not serve (or cannot open).
pub fn hub(e: HubError) -> Status {
    match e {
        HubError::Name(_) | HubError::OnlyDefault(_) | HubError::TooMany { .. } => Status::invalid_argument(e.to_string()),
        HubError::ShuttingDown => Status::unavailable(e.to_string()),
        HubError::Open(why) => {
            warn!(error = %why, "opening a task hub failed");
            Status::unavailable(why)
        }
    }
}

/// A call the API keys do not allow.
pub fn denied(e: &Denied) -> Status {
    match e {
        Denied::Unauthenticated(why) => Status::unauthenticated(*why),
        Denied::Forbidden { .. } => Status::permission_denied(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    #[test]
    fn denials_are_unauthenticated_or_permission_denied() {
        assert_eq!(denied(&Denied::Unauthenticated("x")).code(), tonic::Code::Unauthenticated);
        let forbidden = Denied::Forbidden {
            needed: Role::Full,
            held: Role::Read,
        };
        assert_eq!(denied(&forbidden).code(), tonic::Code::PermissionDenied);
        assert_eq!(
            denied(&forbidden).message(),
            "this call needs the 'full' role; the key presented has 'read'"
        );
    }

    #[test]
    fn hub_names_are_invalid_arguments_and_a_stopping_sidecar_unavailable() {
        let bad = crate::taskhub::parse("a b").unwrap_err();
        assert_eq!(hub(bad).code(), tonic::Code::InvalidArgument);
        assert_eq!(hub(HubError::ShuttingDown).code(), tonic::Code::Unavailable);
    }

    #[test]
    fn database_failures_are_unavailable_and_corrupt_data_internal() {
        assert_eq!(
            store(StoreError::BatchFailed("writer gone".into())).code(),
            tonic::Code::Unavailable
        );
        let corrupt = store(StoreError::Corrupt("row 7 of instances".into()));
        assert_eq!(corrupt.code(), tonic::Code::Internal);
        assert!(!corrupt.message().contains("row 7"), "the detail is logged, not sent: {corrupt:?}");
        let stopped = store(StoreError::BatchFailed("writer gone".into()));
        assert_eq!(stopped.message(), "the store is stopping; nothing was written, try again");
        let closed = store(StoreError::Database(sqlx::Error::PoolClosed));
        assert_eq!(
            closed.message(),
            "the connection to the database failed; nothing was written, try again"
        );
        assert_eq!(store(StoreError::LeaseLost).code(), tonic::Code::FailedPrecondition);
    }
}
