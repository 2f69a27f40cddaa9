//! `source.repeat`: a redundant training set made from a real one, every learner sample
//! present `repeat` times, as web-scale data are (the same photograph crawled, re-encoded and
//! re-posted many times).
//!
//! Each copy is a sample of its own: it has its own id, so its own augmentation draw
//! (`(seed, epoch, id)`), and the epoch order scatters the copies over the super-batches. What
//! the copies share is the original's pixels and label. The question this variant answers
//! (docs/results/): does a selection policy keep fewer repeats than uniform sampling does, and
//! does it train better for it?
//!
//! Only the learner's share is repeated. The held-out share, on which the reference model
//! trains, and the test split stay as they were, so no copy of a learner sample leaks into
//! either. [`Repeated`] wraps the training source (indices `c * n + i` for copy `c` of sample
//! `i`, `n` the inner length) and [`super::Split::for_source`] adds the copies of the learner
//! share to the split.
use std::sync::Arc;

use super::{Sample, Source, SourceShape};
use crate::error::Result;
use crate::pixel::Size;

/// Bit position of the copy number in a repeated sample's id: copy `c >= 1` of the sample
/// with id `i` has id `c << COPY_SHIFT | i`, copy 0 keeps `i`. The original of any id is
/// therefore `id & ((1 << COPY_SHIFT) - 1)`, whatever the data set's size ([`original`]).
pub const COPY_SHIFT: u32 = 40;

/// The id of the original sample an id is a copy of (itself for a sample that is no copy).
///
/// ```
/// use saln::source::repeat::{original, COPY_SHIFT};
/// assert_eq!(original(17), 17);
/// assert_eq!(original(3 << COPY_SHIFT | 17), 17);
/// ```
pub fn original(id: u64) -> u64 {
    id & ((1u64 << COPY_SHIFT) - 1)
}

/// The training source with every sample present `copies` times.
pub struct Repeated {
    inner: Arc<dyn Source>,
    copies: usize,
}

impl Repeated {
    /// Wraps `inner`; `copies >= 1` (1 is `inner` itself).
    pub fn new(inner: Arc<dyn Source>, copies: usize) -> Self {
        Repeated {
            inner,
            copies: copies.max(1),
        }
    }

    /// Sample `index` of the repeated source: its index in `inner` and its copy number.
    fn at(&self, index: usize) -> (usize, usize) {
        let n = self.inner.len().max(1);
        (index % n, index / n)
    }

    /// `s` as copy `c` (copy 0 keeps its id).
    fn as_copy(c: usize, mut s: Sample) -> Sample {
        s.id |= (c as u64) << COPY_SHIFT;
        s
    }
}

impl Source for Repeated {
    fn len(&self) -> usize {
        self.inner.len() * self.copies
    }
    fn get(&self, index: usize) -> Result<Sample> {
        let (i, c) = self.at(index);
        Ok(Self::as_copy(c, self.inner.get(i)?))
    }
    fn get_resized(&self, index: usize, size: Size) -> Result<Sample> {
        let (i, c) = self.at(index);
        Ok(Self::as_copy(c, self.inner.get_resized(i, size)?))
    }
    fn locate(&self, index: usize) -> String {
        match self.at(index) {
            (i, 0) => self.inner.locate(i),
            (i, c) => format!("{} (copy {c})", self.inner.locate(i)),
        }
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn shape(&self) -> SourceShape {
        self.inner.shape()
    }
}

/// Counts, in one super-batch or sub-batch, the samples that repeat an original already
/// present in it (0 when there are no copies).
///
/// ```
/// use saln::source::repeat::{repeats, COPY_SHIFT};
/// assert_eq!(repeats(&[1, 2, 3]), 0);
/// assert_eq!(repeats(&[1, 1 << COPY_SHIFT | 1, 2 << COPY_SHIFT | 1, 2]), 2);
/// ```
pub fn repeats(ids: &[u64]) -> u64 {
    // Without copies (no `source.repeat`) there is nothing to count: no hashing per
    // super-batch.
    if ids.iter().all(|&id| original(id) == id) {
        return 0;
    }
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    ids.iter().filter(|&&id| !seen.insert(original(id))).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::test_data::synthetic;
    use crate::source::{SourceConfig, Split};

    #[test]
    fn copies_share_pixels_and_label_but_not_the_id() {
        let r = Repeated::new(synthetic(5), 3);
        assert_eq!(r.len(), 15);
        let a = r.get(2).unwrap();
        let b = r.get(7).unwrap();
        let c = r.get(12).unwrap();
        assert_eq!(
            (a.id, b.id, c.id),
            (2, 1 << COPY_SHIFT | 2, 2 << COPY_SHIFT | 2)
        );
        assert_eq!(a.image, b.image);
        assert_eq!(a.label, c.label);
        assert_eq!(r.locate(12), "mem#2 (copy 2)");
        assert_eq!(r.locate(2), "mem#2");
    }

    #[test]
    fn the_split_repeats_only_the_learner_share() {
        let cfg: SourceConfig =
            serde_saphyr::from_str("idx: { dir: /nowhere }\nholdout: 20\nlimit: 30\nrepeat: 4\n")
                .unwrap();
        // 100 distinct samples, 400 in the wrapped source.
        let s = Split::for_source(400, &cfg, 9).unwrap();
        let plain = Split::new(100, 20, Some(30), 9).unwrap();
        assert_eq!(s.holdout, plain.holdout);
        assert_eq!(s.learner.len(), 120);
        for (k, &i) in s.learner.iter().enumerate() {
            assert_eq!(i % 100, plain.learner[k % 30], "copy order");
        }
        assert!(s.learner.windows(2).all(|w| w[0] < w[1]), "sorted");
        assert!(s.learner.iter().all(|i| !s.holdout.contains(&(i % 100))));
    }
}
