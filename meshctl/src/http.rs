//! A small HTTP/1.1 client (hyper) for the admin and monitoring endpoints `meshctl` reads,
//! over a TCP connection opened either directly or inside a pod's network namespace.

use std::fmt;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::pods::netns::{self, NetnsError};

/// How long connecting may take; a proxy that does not accept within this is reported as
/// unreachable rather than waited on.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the connection is opened from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// From `meshctl`'s own network namespace.
    Direct,
    /// From inside a named network namespace (`/var/run/netns/<name>`).
    Netns { name: String, path: PathBuf },
}

impl Route {
    pub fn netns(name: &str) -> Route {
        Route::Netns {
            name: name.to_string(),
            path: netns::path_of(name),
        }
    }
}

/// An HTTP server `meshctl` talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The `Host` header (the address as the user or the cluster state wrote it).
    pub authority: String,
    pub route: Route,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)?;
        if let Route::Netns { name, .. } = &self.route {
            write!(f, " in network namespace {name}")?;
        }
        Ok(())
    }
}

/// Errors reaching an endpoint. Messages name the endpoint; callers add what it is (a
/// proxy's admin, the control plane) and what to check.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url:?} is not a usable URL: {reason} (expected http://HOST:PORT)")]
    BadUrl { url: String, reason: String },
    #[error("cannot resolve {url}: {source}")]
    Resolve { url: String, source: std::io::Error },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("{endpoint} did not answer within {after:?}")]
    Timeout { endpoint: String, after: Duration },
    #[error("HTTP exchange with {endpoint} failed: {source}")]
    Http {
        endpoint: String,
        source: hyper::Error,
    },
}

impl HttpError {
    /// Whether nothing listens there (as opposed to a broken namespace or a slow server).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, HttpError::Connect { .. } | HttpError::Timeout { .. })
    }
}

impl Endpoint {
    /// Parses `http://host:port` (or `host:port`); the path, if any, is ignored.
    pub fn parse(url: &str, route: Route) -> Result<Endpoint, HttpError> {
        let bad = |reason: &str| HttpError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let with_scheme = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        let uri: Uri = with_scheme
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => return Err(bad(&format!("scheme {other} is not supported"))),
            None => return Err(bad("no scheme")),
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|| format!("{host}:{port}"));
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|source| HttpError::Resolve {
                url: url.to_string(),
                source,
            })?
            .next()
            .ok_or_else(|| bad("the host resolves to no address"))?;
        Ok(Endpoint {
            addr,
            authority,
            route,
        })
    }

    fn dial(&self) -> Result<TcpStream, HttpError> {
        let connected = match &self.route {
            Route::Direct => TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT),
            Route::Netns { path, .. } => netns::connect_in(path, self.addr, CONNECT_TIMEOUT)?,
        };
        connected.map_err(|source| HttpError::Connect {
            endpoint: self.to_string(),
            source,
        })
    }
}

/// A response: status and the whole body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request (no body) and reads the whole response, within `timeout`.
pub async fn send(
    endpoint: &Endpoint,
    method: Method,
    path_and_query: &str,
    timeout: Duration,
) -> Result<Reply, HttpError> {
    let name = endpoint.to_string();
    tokio::time::timeout(timeout, exchange(endpoint, method, path_and_query))
        .await
        .map_err(|_| HttpError::Timeout {
            endpoint: name,
            after: timeout,
        })?
}

async fn exchange(
    endpoint: &Endpoint,
    method: Method,
    path_and_query: &str,
) -> Result<Reply, HttpError> {
    let name = endpoint.to_string();
    let http_err = |source| HttpError::Http {
        endpoint: name.clone(),
        source,
    };
    // Connecting may mean entering a namespace: a blocking thread, off the runtime.
    let dialing = endpoint.clone();
    let stream = tokio::task::spawn_blocking(move || dialing.dial())
        .await
        .map_err(|_| HttpError::Connect {
            endpoint: name.clone(),
            source: std::io::Error::other("the connecting thread panicked"),
        })??;
    let connect_err = |source| HttpError::Connect {
        endpoint: name.clone(),
        source,
    };
    stream.set_nonblocking(true).map_err(connect_err)?;
    let stream = tokio::net::TcpStream::from_std(stream).map_err(connect_err)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_err)?;
    let driver = tokio::spawn(conn);
    let request = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(header::HOST, &endpoint.authority)
        .header(
            header::USER_AGENT,
            concat!("meshctl/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| HttpError::BadUrl {
            url: path_and_query.to_string(),
            reason: e.to_string(),
        })?;
    let response = sender.send_request(request).await.map_err(http_err)?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(http_err)?
        .to_bytes();
    driver.abort();
    Ok(Reply { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = Endpoint::parse("http://127.0.0.1:15000", Route::Direct).unwrap();
        assert_eq!(e.addr, "127.0.0.1:15000".parse().unwrap());
        assert_eq!(e.to_string(), "http://127.0.0.1:15000");
        let e = Endpoint::parse("127.0.0.1:15014/debug", Route::netns("pod-a")).unwrap();
        assert_eq!(e.addr.port(), 15014);
        assert_eq!(
            e.to_string(),
            "http://127.0.0.1:15014 in network namespace pod-a"
        );
        assert_eq!(
            Endpoint::parse("http://[::1]:8080", Route::Direct)
                .unwrap()
                .addr,
            "[::1]:8080".parse().unwrap()
        );
        let err = Endpoint::parse("https://127.0.0.1:1", Route::Direct).unwrap_err();
        assert!(err.to_string().contains("https is not supported"), "{err}");
        assert!(Endpoint::parse("http://", Route::Direct).is_err());
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = Endpoint::parse(&format!("127.0.0.1:{port}"), Route::Direct).unwrap();
        let err = send(&e, Method::GET, "/", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.is_unreachable(), "{err}");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }
}
