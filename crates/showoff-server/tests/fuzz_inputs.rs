//! Every fuzz target's seeds, and every input a fuzzer found that broke an invariant, replayed
//! through the same entry points the targets use (feature `fuzzing`, which
//! `cargo test --all-features` turns on). A crash, once fixed, is kept as a file under
//! `fuzz/regressions/TARGET/` and runs here from then on.

#![cfg(feature = "fuzzing")]

use std::path::Path;

use showoff_server::fuzzing;

/// A fuzz target's entry point.
type Entry = fn(&[u8]);

/// Each target of `fuzz/` and its entry point.
const TARGETS: &[(&str, Entry)] = &[
    ("frame_codec", fuzzing::frame_codec),
    ("request_head", fuzzing::request_head),
    ("chunked", fuzzing::chunked),
    ("response", fuzzing::response),
    ("proxy_header", fuzzing::proxy_header),
    ("client_hello", fuzzing::client_hello),
    ("names", fuzzing::names),
    ("signed_token", fuzzing::signed_token),
    ("jwt", fuzzing::jwt),
    ("control_session", fuzzing::session::control_session_bytes),
    ("visitor_connection", fuzzing::visitor::visitor_connection),
    ("http1_differential", fuzzing::visitor::http1_differential),
];

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .map(|e| e.expect("entry").path())
        .filter(|path| path.is_file())
        .map(|path| {
            let bytes = std::fs::read(&path).expect("readable input");
            (path.display().to_string(), bytes)
        })
        .collect();
    out.sort();
    out
}

fn fuzz_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

#[test]
fn every_seed_and_regression_still_holds() {
    let fuzz = fuzz_dir();
    let mut ran = 0;
    for (target, run) in TARGETS {
        for kind in ["seeds", "regressions"] {
            for (path, input) in files(&fuzz.join(kind).join(target)) {
                eprintln!("{path}");
                run(&input);
                ran += 1;
            }
        }
    }
    assert!(ran >= TARGETS.len(), "only {ran} inputs found");
}

#[test]
fn every_target_of_fuzz_is_replayed_here() {
    for (name, _) in files(&fuzz_dir().join("fuzz_targets")) {
        let stem = Path::new(&name).file_stem().expect("stem");
        let stem = stem.to_string_lossy();
        // The binary's file targets replay in crates/showoff/tests/fuzz_inputs.rs, the
        // inspector's capture in showoff-client's `fuzzing` tests.
        let elsewhere = ["config_file", "client_file", "inspector_capture"].contains(&&*stem);
        assert!(
            elsewhere || TARGETS.iter().any(|(target, _)| *target == stem),
            "fuzz target {stem} has no replay here"
        );
    }
}
