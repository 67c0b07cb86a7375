//! The file-change watcher's directory cache: a directory's handle → its
//! path and where it lies against the path filter, so a directory's events
//! after its first cost a hash look-up instead of `open_by_handle_at` and a
//! readlink.

use super::change::Place;

/// Bounded handle → directory cache with clock (second-chance) eviction.
pub(super) struct DirCache {
    map: lancet_engine::FastMap<Box<[u8]>, usize>,
    slots: Vec<Slot>,
    hand: usize,
    cap: usize,
}

struct Slot {
    key: Box<[u8]>,
    dir: String,
    place: Place,
    referenced: bool,
}

impl DirCache {
    pub(super) fn new(cap: usize) -> Self {
        DirCache {
            map: lancet_engine::FastMap::with_capacity_and_hasher(cap, Default::default()),
            slots: Vec::with_capacity(cap),
            hand: 0,
            cap: cap.max(1),
        }
    }

    pub(super) fn get(&mut self, key: &[u8]) -> Option<(&str, Place)> {
        let i = *self.map.get(key)?;
        let s = &mut self.slots[i];
        s.referenced = true;
        Some((&s.dir, s.place))
    }

    pub(super) fn insert(&mut self, key: Box<[u8]>, dir: String, place: Place) {
        if let Some(&i) = self.map.get(&key) {
            let s = &mut self.slots[i];
            s.dir = dir;
            s.place = place;
            return;
        }
        if self.slots.len() < self.cap {
            self.map.insert(key.clone(), self.slots.len());
            self.slots.push(Slot { key, dir, place, referenced: false });
            return;
        }
        loop {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            if std::mem::take(&mut self.slots[i].referenced) {
                continue;
            }
            let old = std::mem::replace(&mut self.slots[i], Slot { key: key.clone(), dir, place, referenced: false });
            self.map.remove(&old.key);
            self.map.insert(key, i);
            return;
        }
    }

    pub(super) fn clear(&mut self) {
        self.map.clear();
        self.slots.clear();
        self.hand = 0;
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}
