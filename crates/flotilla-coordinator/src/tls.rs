//! TLS: loading PEM files into a rustls server configuration (ring provider, certificates checked
//! as clients would check them), and accept loops that complete handshakes concurrently so one slow or hostile
//! peer never blocks the listener.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::error::CoordinatorError;
use crate::metrics::Metrics;

mod cert_check;
mod offer;

pub use offer::TlsOffer;
pub(crate) use offer::offer;

/// Longest time a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Accepted connections waiting to be picked up by the server.
const ACCEPT_QUEUE: usize = 256;

/// `notAfter` of the first certificate in the PEM file `cert`, Unix seconds (for
/// `flotilla_tls_cert_expiry_timestamp_seconds`; `None` if unreadable).
pub(crate) fn cert_not_after(cert: &Path) -> Option<i64> {
    let pem = std::fs::read(cert).ok()?;
    let first = CertificateDer::pem_slice_iter(&pem).next()?.ok()?;
    cert_check::not_after(&first)
}

/// A rustls server configuration (ring provider) from PEM files, advertising `alpn`.
pub(crate) fn server_config(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, CoordinatorError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| CoordinatorError::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CoordinatorError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(CoordinatorError::Tls(format!(
            "{}: no certificate found",
            cert.display()
        )));
    }
    // Clients would refuse these at every handshake, each with an obscure error: refuse at start.
    cert_check::check_server_cert(cert, &certs[0], std::time::SystemTime::now())
        .map_err(CoordinatorError::Tls)?;
    let key_path = key;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| CoordinatorError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(offer::PROTOCOL_VERSIONS)
        .map_err(|e| CoordinatorError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => CoordinatorError::Tls(format!(
                "--tls-key {} does not belong to --tls-cert {} (their public keys differ); give the key \
                 that was made together with the certificate",
                key_path.display(),
                cert.display()
            )),
            other => CoordinatorError::Tls(format!("--tls-cert {} with --tls-key {}: {other}", cert.display(), key_path.display())),
        })?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Accepts TCP connections on `listener`, completes the TLS handshake (if `tls`) on its own task per
/// connection, and queues established connections. Failed handshakes are counted and dropped.
pub(crate) fn spawn_tls_accept(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    metrics: Arc<Metrics>,
) -> (
    mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    let acceptor = TlsAcceptor::from(tls);
    let handle = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if tx.is_closed() {
                return;
            }
            let acceptor = acceptor.clone();
            let conn_tx = tx.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = conn_tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => {
                        Metrics::inc(&metrics.tls_handshake_failures);
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        Metrics::inc(&metrics.tls_handshake_failures);
                        tracing::debug!(%peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    (rx, handle)
}

/// Plain-TCP counterpart of [`spawn_tls_accept`] (insecure mode).
pub(crate) fn spawn_plain_accept(
    listener: TcpListener,
) -> (
    mpsc::Receiver<(TcpStream, SocketAddr)>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    let handle = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    if tx.send((tcp, peer)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    (rx, handle)
}

/// An [`axum::serve::Listener`] fed by one of the accept loops above.
pub(crate) struct ChannelListener<IO> {
    pub(crate) rx: mpsc::Receiver<(IO, SocketAddr)>,
    pub(crate) addr: SocketAddr,
}

impl<IO> axum::serve::Listener for ChannelListener<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Io = IO;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (IO, SocketAddr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}
