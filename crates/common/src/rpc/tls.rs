//! Optional TLS between machines (Ray's `RAY_USE_TLS`): with `RTD_USE_TLS=1` every
//! gRPC server and client of rtd speaks TLS 1.2/1.3 (rustls), both ends presenting
//! `RTD_TLS_SERVER_CERT` / `RTD_TLS_SERVER_KEY` and accepting only peers whose
//! certificate `RTD_TLS_CA_CERT` signed (mutual TLS, as Ray's). A client checks the
//! server's certificate against the address it dials (an IP address SAN, or a name).

use std::path::PathBuf;
use std::sync::OnceLock;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

pub const USE_TLS_ENV: &str = "RTD_USE_TLS";
pub const SERVER_CERT_ENV: &str = "RTD_TLS_SERVER_CERT";
pub const SERVER_KEY_ENV: &str = "RTD_TLS_SERVER_KEY";
pub const CA_CERT_ENV: &str = "RTD_TLS_CA_CERT";

#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    #[error("{USE_TLS_ENV}=1 needs {0} (a PEM file)")]
    Missing(&'static str),
    #[error("cannot read {var}={path}: {reason}")]
    Unreadable { var: &'static str, path: PathBuf, reason: String },
    #[error("the TLS certificates are not usable: {0}")]
    Invalid(String),
}

/// Both ends of TLS: what a server presents and checks, what a client does.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    pub server: ServerTlsConfig,
    pub client: ClientTlsConfig,
}

impl TlsSettings {
    /// Settings from PEM texts: this end's certificate and key, and the CA that signs
    /// every peer's.
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<Self, TlsError> {
        let identity = Identity::from_pem(cert, key);
        let ca = Certificate::from_pem(ca);
        let settings = TlsSettings {
            server: ServerTlsConfig::new().identity(identity.clone()).client_ca_root(ca.clone()),
            client: ClientTlsConfig::new().identity(identity).ca_certificate(ca),
        };
        // The files are parsed when a server is built: build one now, so that a bad
        // file is an error at start-up, not on the first connection.
        tonic::transport::Server::builder()
            .tls_config(settings.server.clone())
            .map_err(|e| TlsError::Invalid(super::error::describe_error(&e)))?;
        Ok(settings)
    }

    /// What the environment asks for: None without `RTD_USE_TLS=1`.
    pub fn from_env() -> Result<Option<Self>, TlsError> {
        if !matches!(std::env::var(USE_TLS_ENV).as_deref(), Ok("1" | "true" | "True")) {
            return Ok(None);
        }
        let read = |var: &'static str| {
            let path = std::env::var_os(var).filter(|p| !p.is_empty()).ok_or(TlsError::Missing(var))?;
            std::fs::read(&path).map_err(|e| TlsError::Unreadable { var, path: path.into(), reason: e.to_string() })
        };
        Self::from_pem(&read(SERVER_CERT_ENV)?, &read(SERVER_KEY_ENV)?, &read(CA_CERT_ENV)?).map(Some)
    }
}

/// This process's TLS settings, read once. A process checks them at start
/// (`rtd start`, `rtd.init()`, a worker connecting), so the error is reported there.
pub fn process() -> &'static Result<Option<TlsSettings>, TlsError> {
    static PROCESS: OnceLock<Result<Option<TlsSettings>, TlsError>> = OnceLock::new();
    PROCESS.get_or_init(TlsSettings::from_env)
}
