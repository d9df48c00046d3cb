//! Signed tokens: the verifier on raw input, and the payload parser behind a valid signature.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| showoff_server::fuzzing::signed_token(data));
