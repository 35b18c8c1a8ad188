//! TLS through rustls: TLS 1.3 and 1.2 only, certificates from PEM files, reloadable without dropping
//! connections, and a self-signed development certificate on request.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::data_dir::write_private;

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.cert_file {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("tls.key_file {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("tls: certificate and key do not form a usable pair: {0}")]
    Config(#[from] rustls::Error),
    #[error("generating the development certificate: {0}")]
    Generate(String),
}

/// The current TLS configuration, swapped atomically on reload: connections already established keep
/// the configuration they were accepted with, new ones get the new certificate.
#[derive(Debug)]
pub struct TlsReloader {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsReloader {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let config = server_config(cert, key)?;
        Ok(Self { cert: cert.to_owned(), key: key.to_owned(), current: RwLock::new(Arc::new(config)) })
    }

    /// The configuration for the next connection.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the files again. On failure the old certificate stays in service.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Arc::new(server_config(&self.cert, &self.key)?);
        match self.current.write() {
            Ok(mut guard) => *guard = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
        Ok(())
    }
}

/// A rustls server configuration allowing only TLS 1.3 and 1.2 (ASVS 12.1.1), with the ring provider's
/// default suites: all AEAD with forward secrecy, no CBC, no RSA key exchange.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Cert { path: cert.to_owned(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Cert { path: cert.to_owned(), reason: "no certificate in the file".into() });
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key { path: key.to_owned(), reason: e.to_string() })?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server's order wins (strongest first: AES-256-GCM, then AES-128-GCM, then ChaCha20), so a
    // client cannot steer the connection to the weakest suite both sides share (ASVS 12.1.2).
    config.ignore_client_order = true;
    Ok(config)
}

/// The development certificate for `localhost`, `127.0.0.1` and `::1` in `DATA_DIR/dev-tls/`,
/// generated on first use. Returns the certificate and key paths.
pub fn dev_certificate(data_dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    let dir = data_dir.join("dev-tls");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let generate = || -> Result<(), String> {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
        let certified = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&cert);
        let _ = std::fs::remove_file(&key);
        write_private(&key, certified.key_pair.serialize_pem().as_bytes()).map_err(|e| e.to_string())?;
        write_private(&cert, certified.cert.pem().as_bytes()).map_err(|e| e.to_string())?;
        Ok(())
    };
    generate().map_err(TlsError::Generate)?;
    tracing::debug!(path = %cert.display(), "generated self-signed development certificate");
    Ok((cert, key))
}
