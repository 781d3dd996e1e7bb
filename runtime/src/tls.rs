//! TLS on the client port and the peer port (rustls with the ring provider), from PEM files as
//! Redis takes them: a certificate chain, its private key, and the CA that signs the other
//! side's certificates. On the peer port both sides present a certificate the CA signed and
//! verify the other's (etcd's `--peer-client-cert-auth`); a caller also checks that the peer's
//! certificate names the IP address it dialled.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A byte stream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Whether clients must present a certificate the CA signed (Redis's `tls-auth-clients`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    Required,
    Optional,
    None,
}

/// The PEM files of one node.
#[derive(Clone, Debug)]
pub struct TlsFiles<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub ca: &'a Path,
}

/// ring, not the default aws-lc-rs: aws-lc-rs needs cmake and minutes more of C to build.
/// ring offers no post-quantum key exchange (hence its deprecation notice in rustls 0.23.48).
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no certificate", path.display()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: not a PEM private key file: {e}", path.display()))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for c in certs(path)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

fn server_config(files: &TlsFiles, auth: ClientAuth) -> Result<ServerConfig, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Required | ClientAuth::Optional => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots(files.ca)?, provider());
            let verifier = if auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier.build().map_err(|e| format!("{}: {e}", files.ca.display()))?,
            )
        }
    };
    builder.with_single_cert(certs(files.cert)?, key(files.key)?).map_err(|e| {
        format!(
            "{} and {} do not make a usable certificate and key: {e}",
            files.cert.display(),
            files.key.display()
        )
    })
}

/// The client port's TLS.
#[derive(Clone)]
pub struct ClientTls(TlsAcceptor);

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls(..)")
    }
}

impl ClientTls {
    pub fn new(files: &TlsFiles, auth: ClientAuth) -> Result<ClientTls, String> {
        Ok(ClientTls(TlsAcceptor::from(Arc::new(server_config(files, auth)?))))
    }

    /// Wraps a client's connection.
    pub async fn accept<S: Io + 'static>(&self, stream: S) -> Result<Box<dyn Io>, String> {
        accept(&self.0, stream).await
    }
}

/// The peer port's TLS: both ends present their certificate and verify the other's.
#[derive(Clone)]
pub struct PeerTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls(..)")
    }
}

impl PeerTls {
    pub fn new(files: &TlsFiles) -> Result<PeerTls, String> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(files, ClientAuth::Required)?));
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots(files.ca)?)
            .with_client_auth_cert(certs(files.cert)?, key(files.key)?)
            .map_err(|e| format!("{}: {e}", files.cert.display()))?;
        Ok(PeerTls { acceptor, connector: TlsConnector::from(Arc::new(client)) })
    }

    /// Wraps a connection this node opened to `addr`.
    pub async fn connect<S: Io + 'static>(
        &self,
        addr: std::net::SocketAddr,
        stream: S,
    ) -> Result<Box<dyn Io>, String> {
        let name = ServerName::IpAddress(addr.ip().into());
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connector.connect(name, stream)).await {
            Ok(Ok(s)) => Ok(Box::new(s)),
            Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
            Err(_) => Err(format!("TLS handshake took more than {HANDSHAKE_TIMEOUT:?}")),
        }
    }

    /// Wraps a connection a peer opened to this node.
    pub async fn accept<S: Io + 'static>(&self, stream: S) -> Result<Box<dyn Io>, String> {
        accept(&self.acceptor, stream).await
    }
}

/// The server side of a TLS handshake, within `HANDSHAKE_TIMEOUT`.
async fn accept<S: Io + 'static>(acceptor: &TlsAcceptor, stream: S) -> Result<Box<dyn Io>, String> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Ok(Box::new(s)),
        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
        Err(_) => Err(format!("TLS handshake took more than {HANDSHAKE_TIMEOUT:?}")),
    }
}
