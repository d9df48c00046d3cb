//! Client config files (TOML, YAML, JSON).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| showoff_cli::fuzzing::client_file(data));
