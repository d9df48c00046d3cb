//! The relay's second way into its flow table: from a visitor's address to its flow id. The
//! address lives once, in the flow; this index holds only flow ids, hashed by their flow's
//! address, so it costs 9 bytes a slot where a map from address to id costs 41 (a
//! `SocketAddr` is 32 bytes). Idle flows are many: this is most of what one costs.

use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;

use hashbrown::HashTable;
use showoff_core::FlowTable;

/// What the index needs of a flow: the address it was opened for.
pub(super) trait Visited {
    fn visitor(&self) -> SocketAddr;
}

/// Flow ids by visitor address, over the flows of one [`FlowTable`].
///
/// Every id in the index names a flow in the table whenever the index grows, so a flow is
/// inserted here after the table and removed here with (or after) its removal from the table.
#[derive(Debug, Default)]
pub(super) struct VisitorIndex {
    ids: HashTable<u64>,
    hasher: RandomState,
}

impl VisitorIndex {
    /// The flow opened for `visitor`, if any.
    pub(super) fn get<V: Visited>(&self, visitor: SocketAddr, flows: &FlowTable<V>) -> Option<u64> {
        let hash = self.hasher.hash_one(visitor);
        self.ids
            .find(hash, |&id| {
                flows.get(id).is_some_and(|flow| flow.visitor() == visitor)
            })
            .copied()
    }

    /// Records flow `id`, already in `flows`, under its visitor's address.
    pub(super) fn insert<V: Visited>(
        &mut self,
        visitor: SocketAddr,
        id: u64,
        flows: &FlowTable<V>,
    ) {
        let hasher = &self.hasher;
        let hash = hasher.hash_one(visitor);
        self.ids.insert_unique(hash, id, |&other| {
            flows
                .get(other)
                .map_or(0, |flow| hasher.hash_one(flow.visitor()))
        });
    }

    /// Forgets flow `id`, opened for `visitor`; the flow itself may be gone from the table.
    pub(super) fn remove(&mut self, visitor: SocketAddr, id: u64) {
        let hash = self.hasher.hash_one(visitor);
        if let Ok(entry) = self.ids.find_entry(hash, |&other| other == id) {
            entry.remove();
        }
    }

    /// Flows indexed.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use showoff_core::FlowBudget;
    use tokio::time::Instant;

    use super::*;

    struct Flow(SocketAddr);

    impl Visited for Flow {
        fn visitor(&self) -> SocketAddr {
            self.0
        }
    }

    fn visitor(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn finds_each_flow_by_its_visitor_through_growth_and_forgets_removed_ones() {
        let mut flows = FlowTable::new(10_000, Duration::from_secs(60), FlowBudget::new(10_000));
        let mut index = VisitorIndex::default();
        let now = Instant::now();
        for port in 1..=5_000u16 {
            let id = u64::from(port) << 8;
            flows.insert(id, Flow(visitor(port)), now).expect("room");
            index.insert(visitor(port), id, &flows);
        }
        for port in (1..=5_000u16).step_by(2) {
            let id = u64::from(port) << 8;
            flows.remove(id).expect("held");
            index.remove(visitor(port), id);
        }
        assert_eq!(index.len(), 2_500);
        for port in 1..=5_000u16 {
            let expected = (port % 2 == 0).then_some(u64::from(port) << 8);
            assert_eq!(index.get(visitor(port), &flows), expected, "port {port}");
        }
        assert_eq!(index.get(visitor(6_000), &flows), None);
    }

    #[test]
    fn an_address_reused_by_a_new_flow_finds_the_new_one() {
        let mut flows = FlowTable::new(8, Duration::from_secs(60), FlowBudget::new(8));
        let mut index = VisitorIndex::default();
        let now = Instant::now();
        flows.insert(1 << 8, Flow(visitor(53)), now).expect("room");
        index.insert(visitor(53), 1 << 8, &flows);
        flows.remove(1 << 8).expect("held");
        index.remove(visitor(53), 1 << 8);
        flows.insert(2 << 8, Flow(visitor(53)), now).expect("room");
        index.insert(visitor(53), 2 << 8, &flows);
        assert_eq!(index.get(visitor(53), &flows), Some(2 << 8));
        assert_eq!(index.len(), 1);
    }
}
