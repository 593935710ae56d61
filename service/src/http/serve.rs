//! Where and how a service listens: the listen configuration, binding (plain HTTP only on
//! loopback), TLS, and handing the listener to the connection loop in `conn`. Apart from
//! the middleware, which applies to requests whatever carries them.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Once;

use axum::Router;

use crate::http::config::{HttpError, HttpLimits, ListenConfig};
use crate::http::conn::{self, fd_headroom};

pub(super) fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

pub(super) fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means another provider is already installed, which is fine.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

fn announce(addr: SocketAddr, tls: bool, ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>) {
    tracing::info!(%addr, tls, "listening");
    if let Some(ready) = ready {
        // The receiver may have lost interest; serving goes on regardless.
        let _ = ready.send(addr);
    }
}

/// Binds the listen address without serving yet, so a caller can learn the real port
/// (when configured as 0) before building its router. Refuses plain HTTP off loopback
/// before any bind is attempted.
pub(crate) fn bind(cfg: &ListenConfig) -> Result<std::net::TcpListener, HttpError> {
    check_listen(cfg, cfg.listen)?;
    let bind_err = |source| HttpError::Bind {
        addr: cfg.listen,
        source,
    };
    let listener = std::net::TcpListener::bind(cfg.listen).map_err(bind_err)?;
    // Required by tokio, which takes the listener over.
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

/// Serves `router` on a listener from [`bind`] until `shutdown` completes, then drains
/// connections for at most the request timeout: HTTPS when `tls_cert` and `tls_key` are
/// set, else plain HTTP (loopback only). The bound address is sent on `ready` once
/// listening.
pub(crate) async fn serve_on(
    listener: std::net::TcpListener,
    router: Router,
    cfg: &ListenConfig,
    limits: &HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), HttpError> {
    limits.validate()?;
    let addr = listener.local_addr().map_err(|source| HttpError::Bind {
        addr: cfg.listen,
        source,
    })?;
    // Checked again on the real address: the listener may not come from `bind`.
    check_listen(cfg, addr)?;
    let rules = conn::Rules::new(limits, fd_headroom(limits.max_connections));
    match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => {
            serve_tls(listener, addr, router, cert, key, rules, shutdown, ready).await
        }
        _ => serve_plain(listener, addr, router, rules, shutdown, ready).await,
    }
}

/// Binds and serves `router` (already wrapped by [`common_layers`]; this does not add
/// them) until `shutdown` completes, then drains connections for at most the request
/// timeout. HTTPS when `tls_cert` and `tls_key` are set; plain HTTP only on a loopback
/// address. The bound address (useful with port 0) is sent on `ready` once listening.
/// Services bind first ([`crate::start::Bound`]); the tests bind and serve in one call.
#[cfg(test)]
pub(crate) async fn serve(
    router: Router,
    cfg: &ListenConfig,
    limits: &HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), HttpError> {
    limits.validate()?;
    let listener = bind(cfg)?;
    serve_on(listener, router, cfg, limits, shutdown, ready).await
}

fn check_listen(cfg: &ListenConfig, addr: SocketAddr) -> Result<(), HttpError> {
    match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(_), Some(_)) => Ok(()),
        (None, None) if is_loopback(addr.ip()) => Ok(()),
        (None, None) => Err(HttpError::PlainHttpNotLoopback { addr }),
        _ => Err(HttpError::IncompleteTls),
    }
}

/// Plain HTTP and TLS share one server ([`conn`]): the connection cap, the first-request,
/// header and idle deadlines, the keep-alive limit, and a graceful shutdown that drains
/// requests for at most the request timeout.
async fn serve_plain(
    listener: std::net::TcpListener,
    addr: SocketAddr,
    router: Router,
    rules: conn::Rules,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), HttpError> {
    let listener = tokio::net::TcpListener::from_std(listener).map_err(HttpError::Serve)?;
    announce(addr, false, ready);
    conn::serve(listener, router, rules, None, shutdown).await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn serve_tls(
    listener: std::net::TcpListener,
    addr: SocketAddr,
    router: Router,
    cert: &std::path::Path,
    key: &std::path::Path,
    rules: conn::Rules,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), HttpError> {
    install_crypto_provider();
    let tls = conn::tls_acceptor(cert, key).map_err(|source| HttpError::Tls {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(HttpError::Serve)?;
    announce(addr, true, ready);
    conn::serve(listener, router, rules, Some(tls), shutdown).await;
    Ok(())
}
