//! External channels, one folder each, and what they share: [`http_client`], the HTTP client
//! every channel uses to reach a tenant-chosen address through the egress guard.

pub mod webhook;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tidings_core::{egress, Error, Result};

/// Resolves names with the system resolver and drops every address the egress guard refuses,
/// so each connection, redirects and DNS rebinding included, lands only where it may.
struct GuardedResolver {
    allow_private: bool,
}

/// The error of a name that leads only to refused addresses.
#[derive(Debug)]
pub struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the destination address is not allowed")
    }
}

impl std::error::Error for Refused {}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| egress::check_ip(a.ip(), allow_private).is_ok())
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(Refused) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The HTTP client for tenant-chosen URLs: guarded resolver, no redirects followed, no proxy
/// from the environment, the given per-request timeout.
pub fn http_client(allow_private: bool, timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver { allow_private }))
        .build()
        .map_err(|e| Error::internal(format!("http client: {e}")))
}

/// What [`describe`] says of a request the egress guard refused (it stays refused: retrying
/// cannot help).
pub const REFUSED: &str = "destination address not allowed";

/// What a tenant may be told of a failed request: whether it timed out, was refused by the
/// egress guard, or could not connect, never the reason a connection failed (that would
/// tell open ports from closed ones inside our network).
pub fn describe(e: &reqwest::Error) -> &'static str {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<Refused>() {
            return REFUSED;
        }
        source = s.source();
    }
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_that_resolve_inside_are_refused_on_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = http_client(false, Duration::from_secs(2)).unwrap();
        let e = client
            .post(format!("http://localhost:{port}/"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(describe(&e), REFUSED);
        // nothing reached the listener
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "a connection was made");
        // allowed when configured
        let client = http_client(true, Duration::from_secs(2)).unwrap();
        let req = tokio::spawn(async move {
            client
                .post(format!("http://localhost:{port}/"))
                .send()
                .await
        });
        let (sock, _) = listener.accept().await.unwrap();
        drop(sock);
        let _ = req.await;
    }

    #[tokio::test]
    async fn closed_and_open_ports_fail_alike() {
        let client = http_client(true, Duration::from_secs(2)).unwrap();
        // a closed port: refused at once
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = client
            .post(format!("http://127.0.0.1:{closed}/"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(describe(&e), "connection failed");
        assert!(!describe(&e).contains("refused"));
    }
}
