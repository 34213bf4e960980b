//! The client side of `freshet run`'s admin endpoints, for `freshet
//! rollback --admin` and `freshet backup --online`: one HTTP/1.1 request
//! with the bearer token from `FRESHET_ADMIN__TOKEN`, the JSON answer back.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// The variable that holds the admin token (the same one `freshet run` reads).
pub const TOKEN_VARIABLE: &str = "FRESHET_ADMIN__TOKEN";
/// How long a request may take: a rollback restores the whole model.
const TIMEOUT: Duration = Duration::from_secs(600);
/// The most of an answer read.
const MAX_ANSWER: u64 = 16 << 20;

/// `value` with every byte but unreserved ones percent-encoded, for a query string.
pub fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Sends `method path` (with its query) to the admin endpoint at `address`
/// (`host:port`) and returns the JSON answer; an answer other than 200 is
/// an error carrying the server's message.
pub fn call(address: &str, method: &str, path: &str) -> anyhow::Result<Value> {
    let token = std::env::var(TOKEN_VARIABLE).with_context(|| format!("{TOKEN_VARIABLE} must hold the admin token"))?;
    let target = address
        .to_socket_addrs()
        .with_context(|| format!("resolving {address}"))?
        .next()
        .with_context(|| format!("{address} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(10))
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).context("sending the request")?;
    let mut response = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut response).context("reading the answer")?;
    let text = String::from_utf8_lossy(&response);
    let status: u16 = text.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let answer: Value = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
    if status != 200 {
        let message = answer.get("error").and_then(Value::as_str).map_or_else(|| answer.to_string(), str::to_owned);
        bail!("{address} answered {status}: {message}");
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(percent_encode("/var/lib/freshet backup&x=1"), "%2Fvar%2Flib%2Ffreshet%20backup%26x%3D1");
        assert_eq!(percent_encode("plain-1.2_~"), "plain-1.2_~");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }
}
