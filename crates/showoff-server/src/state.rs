//! What the server knows right now: live sessions, tunnels and the routing table, the naming
//! rules, public ports and the URLs visitors use. Plain data and small synchronous maps; no
//! task, no socket except the public ports a TCP tunnel binds ([`ports`]). Name and port
//! *ownership* across instances is the [`Registry`](showoff_core::Registry)'s; this layer only
//! holds what this instance serves.
//!
//! - [`sessions`]: [`Session`] and the table of live sessions.
//! - [`tunnel`]: [`Tunnel`], one registered tunnel: what was asked, what was granted, how to
//!   reach the client, visitor bookkeeping and a slot for its edge's own state.
//! - [`routes`]: [`Routes`], name → live tunnel, read by the edges on every request.
//! - [`access`]: per-tunnel visitor rules (IP lists, basic auth).
//! - [`partition`]: whether this instance fenced itself off its cluster.
//! - [`names`]: the naming rules (validity, reserved, banned, patterns) and readable names.
//! - [`ports`]: binding a public port for a TCP tunnel.
//! - [`urls`]: [`PublicUrls`], the one builder of every URL and origin the server shows.

pub(crate) mod access;
pub(crate) mod names;
pub(crate) mod partition;
pub(crate) mod ports;
pub(crate) mod routes;
pub(crate) mod sessions;
pub(crate) mod tunnel;
pub(crate) mod urls;

pub(crate) use self::routes::Routes;
pub(crate) use self::sessions::{Session, Sessions};
pub(crate) use self::tunnel::{Full, Tunnel, VisitorCaps};
pub(crate) use self::urls::PublicUrls;
