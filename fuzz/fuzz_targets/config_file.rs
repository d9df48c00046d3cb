//! Server config files (TOML, YAML, JSON) through the settings layer.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| showoff_cli::fuzzing::config_file(data));
