//! containerd's Task API over the container and its processes: [`Tasks`] holds the state
//! and does the work, [`service`] is the thin ttrpc edge.

mod bundle;
mod container;
mod disk;
mod etc;
mod process;
pub mod service;

pub use container::{CreateRequest, ProcessRequest, Tasks};

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Internal(String),
}

impl From<TaskError> for ttrpc::Error {
    fn from(e: TaskError) -> ttrpc::Error {
        let code = match e {
            TaskError::NotFound(_) => ttrpc::Code::NOT_FOUND,
            TaskError::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            TaskError::FailedPrecondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            TaskError::InvalidArgument(_) => ttrpc::Code::INVALID_ARGUMENT,
            TaskError::Internal(_) => ttrpc::Code::INTERNAL,
        };
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
    }
}
