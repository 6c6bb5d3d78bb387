//! The one place that chooses the crypto provider and builds TLS configurations.
//!
//! - Controller: a hand-built `rustls::ServerConfig` whose client verifier accepts *no*
//!   certificate (for enrollment and re-binding) or a certificate chaining to the fleet CA. The
//!   per-RPC check that a certificate is present and not revoked happens in the services, so a
//!   refusal carries a message an operator can act on instead of a bare TLS alert.
//! - Clients: tonic's `ClientTlsConfig` with the fleet CA, or, on first contact, a
//!   [`PinnedCaVerifier`] that trusts only the CA whose SHA-256 is in the join token.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
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
        .map_err(|e| TlsError::Pem { what, reason: e.to_string() })?;
    if v.is_empty() {
        return Err(TlsError::Pem { what, reason: "no CERTIFICATE block".into() });
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
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Pem { what: "server key", reason: e.to_string() })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TCP connections and completes TLS handshakes off the accept loop (a slow or hostile
/// client cannot stall others), yielding finished streams for `serve_with_incoming`.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(128);
    let acceptor = TlsAcceptor::from(config);
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
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Normalises `host:port` or `https://host:port` into a URL and returns `(url, host)`.
pub fn controller_url(addr: &str) -> (String, String) {
    let url = if addr.contains("://") { addr.to_owned() } else { format!("https://{addr}") };
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(&url);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = if let Some(stripped) = authority.strip_prefix('[') {
        stripped.split(']').next().unwrap_or(stripped).to_owned()
    } else {
        authority.rsplit_once(':').map(|(h, _)| h).unwrap_or(authority).to_owned()
    };
    (url, host)
}

fn endpoint(addr: &str) -> Result<(Endpoint, String), TlsError> {
    let (url, host) = controller_url(addr);
    let ep = Endpoint::from_shared(url)
        .map_err(|source| TlsError::Endpoint { addr: addr.to_owned(), source })?
        .connect_timeout(Duration::from_secs(5))
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
    let tls = ClientTlsConfig::new()
        .domain_name(host)
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
    let ep = ep.tls_config(tls).map_err(|source| TlsError::Endpoint { addr: addr.into(), source })?;
    Ok(ep.connect_lazy())
}

/// A channel with no client certificate that trusts the fleet CA (re-binding).
pub fn anonymous_channel(addr: &str, ca_pem: &str) -> Result<Channel, TlsError> {
    let (ep, host) = endpoint(addr)?;
    let tls = ClientTlsConfig::new().domain_name(host).ca_certificate(Certificate::from_pem(ca_pem));
    let ep = ep.tls_config(tls).map_err(|source| TlsError::Endpoint { addr: addr.into(), source })?;
    Ok(ep.connect_lazy())
}

/// A channel with no client certificate that trusts only the CA pinned by `verifier`.
pub fn pinned_channel(addr: &str, verifier: Arc<PinnedCaVerifier>) -> Result<Channel, TlsError> {
    let (ep, host) = endpoint(addr)?;
    let ep = ep
        .tls_config_with_verifier(ClientTlsConfig::new().domain_name(host), verifier)
        .map_err(|source| TlsError::Endpoint { addr: addr.into(), source })?;
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
        self.provider.signature_verification_algorithms.supported_schemes()
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
    let hint = if all.contains("UnknownCA") || all.contains("UnknownIssuer") || all.contains("BadCertificate") {
        " (the controller does not accept this client certificate: issued by another CA?)"
    } else if all.contains("CertificateExpired") || all.contains("Expired") {
        " (a certificate has expired)"
    } else if all.contains("Connection refused") || all.contains("tcp connect error") {
        " (is the controller running and reachable?)"
    } else if all.contains("does not match the join token") {
        ""
    } else if all.contains("NotValidForName") {
        " (the controller's certificate does not name this address: add it with `certfleet init --san`)"
    } else {
        ""
    };
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown if !chain.is_empty() || status.message().contains("transport") => {
            format!("cannot reach controller at {addr}: {all}{hint}")
        }
        _ => format!("controller at {addr} refused: {}{hint}", status.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_hosts() {
        assert_eq!(controller_url("127.0.0.1:7443"), ("https://127.0.0.1:7443".into(), "127.0.0.1".into()));
        assert_eq!(controller_url("https://ctl.example:7443").1, "ctl.example");
        assert_eq!(controller_url("[::1]:7443").1, "::1");
    }
}
