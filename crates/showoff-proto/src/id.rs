//! Identifiers and secrets: stream ids, session ids, data keys and readable tunnel names.
//!
//! Everything here draws from the operating system's CSPRNG (`OsRng`), never from a seeded or
//! thread-local generator, because ids double as capabilities: a data connection that shows the
//! right id (and key) is handed a visitor.

use rand::rngs::OsRng;
use rand::{Rng, RngCore, TryRngCore};

/// Length of stream ids, session ids and data keys: 22 base62 characters, about 131 bits.
pub const ID_LEN: usize = 22;

/// A fresh random base62 string of [`ID_LEN`] characters from the OS CSPRNG.
///
/// One `getrandom` call fills a buffer; bytes are mapped to the 62 symbols by rejection
/// (bytes ≥ 248 = 4 × 62 are skipped), so every symbol is equally likely. Asking the OS per
/// character cost 22+ system calls per id, and an id is drawn for every stream.
pub fn random_id() -> String {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = OsRng.unwrap_err();
    let mut id = String::with_capacity(ID_LEN);
    let mut pool = [0u8; 48];
    while id.len() < ID_LEN {
        rng.fill_bytes(&mut pool);
        for &byte in pool.iter().filter(|&&b| b < 248) {
            id.push(char::from(ALPHABET[usize::from(byte % 62)]));
            if id.len() == ID_LEN {
                break;
            }
        }
    }
    id
}

const ADJECTIVES: &[&str] = &[
    "amber", "bold", "brave", "bright", "calm", "clever", "cosmic", "crisp", "daring", "eager",
    "fancy", "gentle", "golden", "happy", "jolly", "keen", "lively", "lucky", "mellow", "nimble",
    "noble", "quick", "quiet", "rapid", "shiny", "silent", "snappy", "sunny", "swift", "tidy",
    "vivid", "witty",
];

const NOUNS: &[&str] = &[
    "badger", "beacon", "canyon", "comet", "falcon", "fern", "harbor", "heron", "island", "lagoon",
    "lantern", "maple", "meadow", "otter", "panda", "pebble", "pine", "planet", "quartz", "raven",
    "river", "rocket", "sparrow", "summit", "tiger", "tulip", "valley", "walrus", "willow", "yak",
    "zebra", "zephyr",
];

/// A readable random tunnel name such as `brave-otter-4821`: a valid DNS label, about 20 bits of
/// randomness (collisions are retried by the caller against the registry).
pub fn readable_name() -> String {
    let mut rng = OsRng.unwrap_err();
    let adjective = ADJECTIVES[rng.random_range(0..ADJECTIVES.len())];
    let noun = NOUNS[rng.random_range(0..NOUNS.len())];
    let number: u16 = rng.random_range(1000..10000);
    format!("{adjective}-{noun}-{number}")
}

/// Compares two secrets in time that depends only on their lengths, not on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::validate_name;
    use std::collections::HashSet;

    #[test]
    fn ids_are_base62_of_the_right_length_and_distinct() {
        let ids: HashSet<String> = (0..1000).map(|_| random_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert_eq!(id.len(), ID_LEN);
            assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
        }
    }

    #[test]
    fn ids_use_the_whole_alphabet() {
        let seen: HashSet<u8> = (0..500).flat_map(|_| random_id().into_bytes()).collect();
        // 11,000 draws from 62 symbols: every symbol shows up with overwhelming probability.
        assert_eq!(seen.len(), 62);
    }

    #[test]
    fn readable_names_are_valid_labels() {
        for _ in 0..200 {
            let name = readable_name();
            validate_name(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(name.split('-').count(), 3, "{name}");
        }
    }

    #[test]
    fn constant_time_eq_compares_contents_and_lengths() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(constant_time_eq(b"", b""));
    }
}
