//! Service start-up, the same for every service: bind the listen address, learn the public
//! URL from the address actually bound, then serve a router with the service's limits until
//! shutdown.
//!
//! Binding comes first so that a port of 0 works and the public URL (the base of the
//! service's did:web document and of the URLs it hands out) names the real port. What a
//! service does between binding and serving (its state, background tasks) and after (a
//! final flush) stays in the service's own `run`:
//!
//! ```ignore
//! let bound = service::start::Bound::bind(&config.listen, config.public_url.as_deref())?;
//! let state = State::new(config.clone(), bound.public_url().clone())?;
//! bound.serve(router(state), &config.limits, shutdown, ready).await?;
//! ```

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;

use crate::http::{HttpError, HttpLimits, ListenConfig};

/// Why a service could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Listening or serving failed (address in use, TLS files, plain HTTP off loopback...).
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The configured `public_url` is not a URL.
    #[error("public_url {url:?}: {source}")]
    PublicUrl {
        url: String,
        #[source]
        source: url::ParseError,
    },
}

/// A bound listener and the public URL derived from it, not serving yet.
#[derive(Debug)]
pub struct Bound {
    listener: std::net::TcpListener,
    listen: ListenConfig,
    public_url: reqwest::Url,
}

impl Bound {
    /// Binds `listen` (refusing plain HTTP off loopback before any bind) and derives the
    /// public URL: `public_url` when configured, else `https://` or `http://` (as TLS is set
    /// or not) and the bound address. The URL always ends with `/`, since paths are joined
    /// below it (`.well-known/did.json`, the status list).
    pub fn bind(listen: &ListenConfig, public_url: Option<&str>) -> Result<Bound, StartError> {
        let listener = crate::http::bind(listen)?;
        let addr = listener.local_addr().map_err(|source| HttpError::Bind {
            addr: listen.listen,
            source,
        })?;
        let public_url = public_url_for(listen, addr, public_url)?;
        Ok(Bound {
            listener,
            listen: listen.clone(),
            public_url,
        })
    }

    /// The service's public base URL, ending with `/`.
    pub fn public_url(&self) -> &reqwest::Url {
        &self.public_url
    }

    /// Serves `router` until `shutdown` resolves (see `http::serve_on`): HTTPS
    /// when TLS is configured, else plain HTTP on loopback. The bound address is sent on
    /// `ready` once the service answers.
    pub async fn serve(
        self,
        router: Router,
        limits: &HttpLimits,
        shutdown: impl Future<Output = ()> + Send + 'static,
        ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
    ) -> Result<(), StartError> {
        crate::http::serve_on(self.listener, router, &self.listen, limits, shutdown, ready).await?;
        Ok(())
    }
}

fn public_url_for(
    listen: &ListenConfig,
    addr: SocketAddr,
    configured: Option<&str>,
) -> Result<reqwest::Url, StartError> {
    let scheme = if listen.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let text = match configured {
        Some(url) => url.to_string(),
        None => format!("{scheme}://{addr}/"),
    };
    let mut url = reqwest::Url::parse(&text).map_err(|source| StartError::PublicUrl {
        url: text.clone(),
        source,
    })?;
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(tls: bool) -> ListenConfig {
        ListenConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: tls.then(|| "cert.pem".into()),
            tls_key: tls.then(|| "key.pem".into()),
        }
    }

    #[test]
    fn the_public_url_names_the_bound_port_and_ends_with_a_slash() {
        let addr: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let url = |tls, configured| public_url_for(&listen(tls), addr, configured).unwrap();
        assert_eq!(url(false, None).as_str(), "http://127.0.0.1:8443/");
        assert_eq!(url(true, None).as_str(), "https://127.0.0.1:8443/");
        assert_eq!(
            url(true, Some("https://issuer.example/office")).as_str(),
            "https://issuer.example/office/"
        );
        assert_eq!(
            url(true, Some("https://issuer.example/office/")).as_str(),
            "https://issuer.example/office/"
        );
        let err = public_url_for(&listen(true), addr, Some("not a url")).unwrap_err();
        assert!(
            matches!(&err, StartError::PublicUrl { url, .. } if url == "not a url"),
            "{err}"
        );
        assert!(err.to_string().starts_with("public_url \"not a url\": "));
    }

    #[tokio::test]
    async fn binding_learns_the_real_port_and_serving_stops_on_shutdown() {
        let bound = Bound::bind(&listen(false), None).unwrap();
        let addr = bound.listener.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        assert_eq!(
            bound.public_url().as_str(),
            format!("http://127.0.0.1:{}/", addr.port())
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let limits = HttpLimits::default();
        let client = async {
            assert_eq!(is_ready.await.unwrap(), addr);
            let body = reqwest::get(format!("http://{addr}/"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            stop.send(()).unwrap();
            body
        };
        let shutdown = async {
            let _ = stopped.await;
        };
        let (served, body) = tokio::join!(bound.serve(app, &limits, shutdown, Some(ready)), client);
        served.unwrap();
        assert_eq!(body, "ok");
    }

    #[test]
    fn plain_http_off_loopback_is_refused_before_binding() {
        let mut cfg = listen(false);
        cfg.listen = "0.0.0.0:0".parse().unwrap();
        assert!(matches!(
            Bound::bind(&cfg, None),
            Err(StartError::Http(HttpError::PlainHttpNotLoopback { .. }))
        ));
    }
}
