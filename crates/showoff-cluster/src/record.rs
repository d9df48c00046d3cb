//! How a lease is kept in Redis: one string key per leased name or port,
//! `<prefix>lease:<key>` (`showoff:lease:name:demo`, `showoff:lease:port:20001`,
//! `showoff:lease:udp-port:20001`), whose value is a small JSON record and whose TTL is the
//! lease's. The generation counter is `<prefix>generation`; cluster events go to
//! `<prefix>events`; the set `<prefix>ports` lists the keys of port leases. The Lua scripts read the same record with `cjson`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use showoff_core::{Lease, LeaseKey, Owner};

/// The record stored under a lease's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The generation of the grant.
    pub g: u64,
    /// The instance that granted it.
    pub i: String,
    /// The principal holding it.
    pub p: String,
    /// The session holding it.
    pub s: String,
}

/// A stored record that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed lease record: {0}")]
pub struct MalformedRecord(String);

impl Record {
    /// The record of `lease`.
    pub fn of(lease: &Lease) -> Self {
        Self {
            g: lease.generation,
            i: lease.instance.to_string(),
            p: lease.owner.principal.to_string(),
            s: lease.owner.session.to_string(),
        }
    }

    /// Parses a stored record.
    pub fn parse(stored: &str) -> Result<Self, MalformedRecord> {
        serde_json::from_str(stored).map_err(|e| MalformedRecord(e.to_string()))
    }

    /// The record as stored.
    pub fn encode(&self) -> String {
        // A struct of strings and a number always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The lease this record grants on `key`.
    pub fn into_lease(self, key: LeaseKey) -> Lease {
        Lease {
            key,
            owner: Owner {
                principal: Arc::from(self.p),
                session: Arc::from(self.s),
            },
            instance: Arc::from(self.i),
            generation: self.g,
        }
    }
}

/// The Redis names of one cluster (all under one prefix, so clusters can share a Redis).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `prefix` (e.g. `showoff:`).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// The key holding the lease on `key`.
    pub fn lease(&self, key: &LeaseKey) -> String {
        format!("{}lease:{key}", self.prefix)
    }

    /// The lease key a key of [`lease`](Self::lease) names; `None` for any other key.
    pub fn leased(&self, stored_key: &str) -> Option<LeaseKey> {
        let rest = stored_key
            .strip_prefix(&self.prefix)?
            .strip_prefix("lease:")?;
        LeaseKey::parse(rest)
    }

    /// The set of every port lease's key (so each instance can list the ports to listen on
    /// without scanning the keyspace); members whose lease expired are pruned on listing.
    pub fn ports(&self) -> String {
        format!("{}ports", self.prefix)
    }

    /// The sorted set of instances that announced a peer listener, each scored with when its
    /// announcement lapses (Unix milliseconds).
    pub fn instances(&self) -> String {
        format!("{}instances", self.prefix)
    }

    /// The generation counter.
    pub fn generation(&self) -> String {
        format!("{}generation", self.prefix)
    }

    /// Where instance `instance` announced its peer listener.
    pub fn instance(&self, instance: &str) -> String {
        format!("{}instance:{instance}", self.prefix)
    }

    /// The channel cluster events are published on; each message is the lease key that changed.
    pub fn events(&self) -> String {
        format!("{}events", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_kind_and_the_key_under_the_prefix() {
        let keys = Keys::new("showoff:");
        assert_eq!(
            keys.lease(&LeaseKey::Name("demo".into())),
            "showoff:lease:name:demo"
        );
        assert_eq!(
            keys.lease(&LeaseKey::UdpPort(53)),
            "showoff:lease:udp-port:53"
        );
        assert_eq!(
            keys.leased("showoff:lease:udp-port:53"),
            Some(LeaseKey::UdpPort(53))
        );
        assert_eq!(keys.leased("other:lease:port:53"), None);
        assert_eq!(keys.leased("showoff:generation"), None);
        assert_eq!(keys.ports(), "showoff:ports");
        assert_eq!(keys.instances(), "showoff:instances");
        assert_eq!(keys.generation(), "showoff:generation");
        assert_eq!(keys.events(), "showoff:events");
        assert_eq!(keys.instance("node-a"), "showoff:instance:node-a");
    }

    #[test]
    fn a_record_round_trips_and_nonsense_is_refused() {
        let record = Record {
            g: 42,
            i: "node-a".into(),
            p: "alice \"quoted\"".into(),
            s: "s-1".into(),
        };
        let stored = record.encode();
        assert_eq!(Record::parse(&stored), Ok(record.clone()));
        let lease = record.clone().into_lease(LeaseKey::Port(20_001));
        assert_eq!(lease.generation, 42);
        assert_eq!(&*lease.instance, "node-a");
        assert_eq!(Record::of(&lease), record);
        assert!(Record::parse("{\"g\":\"x\"}").is_err());
        assert!(Record::parse("").is_err());
    }
}
