//! The operator's connection to the controller: mTLS with the identity directory's
//! `ca.pem`, `cert.pem` and `key.pem`, and errors that name the controller.
//!
//! This is the one place where a failed connection becomes a sentence for a person: the error
//! chain tonic, hyper and rustls hand back (`invalid peer certificate: UnknownIssuer`,
//! `received fatal alert: CertificateExpired`, `received corrupt message of type
//! InvalidContentType` …) is matched here to its usual cause — the wrong CA, an address that is
//! not the controller's TLS port, an expired operator certificate, a wrong clock, an identity
//! the controller does not know — and said in one sentence with the fix. Anything not
//! recognised keeps the raw chain, so nothing is hidden. The operator certificate's own dates
//! are checked before connecting: an expired certificate or a clock behind its start is told
//! without a round trip, naming the file.

use std::path::Path;

use anyhow::{Context, anyhow};
use certfleet_common::model::{format_time, now};
use certfleet_common::proto::operator_client::OperatorClient;
use tonic::transport::Channel;

use super::CliError;
use super::context::IdentityFiles;

/// Largest answer the CLI accepts from the controller.
const MAX_ANSWER_BYTES: usize = 512 << 20;

/// A connection to the controller as an operator.
pub struct Conn {
    /// Address as given.
    pub addr: String,
    /// The identity files (named in errors).
    pub identity: IdentityFiles,
    client: OperatorClient<Channel>,
}

/// The operator certificate's validity against this machine's clock, checked before
/// connecting (the controller would refuse it anyway, with a bare TLS alert).
fn check_own_certificate(cert_pem: &str, path: &Path, at: i64) -> anyhow::Result<()> {
    let der = certfleet_common::pem::first_certificate(cert_pem.as_bytes())
        .with_context(|| format!("reading operator certificate {}", path.display()))?;
    let c = certfleet_common::x509::parse_der(&der)
        .map_err(|e| anyhow!("reading operator certificate {}: {e}", path.display()))?;
    if c.not_after < at {
        return Err(anyhow!(
            "the operator certificate {} expired on {} (this machine's clock says {}): ask an admin for a new one (`certfleet operators issue NAME --out DIR`), or fix this machine's clock if it is wrong",
            path.display(),
            format_time(c.not_after),
            format_time(at)
        ));
    }
    if c.not_before > at {
        return Err(anyhow!(
            "the operator certificate {} is valid only from {}, but this machine's clock says {}: this machine's clock is behind (check NTP / timedatectl)",
            path.display(),
            format_time(c.not_before),
            format_time(at)
        ));
    }
    Ok(())
}

/// Whether `cert.pem` was issued by the CA in `ca.pem` (the fleet CA the controller's
/// certificate must chain to): an identity directory mixing two fleets is told here, because the
/// controller's refusal of a client certificate reaches the client only as a closed connection.
fn check_own_chain(ca_pem: &str, cert_pem: &str, id: &IdentityFiles) -> anyhow::Result<()> {
    use rustls_pki_types::{CertificateDer, UnixTime};
    let ca_path = &id.ca;
    let cert_path = &id.cert;
    let mut roots = rustls::RootCertStore::empty();
    for der in certfleet_common::pem::certificates(ca_pem.as_bytes())
        .with_context(|| format!("reading {}", ca_path.display()))?
    {
        roots
            .add(CertificateDer::from(der))
            .map_err(|e| anyhow!("reading {}: {e}", ca_path.display()))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| anyhow!("using {} as a CA: {e}", ca_path.display()))?;
    let leaf = CertificateDer::from(
        certfleet_common::pem::first_certificate(cert_pem.as_bytes())
            .with_context(|| format!("reading {}", cert_path.display()))?,
    );
    match verifier.verify_client_cert(&leaf, &[], UnixTime::now()) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadSignature | rustls::CertificateError::UnknownIssuer,
        )) => Err(anyhow!(
            "the operator certificate {} was not issued by the CA in {}: the identity directory mixes two fleets; use the cert.pem, key.pem and ca.pem that `certfleet operators issue` wrote together",
            cert_path.display(),
            ca_path.display()
        )),
        // Dates were checked already; anything else is the controller's to judge.
        Err(_) => Ok(()),
    }
}

impl Conn {
    /// Connects with the identity files `id` (an identity directory's `ca.pem`, `cert.pem`,
    /// `key.pem`, or the files a context names).
    pub fn new(addr: &str, id: &IdentityFiles) -> anyhow::Result<Self> {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .with_context(|| format!("reading operator identity {}", p.display()))
        };
        let cert = read(&id.cert)?;
        let ca = read(&id.ca)?;
        check_own_certificate(&cert, &id.cert, now())?;
        check_own_chain(&ca, &cert, id)?;
        let channel = certfleet_common::tls::mtls_channel(addr, &ca, &cert, &read(&id.key)?)?;
        Ok(Conn {
            addr: addr.to_owned(),
            identity: id.clone(),
            // Inventory answers grow with the fleet: the limit is explicit and generous.
            client: OperatorClient::new(channel)
                .max_decoding_message_size(MAX_ANSWER_BYTES)
                .max_encoding_message_size(4 << 20),
        })
    }

    /// The raw client, with errors explained.
    pub fn client(&self) -> OperatorClient<Channel> {
        self.client.clone()
    }

    /// Turns a status into an operator-readable error naming the controller, typed by who is
    /// at fault: the caller's input (exit 2), the caller's rights (exit 3), anything else (1).
    pub fn explain(&self, s: tonic::Status) -> anyhow::Error {
        if let Some(cause) = classify(&chain(&s)) {
            let text = cause.sentence(&self.addr, &self.identity, now());
            return if cause.refused() {
                CliError::Refused(text).into()
            } else {
                anyhow!(text)
            };
        }
        let text = certfleet_common::tls::explain_status(&self.addr, &s);
        match s.code() {
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
                CliError::Refused(text).into()
            }
            tonic::Code::InvalidArgument => CliError::Usage(text).into(),
            _ => anyhow!(text),
        }
    }
}

/// A status's message and every source below it, `: `-joined.
fn chain(s: &tonic::Status) -> String {
    let mut all = s.message().to_owned();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(s);
    while let Some(e) = src {
        all.push_str(": ");
        all.push_str(&e.to_string());
        src = e.source();
    }
    all
}

/// The usual causes of a failed connection, as recognised from the error chain.
#[derive(Debug, PartialEq, Eq)]
pub enum Cause {
    /// The controller's certificate does not chain to the identity's `ca.pem`.
    WrongCa,
    /// The controller's certificate has ended by this machine's clock (`not_after`, if said).
    ServerExpired(Option<i64>),
    /// The controller's certificate starts in the future by this machine's clock.
    ServerNotYetValid(Option<i64>),
    /// Something answered that does not speak TLS.
    NotTls,
    /// Nothing listens there.
    Refused,
    /// The controller rejected the operator certificate: not issued by its CA.
    ClientUnknownCa,
    /// The controller says the operator certificate has expired or is not yet valid (its clock).
    ClientExpired,
    /// The certificate is from the fleet CA but names no operator the controller knows.
    UnknownOperator(String),
    /// The identity is an agent's (or the controller's), not an operator's.
    NotAnOperator,
    /// The connection closed before any answer: with TLS 1.3 that is how a refused client
    /// certificate looks from the client (the controller logs "TLS handshake refused").
    ClosedEarly,
}

/// Seconds since the epoch after `marker` in a rustls message (`… not valid after 1700000000 …`).
fn number_after(all: &str, marker: &str) -> Option<i64> {
    let rest = &all[all.find(marker)? + marker.len()..];
    rest.trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The cause of a failure from its error chain, if it is one of the usual ones.
pub fn classify(all: &str) -> Option<Cause> {
    let has = |s: &str| all.contains(s);
    if has("invalid peer certificate") {
        if has("UnknownIssuer") || has("BadSignature") {
            return Some(Cause::WrongCa);
        }
        if has("certificate expired") || has(": Expired") {
            return Some(Cause::ServerExpired(number_after(all, "not valid after")));
        }
        if has("not valid yet") || has("NotValidYet") {
            return Some(Cause::ServerNotYetValid(number_after(
                all,
                "not valid before",
            )));
        }
        return None;
    }
    if has("received fatal alert: UnknownCA")
        || has("received fatal alert: BadCertificate")
        || has("received fatal alert: DecryptError")
        || has("received fatal alert: CertificateUnknown")
    {
        return Some(Cause::ClientUnknownCa);
    }
    if has("received fatal alert: CertificateExpired") {
        return Some(Cause::ClientExpired);
    }
    if has("corrupt message")
        || has("InvalidContentType")
        || has("InvalidMessage")
        || has("tls handshake eof")
        || has("HTTP/1")
    {
        return Some(Cause::NotTls);
    }
    if has("Connection refused") {
        return Some(Cause::Refused);
    }
    if let Some(i) = all.find("unknown operator ") {
        let name = all[i + "unknown operator ".len()..]
            .split(|c: char| c.is_whitespace() || c == ':' || c == ',')
            .next()
            .unwrap_or_default();
        return Some(Cause::UnknownOperator(name.to_owned()));
    }
    if has("may not use the operator API") {
        return Some(Cause::NotAnOperator);
    }
    if all == "operation was canceled" {
        return Some(Cause::ClosedEarly);
    }
    None
}

impl Cause {
    /// Whether the controller refused the caller (exit 3) rather than the connection failing.
    pub fn refused(&self) -> bool {
        matches!(
            self,
            Cause::ClientUnknownCa
                | Cause::ClientExpired
                | Cause::UnknownOperator(_)
                | Cause::NotAnOperator
        )
    }

    /// One sentence: what is wrong, naming the address and the files, and what to do.
    pub fn sentence(&self, addr: &str, id: &IdentityFiles, at: i64) -> String {
        let ca = &id.ca;
        let cert = &id.cert;
        let dir = id.shown();
        let clock = format_time(at);
        match self {
            Cause::WrongCa => format!(
                "the controller at {addr} presented a certificate not signed by the CA in {}: wrong --identity (another fleet's?) or wrong --controller address?",
                ca.display()
            ),
            Cause::ServerExpired(end) => format!(
                "the controller at {addr} presented a certificate that {} by this machine's clock ({clock}): if that clock is right, the controller's certificate needs renewing (it renews itself hourly: see its log for why it did not); otherwise fix this machine's clock (NTP)",
                match end {
                    Some(t) => format!("ended on {}", format_time(*t)),
                    None => "has expired".into(),
                }
            ),
            Cause::ServerNotYetValid(start) => format!(
                "the controller at {addr} presented a certificate valid only from {} but this machine's clock says {clock}: one of the two clocks is wrong (check NTP on both)",
                start
                    .map(format_time)
                    .unwrap_or_else(|| "a later time".into())
            ),
            Cause::NotTls => format!(
                "{addr} answered, but not with TLS (a plain HTTP or other service, e.g. the controller's --http metrics port?): point --controller at the controller's gRPC address (its --listen, port 7443 by default)"
            ),
            Cause::Refused => format!(
                "nothing accepts connections at {addr}: is the controller running, and is this its --listen address (--controller / CERTFLEET_CONTROLLER)?"
            ),
            Cause::ClientUnknownCa => format!(
                "the controller at {addr} does not accept the operator certificate {} (not issued by its fleet CA): use an identity issued by this controller (`certfleet operators issue`), or the right --controller",
                cert.display()
            ),
            Cause::ClientExpired => format!(
                "the controller at {addr} says the operator certificate {} has expired or is not yet valid by its clock ({clock} here): ask an admin for a new one, or fix the controller's clock if the certificate is valid",
                cert.display()
            ),
            Cause::UnknownOperator(name) => format!(
                "the controller at {addr} knows no operator {name:?} (the identity {} is from another controller, or from before its store was replaced): ask an admin for a new identity (`certfleet operators issue {name} --out DIR`)",
                dir
            ),
            Cause::ClosedEarly => format!(
                "the controller at {addr} closed the connection before answering: it most likely refused the operator certificate {} (see its log for \"TLS handshake refused\"; an identity from a fleet CA it no longer uses?), so ask an admin for a new identity",
                cert.display()
            ),
            Cause::NotAnOperator => format!(
                "the identity {} is not an operator's (an agent's state directory?): use an operator identity directory (`certfleet operators issue NAME --out DIR`)",
                dir
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chains below are what tonic 0.14 / hyper / rustls 0.23 print for each case.
    #[test]
    fn usual_failures_are_recognised() {
        let cases = [
            (
                "transport error: error trying to connect: invalid peer certificate: UnknownIssuer",
                Cause::WrongCa,
            ),
            (
                "transport error: invalid peer certificate: certificate expired: verification time 1800000000 (UNIX), but certificate is not valid after 1700000000 (100000000 seconds ago)",
                Cause::ServerExpired(Some(1_700_000_000)),
            ),
            (
                "transport error: invalid peer certificate: certificate not valid yet: verification time 1 (UNIX), but certificate is not valid before 1700000000 (5 seconds in future)",
                Cause::ServerNotYetValid(Some(1_700_000_000)),
            ),
            (
                "transport error: error trying to connect: received corrupt message of type InvalidContentType",
                Cause::NotTls,
            ),
            (
                "transport error: tcp connect error: Connection refused (os error 111)",
                Cause::Refused,
            ),
            (
                "h2 protocol error: received fatal alert: UnknownCA",
                Cause::ClientUnknownCa,
            ),
            (
                "h2 protocol error: received fatal alert: CertificateExpired",
                Cause::ClientExpired,
            ),
            (
                "unknown operator ghost",
                Cause::UnknownOperator("ghost".into()),
            ),
            ("operation was canceled", Cause::ClosedEarly),
        ];
        for (text, want) in cases {
            assert_eq!(classify(text), Some(want), "{text}");
        }
        assert_eq!(classify("status: Internal, message: disk full"), None);
    }

    #[test]
    fn sentences_name_the_address_and_the_files() {
        let dir = IdentityFiles::in_dir(Path::new("/home/op/.certfleet/admin"));
        let s = Cause::WrongCa.sentence("ctl:7443", &dir, 0);
        assert!(
            s.contains("ctl:7443") && s.contains("/home/op/.certfleet/admin/ca.pem"),
            "{s}"
        );
        assert!(!s.contains('\n'));
    }

    #[test]
    fn own_certificate_dates_are_checked_before_connecting() {
        let ca = certfleet_common::pki::generate_ca("t", std::time::Duration::from_secs(86_400))
            .unwrap();
        let der = certfleet_common::pem::first_certificate(ca.cert_pem.as_bytes()).unwrap();
        let c = certfleet_common::x509::parse_der(&der).unwrap();
        let p = Path::new("/id/cert.pem");
        assert!(check_own_certificate(&ca.cert_pem, p, c.not_before + 10).is_ok());
        let late = check_own_certificate(&ca.cert_pem, p, c.not_after + 10)
            .unwrap_err()
            .to_string();
        assert!(late.contains("/id/cert.pem expired on"), "{late}");
        let early = check_own_certificate(&ca.cert_pem, p, c.not_before - 3600)
            .unwrap_err()
            .to_string();
        assert!(early.contains("clock is behind"), "{early}");
    }
}
