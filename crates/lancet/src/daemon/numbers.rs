//! Containers numbered once. The daemon's per-container tables (live
//! process, writable set, write log) are keyed by a number given the first
//! time a container is seen, not by its 64-character id: an event is
//! looked up by id at most once, and not at all while events keep coming
//! from the container the previous one came from (the usual case: a burst
//! of one container's writes).

use lancet_engine::attribution::{ContainerInfo, LastContainer};
use lancet_engine::FastMap;
use std::sync::Arc;

/// A container's number: never reused in one run of the agent, so a table
/// that missed a container's end holds an entry no later container reads.
pub(super) type ContainerNo = u64;

pub(super) struct Numbers {
    by_id: FastMap<String, ContainerNo>,
    next: ContainerNo,
    /// The container the last number was asked for, with it.
    last: LastContainer<ContainerNo>,
    bound: usize,
}

impl Numbers {
    /// At most `bound` containers hold a number at once.
    pub(super) fn new(bound: usize) -> Self {
        Numbers { by_id: FastMap::default(), next: 1, last: LastContainer::default(), bound }
    }

    /// The number of container `c`, given now if it has none; None when
    /// `bound` containers already hold one (their tables are full too).
    pub(super) fn number(&mut self, c: &Arc<ContainerInfo>) -> Option<ContainerNo> {
        if let Some(n) = self.last.get(c) {
            return Some(n);
        }
        let n = match self.by_id.get(&c.id) {
            Some(&n) => n,
            None if self.by_id.len() >= self.bound => return None,
            None => {
                let n = self.next;
                self.next += 1;
                self.by_id.insert(c.id.clone(), n);
                n
            }
        };
        self.last.set(c, n);
        Some(n)
    }

    /// The number of the container with id `id`, if it has one.
    pub(super) fn get(&self, id: &str) -> Option<ContainerNo> {
        self.by_id.get(id).copied()
    }

    /// The container ended: its number is given to no one again.
    pub(super) fn forget(&mut self, id: &str) -> Option<ContainerNo> {
        self.last.clear_if(id);
        self.by_id.remove(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(id: &str) -> Arc<ContainerInfo> {
        Arc::new(ContainerInfo { id: id.into(), ..Default::default() })
    }

    #[test]
    fn one_number_per_container_never_reused_and_bounded() {
        let mut n = Numbers::new(2);
        let (a, b) = (container("a"), container("b"));
        let na = n.number(&a).unwrap();
        assert_eq!(n.number(&a), Some(na), "the same container again (the remembered one)");
        let nb = n.number(&b).unwrap();
        assert_ne!(na, nb);
        // Another description of the same container (attributed again
        // after its cache entry went) has the same number.
        assert_eq!(n.number(&container("a")), Some(na));
        assert_eq!(n.get("b"), Some(nb));
        // At the bound a third container has none.
        assert_eq!(n.number(&container("c")), None);
        // An ended container's number is not given again, even to a
        // container with its id (a restart under the same id).
        assert_eq!(n.forget("a"), Some(na));
        assert_eq!(n.get("a"), None);
        let again = n.number(&a).unwrap();
        assert!(again != na && again != nb);
        assert_eq!(n.number(&container("c")), None);
    }

    #[test]
    fn the_remembered_container_is_forgotten_with_it() {
        let mut n = Numbers::new(4);
        let a = container("a");
        let first = n.number(&a).unwrap();
        n.forget("a");
        // Asked again through the very same description: not the old number.
        assert_ne!(n.number(&a), Some(first));
    }
}
