// SPDX-License-Identifier: GPL-2.0

//! dm-repl's bookkeeping on the primary: the window of frames sent but not yet acknowledged,
//! and the map of regions that differ from the secondary (the dirty bitmap a resync reads).
//!
//! Storage comes from the caller (allocated once in the kernel constructor, `Vec` in host
//! tests); nothing here allocates.

use core::ops::DerefMut;

/// What a window entry stands for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    /// An ordered write (`WRITE`).
    #[default]
    Write,
    /// A resync write (`RESYNC_WRITE`) of dirty regions.
    Resync,
    /// A barrier (a flush from above, or the end of a resync).
    Barrier,
    /// Anything else that takes a sequence number (`PING`, `MARKER`).
    Other,
}

/// One frame sent on the current connection, by sequence number.
#[derive(Debug, Default)]
pub struct Entry<T> {
    /// Its sequence number.
    pub seq: u64,
    /// What it is.
    pub kind: Kind,
    /// First sector written (writes and resync writes).
    pub sector: u64,
    /// Sectors written.
    pub sectors: u32,
    /// When it was sent (milliseconds, caller's clock), for the replication lag.
    pub sent_ms: u64,
    /// The secondary acknowledged it.
    pub acked: bool,
    /// The local part (the write to our own device) finished, or there is none.
    pub local_done: bool,
    /// The network part the protocol waits for is done (sent for `async`, acknowledged for
    /// `sync`): the bio may complete once `local_done` too.
    pub net_done: bool,
    /// The bio, parked here when its local write finished before its network part.
    pub held: Option<T>,
}

/// The frames of one connection in sequence order, from the oldest not yet retired.
///
/// An entry is retired when it is acknowledged and its local write is done, so the window holds
/// exactly what a disconnection would leave unconfirmed at the secondary.
pub struct Window<T, S: DerefMut<Target = [Entry<T>]>> {
    slots: S,
    head: usize,
    len: usize,
    head_seq: u64,
    bytes: u64,
}

impl<T, S: DerefMut<Target = [Entry<T>]>> Window<T, S> {
    /// An empty window over `slots` (its capacity), whose first frame will be `first_seq`.
    pub fn new(slots: S, first_seq: u64) -> Self {
        Self { slots, head: 0, len: 0, head_seq: first_seq, bytes: 0 }
    }

    /// `i` modulo the capacity (no division by a zero capacity: an empty ring stays empty).
    fn wrap(&self, i: usize) -> usize {
        i.checked_rem(self.slots.len()).unwrap_or(0)
    }

    /// Capacity in frames.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Frames in the window.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Data bytes of the writes in the window.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The sequence number the next frame must have.
    pub fn next_seq(&self) -> u64 {
        self.head_seq.wrapping_add(self.len as u64)
    }

    /// Empties the window for a new connection whose first counted frame is `first_seq`.
    /// Entries must have been taken out with [`Window::drain`] first.
    pub fn reset(&mut self, first_seq: u64) {
        self.head = 0;
        self.len = 0;
        self.head_seq = first_seq;
        self.bytes = 0;
    }

    /// Whether another frame of `bytes` data bytes fits: a free slot, and the data below
    /// `max_bytes` (a single frame is always allowed into an empty window).
    pub fn fits(&self, bytes: u64, max_bytes: u64) -> bool {
        self.len < self.slots.len() && (self.len == 0 || self.bytes + bytes <= max_bytes)
    }

    /// Appends the next frame. Its `seq` must be [`Window::next_seq`]; `false` if the window
    /// is full or the sequence number is not the next one (nothing changes then).
    pub fn push(&mut self, e: Entry<T>) -> bool {
        if self.len >= self.slots.len() || e.seq != self.next_seq() {
            return false;
        }
        let at = self.wrap(self.head + self.len);
        self.bytes += u64::from(e.sectors) * 512;
        if let Some(s) = self.slots.get_mut(at) {
            *s = e;
            self.len += 1;
            true
        } else {
            false
        }
    }

    /// The entry of frame `seq`, if it is in the window.
    pub fn get_mut(&mut self, seq: u64) -> Option<&mut Entry<T>> {
        let off = seq.wrapping_sub(self.head_seq);
        if off >= self.len as u64 {
            return None;
        }
        let at = self.wrap(self.head + off as usize);
        self.slots.get_mut(at)
    }

    /// The oldest entry.
    pub fn front(&self) -> Option<&Entry<T>> {
        if self.len == 0 {
            return None;
        }
        self.slots.get(self.head)
    }

    /// Marks every frame up to `seq` acknowledged (and, with `sync`, network-done), handing
    /// each bio that was waiting for it to `done`. An acknowledgement of a frame not sent yet
    /// is refused (`false`) and changes nothing.
    pub fn ack(&mut self, seq: u64, sync: bool, mut done: impl FnMut(T)) -> bool {
        if seq < self.head_seq {
            // Everything up to it is retired already: a duplicate.
            return true;
        }
        let off = seq - self.head_seq;
        if off >= self.len as u64 {
            // Not sent yet.
            return false;
        }
        for i in 0..=off as usize {
            let at = self.wrap(self.head + i);
            if let Some(e) = self.slots.get_mut(at) {
                e.acked = true;
                if sync {
                    e.net_done = true;
                }
                if e.net_done && e.local_done {
                    if let Some(t) = e.held.take() {
                        done(t);
                    }
                }
            }
        }
        true
    }

    /// Retires acknowledged entries whose local write is done from the front; calls `f` with
    /// each (the caller clears dirty bits of acknowledged resync writes).
    pub fn retire(&mut self, mut f: impl FnMut(&Entry<T>)) {
        while self.len > 0 {
            let Some(e) = self.slots.get_mut(self.head) else { return };
            if !(e.acked && e.local_done && e.held.is_none()) {
                return;
            }
            f(e);
            self.bytes -= u64::from(e.sectors) * 512;
            *e = Entry::default_of();
            self.head = self.wrap(self.head + 1);
            self.head_seq = self.head_seq.wrapping_add(1);
            self.len -= 1;
        }
    }

    /// Visits every entry, oldest first.
    pub fn for_each(&self, mut f: impl FnMut(&Entry<T>)) {
        for i in 0..self.len {
            if let Some(e) = self.slots.get(self.wrap(self.head + i)) {
                f(e);
            }
        }
    }

    /// Visits the entries at positions `from..from + n` counted from the oldest (fewer at the
    /// end of the window); returns how many it visited.
    pub fn for_each_range(&self, from: usize, n: usize, mut f: impl FnMut(&Entry<T>)) -> usize {
        let end = from.saturating_add(n).min(self.len);
        for i in from..end {
            if let Some(e) = self.slots.get(self.wrap(self.head + i)) {
                f(e);
            }
        }
        end.saturating_sub(from)
    }

    /// Takes every entry out, oldest first (a disconnection), leaving the window empty with
    /// the next sequence number unchanged.
    pub fn drain(&mut self, mut f: impl FnMut(Entry<T>)) {
        while self.len > 0 {
            if let Some(e) = self.slots.get_mut(self.head) {
                f(core::mem::replace(e, Entry::default_of()));
            }
            self.head = self.wrap(self.head + 1);
            self.head_seq = self.head_seq.wrapping_add(1);
            self.len -= 1;
        }
        self.bytes = 0;
    }
}

impl<T> Entry<T> {
    /// An empty entry (without requiring `T: Default`).
    pub fn default_of() -> Self {
        Self {
            seq: 0,
            kind: Kind::Write,
            sector: 0,
            sectors: 0,
            sent_ms: 0,
            acked: false,
            local_done: false,
            net_done: false,
            held: None,
        }
    }
}

/// Regions of the device that may differ from the secondary: one bit per region of
/// `1 << region_shift` sectors.
///
/// Every word is reached through one `Deref`/`DerefMut` of the storage (`get`/`get_mut` of one
/// index), never a slice-wide operation (`fill`, iterators, ranges): so a storage that counts its
/// dereferences counts the words an operation touches, which is how the tests of
/// `crate::replbook` bound the work done with interrupts off.
pub struct DirtyMap<W: DerefMut<Target = [u64]>> {
    words: W,
    regions: u64,
    region_shift: u32,
    count: u64,
}

impl<W: DerefMut<Target = [u64]>> DirtyMap<W> {
    /// Words needed for a device of `sectors` sectors.
    pub fn words_for(sectors: u64, region_shift: u32) -> usize {
        let regions = sectors.div_ceil(1u64 << region_shift);
        regions.div_ceil(64) as usize
    }

    /// A clean map over `words` (at least [`DirtyMap::words_for`] of them).
    pub fn new(mut words: W, sectors: u64, region_shift: u32) -> Option<Self> {
        if region_shift > 40 {
            return None;
        }
        let regions = sectors.div_ceil(1u64 << region_shift);
        let n = words.len();
        if n < regions.div_ceil(64) as usize {
            return None;
        }
        for i in 0..n {
            if let Some(w) = words.get_mut(i) {
                *w = 0;
            }
        }
        Some(Self { words, regions, region_shift, count: 0 })
    }

    /// Sectors per region.
    pub fn region_sectors(&self) -> u64 {
        1u64 << self.region_shift
    }

    /// Sectors per region, as a power of two.
    pub fn region_shift(&self) -> u32 {
        self.region_shift
    }

    /// Regions in the map.
    pub fn regions(&self) -> u64 {
        self.regions
    }

    /// Dirty regions.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether region `r` is dirty.
    pub fn is_dirty(&self, r: u64) -> bool {
        r < self.regions && self.words.get((r / 64) as usize).is_some_and(|w| w & (1 << (r % 64)) != 0)
    }

    fn set(&mut self, r: u64, dirty: bool) {
        if r >= self.regions {
            return;
        }
        if let Some(w) = self.words.get_mut((r / 64) as usize) {
            let bit = 1u64 << (r % 64);
            if (*w & bit != 0) != dirty {
                *w ^= bit;
                if dirty {
                    self.count += 1;
                } else {
                    self.count -= 1;
                }
            }
        }
    }

    /// Marks every region touched by `sectors` sectors from `sector` dirty.
    pub fn mark(&mut self, sector: u64, sectors: u64) {
        if sectors == 0 {
            return;
        }
        let first = sector >> self.region_shift;
        let last = (sector + sectors - 1) >> self.region_shift;
        for r in first..=last.min(self.regions.saturating_sub(1)) {
            self.set(r, true);
        }
    }

    /// Word `i` of the bitmap (bit `r % 64` of word `r / 64` is region `r`).
    pub fn word(&self, i: usize) -> u64 {
        self.words.get(i).copied().unwrap_or(0)
    }

    /// Number of words.
    pub fn word_count(&self) -> usize {
        self.regions.div_ceil(64) as usize
    }

    /// The bits of word `i` that stand for regions (all of them but in the last word; none past it).
    fn valid_bits(&self, i: usize) -> u64 {
        let base = (i as u64).saturating_mul(64);
        if base >= self.regions {
            0
        } else if self.regions - base >= 64 {
            !0
        } else {
            (1u64 << (self.regions - base)) - 1
        }
    }

    /// ORs `w` into word `i` (bits beyond the last region are ignored).
    pub fn merge_word(&mut self, i: usize, w: u64) {
        let m = w & self.valid_bits(i);
        if m == 0 {
            return;
        }
        if let Some(x) = self.words.get_mut(i) {
            self.count += u64::from((m & !*x).count_ones());
            *x |= m;
        }
    }

    /// Marks every region dirty (a full resync). Word by word: O(regions / 64).
    pub fn mark_all(&mut self) {
        self.mark_words(0, self.word_count());
    }

    /// Marks every region of words `from..from + n` dirty (in pieces, so that a caller holding
    /// a lock with interrupts off can release it between them).
    pub fn mark_words(&mut self, from: usize, n: usize) {
        for i in from..from.saturating_add(n).min(self.word_count()) {
            let full = self.valid_bits(i);
            if let Some(w) = self.words.get_mut(i) {
                self.count += u64::from((full & !*w).count_ones());
                *w = full;
            }
        }
    }

    /// Clears every region. O(words) unless the map is clean: a caller with interrupts off uses
    /// [`DirtyMap::clear_words`] in pieces instead.
    pub fn clear_all(&mut self) {
        if self.count == 0 {
            return;
        }
        for i in 0..self.word_count() {
            if let Some(w) = self.words.get_mut(i) {
                *w = 0;
            }
        }
        self.count = 0;
    }

    /// Clears the regions of words `from..from + n` (a piece of [`DirtyMap::clear_all`]).
    pub fn clear_words(&mut self, from: usize, n: usize) {
        let end = from.saturating_add(n).min(self.word_count());
        for i in from..end {
            if let Some(w) = self.words.get_mut(i) {
                self.count = self.count.saturating_sub(u64::from(w.count_ones()));
                *w = 0;
            }
        }
    }

    /// Moves the regions of words `from..from + n` of `other` into this map (marked here,
    /// cleared there): a piece of a merge followed by a clear of `other`.
    pub fn take_words<V: DerefMut<Target = [u64]>>(&mut self, other: &mut DirtyMap<V>, from: usize, n: usize) {
        let end = from.saturating_add(n).min(self.word_count()).min(other.word_count());
        for i in from..end {
            let w = other.word(i);
            if w != 0 {
                self.merge_word(i, w);
                other.clear_words(i, 1);
            }
        }
    }

    /// Marks dirty every region dirty in `other` (same geometry; word by word).
    pub fn merge<V: DerefMut<Target = [u64]>>(&mut self, other: &DirtyMap<V>) {
        if other.count == 0 {
            return;
        }
        for i in 0..self.word_count().min(other.word_count()) {
            let w = other.word(i);
            if w != 0 {
                self.merge_word(i, w);
            }
        }
    }

    /// Clears regions `first..first + n`.
    pub fn clear(&mut self, first: u64, n: u64) {
        for r in first..first.saturating_add(n).min(self.regions) {
            self.set(r, false);
        }
    }

    /// The first run of dirty regions at or after region `from` (wrapping around to 0), at
    /// most `max` regions long: `(first, n)`. Scans the whole map if it must (see
    /// [`DirtyMap::find_run`] for a bounded search).
    pub fn next_run(&self, from: u64, max: u64) -> Option<(u64, u64)> {
        if self.count == 0 || max == 0 {
            return None;
        }
        let start = if from < self.regions { from } else { 0 };
        [start, 0].into_iter().find_map(|f| match self.find_run(f, max, usize::MAX) {
            RunSearch::Found(first, n) => Some((first, n)),
            _ => None,
        })
    }

    /// A bounded search for the first run of dirty regions at or after region `from` (no
    /// wrapping), at most `max` regions long, looking at no more than `budget` 64-region words
    /// (so a caller holding a lock with interrupts off can drop it between steps and go on from
    /// [`RunSearch::From`]).
    pub fn find_run(&self, from: u64, max: u64, budget: usize) -> RunSearch {
        if from >= self.regions || max == 0 {
            return RunSearch::End;
        }
        let mut wi = (from / 64) as usize;
        let mut mask = !0u64 << (from % 64);
        let mut looked = 0;
        while let Some(&w) = self.words.get(wi) {
            if looked >= budget {
                return RunSearch::From(wi as u64 * 64);
            }
            looked += 1;
            let m = w & mask;
            if m != 0 {
                let first = wi as u64 * 64 + u64::from(m.trailing_zeros());
                if first >= self.regions {
                    break;
                }
                let mut n = 1;
                while n < max && first + n < self.regions && self.is_dirty(first + n) {
                    n += 1;
                }
                return RunSearch::Found(first, n);
            }
            wi += 1;
            mask = !0;
        }
        RunSearch::End
    }
}

/// What a bounded search ([`DirtyMap::find_run`]) found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunSearch {
    /// A run: first region, length.
    Found(u64, u64),
    /// Nothing up to the end of the map.
    End,
    /// The budget ran out: go on from this region.
    From(u64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    fn win(cap: usize, first: u64) -> Window<u32, Vec<Entry<u32>>> {
        Window::new((0..cap).map(|_| Entry::default_of()).collect(), first)
    }

    fn write(seq: u64, sectors: u32) -> Entry<u32> {
        Entry { seq, sectors, ..Entry::default_of() }
    }

    #[test]
    fn window_completes_bios_by_protocol_and_retires_in_order() {
        let mut w = win(4, 2);
        assert!(w.push(write(2, 8)));
        assert!(!w.push(write(4, 8)), "sequence gap refused");
        assert!(w.push(write(3, 8)));
        assert_eq!(w.bytes(), 8192);
        // Frame 2's local write finishes first; sync mode parks the bio until the ack.
        let e = w.get_mut(2).unwrap();
        e.local_done = true;
        e.held = Some(20);
        let mut done = vec![];
        assert!(w.ack(2, true, |t| done.push(t)));
        assert_eq!(done, vec![20]);
        w.retire(|_| {});
        assert_eq!((w.len(), w.next_seq(), w.bytes()), (1, 4, 4096));
        // Frame 3 acked before its local write is done: it stays.
        assert!(w.ack(3, true, |t| done.push(t)));
        w.retire(|_| {});
        assert_eq!(w.len(), 1);
        w.get_mut(3).unwrap().local_done = true;
        w.retire(|_| {});
        assert!(w.is_empty());
        assert!(w.ack(3, true, |_| panic!("duplicate ack completes nothing")), "duplicate ack is harmless");
        assert!(!w.ack(9, true, |_| {}), "ack of an unsent frame refused");
    }

    #[test]
    fn a_refused_ack_changes_nothing() {
        // The kernel's Primary::acked refuses an ACK when `ack` returns false (or on its flags,
        // checked before `ack`): the frames it names must then stay as they were, not acknowledged
        // and their bios still held (dm-repl once dropped such bios: a sync write failed with EIO).
        let mut w = win(4, 1);
        assert!(w.push(write(1, 8)) && w.push(write(2, 8)));
        for seq in [1, 2] {
            let e = w.get_mut(seq).unwrap();
            e.local_done = true;
            e.held = Some(seq as u32);
        }
        assert!(!w.ack(3, true, |_| panic!("a refused ack completes nothing")));
        assert!(!w.ack(u64::MAX, false, |_| panic!("a refused ack completes nothing")));
        w.retire(|_| panic!("a refused ack retires nothing"));
        assert_eq!(w.len(), 2);
        assert!(w.get_mut(1).is_some_and(|e| !e.acked && e.held == Some(1)));
        assert!(w.get_mut(2).is_some_and(|e| !e.acked && !e.net_done && e.held == Some(2)));
        let mut done = vec![];
        assert!(w.ack(2, true, |t| done.push(t)));
        assert_eq!(done, vec![1, 2], "the same frames acknowledged later complete once");
    }

    #[test]
    fn window_limits_frames_and_bytes_and_drains() {
        let mut w = win(3, 0);
        assert!(w.fits(1 << 20, 4096), "one frame always fits an empty window");
        assert!(w.push(write(0, 8)));
        assert!(!w.fits(4096, 4096));
        assert!(w.fits(4096, 8192));
        assert!(w.push(write(1, 8)) && w.push(write(2, 8)));
        assert!(!w.fits(0, u64::MAX) && !w.push(write(3, 8)));
        let mut seqs = vec![];
        w.drain(|e| seqs.push(e.seq));
        assert_eq!(seqs, vec![0, 1, 2]);
        assert_eq!((w.len(), w.bytes(), w.next_seq()), (0, 0, 3));
        w.reset(7);
        assert!(w.push(write(7, 1)) && w.get_mut(7).is_some() && w.get_mut(6).is_none());
    }

    #[test]
    fn dirty_map_marks_runs_and_clears() {
        let mut m = DirtyMap::new(vec![0u64; 2], 100 * 128, 7).unwrap();
        assert_eq!(m.regions(), 100);
        m.mark(127, 2); // spans regions 0 and 1
        m.mark(99 * 128, 1000); // past the end: clipped
        assert_eq!(m.count(), 3);
        assert_eq!(m.next_run(0, 8), Some((0, 2)));
        assert_eq!(m.next_run(2, 8), Some((99, 1)));
        assert_eq!(m.next_run(0, 1), Some((0, 1)));
        m.clear(0, 2);
        assert_eq!(m.next_run(5, 8), Some((99, 1)));
        assert_eq!(m.next_run(100, 8), Some((99, 1)), "wraps around");
        assert_eq!(m.find_run(2, 8, 1), RunSearch::From(64), "one word looked at");
        assert_eq!(m.find_run(64, 8, 1), RunSearch::Found(99, 1));
        assert_eq!(m.find_run(100, 8, 1), RunSearch::End);
        m.clear(99, 5);
        assert_eq!((m.count(), m.next_run(0, 8)), (0, None));
        m.mark_all();
        assert_eq!((m.count(), m.next_run(0, 1000)), (100, Some((0, 100))));
        m.clear_all();
        m.mark(70 * 128, 1);
        m.mark_words(0, 1);
        assert_eq!(m.count(), 65, "word 0 and the region already marked in word 1");
        m.mark_words(1, 5);
        assert_eq!(m.count(), 100, "no region past the last");
        assert_eq!((m.word(0), m.word(1)), (u64::MAX, (1 << 36) - 1), "bits past the end stay clear");
        let mut o = DirtyMap::new(vec![0u64; 2], 100 * 128, 7).unwrap();
        o.mark(64 * 128, 1);
        o.mark(5 * 128, 1);
        m.clear_all();
        assert_eq!(m.count(), 0);
        m.mark(5 * 128, 1);
        m.merge(&o);
        assert_eq!((m.count(), m.is_dirty(5), m.is_dirty(64)), (2, true, true));
        assert!(DirtyMap::new(vec![0u64; 1], 100 * 128, 7).is_none(), "too few words refused");
        let mut m2 = DirtyMap::new(vec![0u64; 2], 100 * 128, 7).unwrap();
        m2.merge_word(1, u64::MAX);
        assert_eq!(m2.count(), 36, "bits past region 99 ignored");
        assert_eq!((m2.word(1), m2.word_count()), ((1 << 36) - 1, 2));
    }

    proptest! {
        #[test]
        fn dirty_map_matches_a_set(ops in proptest::collection::vec((0u64..3000, 1u64..300, any::<bool>()), 1..60)) {
            let sectors = 2900;
            let mut m = DirtyMap::new(vec![0u64; DirtyMap::<Vec<u64>>::words_for(sectors, 4)], sectors, 4).unwrap();
            let mut model = std::collections::BTreeSet::new();
            for (s, n, mark) in ops {
                if mark {
                    m.mark(s, n);
                    for r in (s >> 4)..=((s + n - 1) >> 4) {
                        if r < m.regions() { model.insert(r); }
                    }
                } else {
                    m.clear(s >> 4, n >> 4);
                    for r in (s >> 4)..((s >> 4) + (n >> 4)) { model.remove(&r); }
                }
                prop_assert_eq!(m.count(), model.len() as u64);
            }
            let mut seen = Vec::new();
            let mut from = 0;
            while let Some((r, n)) = m.next_run(from, 7) {
                if seen.contains(&r) { break; }
                for i in r..r + n { seen.push(i); }
                from = r + n;
            }
            seen.sort();
            prop_assert_eq!(seen, model.into_iter().collect::<Vec<_>>());
        }
    }
    #[test]
    fn maps_clear_and_move_in_pieces() {
        let sectors = 1u64 << 20;
        let nw = DirtyMap::<Vec<u64>>::words_for(sectors, 7);
        let mut a = DirtyMap::new(vec![0u64; nw], sectors, 7).unwrap();
        let mut b = DirtyMap::new(vec![0u64; nw], sectors, 7).unwrap();
        for s in [0u64, 128, 40_000, 500_000, (1 << 20) - 1] {
            a.mark(s, 1);
        }
        b.mark(128, 256);
        assert_eq!((a.count(), b.count()), (5, 2));
        // A piece at a time, as a caller with interrupts off does.
        for from in (0..nw).step_by(3) {
            a.take_words(&mut b, from, 3);
        }
        assert_eq!((a.count(), b.count()), (6, 0));
        assert!(a.is_dirty(1) && a.is_dirty(2) && a.is_dirty(312));
        assert!((0..nw).all(|i| b.word(i) == 0));
        for from in (0..nw).step_by(5) {
            a.clear_words(from, 5);
        }
        assert_eq!(a.count(), 0);
        assert!((0..nw).all(|i| a.word(i) == 0));
        a.clear_words(nw, 10);
        a.take_words(&mut b, nw + 1, usize::MAX);
        assert_eq!(a.count(), 0);
    }

}
