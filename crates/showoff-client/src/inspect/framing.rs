//! HTTP/1.1 message framing read from one direction of a stream, a chunk at a time, for the
//! inspector's capture ([`super::capture`]): where a head ends, how long its body is, where
//! the body's bytes are (chunked bodies de-chunked). Pure and synchronous: it never buffers
//! more than a head (at most [`MAX_HEAD`]) or a chunk-size line, whatever the body's size.

/// The largest head the capture follows; the server's own limit on visitor heads is 32 KiB,
/// and the target's response heads are rarely larger.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The longest chunk-size line or trailer line accepted.
const MAX_LINE: usize = 4 * 1024;

/// How the body after a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (a request without one, a HEAD response, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (a response without length).
    Close,
}

/// What one step of reading found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step<'a> {
    /// The input was consumed without completing anything.
    More,
    /// A whole head (its bytes, the final blank line included); the caller answers with
    /// [`Reader::body`] before feeding more.
    Head(Vec<u8>),
    /// Body bytes (de-chunked).
    Body(&'a [u8]),
    /// The last bytes of a body of known length: the body ended with them.
    Last(&'a [u8]),
    /// The body ended; the next bytes start a new head.
    End,
    /// The bytes are not HTTP/1.1 framing the capture can follow.
    Broken(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// `left` bytes of chunk data remain.
    Data(u64),
    /// The CRLF after a chunk's data; `seen` of its two bytes read.
    DataEnd(u8),
    /// Trailer lines after the last chunk, until a blank line.
    Trailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Length(u64),
    Chunked(Chunk),
    Close,
    /// After an upgrade: bytes are counted by the caller, not framed.
    Opaque,
    Broken,
}

/// Reads one direction of a stream.
#[derive(Debug)]
pub(crate) struct Reader {
    state: State,
    /// The head, or the line, read so far.
    pending: Vec<u8>,
}

impl Default for Reader {
    fn default() -> Self {
        Self {
            state: State::Head,
            pending: Vec::new(),
        }
    }
}

impl Reader {
    /// Sets how the body after the head just returned is framed.
    pub(crate) fn body(&mut self, framing: Framing) {
        self.state = match framing {
            Framing::Empty | Framing::Length(0) => State::Head,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunk::Size),
            Framing::Close => State::Close,
        };
    }

    /// Stops framing: every later byte is opaque (an upgraded connection).
    pub(crate) fn opaque(&mut self) {
        self.state = State::Opaque;
        self.pending = Vec::new();
    }

    /// True when the reader is between messages (a body that just ended, or none begun).
    #[cfg(test)]
    pub(crate) fn idle(&self) -> bool {
        self.state == State::Head && self.pending.is_empty()
    }

    /// True while a close-delimited body is being read.
    pub(crate) fn until_close(&self) -> bool {
        self.state == State::Close
    }

    /// Reads from `data`; returns how many bytes were used and what they completed. Call again
    /// with the rest until it is empty.
    pub(crate) fn step<'a>(&mut self, data: &'a [u8]) -> (usize, Step<'a>) {
        match self.state {
            State::Head => self.head(data),
            State::Length(left) => {
                let take = data.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let left = left - take as u64;
                if left == 0 {
                    self.state = State::Head;
                    return (take, Step::Last(&data[..take]));
                }
                self.state = State::Length(left);
                (take, Step::Body(&data[..take]))
            }
            State::Chunked(chunk) => self.chunked(chunk, data),
            State::Close | State::Opaque => (data.len(), Step::Body(data)),
            State::Broken => (data.len(), Step::More),
        }
    }

    fn broken(&mut self, why: &'static str) -> (usize, Step<'static>) {
        self.state = State::Broken;
        self.pending = Vec::new();
        (0, Step::Broken(why))
    }

    fn head<'a>(&mut self, data: &'a [u8]) -> (usize, Step<'a>) {
        let mut used = 0;
        if self.pending.is_empty() {
            // Blank lines before a message are allowed (RFC 9112 §2.2).
            used = data
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
        }
        let rest = &data[used..];
        if self.pending.is_empty()
            && let Some(at) = find_blank_line(rest)
        {
            // The whole head is here: copy it alone, not the body bytes after it.
            return (used + at + 4, Step::Head(rest[..at + 4].to_vec()));
        }
        // The end of the head may straddle what was kept and what arrived.
        let keep = self.pending.len().min(3);
        let from = self.pending.len() - keep;
        self.pending.extend_from_slice(rest);
        let found = find_blank_line(&self.pending[from..]).map(|at| from + at + 4);
        match found {
            Some(end) => {
                let taken = end - (self.pending.len() - rest.len());
                let mut head = std::mem::take(&mut self.pending);
                head.truncate(end);
                (used + taken, Step::Head(head))
            }
            None if self.pending.len() > MAX_HEAD => self.broken("head larger than 64 KiB"),
            None => (data.len(), Step::More),
        }
    }

    fn chunked<'a>(&mut self, chunk: Chunk, data: &'a [u8]) -> (usize, Step<'a>) {
        match chunk {
            Chunk::Size => {
                let Some((used, line)) = self.line(data) else {
                    return self.too_long_or_more(data);
                };
                let digits = line.split(|b| *b == b';').next().unwrap_or_default();
                let Some(size) = parse_hex(trim(digits)) else {
                    return self.broken("bad chunk size");
                };
                self.state = State::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
                (used, Step::More)
            }
            Chunk::Data(left) => {
                let take = data.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let left = left - take as u64;
                self.state = State::Chunked(if left == 0 {
                    Chunk::DataEnd(0)
                } else {
                    Chunk::Data(left)
                });
                (take, Step::Body(&data[..take]))
            }
            Chunk::DataEnd(seen) => {
                let take = data.len().min(usize::from(2 - seen));
                let seen = seen + take as u8;
                self.state = State::Chunked(if seen == 2 {
                    Chunk::Size
                } else {
                    Chunk::DataEnd(seen)
                });
                (take, Step::More)
            }
            Chunk::Trailers => {
                let Some((used, line)) = self.line(data) else {
                    return self.too_long_or_more(data);
                };
                if trim(&line).is_empty() {
                    self.state = State::Head;
                    return (used, Step::End);
                }
                (used, Step::More)
            }
        }
    }

    /// A whole line (CRLF or LF) from what was kept and `data`: the bytes of `data` used, and
    /// the line without its end; `None` keeps the partial line.
    fn line(&mut self, data: &[u8]) -> Option<(usize, Vec<u8>)> {
        match data.iter().position(|b| *b == b'\n') {
            Some(at) => {
                let mut line = std::mem::take(&mut self.pending);
                line.extend_from_slice(&data[..at]);
                Some((at + 1, line))
            }
            None => {
                self.pending.extend_from_slice(data);
                None
            }
        }
    }

    fn too_long_or_more<'a>(&mut self, data: &'a [u8]) -> (usize, Step<'a>) {
        if self.pending.len() > MAX_LINE {
            return self.broken("chunk line too long");
        }
        (data.len(), Step::More)
    }
}

/// Where the first `\r\n\r\n` starts: a jump from line feed to line feed (a head has a few
/// dozen), not a comparison at every byte.
fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = bytes[from..].iter().position(|b| *b == b'\n') {
        let lf = from + at;
        if lf >= 3 && bytes[lf - 3..lf] == *b"\r\n\r" {
            return Some(lf - 3);
        }
        from = lf + 1;
    }
    None
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |at| at + 1);
    &bytes[start..end.max(start)]
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    let text = std::str::from_utf8(digits).ok()?;
    u64::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `piece` bytes; collects heads, body bytes and ends as text.
    fn read_all(reader: &mut Reader, input: &[u8], piece: usize, framing: Framing) -> Vec<String> {
        let mut seen = Vec::new();
        let mut body = Vec::new();
        for part in input.chunks(piece) {
            let mut rest = part;
            while !rest.is_empty() {
                let (used, step) = reader.step(rest);
                match step {
                    Step::Head(head) => {
                        seen.push(String::from_utf8_lossy(&head).into_owned());
                        reader.body(framing);
                    }
                    Step::Body(bytes) => body.extend_from_slice(bytes),
                    Step::Last(bytes) => {
                        body.extend_from_slice(bytes);
                        seen.push(format!("body {}", String::from_utf8_lossy(&body)));
                        body.clear();
                    }
                    Step::End | Step::More => {}
                    Step::Broken(why) => return vec![format!("broken: {why}")],
                }
                rest = &rest[used..];
            }
        }
        seen
    }

    #[test]
    fn a_head_split_anywhere_is_found_whole() {
        let input = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        for piece in 1..input.len() {
            let mut reader = Reader::default();
            let seen = read_all(&mut reader, input, piece, Framing::Empty);
            assert_eq!(seen.len(), 2, "piece {piece}: {seen:?}");
            assert!(seen[1].starts_with("GET /b"), "{seen:?}");
            assert!(reader.idle());
        }
    }

    #[test]
    fn a_length_body_ends_on_its_last_byte() {
        let input = b"POST / HTTP/1.1\r\n\r\nhello";
        for piece in 1..=input.len() {
            let mut reader = Reader::default();
            let seen = read_all(&mut reader, input, piece, Framing::Length(5));
            assert_eq!(
                seen.last().map(String::as_str),
                Some("body hello"),
                "{seen:?}"
            );
            assert!(reader.idle());
        }
    }

    #[test]
    fn a_chunked_body_is_dechunked_with_extensions_and_trailers() {
        let input =
            b"HTTP/1.1 200 OK\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n";
        for piece in 1..=input.len() {
            let mut reader = Reader::default();
            let mut body = Vec::new();
            let mut ended = false;
            for part in input.chunks(piece) {
                let mut rest = part;
                while !rest.is_empty() {
                    let (used, step) = reader.step(rest);
                    match step {
                        Step::Head(_) => reader.body(Framing::Chunked),
                        Step::Body(bytes) | Step::Last(bytes) => body.extend_from_slice(bytes),
                        Step::End => ended = true,
                        Step::More => {}
                        Step::Broken(why) => panic!("{why}"),
                    }
                    rest = &rest[used..];
                }
            }
            assert_eq!(body, b"hello world", "piece {piece}");
            assert!(ended && reader.idle(), "piece {piece}");
        }
    }

    #[test]
    fn bad_framing_breaks_the_reader_for_good() {
        let mut reader = Reader::default();
        let (_, step) = reader.step(b"HTTP/1.1 200 OK\r\n\r\n");
        assert!(matches!(step, Step::Head(_)));
        reader.body(Framing::Chunked);
        assert_eq!(reader.step(b"zz\r\n").1, Step::Broken("bad chunk size"));
        assert_eq!(reader.step(b"5\r\nhello").1, Step::More);
        let mut reader = Reader::default();
        let huge = vec![b'a'; MAX_HEAD + 10];
        assert_eq!(
            reader.step(&huge).1,
            Step::Broken("head larger than 64 KiB")
        );
    }

    #[test]
    fn an_upgraded_stream_is_opaque() {
        let mut reader = Reader::default();
        reader.opaque();
        assert_eq!(
            reader.step(b"\x81\x05hello"),
            (7, Step::Body(b"\x81\x05hello"))
        );
    }
}
