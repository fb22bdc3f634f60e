//! The token-usage scanner and the span's field scanner over any body, JSON or SSE, split at any
//! points: never a panic, and the same usage and fields however the body is split (the first byte
//! picks the split points).
#![no_main]
use aoai_proxy::traces::{FieldScanner, ResponseFields};
use aoai_proxy::{Usage, UsageScanner};
use libfuzzer_sys::fuzz_target;

fn scan<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> Option<Usage> {
    let mut scanner = UsageScanner::default();
    for chunk in chunks {
        scanner.feed(chunk);
    }
    scanner.usage()
}

fn fields<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> ResponseFields {
    let mut scanner = FieldScanner::default();
    for chunk in chunks {
        scanner.feed(chunk);
    }
    scanner.fields().clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, body)) = data.split_first() else { return };
    let whole = scan(std::iter::once(body));
    // Chunks of 1 to 16 bytes, in a pattern the seed picks.
    let mut chunks = Vec::new();
    let mut rest = body;
    let mut step = seed;
    while !rest.is_empty() {
        let size = usize::from(step % 16 + 1).min(rest.len());
        let (chunk, tail) = rest.split_at(size);
        chunks.push(chunk);
        rest = tail;
        step = step.wrapping_mul(31).wrapping_add(7);
    }
    assert_eq!(scan(chunks.iter().copied()), whole, "split as {:?}", chunks.iter().map(|c| c.len()).collect::<Vec<_>>());
    assert_eq!(scan(body.chunks(1)), whole, "one byte at a time");
    let whole_fields = fields(std::iter::once(body));
    assert_eq!(fields(chunks.iter().copied()), whole_fields);
    assert!(whole_fields.finish_reasons.len() <= 8);
    if let Some(usage) = whole {
        assert!(usage.input <= u64::from(u32::MAX) && usage.output <= u64::from(u32::MAX) && usage.total <= u64::from(u32::MAX));
    }
});
