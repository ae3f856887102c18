//! TLS for QUIC, rooted in one certificate authority per cluster.
//!
//! The CA lives in the registry (etcd for a cluster, the embedded database
//! for `fabric up`): the first host to start creates it, every later one
//! adopts it. At each start a host issues itself a certificate signed by the
//! CA, so hosts and clients need only the CA's certificate to trust any
//! member. Why the registry: whoever can write the registry already controls
//! the cluster (membership, job records), so it adds no new secret to
//! distribute, and hosts start with no certificate files to copy around.
//!
//! Host-to-host connections are mutual: a host presents its certificate as a
//! client too, and the server accepts peer-only requests only on connections
//! whose client certificate the CA signed. CLI clients present none; they
//! read the CA's certificate from `<data>/tls/ca.pem` (written by a host
//! that uses that data directory) or from etcd (`--etcd`).

use crate::registry::CaPem;
use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The name every host's certificate carries and clients expect.
pub const SERVER_NAME: &str = "localhost";

/// Where a data directory keeps the cluster CA's certificate for clients.
pub fn ca_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tls").join("ca.pem")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA's parameters: rebuilt identically to sign with a stored CA key.
fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "fabric cluster CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

/// A new cluster CA (proposed to the registry, which keeps the first).
pub fn new_ca() -> anyhow::Result<CaPem> {
    let key = KeyPair::generate().context("generating the CA key")?;
    let cert = ca_params()?.self_signed(&key).context("signing the CA certificate")?;
    Ok(CaPem { cert: cert.pem(), key: key.serialize_pem() })
}

/// A host's TLS identity: its certificate (signed by the cluster CA), its
/// key, and the CA certificate it trusts.
#[derive(Debug)]
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    ca: CertificateDer<'static>,
    ca_pem: String,
}

impl Identity {
    /// Issues a host certificate for `names` (DNS names or IP addresses,
    /// besides `localhost` and the loopback addresses) from `ca`.
    pub fn issue(ca: &CaPem, names: &[String]) -> anyhow::Result<Identity> {
        let ca_key = KeyPair::from_pem(&ca.key).context("the cluster CA key is malformed")?;
        let issuer = Issuer::new(ca_params()?, ca_key);
        let mut sans = vec![SERVER_NAME.to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        sans.extend(names.iter().filter(|n| !n.is_empty()).cloned());
        sans.sort();
        sans.dedup();
        let mut params = CertificateParams::new(sans)?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "fabric host");
        params.distinguished_name = name;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().context("generating the host key")?;
        let cert = params.signed_by(&key, &issuer).context("signing the host certificate")?;
        let ca_cert = CertificateDer::from_pem_slice(ca.cert.as_bytes()).context("the cluster CA is malformed")?;
        Ok(Identity {
            cert: cert.der().clone(),
            key: PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())?,
            ca: ca_cert,
            ca_pem: ca.cert.clone(),
        })
    }

    /// The CA certificate, PEM, for clients.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    fn roots(&self) -> anyhow::Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(roots)
    }

    /// QUIC server settings: this host's certificate; a client certificate
    /// is optional (CLI clients) but, when presented, must be the CA's.
    pub fn server_config(&self) -> anyhow::Result<quinn::ServerConfig> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider())
            .allow_unauthenticated()
            .build()?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())?;
        tls.alpn_protocols = vec![fabric_proto::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(transport()));
        Ok(config)
    }

    /// QUIC client settings for talking to peers: trusts the CA and presents
    /// this host's certificate.
    pub fn peer_client_config(&self) -> anyhow::Result<quinn::ClientConfig> {
        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(vec![self.cert.clone()], self.key.clone_key())?;
        quic_client(tls)
    }
}

fn quic_client(mut tls: rustls::ClientConfig) -> anyhow::Result<quinn::ClientConfig> {
    tls.alpn_protocols = vec![fabric_proto::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport()));
    Ok(config)
}

/// Transport settings for both ends of every connection. Many requests may
/// be in flight on one connection (a stream each). Path MTU discovery may
/// go up to jumbo frames (loopback and many data-centre networks carry
/// them): bulk object bytes then need several times fewer packets, each of
/// which costs a syscall share and an AEAD seal; where the path is smaller
/// the probes are lost and the MTU stays where it was.
fn transport() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(JUMBO_MTU);
    transport
        .max_concurrent_bidi_streams(4096u32.into())
        .keep_alive_interval(Some(std::time::Duration::from_secs(2)))
        .mtu_discovery_config(Some(mtu));
    transport
}

/// The largest UDP payload path MTU discovery tries.
const JUMBO_MTU: u16 = 8952;

/// QUIC client settings that trust the CA certificate `ca_pem`.
pub fn client_config_for(ca_pem: &str) -> anyhow::Result<quinn::ClientConfig> {
    let cert = CertificateDer::from_pem_slice(ca_pem.as_bytes()).context("the cluster CA certificate is malformed")?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    quic_client(tls)
}

/// QUIC client settings that trust the CA recorded in `data_dir`.
pub fn client_config(data_dir: &Path) -> anyhow::Result<quinn::ClientConfig> {
    let path = ca_path(data_dir);
    let pem = std::fs::read_to_string(&path).with_context(|| {
        format!("no cluster certificate at {} (is a fabric host running with this --data-dir?)", path.display())
    })?;
    client_config_for(&pem)
}
