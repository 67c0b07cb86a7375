//! A value kept for the container the last event came from, found again
//! by the address of the container's description (an attribution's `Arc`),
//! not by hashing its 64-character id: a burst of one container's events
//! costs a pointer compare per event.

use super::ContainerInfo;
use std::sync::Arc;

/// The description is held with the value, so while the value is kept no
/// other container's description can have its address.
#[derive(Debug)]
pub struct LastContainer<T>(Option<(Arc<ContainerInfo>, T)>);

impl<T> Default for LastContainer<T> {
    fn default() -> Self {
        LastContainer(None)
    }
}

impl<T: Copy> LastContainer<T> {
    /// The value kept for `c`, if `c` is the container it was kept for.
    pub fn get(&self, c: &Arc<ContainerInfo>) -> Option<T> {
        self.0.as_ref().filter(|(last, _)| Arc::ptr_eq(last, c)).map(|(_, v)| *v)
    }

    pub fn set(&mut self, c: &Arc<ContainerInfo>, value: T) {
        self.0 = Some((Arc::clone(c), value));
    }

    pub fn clear(&mut self) {
        self.0 = None;
    }

    /// Forgets the value if it was kept for the container with id `id`.
    pub fn clear_if(&mut self, id: &str) {
        if self.0.as_ref().is_some_and(|(c, _)| c.id == id) {
            self.0 = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_for_one_description_of_one_container() {
        let a = Arc::new(ContainerInfo { id: "a".into(), ..Default::default() });
        let mut last = LastContainer::default();
        assert_eq!(last.get(&a), None);
        last.set(&a, 7);
        assert_eq!(last.get(&a), Some(7));
        // Another description, even of the same container: not found.
        assert_eq!(last.get(&Arc::new(ContainerInfo { id: "a".into(), ..Default::default() })), None);
        last.clear_if("b");
        assert_eq!(last.get(&a), Some(7));
        last.clear_if("a");
        assert_eq!(last.get(&a), None);
        last.set(&a, 8);
        last.clear();
        assert_eq!(last.get(&a), None);
    }
}
