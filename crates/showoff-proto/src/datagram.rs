//! The wire form of UDP tunnel datagrams, the same on every transport: one QUIC DATAGRAM frame
//! carries one [`Datagram`]; on mux and dial-back a datagram channel stream carries them
//! length-prefixed ([`ChannelCodec`], so any UDP payload fits whole).
//!
//! ```text
//! datagram = type:u8  flow:varint  [open]  payload      (type 0: data, 1: data + open, 2: close)
//! open     = tunnel_len:u8 tunnel  family:u8 (4|6)  ip:4|16  port:u16
//! ```
//!
//! Varints are QUIC's (RFC 9000 §16: the top two bits give the length, 1 to 8 bytes). A flow's
//! datagrams from the server carry `open` (the tunnel and the visitor's address) until the
//! client has answered on the flow, so the flow needs no round trip and survives a lost first
//! datagram. Answers (client to server) never carry `open`. `close` ends a flow; either side
//! may send it, and a second close of the same flow changes nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Largest UDP payload (IPv4: 65,535 − 8 UDP − 20 IP).
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// Largest header: type, an 8-byte flow id, and an open header with a 255-byte tunnel name
/// and an IPv6 address.
pub const MAX_HEADER: usize = 1 + 8 + (1 + 255 + 1 + 16 + 2);

/// Largest datagram channel frame: any UDP payload with any header.
pub const MAX_CHANNEL_FRAME: usize = MAX_UDP_PAYLOAD + MAX_HEADER;

/// Largest varint value (2^62 − 1).
pub const MAX_VARINT: u64 = (1 << 62) - 1;

const DATA: u8 = 0;
const DATA_OPEN: u8 = 1;
const CLOSE: u8 = 2;

/// What opens a flow on the client: which tunnel, and whom answers go back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowOpen {
    /// The tunnel's name (at most 255 bytes; names are DNS labels of at most 63).
    pub tunnel: String,
    /// The visitor's address.
    pub visitor: SocketAddr,
}

/// One tunnel datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datagram {
    /// A payload of flow `flow`; `open` on the server's datagrams until the client answered.
    Data {
        /// The flow, unique within its session.
        flow: u64,
        /// Present while the client may not know the flow yet.
        open: Option<FlowOpen>,
        /// The UDP payload, whole.
        payload: Bytes,
    },
    /// Flow `flow` is over (idle, evicted, its tunnel closed).
    Close {
        /// The flow.
        flow: u64,
    },
}

/// Why bytes are not a datagram.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    /// Shorter than its header says.
    #[error("the datagram ends inside its header")]
    Truncated,
    /// An unknown type byte.
    #[error("unknown datagram type {0}")]
    UnknownType(u8),
    /// An address family other than 4 or 6.
    #[error("unknown address family {0}")]
    BadFamily(u8),
    /// A tunnel name that is not UTF-8, or empty, or too long to encode.
    #[error("bad tunnel name in a flow's open header")]
    BadTunnel,
    /// A flow id of 2^62 or more.
    #[error("flow id {0} is too large")]
    FlowTooLarge(u64),
    /// A channel frame longer than [`MAX_CHANNEL_FRAME`].
    #[error("channel frame of {0} bytes exceeds {MAX_CHANNEL_FRAME}")]
    FrameTooLarge(usize),
}

fn varint_len(value: u64) -> usize {
    match value {
        0..=63 => 1,
        64..=16_383 => 2,
        16_384..=1_073_741_823 => 4,
        _ => 8,
    }
}

fn put_varint(buf: &mut BytesMut, value: u64) {
    match varint_len(value) {
        1 => buf.put_u8(value as u8),
        2 => buf.put_u16(0x4000 | value as u16),
        4 => buf.put_u32(0x8000_0000 | value as u32),
        _ => buf.put_u64(0xC000_0000_0000_0000 | value),
    }
}

fn get_varint(buf: &mut Bytes) -> Result<u64, DatagramError> {
    let first = *buf.first().ok_or(DatagramError::Truncated)?;
    let len = 1usize << (first >> 6);
    if buf.len() < len {
        return Err(DatagramError::Truncated);
    }
    let mut value = u64::from(first & 0x3F);
    for byte in &buf[1..len] {
        value = (value << 8) | u64::from(*byte);
    }
    buf.advance(len);
    Ok(value)
}

impl FlowOpen {
    fn encoded_len(&self) -> usize {
        let ip = match self.visitor.ip() {
            IpAddr::V4(_) => 4,
            IpAddr::V6(_) => 16,
        };
        1 + self.tunnel.len() + 1 + ip + 2
    }
}

impl Datagram {
    /// The flow it belongs to.
    pub fn flow(&self) -> u64 {
        match self {
            Self::Data { flow, .. } | Self::Close { flow } => *flow,
        }
    }

    /// Header bytes a data datagram of `flow` carries in front of its payload.
    pub fn header_len(flow: u64, open: Option<&FlowOpen>) -> usize {
        1 + varint_len(flow) + open.map_or(0, FlowOpen::encoded_len)
    }

    /// Encoded size.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Data {
                flow,
                open,
                payload,
            } => Self::header_len(*flow, open.as_ref()) + payload.len(),
            Self::Close { flow } => 1 + varint_len(*flow),
        }
    }

    /// Appends the datagram to `buf`. Fails only for a flow id past [`MAX_VARINT`] or a
    /// tunnel name that cannot be encoded (empty or over 255 bytes).
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), DatagramError> {
        match self {
            Self::Data {
                flow,
                open,
                payload,
            } => encode_data(*flow, open.as_ref(), payload, buf),
            Self::Close { flow } => {
                check_flow(*flow)?;
                buf.reserve(1 + varint_len(*flow));
                buf.put_u8(CLOSE);
                put_varint(buf, *flow);
                Ok(())
            }
        }
    }

    /// The datagram as one buffer (a QUIC DATAGRAM frame's body).
    pub fn to_bytes(&self) -> Result<Bytes, DatagramError> {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut buf)?;
        Ok(buf.freeze())
    }

    /// Parses one datagram; the payload shares `bytes`' buffer.
    pub fn decode(mut bytes: Bytes) -> Result<Self, DatagramError> {
        if bytes.is_empty() {
            return Err(DatagramError::Truncated);
        }
        let kind = bytes.get_u8();
        let flow = get_varint(&mut bytes)?;
        match kind {
            CLOSE => Ok(Self::Close { flow }),
            DATA => Ok(Self::Data {
                flow,
                open: None,
                payload: bytes,
            }),
            DATA_OPEN => {
                let open = decode_open(&mut bytes)?;
                Ok(Self::Data {
                    flow,
                    open: Some(open),
                    payload: bytes,
                })
            }
            other => Err(DatagramError::UnknownType(other)),
        }
    }
}

/// Appends a data datagram of `flow` carrying `payload` to `buf`, copying the payload once
/// (a relay encodes straight from its receive buffer). Fails as [`Datagram::encode`] does.
pub fn encode_data(
    flow: u64,
    open: Option<&FlowOpen>,
    payload: &[u8],
    buf: &mut BytesMut,
) -> Result<(), DatagramError> {
    check_flow(flow)?;
    buf.reserve(Datagram::header_len(flow, open) + payload.len());
    buf.put_u8(if open.is_some() { DATA_OPEN } else { DATA });
    put_varint(buf, flow);
    if let Some(open) = open {
        if open.tunnel.is_empty() || open.tunnel.len() > 255 {
            return Err(DatagramError::BadTunnel);
        }
        buf.put_u8(open.tunnel.len() as u8);
        buf.put_slice(open.tunnel.as_bytes());
        put_addr(buf, open.visitor);
    }
    buf.put_slice(payload);
    Ok(())
}

fn check_flow(flow: u64) -> Result<(), DatagramError> {
    if flow > MAX_VARINT {
        return Err(DatagramError::FlowTooLarge(flow));
    }
    Ok(())
}

fn decode_open(bytes: &mut Bytes) -> Result<FlowOpen, DatagramError> {
    let len = usize::from(*bytes.first().ok_or(DatagramError::Truncated)?);
    if len == 0 {
        return Err(DatagramError::BadTunnel);
    }
    if bytes.len() < 1 + len + 1 {
        return Err(DatagramError::Truncated);
    }
    bytes.advance(1);
    let tunnel = std::str::from_utf8(&bytes[..len])
        .map_err(|_| DatagramError::BadTunnel)?
        .to_owned();
    bytes.advance(len);
    Ok(FlowOpen {
        tunnel,
        visitor: get_addr(bytes)?,
    })
}

/// Appends `addr` as `family:u8 ip port:u16` (family 4 or 6, then 4 or 16 address bytes), as
/// a flow's `open` carries its visitor.
pub fn put_addr(buf: &mut BytesMut, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            buf.put_u8(4);
            buf.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            buf.put_u8(6);
            buf.put_slice(&ip.octets());
        }
    }
    buf.put_u16(addr.port());
}

/// Takes an address written by [`put_addr`] off the front of `bytes`.
pub fn get_addr(bytes: &mut impl Buf) -> Result<SocketAddr, DatagramError> {
    if !bytes.has_remaining() {
        return Err(DatagramError::Truncated);
    }
    let ip = match bytes.get_u8() {
        4 if bytes.remaining() >= 4 + 2 => {
            let mut octets = [0u8; 4];
            bytes.copy_to_slice(&mut octets);
            IpAddr::V4(Ipv4Addr::from(octets))
        }
        6 if bytes.remaining() >= 16 + 2 => {
            let mut octets = [0u8; 16];
            bytes.copy_to_slice(&mut octets);
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        4 | 6 => return Err(DatagramError::Truncated),
        other => return Err(DatagramError::BadFamily(other)),
    };
    Ok(SocketAddr::new(ip, bytes.get_u16()))
}

/// Datagrams on a stream (the mux and dial-back datagram channel): a 4-byte big-endian length,
/// then the datagram. A length over [`MAX_CHANNEL_FRAME`] is an error (the channel is closed),
/// checked before anything is buffered.
#[derive(Debug, Default, Clone, Copy)]
pub struct ChannelCodec;

impl Decoder for ChannelCodec {
    type Item = Datagram;
    type Error = ChannelError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Datagram>, ChannelError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > MAX_CHANNEL_FRAME {
            return Err(DatagramError::FrameTooLarge(len).into());
        }
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        let frame = src.split_to(len).freeze();
        Ok(Some(Datagram::decode(frame)?))
    }
}

impl Encoder<Datagram> for ChannelCodec {
    type Error = ChannelError;

    fn encode(&mut self, item: Datagram, dst: &mut BytesMut) -> Result<(), ChannelError> {
        let len = item.encoded_len();
        if len > MAX_CHANNEL_FRAME {
            return Err(DatagramError::FrameTooLarge(len).into());
        }
        dst.reserve(4 + len);
        dst.put_u32(len as u32);
        item.encode(dst)?;
        Ok(())
    }
}

/// A datagram channel failed: bad bytes from the peer, or the stream itself.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The peer sent something that is not a datagram frame.
    #[error(transparent)]
    Datagram(#[from] DatagramError),
    /// The stream failed.
    #[error("datagram channel: {0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn open(tunnel: &str, visitor: &str) -> Option<FlowOpen> {
        Some(FlowOpen {
            tunnel: tunnel.into(),
            visitor: visitor.parse().expect("literal"),
        })
    }

    #[test]
    fn data_with_an_open_header_round_trips_for_both_families() {
        for visitor in ["203.0.113.7:5353", "[2001:db8::1]:53"] {
            let datagram = Datagram::Data {
                flow: 70_000,
                open: open("dns", visitor),
                payload: Bytes::from_static(b"query"),
            };
            let bytes = datagram.to_bytes().expect("encodes");
            assert_eq!(bytes.len(), datagram.encoded_len());
            assert_eq!(Datagram::decode(bytes).expect("decodes"), datagram);
        }
    }

    #[test]
    fn the_header_is_small_once_the_flow_is_known() {
        assert_eq!(Datagram::header_len(5, None), 2);
        assert_eq!(Datagram::header_len(1_000, None), 3);
        let v4 = open("dns", "127.0.0.1:9").expect("some");
        assert_eq!(Datagram::header_len(5, Some(&v4)), 2 + 1 + 3 + 1 + 4 + 2);
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        assert_eq!(
            Datagram::decode(Bytes::new()),
            Err(DatagramError::Truncated)
        );
        assert_eq!(
            Datagram::decode(Bytes::from_static(&[9, 1])),
            Err(DatagramError::UnknownType(9))
        );
        assert_eq!(
            Datagram::decode(Bytes::from_static(&[1, 1, 3, b'd', b'n', b's', 5, 0])),
            Err(DatagramError::BadFamily(5))
        );
        assert_eq!(
            Datagram::decode(Bytes::from_static(&[1, 1, 3, b'd', b'n', b's', 4, 127])),
            Err(DatagramError::Truncated)
        );
        assert_eq!(
            Datagram::decode(Bytes::from_static(&[0, 0x40])),
            Err(DatagramError::Truncated)
        );
        assert_eq!(
            Datagram::decode(Bytes::from_static(&[1, 1, 0])),
            Err(DatagramError::BadTunnel)
        );
    }

    #[test]
    fn unencodable_datagrams_are_refused() {
        let too_big = Datagram::Close {
            flow: MAX_VARINT + 1,
        };
        assert_eq!(
            too_big.to_bytes(),
            Err(DatagramError::FlowTooLarge(MAX_VARINT + 1))
        );
        let long_name = Datagram::Data {
            flow: 1,
            open: open(&"a".repeat(256), "127.0.0.1:1"),
            payload: Bytes::new(),
        };
        assert_eq!(long_name.to_bytes(), Err(DatagramError::BadTunnel));
    }

    #[test]
    fn the_channel_codec_frames_and_refuses_oversized_frames() {
        let mut codec = ChannelCodec;
        let mut buf = BytesMut::new();
        let first = Datagram::Data {
            flow: 1,
            open: None,
            payload: Bytes::from(vec![7u8; 1_000]),
        };
        codec.encode(first.clone(), &mut buf).expect("fits");
        codec
            .encode(Datagram::Close { flow: 1 }, &mut buf)
            .expect("fits");
        let mut half = buf.split_to(500);
        assert!(codec.decode(&mut half).expect("no error").is_none());
        half.unsplit(buf);
        assert_eq!(codec.decode(&mut half).expect("ok"), Some(first));
        assert_eq!(
            codec.decode(&mut half).expect("ok"),
            Some(Datagram::Close { flow: 1 })
        );
        let largest = Datagram::Data {
            flow: MAX_VARINT,
            open: open(&"a".repeat(255), "[::1]:1"),
            payload: Bytes::from(vec![0u8; MAX_UDP_PAYLOAD]),
        };
        assert_eq!(largest.encoded_len(), MAX_CHANNEL_FRAME);
        codec
            .encode(largest, &mut BytesMut::new())
            .expect("any UDP payload fits");
        let oversized = Datagram::Data {
            flow: 1,
            open: None,
            payload: Bytes::from(vec![0u8; MAX_CHANNEL_FRAME]),
        };
        assert!(matches!(
            codec.encode(oversized, &mut BytesMut::new()),
            Err(ChannelError::Datagram(DatagramError::FrameTooLarge(_)))
        ));
        let mut hostile = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0xFF][..]);
        assert!(codec.decode(&mut hostile).is_err());
        assert!(
            hostile.capacity() < 1024,
            "nothing was reserved for a hostile length"
        );
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(datagram) = Datagram::decode(Bytes::from(bytes)) {
                let again = datagram.to_bytes().expect("a decoded datagram encodes");
                prop_assert_eq!(Datagram::decode(again).expect("and decodes"), datagram);
            }
        }

        #[test]
        fn varints_round_trip(value in 0..=MAX_VARINT) {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, value);
            prop_assert_eq!(buf.len(), varint_len(value));
            prop_assert_eq!(get_varint(&mut buf.freeze()).expect("decodes"), value);
        }
    }
}
