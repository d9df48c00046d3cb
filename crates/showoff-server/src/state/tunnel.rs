//! A registered tunnel: what the client asked for, what it was granted (name, URL, port, the
//! leases behind them), how to open streams to it, and visitor bookkeeping. Edges look tunnels
//! up in [`Routes`](super::Routes) and never hold them past a request or connection.
//!
//! An edge that keeps state per tunnel (the HTTP edge's idle upstream connections) keeps it in
//! the tunnel's [`edge_state`](Tunnel::edge_state) slot, created on first use: this layer does
//! not know the edge's types, a TCP tunnel carries no HTTP pool, and the state goes when the
//! tunnel goes.

use std::any::Any;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use showoff_core::{Lease, StreamOpener};
use showoff_proto::{TunnelInfo, TunnelSpec};
use tokio_util::sync::CancellationToken;

use super::access::Access;

/// One live tunnel of one session: what registration decided, and its [`Activity`].
pub(crate) struct Tunnel {
    /// What the client was told (name, public URL, port).
    pub(crate) info: TunnelInfo,
    /// What the client asked for (host header policy, target).
    pub(crate) spec: TunnelSpec,
    /// The principal that owns it.
    pub(crate) principal: Arc<str>,
    /// The session serving it.
    pub(crate) session_id: Arc<str>,
    /// Opens streams to the client.
    pub(crate) opener: Arc<dyn StreamOpener>,
    /// Who may visit (IP lists, basic auth).
    pub(crate) access: Access,
    /// The leases on its name and, for TCP tunnels, its public port.
    pub(crate) leases: Vec<Lease>,
    /// Cancelled when the tunnel closes (its session ended too); its TCP listener stops.
    pub(crate) closed: CancellationToken,
    /// Cancelled when established TCP and TLS streams must end with the tunnel: revocation,
    /// lifetime or idle expiry, the client's own close. A session that merely ended (link
    /// lost, taken over) leaves them running until either end closes.
    pub(crate) cut: CancellationToken,
    /// Visitor bookkeeping, from the moment the tunnel is built.
    pub(crate) activity: Activity,
}

/// When a tunnel was registered and last visited, its visitors now, and its edge's state.
pub(crate) struct Activity {
    epoch: Instant,
    last_active_ms: AtomicU64,
    /// Visitors being served now (HTTP requests in flight, TCP connections).
    visitors: AtomicUsize,
    /// The same, per visitor address (entries go when their count reaches zero).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    edge_state: [OnceLock<Box<dyn Any + Send + Sync>>; EDGE_STATES],
}

/// Edge state types a tunnel can hold (the HTTP edge keeps its HTTP/1.1 pool and its HTTP/2
/// connection apart; UDP keeps its peer inbox).
const EDGE_STATES: usize = 2;

impl Default for Activity {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last_active_ms: AtomicU64::new(0),
            visitors: AtomicUsize::new(0),
            per_ip: Mutex::default(),
            edge_state: Default::default(),
        }
    }
}

/// Caps on a tunnel's concurrent visitors: in all, and from one visitor address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VisitorCaps {
    /// Visitors at once.
    pub(crate) per_tunnel: usize,
    /// Visitors at once from one address.
    pub(crate) per_ip: usize,
}

/// Which visitor cap refused a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// The tunnel has its cap of visitors.
    Tunnel,
    /// This address has its share of the tunnel.
    Address,
}

/// One visitor slot of a tunnel; released on drop.
pub(crate) struct VisitorSlot<'a> {
    activity: &'a Activity,
    ip: IpAddr,
}

impl Drop for VisitorSlot<'_> {
    fn drop(&mut self) {
        self.activity.visitors.fetch_sub(1, Ordering::AcqRel);
        let mut per_ip = self.activity.per_ip.lock().expect("visitor map lock");
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// A visitor slot that holds its tunnel, for work that outlives the handler that took it (a
/// response body relayed after the handler returned).
pub(crate) struct HeldSlot {
    tunnel: Arc<Tunnel>,
    ip: IpAddr,
}

impl Drop for HeldSlot {
    fn drop(&mut self) {
        drop(VisitorSlot {
            activity: &self.tunnel.activity,
            ip: self.ip,
        });
    }
}

impl Tunnel {
    /// [`Tunnel::visitor_slot`], held by its own reference to the tunnel.
    pub(crate) fn held_visitor_slot(
        self: &Arc<Self>,
        caps: VisitorCaps,
        ip: IpAddr,
    ) -> Result<HeldSlot, Full> {
        let slot = self.visitor_slot(caps, ip)?;
        let ip = slot.ip;
        // Given back by the held slot's drop instead.
        std::mem::forget(slot);
        Ok(HeldSlot {
            tunnel: self.clone(),
            ip,
        })
    }

    /// Takes a visitor slot for a visitor at `ip` if neither cap is reached.
    pub(crate) fn visitor_slot(
        &self,
        caps: VisitorCaps,
        ip: IpAddr,
    ) -> Result<VisitorSlot<'_>, Full> {
        let activity = &self.activity;
        if activity.visitors.fetch_add(1, Ordering::AcqRel) >= caps.per_tunnel {
            activity.visitors.fetch_sub(1, Ordering::AcqRel);
            return Err(Full::Tunnel);
        }
        let ip = ip.to_canonical();
        let mut per_ip = activity.per_ip.lock().expect("visitor map lock");
        let count = per_ip.entry(ip).or_default();
        if *count >= caps.per_ip {
            drop(per_ip);
            activity.visitors.fetch_sub(1, Ordering::AcqRel);
            return Err(Full::Address);
        }
        *count += 1;
        Ok(VisitorSlot { activity, ip })
    }

    /// Records visitor activity (idle timeout bookkeeping; one relaxed store).
    pub(crate) fn touch(&self) {
        let now = self.activity.epoch.elapsed().as_millis() as u64;
        self.activity.last_active_ms.store(now, Ordering::Relaxed);
    }

    /// Time since the tunnel was registered.
    pub(crate) fn age(&self) -> Duration {
        self.activity.epoch.elapsed()
    }

    /// Time since the last visitor activity (or since the tunnel opened).
    pub(crate) fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.activity.last_active_ms.load(Ordering::Relaxed));
        self.activity.epoch.elapsed().saturating_sub(last)
    }

    /// The edge's state of type `T` for this tunnel, created on first use in the first free
    /// slot. `None` only if other types took every slot (the edges use fewer types).
    pub(crate) fn edge_state<T: Default + Send + Sync + 'static>(&self) -> Option<&T> {
        self.activity
            .edge_state
            .iter()
            .find_map(|slot| slot.get_or_init(|| Box::new(T::default())).downcast_ref())
    }
}

/// Tunnels over in-memory parts, for unit tests and the fuzz targets.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod tests {
    use super::*;
    use async_trait::async_trait;
    use showoff_core::{OpenError, StreamMeta, TunnelStream};
    use showoff_proto::TunnelKind;

    /// An opener whose client is never there.
    pub(crate) struct Gone;

    #[async_trait]
    impl StreamOpener for Gone {
        async fn open(&self, _meta: &StreamMeta) -> Result<TunnelStream, OpenError> {
            Err(OpenError::ClientGone)
        }
    }

    /// An HTTP tunnel `name` of `session`, owned by `principal`.
    pub(crate) fn tunnel(name: &str, session: &str, principal: &str) -> Tunnel {
        let spec = TunnelSpec {
            upstream: Default::default(),
            kind: TunnelKind::Http,
            name: Some(name.into()),
            port: None,
            host_header: Default::default(),
            target: "127.0.0.1:3000".into(),
            visitors: Default::default(),
        };
        Tunnel {
            info: TunnelInfo {
                name: name.into(),
                kind: TunnelKind::Http,
                public_url: format!("http://{name}.localhost"),
                port: None,
                flow_idle_secs: None,
            },
            spec,
            principal: principal.into(),
            session_id: session.into(),
            opener: Arc::new(Gone),
            access: Access::default(),
            leases: Vec::new(),
            closed: CancellationToken::new(),
            cut: CancellationToken::new(),
            activity: Activity::default(),
        }
    }

    #[test]
    fn visitor_slots_are_capped_per_tunnel_and_per_address_and_given_back() {
        let t = tunnel("demo", "s1", "alice");
        let caps = VisitorCaps {
            per_tunnel: 3,
            per_ip: 2,
        };
        let (one, two, three): (IpAddr, IpAddr, IpAddr) = (
            "192.0.2.1".parse().expect("ip"),
            "::ffff:192.0.2.1"
                .parse()
                .expect("mapped: the same visitor"),
            "192.0.2.3".parse().expect("ip"),
        );
        let a = t.visitor_slot(caps, one).expect("first");
        let _b = t.visitor_slot(caps, two).expect("second");
        assert_eq!(t.visitor_slot(caps, one).err(), Some(Full::Address));
        let _c = t.visitor_slot(caps, three).expect("another address");
        assert_eq!(t.visitor_slot(caps, three).err(), Some(Full::Tunnel));
        drop(a);
        assert!(t.visitor_slot(caps, one).is_ok(), "a slot came back");
        drop(_b);
        assert_eq!(t.activity.visitors.load(Ordering::Relaxed), 1);
        assert_eq!(
            t.activity.per_ip.lock().expect("lock").len(),
            1,
            "emptied entries go"
        );
    }

    #[test]
    fn idle_time_restarts_at_each_touch() {
        let t = tunnel("demo", "s1", "alice");
        std::thread::sleep(Duration::from_millis(20));
        assert!(t.idle_for() >= Duration::from_millis(20));
        t.touch();
        assert!(t.idle_for() < Duration::from_millis(20));
        assert!(t.age() >= Duration::from_millis(20));
    }

    #[test]
    fn edge_state_is_made_once_per_tunnel() {
        #[derive(Default)]
        struct Counter(AtomicUsize);
        let t = tunnel("demo", "s1", "alice");
        let counter = t.edge_state::<Counter>().expect("slot");
        counter.0.fetch_add(1, Ordering::Relaxed);
        let again = t.edge_state::<Counter>().expect("same slot");
        assert_eq!(again.0.load(Ordering::Relaxed), 1);
        assert!(t.edge_state::<String>().is_some(), "a second type");
        assert!(t.edge_state::<Vec<u8>>().is_none(), "slots are few");
        assert_eq!(
            t.edge_state::<Counter>()
                .expect("still there")
                .0
                .load(Ordering::Relaxed),
            1
        );
    }
}
