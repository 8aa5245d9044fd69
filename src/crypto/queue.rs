//! A bounded queue of jobs that serves its clients in turn.
//!
//! Each client (a client IP, for the service) has a queue of its own, and the
//! workers take one job from each waiting client in round-robin order. A
//! client that floods the queue therefore only lengthens its own wait: anyone
//! else's job waits behind at most one job per other waiting client. Two
//! bounds refuse work at once instead of letting it pile up: the total number
//! of waiting jobs, and the number one client may have waiting.

use std::collections::{HashMap, VecDeque};

use parking_lot::{Condvar, Mutex};

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The whole queue is full.
    Full,
    /// This client already has as many jobs waiting as it may.
    ClientFull,
    /// The queue no longer takes jobs.
    Closed,
}

pub struct FairQueue<K, J> {
    state: Mutex<State<K, J>>,
    ready: Condvar,
    capacity: usize,
    per_client: usize,
}

struct State<K, J> {
    waiting: HashMap<K, VecDeque<J>>,
    /// Clients with waiting jobs, in the order they get their next turn.
    turns: VecDeque<K>,
    len: usize,
    closed: bool,
}

impl<K: Clone + Eq + std::hash::Hash, J> FairQueue<K, J> {
    /// Room for `capacity` waiting jobs, at most `per_client` of one client.
    pub fn new(capacity: usize, per_client: usize) -> Self {
        Self {
            state: Mutex::new(State {
                waiting: HashMap::new(),
                turns: VecDeque::new(),
                len: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            capacity,
            per_client,
        }
    }

    /// The most jobs one client may have waiting.
    pub fn per_client(&self) -> usize {
        self.per_client
    }

    pub fn push(&self, client: K, job: J) -> Result<(), Refused> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(Refused::Closed);
        }
        if state.len >= self.capacity {
            return Err(Refused::Full);
        }
        let jobs = state.waiting.entry(client.clone()).or_default();
        if jobs.len() >= self.per_client {
            return Err(Refused::ClientFull);
        }
        jobs.push_back(job);
        if jobs.len() == 1 {
            state.turns.push_back(client);
        }
        state.len += 1;
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job in turn, waiting for one; `None` once the queue is closed.
    pub fn pop(&self) -> Option<J> {
        let mut state = self.state.lock();
        loop {
            if let Some(client) = state.turns.pop_front() {
                let jobs = state
                    .waiting
                    .get_mut(&client)
                    .expect("a client with a turn has waiting jobs");
                let job = jobs.pop_front().expect("a client with a turn has a job");
                if jobs.is_empty() {
                    state.waiting.remove(&client);
                } else {
                    state.turns.push_back(client);
                }
                state.len -= 1;
                return Some(job);
            }
            if state.closed {
                return None;
            }
            self.ready.wait(&mut state);
        }
    }

    /// Refuses new jobs and wakes every waiting worker once the queue is empty.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_served_in_turn_whatever_order_they_queued_in() {
        let q = FairQueue::new(100, 100);
        for i in 0..5 {
            q.push("flood", i).unwrap();
        }
        q.push("other", 100).unwrap();
        q.push("other", 101).unwrap();
        let order: Vec<_> = (0..7).map(|_| q.pop().unwrap()).collect();
        assert_eq!(order, [0, 100, 1, 101, 2, 3, 4]);
    }

    #[test]
    fn one_client_cannot_take_more_than_its_share_of_the_room() {
        let q = FairQueue::new(4, 2);
        q.push("a", 1).unwrap();
        q.push("a", 2).unwrap();
        assert_eq!(q.push("a", 3), Err(Refused::ClientFull));
        q.push("b", 4).unwrap();
        q.push("c", 5).unwrap();
        assert_eq!(q.push("d", 6), Err(Refused::Full));
        q.pop();
        assert_eq!(q.push("a", 7), Ok(()));
    }

    #[test]
    fn a_closed_queue_still_hands_out_what_it_holds_then_ends() {
        let q = FairQueue::new(4, 4);
        q.push("a", 1).unwrap();
        q.close();
        assert_eq!(q.push("a", 2), Err(Refused::Closed));
        assert_eq!(q.pop(), Some(1));
        assert_eq!(q.pop(), None);
    }
}
