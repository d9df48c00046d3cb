//! How a UDP tunnel's datagrams cross a peer link: after the holder's `OK`, each direction is
//! a sequence of frames `len:u16 family:u8 ip port:u16 payload`, big-endian, where `len`
//! counts everything after itself, `family` is 4 or 6 (4 or 16 bytes of address follow) and
//! the address is the visitor's: the one a datagram came from (towards the holder) or goes
//! to (back). A UDP payload (at most 65,507 bytes) always fits. Pure: encoding and decoding.

use std::net::{IpAddr, SocketAddr};

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A frame that cannot be a datagram: the link is broken, not the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed datagram frame on a peer link")]
pub(crate) struct Malformed;

/// Appends the frame of `payload` for `visitor` to `out`; `Err` when it does not fit a frame.
pub(crate) fn encode(
    visitor: SocketAddr,
    payload: &[u8],
    out: &mut BytesMut,
) -> Result<(), Malformed> {
    let addr_len = match visitor.ip() {
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 16,
    };
    let len = u16::try_from(1 + addr_len + 2 + payload.len()).map_err(|_| Malformed)?;
    out.reserve(2 + usize::from(len));
    out.put_u16(len);
    showoff_proto::datagram::put_addr(out, visitor);
    out.put_slice(payload);
    Ok(())
}

/// Takes one whole frame off the front of `buf`: `Ok(None)` until one is complete.
pub(crate) fn decode(buf: &mut BytesMut) -> Result<Option<(SocketAddr, Bytes)>, Malformed> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
    if buf.len() < 2 + len {
        return Ok(None);
    }
    buf.advance(2);
    let mut frame = buf.split_to(len);
    let visitor = showoff_proto::datagram::get_addr(&mut frame).map_err(|_| Malformed)?;
    Ok(Some((visitor, frame.freeze())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_whole_or_split_and_nonsense_breaks_the_link() {
        let v4: SocketAddr = "192.0.2.7:5353".parse().expect("addr");
        let v6: SocketAddr = "[2001:db8::9]:53".parse().expect("addr");
        let mut out = BytesMut::new();
        encode(v4, b"query", &mut out).expect("fits");
        encode(v6, b"", &mut out).expect("fits");
        encode(v4, &[7u8; 65_507], &mut out).expect("the largest UDP payload fits");
        let whole = out.clone();
        assert_eq!(
            decode(&mut out),
            Ok(Some((v4, Bytes::from_static(b"query"))))
        );
        assert_eq!(decode(&mut out), Ok(Some((v6, Bytes::new()))));
        let (to, big) = decode(&mut out).expect("frame").expect("whole");
        assert_eq!((to, big.len()), (v4, 65_507));
        assert_eq!(decode(&mut out), Ok(None));

        // Byte by byte, the same frames come out, each once complete.
        let mut dribble = BytesMut::new();
        let mut got = 0;
        for byte in whole.iter() {
            dribble.put_u8(*byte);
            while let Some(_frame) = decode(&mut dribble).expect("well formed") {
                got += 1;
            }
        }
        assert_eq!(got, 3);

        assert!(encode(v4, &[0u8; 65_535], &mut BytesMut::new()).is_err());
        for junk in [&[0u8, 0][..], &[0, 3, 9, 1, 2], &[0, 3, 4, 1, 2]] {
            assert_eq!(
                decode(&mut BytesMut::from(junk)),
                Err(Malformed),
                "{junk:?}"
            );
        }
    }
}
