//! The Showoff wire protocol, shared by server and client.
//!
//! Everything that parses bytes a peer sent lives here, sealed from the handlers: the frame codec
//! ([`codec`]), the typed messages ([`message`]), identifier generation ([`id`]) and the rules for
//! `Host` values and tunnel names ([`host`]). The crate does no I/O of its own beyond the codec's
//! `tokio_util` traits, so all of it is tested without sockets.
//!
//! Layout:
//! - [`message`]: `ClientMessage` / `ServerMessage`, tunnel specs, refusal codes.
//! - [`codec`]: 4-byte big-endian length + JSON frames, [`MAX_FRAME_LEN`] checked before allocating.
//! - [`id`]: CSPRNG ids and keys, readable random names, constant-time comparison.
//! - [`host`]: `Host` header parsing, DNS-label name rules, `<name>.<domain>` routing.
//! - [`datagram`]: UDP tunnel datagrams (flow id, open header, payload) and their stream framing.

pub mod codec;
pub mod datagram;
pub mod host;
pub mod id;
pub mod message;

use std::time::Duration;

pub use codec::{FrameCodec, ProtocolError};
pub use message::{
    ClientMessage, HostHeader, RefusedCode, Role, ServerMessage, TransportKind, TunnelInfo,
    TunnelKind, TunnelSpec, Upstream, VisitorRules, check_hello,
};

/// The protocol version this build speaks when it opens a connection.
pub const PROTOCOL_VERSION: u16 = 1;

/// Every protocol version this build accepts; a `Hello` with another version is refused with
/// [`RefusedCode::VersionMismatch`] and a message naming these.
pub const SUPPORTED_VERSIONS: &[u16] = &[PROTOCOL_VERSION];

/// Largest frame body either side accepts (64 KiB). Checked against the length prefix before any
/// buffer is reserved, so a hostile prefix cannot make a peer allocate.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Deadline for every handshake read (`Hello`, `Auth`, `Open`, `DataHello`).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
