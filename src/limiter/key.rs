//! Counter keys: one per (domain, descriptor entries, window length).
//!
//! Every string is written with its length in front, so no two different descriptors can
//! produce the same bytes. envoyproxy/ratelimit joins `key_value` pairs with `_` unescaped, so
//! `(a, b_c)` and `(a_b, c)` share a counter there; here they cannot. The window *number* is not
//! part of the key: a counter slot holds its own window number and starts again from 0 when a
//! new window begins, so a busy key reuses one slot instead of leaving one behind per window.

use std::borrow::Borrow;

/// The encoded identity of one counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CounterKey(Box<[u8]>);

impl CounterKey {
    /// Encodes a counter's identity: `entries` are the descriptor's `(key, value)` pairs.
    pub fn new<'e>(
        domain: &str,
        entries: impl ExactSizeIterator<Item = (&'e str, &'e str)>,
        window_seconds: u32,
    ) -> CounterKey {
        let mut bytes = Vec::with_capacity(16 + domain.len());
        push_len(&mut bytes, window_seconds as usize);
        push_str(&mut bytes, domain);
        push_len(&mut bytes, entries.len());
        for (key, value) in entries {
            push_str(&mut bytes, key);
            push_str(&mut bytes, value);
        }
        CounterKey(bytes.into_boxed_slice())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Borrow<[u8]> for CounterKey {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

fn push_str(bytes: &mut Vec<u8>, s: &str) {
    push_len(bytes, s.len());
    bytes.extend_from_slice(s.as_bytes());
}

/// LEB128: seven bits a byte, so short strings cost one byte of length.
fn push_len(bytes: &mut Vec<u8>, mut n: usize) {
    loop {
        let low = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            bytes.push(low);
            return;
        }
        bytes.push(low | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::CounterKey;

    fn key(domain: &str, entries: &[(&str, &str)], window: u32) -> CounterKey {
        CounterKey::new(domain, entries.iter().copied(), window)
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
            assert_ne!(
                key("d", left, 60),
                key("d", right, 60),
                "{left:?} vs {right:?}"
            );
        }
        assert_ne!(key("d_a", &[("b", "c")], 60), key("d", &[("a_b", "c")], 60));
    }

    #[test]
    fn each_window_length_has_its_own_counter() {
        assert_ne!(key("d", &[("k", "v")], 60), key("d", &[("k", "v")], 3600));
        assert_eq!(key("d", &[("k", "v")], 60), key("d", &[("k", "v")], 60));
    }
}
