//! The one place where errors become gRPC statuses, and what KEDA does with each:
//! bad metadata → INVALID_ARGUMENT (KEDA reports it on the ScaledObject; a stream ends with it);
//! database trouble → UNAVAILABLE (KEDA counts it toward `fallback.failureThreshold`, which is
//! exactly what must happen during an outage — never 0, never `false`).

use tonic::Status;

use crate::engine::EngineError;
use crate::metadata::MetadataError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Request(String),
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match &e {
            // Never the connection's URL: only its name and the namespace.
            Error::Metadata(MetadataError::Forbidden { .. }) => {
                Status::permission_denied(e.to_string())
            }
            Error::Metadata(_) | Error::Request(_) => Status::invalid_argument(e.to_string()),
            Error::Engine(EngineError::ResourceExhausted(_)) => {
                Status::resource_exhausted(e.to_string())
            }
            Error::Engine(EngineError::Unavailable(_)) => Status::unavailable(e.to_string()),
            Error::Engine(EngineError::ShuttingDown) => Status::unavailable(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn codes() {
        let cases: Vec<(Error, Code)> = vec![
            (MetadataError::NoConnections.into(), Code::InvalidArgument),
            (Error::Request("x".into()), Code::InvalidArgument),
            (
                EngineError::Unavailable("db down".into()).into(),
                Code::Unavailable,
            ),
            (EngineError::ShuttingDown.into(), Code::Unavailable),
            (
                EngineError::ResourceExhausted("x".into()).into(),
                Code::ResourceExhausted,
            ),
            (
                MetadataError::Forbidden {
                    connection: "c".into(),
                    namespace: "n".into(),
                }
                .into(),
                Code::PermissionDenied,
            ),
        ];
        for (e, code) in cases {
            let msg = e.to_string();
            let s = Status::from(e);
            assert_eq!(s.code(), code);
            assert_eq!(s.message(), msg);
        }
    }
}
