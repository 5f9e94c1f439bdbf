//! TLS for the app: the CA it trusts as a client (Redis, ClickHouse; PostgreSQL URLs name theirs
//! with `sslrootcert`) and the HTTPS listener it serves on when given a certificate and key.
//!
//! The listener completes TLS handshakes off the accept path: each handshake runs in its own
//! task with a timeout, bounded in number, so a slow or silent client never holds up others.
//!
//! With a client CA (the edge's certificate is checked, see `crate::client`), the listener asks
//! every client for a certificate but does not require one: a certificate that is presented
//! must be signed by that CA and valid, or the handshake fails; clients without one (browsers,
//! the ingress, Prometheus) connect as before.
//!
//! The serving certificate is re-read when its files change (cert-manager or the operator
//! renew it; the kubelet swaps the mounted Secret's files): new handshakes present the new one,
//! without a restart. A pair that fails to load is logged and the previous one kept.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Handshakes in flight at once; further connections wait in the kernel's accept queue.
const MAX_HANDSHAKES: usize = 256;
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes ring the process' rustls provider (once; later calls are no-ops).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads a PEM file (a CA bundle, for clients that take bytes).
pub fn read_pem(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not PEM", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
    Ok(bytes)
}

/// How often the serving certificate's files are checked for a change.
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);

fn certified_key(cert: &Path, key: &Path) -> anyhow::Result<(CertifiedKey, Vec<u8>)> {
    let cert_pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let key_pem =
        std::fs::read(key).with_context(|| format!("reading the private key {}", key.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", cert.display());
    let der = PrivateKeyDer::from_pem_slice(&key_pem)
        .with_context(|| format!("{} is not a PEM private key", key.display()))?;
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&der).context("unsupported private key")?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match()
        .context("certificate and key do not match")?;
    let mut stamp = cert_pem;
    stamp.extend_from_slice(&key_pem);
    Ok((ck, stamp))
}

/// The current serving certificate; a background task swaps it when the files change.
#[derive(Debug)]
struct Reloading {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// The serving configuration from a PEM certificate chain and key, re-read every
/// [`RELOAD_EVERY`] (must be called inside a Tokio runtime).
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    server_config_reloading(cert, key, RELOAD_EVERY, None, None)
}

/// Verifies client certificates against the CA in `path` when one is presented; a client
/// without one is let in (it is then simply not the edge).
fn optional_client_auth(
    path: &Path,
) -> anyhow::Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let pem = read_pem(path)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.with_context(|| format!("{} is not PEM", path.display()))?)
            .with_context(|| format!("{} holds an unusable CA certificate", path.display()))?;
    }
    rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .with_context(|| format!("client certificate verifier from {}", path.display()))
}

/// [`server_config`] with a chosen reload interval; each change seen is counted in
/// `ladder_config_reloads_total{source="tls_certificate"}` when `metrics` is given. With
/// `client_ca`, client certificates are verified against it (and optional).
pub fn server_config_reloading(
    cert: &Path,
    key: &Path,
    every: Duration,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    client_ca: Option<&Path>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    install_crypto_provider();
    let verifier = client_ca.map(optional_client_auth).transpose()?;
    let (ck, mut stamp) = certified_key(cert, key)?;
    let resolver = Arc::new(Reloading {
        current: RwLock::new(Arc::new(ck)),
    });
    let (weak, cert, key): (_, PathBuf, PathBuf) =
        (Arc::downgrade(&resolver), cert.to_owned(), key.to_owned());
    tokio::spawn(async move {
        // The files of the last pair refused, so a broken pair is reported once.
        let mut refused: Vec<u8> = Vec::new();
        loop {
            tokio::time::sleep(every).await;
            let Some(r) = weak.upgrade() else { return };
            let count = |applied| {
                if let Some(m) = &metrics {
                    m.reloaded("tls_certificate", applied);
                }
            };
            match certified_key(&cert, &key) {
                Ok((_, s)) if s == stamp => {}
                Ok((ck, s)) => {
                    *r.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ck);
                    stamp = s;
                    count(true);
                    tracing::info!(cert = %cert.display(), "serving certificate reloaded");
                }
                Err(err) => {
                    // Counted once per broken pair, not once per poll.
                    let seen = std::fs::read(&cert)
                        .into_iter()
                        .chain(std::fs::read(&key))
                        .flatten()
                        .collect::<Vec<u8>>();
                    if seen != refused {
                        refused = seen;
                        count(false);
                        tracing::warn!(error = %format!("{err:#}"), "serving certificate not reloaded; keeping the current one")
                    }
                }
            }
        }
    });
    let builder = rustls::ServerConfig::builder();
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A listener whose connections are TLS streams, for `axum::serve`.
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(err) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { local, ready, task })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task only ends when the listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
