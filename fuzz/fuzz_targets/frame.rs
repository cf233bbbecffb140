//! The frame reader and envelope decoder: every byte a client or peer sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paytx_protocol::frame::{decode_body, read_frame};

/// A small cap keeps each run fast; the decoder's own ceiling is what
/// `-malloc_limit_mb` checks.
const CAP: u32 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    futures::executor::block_on(async {
        let mut reader = data;
        // Every frame in the input, until the end or the first error.
        while let Ok(Some(_)) = read_frame(&mut reader, CAP).await {}
    });
    let _ = decode_body(data);
});
