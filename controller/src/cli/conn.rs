//! The operator's connection to the controller: mTLS with the identity directory's
//! `ca.pem`, `cert.pem` and `key.pem`, and errors that name the controller.

use std::path::Path;

use anyhow::{Context, anyhow};
use certfleet_common::proto::operator_client::OperatorClient;
use tonic::transport::Channel;

use super::CliError;

/// Largest answer the CLI accepts from the controller.
const MAX_ANSWER_BYTES: usize = 512 << 20;

/// A connection to the controller as an operator.
pub struct Conn {
    /// Address as given.
    pub addr: String,
    client: OperatorClient<Channel>,
}

impl Conn {
    /// Connects with the identity in `dir` (`ca.pem`, `cert.pem`, `key.pem`).
    pub fn new(addr: &str, dir: &Path) -> anyhow::Result<Self> {
        let read = |f: &str| {
            let p = dir.join(f);
            std::fs::read_to_string(&p)
                .with_context(|| format!("reading operator identity {}", p.display()))
        };
        let channel = certfleet_common::tls::mtls_channel(
            addr,
            &read("ca.pem")?,
            &read("cert.pem")?,
            &read("key.pem")?,
        )?;
        Ok(Conn {
            addr: addr.to_owned(),
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
