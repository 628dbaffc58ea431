//! TLS on the gRPC port, and mTLS: the certificate and key come from files that are read again
//! when they change (cert-manager and Kubernetes Secret mounts replace them through a symlink
//! swap), so a rotation needs no restart and drops no connection: a handshake uses the
//! certificate of its moment, and an open connection keeps the one it began with.
//!
//! With a client CA, a client must present a certificate that CA signed; with an allow-list of
//! names, one of them must be among the certificate's subject alternative names (DNS names or IP
//! addresses), or the connection is closed after the handshake.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A handshake not done by then is abandoned: a client that opens and says nothing holds a
/// connection only that long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the certificate and key files are looked at for a change.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Where the gRPC port's TLS comes from (`--grpc-tls-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
    /// With a client CA: a client certificate must name one of these (DNS or IP SAN).
    pub client_sans: Vec<String>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: no certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA: {0}")]
    ClientCa(String),
    #[error("--grpc-tls-client-san {0:?} is neither a DNS name nor an IP address")]
    BadName(String),
}

/// The TLS side of the gRPC port.
pub struct Tls {
    acceptor: TlsAcceptor,
    /// The admin port's HTTPS (`--http-tls`): the same certificate, HTTP/1.1, no client
    /// certificate asked (probes and scrapers).
    https: TlsAcceptor,
    certificate: Arc<ReloadingCertificate>,
    allowed: Vec<ServerName<'static>>,
}

impl Tls {
    pub fn new(settings: &TlsSettings) -> Result<Arc<Tls>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certificate = Arc::new(ReloadingCertificate::load(
            &settings.cert,
            &settings.key,
            &provider,
        )?);
        let mut https = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&certificate) as _);
        https.alpn_protocols = vec![b"http/1.1".to_vec()];
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?;
        let builder = match &settings.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(ca)? {
                    roots
                        .add(cert)
                        .map_err(|e| TlsError::ClientCa(e.to_string()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsError::ClientCa(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(Arc::clone(&certificate) as _);
        // gRPC is HTTP/2; gRPC clients (grpc-go among them) require it agreed in the handshake.
        config.alpn_protocols = vec![b"h2".to_vec()];
        let allowed = settings
            .client_sans
            .iter()
            .map(|name| {
                ServerName::try_from(name.clone()).map_err(|_| TlsError::BadName(name.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Arc::new(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            https: TlsAcceptor::from(Arc::new(https)),
            certificate,
            allowed,
        }))
    }

    /// The handshake on `io`, then the client's name checked against the allow-list.
    pub async fn accept<IO>(&self, io: IO) -> io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(io))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake too slow"))??;
        if !self.allowed.is_empty() && !self.client_allowed(&stream) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the client certificate names none of --grpc-tls-client-san",
            ));
        }
        Ok(stream)
    }

    /// The admin port's HTTPS acceptor: the same certificate, reloaded alike.
    pub fn https(&self) -> TlsAcceptor {
        self.https.clone()
    }

    fn client_allowed<IO>(&self, stream: &TlsStream<IO>) -> bool {
        let Some(cert) = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
        else {
            return false;
        };
        let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
            return false;
        };
        self.allowed
            .iter()
            .any(|name| cert.verify_is_valid_for_subject_name(name).is_ok())
    }

    /// Reads the certificate and key again whenever their files change, until the process
    /// ends; a pair that does not load is logged and the one in use stays.
    pub fn watch(self: &Arc<Self>) {
        let certificate = Arc::clone(&self.certificate);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(WATCH_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let certificate = Arc::clone(&certificate);
                // File reads off the runtime's workers.
                let _ = tokio::task::spawn_blocking(move || certificate.reload_if_changed()).await;
            }
        });
    }
}

/// The certificate in use, and how its files looked when it was read.
struct ReloadingCertificate {
    current: ArcSwap<CertifiedKey>,
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    seen: std::sync::Mutex<Option<Fingerprint>>,
}

/// Size, modification time and inode of both files, symlinks followed.
type Fingerprint = [(u64, Option<std::time::SystemTime>, u64); 2];

fn fingerprint(cert: &Path, key: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let look = |path: &Path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.len(), meta.modified().ok(), meta.ino()))
    };
    Some([look(cert)?, look(key)?])
}

impl ReloadingCertificate {
    fn load(
        cert: &Path,
        key: &Path,
        provider: &Arc<CryptoProvider>,
    ) -> Result<ReloadingCertificate, TlsError> {
        let seen = fingerprint(cert, key);
        let pair = certified_key(cert, key, provider)?;
        Ok(ReloadingCertificate {
            current: ArcSwap::from_pointee(pair),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider: Arc::clone(provider),
            seen: std::sync::Mutex::new(seen),
        })
    }

    fn reload_if_changed(&self) {
        let now = fingerprint(&self.cert, &self.key);
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        if now.is_none() || *seen == now {
            return;
        }
        match certified_key(&self.cert, &self.key, &self.provider) {
            Ok(pair) => {
                self.current.store(Arc::new(pair));
                *seen = now;
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            // Half-written, or a key that does not match yet: try again at the next change.
            Err(error) => {
                tracing::warn!(%error, "TLS certificate not reloaded; the one in use stays")
            }
        }
    }
}

impl std::fmt::Debug for ReloadingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCertificate")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |e: rustls_pki_types::pem::Error| TlsError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = certificates(cert)?;
    let key_error = |reason: String| TlsError::Key {
        path: key.to_path_buf(),
        reason,
    };
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| key_error(e.to_string()))?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| key_error(e.to_string()))?;
    let pair = CertifiedKey::new(chain, signing);
    // A key that does not belong to the certificate is refused here, not at a handshake.
    pair.keys_match().map_err(|e| key_error(e.to_string()))?;
    Ok(pair)
}
