//! The listener: HTTP/1.1 connections with bounds a hostile client cannot
//! stretch, and a drain on shutdown.
//!
//! - A request head must be whole within `header_read_timeout` of its first
//!   byte (a slowloris client gets no more) and at most 16 KiB; a body must
//!   be whole within `body_read_timeout` (408); an answer the client stops
//!   reading is abandoned after `header_read_timeout`; a connection with
//!   nothing under way closes after `idle_timeout`.
//! - At most `max_connections` are open at once, and `max_connections_per_ip`
//!   from one address; one beyond is answered 503 and closed at once, so
//!   the process never runs out of file descriptors (it then could not even
//!   answer `/healthz`).
//! - On shutdown the listener closes (new connections are refused), every
//!   connection finishes the request it is in and closes, and whatever is
//!   still open after `shutdown_timeout` is dropped.
//!
//! Only HTTP/1.1: TLS ends at the proxy in front, which speaks HTTP/1.1 to
//! its upstreams; cleartext HTTP/2 would add an attack surface and nothing
//! a client of this service needs.

use std::{
    collections::HashMap,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpListener,
    sync::watch,
};
use tower::ServiceExt;
use tower_http::timeout::DeadlineBody;

use crate::limits::client_bucket;

/// The bounds of the listener.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    /// A connection with no request under way and nothing arriving closes
    /// after this long.
    pub idle_timeout: Duration,
    /// A request body not whole within this time fails (408).
    pub body_read_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub shutdown_timeout: Duration,
    /// Proxies (`AUTHGATE_TRUSTED_PROXIES`): every client behind one comes
    /// from its address, so only the overall cap applies to them.
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
}

/// Open connections, overall and per client address (an IPv6 client by its
/// /64, as throttling counts it).
#[derive(Default)]
struct Connections {
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    total: AtomicUsize,
    /// Wakes the drain when the last connection closes.
    closed: tokio::sync::Notify,
}

/// One admitted connection; it leaves the count when dropped.
struct Admitted {
    connections: Arc<Connections>,
    ip: IpAddr,
}

impl Connections {
    fn admit(self: &Arc<Self>, ip: IpAddr, limits: &ServerLimits) -> Option<Admitted> {
        let ip = ip.to_canonical();
        let proxy = limits.trusted_proxies.iter().any(|net| net.contains(&ip));
        let ip = client_bucket(ip);
        let mut per_ip = self.per_ip.lock();
        let mine = per_ip.entry(ip).or_default();
        if (*mine >= limits.max_connections_per_ip && !proxy)
            || self.total.load(Ordering::Relaxed) >= limits.max_connections
        {
            if *mine == 0 {
                per_ip.remove(&ip);
            }
            return None;
        }
        *mine += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(Admitted {
            connections: self.clone(),
            ip,
        })
    }

    fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut per_ip = self.connections.per_ip.lock();
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        if self.connections.total.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.connections.closed.notify_waiters();
        }
    }
}

/// The largest request head (request line and headers) read, in bytes.
pub const MAX_HEAD: usize = 16 * 1024;

/// What the connection's requests tell its socket: how many are being
/// answered, and whether a request head has begun but not been parsed.
#[derive(Default)]
struct Progress {
    in_flight: AtomicUsize,
    head_pending: AtomicBool,
    /// The read waiting while a request was answered: woken when the last
    /// answer is done, so that the idle clock starts.
    reader: Mutex<Option<std::task::Waker>>,
}

/// Counts a request as answered while it lives.
struct InFlight(Arc<Progress>);

impl InFlight {
    fn start(progress: &Arc<Progress>) -> Self {
        progress.head_pending.store(false, Ordering::Relaxed);
        progress.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(progress.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1
            && let Some(reader) = self.0.reader.lock().take()
        {
            reader.wake();
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection held to three clocks:
    /// - idle: with no request under way and no byte arriving for
    ///   `idle`, the connection closes;
    /// - head: once a request's first byte has arrived, its head must be
    ///   whole within `head` (a slowloris client gets no more);
    /// - write: an answer that cannot move on for `head` (a client that
    ///   stopped reading) fails, and the connection closes, so a reader that
    ///   never reads holds nothing.
    struct Watched<S> {
        #[pin]
        inner: S,
        progress: Arc<Progress>,
        idle: Duration,
        head: Duration,
        read_clock: Option<(Clock, Pin<Box<tokio::time::Sleep>>)>,
        write_clock: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

/// Which wait the read clock times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    Idle,
    Head,
}

impl<S> Watched<S> {
    fn new(inner: S, progress: Arc<Progress>, idle: Duration, head: Duration) -> Self {
        Self {
            inner,
            progress,
            idle,
            head,
            read_clock: None,
            write_clock: None,
        }
    }
}

fn timed_out(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what)
}

impl<S: AsyncRead> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let read = this.inner.poll_read(cx, buf);
        let busy = this.progress.in_flight.load(Ordering::Relaxed) > 0;
        if let Poll::Ready(Ok(())) = read
            && buf.filled().len() > before
            && !busy
            && !this.progress.head_pending.swap(true, Ordering::Relaxed)
        {
            // The first byte of a new request: its head has `head` to arrive.
            *this.read_clock = Some((Clock::Head, Box::pin(tokio::time::sleep(*this.head))));
        }
        if read.is_ready() {
            return read;
        }
        let wanted = if busy {
            *this.progress.reader.lock() = Some(cx.waker().clone());
            // The answer may have ended between the count and the waker.
            if this.progress.in_flight.load(Ordering::Relaxed) == 0 {
                cx.waker().wake_by_ref();
            }
            None
        } else if this.progress.head_pending.load(Ordering::Relaxed) {
            Some(Clock::Head)
        } else {
            Some(Clock::Idle)
        };
        if this.read_clock.as_ref().map(|(c, _)| *c) != wanted {
            *this.read_clock = wanted.map(|clock| {
                let wait = if clock == Clock::Head {
                    *this.head
                } else {
                    *this.idle
                };
                (clock, Box::pin(tokio::time::sleep(wait)))
            });
        }
        if let Some((clock, sleep)) = this.read_clock
            && sleep.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(timed_out(match clock {
                Clock::Idle => "the connection was idle too long",
                Clock::Head => "the request head did not arrive in time",
            })));
        }
        Poll::Pending
    }
}

impl<S: AsyncWrite> Watched<S> {
    /// `progress` of a write, with the stall clock started, kept or reset.
    fn watch<T>(
        stalled: &mut Option<Pin<Box<tokio::time::Sleep>>>,
        timeout: Duration,
        cx: &mut Context<'_>,
        progress: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if progress.is_ready() {
            *stalled = None;
            return progress;
        }
        let sleep = stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(timed_out("the client stopped reading")));
        }
        Poll::Pending
    }
}

impl<S: AsyncWrite> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let progress = this.inner.poll_write(cx, buf);
        Self::watch(this.write_clock, *this.head, cx, progress)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let progress = this.inner.poll_flush(cx);
        Self::watch(this.write_clock, *this.head, cx, progress)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let progress = this.inner.poll_write_vectored(cx, bufs);
        Self::watch(this.write_clock, *this.head, cx, progress)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What a connection over a limit is told before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/problem+json\r\n\
x-content-type-options: nosniff\r\n\
referrer-policy: no-referrer\r\n\
x-frame-options: DENY\r\n\
cache-control: no-store\r\n\
content-security-policy: default-src 'none'; frame-ancestors 'none'\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 146\r\n\r\n\
{\"type\":\"about:blank\",\"title\":\"Service Unavailable\",\"status\":503,\
\"detail\":\"Too many open connections; retry later.\",\"code\":\"too_many_connections\"}";

/// Serves `app` on `listener` until `shutdown` completes, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let connections = Arc::new(Connections::default());
    let (drain, draining) = watch::channel(false);
    let refusals = Arc::new(tokio::sync::Semaphore::new(REFUSALS_AT_ONCE));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or memory for a moment: wait rather
                    // than spin; anything else is the peer's problem.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(admitted) = connections.admit(peer.ip(), &limits) else {
            if let Ok(permit) = refusals.clone().try_acquire_owned() {
                tokio::spawn(refuse(stream, permit));
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            peer,
            app.clone(),
            limits.clone(),
            draining.clone(),
            admitted,
        ));
    }
    // New connections are refused from here on.
    drop(listener);
    let _ = drain.send(true);
    let drained = async {
        while connections.open() > 0 {
            let closed = connections.closed.notified();
            if connections.open() == 0 {
                break;
            }
            closed.await;
        }
    };
    if tokio::time::timeout(limits.shutdown_timeout, drained)
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.open(),
            "connections still open at the shutdown timeout are dropped"
        );
    }
    Ok(())
}

/// Refusals being written at once; beyond, a connection is closed without
/// a word, so that refusing can never hold many descriptors itself.
const REFUSALS_AT_ONCE: usize = 256;

/// Answers a connection over a limit with 503 once its client has sent its
/// request head (an answer before the request confuses clients), or after
/// a second, and closes it.
async fn refuse(mut stream: tokio::net::TcpStream, _permit: tokio::sync::OwnedSemaphorePermit) {
    use tokio::io::AsyncReadExt;
    let answer = async {
        let mut head = Vec::new();
        let mut buf = [0u8; 2048];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = stream.write_all(REFUSAL).await;
        let _ = stream.shutdown().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: ServerLimits,
    mut draining: watch::Receiver<bool>,
    admitted: Admitted,
) {
    let body_timeout = limits.body_read_timeout;
    let progress = Arc::new(Progress::default());
    let requests = progress.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let in_flight = InFlight::start(&requests);
        req.extensions_mut().insert(ConnectInfo(peer));
        // The whole body within the time: a body dribbled a byte at a time
        // is as stalled as one that stopped.
        let req = req.map(|body| axum::body::Body::new(DeadlineBody::new(body_timeout, body)));
        let answer = app.clone().oneshot(req);
        async move {
            let answer = answer.await;
            drop(in_flight);
            answer
        }
    });
    let io = Watched::new(
        stream,
        progress,
        limits.idle_timeout,
        limits.header_read_timeout,
    );
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        // The clocks are the socket's own (`Watched`): hyper's would time
        // the idle wait and the head as one.
        .header_read_timeout(None)
        // A request head larger than this is answered 431: a half-sent
        // header can hold no more than this much memory.
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let finished = tokio::select! {
        result = conn.as_mut() => Some(result),
        _ = draining.wait_for(|d| *d) => None,
    };
    let result = match finished {
        Some(result) => result,
        None => {
            // Finish the request in flight, if any, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended");
    }
    drop(admitted);
}

/// Raises this process's soft limit on open files to the hard limit, and
/// keeps the connection cap below it with room for the database, the log
/// and the refusals.
pub fn fit_file_limit(max_connections: usize) -> usize {
    const RESERVED: u64 = 256;
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    let limit = unsafe {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return max_connections;
        }
        if rl.rlim_cur < rl.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
        rl.rlim_cur
    };
    let room = usize::try_from(limit.saturating_sub(RESERVED)).unwrap_or(usize::MAX);
    if max_connections > room {
        tracing::warn!(
            open_files = limit,
            max_connections,
            using = room,
            "AUTHGATE_MAX_CONNECTIONS is above what the open-file limit allows"
        );
        room
    } else {
        max_connections
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_one_whole_answer_with_a_problem_document() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["code"], "too_many_connections");
    }
}
