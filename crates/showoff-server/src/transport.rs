//! How the server gets a byte stream to a client. The interface ([`StreamOpener`]) and the
//! stream it yields ([`TunnelStream`]) live in `showoff-core`, shared with the client and future
//! transports; this layer holds the server side of each transport, one module each:
//!
//! - [`dialback`]: the client dials one data connection per stream, taken from a warm pool of
//!   pre-dialled connections when one is idle, else requested with `Dial` on the control link.

pub(crate) mod dialback;

pub use showoff_core::{
    OpenError, Prefixed, SPLICE_BUF, StreamIo, StreamMeta, StreamOpener, TunnelStream, splice,
};
