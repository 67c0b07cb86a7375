//! The client side, for the CLI subcommands and the OCI hook. `--api` names
//! the control socket (a path: the default) or a TCP address (`host:port`).
//! Over TCP the client sends the bearer token when it can read the token
//! file (`--token-file`, root only). Over the socket it speaks a minimal
//! HTTP/1.1 itself (one request per connection).

use super::token::{self, Token};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// Where the TCP client looks for the token (set once from `--token-file`).
static TOKEN_FILE: OnceLock<PathBuf> = OnceLock::new();

/// The token file the CLI reads when talking TCP.
pub fn set_token_file(path: PathBuf) {
    let _ = TOKEN_FILE.set(path);
}

enum Target {
    Tcp { base: String, agent: ureq::Agent, token: Option<Token> },
    Unix { path: PathBuf, timeout: Duration },
}

/// A client of the agent's API.
pub struct Client {
    target: Target,
}

/// Whether `api` names a Unix socket (a path) rather than `host:port`.
pub fn is_socket_path(api: &str) -> bool {
    api.starts_with('/') || api.starts_with('.') || api.starts_with("unix:") || (api.contains('/') && !api.contains("://"))
}

impl Client {
    pub fn new(api: &str) -> Client {
        Client::with_timeout(api, Duration::from_secs(10))
    }

    pub fn with_timeout(api: &str, timeout: Duration) -> Client {
        if is_socket_path(api) {
            return Client { target: Target::Unix { path: PathBuf::from(api.trim_start_matches("unix:")), timeout } };
        }
        let agent = ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build().into();
        let token = TOKEN_FILE.get().and_then(token::read_file);
        let base = if api.contains("://") { api.trim_end_matches('/').to_string() } else { format!("http://{api}") };
        Client { target: Target::Tcp { base, agent, token } }
    }

    fn call(&self, method: &str, path: &str, body: Option<(&str, Vec<u8>)>) -> Result<Value> {
        let (status, bytes) = match &self.target {
            Target::Unix { path: sock, timeout } => unix_call(sock, *timeout, method, path, body)?,
            Target::Tcp { base, agent, token } => {
                let url = format!("{base}{path}");
                let auth = token.as_ref().map(|t| format!("Bearer {}", t.as_str()));
                let res = match (method, body) {
                    ("GET", _) => with_auth(agent.get(&url), &auth).call(),
                    ("DELETE", _) => with_auth(agent.delete(&url), &auth).call(),
                    (_, Some((ct, b))) => with_auth(agent.post(&url), &auth).header("Content-Type", ct).send(&b[..]),
                    (_, None) => with_auth(agent.post(&url), &auth).send_empty(),
                };
                let mut res =
                    res.with_context(|| format!("cannot reach the lancet agent at {base} (is `lancet run --listen` running? see --api)"))?;
                let status = res.status().as_u16();
                let mut bytes = Vec::new();
                res.body_mut().as_reader().read_to_end(&mut bytes)?;
                (status, bytes)
            }
        };
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let msg = body["error"].as_str().map(str::to_string).unwrap_or_else(|| format!("the agent answered HTTP {status}"));
            bail!("{msg}");
        }
        Ok(body)
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        self.call("GET", path, None)
    }

    pub fn delete(&self, path: &str) -> Result<Value> {
        self.call("DELETE", path, None)
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        self.call("POST", path, Some(("application/json", serde_json::to_vec(body)?)))
    }

    pub fn post_text(&self, path: &str, body: &str) -> Result<Value> {
        self.call("POST", path, Some(("text/plain; charset=utf-8", body.as_bytes().to_vec())))
    }
}

fn with_auth<B>(req: ureq::RequestBuilder<B>, auth: &Option<String>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(a) => req.header("Authorization", a),
        None => req,
    }
}

/// One request over the socket: (status, body).
fn unix_call(sock: &Path, timeout: Duration, method: &str, path: &str, body: Option<(&str, Vec<u8>)>) -> Result<(u16, Vec<u8>)> {
    let mut s = std::os::unix::net::UnixStream::connect(sock).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "permission denied: lancet's control socket {} needs root (or the agent's read group, for reading)",
            sock.display()
        ),
        _ => anyhow::anyhow!("cannot reach the lancet agent at {} (is `lancet run` running? see --api): {e}", sock.display()),
    })?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: lancet\r\nConnection: close\r\nAccept: application/json\r\n").into_bytes();
    match &body {
        Some((ct, b)) => req.extend_from_slice(format!("Content-Type: {ct}\r\nContent-Length: {}\r\n\r\n", b.len()).as_bytes()),
        None if method != "GET" => req.extend_from_slice(b"Content-Length: 0\r\n\r\n"),
        None => req.extend_from_slice(b"\r\n"),
    }
    if let Some((_, b)) = &body {
        req.extend_from_slice(b);
    }
    let io = |e: std::io::Error| anyhow::anyhow!("talking to the lancet agent at {}: {e}", sock.display());
    s.write_all(&req).map_err(io)?;
    let mut resp = Vec::new();
    s.take(64 << 20).read_to_end(&mut resp).map_err(io)?;
    parse_response(&resp).with_context(|| format!("the answer of the lancet agent at {}", sock.display()))
}

/// Parses an HTTP/1.1 response read to its end: (status, body), with a
/// chunked body decoded.
pub fn parse_response(resp: &[u8]) -> Result<(u16, Vec<u8>)> {
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n").context("no end of headers")?;
    let head = std::str::from_utf8(&resp[..end]).context("headers are not text")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("no status")?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else { continue };
        match k.trim().to_ascii_lowercase().as_str() {
            "transfer-encoding" => chunked = v.trim().eq_ignore_ascii_case("chunked"),
            "content-length" => length = v.trim().parse::<usize>().ok(),
            _ => {}
        }
    }
    let rest = &resp[end + 4..];
    if chunked {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let line_end = rest[at..].windows(2).position(|w| w == b"\r\n").context("truncated chunk")? + at;
            let size_text = std::str::from_utf8(&rest[at..line_end])?.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).context("bad chunk size")?;
            at = line_end + 2;
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(at..at + size).context("truncated chunk")?);
            at += size + 2;
        }
        return Ok((status, out));
    }
    let body = match length {
        Some(n) => rest.get(..n).context("truncated body")?.to_vec(),
        None => rest.to_vec(),
    };
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_targets() {
        assert!(is_socket_path("/run/lancet/lancet.sock"));
        assert!(is_socket_path("./lancet.sock"));
        assert!(is_socket_path("unix:/x.sock"));
        assert!(is_socket_path("tmp/x.sock"));
        assert!(!is_socket_path("127.0.0.1:7447"));
        assert!(!is_socket_path("localhost:7447"));
        assert!(!is_socket_path("[::1]:7447"));
        assert!(!is_socket_path("http://127.0.0.1:7447/"));
    }

    #[test]
    fn responses() {
        let r = b"HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n{\"error\":\"x\"}";
        assert_eq!(parse_response(r).unwrap(), (403, b"{\"error\":\"x\"}".to_vec()));
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(r).unwrap(), (200, b"{\"a\":1}".to_vec()));
        let r = b"HTTP/1.1 200 OK\r\n\r\n[]";
        assert_eq!(parse_response(r).unwrap(), (200, b"[]".to_vec()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n[]").is_err());
        assert!(parse_response(b"garbage").is_err());
    }
}
