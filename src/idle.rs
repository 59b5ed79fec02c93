//! The idle-timeout bookkeeping: an intrusive list of connections ordered by last activity.
//!
//! Touching a connection moves it to the tail, at most once per coarse second, so the cost is
//! O(1) per event and usually nothing. Expiry pops from the head while the head is too old,
//! so a tick costs O(expired), never a scan of every connection.

use crate::conn::Conn;

const NIL: u32 = u32::MAX;

/// Doubly linked list threaded through [`Conn::prev`] / [`Conn::next`] of slab entries.
#[derive(Debug)]
pub struct IdleList {
    head: u32,
    tail: u32,
}

impl Default for IdleList {
    fn default() -> Self {
        IdleList {
            head: NIL,
            tail: NIL,
        }
    }
}

fn conn(slab: &mut [Option<Conn>], i: u32) -> &mut Conn {
    slab[i as usize]
        .as_mut()
        .expect("idle list points at a live slot")
}

impl IdleList {
    /// Appends slot `i` (not yet in the list) as the most recently active.
    pub fn push(&mut self, slab: &mut [Option<Conn>], i: u32, now: u32) {
        let tail = self.tail;
        {
            let c = conn(slab, i);
            c.prev = tail;
            c.next = NIL;
            c.last_active = now;
        }
        if tail == NIL {
            self.head = i;
        } else {
            conn(slab, tail).next = i;
        }
        self.tail = i;
    }

    /// Takes slot `i` out of the list.
    pub fn remove(&mut self, slab: &mut [Option<Conn>], i: u32) {
        let (prev, next) = {
            let c = conn(slab, i);
            let links = (c.prev, c.next);
            c.prev = NIL;
            c.next = NIL;
            links
        };
        if prev == NIL {
            self.head = next;
        } else {
            conn(slab, prev).next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            conn(slab, next).prev = prev;
        }
    }

    /// Records traffic on slot `i` at coarse second `now`.
    #[inline]
    pub fn touch(&mut self, slab: &mut [Option<Conn>], i: u32, now: u32) {
        if conn(slab, i).last_active != now {
            self.remove(slab, i);
            self.push(slab, i, now);
        }
    }

    /// The least recently active slot and its last-activity second.
    pub fn oldest(&self, slab: &[Option<Conn>]) -> Option<(u32, u32)> {
        if self.head == NIL {
            return None;
        }
        let c = slab[self.head as usize].as_ref().expect("live head");
        Some((self.head, c.last_active))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    fn slab(n: usize) -> Vec<Option<Conn>> {
        (0..n)
            .map(|_| {
                let (r, _w): (OwnedFd, OwnedFd) = crate::sys::pipe().unwrap();
                Some(Conn::new(r))
            })
            .collect()
    }

    fn order(list: &IdleList, slab: &[Option<Conn>]) -> Vec<u32> {
        let mut out = vec![];
        let mut i = list.head;
        while i != NIL {
            out.push(i);
            i = slab[i as usize].as_ref().unwrap().next;
        }
        out
    }

    #[test]
    fn touch_moves_to_tail_and_expiry_pops_oldest() {
        let mut s = slab(4);
        let mut l = IdleList::default();
        for i in 0..4 {
            l.push(&mut s, i, 10);
        }
        assert_eq!(order(&l, &s), [0, 1, 2, 3]);
        l.touch(&mut s, 0, 10); // same second: no move
        assert_eq!(order(&l, &s), [0, 1, 2, 3]);
        l.touch(&mut s, 0, 11);
        assert_eq!(order(&l, &s), [1, 2, 3, 0]);
        l.remove(&mut s, 2);
        assert_eq!(order(&l, &s), [1, 3, 0]);
        assert_eq!(l.oldest(&s), Some((1, 10)));
        l.remove(&mut s, 1);
        l.remove(&mut s, 0);
        assert_eq!(order(&l, &s), [3]);
        l.remove(&mut s, 3);
        assert_eq!(l.oldest(&s), None);
    }
}
