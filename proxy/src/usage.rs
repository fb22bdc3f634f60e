//! Token usage read from response bodies as they stream past, without holding a chunk back.
//!
//! A JSON answer carries `"usage": {...}` (chat completions, embeddings, the Responses API); a
//! stream carries it in its last event when the request asked for it
//! (`stream_options.include_usage`; the Responses API's `response.completed` always does). The
//! scanner looks for the `"usage"` key in each chunk (memchr's SIMD search, the few bytes around a
//! chunk boundary included), copies the object that follows (at most [`MAX_USAGE_OBJECT`] bytes)
//! and parses it when it closes. The last object found wins.

use std::sync::Arc;
use std::time::Instant;

use memchr::memmem;
use serde::Deserialize;

use crate::metrics::DeploymentMeters;

const KEY: &[u8] = b"\"usage\"";
/// The key's searcher, built once (`memmem::find` builds one per call).
static FINDER: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(KEY));
/// A usage object larger than this is not one.
const MAX_USAGE_OBJECT: usize = 4096;

/// Tokens one answer used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub total: u64,
}

/// Both vocabularies: chat completions and embeddings (`prompt_tokens`, `completion_tokens`), the
/// Responses and Realtime APIs (`input_tokens`, `output_tokens`).
#[derive(Deserialize)]
struct UsageObject {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    total_tokens: Option<u64>,
}

/// No answer uses more tokens than this: a larger count is not a token count, and adding it would
/// wrap the counters.
const MAX_TOKENS: u64 = u32::MAX as u64;

impl UsageObject {
    fn usage(self) -> Option<Usage> {
        let input = self.prompt_tokens.or(self.input_tokens);
        let output = self.completion_tokens.or(self.output_tokens);
        if input.is_none() && output.is_none() && self.total_tokens.is_none() {
            return None;
        }
        let (input, output) = (input.unwrap_or(0), output.unwrap_or(0));
        let total = self.total_tokens.unwrap_or(input.saturating_add(output));
        (input <= MAX_TOKENS && output <= MAX_TOKENS && total <= MAX_TOKENS).then_some(Usage {
            input,
            output,
            total,
        })
    }
}

/// Counts a response's tokens (and, for a stream, its time to first token) into its
/// deployment's meters.
pub struct UsageMeter {
    scanner: UsageScanner,
    meters: Arc<DeploymentMeters>,
    /// For a stream, when the request arrived, until its first chunk.
    stream_started: Option<Instant>,
}

impl UsageMeter {
    pub fn new(meters: Arc<DeploymentMeters>, stream_started: Option<Instant>) -> Self {
        Self {
            scanner: UsageScanner::default(),
            meters,
            stream_started,
        }
    }

    /// What the answer said it used, so far.
    pub fn usage(&self) -> Option<Usage> {
        self.scanner.usage()
    }

    pub fn chunk(&mut self, chunk: &[u8]) {
        if let Some(started) = self.stream_started.take() {
            self.meters
                .time_to_first_token
                .observe(started.elapsed().as_secs_f64());
        }
        self.scanner.feed(chunk);
    }
}

impl Drop for UsageMeter {
    /// At the end of the body, or when the caller went away: what was seen is what was used.
    fn drop(&mut self) {
        if let Some(usage) = self.scanner.usage() {
            self.meters.input.inc_by(usage.input);
            self.meters.output.inc_by(usage.output);
            self.meters.total.inc_by(usage.total);
        }
    }
}

/// Whether a response of this content type can carry usage (JSON or an SSE stream), and whether
/// it is a stream.
pub fn metered(content_type: &[u8]) -> Option<bool> {
    let essence = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default();
    let essence = essence.trim_ascii();
    if essence.eq_ignore_ascii_case(b"text/event-stream") {
        Some(true)
    } else if essence.eq_ignore_ascii_case(b"application/json") {
        Some(false)
    } else {
        None
    }
}

/// Where the scanner is.
enum State {
    /// Looking for the key.
    Searching,
    /// After the key: whitespace, then `:`.
    Colon,
    /// After the colon: whitespace, then `{` (anything else, `null` included, is not usage).
    Value,
    /// Inside the object (depth counts its open braces).
    Object {
        depth: u32,
        in_string: bool,
        escaped: bool,
    },
}

/// Finds the usage in a body fed chunk by chunk. However the body is split, the result is the
/// same as for the whole body at once (the fuzz target `usage_scanner` checks it): the bytes at a
/// chunk's edge are kept, and every limit counts bytes of the body, not of a chunk.
pub struct UsageScanner {
    state: State,
    /// The body's last bytes (up to the key's length): a key that began in the previous chunk,
    /// and the byte before it (a backslash makes it text inside a string).
    tail: [u8; KEY.len()],
    tail_len: usize,
    /// Bytes of the body fed so far.
    fed: u64,
    /// Where the current search began, as an offset in the body: bytes before it were read as
    /// part of a key or an object already.
    search_from: u64,
    object: Vec<u8>,
    found: Option<Usage>,
}

impl Default for UsageScanner {
    fn default() -> Self {
        Self {
            state: State::Searching,
            tail: [0; KEY.len()],
            tail_len: 0,
            fed: 0,
            search_from: 0,
            object: Vec::new(),
            found: None,
        }
    }
}

impl UsageScanner {
    /// The usage found so far (the last complete object).
    pub fn usage(&self) -> Option<Usage> {
        self.found
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        let mut at = 0;
        while at < chunk.len() {
            at = match self.state {
                State::Searching => match self.find_key(chunk, at) {
                    Some(after) => {
                        self.state = State::Colon;
                        after
                    }
                    None => break,
                },
                _ => {
                    let next = self.step(chunk, at);
                    if matches!(self.state, State::Searching) {
                        self.search_from = self.fed + next as u64;
                    }
                    next
                }
            };
        }
        self.remember(chunk);
        self.fed += chunk.len() as u64;
    }

    /// The offset just past the next key in `chunk` from `from`: at a chunk's start, a key may
    /// begin in the kept tail of the previous one.
    fn find_key(&self, chunk: &[u8], from: usize) -> Option<usize> {
        if from == 0 && self.tail_len > 0 {
            let kept = self.tail_len;
            let head = chunk.len().min(KEY.len() - 1);
            let mut window = [0u8; 2 * KEY.len()];
            window[..kept].copy_from_slice(&self.tail[..kept]);
            window[kept..kept + head].copy_from_slice(&chunk[..head]);
            let window = &window[..kept + head];
            let window_start = self.fed - kept as u64;
            // Every start, overlapping ones included (`find_iter` would skip a key that begins
            // in the closing quote of an escaped one).
            let starts = (0..=window.len().saturating_sub(KEY.len()))
                .filter(|&at| window[at..].starts_with(KEY));
            for found in starts {
                // A key wholly in the tail was the previous chunk's to find.
                let reaches_chunk = found + KEY.len() > kept;
                let searched = window_start + found as u64 >= self.search_from;
                // Without a byte before it, the key starts the body (the tail holds it all).
                let escaped = found > 0 && window[found - 1] == b'\\';
                if reaches_chunk && searched && !escaped {
                    return Some(found + KEY.len() - kept);
                }
            }
        }
        let mut search = from;
        while let Some(found) = FINDER.find(&chunk[search..]) {
            let start = search + found;
            let before = match start {
                0 => self.tail[..self.tail_len].last().copied(),
                _ => Some(chunk[start - 1]),
            };
            // `\"usage\"` is text inside a string, not a key.
            if before != Some(b'\\') {
                return Some(start + KEY.len());
            }
            search = start + 1;
        }
        None
    }

    /// Keeps the body's last bytes: the old tail and `chunk` together.
    fn remember(&mut self, chunk: &[u8]) {
        let max = KEY.len();
        if chunk.len() >= max {
            self.tail.copy_from_slice(&chunk[chunk.len() - max..]);
            self.tail_len = max;
        } else {
            let old = self.tail_len.min(max - chunk.len());
            self.tail.copy_within(self.tail_len - old..self.tail_len, 0);
            self.tail[old..old + chunk.len()].copy_from_slice(chunk);
            self.tail_len = old + chunk.len();
        }
    }

    /// Past the key: the colon, the value's start, or (inside the object) as far as the object
    /// goes in this chunk. Returns the next offset.
    fn step(&mut self, chunk: &[u8], at: usize) -> usize {
        let byte = chunk[at];
        match self.state {
            State::Searching => unreachable!("searching is handled by find_key"),
            State::Colon => match byte {
                b' ' | b'\t' | b'\r' | b'\n' => {}
                b':' => self.state = State::Value,
                _ => self.state = State::Searching,
            },
            State::Value => match byte {
                b' ' | b'\t' | b'\r' | b'\n' => {}
                b'{' => {
                    if let Some(end) = self.parse_whole(chunk, at) {
                        return end;
                    }
                    self.object.clear();
                    self.state = State::Object {
                        depth: 0,
                        in_string: false,
                        escaped: false,
                    };
                    return self.object_part(chunk, at);
                }
                _ => self.state = State::Searching,
            },
            State::Object { .. } => return self.object_part(chunk, at),
        }
        at + 1
    }

    /// The offset past an object that lies whole in `chunk` from `at` (the usual case), parsed
    /// where it lies in one pass. `None` when it does not end in this chunk within
    /// [`MAX_USAGE_OBJECT`] bytes, or is not valid JSON: [`Self::object_part`] then follows it
    /// brace by brace, as it follows an object split across chunks.
    fn parse_whole(&mut self, chunk: &[u8], at: usize) -> Option<usize> {
        let limit = chunk.len().min(at + MAX_USAGE_OBJECT);
        let mut objects =
            serde_json::Deserializer::from_slice(&chunk[at..limit]).into_iter::<UsageObject>();
        let object = objects.next()?.ok()?;
        if let Some(usage) = object.usage() {
            self.found = Some(usage);
        }
        self.state = State::Searching;
        Some(at + objects.byte_offset())
    }

    /// Follows the object from `at` to its closing brace, the end of the chunk, or its
    /// [`MAX_USAGE_OBJECT`]th byte (then it is not usage, and the search goes on from there). An
    /// object within one chunk is parsed where it lies; one split across chunks is copied.
    fn object_part(&mut self, chunk: &[u8], at: usize) -> usize {
        let State::Object {
            mut depth,
            mut in_string,
            mut escaped,
        } = self.state
        else {
            unreachable!("called inside an object")
        };
        let allowed = MAX_USAGE_OBJECT - self.object.len();
        let limit = chunk.len().min(at + allowed);
        // From one byte that matters to the next (memchr's SIMD search), not byte by byte.
        let mut end = None;
        let mut position = at;
        while position < limit {
            let rest = &chunk[position..limit];
            if in_string {
                if escaped {
                    escaped = false;
                    position += 1;
                    continue;
                }
                let Some(found) = memchr::memchr2(b'"', b'\\', rest) else {
                    break;
                };
                if rest[found] == b'\\' {
                    escaped = true;
                } else {
                    in_string = false;
                }
                position += found + 1;
                continue;
            }
            let Some(found) = memchr::memchr3(b'"', b'{', b'}', rest) else {
                break;
            };
            position += found + 1;
            match rest[found] {
                b'"' => in_string = true,
                b'{' => depth += 1,
                _ => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(position);
                        break;
                    }
                }
            }
        }
        let Some(end) = end else {
            if limit < chunk.len() {
                // Past the limit inside this chunk: not usage.
                self.object = Vec::new();
                self.state = State::Searching;
                return limit;
            }
            self.object.extend_from_slice(&chunk[at..]);
            self.state = State::Object {
                depth,
                in_string,
                escaped,
            };
            return chunk.len();
        };
        let object = if self.object.is_empty() {
            &chunk[at..end]
        } else {
            self.object.extend_from_slice(&chunk[at..end]);
            &self.object[..]
        };
        if let Ok(object) = serde_json::from_slice::<UsageObject>(object)
            && let Some(usage) = object.usage()
        {
            self.found = Some(usage);
        }
        self.object = Vec::new();
        self.state = State::Searching;
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> Option<Usage> {
        let mut scanner = UsageScanner::default();
        for chunk in chunks {
            scanner.feed(chunk);
        }
        scanner.usage()
    }

    const CHAT: &str = r#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":0}}}"#;

    #[test]
    fn a_json_answer_in_one_chunk() {
        let wanted = Usage {
            input: 5,
            output: 7,
            total: 12,
        };
        assert_eq!(scan(&[CHAT.as_bytes()]), Some(wanted));
    }

    #[test]
    fn every_split_point_gives_the_same_usage() {
        let bytes = CHAT.as_bytes();
        for split in 0..bytes.len() {
            let (a, b) = bytes.split_at(split);
            assert_eq!(
                scan(&[a, b]),
                Some(Usage {
                    input: 5,
                    output: 7,
                    total: 12
                }),
                "split at {split}"
            );
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(scan(&bytes).map(|u| u.total), Some(12));
    }

    #[test]
    fn strings_inside_the_object_may_hold_braces_and_escapes_at_any_split() {
        let text = r#"{"usage":{"note":"a\"}{b\\","total_tokens":3,"input_tokens":1}}"#.as_bytes();
        for split in 0..text.len() {
            let (a, b) = text.split_at(split);
            assert_eq!(
                scan(&[a, b]),
                Some(Usage {
                    input: 1,
                    output: 0,
                    total: 3
                }),
                "split at {split}"
            );
        }
    }

    #[test]
    fn a_stream_with_null_usage_until_its_usage_chunk() {
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}],\"usage\": null}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n",
            "data: [DONE]\n\n",
        );
        assert_eq!(
            scan(&[stream.as_bytes()]),
            Some(Usage {
                input: 9,
                output: 2,
                total: 11
            })
        );
    }

    #[test]
    fn the_responses_api_vocabulary() {
        let event = r#"event: response.completed
data: {"type":"response.completed","response":{"id":"r","usage":{"input_tokens":3,"output_tokens":4,"total_tokens":7,"output_tokens_details":{"reasoning_tokens":0}}}}"#;
        assert_eq!(
            scan(&[event.as_bytes()]),
            Some(Usage {
                input: 3,
                output: 4,
                total: 7
            })
        );
        let embeddings = r#"{"data":[],"usage":{"prompt_tokens":2,"total_tokens":2}}"#;
        assert_eq!(
            scan(&[embeddings.as_bytes()]),
            Some(Usage {
                input: 2,
                output: 0,
                total: 2
            })
        );
    }

    /// Whatever the body, every split gives what the whole gives (the fuzz target checks this on
    /// random bodies; these are the cases it found or that sit on an edge).
    #[test]
    fn every_split_of_odd_bodies_gives_what_the_whole_gives() {
        let found_by_the_fuzzer: &[u8] = b"\":{#content\"\";4,\xde\x9c}],\"usage\"usage\":{NE]\x00:\"a\xff\xffa: {\xff[],\"usage\":{\"prompt_tokens\":2,\"total_tokens\":11}}\n\ndata: [DONE]\n\n";
        let escaped_at_the_edge: &[u8] =
            br#"{"a":"x\"usage\":{\"total_tokens\":5}","usage":{"total_tokens":3}}"#;
        let mut too_large = br#"{"usage":{"note":""#.to_vec();
        too_large.extend(std::iter::repeat_n(b'x', MAX_USAGE_OBJECT));
        too_large.extend(br#""},"usage":{"total_tokens":4}}"#);
        let overlapping_an_escaped_key: &[u8] = b"{\"id\":\x94\x00\"tent\":\"hi \\\"usage\"usage\":{\"pr?om\x8b\x8b\x8b\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":12}}\nt DaNE]\n\x8b\x8bpt_tosega\":{0}}}";
        for body in [
            found_by_the_fuzzer,
            escaped_at_the_edge,
            &too_large,
            overlapping_an_escaped_key,
        ] {
            let whole = scan(&[body]);
            for split in 0..body.len() {
                let (a, b) = body.split_at(split);
                assert_eq!(scan(&[a, b]), whole, "split at {split}");
            }
            let bytes: Vec<&[u8]> = body.chunks(1).collect();
            assert_eq!(scan(&bytes), whole, "byte by byte");
        }
        assert_eq!(scan(&[escaped_at_the_edge]).map(|u| u.total), Some(3));
        assert_eq!(scan(&[&too_large]).map(|u| u.total), Some(4));
    }

    #[test]
    fn text_that_mentions_usage_is_not_usage() {
        let text = r#"{"choices":[{"message":{"content":"the \"usage\":{\"total_tokens\":999} field"}}],"note":"usage"}"#;
        assert_eq!(scan(&[text.as_bytes()]), None);
        let huge = r#"{"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":18446744073709551615}}"#;
        assert_eq!(scan(&[huge.as_bytes()]), None);
        let audio = r#"{"text":"x","usage":{"type":"duration","seconds":1.5}}"#;
        assert_eq!(scan(&[audio.as_bytes()]), None);
        assert_eq!(scan(&[b"\"usage\":{\"total_tokens\":", b"1"]), None);
    }
}
