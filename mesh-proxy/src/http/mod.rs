//! The HTTP connection manager: hyper server (HTTP/1.1, h2c, ALPN h2, upgrades), route
//! selection, header formatters, the router and upstream HTTP connection pools.

pub mod body;
pub mod filters;
pub mod format;
mod forward;
pub mod local_reply;
pub mod mirror;
pub mod path;
pub mod pool;
pub mod redirect;
pub mod request_body;
pub mod request_headers;
pub mod retry;
pub mod route_select;
pub mod router;
pub mod server;
pub mod stream_info;
pub mod timeout;

pub use server::serve;
