//! Follows the HTTP/2 streams of a tunnel stream whose target speaks HTTP/2 (the server opened
//! it with the connection preface): frames are read as they pass, header blocks decoded with
//! one HPACK decoder per direction, and each HTTP/2 stream becomes an [`Entry`] once both its
//! sides ended (or it was reset). Heads are stored in the capture's text form, `POST /path
//! HTTP/2` with `host` from `:authority`, and `HTTP/2 200`; trailers (gRPC's `grpc-status`)
//! are listed after the header fields, as they arrived after them. Bodies go through the same
//! caps, budget and spill as HTTP/1.1 ones. Anything malformed stops following the stream
//! (counted as `unparsed`), and the relay goes on untouched.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use super::{BodyCapture, Building, Side, finished};
use crate::inspect::Shared;
use crate::inspect::entry::{Body, Cut, Entry, Request, Response};

/// The client connection preface (RFC 9113 §3.4).
pub(super) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes held while a stream's protocol is not yet known, each way: the request's could still
/// be the preface, and an HTTP/2 target may send its SETTINGS before the preface was seen.
#[derive(Default)]
pub(super) struct Opening {
    pub(super) up: Vec<u8>,
    pub(super) down: Vec<u8>,
}

/// Most bytes held before a stream's protocol is known (the preface is 24 bytes; a target's
/// first SETTINGS frame is small).
pub(super) const OPENING_MAX: usize = 64 * 1024;

/// The largest frame followed; a bigger one (a peer that raised its frame size) stops it, so
/// no frame is buffered beyond this.
const MAX_FRAME: usize = 1024 * 1024;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// One direction's frames and header decoder.
struct Direction {
    /// Bytes of a frame not yet complete.
    pending: Vec<u8>,
    /// The request side's preface bytes still to skip.
    preface: usize,
    hpack: fluke_hpack::Decoder<'static>,
    /// A header block awaiting its CONTINUATION frames: stream, END_STREAM, bytes.
    block: Option<(u32, bool, Vec<u8>)>,
}

impl Direction {
    fn new(preface: usize) -> Self {
        Self {
            pending: Vec::new(),
            preface,
            hpack: fluke_hpack::Decoder::new(),
            block: None,
        }
    }
}

/// A stream's fields, as decoded.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// The HTTP/2 streams of one tunnel stream.
pub(super) struct H2Follow {
    up: Direction,
    down: Direction,
    streams: HashMap<u32, Building>,
}

impl H2Follow {
    pub(super) fn new() -> Self {
        Self {
            up: Direction::new(PREFACE.len()),
            down: Direction::new(0),
            streams: HashMap::new(),
        }
    }

    /// Reads `data` on `side`; `Err` with the reason when the stream cannot be followed.
    pub(super) fn follow(
        &mut self,
        side: Side,
        data: &[u8],
        ctx: &mut Ctx<'_>,
    ) -> Result<(), &'static str> {
        let dir = match side {
            Side::Request => &mut self.up,
            Side::Response => &mut self.down,
        };
        let skip = dir.preface.min(data.len());
        dir.preface -= skip;
        dir.pending.extend_from_slice(&data[skip..]);
        loop {
            let dir = match side {
                Side::Request => &mut self.up,
                Side::Response => &mut self.down,
            };
            if dir.pending.len() < 9 {
                return Ok(());
            }
            let header = &dir.pending[..9];
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            if length > MAX_FRAME {
                return Err("an HTTP/2 frame larger than the inspector follows");
            }
            if dir.pending.len() < 9 + length {
                return Ok(());
            }
            let frame: Vec<u8> = dir.pending.drain(..9 + length).collect();
            let (kind, flags) = (frame[3], frame[4]);
            let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
            self.frame(side, kind, flags, stream, &frame[9..], ctx)?;
        }
    }

    fn frame(
        &mut self,
        side: Side,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
        ctx: &mut Ctx<'_>,
    ) -> Result<(), &'static str> {
        match kind {
            DATA => {
                let data = unpadded(flags, payload)?;
                if let Some(building) = self.streams.get_mut(&stream) {
                    let body = match side {
                        Side::Request => &mut building.request_body,
                        Side::Response => &mut building.response_body,
                    };
                    body.push(data, ctx.shared);
                }
                if flags & END_STREAM != 0 {
                    self.ended(side, stream, ctx);
                }
                Ok(())
            }
            HEADERS => {
                let mut block = unpadded(flags, payload)?;
                if flags & PRIORITY != 0 {
                    block = block.get(5..).ok_or("a short HEADERS frame")?;
                }
                let end_stream = flags & END_STREAM != 0;
                if flags & END_HEADERS != 0 {
                    return self.headers(side, stream, end_stream, block, ctx);
                }
                let dir = self.direction(side);
                dir.block = Some((stream, end_stream, block.to_vec()));
                Ok(())
            }
            CONTINUATION => {
                let dir = self.direction(side);
                let Some((id, end_stream, mut block)) = dir.block.take() else {
                    return Err("CONTINUATION without HEADERS");
                };
                block.extend_from_slice(payload);
                if flags & END_HEADERS == 0 {
                    dir.block = Some((id, end_stream, block));
                    return Ok(());
                }
                self.headers(side, id, end_stream, &block, ctx)
            }
            RST_STREAM => {
                if let Some(building) = self.streams.remove(&stream) {
                    store(building, Some("stream_reset"), ctx.shared);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn direction(&mut self, side: Side) -> &mut Direction {
        match side {
            Side::Request => &mut self.up,
            Side::Response => &mut self.down,
        }
    }

    /// A decoded header block: a request's head, a response's head (1xx skipped), or either
    /// side's trailers.
    fn headers(
        &mut self,
        side: Side,
        stream: u32,
        end_stream: bool,
        block: &[u8],
        ctx: &mut Ctx<'_>,
    ) -> Result<(), &'static str> {
        let fields = self
            .direction(side)
            .hpack
            .decode(block)
            .map_err(|_| "an HPACK block that does not decode")?;
        match (side, self.streams.get_mut(&stream)) {
            (Side::Request, None) => {
                let building = request(fields, ctx);
                self.streams.insert(stream, building);
            }
            (Side::Response, Some(building)) if building.entry.response.is_none() => {
                let status = pseudo(&fields, b":status")
                    .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
                    .ok_or("a response without :status")?;
                if (100..200).contains(&status) {
                    return Ok(());
                }
                building.answered = true;
                building.response_body = BodyCapture::default();
                building.entry.response = Some(Response {
                    status,
                    version: "HTTP/2",
                    head: head(format!("HTTP/2 {status} \r\n"), &fields).into(),
                    body: Body::default(),
                    waited: building.started.elapsed(),
                });
            }
            // Trailers: listed after the fields they followed.
            (Side::Response, Some(building)) => {
                if let Some(response) = &mut building.entry.response {
                    response.head = with_trailers(&response.head, &fields).into();
                }
            }
            (Side::Request, Some(building)) => {
                let request = &mut building.entry.request;
                request.head = with_trailers(&request.head, &fields).into();
            }
            (Side::Response, None) => {}
        }
        if end_stream {
            self.ended(side, stream, ctx);
        }
        Ok(())
    }

    /// One side of `stream` ended; the entry is stored when both have.
    fn ended(&mut self, side: Side, stream: u32, ctx: &mut Ctx<'_>) {
        let Some(building) = self.streams.get_mut(&stream) else {
            return;
        };
        match side {
            Side::Request => building.request_done = true,
            Side::Response => building.response_done = true,
        }
        if building.request_done
            && building.response_done
            && let Some(building) = self.streams.remove(&stream)
        {
            store(building, None, ctx.shared);
        }
    }

    /// The tunnel stream closed: streams still open are stored as cut short.
    pub(super) fn closed(&mut self, shared: &Shared) {
        for (_, building) in self.streams.drain() {
            store(building, Some(Cut::Closed.as_str()), shared);
        }
    }

    /// What the open streams hold against the budget, given back when following stops.
    pub(super) fn release(&mut self, shared: &Shared) {
        for (_, building) in self.streams.drain() {
            shared.store.release(building.reserved());
        }
    }
}

/// What a follower needs from its capture.
pub(super) struct Ctx<'a> {
    pub(super) shared: &'a Shared,
    pub(super) tunnel: &'a std::sync::Arc<str>,
    pub(super) replay_of: Option<u64>,
}

/// A new exchange from a request's fields.
fn request(fields: Fields, ctx: &mut Ctx<'_>) -> Building {
    let text = |name: &[u8]| {
        pseudo(&fields, name).map_or_else(String::new, |v| String::from_utf8_lossy(v).into_owned())
    };
    let (method, path, authority) = (text(b":method"), text(b":path"), text(b":authority"));
    let mut line = format!("{method} {path} HTTP/2\r\n");
    if !authority.is_empty() {
        line.push_str(&format!("host: {authority}\r\n"));
    }
    let head = head(line, &fields);
    let entry = Entry {
        id: ctx.shared.store.next_id(),
        tunnel: ctx.tunnel.clone(),
        started: SystemTime::now(),
        duration: Default::default(),
        request: Request {
            method,
            path,
            version: "HTTP/2",
            head: head.into(),
            body: Body::default(),
        },
        response: None,
        upgrade: None,
        error: None,
        replay_of: ctx.replay_of,
    };
    Building {
        entry,
        started: Instant::now(),
        request_body: BodyCapture::default(),
        request_done: false,
        response_body: BodyCapture::default(),
        answered: false,
        response_done: false,
    }
}

/// Stores a finished (or cut) exchange.
fn store(building: Building, error: Option<&'static str>, shared: &Shared) {
    let reserved = building.reserved();
    let mut entry = finished(building, error.is_some(), shared);
    entry.error = error;
    shared.store.insert(entry, reserved);
}

fn pseudo<'f>(fields: &'f Fields, name: &[u8]) -> Option<&'f [u8]> {
    fields
        .iter()
        .find(|(n, _)| n.as_slice() == name)
        .map(|(_, v)| v.as_slice())
}

/// A head in the capture's text form: `line`, then the regular fields, then a blank line.
fn head(line: String, fields: &Fields) -> Vec<u8> {
    let mut out = line.into_bytes();
    push_fields(&mut out, fields);
    out.extend_from_slice(b"\r\n");
    out
}

fn push_fields(out: &mut Vec<u8>, fields: &Fields) {
    for (name, value) in fields.iter().filter(|(n, _)| !n.starts_with(b":")) {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
}

/// `head` with the trailer `fields` listed before its blank line.
fn with_trailers(head: &[u8], fields: &Fields) -> Vec<u8> {
    let mut out = head[..head.len().saturating_sub(2)].to_vec();
    push_fields(&mut out, fields);
    out.extend_from_slice(b"\r\n");
    out
}

/// A DATA or HEADERS payload without its padding.
fn unpadded(flags: u8, payload: &[u8]) -> Result<&[u8], &'static str> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload.split_first().ok_or("a short padded frame")?;
    rest.len()
        .checked_sub(usize::from(pad))
        .map(|end| &rest[..end])
        .ok_or("padding longer than its frame")
}
