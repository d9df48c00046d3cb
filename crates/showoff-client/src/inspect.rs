//! The traffic inspector: every HTTP exchange through the client's `http` tunnels, captured
//! as it passes and served live on a loopback web page and JSON API, with replay and HAR export.
//!
//! An [`Inspector`] wraps a tunnel's [`Target`] ([`Inspector::wrap`]): each stream the target
//! opens is a [`Tee`] that hands the bytes it moved to a [`capture::Capture`] after moving
//! them. Capture is a lossy tee: memory is budgeted in bytes ([`InspectConfig::memory`]),
//! bodies past [`InspectConfig::body_cap`] are cut with a mark or written whole to disk
//! ([`InspectConfig::spill`]), drops are counted, and the relay never waits for any of it.
//!
//! # Layout
//! - [`framing`]: HTTP/1.1 message framing read from a byte stream, in pieces (pure).
//! - [`capture`]: pairs requests and responses on one stream into entries.
//! - [`entry`]: what one captured exchange holds.
//! - [`store`]: the entries under the memory budget, and their events.
//! - [`spill`]: bodies past the cap written to a directory by a writer thread.
//! - [`replay`]: sends a captured request (optionally edited) to the local target again.
//! - [`har`]: HAR 1.2 export.
//! - [`api`]: the web page and the JSON API (`/api/requests`, `/api/events`, ...).

pub mod api;
mod capture;
pub mod entry;
mod framing;
pub mod har;
pub mod replay;
mod spill;
pub mod store;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{broadcast, oneshot};

use crate::target::{Target, TargetStream};
use capture::Capture;
pub use entry::Entry;
pub use store::{DropCounts, StoreEvent};

/// Default address of the inspector's page and API.
pub const DEFAULT_INSPECT_ADDR: &str = "127.0.0.1:4040";
/// Default memory budget: every captured head and body together.
pub const DEFAULT_MEMORY: usize = 64 * 1024 * 1024;
/// Default bytes of each body kept in memory; the rest is counted, or spilled when asked.
pub const DEFAULT_BODY_CAP: usize = 256 * 1024;
/// Default bytes the spill directory may hold in all.
pub const DEFAULT_SPILL_BUDGET: u64 = 1024 * 1024 * 1024;

/// How much the inspector keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectConfig {
    /// Bytes every entry together may hold in memory; the oldest are evicted past it.
    pub memory: usize,
    /// Bytes of each body kept in memory; longer bodies are cut with a mark.
    pub body_cap: usize,
    /// Write bodies past the cap whole into a new directory under this one.
    pub spill: Option<PathBuf>,
    /// Bytes the spilled files may take in all.
    pub spill_budget: u64,
}

impl Default for InspectConfig {
    fn default() -> Self {
        Self {
            memory: DEFAULT_MEMORY,
            body_cap: DEFAULT_BODY_CAP,
            spill: None,
            spill_budget: DEFAULT_SPILL_BUDGET,
        }
    }
}

/// What every capture and the API share.
pub(crate) struct Shared {
    pub(crate) store: store::Store,
    pub(crate) body_cap: usize,
    pub(crate) spill: Option<spill::Spiller>,
    /// The wrapped targets by tunnel, for replays.
    targets: Mutex<HashMap<String, Arc<InspectedTarget>>>,
}

/// The inspector: cheap to clone; every clone sees the same entries.
#[derive(Clone)]
pub struct Inspector(Arc<Shared>);

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Inspector({} entries)", self.0.store.len())
    }
}

/// What the inspector holds now, for `GET /api/status` and the page's footer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// Entries stored.
    pub entries: usize,
    /// Bytes held (stored entries and captures in flight).
    pub memory_used: usize,
    /// The memory budget.
    pub memory_budget: usize,
    /// Bytes of each body kept in memory.
    pub body_cap: usize,
    /// Bytes in spilled files, when spilling is on.
    pub spill_used: Option<u64>,
    /// What was dropped to stay within the budgets.
    pub drops: DropCounts,
}

impl Inspector {
    /// An empty inspector; fails only when the spill directory cannot be made.
    pub fn new(config: &InspectConfig) -> io::Result<Self> {
        let spill = match &config.spill {
            Some(dir) => Some(spill::Spiller::start(dir, config.spill_budget)?),
            None => None,
        };
        Ok(Self(Arc::new(Shared {
            store: store::Store::new(config.memory),
            body_cap: config.body_cap,
            spill,
            targets: Mutex::new(HashMap::new()),
        })))
    }

    /// `target` with every stream it opens captured under `tunnel`; replays of the tunnel's
    /// entries go to it (the latest wrapped for a name wins, as after a reconnect).
    pub fn wrap(&self, tunnel: &str, target: Arc<dyn Target>) -> Arc<dyn Target> {
        let wrapped = Arc::new(InspectedTarget {
            inner: target,
            tunnel: tunnel.into(),
            shared: self.0.clone(),
        });
        self.targets().insert(tunnel.to_string(), wrapped.clone());
        wrapped
    }

    fn targets(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<InspectedTarget>>> {
        self.0.targets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The wrapped target of `tunnel`.
    pub(crate) fn target_of(&self, tunnel: &str) -> Option<Arc<InspectedTarget>> {
        self.targets().get(tunnel).cloned()
    }

    /// Every entry, newest first.
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        self.0.store.list()
    }

    /// The entry with `id`.
    pub fn get(&self, id: u64) -> Option<Arc<Entry>> {
        self.0.store.get(id)
    }

    /// Removes every entry.
    pub fn clear(&self) {
        self.0.store.clear();
    }

    /// Follows new and updated entries (the terminal's lines, the page's live list).
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.0.store.subscribe()
    }

    /// A capture of one stream, as the fuzz target drives it.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn capture_for_fuzzing(&self) -> FuzzCapture {
        FuzzCapture(Capture::new(self.0.clone(), "fuzz".into(), None))
    }

    /// What the inspector holds now.
    pub fn status(&self) -> Status {
        Status {
            entries: self.0.store.len(),
            memory_used: self.0.store.used(),
            memory_budget: self.0.store.budget(),
            body_cap: self.0.body_cap,
            spill_used: self.0.spill.as_ref().map(spill::Spiller::disk_used),
            drops: self.0.store.drop_counts(),
        }
    }
}

/// A capture that closes when dropped, for the fuzz target.
#[cfg(feature = "fuzzing")]
pub(crate) struct FuzzCapture(Capture);

#[cfg(feature = "fuzzing")]
impl FuzzCapture {
    pub(crate) fn wrote_to_target(&mut self, data: &[u8]) {
        self.0.wrote_to_target(data);
    }

    pub(crate) fn read_from_target(&mut self, data: &[u8]) {
        self.0.read_from_target(data);
    }
}

#[cfg(feature = "fuzzing")]
impl Drop for FuzzCapture {
    fn drop(&mut self) {
        self.0.closed();
    }
}

/// A target whose streams are captured.
pub(crate) struct InspectedTarget {
    inner: Arc<dyn Target>,
    tunnel: Arc<str>,
    shared: Arc<Shared>,
}

impl InspectedTarget {
    /// Opens a stream for a replay of entry `of`; the receiver hears the replay's entry id.
    pub(crate) async fn open_replay(
        &self,
        of: u64,
    ) -> Result<(TargetStream, oneshot::Receiver<u64>), String> {
        let stream = self.inner.open(None).await?;
        let (tx, rx) = oneshot::channel();
        let capture = Capture::new(self.shared.clone(), self.tunnel.clone(), Some((of, tx)));
        Ok((Box::new(Tee::new(stream, capture)), rx))
    }
}

#[async_trait]
impl Target for InspectedTarget {
    async fn open(&self, visitor: Option<SocketAddr>) -> Result<TargetStream, String> {
        let stream = self.inner.open(visitor).await?;
        let capture = Capture::new(self.shared.clone(), self.tunnel.clone(), None);
        Ok(Box::new(Tee::new(stream, capture)))
    }

    fn address(&self) -> &str {
        self.inner.address()
    }
}

/// A target stream whose bytes, each way, are shown to a capture after they moved.
pub(crate) struct Tee {
    inner: TargetStream,
    capture: Capture,
}

impl Tee {
    fn new(inner: TargetStream, capture: Capture) -> Self {
        Self { inner, capture }
    }
}

impl AsyncRead for Tee {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            this.capture.read_from_target(read);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tee {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.capture.wrote_to_target(&buf[..written]);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        self.capture.closed();
    }
}

#[cfg(test)]
mod tests;
