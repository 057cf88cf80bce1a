//! Order-preserving tuple encoding of metadata keys.
//!
//! A key is a tuple of elements (strings and unsigned integers) under one
//! cluster prefix, written like `/sava/topics/<ns>/<topic>` in docs. The byte
//! encoding sorts exactly like the tuples do, element by element, so a range
//! read over a tuple prefix returns its children in tuple order:
//!
//! - a string is `0x02`, its UTF-8 bytes with every `0x00` written as
//!   `0x00 0xFF`, then a `0x00` terminator;
//! - a `u64` is `0x15` and eight big-endian bytes.
//!
//! A tuple that is a prefix of another sorts first, and strings sort before
//! integers at the same position.

use std::fmt::Write as _;

const STRING_CODE: u8 = 0x02;
const U64_CODE: u8 = 0x15;
const ESCAPE: u8 = 0xFF;

/// A builder of one encoded key: `Key::new("sava").push_str("topics").build()`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    bytes: Vec<u8>,
}

impl Key {
    /// Starts a key under the cluster prefix `cluster`.
    pub fn new(cluster: &str) -> Self {
        Key { bytes: Vec::new() }.push_str(cluster)
    }

    /// Appends a string element.
    pub fn push_str(mut self, element: &str) -> Self {
        self.bytes.push(STRING_CODE);
        for &byte in element.as_bytes() {
            self.bytes.push(byte);
            if byte == 0x00 {
                self.bytes.push(ESCAPE);
            }
        }
        self.bytes.push(0x00);
        self
    }

    /// Appends an unsigned integer element.
    pub fn push_u64(mut self, element: u64) -> Self {
        self.bytes.push(U64_CODE);
        self.bytes.extend_from_slice(&element.to_be_bytes());
        self
    }

    /// The encoded key so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The encoded key.
    pub fn build(self) -> Vec<u8> {
        self.bytes
    }

    /// The range `[begin, end)` of this key and every key that extends it.
    pub fn range(self) -> (Vec<u8>, Vec<u8>) {
        prefix_range(&self.bytes)
    }
}

/// The range `[begin, end)` of the tuple-encoded key `prefix` and every
/// tuple that extends it.
///
/// `end` is `prefix` followed by `0xFF`: every element starts with a type
/// code below `0xFF`, while a longer string whose first bytes match (such as
/// `"ns\0"` next to `"ns"`) continues with the escape `0xFF` and so stays out.
pub fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut end = Vec::with_capacity(prefix.len() + 1);
    end.extend_from_slice(prefix);
    end.push(0xFF);
    (prefix.to_vec(), end)
}

/// One decoded tuple element.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    Str(String),
    U64(u64),
}

/// Decodes a tuple-encoded key, or `None` if `key` is not one.
pub fn unpack(key: &[u8]) -> Option<Vec<Element>> {
    let mut elements = Vec::new();
    let mut rest = key;
    while let Some((&code, tail)) = rest.split_first() {
        rest = tail;
        match code {
            STRING_CODE => {
                let (element, tail) = unpack_string(rest)?;
                elements.push(Element::Str(element));
                rest = tail;
            }
            U64_CODE => {
                let (digits, tail) = rest.split_first_chunk::<8>()?;
                elements.push(Element::U64(u64::from_be_bytes(*digits)));
                rest = tail;
            }
            _ => return None,
        }
    }
    Some(elements)
}

fn unpack_string(mut rest: &[u8]) -> Option<(String, &[u8])> {
    let mut bytes = Vec::new();
    loop {
        let (&byte, tail) = rest.split_first()?;
        rest = tail;
        if byte != 0x00 {
            bytes.push(byte);
            continue;
        }

        // `0x00 0xFF` is an escaped zero byte; a lone `0x00` ends the string.
        match rest.split_first() {
            Some((&ESCAPE, tail)) => {
                bytes.push(0x00);
                rest = tail;
            }
            _ => return String::from_utf8(bytes).ok().map(|text| (text, rest)),
        }
    }
}

/// A readable form of a key for messages: `/sava/topics/ns/t` for a tuple key,
/// the bytes with non-printable ones as `\xNN` otherwise.
pub fn display_key(key: &[u8]) -> String {
    if let Some(elements) = unpack(key).filter(|elements| !elements.is_empty()) {
        let mut text = String::new();
        for element in elements {
            match element {
                Element::Str(element) => write!(text, "/{element}"),
                Element::U64(element) => write!(text, "/{element}"),
            }
            .expect("writing to a String cannot fail");
        }
        return text;
    }

    let mut text = String::with_capacity(key.len());
    for &byte in key {
        if byte.is_ascii_graphic() || byte == b' ' {
            text.push(char::from(byte));
        } else {
            write!(text, "\\x{byte:02x}").expect("writing to a String cannot fail");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small xorshift generator, so the property test needs no dependency
    /// and every run checks the same tuples.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }
    }

    fn random_element(rng: &mut Rng) -> Element {
        const CHARS: [char; 7] = ['\0', '\u{1}', 'a', 'b', '/', '\u{ff}', '\u{10ffff}'];
        const NUMBERS: [u64; 6] = [0, 1, 255, 256, u64::MAX - 1, u64::MAX];

        if rng.below(2) == 0 {
            let len = rng.below(4);
            let text = (0..len)
                .map(|_| CHARS[rng.below(CHARS.len() as u64) as usize])
                .collect();
            Element::Str(text)
        } else if rng.below(2) == 0 {
            Element::U64(NUMBERS[rng.below(NUMBERS.len() as u64) as usize])
        } else {
            Element::U64(rng.next())
        }
    }

    fn encode(elements: &[Element]) -> Vec<u8> {
        let mut key = Key { bytes: Vec::new() };
        for element in elements {
            key = match element {
                Element::Str(element) => key.push_str(element),
                Element::U64(element) => key.push_u64(*element),
            };
        }
        key.build()
    }

    #[test]
    fn encoded_keys_sort_like_their_tuples() {
        let mut rng = Rng(0x5eed_cafe_f00d_d00d);
        let tuples: Vec<Vec<Element>> = (0..2_000)
            .map(|_| {
                let len = rng.below(4) as usize;
                (0..len).map(|_| random_element(&mut rng)).collect()
            })
            .collect();

        for (index, left) in tuples.iter().enumerate() {
            for right in &tuples[index..] {
                let expected = left.cmp(right);
                let actual = encode(left).cmp(&encode(right));
                assert_eq!(actual, expected, "tuples {left:?} and {right:?}");
            }
        }
    }

    #[test]
    fn encoded_keys_decode_to_their_tuples() {
        let mut rng = Rng(42);
        for _ in 0..1_000 {
            let len = rng.below(5) as usize;
            let tuple: Vec<Element> = (0..len).map(|_| random_element(&mut rng)).collect();
            assert_eq!(unpack(&encode(&tuple)), Some(tuple));
        }
    }

    #[test]
    fn prefix_range_holds_children_but_not_siblings_with_a_longer_name() {
        let (begin, end) = Key::new("sava").push_str("topics").push_str("ns").range();
        let inside = [
            Key::new("sava").push_str("topics").push_str("ns").build(),
            Key::new("sava")
                .push_str("topics")
                .push_str("ns")
                .push_str("t")
                .build(),
            Key::new("sava")
                .push_str("topics")
                .push_str("ns")
                .push_u64(u64::MAX)
                .build(),
        ];
        let outside = [
            Key::new("sava").push_str("topics").push_str("ns2").build(),
            Key::new("sava").push_str("topics").push_str("n").build(),
            Key::new("sava").push_str("topics").push_str("ns\0").build(),
        ];

        for key in &inside {
            assert!(begin <= *key && *key < end, "{}", display_key(key));
        }
        for key in &outside {
            assert!(!(begin <= *key && *key < end), "{}", display_key(key));
        }
    }

    #[test]
    fn prefix_range_of_an_empty_prefix_covers_every_tuple() {
        let (begin, end) = prefix_range(b"");
        let key = Key::new("\u{10ffff}").push_u64(u64::MAX).build();
        assert!(begin <= key && key < end);
    }

    #[test]
    fn display_key_shows_tuples_as_paths_and_escapes_raw_bytes() {
        let key = Key::new("sava").push_str("schemas").push_u64(7).build();
        assert_eq!(display_key(&key), "/sava/schemas/7");
        assert_eq!(display_key(b"raw/key\x01"), "raw/key\\x01");
    }
}
