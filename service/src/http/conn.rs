//! Accepting and serving connections, for plain HTTP and TLS alike: the connection cap,
//! the first-request and idle deadlines, the keep-alive limit, TLS handshakes, and the
//! graceful shutdown.
//!
//! Why not a ready-made server loop: axum's and axum-server's accept every connection the
//! kernel hands them and serve it on its own task, with no cap, and hyper-util's automatic
//! HTTP/1-or-2 detection waits for a connection's first bytes with no deadline, so a client
//! that connects and says nothing holds a descriptor for ever. Enough of them exhaust the
//! process's descriptors, and then everything else that opens a file fails too.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::header::CONNECTION;
use axum::http::{HeaderValue, Version};
use axum::response::Response;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::http::config::{HttpLimits, MAX_CONNECTIONS_LIMIT};

/// Descriptors kept for everything but client connections: databases, policy and key
/// files, outbound clients, logs.
const FD_RESERVE: u64 = 256;

/// The descriptor limit asked for at start: the kernel's default ceiling (`nr_open`), or
/// the hard limit when that is lower.
const NOFILE_WANTED: u64 = 1 << 20;

/// After a failed accept (out of descriptors, most likely), wait this long before the
/// next: accepting again at once would spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How long a connection being closed gets to flush its last answer (HTTP/2 also waits
/// for the client to acknowledge GOAWAY) once no request is in flight.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The same warning at most this often: under a flood it would otherwise fill the log.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns how many connections
/// fit beside [`FD_RESERVE`] other descriptors: `max_connections`, or fewer (with a
/// warning) when the limit cannot hold that many. Running out of descriptors would fail
/// every file the service opens, not only new connections, so the cap yields first.
pub(crate) fn fd_headroom(max_connections: usize) -> usize {
    let limit = match rlimit::increase_nofile_limit(NOFILE_WANTED) {
        Ok(limit) => limit,
        Err(err) => match rlimit::Resource::NOFILE.get() {
            Ok((soft, _)) => {
                tracing::warn!(%err, soft, "cannot raise the file descriptor limit");
                soft
            }
            Err(_) => {
                tracing::warn!(%err, "cannot read the file descriptor limit");
                return max_connections;
            }
        },
    };
    let room = limit.saturating_sub(FD_RESERVE).max(limit / 2).max(1);
    if max_connections as u64 > room {
        tracing::warn!(
            fd_limit = limit,
            max_connections,
            cap = room,
            "the file descriptor limit cannot hold max_connections; serving fewer connections \
             (raise the hard RLIMIT_NOFILE)"
        );
        usize::try_from(room).unwrap_or(max_connections)
    } else {
        tracing::debug!(fd_limit = limit, max_connections, "file descriptors");
        max_connections
    }
}

/// The rules of [`serve`], from the service's limits.
#[derive(Debug, Clone)]
pub(super) struct Rules {
    max_connections: usize,
    /// From the accept to the first request's complete headers, TLS handshake included.
    first_request: Duration,
    header_read: Duration,
    idle: Duration,
    max_requests: u64,
    /// How long in-flight requests may take to finish once the connection is closing.
    drain: Duration,
}

impl Rules {
    /// `max_connections` is the cap in force ([`fd_headroom`]), not necessarily the
    /// configured one.
    pub(super) fn new(limits: &HttpLimits, max_connections: usize) -> Rules {
        let at_least = |d: Duration| d.max(Duration::from_millis(1));
        Rules {
            max_connections: max_connections.clamp(1, MAX_CONNECTIONS_LIMIT),
            first_request: at_least(limits.header_read_timeout()),
            header_read: at_least(limits.header_read_timeout()),
            idle: at_least(limits.idle_timeout()),
            max_requests: limits.max_requests_per_connection.max(1),
            drain: at_least(limits.request_timeout()),
        }
    }
}

/// The TLS side of a listener: the certificate chain and key from PEM files, HTTP/2 and
/// HTTP/1.1 offered by ALPN, no client certificates.
pub(super) fn tls_acceptor(cert: &Path, key: &Path) -> io::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid =
        |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let chain = CertificateDer::pem_slice_iter(&std::fs::read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&e))?;
    if chain.is_empty() {
        return Err(invalid(&"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_slice(&std::fs::read(key)?).map_err(|e| invalid(&e))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting, asks
/// every connection to close, and waits at most the drain time for their requests.
///
/// The cap: a connection is served only with one of `max_connections` slots. When a
/// connection arrives and none is free, the connection idle longest (no request in
/// flight: it sent nothing yet, is mid-headers, or waits between requests) is closed at
/// once to make room, so idle clients cannot keep a prompt one out. Failing that, the
/// connection busy longest is cut if it has been busy for longer than the request timeout:
/// no ordinary request takes that long, only an event stream or a client that does not
/// read its answer, and those must not keep everyone else out either. Only when every
/// slot has a younger request in flight does the new connection wait for one, and
/// accepting pauses meanwhile: further clients wait in the kernel's listen backlog, which
/// costs the process no descriptor. Open connections are thus `max_connections` plus the
/// one waiting, at most.
pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    rules: Rules,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let rules = Arc::new(rules);
    let slots = Arc::new(Semaphore::new(rules.max_connections));
    let live = Arc::new(Live::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accept_warned: Option<Instant> = None;
    let mut cap_warned: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    if due(&mut accept_warned) {
                        tracing::warn!(%err, "cannot accept connections");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let evicted = live.evict_for_newcomer(rules.drain);
                if due(&mut cap_warned) {
                    tracing::warn!(
                        max_connections = rules.max_connections,
                        evicted,
                        "connection cap reached"
                    );
                }
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        // Never closed; if it were, nothing more could be served.
                        Err(_) => break,
                    },
                }
            }
        };
        let slot = Slot::new(&live, permit);
        tokio::spawn(connection(
            stream,
            slot,
            router.clone(),
            rules.clone(),
            tls.clone(),
            stop_rx.clone(),
        ));
    }
    drop(listener);
    // Receivers may all be gone already; then nothing is left to stop.
    let _ = stop_tx.send(true);
    // Each connection returns its slot when it ends: all of them back means drained.
    // Connections close themselves by the drain time; the margin covers the last flush.
    let all = u32::try_from(rules.max_connections).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(rules.drain + CLOSE_GRACE, slots.acquire_many(all)).await;
    if drained.is_err() {
        tracing::warn!("connections still open after the drain time; closing them");
    }
}

/// True (and remembers now) when the last warning of this kind is older than
/// [`WARN_EVERY`].
fn due(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    if last.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
        return false;
    }
    *last = Some(now);
    true
}

/// What the server knows of one connection, shared by its task, its requests, and the
/// accept loop (which may evict it).
struct Activity {
    in_flight: AtomicUsize,
    served: AtomicU64,
    /// When the connection last had no request in flight: the accept, or the end of its
    /// last request.
    idle_since: Mutex<Instant>,
    /// When its requests in flight went from none to one.
    busy_since: Mutex<Instant>,
    /// Evicted to make room: closed as soon as no request is in flight.
    evict: AtomicBool,
    /// Evicted while busy for too long: closed at once.
    cut: AtomicBool,
    /// Wakes the connection's task when any of the above changes.
    wake: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            idle_since: Mutex::new(Instant::now()),
            busy_since: Mutex::new(Instant::now()),
            evict: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    fn idle_since(&self) -> Instant {
        *self.idle_since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Since when requests have been in flight; None when idle. Read under the lock that
    /// [`InFlight::start`] holds while it counts, so the two always agree.
    fn busy_since(&self) -> Option<Instant> {
        let since = self.busy_since.lock().unwrap_or_else(|p| p.into_inner());
        (self.in_flight() > 0).then_some(*since)
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::Acquire)
    }

    fn evicted(&self) -> bool {
        self.evict.load(Ordering::Acquire)
    }

    /// Resolves once the connection is evicted.
    async fn until_evicted(&self) {
        while !self.evicted() {
            self.wake.notified().await;
        }
    }
}

/// The open connections, for eviction at the cap.
#[derive(Default)]
struct Live {
    next_id: AtomicU64,
    connections: Mutex<HashMap<u64, Arc<Activity>>>,
}

impl Live {
    /// Marks a connection for closing to make room (see [`serve`]): the one idle longest,
    /// else the one busy longest if busy for longer than `stale_after`. False when there
    /// is none (or every candidate is already being evicted).
    fn evict_for_newcomer(&self, stale_after: Duration) -> bool {
        let connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        let candidates = || connections.values().filter(|a| !a.evicted());
        if let Some(idle) = candidates()
            .filter(|a| a.in_flight() == 0)
            .min_by_key(|a| a.idle_since())
        {
            idle.evict.store(true, Ordering::Release);
            idle.wake.notify_one();
            return true;
        }
        let now = Instant::now();
        match candidates()
            .filter_map(|a| a.busy_since().map(|since| (a, since)))
            .filter(|(_, since)| now.duration_since(*since) > stale_after)
            .min_by_key(|(_, since)| *since)
            .map(|(a, _)| a)
        {
            Some(stale) => {
                stale.cut.store(true, Ordering::Release);
                stale.evict.store(true, Ordering::Release);
                stale.wake.notify_one();
                true
            }
            None => false,
        }
    }
}

/// A connection's place among the open ones: registered for eviction, holding one of
/// the cap's slots; both are given back when the connection's task ends.
struct Slot {
    id: u64,
    live: Arc<Live>,
    activity: Arc<Activity>,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    fn new(live: &Arc<Live>, permit: OwnedSemaphorePermit) -> Slot {
        let id = live.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new());
        live.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, activity.clone());
        Slot {
            id,
            live: live.clone(),
            activity,
            _permit: permit,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.live
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// One connection from accept to close. Dropping the stream closes it.
async fn connection(
    stream: TcpStream,
    slot: Slot,
    router: Router,
    rules: Arc<Rules>,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) {
    let activity = slot.activity.clone();
    // Small answers should leave at once rather than wait for more to send.
    let _ = stream.set_nodelay(true);
    match tls {
        None => drive(TokioIo::new(stream), &activity, router, &rules, &mut stop).await,
        Some(acceptor) => {
            // The handshake counts against the first-request deadline: a client that never
            // finishes it holds its slot no longer than one that sends nothing.
            let deadline = activity.idle_since() + rules.first_request;
            let handshake = tokio::select! {
                biased;
                _ = stop.wait_for(|stopped| *stopped) => return,
                () = activity.until_evicted() => return,
                done = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => done,
            };
            // A failed or late handshake: nothing to answer, the connection is dropped.
            if let Ok(Ok(stream)) = handshake {
                drive(TokioIo::new(stream), &activity, router, &rules, &mut stop).await;
            }
        }
    }
    drop(slot);
}

/// Serves HTTP/1.1 or HTTP/2 on `io` and closes the connection when it has been idle too
/// long, is evicted, has served its requests, or the server stops.
async fn drive<I>(
    io: TokioIo<I>,
    activity: &Arc<Activity>,
    router: Router,
    rules: &Rules,
    stop: &mut watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(rules.header_read);
    let service = TowerToHyperService::new(Tracked {
        router,
        activity: activity.clone(),
        max_requests: rules.max_requests,
    });
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    // Once set, the connection is closing: hyper finishes what is in flight, and this is
    // when it is dropped regardless.
    let mut closing: Option<Instant> = None;
    loop {
        let in_flight = activity.in_flight();
        let served = activity.served();
        let stopped = *stop.borrow();
        // Nothing was ever asked, so nothing can be lost: close at once.
        if in_flight == 0 && served == 0 && (activity.evicted() || stopped) {
            return;
        }
        if activity.cut.load(Ordering::Acquire) {
            return;
        }
        if closing.is_none() && (activity.evicted() || stopped || served >= rules.max_requests) {
            // HTTP/1.1: closes now if idle, else after the answer in flight (which then
            // says `connection: close`); HTTP/2: GOAWAY.
            conn.as_mut().graceful_shutdown();
            closing = Some(Instant::now() + rules.drain);
        }
        let wake_at = match (idle_until(activity, rules, closing.is_some()), closing) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            biased;
            // Ended by either side; errors (resets, malformed requests) end it too.
            _ = conn.as_mut() => return,
            () = activity.wake.notified() => {}
            _ = stop.wait_for(|stopped| *stopped), if closing.is_none() && !stopped => {}
            () = sleep_until(wake_at) => {
                let now = Instant::now();
                if closing.is_some_and(|at| now >= at) {
                    return;
                }
                // Read again: a request may have started while this slept.
                if idle_until(activity, rules, closing.is_some()).is_some_and(|at| now >= at) {
                    return;
                }
            }
        }
    }
}

/// When an idle connection is to be closed; None while a request is in flight. Before its
/// first request a connection has the header read time (from the accept); between
/// requests the idle timeout; once closing, the time to flush its last answer.
fn idle_until(activity: &Activity, rules: &Rules, closing: bool) -> Option<Instant> {
    if activity.in_flight() > 0 {
        return None;
    }
    let allowed = if activity.served() == 0 {
        rules.first_request
    } else if closing {
        CLOSE_GRACE
    } else {
        rules.idle
    };
    Some(activity.idle_since() + allowed)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The router, counting the connection's requests in flight: from the call until the
/// answer's body is sent (or dropped), so that a long answer (an event stream) is not idle.
/// The last request a connection may make is answered with `connection: close` on
/// HTTP/1.x: hyper then ends the connection itself, even when more requests were already
/// pipelined behind it (HTTP/2 gets GOAWAY from [`drive`]).
#[derive(Clone)]
struct Tracked {
    router: Router,
    activity: Arc<Activity>,
    max_requests: u64,
}

impl tower::Service<Request<Incoming>> for Tracked {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The router is always ready; the concurrency limit is a layer inside it.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let (guard, served) = InFlight::start(&self.activity);
        let last = served >= self.max_requests && req.version() <= Version::HTTP_11;
        let router = self.router.clone();
        Box::pin(async move {
            let mut response = router.oneshot(req.map(Body::new)).await?;
            if last {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response.map(|body| {
                Body::new(GuardedBody {
                    body,
                    _guard: guard,
                })
            }))
        })
    }
}

/// One request in flight on its connection.
struct InFlight(Arc<Activity>);

impl InFlight {
    /// Also returns how many requests the connection has made, this one included.
    fn start(activity: &Arc<Activity>) -> (InFlight, u64) {
        {
            let mut since = activity
                .busy_since
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if activity.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
                *since = Instant::now();
            }
        }
        let served = activity
            .served
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        activity.wake.notify_one();
        (InFlight(activity.clone()), served)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        // Set before the count drops, so that an evictor that sees it idle sees when.
        *activity
            .idle_since
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Instant::now();
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
        activity.wake.notify_one();
    }
}

/// An answer's body that ends its request's [`InFlight`] when it is dropped.
struct GuardedBody {
    body: Body,
    _guard: InFlight,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{serve, HttpLimits, ListenConfig};
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// How long until the server closes `s`; None if still open after `limit`.
    async fn closed_after<S: AsyncRead + Unpin>(mut s: S, limit: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(limit.saturating_sub(t0.elapsed()), s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return Some(t0.elapsed()),
                Ok(Ok(_)) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Over TLS, a client that never sends its hello, and one that completes the
    /// handshake and then sends nothing, are both closed after the header timeout.
    #[tokio::test]
    async fn tls_connections_that_send_nothing_are_closed() {
        crate::http::serve::install_crypto_provider();
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, key.cert.pem()).unwrap();
        std::fs::write(&key_path, key.signing_key.serialize_pem()).unwrap();
        let cfg = ListenConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: Some(cert_path),
            tls_key: Some(key_path),
        };
        let limits = HttpLimits {
            header_read_timeout_secs: 1,
            ..HttpLimits::default()
        };
        let router = Router::new().route("/health", get(|| async { "ok" }));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.await;
            };
            serve(router, &cfg, &limits, shutdown, Some(ready_tx)).await
        });
        let addr = ready_rx.await.unwrap();

        let mut roots = rustls::RootCertStore::empty();
        roots.add(key.cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();

        let no_hello = TcpStream::connect(addr).await.unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut no_request = connector.connect(name.clone(), tcp).await.unwrap();
        no_request.flush().await.unwrap();
        let limit = Duration::from_secs(5);
        let (no_hello, no_request) = tokio::join!(
            closed_after(no_hello, limit),
            closed_after(no_request, limit)
        );
        for (what, closed) in [("no hello", no_hello), ("no request", no_request)] {
            assert!(
                closed.is_some_and(|t| t < Duration::from_millis(2500)),
                "{what}: closed after {closed:?}, the header timeout is 1 s"
            );
        }

        // A prompt client is still served.
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        // A TLS peer may close without close_notify; the answer read so far is what counts.
        let _ = tls.read_to_string(&mut answer).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    /// A plain server of `router` under `limits`; stops when the sender is dropped.
    async fn plain(
        router: Router,
        limits: HttpLimits,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let cfg = ListenConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: None,
            tls_key: None,
        };
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.await;
            };
            serve(router, &cfg, &limits, shutdown, Some(ready_tx)).await
        });
        (ready_rx.await.unwrap(), stop_tx)
    }

    /// Sends one request and reads until the server sends something.
    async fn ask(addr: std::net::SocketAddr, request: &str) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        s
    }

    async fn health(addr: std::net::SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        answer
    }

    /// At the cap with every slot busy, a request busy for longer than the request
    /// timeout (an endless stream here) is cut to make room; a younger one is waited for.
    #[tokio::test]
    async fn at_the_cap_only_requests_older_than_the_request_timeout_are_cut() {
        let endless = || async {
            let first = futures::stream::iter([Ok::<_, Infallible>(Bytes::from("x"))]);
            Body::from_stream(futures::StreamExt::chain(first, futures::stream::pending()))
        };
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            "slow"
        };
        let router = Router::new()
            .route("/health", get(|| async { "ok" }))
            .route("/stream", get(endless))
            .route("/slow", get(slow));
        let limits = HttpLimits {
            max_connections: 2,
            request_timeout_secs: 1,
            ..HttpLimits::default()
        };
        let (addr, _stop) = plain(router, limits).await;

        let old = ask(addr, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let newer = ask(addr, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n").await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        // The oldest stream (1.3 s, over the 1 s request timeout) makes room.
        let t0 = Instant::now();
        assert!(health(addr).await.starts_with("HTTP/1.1 200"));
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "{:?}",
            t0.elapsed()
        );
        let limit = Duration::from_millis(500);
        assert!(
            closed_after(old, limit).await.is_some(),
            "the oldest stream is cut"
        );
        drop(newer);

        // Two slots busy with requests younger than the request timeout: the newcomer
        // waits for one of them to finish instead of cutting it.
        let mut a = TcpStream::connect(addr).await.unwrap();
        let mut b = TcpStream::connect(addr).await.unwrap();
        let slow_request = b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        a.write_all(slow_request).await.unwrap();
        b.write_all(slow_request).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(health(addr).await.starts_with("HTTP/1.1 200"));
        for mut s in [a, b] {
            let mut answer = String::new();
            s.read_to_string(&mut answer).await.unwrap();
            assert!(answer.ends_with("slow"), "{answer}");
        }
    }

    #[test]
    fn connection_limits_are_validated() {
        let d = HttpLimits::default();
        assert_eq!(
            (
                d.max_connections,
                d.idle_timeout_secs,
                d.max_requests_per_connection
            ),
            (1024, 10, 1000)
        );
        d.validate().unwrap();
        let written: HttpLimits = serde_json::from_str(
            r#"{"max_connections": 8, "idle_timeout_secs": 2, "max_requests_per_connection": 3}"#,
        )
        .unwrap();
        assert_eq!(written.max_connections, 8);
        assert_eq!(written.header_read_timeout_secs, d.header_read_timeout_secs);
        for bad in [
            HttpLimits {
                max_connections: 0,
                ..d.clone()
            },
            HttpLimits {
                idle_timeout_secs: 0,
                ..d.clone()
            },
            HttpLimits {
                max_requests_per_connection: 0,
                ..d.clone()
            },
            HttpLimits {
                max_connections: super::super::MAX_CONNECTIONS_LIMIT + 1,
                ..d.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fd_headroom_keeps_the_cap_that_fits() {
        let (soft, _) = rlimit::Resource::NOFILE.get().unwrap();
        assert_eq!(fd_headroom(16), 16);
        // Raised where the hard limit allows it, never lowered.
        let (raised, _) = rlimit::Resource::NOFILE.get().unwrap();
        assert!(raised >= soft);
        let too_many = usize::try_from(raised).unwrap_or(usize::MAX / 2) * 2;
        let cap = fd_headroom(too_many);
        assert!(
            cap < too_many && cap as u64 <= raised,
            "{cap} for a limit of {raised}"
        );
    }
}
