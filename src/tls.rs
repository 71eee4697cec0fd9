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

use std::path::Path;
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

/// Failed handshakes are logged at WARN at most this often (the others at DEBUG, counted).
const HANDSHAKE_WARN_EVERY: Duration = Duration::from_secs(1);

/// Lets one event through per interval; counts those held back.
struct Throttle {
    every: Duration,
    next: std::sync::Mutex<Option<std::time::Instant>>,
    suppressed: std::sync::atomic::AtomicU64,
}

impl Throttle {
    fn new(every: Duration) -> Self {
        Throttle {
            every,
            next: std::sync::Mutex::new(None),
            suppressed: Default::default(),
        }
    }

    /// `Some(n)` when this event may be logged (`n` held back since the last one), else `None`.
    fn admit(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let now = std::time::Instant::now();
        let mut next = self.next.lock().expect("throttle lock");
        if next.is_some_and(|n| now < n) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *next = Some(now + self.every);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

pub use crate::config::TlsFiles;

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

/// Every PEM certificate in a file; a file without one is an error.
fn pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate in the file".into());
    }
    Ok(certs)
}

/// Builds a server configuration from the files.
pub fn load(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let certs = pem_certs(&files.cert).map_err(|e| file_err("--tls-cert", &files.cert, e))?;
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
            for cert in pem_certs(ca).map_err(|e| file_err("--tls-client-ca", ca, e))? {
                roots
                    .add(cert)
                    .map_err(|e| file_err("--tls-client-ca", ca, e))?;
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
    let warnings = Arc::new(Throttle::new(HANDSHAKE_WARN_EVERY));
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
            let warnings = warnings.clone();
            handshakes.spawn(async move {
                let _slot = slot;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    // Why a client was refused is visible only here (e.g. a v1 client
                    // certificate, an unknown CA): WARN, at most one line per interval.
                    Ok(Err(e)) => {
                        let error = handshake_error(&e);
                        match warnings.admit() {
                            Some(suppressed) => tracing::warn!(%peer, %error, suppressed,
                                "TLS handshake failed"),
                            None => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        }
                    }
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Why a handshake failed, in words an operator can act on. rustls reports a refused client
/// certificate as e.g. `invalid peer certificate: Other(OtherError(UnsupportedCertVersion))`:
/// the cause is named here, with the command that checks the files.
pub fn handshake_error(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(tls) => describe_tls_error(tls),
        None => e.to_string(),
    }
}

fn describe_tls_error(e: &rustls::Error) -> String {
    use rustls::{CertificateError as C, Error as E};
    const CHECK: &str = "check the CA with `orascale check --tls-client-ca FILE` and the \
                         client's certificate with `openssl x509 -noout -text -in FILE`";
    match e {
        E::NoCertificatesPresented => "the client presented no certificate, and \
            --tls-client-ca requires one (mTLS): give KEDA tlsClientCert and tlsClientKey in a \
            TriggerAuthentication"
            .into(),
        E::InvalidCertificate(c) => {
            let why = match c {
                C::UnknownIssuer => {
                    "the client certificate is not signed by a CA in --tls-client-ca".to_string()
                }
                C::Expired | C::ExpiredContext { .. } => {
                    "the client certificate has expired".to_string()
                }
                C::NotValidYet | C::NotValidYetContext { .. } => {
                    "the client certificate is not valid yet (a clock skew?)".to_string()
                }
                C::BadEncoding => "the client certificate is not valid DER".to_string(),
                C::BadSignature => "the client certificate's signature does not verify".into(),
                C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                    "the client certificate is not for client authentication (its \
                     extendedKeyUsage lacks clientAuth)"
                        .to_string()
                }
                C::Revoked => "the client certificate is revoked".to_string(),
                // webpki's own error is behind an opaque `OtherError`, and webpki is not our
                // dependency: its Debug name is what identifies it.
                C::Other(o) if format!("{o:?}").contains("UnsupportedCertVersion") => {
                    "the client certificate is X.509 v1: rustls accepts v3 only (`openssl x509 \
                     -req` makes v1 unless given extensions, e.g. -extfile with \
                     extendedKeyUsage=clientAuth)"
                        .to_string()
                }
                other => format!("the client certificate was refused ({other:?})"),
            };
            format!("{why}; {CHECK}")
        }
        E::NoApplicationProtocol => {
            "the client offered no ALPN protocol this server speaks (h2)".into()
        }
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => "the client does not speak \
            TLS (plaintext gRPC on a TLS port?): connect with TLS (KEDA: caCert, or enableTLS)"
            .into(),
        E::AlertReceived(alert) => format!(
            "the client refused the server's certificate ({alert:?}): check it with \
             `orascale check --tls-cert FILE --tls-key FILE` and that the client trusts its CA"
        ),
        other => other.to_string(),
    }
}

/// One finding of [`inspect`]: what was checked and its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct FileCheck {
    pub what: String,
    pub outcome: Result<String, String>,
}

/// Checks the TLS files the way a client will judge them, one finding each, for
/// `orascale check`: the certificate chain parses, its leaf is X.509 v3 (rustls refuses v1,
/// which `openssl x509 -req` makes without extensions) and within its validity; the key matches
/// it; each client CA is a v3 CA certificate within its validity.
pub fn inspect(files: &TlsFiles) -> Vec<FileCheck> {
    let mut out = Vec::new();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut push = |what: String, outcome: Result<String, String>| {
        out.push(FileCheck { what, outcome });
    };
    let label = format!("--tls-cert {}", files.cert.display());
    let certs = match pem_certs(&files.cert) {
        Ok(c) => {
            push(label, describe_cert(&c[0], now, false));
            Some(c)
        }
        Err(e) => {
            push(label, Err(e));
            None
        }
    };
    let label = format!("--tls-key {}", files.key.display());
    match (PrivateKeyDer::from_pem_file(&files.key), certs) {
        (Err(e), _) => push(label, Err(e.to_string())),
        (Ok(_), None) => push(
            label,
            Err("not checked: the certificate did not load".into()),
        ),
        (Ok(key), Some(certs)) => {
            let provider = rustls::crypto::ring::default_provider();
            let outcome = provider
                .key_provider
                .load_private_key(key)
                .map_err(|e| format!("cannot use the key: {e}"))
                .and_then(
                    |k| match rustls::sign::CertifiedKey::new(certs, k).keys_match() {
                        Ok(()) => Ok("matches the certificate".to_string()),
                        Err(rustls::Error::InconsistentKeys(
                            rustls::InconsistentKeys::KeyMismatch,
                        )) => Err("does not match the certificate's public key".to_string()),
                        Err(e) => Err(format!("cannot compare with the certificate: {e}")),
                    },
                );
            push(label, outcome);
        }
    }
    if let Some(ca) = &files.client_ca {
        let label = format!("--tls-client-ca {}", ca.display());
        match pem_certs(ca) {
            Err(e) => push(label, Err(e)),
            Ok(cas) => {
                for (i, der) in cas.iter().enumerate() {
                    push(format!("{label} #{}", i + 1), describe_cert(der, now, true));
                }
            }
        }
    }
    out
}

/// A certificate's subject and expiry, or what makes clients refuse it.
fn describe_cert(der: &CertificateDer<'_>, now: i64, must_be_ca: bool) -> Result<String, String> {
    use x509_parser::prelude::{FromDer, X509Certificate, X509Version};
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    if cert.version() != X509Version::V3 {
        return Err(format!(
            "an X.509 v{} certificate: TLS clients and rustls accept only v3; re-issue it with extensions (e.g. `openssl x509 -req … -extfile` with subjectAltName)",
            cert.version().0 + 1
        ));
    }
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    if now < not_before {
        return Err(format!("not valid before {}", cert.validity().not_before));
    }
    if now > not_after {
        return Err(format!("expired on {}", cert.validity().not_after));
    }
    if must_be_ca && !cert.is_ca() {
        return Err("not a CA certificate (basicConstraints CA:TRUE is missing)".into());
    }
    let days = (not_after - now) / 86_400;
    let soon = if days < 14 { " — renew soon" } else { "" };
    Ok(format!(
        "v3, {}, expires in {days} days ({}){soon}",
        cert.subject(),
        cert.validity().not_after
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(e: rustls::Error) -> String {
        handshake_error(&std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    #[derive(Debug)]
    struct UnsupportedCertVersion;
    impl std::fmt::Display for UnsupportedCertVersion {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("UnsupportedCertVersion")
        }
    }
    impl std::error::Error for UnsupportedCertVersion {}

    #[test]
    fn refusals_are_named_in_words() {
        use rustls::{CertificateError as C, Error as E, OtherError};
        let v1 = words(E::InvalidCertificate(C::Other(OtherError(Arc::new(
            UnsupportedCertVersion,
        )))));
        assert!(
            v1.contains("X.509 v1: rustls accepts v3 only")
                && v1.contains("orascale check --tls-client-ca"),
            "{v1}"
        );
        assert!(!v1.contains("OtherError"), "{v1}");
        for (e, want) in [
            (
                E::InvalidCertificate(C::UnknownIssuer),
                "not signed by a CA",
            ),
            (E::InvalidCertificate(C::Expired), "has expired"),
            (E::NoCertificatesPresented, "presented no certificate"),
            (E::NoApplicationProtocol, "ALPN"),
        ] {
            let w = words(e);
            assert!(w.contains(want), "{w}");
        }
        let plain = handshake_error(&std::io::Error::other("connection reset"));
        assert_eq!(plain, "connection reset");
    }
}
