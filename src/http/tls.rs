//! HTTPS on the registry listener: rustls with HTTP/2 and HTTP/1.1 by ALPN,
//! optional client certificates, and a certificate that can be swapped on
//! SIGHUP without touching open connections.

use std::sync::Arc;

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

pub struct Tls {
    acceptor: RwLock<TlsAcceptor>,
}

impl Tls {
    /// None when TLS is not configured.
    pub fn load(config: &TlsConfig) -> Result<Option<Arc<Tls>>, String> {
        if !config.enabled() {
            return Ok(None);
        }
        let acceptor = TlsAcceptor::from(Arc::new(server_config(config)?));
        Ok(Some(Arc::new(Tls {
            acceptor: RwLock::new(acceptor),
        })))
    }

    /// New connections use the new certificate; open ones keep theirs.
    pub fn reload(&self, config: &TlsConfig) -> Result<(), String> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(config)?));
        *self.acceptor.write() = acceptor;
        Ok(())
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.read().clone()
    }
}

fn server_config(config: &TlsConfig) -> Result<rustls::ServerConfig, String> {
    let (Some(cert_file), Some(key_file)) = (&config.cert_file, &config.key_file) else {
        return Err("tls: cert_file and key_file go together".into());
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|i| i.collect())
        .map_err(|e| format!("tls.cert_file {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert_file {}: no certificate",
            cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("tls.key_file {}: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match &config.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca_file)
                .map_err(|e| format!("tls.client_ca_file {}: {e}", ca_file.display()))?
            {
                let cert =
                    cert.map_err(|e| format!("tls.client_ca_file {}: {e}", ca_file.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("tls.client_ca_file {}: {e}", ca_file.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("tls.client_ca_file {}: {e}", ca_file.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls: the certificate and key do not go together: {e}"))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(server)
}
