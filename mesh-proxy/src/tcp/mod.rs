//! tcp_proxy (in progress).
