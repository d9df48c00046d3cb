//! JWT verification, raw and correctly signed around any claims.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| showoff_server::fuzzing::jwt(data));
