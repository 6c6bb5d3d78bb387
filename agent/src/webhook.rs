//! One HTTP POST of a JSON document to a configured URL: the re-trust webhook of a declared pin
//! ([`crate::pins`]), for consumers that take a new certificate over HTTP (a backup appliance's
//! or a monitoring adapter's API, a small service in front of a load balancer).
//!
//! hyper's HTTP/1.1 client connection over tokio, with tokio-rustls (ring) for `https://`; the
//! server is verified against a configured CA bundle, never against nothing. `http://` is
//! accepted only to a loopback address (a sidecar on the same host). The whole exchange runs on
//! its own thread and runtime, bounded by one timeout, so it can be called from the agent's
//! synchronous step code; the answer's body is kept to its first 4 KiB.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// The most of an answer's body kept.
const BODY_LIMIT: usize = 4096;

/// A webhook's answer: HTTP status and the start of the body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// The body, lossily decoded, at most [`BODY_LIMIT`] bytes.
    pub body: String,
}

/// Why a webhook URL cannot be used as configured.
pub fn check_url(url: &str, ca_file: Option<&str>) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("{url:?}: no host"))?;
    match uri.scheme_str() {
        Some("https") if ca_file.is_none() => Err(format!(
            "{url:?}: set webhook_ca_file (the CA bundle the server's certificate chains to)"
        )),
        Some("https") => Ok(()),
        Some("http") if is_loopback(host) => Ok(()),
        Some("http") => Err(format!(
            "{url:?}: http:// only to a loopback address; use https:// with webhook_ca_file"
        )),
        _ => Err(format!("{url:?}: only https:// (or http:// to loopback)")),
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// POSTs `body` as JSON to `url` (checked by [`check_url`]), with `Authorization: Bearer
/// TOKEN` when a token is given; the server of an `https://` URL is verified against the
/// certificates in `ca_file`. Errors name the URL and what failed; a non-2xx status is an
/// [`Answer`], for the caller to judge.
pub fn post_json(
    url: &str,
    ca_file: Option<&Path>,
    token: Option<&str>,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<Answer, String> {
    check_url(url, ca_file.map(|_| ""))?;
    let body = body.to_string();
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("POST {url}: {e}"))?;
            rt.block_on(async {
                match tokio::time::timeout(timeout, exchange(url, ca_file, token, body)).await {
                    Ok(r) => r.map_err(|e| format!("POST {url}: {e}")),
                    Err(_) => Err(format!(
                        "POST {url}: no answer within {}",
                        humantime::format_duration(timeout)
                    )),
                }
            })
        })
        .join()
        .unwrap_or_else(|_| Err(format!("POST {url}: the request thread panicked")))
    })
}

async fn exchange(
    url: &str,
    ca_file: Option<&Path>,
    token: Option<&str>,
    body: String,
) -> Result<Answer, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_owned();
    let tls = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_else(|| host.clone());
    let mut req = hyper::Request::post(
        uri.path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_owned(),
    )
    .header(hyper::header::HOST, authority)
    .header(hyper::header::CONTENT_TYPE, "application/json")
    .header(
        hyper::header::USER_AGENT,
        concat!("certfleet-agent/", env!("CARGO_PKG_VERSION")),
    );
    if let Some(t) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
    if tls {
        let ca = ca_file.ok_or("no CA file for https")?;
        let connector = tokio_rustls::TlsConnector::from(client_config(ca)?);
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("server name {host}: {e}"))?;
        let stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}:{port} (CA {}): {e}", ca.display()))?;
        send(TokioIo::new(stream), req).await
    } else {
        send(TokioIo::new(tcp), req).await
    }
}

async fn send<T>(io: T, req: hyper::Request<Full<Bytes>>) -> Result<Answer, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let status = resp.status().as_u16();
    let mut kept = Vec::new();
    let mut body = Limited::new(resp.into_body(), 1 << 20);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the answer: {e}"))?;
        if let Some(d) = frame.data_ref() {
            let room = BODY_LIMIT.saturating_sub(kept.len());
            kept.extend_from_slice(&d[..d.len().min(room)]);
        }
    }
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&kept).into_owned(),
    })
}

fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let pem = std::fs::read(ca).map_err(|e| format!("CA file {}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for der in certfleet_common::pem::certificates(&pem)
        .map_err(|e| format!("CA file {}: {e}", ca.display()))?
    {
        roots
            .add(der.into())
            .map_err(|e| format!("CA file {}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("CA file {}: no certificate", ca.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_https_with_a_ca_or_http_to_loopback() {
        assert!(check_url("https://backup.lab/api/trust", Some("/etc/ca.pem")).is_ok());
        assert!(
            check_url("https://backup.lab/api/trust", None)
                .unwrap_err()
                .contains("webhook_ca_file")
        );
        for ok in [
            "http://127.0.0.1:8080/x",
            "http://[::1]/x",
            "http://localhost/x",
        ] {
            assert!(check_url(ok, None).is_ok(), "{ok}");
        }
        assert!(
            check_url("http://backup.lab/x", None)
                .unwrap_err()
                .contains("loopback")
        );
        assert!(check_url("ftp://x/", None).is_err());
        assert!(check_url("not a url", None).is_err());
    }

    /// A real HTTPS server (tokio-rustls, a certificate from a test CA): the POST arrives with
    /// its JSON and token, the status and body come back; a server the CA did not sign is
    /// refused, naming the CA file; a silent server times out.
    #[test]
    fn posts_over_https_verified_against_the_ca_and_times_out_on_a_silent_server() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca_cert.pem()).unwrap();
        let other = dir.path().join("other.pem");
        std::fs::write(
            &other,
            rcgen::generate_simple_self_signed(vec!["x".into()])
                .unwrap()
                .cert
                .pem(),
        )
        .unwrap();

        let rt = tokio::runtime::Runtime::new().unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let server_cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !String::from_utf8_lossy(&got).contains("\"pin\"") {
                    let n = tls.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                tx.send(String::from_utf8_lossy(&got).into_owned()).ok();
                let _ = tls
                    .write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 7\r\nConnection: close\r\n\r\ntrusted")
                    .await;
                let _ = tls.shutdown().await;
            }
        });
        let url = format!("https://localhost:{port}/api/trust?x=1");
        let body = serde_json::json!({"pin": "backup", "fingerprint_sha256": "ab"});
        let a = post_json(
            &url,
            Some(&ca_path),
            Some("t0k"),
            &body,
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!((a.status, a.body.as_str()), (202, "trusted"));
        let req = rx.recv().unwrap();
        assert!(req.starts_with("POST /api/trust?x=1 HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("authorization: Bearer t0k\r\n"), "{req}");
        assert!(req.contains("content-type: application/json\r\n"), "{req}");
        assert!(
            req.contains(r#"{"fingerprint_sha256":"ab","pin":"backup"}"#),
            "{req}"
        );

        let err = post_json(&url, Some(&other), None, &body, Duration::from_secs(10)).unwrap_err();
        assert!(
            err.contains("TLS with localhost") && err.contains("other.pem"),
            "{err}"
        );

        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}/x", silent.local_addr().unwrap().port());
        let err = post_json(&url, None, None, &body, Duration::from_millis(300)).unwrap_err();
        assert!(err.contains("no answer within 300ms"), "{err}");
    }
}
