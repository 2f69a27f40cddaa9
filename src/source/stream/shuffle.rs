//! Shuffling without random access: the shard order is a permutation drawn from
//! `(seed, epoch)`, each rank reads every `world_size`-th shard of it, and a seeded shuffle
//! buffer mixes the samples of the shards it is reading.
//!
//! Everything here is a function of `(seed, epoch, rank)` and the shard list: the decode
//! workers never see the order being made, so their number cannot change it.
use crate::rng::Rng;

/// Random stream of the shard order (`rng::derive(seed, [SHARDS, epoch])`).
pub const SHARDS: u64 = 0x5348_5244;
/// Random stream of a rank's shuffle buffer (`rng::derive(seed, [BUFFER, epoch, rank])`).
pub const BUFFER: u64 = 0x4255_4646;

/// The order shards `0..n` are read in during `epoch`.
pub fn shard_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::derive(seed, &[SHARDS, epoch as u64]).shuffle(&mut order);
    order
}

/// Rank `rank`'s shards of `order`: positions `rank, rank + world_size, ...`.
///
/// ```
/// use saln::source::stream::shuffle::rank_shards;
/// assert_eq!(rank_shards(&[5, 3, 0, 1, 4, 2], 1, 4), vec![3, 2]);
/// assert_eq!(rank_shards(&[5, 3, 0, 1, 4, 2], 3, 4), vec![1]);
/// ```
pub fn rank_shards(order: &[usize], rank: usize, world_size: usize) -> Vec<usize> {
    order
        .iter()
        .skip(rank)
        .step_by(world_size.max(1))
        .copied()
        .collect()
}

/// A shuffle buffer of `capacity` items: once full, every push returns an item drawn
/// uniformly from the buffer. Capacity 0 or 1 passes items through in order.
pub struct ShuffleBuffer<T> {
    items: Vec<T>,
    capacity: usize,
    rng: Rng,
}

impl<T> ShuffleBuffer<T> {
    /// A buffer for `epoch` on `rank`, seeded from `seed`.
    pub fn new(capacity: usize, seed: u64, epoch: usize, rank: usize) -> Self {
        ShuffleBuffer {
            items: Vec::with_capacity(capacity.min(1 << 16)),
            capacity: capacity.max(1),
            rng: Rng::derive(seed, &[BUFFER, epoch as u64, rank as u64]),
        }
    }

    /// Adds `item`; returns one when the buffer is full.
    pub fn push(&mut self, item: T) -> Option<T> {
        self.items.push(item);
        if self.items.len() < self.capacity {
            return None;
        }
        Some(self.draw())
    }

    /// Takes out one of the remaining items (the input has ended).
    pub fn pop(&mut self) -> Option<T> {
        (!self.items.is_empty()).then(|| self.draw())
    }

    fn draw(&mut self) -> T {
        let i = self.rng.below(self.items.len() as u64) as usize;
        self.items.swap_remove(i)
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_permutes_and_is_seeded() {
        let run = |seed| {
            let mut b = ShuffleBuffer::new(8, seed, 0, 0);
            let mut out: Vec<u32> = (0..100).filter_map(|i| b.push(i)).collect();
            while let Some(x) = b.pop() {
                out.push(x);
            }
            out
        };
        let a = run(1);
        assert_eq!(a, run(1));
        assert_ne!(a, run(2));
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        let mut s = a.clone();
        s.sort_unstable();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        // An item leaves at most `capacity - 1` places... never before it entered.
        assert!(a
            .iter()
            .enumerate()
            .all(|(pos, &x)| (x as usize) <= pos + 7));
        let mut pass = ShuffleBuffer::new(0, 1, 0, 0);
        assert_eq!(pass.push(5), Some(5));
    }

    #[test]
    fn shard_orders_differ_by_epoch_and_ranks_partition_them() {
        assert_ne!(shard_order(50, 3, 0), shard_order(50, 3, 1));
        let order = shard_order(10, 3, 0);
        let mut all: Vec<usize> = (0..3).flat_map(|r| rank_shards(&order, r, 3)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }
}
