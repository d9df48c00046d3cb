//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, never on in a release).
//! Nothing but `fuzz/` may use this module; it is here because the code it drives is private
//! to the crate.

use crate::inspect::{InspectConfig, Inspector};

/// The inspector's capture over an arbitrary script of bytes: each step takes a byte that
/// says which way (towards the target or back) and how many of the following bytes go, as a
/// relay would hand them over. Panics when an invariant breaks: the memory budget is passed,
/// a captured body is longer than the cap or than the body, or bytes stay reserved once every
/// stream has closed.
pub fn inspector_capture(data: &[u8]) {
    let config = InspectConfig {
        memory: 16 * 1024,
        body_cap: 512,
        ..InspectConfig::default()
    };
    let Ok(inspector) = Inspector::new(&config) else {
        return;
    };
    let mut streams: Vec<_> = (0..2).map(|_| inspector.capture_for_fuzzing()).collect();
    let mut rest = data;
    while let Some((&step, tail)) = rest.split_first() {
        let len = usize::from(step & 0x3f).min(tail.len());
        let (chunk, tail) = tail.split_at(len);
        let stream = &mut streams[usize::from(step >> 7)];
        if step & 0x40 == 0 {
            stream.wrote_to_target(chunk);
        } else {
            stream.read_from_target(chunk);
        }
        rest = tail;
        assert!(
            inspector.status().memory_used <= config.memory,
            "over the budget"
        );
    }
    drop(streams);
    let entries = inspector.entries();
    for entry in &entries {
        let bodies =
            std::iter::once(&entry.request.body).chain(entry.response.as_ref().map(|r| &r.body));
        for body in bodies {
            assert!(
                body.captured.len() <= config.body_cap,
                "a body past the cap"
            );
            assert!(
                body.captured.len() as u64 <= body.size,
                "more captured than sent"
            );
        }
    }
    let held: usize = entries.iter().map(|e| e.memory()).sum();
    assert_eq!(inspector.status().memory_used, held, "bytes still reserved");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed seeds, and pseudo-random scripts, without the fuzzer.
    #[test]
    fn seeds_and_random_scripts_keep_the_invariants() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/seeds/inspector_capture");
        let seeds: Vec<_> = std::fs::read_dir(&dir).expect("seeds").flatten().collect();
        assert!(seeds.len() >= 4, "{} seeds", seeds.len());
        for seed in seeds {
            inspector_capture(&std::fs::read(seed.path()).expect("seed"));
        }
        const ALPHABET: &[u8] =
            b"GET / HTTP/1.1 101 200\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n0aZ";
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2_000 {
            let script: Vec<u8> = (0..512)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    match state % 8 {
                        // Now and then a byte of any value: a step that changes stream and way.
                        0 => (state >> 8) as u8,
                        _ => ALPHABET[(state >> 8) as usize % ALPHABET.len()],
                    }
                })
                .collect();
            inspector_capture(&script);
        }
    }
}
