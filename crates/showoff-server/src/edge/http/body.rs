//! Message bodies: how a request body is delimited ([`Framing`]) and the incremental chunked
//! decoder used for request bodies from visitors and response bodies from targets. Bodies are
//! relayed read by read, never buffered whole, so a slow reader slows the writer
//! (backpressure).

use bytes::{Buf, Bytes, BytesMut};

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Longest chunk-size line accepted (hex digits, extensions and CRLF).
const MAX_CHUNK_LINE: usize = 4096;
/// Most trailer bytes accepted after the last chunk.
const MAX_TRAILERS: usize = 16 * 1024;
/// Most trailer fields, as for a head (hyper refuses more, found by `http1_differential`).
const MAX_TRAILER_FIELDS: usize = 128;

/// A malformed chunked body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub(crate) struct ChunkError(&'static str);

/// Incremental decoder for `Transfer-Encoding: chunked`; trailers are read and dropped.
#[derive(Debug, Default)]
pub(crate) struct ChunkedDecoder {
    state: ChunkState,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    /// Trailer bytes and fields seen so far.
    Trailers(usize, usize),
    Done,
}

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The body is complete; bytes left in the buffer belong to the next request.
    End,
    /// More input is needed.
    NeedMore,
}

impl ChunkedDecoder {
    /// Decodes from `buf`, consuming what it uses.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = parse_chunk_size(&line)?;
                    self.state = if size == 0 {
                        ChunkState::Trailers(0, 0)
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ChunkError("missing CRLF after chunk data"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers(seen, fields) => {
                    let Some(line) = take_line(buf, MAX_TRAILERS)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let seen = seen + line.len() + 2;
                    if seen > MAX_TRAILERS {
                        return Err(ChunkError("trailers too large"));
                    }
                    check_trailer(&line)?;
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    } else if fields >= MAX_TRAILER_FIELDS {
                        return Err(ChunkError("too many trailer fields"));
                    } else {
                        self.state = ChunkState::Trailers(seen, fields + 1);
                    }
                }
                ChunkState::Done => return Ok(Decoded::End),
            }
        }
    }
}

/// Takes one CRLF-terminated line (without the CRLF) off the front of `buf`.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, ChunkError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() > max {
            return Err(ChunkError("line too long"));
        }
        return Ok(None);
    };
    if end > max {
        return Err(ChunkError("line too long"));
    }
    let line = buf.split_to(end);
    buf.advance(2);
    Ok(Some(line))
}

/// Field-content bytes (RFC 9110 §5.5): visible ASCII, obs-text, space and tab; never CR, LF,
/// NUL or another control byte.
fn is_field_byte(b: u8) -> bool {
    b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// A trailer line must be a header field (`token ":" value`); trailers are dropped after this
/// check, never forwarded.
fn check_trailer(line: &[u8]) -> Result<(), ChunkError> {
    if line.is_empty() {
        return Ok(());
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(ChunkError("trailer is not a header field"))?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    let token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    if name.is_empty() || !name.iter().all(token) {
        return Err(ChunkError("invalid trailer name"));
    }
    if !value.iter().all(|&b| is_field_byte(b)) {
        return Err(ChunkError("invalid trailer value"));
    }
    Ok(())
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, ChunkError> {
    // A bare CR or LF, NUL or other control byte inside the line (or its extensions) would
    // make a strict front proxy and this edge disagree on where the line ends.
    if !line.iter().all(|&b| is_field_byte(b) && b < 0x80) {
        return Err(ChunkError("control byte in chunk-size line"));
    }
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    if digits.is_empty() || digits.len() > 15 {
        return Err(ChunkError("invalid chunk size"));
    }
    // After the size: optional whitespace, then the end or a `;` extension (RFC 9112 §7.1.1).
    // Anything else (`0 HTTP/1.1`) is a line a strict peer refuses, found by the fuzzer.
    let after = rest.trim_ascii_start();
    if !after.is_empty() && after[0] != b';' {
        return Err(ChunkError("invalid chunk size"));
    }
    let text = std::str::from_utf8(digits).map_err(|_| ChunkError("invalid chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| ChunkError("invalid chunk size"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn trailers_are_capped_at_128_fields_like_a_head() {
        // `http1_differential` found the edge taking a body with 130 trailer fields that
        // hyper refuses (fuzz/regressions/http1_differential/).
        let outcome = |fields: usize| {
            let mut input = b"1\r\na\r\n0\r\n".to_vec();
            for i in 0..fields {
                input.extend_from_slice(format!("x{i}: v\r\n").as_bytes());
            }
            input.extend_from_slice(b"\r\n");
            let (mut buf, mut decoder) = (BytesMut::from(&input[..]), ChunkedDecoder::default());
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Decoded::Data(_)) => continue,
                    other => break other,
                }
            }
        };
        assert_eq!(outcome(128), Ok(Decoded::End));
        assert_eq!(outcome(129), Err(ChunkError("too many trailer fields")));
    }

    #[test]
    fn control_bytes_and_bad_trailers_are_refused() {
        let refused: [&[u8]; 9] = [
            // Words after the size: `http1_differential` found the edge taking this as a
            // whole body where hyper refuses it (fuzz/regressions/http1_differential/).
            b"0 HTTP/1.1\r\n\r\n",
            b"3 x\r\nabc\r\n0\r\n\r\n",
            b"3;x\nGET / HTTP/1.1\r\nabc\r\n0\r\n\r\n",
            b"3;x\rY\r\nabc\r\n0\r\n\r\n",
            b"3;e=\x00\r\nabc\r\n0\r\n\r\n",
            b"3;e=\xff\r\nabc\r\n0\r\n\r\n",
            b"3\r\nabc\r\n0\r\nno colon\r\n\r\n",
            b"3\r\nabc\r\n0\r\nBad Name: 1\r\n\r\n",
            b"3\r\nabc\r\n0\r\nX: a\x7fb\r\n\r\n",
        ];
        for input in refused {
            let mut buf = BytesMut::from(input);
            let mut decoder = ChunkedDecoder::default();
            let outcome = loop {
                match decoder.decode(&mut buf) {
                    Ok(Decoded::Data(_)) => continue,
                    other => break other,
                }
            };
            assert!(
                outcome.is_err(),
                "{:?} gave {outcome:?}",
                String::from_utf8_lossy(input)
            );
        }
        let mut fine = BytesMut::from(&b"3;a=b;c\t\r\nabc\r\n0\r\nX-Sum: 1 2\r\n\r\n"[..]);
        let mut decoder = ChunkedDecoder::default();
        assert_eq!(
            decoder.decode(&mut fine),
            Ok(Decoded::Data(Bytes::from_static(b"abc")))
        );
        assert_eq!(decoder.decode(&mut fine), Ok(Decoded::End));
    }

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, BytesMut), ChunkError> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(d) => out.extend_from_slice(&d),
                Decoded::End => return Ok((out, buf)),
                Decoded::NeedMore => return Err(ChunkError("incomplete")),
            }
        }
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let input = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        let (out, rest) = decode_all(input).expect("valid");
        assert_eq!(out, b"hello world");
        assert_eq!(&rest[..], b"NEXT");
    }

    #[test]
    fn byte_at_a_time_gives_the_same_body() {
        let input = b"a\r\n0123456789\r\n1\r\nx\r\n0\r\n\r\n";
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut ended = false;
        for byte in input {
            buf.extend_from_slice(&[*byte]);
            loop {
                match decoder.decode(&mut buf).expect("valid") {
                    Decoded::Data(d) => out.extend_from_slice(&d),
                    Decoded::End => {
                        ended = true;
                        break;
                    }
                    Decoded::NeedMore => break,
                }
            }
        }
        assert!(ended);
        assert_eq!(out, b"0123456789x");
    }

    #[test]
    fn refuses_malformed_chunks() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"-1\r\n",
            b"ffffffffffffffffff\r\n",
        ] {
            assert!(
                decode_all(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_line = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert!(decode_all(&long_line).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let mut decoder = ChunkedDecoder::default();
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Decoded::Data(_)) = decoder.decode(&mut buf) {}
        }

        #[test]
        fn any_chunking_round_trips(body in proptest::collection::vec(any::<u8>(), 0..600), cut in 1usize..100) {
            let mut encoded = Vec::new();
            for chunk in body.chunks(cut) {
                encoded.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                encoded.extend_from_slice(chunk);
                encoded.extend_from_slice(b"\r\n");
            }
            encoded.extend_from_slice(b"0\r\n\r\n");
            let (out, rest) = decode_all(&encoded).expect("valid");
            prop_assert_eq!(out, body);
            prop_assert!(rest.is_empty());
        }
    }
}
