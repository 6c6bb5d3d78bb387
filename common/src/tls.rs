//! The one place that chooses the crypto provider and builds TLS configurations.
//!
//! - Controller: a hand-built `rustls::ServerConfig` whose client verifier accepts *no*
//!   certificate (for enrollment and re-binding) or a certificate chaining to the fleet CA. The
//!   per-RPC check that a certificate is present and not revoked happens in the services, so a
//!   refusal carries a message an operator can act on instead of a bare TLS alert.
//! - Clients: tonic's `ClientTlsConfig` with the fleet CA, or, on first contact, a
//!   [`PinnedCaVerifier`] that trusts only the CA whose SHA-256 is in the join token.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Installs ring as the process-wide rustls provider. Call once at the top of `main`.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed (tests call this repeatedly).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// PEM input was unusable.
    #[error("{what}: {reason}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(String),
    /// tonic refused the endpoint.
    #[error("controller address {addr:?}: {source}")]
    Endpoint {
        /// Address as given.
        addr: String,
        /// tonic's reason.
        #[source]
        source: tonic::transport::Error,
    },
}

fn certs(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let v: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if v.is_empty() {
        return Err(TlsError::Pem {
            what,
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(v)
}

/// Root store holding the fleet CA.
pub fn fleet_roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs("fleet CA certificate", ca_pem)? {
        roots.add(c)?;
    }
    Ok(roots)
}

/// The controller's server configuration: server chain `[leaf, ca]`, client certificates
/// optional but, when presented, verified against the fleet CA; ALPN h2 for gRPC.
pub fn server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(fleet_roots(ca_pem)?),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut chain = certs("server certificate", cert_pem)?;
    chain.extend(certs("fleet CA certificate", ca_pem)?);
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: "server key",
        reason: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The controller's server certificate behind a lock, so that a running listener can be
/// given a renewed certificate ([`ReloadableServerCert::replace`]) without a restart: every
/// new handshake resolves the current one, established connections keep theirs.
#[derive(Debug)]
pub struct ReloadableServerCert {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl ReloadableServerCert {
    /// The chain `[leaf, ca]` and its key, checked to belong together.
    fn certified(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
        let mut chain = certs("server certificate", cert_pem)?;
        chain.extend(certs("fleet CA certificate", ca_pem)?);
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
            what: "server key",
            reason: e.to_string(),
        })?;
        let signing = provider().key_provider.load_private_key(key)?;
        let ck = rustls::sign::CertifiedKey::new(chain, signing);
        ck.keys_match()?;
        Ok(Arc::new(ck))
    }

    /// Starts with this certificate.
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(ReloadableServerCert {
            current: std::sync::RwLock::new(Self::certified(ca_pem, cert_pem, key_pem)?),
        }))
    }

    /// Serves this certificate from the next handshake on; a bad one is refused and the
    /// current one kept.
    pub fn replace(&self, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let ck = Self::certified(ca_pem, cert_pem, key_pem)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = ck;
        Ok(())
    }

    /// DER of the leaf served now.
    pub fn leaf_der(&self) -> Vec<u8> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).cert[0].to_vec()
    }
}

impl rustls::server::ResolvesServerCert for ReloadableServerCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// [`server_config`] whose certificate can be replaced while it serves.
pub fn server_config_reloadable(
    ca_pem: &str,
    cert: Arc<ReloadableServerCert>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(fleet_roots(ca_pem)?),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Limits of the controller's TLS listener, so that one peer cannot hurt the others.
///
/// Connections are in one of two pools. A connection is *anonymous* from `accept` until its
/// handshake ends with a client certificate chaining to the fleet CA; connections without one
/// (enrollment, re-binding, and anything hostile) stay anonymous for their whole life. The
/// anonymous pool is capped globally and per source address; when it is full the *oldest*
/// anonymous connection is closed to make room, so a flood can never keep a newcomer (an
/// operator's or agent's handshake takes milliseconds) from getting in. Connections that
/// presented a fleet certificate go to the *authenticated* pool, which has its own cap and
/// which anonymous peers can never fill. Every connection must complete its handshake within
/// `handshake_timeout` and send the HTTP/2 preface and its first request (a HEADERS frame)
/// within `first_request_timeout`, or it is closed.
#[derive(Clone, Debug)]
pub struct ListenerLimits {
    /// Deadline for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Deadline, after the handshake, for the HTTP/2 preface and the first request.
    pub first_request_timeout: Duration,
    /// Connections with a fleet client certificate (operators, agents).
    pub max_authenticated: usize,
    /// Connections still in their handshake or without a client certificate.
    pub max_anonymous: usize,
    /// Anonymous connections from one IP address.
    pub max_anonymous_per_address: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            handshake_timeout: Duration::from_secs(10),
            first_request_timeout: Duration::from_secs(10),
            max_authenticated: 8192,
            max_anonymous: 512,
            max_anonymous_per_address: 64,
        }
    }
}

/// Counters of connections the listener closed or refused (exported as metrics).
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Anonymous connections closed to make room for newer ones.
    pub evicted: AtomicU64,
    /// Handshakes that did not finish in time.
    pub handshake_timeouts: AtomicU64,
    /// Connections that sent no request in time after the handshake.
    pub first_request_timeouts: AtomicU64,
    /// Authenticated connections refused because that pool was full.
    pub refused_full: AtomicU64,
}

/// The pool of anonymous connections, oldest first.
///
/// When it is full, the oldest connection is closed only once it has had half its handshake
/// deadline ([`AnonymousPool::evictable_after`]); before that the listener stops accepting, and
/// new connections wait in the kernel's accept queue. Closing the oldest at once made a
/// reconnect storm feed on itself: 10,000 agents reconnecting to a 2-core controller keep
/// hundreds of handshakes in flight, the oldest are the ones about to finish, and each one
/// closed was an agent backing off for longer (25,289 closed while 10,000 agents connected, in
/// `certfleet-loadgen`). A client that holds handshakes open on purpose still loses its oldest
/// to newcomers after that half deadline, and one address never holds more than its share.
#[derive(Default)]
struct AnonymousPool {
    next_id: u64,
    /// Connection id (increasing with age) → source address, admission time and the eviction
    /// signal.
    by_age: BTreeMap<u64, (IpAddr, Instant, oneshot::Sender<()>)>,
    per_address: HashMap<IpAddr, usize>,
}

/// What [`AnonymousPool::admit`] decided.
#[derive(Debug)]
enum Admission {
    /// Admitted: the connection's id and its eviction signal.
    In(u64, oneshot::Receiver<()>),
    /// The pool is full of connections too young to close: try again at this time, or when a
    /// place is given back.
    Full(Instant),
}

impl AnonymousPool {
    /// How long a connection keeps its place in a full pool.
    fn evictable_after(limits: &ListenerLimits) -> Duration {
        limits.handshake_timeout / 2
    }

    /// Admits a connection from `ip` at `now`: evicts the oldest of its address over the
    /// per-address limit, then, when the pool is full, its oldest connection if that one is old
    /// enough (else refuses for now).
    fn admit(
        &mut self,
        ip: IpAddr,
        now: Instant,
        limits: &ListenerLimits,
        stats: &ListenerStats,
    ) -> Admission {
        while self.per_address.get(&ip).copied().unwrap_or(0)
            >= limits.max_anonymous_per_address.max(1)
        {
            let oldest = self
                .by_age
                .iter()
                .find(|(_, (a, _, _))| *a == ip)
                .map(|(id, _)| *id);
            match oldest {
                Some(id) => self.evict(id, stats),
                None => break,
            }
        }
        while self.by_age.len() >= limits.max_anonymous.max(1) {
            let Some((&id, &(_, since, _))) = self.by_age.iter().next() else {
                break;
            };
            let evictable = since + Self::evictable_after(limits);
            if evictable > now {
                return Admission::Full(evictable);
            }
            self.evict(id, stats);
        }
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = oneshot::channel();
        self.by_age.insert(id, (ip, now, tx));
        *self.per_address.entry(ip).or_default() += 1;
        Admission::In(id, rx)
    }

    fn evict(&mut self, id: u64, stats: &ListenerStats) {
        if let Some((ip, tx)) = self.leave(id) {
            stats.evicted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %ip, "anonymous connection closed to make room");
            let _ = tx.send(());
        }
    }

    fn leave(&mut self, id: u64) -> Option<(IpAddr, oneshot::Sender<()>)> {
        let (ip, _, tx) = self.by_age.remove(&id)?;
        if let Some(n) = self.per_address.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&ip);
            }
        }
        Some((ip, tx))
    }
}

/// A place in the anonymous pool, given back on drop (waking a listener waiting for one).
struct AnonymousSlot {
    pool: Arc<Mutex<AnonymousPool>>,
    freed: Arc<Notify>,
    id: u64,
}

impl Drop for AnonymousSlot {
    fn drop(&mut self) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.leave(self.id).is_some() {
            self.freed.notify_one();
        }
    }
}

/// Watches the bytes a client sends until the first HTTP/2 HEADERS frame (its first request).
#[derive(Debug)]
struct FirstRequestWatch {
    preface_left: usize,
    header: [u8; 9],
    header_len: usize,
    skip: usize,
}

impl FirstRequestWatch {
    fn new() -> Self {
        // "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" (RFC 9113 §3.4); hyper checks its content.
        FirstRequestWatch {
            preface_left: 24,
            header: [0; 9],
            header_len: 0,
            skip: 0,
        }
    }

    /// Feeds received bytes; true once a HEADERS frame has begun.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                bytes = &bytes[n..];
            } else if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
            } else {
                let n = (9 - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
                self.header_len += n;
                bytes = &bytes[n..];
                if self.header_len == 9 {
                    // Frame header: length (24 bits), type, flags, stream id. HEADERS is 0x1.
                    if self.header[3] == 0x1 {
                        return true;
                    }
                    self.skip = (usize::from(self.header[0]) << 16)
                        | (usize::from(self.header[1]) << 8)
                        | usize::from(self.header[2]);
                    self.header_len = 0;
                }
            }
        }
        false
    }
}

/// A server-side TLS connection under the listener's limits: it fails its next read (so the
/// HTTP/2 server closes it) when evicted from the anonymous pool or when its first request is
/// late.
pub struct GuardedStream {
    inner: TlsStream<TcpStream>,
    peer: SocketAddr,
    evicted: Option<oneshot::Receiver<()>>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    watch: FirstRequestWatch,
    stats: Arc<ListenerStats>,
    _anonymous: Option<AnonymousSlot>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(rx) = this.evicted.as_mut() {
            match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(())) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!(
                            "{}: closed to make room (too many anonymous connections)",
                            this.peer
                        ),
                    )));
                }
                // The slot was given back without eviction: nothing more to watch.
                Poll::Ready(Err(_)) => this.evicted = None,
                Poll::Pending => {}
            }
        }
        if let Some(d) = this.deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            this.stats
                .first_request_timeouts
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %this.peer, "no request in time after the TLS handshake; closing");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{}: no request in time after the TLS handshake", this.peer),
            )));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.deadline.is_some()
            && matches!(r, Poll::Ready(Ok(())))
            && this.watch.feed(&buf.filled()[before..])
        {
            this.deadline = None;
        }
        r
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for GuardedStream {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Accepts TCP connections and completes TLS handshakes off the accept loop (a slow or hostile
/// client cannot stall others), yielding finished streams for `serve_with_incoming`, under
/// `limits` (see [`ListenerLimits`]).
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: ListenerLimits,
    stats: Arc<ListenerStats>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<GuardedStream>> {
    let (tx, rx) = mpsc::channel(128);
    let acceptor = TlsAcceptor::from(config);
    let pool: Arc<Mutex<AnonymousPool>> = Default::default();
    let freed = Arc::new(Notify::new());
    let authenticated = Arc::new(Semaphore::new(limits.max_authenticated.max(1)));
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if tx.is_closed() {
                break;
            }
            // A full pool of young handshakes: wait (the rest wait in the accept queue).
            let (id, mut evicted) = loop {
                let admission = pool.lock().unwrap_or_else(|p| p.into_inner()).admit(
                    peer.ip(),
                    Instant::now(),
                    &limits,
                    &stats,
                );
                match admission {
                    Admission::In(id, evicted) => break (id, evicted),
                    Admission::Full(retry_at) => tokio::select! {
                        _ = freed.notified() => {}
                        _ = tokio::time::sleep_until(retry_at.into()) => {}
                    },
                }
            };
            let slot = AnonymousSlot {
                pool: pool.clone(),
                freed: freed.clone(),
                id,
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let limits = limits.clone();
            let stats = stats.clone();
            let authenticated = authenticated.clone();
            tokio::spawn(async move {
                let handshake = tokio::select! {
                    r = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)) => r,
                    _ = &mut evicted => return,
                };
                let stream = match handshake {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        stats.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                // The verifier only lets through certificates chaining to the fleet CA.
                let has_cert = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .is_some_and(|c| !c.is_empty());
                let (anonymous, permit, evicted) = if has_cert {
                    match authenticated.try_acquire_owned() {
                        Ok(p) => (None, Some(p), None),
                        Err(_) => {
                            stats.refused_full.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%peer, limit = limits.max_authenticated, "authenticated connection refused: too many connections");
                            return;
                        }
                    }
                } else {
                    (Some(slot), None, Some(evicted))
                };
                let guarded = GuardedStream {
                    inner: stream,
                    peer,
                    evicted,
                    deadline: Some(Box::pin(tokio::time::sleep(limits.first_request_timeout))),
                    watch: FirstRequestWatch::new(),
                    stats,
                    _anonymous: anonymous,
                    _permit: permit,
                };
                let _ = tx.send(Ok(guarded)).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Normalises `host:port` or `https://host:port` into a URL and returns `(url, host)`.
pub fn controller_url(addr: &str) -> (String, String) {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("https://{addr}")
    };
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(&url);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = if let Some(stripped) = authority.strip_prefix('[') {
        stripped.split(']').next().unwrap_or(stripped).to_owned()
    } else {
        authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority)
            .to_owned()
    };
    (url, host)
}

/// How long a client waits for the TCP connection, and then again for the TLS handshake, with
/// the controller. A peer that accepts TCP and never speaks TLS costs at most this.
pub const CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client waits for the answer to one call (for streams: for the stream to open).
pub const CLIENT_CALL_TIMEOUT: Duration = Duration::from_secs(120);

fn tls_config(host: String) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .domain_name(host)
        .timeout(CLIENT_HANDSHAKE_TIMEOUT)
}

fn endpoint(addr: &str) -> Result<(Endpoint, String), TlsError> {
    let (url, host) = controller_url(addr);
    let ep = Endpoint::from_shared(url)
        .map_err(|source| TlsError::Endpoint {
            addr: addr.to_owned(),
            source,
        })?
        .connect_timeout(CLIENT_HANDSHAKE_TIMEOUT)
        .timeout(CLIENT_CALL_TIMEOUT)
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    Ok((ep, host))
}

/// A lazily-connecting mTLS channel to the controller.
pub fn mtls_channel(
    addr: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Channel, TlsError> {
    let (ep, host) = endpoint(addr)?;
    let tls = tls_config(host)
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
    let ep = ep.tls_config(tls).map_err(|source| TlsError::Endpoint {
        addr: addr.into(),
        source,
    })?;
    Ok(ep.connect_lazy())
}

/// A channel with no client certificate that trusts the fleet CA (re-binding).
pub fn anonymous_channel(addr: &str, ca_pem: &str) -> Result<Channel, TlsError> {
    let (ep, host) = endpoint(addr)?;
    let tls = tls_config(host).ca_certificate(Certificate::from_pem(ca_pem));
    let ep = ep.tls_config(tls).map_err(|source| TlsError::Endpoint {
        addr: addr.into(),
        source,
    })?;
    Ok(ep.connect_lazy())
}

/// A channel with no client certificate that trusts only the CA pinned by `verifier`.
pub fn pinned_channel(addr: &str, verifier: Arc<PinnedCaVerifier>) -> Result<Channel, TlsError> {
    let (ep, host) = endpoint(addr)?;
    let ep = ep
        .tls_config_with_verifier(tls_config(host), verifier)
        .map_err(|source| TlsError::Endpoint {
            addr: addr.into(),
            source,
        })?;
    Ok(ep.connect_lazy())
}

/// Trusts a server only if its presented chain contains a CA certificate whose SHA-256 equals
/// the pin, and the server certificate verifies against that CA (name, time, signature). The
/// matched CA is remembered so the agent can store it after enrollment.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
    seen_ca: Mutex<Option<Vec<u8>>>,
}

impl PinnedCaVerifier {
    /// Pins the CA with this SHA-256 (hex, any case, colons allowed).
    pub fn new(pin: &str) -> Self {
        PinnedCaVerifier {
            pin: pin.replace(':', "").to_lowercase(),
            provider: provider(),
            seen_ca: Mutex::new(None),
        }
    }

    /// DER of the pinned CA as the server presented it, once a handshake succeeded.
    pub fn ca_der(&self) -> Option<Vec<u8>> {
        self.seen_ca.lock().unwrap().clone()
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| crate::pki::sha256_hex(c.as_ref()) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "controller's CA does not match the join token's pin {} (token for another fleet?)",
                    self.pin
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let ok = inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        *self.seen_ca.lock().unwrap() = Some(ca.as_ref().to_vec());
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Turns a transport failure into a sentence an operator can act on, naming the address.
pub fn explain_status(addr: &str, status: &tonic::Status) -> String {
    let mut chain = String::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(status);
    while let Some(e) = src {
        chain.push_str(": ");
        chain.push_str(&e.to_string());
        src = e.source();
    }
    let all = format!("{}{}", status.message(), chain);
    let hint = if all.contains("UnknownCA")
        || all.contains("UnknownIssuer")
        || all.contains("BadCertificate")
    {
        " (the controller does not accept this client certificate: issued by another CA?)"
    } else if all.contains("CertificateExpired") || all.contains("Expired") {
        " (a certificate has expired)"
    } else if all.contains("Connection refused") || all.contains("tcp connect error") {
        " (is the controller running and reachable?)"
    } else if all.contains("TLS handshake timeout") {
        " (something accepts TCP there but did not complete a TLS handshake within 10s: is it the controller?)"
    } else if status.code() == tonic::Code::Cancelled && all.contains("Timeout expired") {
        " (no answer within 120s)"
    } else if all.contains("does not match the join token") {
        ""
    } else if all.contains("NotValidForName") {
        " (the controller's certificate does not name this address: add it with `certfleet init --san`)"
    } else {
        ""
    };
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown
            if !chain.is_empty() || status.message().contains("transport") =>
        {
            format!("cannot reach controller at {addr}: {all}{hint}")
        }
        tonic::Code::Cancelled if all.contains("Timeout expired") => {
            format!("controller at {addr} did not answer: {all}{hint}")
        }
        _ => format!("controller at {addr} refused: {}{hint}", status.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_request_is_the_first_headers_frame_even_split_across_reads() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        // SETTINGS (type 4) with a 6-byte payload, then WINDOW_UPDATE (type 8), then HEADERS.
        bytes.extend([0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
        bytes.extend([0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 1, 0, 0]);
        let before_headers = bytes.len();
        bytes.extend([0, 0, 3, 1, 4, 0, 0, 0, 1, 0x82, 0x86, 0x84]);
        for chunk in [1, 5, 9, 24, 1000] {
            let mut w = FirstRequestWatch::new();
            let mut seen_at = None;
            for (i, piece) in bytes.chunks(chunk).enumerate() {
                if w.feed(piece) {
                    seen_at = Some((i + 1) * chunk);
                    break;
                }
            }
            let seen_at = seen_at.expect("HEADERS seen");
            assert!(
                seen_at > before_headers + 3,
                "chunk {chunk}: seen at {seen_at}"
            );
        }
        // Preface and settings alone are not a request.
        let mut w = FirstRequestWatch::new();
        assert!(!w.feed(&bytes[..before_headers]));
    }

    #[test]
    fn anonymous_pool_evicts_the_oldest_per_address_then_overall_once_old_enough() {
        let limits = ListenerLimits {
            max_anonymous: 4,
            max_anonymous_per_address: 2,
            handshake_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        let stats = ListenerStats::default();
        let mut pool = AnonymousPool::default();
        let t0 = Instant::now();
        let admit = |pool: &mut AnonymousPool, ip: &str, at: u64| match pool.admit(
            ip.parse().unwrap(),
            t0 + Duration::from_secs(at),
            &limits,
            &stats,
        ) {
            Admission::In(_, rx) => Some(rx),
            Admission::Full(_) => None,
        };
        let mut a1 = admit(&mut pool, "10.0.0.1", 0).unwrap();
        let mut a2 = admit(&mut pool, "10.0.0.1", 0).unwrap();
        let mut b1 = admit(&mut pool, "10.0.0.2", 0).unwrap();
        // A third from `a` evicts a's oldest at once, not b's.
        let mut a3 = admit(&mut pool, "10.0.0.1", 1).unwrap();
        assert_eq!(a1.try_recv(), Ok(()));
        assert!(a2.try_recv().is_err() && b1.try_recv().is_err());
        let _c1 = admit(&mut pool, "10.0.0.3", 1).unwrap();
        // Full (a2, b1, a3, c1), all younger than half the handshake deadline: nobody is
        // closed, the newcomer waits.
        assert!(admit(&mut pool, "10.0.0.3", 4).is_none());
        assert!(a2.try_recv().is_err() && b1.try_recv().is_err());
        match pool.admit(
            "10.0.0.3".parse().unwrap(),
            t0 + Duration::from_secs(4),
            &limits,
            &stats,
        ) {
            Admission::Full(at) => assert_eq!(at, t0 + Duration::from_secs(5)),
            other => panic!("{other:?}"),
        }
        // Half the deadline later the oldest overall (a2) makes room.
        let _c2 = admit(&mut pool, "10.0.0.3", 5).unwrap();
        assert_eq!(a2.try_recv(), Ok(()));
        assert!(b1.try_recv().is_err() && a3.try_recv().is_err());
        assert_eq!(stats.evicted.load(Ordering::Relaxed), 2);
        assert_eq!(pool.by_age.len(), 4);
        assert_eq!(pool.per_address[&"10.0.0.1".parse::<IpAddr>().unwrap()], 1);
    }

    #[test]
    fn urls_and_hosts() {
        assert_eq!(
            controller_url("127.0.0.1:7443"),
            ("https://127.0.0.1:7443".into(), "127.0.0.1".into())
        );
        assert_eq!(controller_url("https://ctl.example:7443").1, "ctl.example");
        assert_eq!(controller_url("[::1]:7443").1, "::1");
    }
}
