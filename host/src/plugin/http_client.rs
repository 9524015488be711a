//! The daemon's HTTP client, lent to plugins through [`super::services`] (a plugin has no reactor
//! of its own). Plain `http://` only for now: TLS would add a large dependency tree to every build.
//!
//! Its own small pool, per `host:port`: at most 32 requests at once, each on a
//! keep-alive HTTP/1.1 connection of the pool, a new one made only when none is idle. (hyper-util's
//! legacy client raced a new connection against every checkout that found none idle, so a burst
//! of deliveries to one target opened hundreds of connections, and making them was what turned a
//! short stall into a 100 ms latency spike.) A request beyond the limit waits for a free
//! connection, within its own timeout.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abi_stable::std_types::Tuple2;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::HOST;
use hyper::http::uri::Authority;
use hyper_util::rt::TokioIo;
use orgloop_plugin_sdk::abi::FfiHttpRequest;
use orgloop_plugin_sdk::HttpResponse;
use tokio::sync::Semaphore;

/// Responses larger than this are refused.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Requests in flight to one `host:port`, and so connections to it.
const MAX_PER_HOST: usize = 32;
/// An idle connection older than this is closed rather than reused (servers close theirs after
/// a while; reusing one they are closing fails the request).
const IDLE_FOR: Duration = Duration::from_secs(30);

type Conn = SendRequest<Full<Bytes>>;

/// The connections to one `host:port`.
struct Host {
    /// Idle connections, the most recently used last.
    idle: Mutex<Vec<(Conn, Instant)>>,
    slots: Semaphore,
}

#[derive(Clone)]
pub struct HttpClient {
    hosts: Arc<Mutex<HashMap<String, Arc<Host>>>>,
    /// The runtime requests run on: the daemon's, never a module's (see
    /// [`crate::module::executor`]); the current one when made outside a runtime.
    io: Option<tokio::runtime::Handle>,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient {
            hosts: Arc::default(),
            io: tokio::runtime::Handle::try_current().ok(),
        }
    }
}

impl HttpClient {
    /// Starts [`send`](Self::send) as a task on the client's runtime.
    pub fn spawn_send(
        &self,
        req: Prepared,
    ) -> tokio::task::JoinHandle<Result<HttpResponse, String>> {
        let client = self.clone();
        let send = async move { client.send(req).await };
        match &self.io {
            Some(io) => io.spawn(send),
            None => tokio::spawn(send),
        }
    }

    /// Sends `req` and reads the whole response, within `req.timeout`.
    pub async fn send(&self, req: Prepared) -> Result<HttpResponse, String> {
        let (timeout, method, url) = (req.timeout, req.head.method.clone(), req.url.clone());
        match tokio::time::timeout(timeout, self.exchange(req)).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("{method} {url}: timed out after {timeout:?}")),
        }
    }

    async fn exchange(&self, req: Prepared) -> Result<HttpResponse, String> {
        let address: Cow<str> = match req.authority.port_u16() {
            Some(_) => req.authority.as_str().into(),
            None => format!("{}:80", req.authority.host()).into(),
        };
        let host = self.host(&address);
        let _slot = host
            .slots
            .acquire()
            .await
            .map_err(|e| format!("the HTTP client is closed: {e}"))?;
        let (mut conn, reused) = host.checkout(&address).await?;
        let request = hyper::Request::from_parts(req.head, Full::new(req.body));
        let response = match conn.try_send_request(request).await {
            Ok(response) => response,
            // A reused connection the server closed meanwhile fails before the request is
            // written, and hands it back: sent again, once, on a new one (the target cannot
            // have seen it).
            Err(mut e) if reused => match e.take_message() {
                Some(request) => {
                    conn = connect(&address).await?;
                    conn.send_request(request)
                        .await
                        .map_err(|e| error_chain(&e))?
                }
                None => return Err(error_chain(e.error())),
            },
            Err(e) => return Err(error_chain(e.error())), // the caller names the request
        };
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the response of {}: {e}", req.url))?;
        host.put_back(conn);
        let headers = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        Ok(HttpResponse {
            status: parts.status.as_u16(),
            headers,
            body: body.to_bytes().into(),
        })
    }

    fn host(&self, address: &str) -> Arc<Host> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(host) = hosts.get(address) {
            return host.clone();
        }
        let host = Arc::new(Host {
            idle: Mutex::default(),
            slots: Semaphore::new(MAX_PER_HOST),
        });
        hosts.insert(address.to_owned(), host.clone());
        host
    }
}

/// A plugin's request as it goes on the wire: checked, and copied out of the plugin's memory,
/// once (and only once: it is parsed straight from the plugin's buffers).
pub struct Prepared {
    /// Method, the URI as sent (path and query only) and the headers, `Host` included.
    head: hyper::http::request::Parts,
    /// Where to connect (a part of `url`, which shares its bytes).
    authority: Authority,
    /// The whole URL, for messages.
    url: hyper::Uri,
    body: Bytes,
    timeout: Duration,
}

impl Prepared {
    /// Checks and copies `r`: an absolute `http://` URL, a valid method and valid headers.
    pub fn from_wire(r: &FfiHttpRequest) -> Result<Prepared, String> {
        let url = r.url.as_str();
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(format!(
                    "{other}:// URLs are not supported (only http://): {url}"
                ))
            }
            None => return Err(format!("URL {url:?} has no scheme; expected http://...")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("URL {url:?} has no host"))?
            .clone();
        let mut builder = hyper::Request::builder()
            .method(r.method.as_str())
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()));
        if !r
            .headers
            .iter()
            .any(|Tuple2(k, _)| k.as_str().eq_ignore_ascii_case("host"))
        {
            builder = builder.header(HOST, authority.as_str());
        }
        for Tuple2(k, v) in r.headers.iter() {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let (head, ()) = builder
            .body(())
            .map_err(|e| format!("invalid request: {e}"))?
            .into_parts();
        Ok(Prepared {
            head,
            authority,
            url: uri,
            body: Bytes::copy_from_slice(&r.body),
            timeout: Duration::from_millis(r.timeout_ms),
        })
    }
}

impl Host {
    /// The most recently used idle connection that is still open, fresh and ready for a
    /// request, else a new one; and whether it was reused.
    async fn checkout(&self, address: &str) -> Result<(Conn, bool), String> {
        while let Some(mut conn) = self.take_idle() {
            if conn.ready().await.is_ok() {
                return Ok((conn, true));
            }
        }
        Ok((connect(address).await?, false))
    }

    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((conn, since)) = idle.pop() {
            if !conn.is_closed() && since.elapsed() < IDLE_FOR {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection whose exchange is over, unless the server is closing it.
    fn put_back(&self, conn: Conn) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|(c, since)| !c.is_closed() && since.elapsed() < IDLE_FOR);
        idle.push((conn, Instant::now()));
    }
}

/// A new HTTP/1.1 connection to `address`, its I/O driven by a task of its own.
async fn connect(address: &str) -> Result<Conn, String> {
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    // No Nagle: a request is written whole, and waiting to coalesce small writes only adds
    // latency.
    let _ = tcp.set_nodelay(true);
    let (conn, driver) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| error_chain(&e))?;
    tokio::spawn(async move {
        let _ = driver.await;
    });
    Ok(conn)
}

/// "error: cause: cause", since hyper's top-level messages say little.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
