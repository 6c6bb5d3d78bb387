//! The simulated VCSA's reverse proxy (rhttpproxy/envoy on :443): a TLS listener on a loopback
//! port that serves the Machine SSL certificate.
//!
//! Every connection reads the state afresh and serves what VECS `MACHINE_SSL_CERT/__MACHINE_CERT`
//! holds at that moment, unless the state pins an older certificate ("renewed in VECS, proxy not
//! restarted"). It answers one minimal HTTP response and closes.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::VcsaState;
use crate::sim::SimHost;

fn server_config(host: &SimHost) -> Result<Arc<rustls::ServerConfig>> {
    let s = VcsaState::load(host)?;
    let (cert, key) = match &s.https_pinned {
        Some((c, k)) => (c.clone(), k.clone()),
        None => {
            let e = s
                .entry("MACHINE_SSL_CERT", "__MACHINE_CERT")
                .context("VECS has no __MACHINE_CERT")?;
            (
                e.cert.clone().unwrap_or_default(),
                e.key.clone().unwrap_or_default(),
            )
        }
    };
    let mut chain: Vec<CertificateDer<'static>> =
        certfleet_common::pem::certificates(cert.as_bytes())?
            .into_iter()
            .map(CertificateDer::from)
            .collect();
    let root = std::fs::read(host.path(super::VMCA_ROOT)).unwrap_or_default();
    if let Ok(r) = certfleet_common::pem::certificates(&root) {
        chain.extend(r.into_iter().map(CertificateDer::from));
    }
    let (_, key_der) = certfleet_common::pem::decode_all(key.as_bytes())?
        .into_iter()
        .find(|(l, _)| l == "PRIVATE KEY")
        .context("Machine SSL key is not PKCS#8")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)),
        )?;
    Ok(Arc::new(cfg))
}

fn serve_one(host: &SimHost, mut tcp: TcpStream) -> Result<()> {
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    // service-control --stop: the proxy is down, the connection is dropped unanswered.
    let s = VcsaState::load(host)?;
    if s.services
        .iter()
        .any(|x| (x.name == "rhttpproxy" || x.name == "envoy") && x.run_state != "STARTED")
    {
        return Ok(());
    }
    let cfg = server_config(host)?;
    let mut conn = rustls::ServerConnection::new(cfg)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    let _ = conn
        .writer()
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nvcsa\n");
    conn.send_close_notify();
    let _ = conn.complete_io(&mut tcp);
    Ok(())
}

/// `certfleet-sim --root R vcsa-https --listen ADDR`: serves until killed.
pub fn run(host: &SimHost, args: &[String]) -> Result<i32> {
    let addr = match args {
        [flag, addr] if flag == "--listen" => addr.clone(),
        _ => anyhow::bail!("usage: certfleet-sim --root ROOT vcsa-https --listen 127.0.0.1:PORT"),
    };
    let listener = TcpListener::bind(&addr).with_context(|| format!("binding {addr}"))?;
    for tcp in listener.incoming() {
        let Ok(tcp) = tcp else { continue };
        let host = host.clone();
        std::thread::spawn(move || {
            // A probe that hangs up after the handshake is normal; report anything else.
            if let Err(e) = serve_one(&host, tcp)
                && e.downcast_ref::<std::io::Error>().map(|io| io.kind())
                    != Some(std::io::ErrorKind::UnexpectedEof)
            {
                eprintln!("vcsa-https: {e:#}");
            }
        });
    }
    Ok(0)
}
