//! Whether this instance has fenced itself off its cluster: it cannot reach the cluster's
//! Redis while its peers can, so its leases are about to lapse and others may take its names.
//! Set and cleared by the fencing task; `/readyz` reads it.

use std::sync::{Mutex, PoisonError};

/// The instance's partition state: why it is fenced off, while it is.
#[derive(Debug, Default)]
pub(crate) struct Partition(Mutex<Option<String>>);

impl Partition {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // One assignment per critical section: a panic cannot leave it half-done.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Why the instance is fenced off; `None` while it is not.
    pub(crate) fn reason(&self) -> Option<String> {
        self.slot().clone()
    }

    /// Fences the instance off for `why`; `false` when it already was.
    pub(crate) fn fence(&self, why: &str) -> bool {
        self.slot().replace(why.to_string()).is_none()
    }

    /// Lifts the fence; `true` when there was one.
    pub(crate) fn lift(&self) -> bool {
        self.slot().take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_is_raised_once_and_lifted_once() {
        let partition = Partition::default();
        assert_eq!(partition.reason(), None);
        assert!(partition.fence("cut off"));
        assert!(!partition.fence("cut off"), "already fenced");
        assert_eq!(partition.reason().as_deref(), Some("cut off"));
        assert!(partition.lift());
        assert!(!partition.lift());
    }
}
