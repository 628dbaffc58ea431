//! Counter keys: one per (domain, descriptor entries). Each key holds a counter per window
//! length (see `memory.rs`), so a counter is identified by (domain, entries, window length).
//!
//! Every string is written with its length in front, so no two different descriptors can
//! produce the same bytes. envoyproxy/ratelimit joins `key_value` pairs with `_` unescaped, so
//! `(a, b_c)` and `(a_b, c)` share a counter there; here they cannot. The window *number* is not
//! part of the key either: a counter holds its own window number and starts again from 0 when a
//! new window begins, so a busy key reuses its counters instead of leaving some behind per window.
//!
//! A key is built on the stack (typical descriptors fit in [`INLINE_KEY_BYTES`]); only a key
//! that the memory store keeps is copied to the heap, so deciding for a known key allocates
//! nothing.

use smallvec::SmallVec;

/// Keys up to this many bytes are built without allocating: the seed's
/// `(api_key, 32-character key), (bucket, default)` in domain `mega-api` takes 66.
pub const INLINE_KEY_BYTES: usize = 72;

/// The encoded identity of one counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CounterKey(SmallVec<[u8; INLINE_KEY_BYTES]>);

impl CounterKey {
    /// Encodes a descriptor's identity: `entries` are its `(key, value)` pairs.
    pub fn new<'e>(
        domain: &str,
        entries: impl ExactSizeIterator<Item = (&'e str, &'e str)> + Clone,
    ) -> CounterKey {
        // Sized exactly first, then written in place: a long key is one allocation.
        let size = str_size(domain)
            + len_size(entries.len())
            + entries
                .clone()
                .map(|(key, value)| str_size(key) + str_size(value))
                .sum::<usize>();
        let mut bytes = SmallVec::from_elem(0, size);
        let mut out = Writer(&mut bytes);
        out.str(domain);
        out.len(entries.len());
        for (key, value) in entries {
            out.str(key);
            out.str(value);
        }
        CounterKey(bytes)
    }

    /// The key of this descriptor's refill counters (sliding windows and token buckets), which
    /// count apart from its fixed windows. One byte longer, so it never equals a descriptor's
    /// key (those end where their last value ends).
    pub fn refill(mut self) -> CounterKey {
        self.0.push(b'r');
        self
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A key as [`CounterKey::as_bytes`] gave it (from a store that kept it).
    pub(crate) fn from_bytes(bytes: &[u8]) -> CounterKey {
        CounterKey(SmallVec::from_slice(bytes))
    }
}

fn len_size(n: usize) -> usize {
    (usize::BITS - (n | 1).leading_zeros()).div_ceil(7) as usize
}

fn str_size(s: &str) -> usize {
    len_size(s.len()) + s.len()
}

/// Writes into a buffer sized for exactly what is written.
struct Writer<'b>(&'b mut [u8]);

impl Writer<'_> {
    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.bytes(s.as_bytes());
    }

    /// LEB128: seven bits a byte, so short strings cost one byte of length.
    fn len(&mut self, mut n: usize) {
        loop {
            let low = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                self.bytes(&[low]);
                return;
            }
            self.bytes(&[low | 0x80]);
        }
    }

    fn bytes(&mut self, bytes: &[u8]) {
        let (head, rest) = std::mem::take(&mut self.0).split_at_mut(bytes.len());
        head.copy_from_slice(bytes);
        self.0 = rest;
    }
}

#[cfg(test)]
mod tests {
    use super::{CounterKey, INLINE_KEY_BYTES};

    fn key(domain: &str, entries: &[(&str, &str)]) -> CounterKey {
        CounterKey::new(domain, entries.iter().copied())
    }

    #[test]
    fn separators_inside_values_cannot_collide() {
        type Entries<'a> = &'a [(&'a str, &'a str)];
        let table: [(Entries, Entries); 4] = [
            (&[("a", "b_c")], &[("a_b", "c")]),
            (&[("a", "b"), ("c", "d")], &[("a", "b\u{0}c"), ("", "d")]),
            (&[("k", "")], &[("k", ""), ("", "")]),
            (
                &[("key", "v".repeat(200).leak())],
                &[("key", "v".repeat(199).leak())],
            ),
        ];
        for (left, right) in table {
            assert_ne!(key("d", left), key("d", right), "{left:?} vs {right:?}");
        }
        assert_ne!(key("d_a", &[("b", "c")]), key("d", &[("a_b", "c")]));
    }

    #[test]
    fn keys_are_sized_exactly() {
        for value in [
            "",
            "k",
            &"v".repeat(127),
            &"v".repeat(128),
            &"v".repeat(20_000),
        ] {
            let k = key("mega-api", &[("api_key", value), ("bucket", "default")]);
            let expected = 9 + 8 + 7 + 8 + 1 + super::len_size(value.len()) + value.len();
            assert_eq!(
                k.as_bytes().len(),
                expected,
                "value of {} bytes",
                value.len()
            );
        }
        assert_eq!(super::len_size(0), 1);
        assert_eq!(super::len_size(127), 1);
        assert_eq!(super::len_size(128), 2);
        assert_eq!(super::len_size(16_383), 2);
        assert_eq!(super::len_size(16_384), 3);
    }

    #[test]
    fn a_seed_key_is_built_without_allocating() {
        let api_key = "k".repeat(32);
        let k = key(
            "mega-api",
            &[("api_key", api_key.as_str()), ("bucket", "default")],
        );
        assert_eq!(k.as_bytes().len(), 66);
        assert!(
            !k.0.spilled(),
            "a seed key fits in {INLINE_KEY_BYTES} bytes"
        );
        let long = key("mega-api", &[("api_key", &"k".repeat(100))]);
        assert!(long.0.spilled());
        assert_eq!(long.as_bytes().len(), 9 + 1 + 8 + 1 + 100);
    }
}
