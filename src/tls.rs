//! TLS for the gRPC server: rustls (ring), TLS 1.2 and 1.3, ALPN `h2` (KEDA's gRPC client
//! refuses servers without it), optional mTLS against a client CA.
//!
//! Certificates are re-read when their files change (cert-manager rotates them in place): a
//! watcher polls the files' modification times and swaps in a new `ServerConfig`; connections
//! already established keep the session they negotiated, so no stream is dropped. A reload that
//! fails (half-written files) keeps the previous configuration and logs why.
//!
//! Handshakes run in their own tasks with a time bound, so a slow or silent client cannot stall
//! the accept loop.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress at once, in all. A connection past it is closed at once: a flood
/// of connections that never finish their handshake holds at most this many tasks.
const MAX_HANDSHAKES: usize = 1024;
/// Handshakes in progress from one IP address: one noisy or hostile peer cannot take the
/// whole budget from KEDA.
const MAX_HANDSHAKES_PER_PEER: usize = 64;

/// Counts handshakes in progress, in all and per peer address.
#[derive(Default)]
struct Handshakes {
    per_peer: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One handshake's place in [`Handshakes`], given back when dropped.
struct HandshakeSlot {
    all: Arc<Handshakes>,
    peer: std::net::IpAddr,
}

impl Handshakes {
    fn admit(self: &Arc<Self>, peer: std::net::IpAddr) -> Option<HandshakeSlot> {
        let mut map = self.per_peer.lock().expect("handshake lock");
        let total: usize = map.values().sum();
        let mine = map.get(&peer).copied().unwrap_or(0);
        if total >= MAX_HANDSHAKES || mine >= MAX_HANDSHAKES_PER_PEER {
            return None;
        }
        *map.entry(peer).or_insert(0) += 1;
        Some(HandshakeSlot {
            all: self.clone(),
            peer,
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut map = self.all.per_peer.lock().expect("handshake lock");
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// The files the server's TLS is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With it, clients must present a certificate signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {message}")]
    File {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_err(what: &'static str, path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        what,
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Installs ring as the process's rustls provider (the only one in the dependency graph).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds a server configuration from the files.
pub fn load(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_err("--tls-cert", &files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err("--tls-cert", &files.cert, e))?;
    if certs.is_empty() {
        return Err(file_err(
            "--tls-cert",
            &files.cert,
            "no PEM certificate in the file",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| file_err("--tls-key", &files.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(ca)
                .map_err(|e| file_err("--tls-client-ca", ca, e))?;
            for cert in cas {
                let cert = cert.map_err(|e| file_err("--tls-client-ca", ca, e))?;
                roots
                    .add(cert)
                    .map_err(|e| file_err("--tls-client-ca", ca, e))?;
            }
            if roots.is_empty() {
                return Err(file_err(
                    "--tls-client-ca",
                    ca,
                    "no PEM certificate in the file",
                ));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| file_err("--tls-client-ca", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        file_err(
            "--tls-key",
            &files.key,
            format!("does not match the certificate: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The server configuration in force, swapped when the files change.
pub struct Reloading {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    stamp: RwLock<Vec<Option<SystemTime>>>,
}

impl Reloading {
    pub fn new(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let config = load(&files)?;
        let stamp = stamps(&files);
        Ok(Arc::new(Reloading {
            files,
            current: RwLock::new(Arc::new(config)),
            stamp: RwLock::new(stamp),
        }))
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().expect("tls lock").clone())
    }

    /// Re-reads the files if their modification times changed; true when a new config is in force.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamps(&self.files);
        if *self.stamp.read().expect("tls lock") == now {
            return false;
        }
        match load(&self.files) {
            Ok(config) => {
                *self.current.write().expect("tls lock") = Arc::new(config);
                *self.stamp.write().expect("tls lock") = now;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificates reloaded");
                true
            }
            Err(e) => {
                // Possibly mid-rotation; keep serving with what we have and try again later.
                tracing::warn!(error = %e, "TLS files changed but cannot be loaded; keeping the previous certificates");
                false
            }
        }
    }

    /// Polls the files every `every` until `shutdown`.
    pub fn watch(
        self: Arc<Self>,
        every: Duration,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) {
        tracker.spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticks.tick() => {
                        let me = self.clone();
                        let _ = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
                    }
                }
            }
        });
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    .collect()
}

/// Accepts TCP connections and yields those that complete a TLS handshake.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<Reloading>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    let handshakes = tracker.clone();
    let in_progress = Arc::new(Handshakes::default());
    tracker.spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(slot) = in_progress.admit(peer.ip()) else {
                tracing::debug!(%peer, "too many TLS handshakes in progress; connection closed");
                continue; // dropping `tcp` closes it
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            handshakes.spawn(async move {
                let _slot = slot;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
