//! HTTPS on the registry listener: rustls with HTTP/2 and HTTP/1.1 by ALPN,
//! optional client certificates, and a certificate that can be swapped on
//! SIGHUP without touching open connections.

use std::sync::Arc;

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Why the TLS settings cannot be used; each names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: cert_file and key_file go together")]
    Incomplete,
    /// A file that cannot be read or holds nothing usable.
    #[error("tls.{key} {}: {message}", path.display())]
    File {
        key: &'static str,
        path: std::path::PathBuf,
        message: String,
    },
    #[error("tls: {0}")]
    Protocol(rustls::Error),
    #[error("tls: the certificate and key do not go together: {0}")]
    Mismatch(rustls::Error),
}

fn file_error(key: &'static str, path: &std::path::Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        key,
        path: path.to_owned(),
        message: e.to_string(),
    }
}

pub struct Tls {
    acceptor: RwLock<TlsAcceptor>,
}

impl Tls {
    /// None when TLS is not configured.
    pub fn load(config: &TlsConfig) -> Result<Option<Arc<Tls>>, TlsError> {
        if !config.enabled() {
            return Ok(None);
        }
        let acceptor = TlsAcceptor::from(Arc::new(server_config(config)?));
        Ok(Some(Arc::new(Tls {
            acceptor: RwLock::new(acceptor),
        })))
    }

    /// New connections use the new certificate; open ones keep theirs.
    pub fn reload(&self, config: &TlsConfig) -> Result<(), TlsError> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(config)?));
        *self.acceptor.write() = acceptor;
        Ok(())
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.read().clone()
    }
}

fn server_config(config: &TlsConfig) -> Result<rustls::ServerConfig, TlsError> {
    let (Some(cert_file), Some(key_file)) = (&config.cert_file, &config.key_file) else {
        return Err(TlsError::Incomplete);
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|i| i.collect())
        .map_err(|e| file_error("cert_file", cert_file, e))?;
    if certs.is_empty() {
        return Err(file_error("cert_file", cert_file, "no certificate"));
    }
    let key =
        PrivateKeyDer::from_pem_file(key_file).map_err(|e| file_error("key_file", key_file, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocol)?;
    let builder = match &config.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca_file)
                .map_err(|e| file_error("client_ca_file", ca_file, e))?
            {
                let cert = cert.map_err(|e| file_error("client_ca_file", ca_file, e))?;
                roots
                    .add(cert)
                    .map_err(|e| file_error("client_ca_file", ca_file, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| file_error("client_ca_file", ca_file, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder
        .with_single_cert(certs, key)
        .map_err(TlsError::Mismatch)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(server)
}
