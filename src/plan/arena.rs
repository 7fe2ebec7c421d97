//! Offsets for buffers with known use intervals: one block of memory in which
//! two buffers share bytes only if their intervals do not overlap.
//!
//! Greedy best fit: buffers taken in one order, each placed in the smallest
//! gap between the buffers already placed whose intervals overlap its own, or
//! on top of them when no gap fits. Three orders are tried — largest first
//! (ties by start), earliest start first, longest interval first — and the
//! smallest peak kept. The result is checked by [`Arena::check`]; its peak is
//! at least [`max_live`] (the most bytes in use at one event), the bound no
//! placement can beat.

use super::Interval;
use anyhow::{bail, Result};

/// An order in which [`Arena::pack`] places the buffers (ascending key).
type SortKey = fn(&Interval) -> (i64, i64);

/// Placement of a list of intervals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arena {
    /// Offset of each interval, in input order.
    pub offsets: Vec<u64>,
    /// Size of the block: the largest `offset + bytes`.
    pub peak: u64,
}

impl Arena {
    pub fn pack(items: &[Interval]) -> Arena {
        let by = |key: SortKey| {
            let mut order: Vec<usize> = (0..items.len()).collect();
            order.sort_by_key(|&i| key(&items[i]));
            Arena::pack_in(items, &order)
        };
        let orders: [SortKey; 3] = [
            |it| (-(it.bytes as i64), it.start as i64),
            |it| (it.start as i64, -(it.bytes as i64)),
            |it| (it.start as i64 - it.end as i64, -(it.bytes as i64)),
        ];
        orders
            .into_iter()
            .map(by)
            .min_by_key(|a| a.peak)
            .expect("three orders")
    }

    /// Greedy best fit in the given order.
    fn pack_in(items: &[Interval], order: &[usize]) -> Arena {
        let mut offsets = vec![0u64; items.len()];
        let mut placed: Vec<usize> = Vec::with_capacity(items.len());
        let mut peak = 0;
        for &i in order {
            let it = items[i];
            // Placed neighbours in time, by offset.
            let mut near: Vec<(u64, u64)> = placed
                .iter()
                .filter(|&&p| items[p].overlaps(&it))
                .map(|&p| (offsets[p], offsets[p] + items[p].bytes))
                .collect();
            near.sort_unstable();
            let mut best: Option<(u64, u64)> = None; // (waste, offset)
            let mut top = 0u64;
            for &(lo, hi) in &near {
                if lo > top && lo - top >= it.bytes {
                    let waste = lo - top - it.bytes;
                    if best.is_none_or(|(w, _)| waste < w) {
                        best = Some((waste, top));
                    }
                }
                top = top.max(hi);
            }
            let off = best.map_or(top, |(_, o)| o);
            offsets[i] = off;
            peak = peak.max(off + it.bytes);
            placed.push(i);
        }
        Arena { offsets, peak }
    }

    /// Errors if two intervals that overlap in time overlap in memory.
    pub fn check(&self, items: &[Interval]) -> Result<()> {
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by_key(|&i| items[i].start);
        for (n, &a) in order.iter().enumerate() {
            for &b in &order[n + 1..] {
                if items[b].start > items[a].end {
                    break;
                }
                let (ra, rb) = (
                    self.offsets[a]..self.offsets[a] + items[a].bytes,
                    self.offsets[b]..self.offsets[b] + items[b].bytes,
                );
                if ra.start < rb.end && rb.start < ra.end {
                    bail!(
                        "arena: buffers {a} {:?} at {ra:?} and {b} {:?} at {rb:?} are live together and overlap",
                        items[a],
                        items[b]
                    );
                }
            }
        }
        Ok(())
    }
}

/// The most bytes whose intervals contain one event.
pub fn max_live(items: &[Interval]) -> u64 {
    let mut edges: Vec<(usize, i8, u64)> = Vec::with_capacity(2 * items.len());
    for it in items {
        edges.push((it.start, 0, it.bytes)); // starts before ends at one event
        edges.push((it.end, 1, it.bytes));
    }
    edges.sort_unstable();
    let (mut live, mut peak) = (0u64, 0u64);
    for (_, kind, bytes) in edges {
        if kind == 0 {
            live += bytes;
            peak = peak.max(live);
        } else {
            live -= bytes;
        }
    }
    peak
}
