//! Frame codec: a 4-byte big-endian length, then that many bytes of JSON.
//!
//! The length is checked against [`MAX_FRAME_LEN`] before a byte of the body is buffered, so a
//! hostile prefix costs the receiver nothing. Used with `tokio_util::codec::Framed`; after a
//! handshake, `Framed::into_parts` hands on whatever was read past the last frame so no stream
//! byte is ever dropped.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use serde::{Serialize, de::DeserializeOwned};
use tokio_util::codec::{Decoder, Encoder};

use crate::MAX_FRAME_LEN;

const LEN_BYTES: usize = 4;

/// Errors of the frame layer.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The length prefix announced a frame larger than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The frame body is not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The transport failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `Out` and decodes `In` as length-prefixed JSON frames.
#[derive(Debug)]
pub struct FrameCodec<In, Out> {
    max_len: usize,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> FrameCodec<In, Out> {
    /// A codec with the default limit, [`MAX_FRAME_LEN`].
    pub fn new() -> Self {
        Self::with_max_len(MAX_FRAME_LEN)
    }

    /// A codec with a custom frame limit (tests use small ones).
    pub fn with_max_len(max_len: usize) -> Self {
        Self {
            max_len,
            _types: PhantomData,
        }
    }
}

impl<In, Out> Default for FrameCodec<In, Out> {
    fn default() -> Self {
        Self::new()
    }
}

impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, ProtocolError> {
        let Some(prefix) = src.get(..LEN_BYTES) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > self.max_len {
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: self.max_len,
            });
        }
        if src.len() < LEN_BYTES + len {
            src.reserve(LEN_BYTES + len - src.len());
            return Ok(None);
        }
        src.advance(LEN_BYTES);
        let body = src.split_to(len);
        Ok(Some(serde_json::from_slice(&body)?))
    }
}

impl<In, Out: Serialize> Encoder<Out> for FrameCodec<In, Out> {
    type Error = ProtocolError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        self.encode_ref(&item, dst)
    }
}

/// Encodes one message as a complete frame (length prefix included), for callers that write
/// frames onto a raw stream without a `Framed` wrapper.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<BytesMut, ProtocolError> {
    let mut buf = BytesMut::with_capacity(128);
    FrameCodec::<(), T>::new().encode_ref(msg, &mut buf)?;
    Ok(buf)
}

impl<In, Out: Serialize> FrameCodec<In, Out> {
    fn encode_ref(&mut self, item: &Out, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let start = dst.len();
        dst.put_u32(0);
        serde_json::to_writer(dst.writer(), item)?;
        let len = dst.len() - start - LEN_BYTES;
        if len > self.max_len {
            dst.truncate(start);
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: self.max_len,
            });
        }
        dst[start..start + LEN_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientMessage, Role};
    use proptest::prelude::*;

    type Codec = FrameCodec<ClientMessage, ClientMessage>;

    #[test]
    fn round_trip_and_leftover_bytes_stay_buffered() {
        let mut codec = Codec::new();
        let mut buf = BytesMut::new();
        let hello = ClientMessage::Hello {
            version: 1,
            role: Role::Data,
            transport: Default::default(),
        };
        codec.encode(hello.clone(), &mut buf).expect("encode");
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(codec.decode(&mut buf).expect("decode"), Some(hello));
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut codec = Codec::new();
        let mut full = BytesMut::new();
        codec
            .encode(ClientMessage::Pong, &mut full)
            .expect("encode");
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(
                codec.decode(&mut part).expect("partial"),
                None,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn oversized_prefix_is_refused_before_allocation() {
        let mut codec = Codec::with_max_len(16);
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        let err = codec.decode(&mut buf).expect_err("too large");
        assert!(matches!(
            err,
            ProtocolError::FrameTooLarge { len, max: 16 } if len == u32::MAX as usize
        ));
        assert!(
            buf.capacity() < 1024,
            "no buffer grown for a hostile prefix"
        );
    }

    #[test]
    fn encoder_refuses_frames_over_the_limit() {
        let mut codec = Codec::with_max_len(8);
        let mut buf = BytesMut::new();
        let msg = ClientMessage::Auth {
            token: "x".repeat(64),
        };
        assert!(codec.encode(msg, &mut buf).is_err());
        assert!(buf.is_empty(), "a refused frame leaves nothing behind");
    }

    #[test]
    fn encode_frame_matches_codec() {
        let mut via_codec = BytesMut::new();
        Codec::new()
            .encode(ClientMessage::Pong, &mut via_codec)
            .expect("encode");
        assert_eq!(
            encode_frame(&ClientMessage::Pong).expect("encode"),
            via_codec
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut codec = Codec::with_max_len(256);
            let mut buf = BytesMut::from(&data[..]);
            // Decode until the codec asks for more or reports an error; neither may panic.
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }

        #[test]
        fn any_auth_token_round_trips(token in ".{0,200}") {
            let mut codec = Codec::new();
            let mut buf = BytesMut::new();
            let msg = ClientMessage::Auth { token };
            codec.encode(msg.clone(), &mut buf).expect("encode");
            prop_assert_eq!(codec.decode(&mut buf).expect("decode"), Some(msg));
            prop_assert!(buf.is_empty());
        }
    }
}
