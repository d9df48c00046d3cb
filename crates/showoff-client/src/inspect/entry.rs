//! One captured exchange as the inspector keeps it: request and response heads, bodies as far
//! as they were captured (with why they stop), timing and sizes. Entries are immutable once
//! stored (`Arc<Entry>`); an upgraded connection's entry is replaced when it closes.

use std::time::{Duration, SystemTime};

pub use bytes::Bytes;

/// Why a captured body stops before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// It passed the per-body cap.
    Cap,
    /// The inspector's memory budget had no room left for it.
    Budget,
    /// The stream ended before the body did.
    Closed,
}

impl Cut {
    /// The stable name the API and the page show.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cap => "body_cap",
            Self::Budget => "memory_budget",
            Self::Closed => "stream_closed",
        }
    }
}

/// A body as captured.
#[derive(Debug, Clone, Default)]
pub struct Body {
    /// The first bytes of the body (de-chunked), up to the cap.
    pub captured: Bytes,
    /// The body's whole size as it crossed the tunnel (de-chunked).
    pub size: u64,
    /// Why `captured` is shorter than `size`, if it is.
    pub cut: Option<Cut>,
    /// The whole body on disk, when spilling is on and it passed the cap.
    pub spilled: Option<std::sync::Arc<super::spill::SpillFile>>,
}

impl Body {
    /// True when every byte is at hand: in memory, or written whole to disk.
    pub fn complete(&self) -> bool {
        let in_memory = self.captured.len() as u64 == self.size && self.cut.is_none();
        in_memory || self.on_disk()
    }

    /// True when the whole body was written to disk.
    pub fn on_disk(&self) -> bool {
        self.spilled
            .as_ref()
            .is_some_and(|file| file.complete() == Some(self.size))
    }
}

/// A head's fields in their order, names as sent.
pub type Headers = Vec<(String, String)>;

/// The first header named `name` (case-insensitive).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The fields of a head as captured (`head` holds the start line too), parsed when asked: the
/// capture keeps a head as the one buffer it was read into, and only the page and the API,
/// which look at few entries, pay for splitting it.
pub fn fields_of(head: &[u8]) -> Headers {
    let end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(head.len(), |at| at + 2);
    let mut slots = [httparse::EMPTY_HEADER; MAX_FIELDS];
    match httparse::parse_headers(&head[end..], &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => fields
            .iter()
            .map(|h| {
                let value = String::from_utf8_lossy(h.value).into_owned();
                (h.name.to_string(), value)
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Header fields a captured head may have (the capture follows no head with more).
pub const MAX_FIELDS: usize = 128;

/// The request side.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method as sent.
    pub method: String,
    /// Request target as sent (`/path?query`).
    pub path: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: &'static str,
    /// The head as it crossed the tunnel, request line and blank line included.
    pub head: Bytes,
    /// Body.
    pub body: Body,
}

impl Request {
    /// Header fields, in order.
    pub fn headers(&self) -> Headers {
        fields_of(&self.head)
    }
}

/// The response side.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: &'static str,
    /// The head as it crossed the tunnel, status line and blank line included.
    pub head: Bytes,
    /// Body.
    pub body: Body,
    /// From the request's head to the response's head.
    pub waited: Duration,
}

impl Response {
    /// Header fields, in order.
    pub fn headers(&self) -> Headers {
        fields_of(&self.head)
    }

    /// The reason phrase of the status line.
    pub fn reason(&self) -> String {
        let line = self.head.split(|b| *b == b'\n').next().unwrap_or_default();
        let text = String::from_utf8_lossy(line);
        text.trim_end()
            .splitn(3, ' ')
            .nth(2)
            .unwrap_or_default()
            .to_string()
    }
}

/// One exchange.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Increasing id, unique in this client process.
    pub id: u64,
    /// The tunnel it came through.
    pub tunnel: std::sync::Arc<str>,
    /// When its request head was seen.
    pub started: SystemTime,
    /// From the request head to the response's end (for an upgrade: to the connection's end,
    /// or to the switch while it is open).
    pub duration: Duration,
    /// What was asked.
    pub request: Request,
    /// What was answered; `None` when the stream ended first.
    pub response: Option<Response>,
    /// For an upgraded connection (WebSocket, ...): bytes each way after the switch, and
    /// whether it is still open.
    pub upgrade: Option<Upgrade>,
    /// Why the exchange did not complete (`stream_closed`), if it did not.
    pub error: Option<&'static str>,
    /// The entry this one replayed, if it is a replay.
    pub replay_of: Option<u64>,
}

/// The bytes of an upgraded connection after `101 Switching Protocols`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Upgrade {
    /// From the visitor to the target.
    pub bytes_in: u64,
    /// From the target to the visitor.
    pub bytes_out: u64,
    /// Still open.
    pub open: bool,
}

/// What an entry costs in bytes beside its heads, bodies, method and path: the entry itself
/// behind its `Arc`, its place in the store, and the allocator's share (about 16 bytes, plus
/// rounding) of each of its up to six allocations.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<Entry>() + 16 + 8 + 6 * 24;

impl Entry {
    /// The bytes this entry holds in memory, as the budget counts them.
    pub fn memory(&self) -> usize {
        let response = self
            .response
            .as_ref()
            .map_or(0, |r| r.head.len() + r.body.captured.len());
        ENTRY_OVERHEAD
            + self.request.method.len()
            + self.request.path.len()
            + self.request.head.len()
            + self.request.body.captured.len()
            + response
    }

    /// The visitor as the first address of `X-Forwarded-For` names it (the server's, or a
    /// trusted proxy's before it).
    pub fn remote_addr(&self) -> Option<String> {
        let headers = self.request.headers();
        let chain = header(&headers, "x-forwarded-for")?;
        let first = chain.split(',').next()?.trim();
        (!first.is_empty()).then(|| first.to_string())
    }

    /// True when a body of this entry is (being) written to disk.
    pub fn spills(&self) -> bool {
        self.request.body.spilled.is_some()
            || self
                .response
                .as_ref()
                .is_some_and(|r| r.body.spilled.is_some())
    }

    /// The response status, if a response head came.
    pub fn status(&self) -> Option<u16> {
        self.response.as_ref().map(|r| r.status)
    }

    /// Bytes of the request on the wire: head and body.
    pub fn request_size(&self) -> u64 {
        self.request.head.len() as u64 + self.request.body.size
    }

    /// Bytes of the response on the wire: head and body.
    pub fn response_size(&self) -> u64 {
        self.response
            .as_ref()
            .map_or(0, |r| r.head.len() as u64 + r.body.size)
    }
}
