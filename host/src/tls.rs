//! TLS for QUIC: a self-signed certificate made at a host's first start and
//! trusted by clients that share its data directory.
//!
//! The certificate is for `localhost` and 127.0.0.1; clients verify it
//! against the copy in `<data>/tls/cert.pem` (pinning, not a public CA). The
//! cluster CA with mutual TLS between hosts replaces this for multi-host use.

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The name clients expect in the host's certificate.
pub const SERVER_NAME: &str = "localhost";

/// Where a data directory keeps its certificate.
pub fn cert_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tls").join("cert.pem")
}

fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tls").join("key.pem")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The host's certificate and key, made on first use.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let (cert, key) = (cert_path(data_dir), key_path(data_dir));
    if !cert.exists() || !key.exists() {
        let made = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string(), "127.0.0.1".to_string()])
            .context("generating a certificate")?;
        std::fs::create_dir_all(cert.parent().unwrap_or(data_dir))?;
        crate::components::write_atomic(&key, made.signing_key.serialize_pem().as_bytes())?;
        crate::components::write_atomic(&cert, made.cert.pem().as_bytes())?;
    }
    let cert_der = CertificateDer::from_pem_file(&cert).with_context(|| format!("reading {}", cert.display()))?;
    let key_der = PrivateKeyDer::from_pem_file(&key).with_context(|| format!("reading {}", key.display()))?;
    Ok((cert_der, key_der))
}

/// QUIC server settings for a host.
pub fn server_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<quinn::ServerConfig> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    tls.alpn_protocols = vec![fabric_proto::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let transport = Arc::get_mut(&mut config.transport).context("fresh transport config is shared")?;
    transport.max_concurrent_bidi_streams(1024u32.into()).keep_alive_interval(Some(std::time::Duration::from_secs(5)));
    Ok(config)
}

/// QUIC client settings that trust the certificate in `data_dir`.
pub fn client_config(data_dir: &Path) -> anyhow::Result<quinn::ClientConfig> {
    let path = cert_path(data_dir);
    let cert = CertificateDer::from_pem_file(&path).with_context(|| {
        format!("no host certificate at {} (is `fabric up` running with this --data-dir?)", path.display())
    })?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![fabric_proto::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}
