//! The engine REST API client of the `ovirt.*` host-lifecycle actions (reference A10).
//!
//! Settings on the engine agent: `ovirt.api_url` (e.g.
//! `http://127.0.0.1:8080/ovirt-engine/api`), `ovirt.api_user` (default `admin@internal`),
//! `ovirt.api_password_file` (a host path, mode 0600 or stricter, refused otherwise),
//! `ovirt.api_poll_ms` (status poll interval, default 2000). Only `http://` URLs are spoken
//! so far (the agent on the engine host talks to the engine on loopback); `https://` is
//! refused with a message saying so.
//!
//! The token comes from `POST /ovirt-engine/sso/oauth/token` (`grant_type=password`,
//! `scope=ovirt-app-api`); requests send `Authorization: Bearer`, `Accept: application/json`,
//! `Version: 4`; a 401 logs in once more (tokens cannot be refreshed).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

use super::super::{ActContext, ActError};

/// An authenticated API session.
pub struct Api {
    host: String,
    /// Path prefix of the API, e.g. `/ovirt-engine/api`.
    prefix: String,
    user: String,
    password: String,
    token: std::cell::RefCell<String>,
    /// Poll interval.
    pub poll: Duration,
    timeout: Duration,
}

/// A response.
pub struct Reply {
    /// HTTP status.
    pub code: u16,
    /// Body.
    pub body: String,
}

impl Reply {
    /// The body as JSON (or `Null`).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The engine's fault text (`reason: detail`) or the body.
    pub fn fault(&self) -> String {
        let v = self.json();
        match (v["reason"].as_str(), v["detail"].as_str()) {
            (Some(r), Some(d)) => format!("{r}: {d}"),
            _ => v["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| self.body.chars().take(300).collect()),
        }
    }
}

impl Api {
    /// Logs in with the engine agent's settings.
    pub fn connect(ctx: &ActContext<'_>) -> Result<Api, ActError> {
        let url = ctx.cfg.setting("ovirt.api_url").ok_or_else(|| {
            ActError("setting ovirt.api_url is not set on this agent (the engine API base URL, e.g. http://127.0.0.1/ovirt-engine/api)".into())
        })?;
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            ActError(format!(
                "ovirt.api_url {url:?}: only http:// (loopback on the engine host) is supported"
            ))
        })?;
        let (host, path) = rest.split_once('/').unwrap_or((rest, "ovirt-engine/api"));
        let user = ctx
            .cfg
            .setting("ovirt.api_user")
            .unwrap_or("admin@internal")
            .to_owned();
        let pw_setting = ctx.cfg.setting("ovirt.api_password_file").ok_or_else(|| {
            ActError("setting ovirt.api_password_file is not set on this agent".into())
        })?;
        let password = ctx
            .cfg
            .read_secret_file("password file", pw_setting)
            .map_err(ActError)?;
        let poll = ctx
            .cfg
            .setting("ovirt.api_poll_ms")
            .and_then(|p| p.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(2));
        let api = Api {
            host: host.to_owned(),
            prefix: format!("/{}", path.trim_end_matches('/')),
            user,
            password,
            token: std::cell::RefCell::new(String::new()),
            poll,
            timeout: Duration::from_secs(30),
        };
        api.login()?;
        Ok(api)
    }

    fn login(&self) -> Result<(), ActError> {
        let body = format!(
            "grant_type=password&scope=ovirt-app-api&username={}&password={}",
            pct(&self.user),
            pct(&self.password)
        );
        let r = self.raw(
            "POST",
            "/ovirt-engine/sso/oauth/token",
            "application/x-www-form-urlencoded",
            &body,
            None,
        )?;
        let v = r.json();
        match v["access_token"].as_str() {
            Some(t) if r.code == 200 => {
                *self.token.borrow_mut() = t.to_owned();
                Ok(())
            }
            _ => Err(ActError(format!(
                "engine SSO login as {} failed (HTTP {}): {}",
                self.user,
                r.code,
                r.fault()
            ))),
        }
    }

    fn raw(
        &self,
        method: &str,
        path: &str,
        ctype: &str,
        body: &str,
        token: Option<&str>,
    ) -> Result<Reply, ActError> {
        let what = format!("{method} http://{}{path}", self.host);
        let e = |x: std::io::Error| ActError(format!("{what}: {x}"));
        let mut tcp = TcpStream::connect(&self.host).map_err(e)?;
        tcp.set_read_timeout(Some(self.timeout)).map_err(e)?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nVersion: 4\r\nConnection: close\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        tcp.write_all(req.as_bytes()).map_err(e)?;
        let mut buf = Vec::new();
        tcp.read_to_end(&mut buf).map_err(e)?;
        parse_response(&buf).map_err(|e| ActError(format!("{what}: {e}")))
    }

    /// An API request (`rel` below the API prefix), logging in again once on 401.
    pub fn call(&self, method: &str, rel: &str, body: &str) -> Result<Reply, ActError> {
        let path = format!("{}{rel}", self.prefix);
        for attempt in 0..2 {
            let t = self.token.borrow().clone();
            let r = self.raw(method, &path, "application/xml", body, Some(&t))?;
            if r.code == 401 && attempt == 0 {
                self.login()?;
                continue;
            }
            return Ok(r);
        }
        unreachable!("the loop returns")
    }

    /// GET returning JSON, failing on a non-200.
    pub fn get(&self, rel: &str) -> Result<Value, ActError> {
        let r = self.call("GET", rel, "")?;
        if r.code != 200 {
            return Err(ActError(format!(
                "GET {}{rel}: HTTP {}: {}",
                self.prefix,
                r.code,
                r.fault()
            )));
        }
        Ok(r.json())
    }

    /// The host whose name or address is `name` (FQDN or short name).
    pub fn find_host(&self, name: &str) -> Result<Value, ActError> {
        let all = self.get("/hosts")?;
        let short = name.split('.').next().unwrap_or(name);
        all["host"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|h| h["address"] == name || h["name"] == name || h["name"] == short)
            .cloned()
            .ok_or_else(|| {
                ActError(format!(
                    "the engine knows no host named or addressed {name:?}"
                ))
            })
    }

    /// The current status of host `id`.
    pub fn status(&self, id: &str) -> Result<String, ActError> {
        Ok(self.get(&format!("/hosts/{id}"))?["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }
}

/// Splits a raw HTTP/1.1 response (`Connection: close`, read to the end) into status and body.
pub fn parse_response(raw: &[u8]) -> Result<Reply, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("malformed HTTP response")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no HTTP status")?;
    Ok(Reply {
        code,
        body: body.to_owned(),
    })
}

/// Percent-encodes a form value.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_encoded() {
        assert_eq!(pct("admin@internal"), "admin%40internal");
        assert_eq!(pct("a b&c"), "a%20b%26c");
    }
}
