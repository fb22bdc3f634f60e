//! The answer's `model`, `id` and `finish_reason` values, read as the body streams past, for the
//! span of a sampled request. A small JSON tokenizer: it knows whether it is inside a string, so
//! text that quotes these keys inside a message is not taken for them.

/// What a span reports of an answer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResponseFields {
    /// The first non-empty `model` (Azure's first stream chunk may carry an empty one).
    pub model: Option<String>,
    /// The first `id`: the completion's or the response's.
    pub id: Option<String>,
    /// Each distinct `finish_reason`, in order of appearance.
    pub finish_reasons: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Model,
    Id,
    FinishReason,
}

impl Key {
    fn named(name: &[u8]) -> Option<Self> {
        match name {
            b"model" => Some(Self::Model),
            b"id" => Some(Self::Id),
            b"finish_reason" => Some(Self::FinishReason),
            _ => None,
        }
    }
}

/// The longest key looked for.
const MAX_KEY: usize = b"finish_reason".len();
/// A longer value is cut: no model name, id or finish reason comes near.
const MAX_VALUE: usize = 256;
/// Distinct finish reasons kept at most (one per choice).
const MAX_REASONS: usize = 8;

enum State {
    Outside,
    InString { kind: StringKind, escaped: bool },
}

enum StringKind {
    /// A string that may be one of the keys.
    Candidate,
    /// A string that cannot be (too long so far).
    Other,
    /// The value of a key.
    Value(Key),
}

/// Between tokens: what the last ones were.
#[derive(Clone, Copy)]
enum After {
    Nothing,
    /// One of the keys, before its colon.
    Key(Key),
    /// One of the keys and its colon: a string now is its value.
    Colon(Key),
}

pub struct FieldScanner {
    state: State,
    after: After,
    buffer: Vec<u8>,
    fields: ResponseFields,
}

impl Default for FieldScanner {
    fn default() -> Self {
        Self {
            state: State::Outside,
            after: After::Nothing,
            buffer: Vec::with_capacity(MAX_KEY),
            fields: ResponseFields::default(),
        }
    }
}

impl FieldScanner {
    pub fn fields(&self) -> &ResponseFields {
        &self.fields
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        for &byte in chunk {
            self.step(byte);
        }
    }

    fn step(&mut self, byte: u8) {
        match &mut self.state {
            State::InString { kind, escaped } => {
                if *escaped {
                    *escaped = false;
                    if let StringKind::Candidate = kind {
                        // No key looked for has an escape.
                        *kind = StringKind::Other;
                    }
                    return;
                }
                match byte {
                    b'\\' => *escaped = true,
                    b'"' => {
                        let kind = std::mem::replace(kind, StringKind::Other);
                        self.state = State::Outside;
                        self.after = After::Nothing;
                        match kind {
                            StringKind::Candidate => {
                                if let Some(key) = Key::named(&self.buffer) {
                                    self.after = After::Key(key);
                                }
                            }
                            StringKind::Value(key) => self.store(key),
                            StringKind::Other => {}
                        }
                    }
                    _ => match kind {
                        StringKind::Candidate if self.buffer.len() < MAX_KEY => {
                            self.buffer.push(byte)
                        }
                        StringKind::Candidate => *kind = StringKind::Other,
                        StringKind::Value(_) if self.buffer.len() < MAX_VALUE => {
                            self.buffer.push(byte)
                        }
                        _ => {}
                    },
                }
            }
            State::Outside => match (byte, self.after) {
                (b' ' | b'\t' | b'\r' | b'\n', _) => {}
                (b':', After::Key(key)) => self.after = After::Colon(key),
                (b'"', after) => {
                    self.buffer.clear();
                    let kind = match after {
                        After::Colon(key) => StringKind::Value(key),
                        _ => StringKind::Candidate,
                    };
                    self.state = State::InString {
                        kind,
                        escaped: false,
                    };
                    self.after = After::Nothing;
                }
                _ => self.after = After::Nothing,
            },
        }
    }

    fn store(&mut self, key: Key) {
        let Ok(value) = std::str::from_utf8(&self.buffer) else {
            return;
        };
        if value.is_empty() {
            return;
        }
        let fields = &mut self.fields;
        match key {
            Key::Model if fields.model.is_none() => fields.model = Some(value.to_string()),
            Key::Id if fields.id.is_none() => fields.id = Some(value.to_string()),
            Key::FinishReason
                if fields.finish_reasons.len() < MAX_REASONS
                    && !fields.finish_reasons.iter().any(|r| r == value) =>
            {
                fields.finish_reasons.push(value.to_string())
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> ResponseFields {
        let mut scanner = FieldScanner::default();
        for chunk in chunks {
            scanner.feed(chunk);
        }
        scanner.fields().clone()
    }

    const STREAM: &str = concat!(
        "data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"say \\\"model\\\": \\\"fake\\\"\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"},{\"index\":1,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
        "data: [DONE]\n\n",
    );

    fn expected() -> ResponseFields {
        ResponseFields {
            model: Some("gpt-4o-2024-08-06".into()),
            id: Some("chatcmpl-1".into()),
            finish_reasons: vec!["stop".into(), "length".into()],
        }
    }

    #[test]
    fn a_chat_stream_gives_its_model_id_and_reasons_past_azures_empty_first_chunk() {
        assert_eq!(scan(&[STREAM.as_bytes()]), expected());
    }

    #[test]
    fn every_split_point_gives_the_same_fields() {
        let bytes = STREAM.as_bytes();
        for at in 0..bytes.len() {
            assert_eq!(
                scan(&[&bytes[..at], &bytes[at..]]),
                expected(),
                "split at {at}"
            );
        }
    }

    #[test]
    fn keys_quoted_inside_strings_and_non_string_values_are_not_taken() {
        let body = br#"{"content":"{\"model\":\"fake\"}","tools":{"model":{"type":"string"}},"id":7,"model":"real"}"#;
        let fields = scan(&[body]);
        assert_eq!(fields.model.as_deref(), Some("real"));
        assert_eq!(fields.id, None);
    }

    #[test]
    fn the_responses_api_gives_the_responses_id_and_model() {
        let body = br#"event: response.created
data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":"response","model":"gpt-4.1","status":"in_progress"}}

"#;
        let fields = scan(&[body]);
        assert_eq!(fields.id.as_deref(), Some("resp_1"));
        assert_eq!(fields.model.as_deref(), Some("gpt-4.1"));
    }

    #[test]
    fn any_bytes_leave_it_bounded() {
        let mut scanner = FieldScanner::default();
        let mut noise = Vec::new();
        for i in 0..100_000u32 {
            noise.push((i.wrapping_mul(2_654_435_761) >> 24) as u8);
        }
        noise.extend_from_slice(br#""finish_reason":""#);
        noise.extend(std::iter::repeat_n(b'x', 10_000));
        scanner.feed(&noise);
        for i in 0..20 {
            scanner.feed(format!(r#""finish_reason":"r{i}""#).as_bytes());
        }
        assert!(scanner.buffer.capacity() <= 4 * MAX_VALUE);
        assert!(scanner.fields().finish_reasons.len() <= MAX_REASONS);
    }
}
