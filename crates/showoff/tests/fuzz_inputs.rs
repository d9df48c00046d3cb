//! The seeds and regressions of the fuzz targets over the binary's files (`config_file`,
//! `client_file`), replayed through their entry points (feature `fuzzing`, on with
//! `cargo test --all-features`). The server crate's targets replay in its own test.

#![cfg(feature = "fuzzing")]

use std::path::Path;

/// A fuzz target's entry point.
type Entry = fn(&[u8]);

const TARGETS: &[(&str, Entry)] = &[
    ("config_file", showoff_cli::fuzzing::config_file),
    ("client_file", showoff_cli::fuzzing::client_file),
];

#[test]
fn the_file_targets_seeds_and_regressions_still_hold() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut ran = 0;
    for (target, run) in TARGETS {
        for kind in ["seeds", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("entry").path();
                run(&std::fs::read(&path).expect("input"));
                ran += 1;
            }
        }
    }
    assert!(ran >= 6, "only {ran} inputs");
}
