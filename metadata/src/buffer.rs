//! The write buffer of a transaction, shared by the backends.
//!
//! It records sets, clears, range clears and atomic adds until commit, and
//! answers reads from them first (read-your-writes), merging with a
//! backend's snapshot for range reads. It also builds the key ranges a commit
//! writes, for conflict checks and watches.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;

use crate::error::{MetadataError, Result};
use crate::keys::display_key;
use crate::store::{KeyValue, RangeOptions};

/// A half-open range of keys `[begin, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyRange {
    pub(crate) begin: Vec<u8>,
    pub(crate) end: Vec<u8>,
}

impl KeyRange {
    /// The range holding `key` alone: `[key, key + 0x00)`.
    pub(crate) fn point(key: &[u8]) -> Self {
        let mut end = Vec::with_capacity(key.len() + 1);
        end.extend_from_slice(key);
        end.push(0x00);
        KeyRange {
            begin: key.to_vec(),
            end,
        }
    }

    pub(crate) fn new(begin: &[u8], end: &[u8]) -> Self {
        KeyRange {
            begin: begin.to_vec(),
            end: end.to_vec(),
        }
    }

    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        self.begin.as_slice() <= key && key < self.end.as_slice()
    }

    pub(crate) fn intersects(&self, other: &KeyRange) -> bool {
        self.begin < other.end && other.begin < self.end
    }
}

/// One buffered write to a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Pending {
    Set(Bytes),
    Clear,
    /// An add over a base value the transaction has not seen.
    Add(i64),
}

/// What the buffer knows about one key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The value after this transaction's writes, without reading the store.
    Known(Option<Bytes>),
    /// The stored value plus this delta.
    Add(i64),
    /// Untouched by this transaction: read the store.
    Unwritten,
}

/// The buffered writes of one transaction.
///
/// Invariant: no `Pending::Add` entry lies inside a cleared range, because an
/// add over a cleared key becomes a `Set` of the delta.
#[derive(Debug)]
pub(crate) struct WriteBuffer {
    max_value_bytes: usize,
    entries: BTreeMap<Vec<u8>, Pending>,
    cleared: Vec<KeyRange>,
    oversized: Option<(Vec<u8>, usize)>,
}

impl WriteBuffer {
    pub(crate) fn new(max_value_bytes: usize) -> Self {
        WriteBuffer {
            max_value_bytes,
            entries: BTreeMap::new(),
            cleared: Vec::new(),
            oversized: None,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.cleared.is_empty()
    }

    pub(crate) fn set(&mut self, key: &[u8], value: &[u8]) {
        if value.len() > self.max_value_bytes && self.oversized.is_none() {
            self.oversized = Some((key.to_vec(), value.len()));
        }
        self.entries
            .insert(key.to_vec(), Pending::Set(Bytes::copy_from_slice(value)));
    }

    pub(crate) fn clear(&mut self, key: &[u8]) {
        self.entries.insert(key.to_vec(), Pending::Clear);
    }

    pub(crate) fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        if begin >= end {
            return;
        }

        // Drop the buffered writes inside the range: the clear supersedes them.
        let mut inside = self.entries.split_off(begin);
        let mut after = inside.split_off(end);
        self.entries.append(&mut after);

        self.cleared.push(KeyRange::new(begin, end));
    }

    pub(crate) fn atomic_add(&mut self, key: &[u8], delta: i64) {
        let next = match self.lookup(key) {
            Lookup::Known(value) => Pending::Set(add_le(value.as_deref(), delta)),
            Lookup::Add(previous) => Pending::Add(previous.wrapping_add(delta)),
            Lookup::Unwritten => Pending::Add(delta),
        };
        self.entries.insert(key.to_vec(), next);
    }

    pub(crate) fn lookup(&self, key: &[u8]) -> Lookup {
        match self.entries.get(key) {
            Some(Pending::Set(value)) => Lookup::Known(Some(value.clone())),
            Some(Pending::Clear) => Lookup::Known(None),
            Some(Pending::Add(delta)) => Lookup::Add(*delta),
            None if self.is_cleared(key) => Lookup::Known(None),
            None => Lookup::Unwritten,
        }
    }

    fn is_cleared(&self, key: &[u8]) -> bool {
        self.cleared.iter().any(|range| range.contains(key))
    }

    /// The `ValueTooLarge` error for the first oversized value set, if any.
    pub(crate) fn check_sizes(&self) -> Result<()> {
        match &self.oversized {
            Some((key, size)) => Err(MetadataError::ValueTooLarge {
                key: display_key(key),
                size: *size,
                limit: self.max_value_bytes,
            }),
            None => Ok(()),
        }
    }

    /// Every key range a commit of this buffer writes.
    pub(crate) fn written_ranges(&self) -> Vec<KeyRange> {
        let points = self.entries.keys().map(|key| KeyRange::point(key));
        self.cleared.iter().cloned().chain(points).collect()
    }

    /// The cleared ranges, to apply first, then the writes to single keys.
    pub(crate) fn into_parts(self) -> (Vec<KeyRange>, BTreeMap<Vec<u8>, Pending>) {
        (self.cleared, self.entries)
    }

    /// Merges a snapshot range read with the buffered writes.
    ///
    /// `snapshot` yields the stored pairs of `[begin, end)` in the direction
    /// of `options` (a backend may stop early only by running out). Returns
    /// the pairs and the range actually read, for the conflict check: up to
    /// the last pair returned when the limit cut the read short.
    pub(crate) fn merge_range(
        &self,
        snapshot: &mut dyn Iterator<Item = Result<KeyValue>>,
        begin: &[u8],
        end: &[u8],
        options: RangeOptions,
    ) -> Result<(Vec<KeyValue>, KeyRange)> {
        let bounds = (Bound::Included(begin), Bound::Excluded(end));
        let mut buffered: Box<dyn Iterator<Item = (&Vec<u8>, &Pending)>> = if options.reverse {
            Box::new(self.entries.range::<[u8], _>(bounds).rev())
        } else {
            Box::new(self.entries.range::<[u8], _>(bounds))
        };
        let comes_first = |left: &[u8], right: &[u8]| {
            if options.reverse {
                left > right
            } else {
                left < right
            }
        };

        let mut pairs = Vec::new();
        let mut stored = snapshot.next().transpose()?;
        let mut written = buffered.next();
        while options.limit.is_none_or(|limit| pairs.len() < limit) {
            let (take_stored, take_written) = match (&stored, written) {
                (None, None) => break,
                (Some(_), None) => (true, false),
                (None, Some(_)) => (false, true),
                (Some(pair), Some((key, _))) if pair.key.as_ref() == key.as_slice() => (true, true),
                (Some(pair), Some((key, _))) => {
                    let stored_first = comes_first(&pair.key, key);
                    (stored_first, !stored_first)
                }
            };

            let stored_pair = if take_stored {
                let pair = stored.take();
                stored = snapshot.next().transpose()?;
                pair
            } else {
                None
            };
            let written_pair = if take_written {
                let pair = written.take();
                written = buffered.next();
                pair
            } else {
                None
            };

            let merged = match (stored_pair, written_pair) {
                (_, Some((key, Pending::Set(value)))) => Some((key.clone(), value.clone())),
                (_, Some((_, Pending::Clear))) => None,
                (stored_pair, Some((key, Pending::Add(delta)))) => {
                    let base = stored_pair.map(|pair| pair.value);
                    Some((key.clone(), add_le(base.as_deref(), *delta)))
                }
                (Some(pair), None) if self.is_cleared(&pair.key) => None,
                (Some(pair), None) => Some((pair.key.to_vec(), pair.value)),
                (None, None) => None,
            };
            if let Some((key, value)) = merged {
                pairs.push(KeyValue {
                    key: Bytes::from(key),
                    value,
                });
            }
        }

        let read = match (options.limit, pairs.last()) {
            (Some(limit), Some(last)) if pairs.len() == limit => {
                if options.reverse {
                    KeyRange::new(&last.key, end)
                } else {
                    KeyRange::new(begin, &KeyRange::point(&last.key).end)
                }
            }
            (Some(0), _) => KeyRange::new(begin, begin),
            _ => KeyRange::new(begin, end),
        };
        Ok((pairs, read))
    }
}

/// `base` read as a little-endian `i64` (missing or short values
/// zero-extended, longer ones truncated to 8 bytes), plus `delta`, wrapping.
pub(crate) fn add_le(base: Option<&[u8]>, delta: i64) -> Bytes {
    let mut digits = [0u8; 8];
    if let Some(base) = base {
        let len = base.len().min(8);
        digits[..len].copy_from_slice(&base[..len]);
    }
    let sum = i64::from_le_bytes(digits).wrapping_add(delta);
    Bytes::copy_from_slice(&sum.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(pairs: &[(&str, &str)], reverse: bool) -> Vec<Result<KeyValue>> {
        let mut pairs: Vec<Result<KeyValue>> = pairs
            .iter()
            .map(|(key, value)| {
                Ok(KeyValue {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    value: Bytes::copy_from_slice(value.as_bytes()),
                })
            })
            .collect();
        if reverse {
            pairs.reverse();
        }
        pairs
    }

    fn keys(pairs: &[KeyValue]) -> Vec<String> {
        pairs
            .iter()
            .map(|pair| String::from_utf8_lossy(&pair.key).into_owned())
            .collect()
    }

    #[test]
    fn merged_range_applies_sets_clears_and_cleared_ranges() {
        let mut buffer = WriteBuffer::new(100);
        buffer.set(b"b", b"new");
        buffer.clear(b"c");
        buffer.clear_range(b"d", b"f");
        buffer.set(b"e", b"after-clear");
        let snapshot = [("a", "1"), ("c", "3"), ("d", "4"), ("e", "5"), ("g", "7")];

        let options = RangeOptions::default();
        let mut stored_pairs = stored(&snapshot, false).into_iter();
        let (pairs, read) = buffer
            .merge_range(&mut stored_pairs, b"a", b"z", options)
            .expect("merge");
        assert_eq!(keys(&pairs), ["a", "b", "e", "g"]);
        assert_eq!(pairs[2].value.as_ref(), b"after-clear");
        assert_eq!(read, KeyRange::new(b"a", b"z"));

        let options = RangeOptions::limit(2).reversed();
        let mut stored_pairs = stored(&snapshot, true).into_iter();
        let (pairs, read) = buffer
            .merge_range(&mut stored_pairs, b"a", b"z", options)
            .expect("merge");
        assert_eq!(keys(&pairs), ["g", "e"]);
        assert_eq!(read, KeyRange::new(b"e", b"z"));
    }

    #[test]
    fn atomic_add_over_a_cleared_key_starts_from_zero() {
        let mut buffer = WriteBuffer::new(100);
        buffer.clear_range(b"a", b"c");
        buffer.atomic_add(b"b", 5);
        buffer.atomic_add(b"x", 2);
        buffer.atomic_add(b"x", 3);

        assert_eq!(buffer.lookup(b"b"), Lookup::Known(Some(add_le(None, 5))));
        assert_eq!(buffer.lookup(b"x"), Lookup::Add(5));
    }

    #[test]
    fn add_le_zero_extends_short_values_and_wraps() {
        assert_eq!(add_le(Some(&[1]), 1).as_ref(), 2i64.to_le_bytes());
        assert_eq!(
            add_le(Some(&i64::MAX.to_le_bytes()), 1).as_ref(),
            i64::MIN.to_le_bytes()
        );
    }
}
