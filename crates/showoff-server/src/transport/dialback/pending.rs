//! Streams waiting for a client's dial-back: `id → oneshot::Sender`, with caps and guards.
//!
//! [`DialBack::open`](super::DialBack) inserts an entry and awaits its receiver under
//! `pending_timeout`; the data listener ([`super::accept`]) completes it when a connection shows
//! the id and the session's key. No polling and no task per
//! entry: a [`PendingGuard`] removes the entry on every exit path (answered, timed out, visitor
//! gone), and [`Permit`]s bound how many streams a session and the server set up at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::metrics::gauge::Gauge;

use tokio::sync::oneshot;

use crate::stats::DataRejectReason;
use showoff_core::TunnelStream;

/// What a waiter receives: the client's stream, or the reason it could not make one.
pub(crate) type Outcome = Result<TunnelStream, String>;

struct Entry {
    session: String,
    key: String,
    tx: oneshot::Sender<Outcome>,
}

/// The table of pending dial-backs of the whole server.
#[derive(Default)]
pub(crate) struct Pending {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Pending {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a fresh id for `session`; the guard removes it when dropped.
    pub(crate) fn insert(
        &self,
        session: &str,
        key: &str,
    ) -> (PendingGuard<'_>, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let id = showoff_proto::id::random_id();
        let entry = Entry {
            session: session.to_string(),
            key: key.to_string(),
            tx,
        };
        self.entries().insert(id.clone(), entry);
        (PendingGuard { pending: self, id }, rx)
    }

    /// Hands `stream` to the waiter of `id` if `session` and `key` match its entry.
    pub(crate) fn complete(
        &self,
        id: &str,
        session: &str,
        key: &str,
        stream: TunnelStream,
    ) -> Result<(), DataRejectReason> {
        let entry = self.take_matching(id, session, key)?;
        // The waiter may have given up between the lookup and now; the stream is then dropped.
        let _ = entry.tx.send(Ok(stream));
        Ok(())
    }

    /// Tells the waiter of `id` that the client could not open the stream.
    pub(crate) fn fail(&self, id: &str, session: &str, reason: String) {
        let mut entries = self.entries();
        if entries.get(id).is_some_and(|e| e.session == session)
            && let Some(entry) = entries.remove(id)
        {
            let _ = entry.tx.send(Err(reason));
        }
    }

    /// Drops every entry of a session that ended; its waiters see the client as gone.
    pub(crate) fn remove_session(&self, session: &str) {
        self.entries().retain(|_, e| e.session != session);
    }

    fn take_matching(&self, id: &str, session: &str, key: &str) -> Result<Entry, DataRejectReason> {
        let mut entries = self.entries();
        let entry = entries.get(id).ok_or(DataRejectReason::UnknownId)?;
        let key_ok = showoff_proto::id::constant_time_eq(entry.key.as_bytes(), key.as_bytes());
        if entry.session != session || !key_ok {
            return Err(DataRejectReason::WrongKey);
        }
        entries.remove(id).ok_or(DataRejectReason::UnknownId)
    }

    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn len(&self) -> usize {
        self.entries().len()
    }
}

/// Removes its pending entry when dropped.
pub(crate) struct PendingGuard<'a> {
    pending: &'a Pending,
    id: String,
}

impl PendingGuard<'_> {
    pub(crate) fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.entries().remove(&self.id);
    }
}

/// One slot of the per-session and global caps on streams being set up.
pub(crate) struct Permit<'a> {
    session: &'a AtomicUsize,
    global: &'a Gauge,
}

impl<'a> Permit<'a> {
    /// Takes a slot if both counts are under their caps.
    pub(crate) fn acquire(
        session: &'a AtomicUsize,
        session_max: usize,
        global: &'a Gauge,
        global_max: usize,
    ) -> Option<Self> {
        if session.fetch_add(1, Ordering::AcqRel) >= session_max {
            session.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        if global.inc() >= global_max as i64 {
            global.dec();
            session.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self { session, global })
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.session.fetch_sub(1, Ordering::AcqRel);
        self.global.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> TunnelStream {
        TunnelStream::boxed(bytes::BytesMut::new(), tokio::io::duplex(8).0)
    }

    #[tokio::test]
    async fn completes_with_matching_key_and_only_once() {
        let pending = Pending::default();
        let (guard, rx) = pending.insert("s1", "k1");
        let id = guard.id().to_string();
        assert_eq!(id.len(), showoff_proto::id::ID_LEN);
        assert_eq!(
            pending.complete(&id, "s1", "wrong", stream()).err(),
            Some(DataRejectReason::WrongKey)
        );
        assert_eq!(
            pending.complete(&id, "s2", "k1", stream()).err(),
            Some(DataRejectReason::WrongKey)
        );
        pending
            .complete(&id, "s1", "k1", stream())
            .expect("right key");
        assert!(rx.await.expect("sent").is_ok());
        assert_eq!(
            pending.complete(&id, "s1", "k1", stream()).err(),
            Some(DataRejectReason::UnknownId),
            "an id is single-use"
        );
    }

    #[test]
    fn guard_removes_the_entry_on_drop() {
        let pending = Pending::default();
        let (guard, _rx) = pending.insert("s1", "k1");
        assert_eq!(pending.len(), 1);
        drop(guard);
        assert_eq!(pending.len(), 0);
    }

    #[tokio::test]
    async fn ending_a_session_wakes_its_waiters() {
        let pending = Pending::default();
        let (_g1, rx1) = pending.insert("s1", "k");
        let (_g2, _rx2) = pending.insert("s2", "k");
        pending.remove_session("s1");
        assert!(rx1.await.is_err(), "sender dropped");
        assert_eq!(pending.len(), 1);
    }

    #[tokio::test]
    async fn fail_delivers_the_reason() {
        let pending = Pending::default();
        let (guard, rx) = pending.insert("s1", "k");
        pending.fail(guard.id(), "s1", "connection refused".into());
        assert_eq!(
            rx.await.expect("sent").err().as_deref(),
            Some("connection refused")
        );
    }

    #[test]
    fn permits_respect_both_caps() {
        let session = AtomicUsize::new(0);
        let global = Gauge::default();
        let a = Permit::acquire(&session, 2, &global, 3).expect("first");
        let _b = Permit::acquire(&session, 2, &global, 3).expect("second");
        assert!(
            Permit::acquire(&session, 2, &global, 3).is_none(),
            "session cap"
        );
        let other = AtomicUsize::new(0);
        let _c = Permit::acquire(&other, 2, &global, 3).expect("global has room");
        assert!(
            Permit::acquire(&other, 2, &global, 3).is_none(),
            "global cap"
        );
        drop(a);
        assert!(Permit::acquire(&other, 2, &global, 3).is_some());
        assert_eq!(session.load(Ordering::Relaxed), 1);
    }
}
