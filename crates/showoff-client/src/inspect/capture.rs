//! Follows the HTTP/1.1 exchanges of one stream between the server and a local target, from
//! the bytes the relay moves each way, and stores each as an [`Entry`] when it ends.
//!
//! The relay hands every chunk it moved to [`Capture::wrote_to_target`] or [`Capture::read_from_target`]
//! after moving it, so capture never delays a byte: framing is read in place
//! ([`super::framing`]), at most the per-body cap of each body is copied (after reserving it
//! against the memory budget), and the rest is only counted, or handed to the spill writer
//! without waiting. Pipelined requests pair with responses in order; a `101` turns the stream
//! into one entry whose byte counts grow until it closes. Anything the capture cannot frame
//! stops it for this stream (counted as `unparsed`); the relay goes on untouched. A stream that
//! opens with the HTTP/2 connection preface (a tunnel whose target speaks HTTP/2) is followed
//! frame by frame instead ([`h2`]).

mod h2;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use super::Shared;
use super::entry::{Body, Cut, Entry, MAX_FIELDS, Request, Response, Upgrade};
use super::framing::{Framing, Reader, Step};
use super::spill::SpillSink;

/// A body being captured.
#[derive(Default)]
struct BodyCapture {
    /// The bytes kept, every one of them reserved against the budget.
    data: Vec<u8>,
    size: u64,
    cut: Option<Cut>,
    spill: Option<SpillSink>,
}

impl BodyCapture {
    /// A capture that expects `length` bytes (when known), so its buffer is sized once.
    fn expecting(length: Option<u64>, shared: &Shared) -> Self {
        let mut body = Self::default();
        if let Some(length) = length {
            let expected = usize::try_from(length)
                .unwrap_or(usize::MAX)
                .min(shared.body_cap);
            match shared.store.pooled(expected) {
                Some(buffer) => body.data = buffer,
                None => body.data.reserve_exact(expected),
            }
        }
        body
    }

    fn push(&mut self, bytes: &[u8], shared: &Shared) {
        self.size += bytes.len() as u64;
        if let Some(spill) = &mut self.spill {
            spill.write(bytes, shared);
            return;
        }
        if self.cut.is_some() {
            return;
        }
        let take = shared
            .body_cap
            .saturating_sub(self.data.len())
            .min(bytes.len());
        if take > 0 {
            if !shared.store.reserve(take) {
                shared.store.drops.budget.fetch_add(1, Ordering::Relaxed);
                self.cut = Some(Cut::Budget);
                return;
            }
            self.data.extend_from_slice(&bytes[..take]);
        }
        if take < bytes.len() {
            self.cut = Some(Cut::Cap);
            // Past the cap: the whole body goes to disk when spilling is on.
            self.spill = shared.spill.as_ref().map(|spiller| {
                let mut sink = spiller.open();
                sink.write(&self.data, shared);
                sink.write(&bytes[take..], shared);
                sink
            });
        }
    }

    /// The captured body; `closed` when the stream ended before it did.
    fn finish(self, closed: bool, shared: &Shared) -> Body {
        let cut = match self.cut {
            None if closed => Some(Cut::Closed),
            cut => cut,
        };
        let spilled = self.spill.map(|sink| sink.finish(closed, shared));
        Body {
            captured: self.data.into(),
            size: self.size,
            cut,
            spilled,
        }
    }
}

/// Which way bytes went: towards the target (requests) or back (responses).
#[derive(Debug, Clone, Copy)]
enum Side {
    Request,
    Response,
}

/// One exchange between its request head and its end.
struct Building {
    entry: Entry,
    started: Instant,
    request_body: BodyCapture,
    request_done: bool,
    response_body: BodyCapture,
    /// The response head came (`entry.response` is set).
    answered: bool,
    response_done: bool,
}

impl Building {
    fn reserved(&self) -> usize {
        self.request_body.data.len() + self.response_body.data.len()
    }
}

/// An upgraded connection's entry, as stored, and its counts since.
struct Upgraded {
    entry: Entry,
    started: Instant,
    bytes_in: u64,
    bytes_out: u64,
}

/// The capture of one stream.
pub(crate) struct Capture {
    shared: Arc<Shared>,
    tunnel: Arc<str>,
    replay_of: Option<u64>,
    /// Told the id of the first exchange (a replay's caller waits for it).
    announce: Option<tokio::sync::oneshot::Sender<u64>>,
    up: Reader,
    down: Reader,
    queue: VecDeque<Building>,
    upgraded: Option<Upgraded>,
    stopped: bool,
    /// Following HTTP/2 streams instead of HTTP/1.1 exchanges.
    h2: Option<h2::H2Follow>,
    /// The stream's first bytes while the request's could still be the HTTP/2 preface;
    /// `None` once decided.
    opening: Option<h2::Opening>,
}

impl Capture {
    /// Follows a stream of `tunnel`; a replay names the entry it replays and hears its id.
    pub(crate) fn new(
        shared: Arc<Shared>,
        tunnel: Arc<str>,
        replay: Option<(u64, tokio::sync::oneshot::Sender<u64>)>,
    ) -> Self {
        let (replay_of, announce) = replay.map_or((None, None), |(of, tx)| (Some(of), Some(tx)));
        Self {
            shared,
            tunnel,
            replay_of,
            announce,
            up: Reader::default(),
            down: Reader::default(),
            queue: VecDeque::new(),
            upgraded: None,
            stopped: false,
            h2: None,
            opening: Some(h2::Opening::default()),
        }
    }

    /// Bytes the relay wrote towards the target.
    pub(crate) fn wrote_to_target(&mut self, data: &[u8]) {
        self.follow(Side::Request, data);
    }

    /// Bytes the relay read from the target.
    pub(crate) fn read_from_target(&mut self, data: &[u8]) {
        self.follow(Side::Response, data);
    }

    /// Reads `data` on `side`: heads and bodies until it is used up; after an upgrade, counts.
    fn follow(&mut self, side: Side, data: &[u8]) {
        if self.stopped {
            return;
        }
        let Some(mut opening) = self.opening.take() else {
            return self.follow_decided(side, data);
        };
        match side {
            Side::Request => opening.up.extend_from_slice(data),
            // An HTTP/2 target may send its SETTINGS before the preface is seen.
            Side::Response => opening.down.extend_from_slice(data),
        }
        let known = opening.up.len().min(h2::PREFACE.len());
        let could_be_h2 = opening.up[..known] == h2::PREFACE[..known];
        if could_be_h2 && known < h2::PREFACE.len() {
            if opening.up.len() + opening.down.len() > h2::OPENING_MAX {
                return self.stop("the stream's opening bytes tell no protocol");
            }
            self.opening = Some(opening);
            return;
        }
        if could_be_h2 {
            self.h2 = Some(h2::H2Follow::new());
        }
        self.follow_decided(Side::Request, &opening.up);
        if !opening.down.is_empty() {
            self.follow_decided(Side::Response, &opening.down);
        }
    }

    /// [`Capture::follow`] once the stream is known to carry HTTP/1.1 or HTTP/2.
    fn follow_decided(&mut self, side: Side, data: &[u8]) {
        if self.stopped {
            return;
        }
        if let Some(follower) = &mut self.h2 {
            let mut ctx = h2::Ctx {
                shared: &self.shared,
                tunnel: &self.tunnel,
                replay_of: self.replay_of,
            };
            if let Err(why) = follower.follow(side, data, &mut ctx) {
                self.stop(why);
            }
            return;
        }
        let mut rest = data;
        while !rest.is_empty() && !self.stopped {
            if let Some(up) = &mut self.upgraded {
                match side {
                    Side::Request => up.bytes_in += rest.len() as u64,
                    Side::Response => up.bytes_out += rest.len() as u64,
                }
                return;
            }
            let reader = match side {
                Side::Request => &mut self.up,
                Side::Response => &mut self.down,
            };
            let (used, step) = reader.step(rest);
            match (step, side) {
                (Step::Head(head), Side::Request) => self.request_head(head),
                (Step::Head(head), Side::Response) => self.response_head(head),
                (Step::Body(bytes), _) => self.body(side, bytes, false),
                (Step::Last(bytes), _) => self.body(side, bytes, true),
                (Step::End, _) => self.body(side, &[], true),
                (Step::More, _) => {}
                (Step::Broken(why), _) => self.stop(why),
            }
            rest = &rest[used..];
        }
    }

    /// Body bytes on `side`, `last` when they end it: the request being sent (the newest not
    /// done), or the response being read (the oldest answered, not done).
    fn body(&mut self, side: Side, bytes: &[u8], last: bool) {
        let at = match side {
            Side::Request => self.queue.iter().rposition(|b| !b.request_done),
            Side::Response => self
                .queue
                .iter()
                .position(|b| b.answered && !b.response_done),
        };
        let Some(at) = at else {
            return self.stop("body bytes without a head");
        };
        let building = &mut self.queue[at];
        let (body, done) = match side {
            Side::Request => (&mut building.request_body, &mut building.request_done),
            Side::Response => (&mut building.response_body, &mut building.response_done),
        };
        body.push(bytes, &self.shared);
        if last {
            *done = true;
            self.finish_ready();
        }
    }

    fn request_head(&mut self, head: Vec<u8>) {
        let mut slots = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut parsed = httparse::Request::new(&mut slots);
        let (Ok(httparse::Status::Complete(_)), Some(method), Some(path)) =
            (parsed.parse(&head), parsed.method, parsed.path)
        else {
            return self.stop("request head not HTTP/1.1");
        };
        let framing = request_framing(parsed.headers);
        let (method, path, version) = (
            method.to_string(),
            path.to_string(),
            version(parsed.version),
        );
        self.up.body(framing);
        let length = match framing {
            Framing::Length(n) => Some(n),
            _ => None,
        };
        let id = self.shared.store.next_id();
        if let Some(announce) = self.announce.take() {
            let _ = announce.send(id);
        }
        let request = Request {
            method,
            path,
            version,
            head: head.into(),
            body: Body::default(),
        };
        let entry = Entry {
            id,
            tunnel: self.tunnel.clone(),
            started: SystemTime::now(),
            duration: Default::default(),
            request,
            response: None,
            upgrade: None,
            error: None,
            replay_of: self.replay_of,
        };
        self.queue.push_back(Building {
            entry,
            started: Instant::now(),
            request_body: BodyCapture::expecting(length, &self.shared),
            request_done: framing == Framing::Empty || framing == Framing::Length(0),
            response_body: BodyCapture::default(),
            answered: false,
            response_done: false,
        });
    }

    fn response_head(&mut self, head: Vec<u8>) {
        let mut slots = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut parsed = httparse::Response::new(&mut slots);
        let (Ok(httparse::Status::Complete(_)), Some(status)) = (parsed.parse(&head), parsed.code)
        else {
            return self.stop("response head not HTTP/1.1");
        };
        let Some(at) = self.queue.iter().position(|b| !b.answered) else {
            return self.stop("a response without a request");
        };
        if (100..200).contains(&status) && status != 101 {
            // Informational (100 Continue, 103 Early Hints): the final response follows.
            return self.down.body(Framing::Empty);
        }
        let building = &mut self.queue[at];
        let framing = response_framing(&building.entry.request.method, status, parsed.headers);
        let version = version(parsed.version);
        let length = match framing {
            Framing::Length(n) => Some(n),
            _ => None,
        };
        building.answered = true;
        building.response_body = BodyCapture::expecting(length, &self.shared);
        building.entry.response = Some(Response {
            status,
            version,
            head: head.into(),
            body: Body::default(),
            waited: building.started.elapsed(),
        });
        if status == 101 {
            return self.upgrade(at);
        }
        self.down.body(framing);
        if matches!(framing, Framing::Empty | Framing::Length(0)) {
            self.queue[at].response_done = true;
            self.finish_ready();
        }
    }

    /// `101 Switching Protocols`: the stream is one entry from now on, stored at once and
    /// replaced with its byte counts when the stream closes.
    fn upgrade(&mut self, at: usize) {
        self.up.opaque();
        self.down.opaque();
        let Some(building) = self.queue.remove(at) else {
            return;
        };
        let (reserved, started) = (building.reserved(), building.started);
        let mut entry = finished(building, false, &self.shared);
        entry.upgrade = Some(Upgrade {
            open: true,
            ..Upgrade::default()
        });
        let stored = self.shared.store.insert(entry, reserved);
        self.upgraded = Some(Upgraded {
            entry: (*stored).clone(),
            started,
            bytes_in: 0,
            bytes_out: 0,
        });
        self.release_all();
    }

    /// Stores, in order, every exchange at the front whose request and response both ended.
    fn finish_ready(&mut self) {
        while self
            .queue
            .front()
            .is_some_and(|b| b.request_done && b.response_done)
        {
            let Some(building) = self.queue.pop_front() else {
                return;
            };
            let reserved = building.reserved();
            let entry = finished(building, false, &self.shared);
            self.shared.store.insert(entry, reserved);
        }
    }

    /// Stops following this stream: what it holds is given back and the drop counted.
    fn stop(&mut self, why: &'static str) {
        tracing::debug!(tunnel = %self.tunnel, why, "inspector stopped following a stream");
        self.shared
            .store
            .drops
            .unparsed
            .fetch_add(1, Ordering::Relaxed);
        self.stopped = true;
        self.release_all();
    }

    fn release_all(&mut self) {
        for building in self.queue.drain(..) {
            self.shared.store.release(building.reserved());
        }
        if let Some(follower) = &mut self.h2 {
            follower.release(&self.shared);
        }
    }

    /// The stream closed: a body read until close ends here; exchanges still open are stored
    /// as cut short; an upgraded connection's entry gets its final counts.
    pub(crate) fn closed(&mut self) {
        if let Some(up) = self.upgraded.take() {
            let mut entry = up.entry;
            entry.duration = up.started.elapsed();
            entry.upgrade = Some(Upgrade {
                bytes_in: up.bytes_in,
                bytes_out: up.bytes_out,
                open: false,
            });
            self.shared.store.replace(entry);
            return;
        }
        if self.stopped {
            return;
        }
        if let Some(follower) = &mut self.h2 {
            return follower.closed(&self.shared);
        }
        let until_close = self.down.until_close();
        while let Some(mut building) = self.queue.pop_front() {
            let reserved = building.reserved();
            let ends_here = until_close && building.answered && !building.response_done;
            building.response_done |= ends_here;
            let cut_short = !(building.request_done && building.response_done);
            let mut entry = finished(building, cut_short, &self.shared);
            if cut_short {
                entry.error = Some(Cut::Closed.as_str());
            }
            self.shared.store.insert(entry, reserved);
        }
    }
}

/// The stored form of an exchange; `closed` marks bodies still open as cut by the close.
fn finished(building: Building, closed: bool, shared: &Shared) -> Entry {
    let Building {
        mut entry,
        started,
        request_body,
        request_done,
        response_body,
        response_done,
        ..
    } = building;
    entry.duration = started.elapsed();
    entry.request.body = request_body.finish(closed && !request_done, shared);
    if let Some(response) = &mut entry.response {
        response.body = response_body.finish(closed && !response_done, shared);
    }
    entry
}

fn version(minor: Option<u8>) -> &'static str {
    match minor {
        Some(0) => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

/// The value of field `name` in a parsed head.
fn field<'h>(fields: &'h [httparse::Header<'_>], name: &str) -> Option<&'h [u8]> {
    fields
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn is_chunked(fields: &[httparse::Header<'_>]) -> bool {
    fields.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && h.value
                .to_ascii_lowercase()
                .windows(7)
                .any(|w| w == b"chunked")
    })
}

fn content_length(fields: &[httparse::Header<'_>]) -> Option<u64> {
    let value = std::str::from_utf8(field(fields, "content-length")?).ok()?;
    value.trim().parse().ok()
}

fn request_framing(fields: &[httparse::Header<'_>]) -> Framing {
    if is_chunked(fields) {
        return Framing::Chunked;
    }
    content_length(fields).map_or(Framing::Empty, Framing::Length)
}

fn response_framing(method: &str, status: u16, fields: &[httparse::Header<'_>]) -> Framing {
    if method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304 {
        return Framing::Empty;
    }
    if is_chunked(fields) {
        return Framing::Chunked;
    }
    content_length(fields).map_or(Framing::Close, Framing::Length)
}
