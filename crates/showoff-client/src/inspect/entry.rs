//! One captured exchange as the inspector keeps it: request and response heads, bodies as far
//! as they were captured (with why they stop), timing and sizes. Entries are immutable once
//! stored (`Arc<Entry>`); an upgraded connection's entry is replaced when it closes.

use std::time::{Duration, SystemTime};

use bytes::Bytes;

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

/// The request side.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method as sent.
    pub method: String,
    /// Request target as sent (`/path?query`).
    pub path: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: &'static str,
    /// Header fields.
    pub headers: Headers,
    /// Body.
    pub body: Body,
    /// Bytes of the head on the wire.
    pub head_size: usize,
}

/// The response side.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: &'static str,
    /// Header fields.
    pub headers: Headers,
    /// Body.
    pub body: Body,
    /// Bytes of the head on the wire.
    pub head_size: usize,
    /// From the request's head to the response's head.
    pub waited: Duration,
}

/// One exchange.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Increasing id, unique in this client process.
    pub id: u64,
    /// The tunnel it came through.
    pub tunnel: String,
    /// When its request head was seen.
    pub started: SystemTime,
    /// From the request head to the response's end (for an upgrade: to the connection's end,
    /// or to the switch while it is open).
    pub duration: Duration,
    /// The visitor as the first address of `X-Forwarded-For` names it.
    pub remote_addr: Option<String>,
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

/// What an entry costs in bytes beside its bodies: the struct and its strings.
const ENTRY_OVERHEAD: usize = 512;

impl Entry {
    /// The bytes this entry holds in memory, as the budget counts them.
    pub fn memory(&self) -> usize {
        let heads = |h: &Headers| h.iter().map(|(n, v)| n.len() + v.len() + 48).sum::<usize>();
        let response = self.response.as_ref().map_or(0, |r| {
            heads(&r.headers) + r.reason.len() + r.body.captured.len()
        });
        ENTRY_OVERHEAD
            + self.tunnel.len()
            + self.request.path.len()
            + heads(&self.request.headers)
            + self.request.body.captured.len()
            + response
    }

    /// The response status, if a response head came.
    pub fn status(&self) -> Option<u16> {
        self.response.as_ref().map(|r| r.status)
    }

    /// Bytes of the request on the wire: head and body.
    pub fn request_size(&self) -> u64 {
        self.request.head_size as u64 + self.request.body.size
    }

    /// Bytes of the response on the wire: head and body.
    pub fn response_size(&self) -> u64 {
        self.response
            .as_ref()
            .map_or(0, |r| r.head_size as u64 + r.body.size)
    }
}
