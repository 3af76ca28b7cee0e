//! A small HTTP/1.1 server on `std::net` for `ferrotune api` (and the WebUI to come): one thread per
//! connection, one request per connection (`Connection: close`), whole responses or a server-sent-event
//! stream, and the limits a local server needs (head and body sizes, read timeouts, a connection cap).
//!
//! Request heads are parsed by `httparse` (the parser inside hyper); bodies need a `Content-Length` (no chunked
//! request bodies: OpenAI clients, curl and browsers all send a length for JSON). Errors the server itself
//! finds (a malformed head, a body too large, too many connections) are answered through
//! [`Handler::error_response`], so they come in the application's JSON shape.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one server accepts.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Request line plus headers.
    pub max_head_bytes: usize,
    pub max_body_bytes: usize,
    /// How long a client may take to send its request (guards against slow or stuck clients).
    pub read_timeout: Duration,
    /// Open connections at once; past it a connection is answered 503 and closed.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_head_bytes: 16 * 1024, max_body_bytes: 2 * 1024 * 1024, read_timeout: Duration::from_secs(30), max_connections: 128 }
    }
}

/// A parsed request.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A whole response.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response { status, content_type: "application/json", headers: Vec::new(), body: value.to_string().into_bytes() }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
}

/// The application on top of the server.
pub trait Handler: Send + Sync + 'static {
    /// Answer `request` on `conn` (a whole response with [`Conn::send`] or a stream with [`Conn::start_events`]).
    fn handle(&self, request: Request, conn: &mut Conn);
    /// The response for an error the server found before the handler saw the request.
    fn error_response(&self, status: u16, message: &str) -> Response;
}

/// The client connection a handler answers on.
pub struct Conn {
    stream: TcpStream,
}

impl Conn {
    /// Write a whole response.
    pub fn send(&mut self, response: &Response) -> io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n",
            response.status,
            reason(response.status),
            response.content_type,
            response.body.len()
        );
        for (name, value) in &response.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes())?;
        self.stream.write_all(&response.body)?;
        self.stream.flush()
    }

    /// Start a `text/event-stream` response; the body then ends when the connection closes.
    pub fn start_events(&mut self) -> io::Result<EventStream<'_>> {
        self.stream.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n",
        )?;
        self.stream.flush()?;
        Ok(EventStream { conn: self })
    }

    /// Whether the client has closed its side (it went away; a client never half-closes while waiting for its
    /// answer). Checked without blocking.
    pub fn client_gone(&self) -> bool {
        if self.stream.set_nonblocking(true).is_err() {
            return true;
        }
        let mut byte = [0u8; 1];
        let gone = match self.stream.peek(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        };
        let _ = self.stream.set_nonblocking(false);
        gone
    }
}

/// An open server-sent-event stream.
pub struct EventStream<'a> {
    conn: &'a mut Conn,
}

impl EventStream<'_> {
    /// Send one `data:` event (a single-line payload, as JSON is).
    pub fn data(&mut self, payload: &str) -> io::Result<()> {
        debug_assert!(!payload.contains('\n'));
        self.conn.stream.write_all(format!("data: {payload}\n\n").as_bytes())?;
        self.conn.stream.flush()
    }

    pub fn client_gone(&self) -> bool {
        self.conn.client_gone()
    }
}

/// Accept connections on `listener` forever, one thread each.
pub fn serve(listener: TcpListener, limits: Limits, handler: Arc<dyn Handler>) -> io::Result<()> {
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            // A connection that failed before we saw it (reset during the handshake, out of descriptors):
            // skip it, and back off a little in case it is the latter.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(limits.read_timeout));
        let _ = stream.set_write_timeout(Some(limits.read_timeout));
        let mut conn = Conn { stream };
        if open.fetch_add(1, Ordering::SeqCst) >= limits.max_connections {
            open.fetch_sub(1, Ordering::SeqCst);
            let r = handler.error_response(503, "too many open connections; retry later");
            let _ = conn.send(&r);
            finish(conn);
            continue;
        }
        let (handler, limits, still_open) = (handler.clone(), limits.clone(), open.clone());
        let spawned = std::thread::Builder::new().name("http-conn".into()).spawn(move || {
            match read_request(&mut conn.stream, &limits) {
                Ok(request) => handler.handle(request, &mut conn),
                Err(ReadError::Respond(status, message)) => {
                    let _ = conn.send(&handler.error_response(status, &message));
                }
                Err(ReadError::Io) => {}
            }
            finish(conn);
            still_open.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            // The thread could not start; its closure (and the connection) is gone with it.
            open.fetch_sub(1, Ordering::SeqCst);
        }
    }
    Ok(())
}

/// Close after the response: stop sending, then read what the client may still send (a body we did not read)
/// for a moment, so closing does not reset the connection before the client has read the response.
fn finish(conn: Conn) {
    let mut stream = conn.stream;
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 16 * 1024];
    let mut drained = 0usize;
    while Instant::now() < deadline && drained < 8 * 1024 * 1024 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

enum ReadError {
    /// Answer with this status and message.
    Respond(u16, String),
    /// The connection failed or timed out: nobody to answer.
    Io,
}

fn read_request(stream: &mut TcpStream, limits: &Limits) -> Result<Request, ReadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > limits.max_head_bytes {
            return Err(ReadError::Respond(431, format!("request head over {} bytes", limits.max_head_bytes)));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(ReadError::Io),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return Err(ReadError::Io),
        }
    };
    let mut header_slots = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut header_slots);
    match parsed.parse(&buf[..head_end]) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(ReadError::Respond(400, "incomplete request head".into())),
        Err(httparse::Error::TooManyHeaders) => return Err(ReadError::Respond(431, "more than 64 request headers".into())),
        Err(e) => return Err(ReadError::Respond(400, format!("malformed request: {e}"))),
    }
    let method = parsed.method.unwrap_or_default().to_string();
    let target = parsed.path.unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    for h in parsed.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else {
            return Err(ReadError::Respond(400, format!("header {} is not UTF-8", h.name)));
        };
        headers.push((h.name.to_string(), value.trim().to_string()));
    }
    let mut request = Request { method, path, headers, body: Vec::new() };
    if request.header("transfer-encoding").is_some() {
        return Err(ReadError::Respond(411, "send the body with a Content-Length header (chunked request bodies are not supported)".into()));
    }
    let length = match request.header("content-length") {
        None => 0,
        Some(v) => v.parse::<usize>().map_err(|_| ReadError::Respond(400, format!("invalid Content-Length {v:?}")))?,
    };
    if length > limits.max_body_bytes {
        return Err(ReadError::Respond(413, format!("request body of {length} bytes is over the {} byte limit", limits.max_body_bytes)));
    }
    let mut body = buf[head_end..].to_vec();
    if body.len() < length && request.header("expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue")) {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").map_err(|_| ReadError::Io)?;
    }
    while body.len() < length {
        let want = (length - body.len()).min(chunk.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) | Err(_) => return Err(ReadError::Io),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(length);
    request.body = body;
    Ok(request)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
