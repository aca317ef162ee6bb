//! What can go wrong in a call, and the error reply a handler sends.

use crate::proto::{frame::Body, ErrorCode, ErrorReply};

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("connection to {0} is closed")]
    Disconnected(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("{message}")]
    Remote { code: ErrorCode, message: String },
    /// The peer refused this process's token (or its lack of one).
    #[error("{addr} refused the connection: {message}")]
    Unauthenticated { addr: String, message: String },
    /// This process's TLS settings are unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The peer answered with a message that is not the request's reply.
    #[error("unexpected reply to {request} from {from}")]
    UnexpectedReply { request: &'static str, from: String },
}

impl RpcError {
    pub fn code(&self) -> ErrorCode {
        match self {
            RpcError::Remote { code, .. } => *code,
            RpcError::Disconnected(_) => ErrorCode::WorkerDied,
            RpcError::Unauthenticated { .. } => ErrorCode::Unauthenticated,
            _ => ErrorCode::Internal,
        }
    }
}

pub fn error_reply(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply { code: code as i32, message: message.into() }
}

pub fn error_body(code: ErrorCode, message: impl Into<String>) -> Body {
    Body::Error(error_reply(code, message))
}

/// An error and its causes on one line (tonic's own message is only "transport error").
pub fn describe_error(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = e.source();
    }
    text
}
