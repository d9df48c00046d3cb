//! Showoff clustering: what lets several servers share one domain.
//!
//! # Layout
//! - [`record`]: how a lease is kept in Redis (key names, the stored record), pure.
//! - [`cache`]: the short local cache of lookups, dropped key by key on cluster events.
//! - [`redis`]: [`RedisRegistry`], the [`showoff_core::Registry`] several instances share:
//!   fenced leases as Redis keys with a TTL, claimed, renewed, reasserted and released by Lua
//!   scripts that compare the generation, events over PUBLISH/SUBSCRIBE.
//! - [`tls`]: how the Redis client is opened: `redis://`, or `rediss://` with the system's
//!   roots or an operator's CA and client certificate; passwords and ACL users in the URL.
//! - [`watch`]: the background task that keeps the event subscription and tells whether Redis
//!   answers.
//!
//! Nothing here reads files, the environment or signals: the binary builds the settings.

pub mod cache;
pub mod record;
pub mod redis;
pub mod tls;
pub mod watch;

pub use crate::redis::{RedisRegistry, RedisSettings};
pub use crate::tls::RedisTls;
