//! TLS endpoint probes: what a local service actually serves.
//!
//! A probe completes a TLS handshake, keeps the presented chain and verifies nothing (it is an
//! observation, not a trust decision). Comparing the served certificate with the files on disk
//! shows "renewed on disk but the service still serves the old one".

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certfleet_common::model::{Location, Problem};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::{Collection, Collector};
use crate::config::AgentConfig;

/// The `endpoint` collector.
pub struct Endpoints;

const NAME: &str = "endpoint";

impl Collector for Endpoints {
    fn name(&self) -> &'static str {
        NAME
    }

    fn detect(&self, cfg: &AgentConfig) -> bool {
        !cfg.endpoints.is_empty()
    }

    fn collect(&self, cfg: &AgentConfig, out: &mut Collection) {
        for ep in &cfg.endpoints {
            let host = ep.address.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']'])).unwrap_or("");
            let sni = ep.server_name.clone().unwrap_or_else(|| host.to_owned());
            match probe(&ep.address, &sni, cfg.tool_timeout.min(Duration::from_secs(10))) {
                Ok(chain) => {
                    for (i, der) in chain.iter().enumerate() {
                        let mut loc = Location::file("endpoint", ep.address.clone());
                        loc.detail = if i == 0 { String::new() } else { format!("chain#{i}") };
                        let role = if i == 0 { ep.role.as_str() } else { "" };
                        out.add_der(NAME, der, role, loc);
                    }
                }
                Err(e) => out.problem(Problem::error(NAME, &ep.address, e)),
            }
            if let Some(file) = &ep.expect_file {
                let path = cfg.host_path(file);
                match super::read_small_file(&path) {
                    Ok(bytes) => {
                        out.add_blob(NAME, &bytes, &ep.role, Location::file("file", path.display().to_string()));
                    }
                    Err(e) => out.problem(Problem::error(NAME, path.display().to_string(), e)),
                }
            }
        }
    }
}

/// Connects to `address`, completes a handshake with SNI `sni` and returns the presented chain.
pub fn probe(address: &str, sni: &str, timeout: Duration) -> Result<Vec<Vec<u8>>, String> {
    let addr = address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .next()
        .ok_or("cannot resolve: no address")?;
    let mut tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("cannot connect: {e}"))?;
    tcp.set_read_timeout(Some(timeout)).ok();
    tcp.set_write_timeout(Some(timeout)).ok();
    let capture = Arc::new(Capture::default());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(sni.to_owned())
        .or_else(|_| ServerName::try_from("localhost".to_owned()))
        .map_err(|e| e.to_string())?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            // A server that wants a client certificate may abort after sending its chain.
            if capture.chain.lock().unwrap().is_empty() {
                return Err(format!("TLS handshake failed: {e}"));
            }
            break;
        }
    }
    let _ = conn.writer().flush();
    let mut sink = [0u8; 0];
    let _ = conn.reader().read(&mut sink);
    let chain = capture.chain.lock().unwrap().clone();
    if chain.is_empty() {
        return Err("server presented no certificate".into());
    }
    Ok(chain)
}

#[derive(Debug, Default)]
struct Capture {
    chain: Mutex<Vec<Vec<u8>>>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.as_ref().to_vec()];
        chain.extend(intermediates.iter().map(|c| c.as_ref().to_vec()));
        *self.chain.lock().unwrap() = chain;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _m: &[u8],
        _c: &CertificateDer<'_>,
        _d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _m: &[u8],
        _c: &CertificateDer<'_>,
        _d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}
