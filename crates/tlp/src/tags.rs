//! A requester's outstanding-tag table: which tags have a non-posted request waiting for
//! its completions, and what the requester keeps for each.
//!
//! The host bridge (its config and memory reads) and the endpoint framework (a
//! function's DMA reads) use one [`TagTable`] each. The table holds what they share:
//! which tags are free, the allocation policy, and matching a completion's tag to its
//! entry. What each keeps per request (a deadline, a reassembly, the DMA the request
//! belongs to) is the entry type `T`.
//!
//! Completions come from the other side of the link, which may be hostile: a tag that
//! is free, or outside the table's [`TagWidth`], finds no entry (`None`), and the caller
//! counts the completion as unexpected. Nothing here panics on any tag.

use std::ops::Range;

use thiserror::Error;

use crate::types::Tag;

/// How many Tag bits a requester uses (PCIe Base Specification §2.2.6.2): set by
/// Device Control's Extended Tag Field Enable and Device Control 2's 10-Bit Tag
/// Requester Enable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagWidth {
    /// 5-bit tags, 0..=31 (Extended Tag Field Enable clear).
    Five,
    /// 8-bit tags, 0..=255.
    Eight,
    /// 10-bit tags, 256..=1023. Tags with Tag\[9:8\] = 00b are kept out (§2.2.6.2), so a
    /// completion from a completer that drops T9/T8 matches no request.
    Ten,
}

impl TagWidth {
    /// The tags a requester of this width gives out.
    pub const fn tags(self) -> Range<u16> {
        match self {
            TagWidth::Five => 0..32,
            TagWidth::Eight => 0..256,
            TagWidth::Ten => 256..1024,
        }
    }
}

/// Every tag of the table has a request outstanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("all {capacity} tags are in use")]
pub struct TagsExhausted {
    pub capacity: usize,
}

/// Outstanding requests by tag, with an entry `T` each.
///
/// Allocation rotates: [`TagTable::vacant`] offers the first free tag after the one
/// given out last, wrapping around. A tag freed by a completion or a timeout is so
/// given out again only after every other free tag was, which keeps a late completion
/// of a timed-out request (which finds no entry and is counted as unexpected) from
/// being taken for the answer to a newer request with the same tag for as long as the
/// table allows.
#[derive(Clone, Debug)]
pub struct TagTable<T> {
    /// The tag of `slots[0]`.
    first: u16,
    slots: Box<[Option<T>]>,
    /// Where the search for a free slot starts: after the slot given out last.
    next: usize,
    len: usize,
}

impl<T> TagTable<T> {
    /// An empty table of the tags `width` allows.
    pub fn new(width: TagWidth) -> TagTable<T> {
        let tags = width.tags();
        TagTable {
            first: tags.start,
            slots: tags.map(|_| None).collect(),
            next: 0,
            len: 0,
        }
    }

    /// How many requests can be outstanding at once.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// How many requests are outstanding.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len == self.slots.len()
    }

    fn tag_of(&self, index: usize) -> Tag {
        // `index` < capacity <= 768 and `first` + capacity <= 1024: always a valid tag.
        Tag::wrapping(self.first + index as u16)
    }

    fn index_of(&self, tag: Tag) -> Option<usize> {
        let i = tag.value().checked_sub(self.first)? as usize;
        (i < self.slots.len()).then_some(i)
    }

    /// The next free tag (see the allocation policy above); it is taken once an entry
    /// is put in with [`VacantTag::insert`]. Dropping the `VacantTag` leaves the table
    /// as it was.
    pub fn vacant(&mut self) -> Result<VacantTag<'_, T>, TagsExhausted> {
        let n = self.slots.len();
        if self.len == n {
            return Err(TagsExhausted { capacity: n });
        }
        let index = (0..n)
            .map(|k| (self.next + k) % n)
            .find(|&i| self.slots[i].is_none())
            .ok_or(TagsExhausted { capacity: n })?;
        Ok(VacantTag { table: self, index })
    }

    /// Puts `entry` in under the next free tag and returns the tag.
    pub fn insert(&mut self, entry: T) -> Result<Tag, TagsExhausted> {
        Ok(self.vacant()?.insert(entry))
    }

    /// The entry of `tag`, if a request is outstanding with it.
    pub fn get(&self, tag: Tag) -> Option<&T> {
        self.slots[self.index_of(tag)?].as_ref()
    }

    pub fn get_mut(&mut self, tag: Tag) -> Option<&mut T> {
        let i = self.index_of(tag)?;
        self.slots[i].as_mut()
    }

    /// Frees `tag` and returns its entry; `None` if it had none (a completion for it is
    /// unexpected).
    pub fn take(&mut self, tag: Tag) -> Option<T> {
        let i = self.index_of(tag)?;
        let entry = self.slots[i].take()?;
        self.len -= 1;
        Some(entry)
    }

    /// The outstanding requests, in tag order.
    pub fn iter(&self) -> impl Iterator<Item = (Tag, &T)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|e| (self.tag_of(i), e)))
    }

    /// Frees, in tag order, the tags whose entry `select` picks, and yields them with
    /// their entries (timeouts: those whose deadline passed; the requests of a transfer
    /// that ended). Each is freed as it is yielded: those an iterator dropped early did
    /// not reach stay in the table.
    pub fn take_where<F: FnMut(&T) -> bool>(&mut self, select: F) -> TakeWhere<'_, T, F> {
        TakeWhere {
            table: self,
            index: 0,
            select,
        }
    }

    /// Frees every tag (a reset: late completions then find no entry).
    pub fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = None);
        self.len = 0;
    }
}

/// A free tag of a [`TagTable`], from [`TagTable::vacant`].
#[derive(Debug)]
pub struct VacantTag<'a, T> {
    table: &'a mut TagTable<T>,
    index: usize,
}

impl<T> VacantTag<'_, T> {
    /// The tag the request goes out with.
    pub fn tag(&self) -> Tag {
        self.table.tag_of(self.index)
    }

    /// Marks the tag outstanding with `entry`; the next search starts after it.
    pub fn insert(self, entry: T) -> Tag {
        let t = self.table;
        t.slots[self.index] = Some(entry);
        t.len += 1;
        t.next = (self.index + 1) % t.slots.len();
        t.tag_of(self.index)
    }
}

/// The iterator of [`TagTable::take_where`].
pub struct TakeWhere<'a, T, F> {
    table: &'a mut TagTable<T>,
    index: usize,
    select: F,
}

impl<T, F: FnMut(&T) -> bool> Iterator for TakeWhere<'_, T, F> {
    type Item = (Tag, T);

    fn next(&mut self) -> Option<(Tag, T)> {
        while self.index < self.table.slots.len() {
            let i = self.index;
            self.index += 1;
            if self.table.slots[i].as_ref().is_some_and(&mut self.select) {
                let tag = self.table.tag_of(i);
                return self.table.take(tag).map(|e| (tag, e));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn tag(v: u16) -> Tag {
        Tag::new(v).unwrap()
    }

    #[test]
    fn widths_give_out_their_tags() {
        for (width, first, n) in [
            (TagWidth::Five, 0, 32),
            (TagWidth::Eight, 0, 256),
            (TagWidth::Ten, 256, 768),
        ] {
            let mut t = TagTable::new(width);
            assert_eq!(t.capacity(), n);
            let tags: Vec<u16> = (0..n).map(|i| t.insert(i).unwrap().value()).collect();
            let expected: Vec<u16> = (first..first + n as u16).collect();
            assert_eq!(tags, expected, "{width:?}");
            assert!(t.is_full());
        }
    }

    #[test]
    fn a_full_table_refuses_until_a_tag_is_taken() {
        let mut t = TagTable::new(TagWidth::Five);
        for i in 0..32 {
            t.insert(i).unwrap();
        }
        assert_eq!(t.insert(99), Err(TagsExhausted { capacity: 32 }));
        assert_eq!(t.len(), 32);
        assert_eq!(t.take(tag(17)), Some(17));
        assert_eq!(t.vacant().unwrap().tag(), tag(17));
        assert_eq!(t.insert(99), Ok(tag(17)));
        assert_eq!(t.get(tag(17)), Some(&99));
        assert!(t.insert(100).is_err());
    }

    #[test]
    fn a_freed_tag_comes_back_only_after_the_other_free_tags() {
        let mut t = TagTable::new(TagWidth::Five);
        assert_eq!(t.insert('a'), Ok(tag(0)));
        assert_eq!(t.take(tag(0)), Some('a'));
        // Tag 0 is free again, but the next request gets tag 1, and so on around.
        for v in 1..32 {
            assert_eq!(t.insert('b').unwrap(), tag(v));
            assert_eq!(t.take(tag(v)), Some('b'));
        }
        assert_eq!(t.insert('c'), Ok(tag(0)));
        assert!(t.len() == 1 && t.get(tag(0)) == Some(&'c'));
    }

    #[test]
    fn a_vacant_tag_not_filled_changes_nothing() {
        let mut t = TagTable::new(TagWidth::Eight);
        t.insert(1).unwrap();
        assert_eq!(t.vacant().unwrap().tag(), tag(1));
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(tag(1)), None);
        assert_eq!(t.insert(2), Ok(tag(1)));
    }

    /// Completions with tags the table never gave out, or gave and took back, find no
    /// entry: the caller counts them as unexpected.
    #[test]
    fn foreign_and_free_tags_find_nothing() {
        let mut eight = TagTable::new(TagWidth::Eight);
        let a = eight.insert(1).unwrap();
        assert_eq!(eight.get(tag(0x1a5)), None, "a 10-bit tag");
        assert_eq!(eight.take(tag(0x3ff)), None);
        assert_eq!(eight.get_mut(tag(7)), None, "free");
        assert_eq!(eight.take(a), Some(1));
        assert_eq!(eight.take(a), None, "taken twice");
        assert!(eight.is_empty());

        let mut ten = TagTable::new(TagWidth::Ten);
        let b = ten.insert(2).unwrap();
        assert_eq!(b, tag(0x100));
        // The completer dropped T9/T8: Tag[9:8] = 00b is kept out.
        assert_eq!(ten.take(tag(0x00)), None);
        assert_eq!(ten.get(b), Some(&2));
        let mut five = TagTable::<u8>::new(TagWidth::Five);
        five.insert(0).unwrap();
        assert_eq!(five.get(tag(32)), None);
    }

    #[test]
    fn take_where_frees_in_tag_order_what_it_selects() {
        let mut t = TagTable::new(TagWidth::Eight);
        // Deadlines out of tag order.
        for d in [50, 10, 40, 99, 20] {
            t.insert(d).unwrap();
        }
        let expired: Vec<(u16, i32)> = t
            .take_where(|&d| d <= 40)
            .map(|(tag, d)| (tag.value(), d))
            .collect();
        assert_eq!(expired, [(1, 10), (2, 40), (4, 20)]);
        let left: Vec<(u16, i32)> = t.iter().map(|(tag, &d)| (tag.value(), d)).collect();
        assert_eq!(left, [(0, 50), (3, 99)]);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn take_where_dropped_early_leaves_the_rest() {
        let mut t = TagTable::new(TagWidth::Eight);
        for d in 0..6 {
            t.insert(d).unwrap();
        }
        let first = t.take_where(|d| d % 2 == 0).next();
        assert_eq!(first, Some((tag(0), 0)));
        assert_eq!(t.len(), 5);
        assert_eq!(t.get(tag(2)), Some(&2));
        assert_eq!(t.take_where(|d| d % 2 == 0).count(), 2);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn clear_frees_every_tag() {
        let mut t = TagTable::new(TagWidth::Five);
        for i in 0..32 {
            t.insert(i).unwrap();
        }
        t.clear();
        assert!(t.is_empty());
        assert_eq!(t.iter().count(), 0);
        assert_eq!(t.take(tag(3)), None);
        // Rotation goes on from where it was.
        assert_eq!(t.insert(0), Ok(tag(0)));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert,
        Take(u16),
        Expire(u8),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => Just(Op::Insert),
            4 => (0u16..=Tag::MAX).prop_map(Op::Take),
            1 => any::<u8>().prop_map(Op::Expire),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        /// Against a map of tag to entry: every tag given out is in the width, not
        /// outstanding already, and the first free one after the last given; entries
        /// come back with their tag once; the count stays true.
        #[test]
        fn behaves_like_a_map_of_outstanding_tags(
            width in prop_oneof![Just(TagWidth::Five), Just(TagWidth::Eight), Just(TagWidth::Ten)],
            ops in proptest::collection::vec(op(), 0..600),
        ) {
            let mut t = TagTable::new(width);
            let mut model: HashMap<u16, u64> = HashMap::new();
            let range = width.tags();
            let n = range.len() as u16;
            let mut last: Option<u16> = None;
            for (k, op) in ops.into_iter().enumerate() {
                let k = k as u64;
                match op {
                    Op::Insert => match t.insert(k) {
                        Ok(tag) => {
                            let v = tag.value();
                            prop_assert!(range.contains(&v));
                            prop_assert!(!model.contains_key(&v));
                            // Rotation: no free tag between the last one and this one.
                            let start = last.map_or(range.start, |l| range.start + (l - range.start + 1) % n);
                            let mut s = start;
                            while s != v {
                                prop_assert!(model.contains_key(&s), "tag {} was free", s);
                                s = range.start + (s - range.start + 1) % n;
                            }
                            model.insert(v, k);
                            last = Some(v);
                        }
                        Err(e) => {
                            prop_assert_eq!(model.len(), range.len());
                            prop_assert_eq!(e.capacity, range.len());
                        }
                    },
                    Op::Take(v) => prop_assert_eq!(t.take(tag(v)), model.remove(&v)),
                    Op::Expire(m) => {
                        let taken: Vec<(u16, u64)> = t
                            .take_where(|&e| e % 256 <= m as u64)
                            .map(|(tag, e)| (tag.value(), e))
                            .collect();
                        let mut expected: Vec<(u16, u64)> = model
                            .iter()
                            .filter(|(_, &e)| e % 256 <= m as u64)
                            .map(|(&v, &e)| (v, e))
                            .collect();
                        expected.sort();
                        prop_assert_eq!(&taken, &expected);
                        for (v, _) in taken {
                            model.remove(&v);
                        }
                    }
                    Op::Clear => {
                        t.clear();
                        model.clear();
                    }
                }
                prop_assert_eq!(t.len(), model.len());
            }
            let mut expected: Vec<(u16, u64)> = model.into_iter().collect();
            expected.sort();
            let left: Vec<(u16, u64)> = t.iter().map(|(tag, &e)| (tag.value(), e)).collect();
            prop_assert_eq!(left, expected);
        }
    }
}
