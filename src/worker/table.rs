//! The connection table: slab slots (a slot's index is its epoll token), the activity list
//! and the run queue. Generic over the socket handle `S` (an `OwnedFd` in the worker, a fake
//! socket's id in the simulator), so this logic runs without fds.
//!
//! Invariants, kept by the methods (fields are private):
//! - the activity list holds exactly the live slots, least recently active first, ordered by
//!   [`Conn::last_active`]; touching moves a slot to the tail only when its tick changed, so the
//!   cost is O(1) and usually nothing; expiry pops from the head (never a scan);
//! - a slot is in the run queue at most once (`queued`);
//! - a slot closed during a batch of events is reused only after the batch ([`Table::end_batch`]),
//!   so a stale event for it cannot reach a new connection.

use crate::conn::{Conn, Readiness, Tick};

const NIL: u32 = u32::MAX;

/// One live connection: its socket, its state machine, its list links.
#[derive(Debug)]
pub struct Slot<S> {
    sock: S,
    conn: Conn,
    prev: u32,
    next: u32,
    queued: bool,
    stall: Stall,
}

/// A slot's stall check (see [`crate::conn::STALL_TICKS`]), kept in the slot's padding so that
/// neither the connection nor the slot grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stall {
    /// Not held back by the bulk rule, or not since the last check.
    #[default]
    None,
    /// Held back by the bulk rule: a check is in the worker's stall heap.
    Armed,
    /// The client stopped taking its echo: the stream reads on up to `max_pending` until its
    /// pending output is all sent.
    Stalled,
}

#[derive(Debug)]
pub struct Table<S> {
    slots: Vec<Option<Slot<S>>>,
    free: Vec<u32>,
    /// Closed this batch: reused only after it.
    closed: Vec<u32>,
    live: usize,
    head: u32,
    tail: u32,
    run: Vec<u32>,
}

impl<S> Default for Table<S> {
    fn default() -> Self {
        Table {
            slots: Vec::new(),
            free: Vec::new(),
            closed: Vec::new(),
            live: 0,
            head: NIL,
            tail: NIL,
            run: Vec::new(),
        }
    }
}

impl<S> Table<S> {
    /// Open connections.
    pub fn live(&self) -> usize {
        self.live
    }

    /// The index the next [`Table::insert`] will use (to register the socket under it first).
    pub fn next_index(&mut self) -> u32 {
        if let Some(&i) = self.free.last() {
            return i;
        }
        self.slots.push(None);
        let i = (self.slots.len() - 1) as u32;
        self.free.push(i);
        i
    }

    /// Stores a new connection in the slot [`Table::next_index`] returned, as the most recently
    /// active.
    pub fn insert(&mut self, sock: S, conn: Conn) -> u32 {
        let i = self.next_index();
        self.free.pop();
        self.slots[i as usize] = Some(Slot {
            sock,
            conn,
            prev: NIL,
            next: NIL,
            queued: false,
            stall: Stall::None,
        });
        self.live += 1;
        self.link_tail(i);
        i
    }

    /// Takes a connection out. Its slot is reused after this batch.
    pub fn remove(&mut self, i: u32) -> Option<(S, Conn)> {
        self.slots.get(i as usize)?.as_ref()?;
        self.unlink(i);
        let slot = self.slots[i as usize].take().expect("checked above");
        self.live -= 1;
        self.closed.push(i);
        Some((slot.sock, slot.conn))
    }

    /// Ends a batch of events: slots closed in it become reusable.
    pub fn end_batch(&mut self) {
        self.free.append(&mut self.closed);
    }

    fn slot(&self, i: u32) -> &Slot<S> {
        self.slots[i as usize].as_ref().expect("a live slot")
    }

    fn slot_mut(&mut self, i: u32) -> &mut Slot<S> {
        self.slots[i as usize].as_mut().expect("a live slot")
    }

    pub fn get(&self, i: u32) -> Option<(&S, &Conn)> {
        let s = self.slots.get(i as usize)?.as_ref()?;
        Some((&s.sock, &s.conn))
    }

    pub fn get_mut(&mut self, i: u32) -> Option<(&S, &mut Conn)> {
        let s = self.slots.get_mut(i as usize)?.as_mut()?;
        Some((&s.sock, &mut s.conn))
    }

    /// Slot `i`'s stall check ([`Stall::None`] for a free slot).
    pub fn stall(&self, i: u32) -> Stall {
        self.slots
            .get(i as usize)
            .and_then(Option::as_ref)
            .map_or(Stall::None, |s| s.stall)
    }

    pub fn set_stall(&mut self, i: u32, stall: Stall) {
        if let Some(s) = self.slots.get_mut(i as usize).and_then(Option::as_mut) {
            s.stall = stall;
        }
    }

    /// Records readiness for slot `i` and queues it for a turn (if it is still open).
    pub fn ready(&mut self, i: u32, r: Readiness) {
        let Some(s) = self.slots.get_mut(i as usize).and_then(Option::as_mut) else {
            return; // closed earlier in this batch
        };
        s.conn.on_readiness(r);
        if !s.queued {
            s.queued = true;
            self.run.push(i);
        }
    }

    /// Queues slot `i` for another turn after the ones already queued.
    pub fn requeue(&mut self, i: u32) {
        if let Some(s) = self.slots.get_mut(i as usize).and_then(Option::as_mut)
            && !s.queued
        {
            s.queued = true;
            self.run.push(i);
        }
    }

    pub fn has_queued(&self) -> bool {
        !self.run.is_empty()
    }

    /// Takes the run queue (into `into`, which must be empty): each slot's turn, in order.
    /// Slots queued during these turns go into the next queue.
    pub fn take_run_queue(&mut self, into: &mut Vec<u32>) {
        debug_assert!(into.is_empty());
        std::mem::swap(into, &mut self.run);
        for &i in into.iter() {
            if let Some(s) = self.slots.get_mut(i as usize).and_then(Option::as_mut) {
                s.queued = false;
            }
        }
    }

    /// Call after a turn: if the connection's last-activity tick changed, it moves to the tail.
    pub fn touch(&mut self, i: u32, before: Tick) {
        let Some(s) = self.slots.get(i as usize).and_then(Option::as_ref) else {
            return;
        };
        if s.conn.last_active() != before && self.tail != i {
            self.unlink(i);
            self.link_tail(i);
        }
    }

    /// The least recently active connection and its last-activity tick.
    pub fn oldest(&self) -> Option<(u32, Tick)> {
        (self.head != NIL).then(|| (self.head, self.slot(self.head).conn.last_active()))
    }

    /// Live slots in activity order, least recently active first.
    pub fn by_activity(&self) -> ActivityIter<'_, S> {
        ActivityIter {
            table: self,
            at: self.head,
        }
    }

    /// Every live slot index, in slab order.
    pub fn indices(&self) -> Vec<u32> {
        (0..self.slots.len() as u32)
            .filter(|&i| self.slots[i as usize].is_some())
            .collect()
    }

    fn link_tail(&mut self, i: u32) {
        let tail = self.tail;
        {
            let s = self.slot_mut(i);
            s.prev = tail;
            s.next = NIL;
        }
        if tail == NIL {
            self.head = i;
        } else {
            self.slot_mut(tail).next = i;
        }
        self.tail = i;
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = self.slot_mut(i);
            let links = (s.prev, s.next);
            s.prev = NIL;
            s.next = NIL;
            links
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.slot_mut(prev).next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slot_mut(next).prev = prev;
        }
    }

    /// Checks every invariant (tests and the simulator call it after every step).
    pub fn check(&self) -> Result<(), String> {
        let mut seen = 0;
        let mut at = self.head;
        let mut prev = NIL;
        let mut last = None;
        while at != NIL {
            let s = self
                .slots
                .get(at as usize)
                .and_then(Option::as_ref)
                .ok_or_else(|| format!("activity list points at free slot {at}"))?;
            if s.prev != prev {
                return Err(format!("slot {at}: prev link {} not {prev}", s.prev));
            }
            let t = s.conn.last_active();
            if last.is_some_and(|l| t < l) {
                return Err(format!("activity list out of order at slot {at}"));
            }
            last = Some(t);
            seen += 1;
            if seen > self.live {
                return Err("activity list longer than the live count (a cycle?)".into());
            }
            prev = at;
            at = s.next;
        }
        if prev != self.tail {
            return Err("tail is not the list's last slot".into());
        }
        let live = self.slots.iter().filter(|s| s.is_some()).count();
        if seen != live || live != self.live {
            return Err(format!(
                "{seen} listed, {live} live slots, live count {}",
                self.live
            ));
        }
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(s) = s {
                let n = self.run.iter().filter(|&&r| r as usize == i).count();
                if n != usize::from(s.queued) {
                    return Err(format!(
                        "slot {i}: queued={} but {n} time(s) in the run queue",
                        s.queued
                    ));
                }
            }
        }
        Ok(())
    }
}

/// See [`Table::by_activity`].
pub struct ActivityIter<'a, S> {
    table: &'a Table<S>,
    at: u32,
}

impl<'a, S> Iterator for ActivityIter<'a, S> {
    type Item = (u32, &'a Conn);
    fn next(&mut self) -> Option<Self::Item> {
        if self.at == NIL {
            return None;
        }
        let i = self.at;
        let s = self.table.slot(i);
        self.at = s.next;
        Some((i, &s.conn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(t: &Table<u32>) -> Vec<u32> {
        t.by_activity().map(|(i, _)| i).collect()
    }

    #[test]
    fn an_idle_connection_slot_is_small() {
        // The README promises a 56-byte slot: no per-connection read buffer, no allocation.
        assert_eq!(
            std::mem::size_of::<Option<Slot<std::os::fd::OwnedFd>>>(),
            56
        );
        assert_eq!(std::mem::size_of::<Conn>(), 40);
    }

    #[test]
    fn touch_moves_to_tail_and_expiry_pops_oldest() {
        let mut t: Table<u32> = Table::default();
        for i in 0..4 {
            assert_eq!(t.insert(i, Conn::new(10)), i);
        }
        assert_eq!(order(&t), [0, 1, 2, 3]);
        t.touch(0, 10); // same tick: no move
        assert_eq!(order(&t), [0, 1, 2, 3]);
        // A turn that moved bytes at tick 11.
        let mut turn = crate::conn::Turn::new(
            &crate::conn::Params {
                max_pending: 100,
                read_len: 10,
                budget: 10,
                splice: crate::conn::Splice::Off,
            },
            11,
        );
        let (_, c) = t.get_mut(0).unwrap();
        c.on_readiness(Readiness::READABLE);
        assert_eq!(c.poll(&mut turn), crate::conn::Action::Read);
        c.on_read(&mut turn, crate::conn::ReadResult::Data(b"hi"));
        t.touch(0, 10);
        assert_eq!(order(&t), [1, 2, 3, 0]);
        t.remove(2);
        assert_eq!(order(&t), [1, 3, 0]);
        assert_eq!(t.oldest(), Some((1, 10)));
        t.check().unwrap();
        t.remove(1);
        t.remove(0);
        assert_eq!(order(&t), [3]);
        t.remove(3);
        assert_eq!(t.oldest(), None);
        t.check().unwrap();
    }

    #[test]
    fn closed_slots_are_reused_only_after_the_batch() {
        let mut t: Table<u32> = Table::default();
        let a = t.insert(0, Conn::new(0));
        t.remove(a);
        let b = t.insert(1, Conn::new(0));
        assert_ne!(a, b, "reused within the batch");
        t.end_batch();
        assert_eq!(t.insert(2, Conn::new(0)), a);
        t.check().unwrap();
    }

    #[test]
    fn a_slot_is_queued_once() {
        let mut t: Table<u32> = Table::default();
        let a = t.insert(0, Conn::new(0));
        t.ready(a, Readiness::READABLE);
        t.ready(a, Readiness::WRITABLE);
        t.requeue(a);
        t.check().unwrap();
        let mut q = Vec::new();
        t.take_run_queue(&mut q);
        assert_eq!(q, [a]);
        t.check().unwrap();
    }
}
