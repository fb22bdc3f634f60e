//! Log output: human-readable text by default, JSON lines when `AOAI_PROXY_LOG_FORMAT=json`.
//!
//! Request lines ([`access`]) are one per forwarded request, so they skip tracing-subscriber's
//! general formatter, which cost about 8,000 instructions a line, 17 % of the proxy's work per
//! request (`scripts/bench --instructions`). They are written byte for byte as that formatter
//! would write them (a test holds the two together), so log pipelines see no difference.
//!
//! Request lines are buffered and written together ([`flush_access_log`]) at least once a second,
//! when 64 KiB are waiting, and at shutdown, as Envoy writes its access logs: one `write` for many
//! lines instead of one per request, and none between reading the upstream's answer and sending
//! it on.

use std::io::{IsTerminal, Write};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use serde::Serialize;
use tracing::Level;
use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, LogFormat};
use crate::usage::Usage;

/// The target of request lines, for filters such as `info,aoai_proxy::access=off`.
pub const ACCESS_TARGET: &str = "aoai_proxy::access";

/// Buffered request lines are written out once this much is waiting.
const ACCESS_BUFFER_BYTES: usize = 64 * 1024;

/// Request lines not written yet; see [`flush_access_log`].
static ACCESS_BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// How request lines are written by [`access`]; unset (request lines go through tracing) until
/// [`init`] installs uncoloured output.
static ACCESS_FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Installs the global subscriber writing to stdout. Fails on a malformed level or filter, naming
/// `variable` (where the level came from).
pub fn init(variable: &'static str, level: &str, format: LogFormat) -> Result<(), ConfigError> {
    let filter = EnvFilter::try_new(level).map_err(|e| ConfigError {
        variable,
        message: format!("{level:?} is not a log level or filter: {e}"),
    })?;
    let ansi = std::io::stdout().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stdout);
    // A second initialisation (tests running several proxies in one process) keeps the first.
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if installed.is_ok() && !ansi {
        let _ = ACCESS_FORMAT.set(format);
    }
    Ok(())
}

/// One request as its line tells it.
pub struct Exchange<'a> {
    pub method: &'a Method,
    /// The path, never the query.
    pub path: &'a str,
    pub status: u16,
    /// From the request's arrival to the answer's last byte (or the caller leaving).
    pub duration: Duration,
    /// The backend that answered (`host[:port]`), for an upstream's answer.
    pub backend: Option<&'a str>,
    /// The deployment the path names.
    pub deployment: Option<&'a str>,
    /// The tokens the answer says it used.
    pub usage: Option<Usage>,
}

/// Whether request lines are written: a caller may then skip what only the line needs.
pub fn access_enabled() -> bool {
    tracing::enabled!(target: ACCESS_TARGET, Level::INFO)
}

/// Logs one request at info: method, path, status, duration, and where known the backend, the
/// deployment and the tokens used. Never the query, a header or a body.
pub fn access(exchange: &Exchange) {
    if !access_enabled() {
        return;
    }
    let Exchange {
        method,
        path,
        status,
        duration,
        backend,
        deployment,
        usage,
    } = *exchange;
    // Microsecond resolution: exact in decimal (`0.412`, not `0.41233699999999996`), and written
    // without formatting a float.
    let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    let duration_ms = micros as f64 / 1000.0;
    // Anything but printable ASCII (possible in a path) is escaped by tracing-subscriber; leave
    // those rare lines to it.
    let plain = [Some(path), backend, deployment]
        .iter()
        .flatten()
        .all(|text| text.bytes().all(|b| b.is_ascii_graphic()));
    match ACCESS_FORMAT.get() {
        Some(&format) if plain => {
            let timestamp = Timestamp::from(SystemTime::now());
            let line = AccessLine {
                timestamp: timestamp.as_str(),
                level: "INFO",
                message: "request",
                method: method.as_str(),
                path,
                status,
                duration_ms,
                backend,
                deployment,
                input_tokens: usage.map(|u| u.input),
                output_tokens: usage.map(|u| u.output),
                total_tokens: usage.map(|u| u.total),
                micros,
            };
            let mut buffer = access_buffer();
            line.write(format, &mut buffer);
            if buffer.len() >= ACCESS_BUFFER_BYTES {
                write_out(&mut buffer);
            }
        }
        _ => {
            // After the lines before it.
            flush_access_log();
            tracing::info!(
                target: ACCESS_TARGET,
                method = %method,
                path = %path,
                status,
                duration_ms,
                backend = backend.map(tracing::field::display),
                deployment = deployment.map(tracing::field::display),
                input_tokens = usage.map(|u| u.input),
                output_tokens = usage.map(|u| u.output),
                total_tokens = usage.map(|u| u.total),
                "request"
            )
        }
    }
}

/// Writes the buffered request lines. The server calls it every second and when it stops.
pub fn flush_access_log() {
    let mut buffer = access_buffer();
    if !buffer.is_empty() {
        write_out(&mut buffer);
    }
}

fn access_buffer() -> MutexGuard<'static, Vec<u8>> {
    // A panic while the lock was held left at worst a partial line: keep logging.
    ACCESS_BUFFER.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes `buffer` to stdout, whole lines in one `write` where the pipe allows; a failed log write
/// is not an error.
fn write_out(buffer: &mut Vec<u8>) {
    let _ = std::io::stdout().lock().write_all(buffer);
    buffer.clear();
}

/// One request line. Its fields in tracing-subscriber's order for [`access`]'s event, which is
/// also its JSON layout with `flatten_event`: timestamp, level, message, then the fields; a field
/// that is `None` is not written.
#[derive(Serialize)]
struct AccessLine<'a> {
    timestamp: &'a str,
    level: &'static str,
    message: &'static str,
    method: &'a str,
    path: &'a str,
    status: u16,
    duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deployment: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total_tokens: Option<u64>,
    /// `duration_ms` in microseconds, for the text line.
    #[serde(skip)]
    micros: u64,
}

impl AccessLine<'_> {
    fn write(&self, format: LogFormat, out: &mut Vec<u8>) {
        match format {
            LogFormat::Text => {
                // Pieces appended directly: `write!` costs more than the copies themselves.
                for piece in [
                    self.timestamp,
                    "  ",
                    self.level,
                    " ",
                    self.message,
                    " method=",
                    self.method,
                    " path=",
                    self.path,
                    " status=",
                ] {
                    out.extend_from_slice(piece.as_bytes());
                }
                write_decimal(out, self.status);
                out.extend_from_slice(b" duration_ms=");
                write_millis(out, self.micros);
                for (name, value) in [
                    (" backend=", self.backend),
                    (" deployment=", self.deployment),
                ] {
                    if let Some(value) = value {
                        out.extend_from_slice(name.as_bytes());
                        out.extend_from_slice(value.as_bytes());
                    }
                }
                for (name, value) in [
                    (" input_tokens=", self.input_tokens),
                    (" output_tokens=", self.output_tokens),
                    (" total_tokens=", self.total_tokens),
                ] {
                    if let Some(value) = value {
                        out.extend_from_slice(name.as_bytes());
                        write_decimal(out, value);
                    }
                }
                out.push(b'\n');
            }
            LogFormat::Json => {
                let _ = serde_json::to_writer(&mut *out, self);
                out.push(b'\n');
            }
        }
    }
}

/// `value` in decimal, as `{}` writes it.
fn write_decimal(out: &mut Vec<u8>, value: impl Into<u64>) {
    let mut value: u64 = value.into();
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// `micros / 1000` as `{:?}` writes the `f64` `micros as f64 / 1000.0`. Below 2^40 µs (12 days)
/// floats are closer together than 0.001, so that float is the one nearest this decimal of at
/// most three places and the decimal is its shortest form.
fn write_millis(out: &mut Vec<u8>, micros: u64) {
    if micros >= 1 << 40 {
        let _ = write!(out, "{:?}", micros as f64 / 1000.0);
        return;
    }
    write_decimal(out, micros / 1000);
    let fraction = micros % 1000;
    let digits = [
        b'.',
        b'0' + (fraction / 100) as u8,
        b'0' + (fraction / 10 % 10) as u8,
        b'0' + (fraction % 10) as u8,
    ];
    // Trailing zeros dropped, one kept: `.0`, `.5`, `.25`, `.125`.
    let mut len = digits.len();
    while len > 2 && digits[len - 1] == b'0' {
        len -= 1;
    }
    out.extend_from_slice(&digits[..len]);
}

/// A UTC time as tracing-subscriber writes it: `2026-11-23T11:30:00.123456Z` (RFC 3339, µs).
struct Timestamp([u8; 27]);

impl From<SystemTime> for Timestamp {
    fn from(time: SystemTime) -> Self {
        let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let seconds = since_epoch.as_secs();
        let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
        let of_day = seconds % 86_400;
        let mut text = *b"0000-00-00T00:00:00.000000Z";
        let mut put = |at: usize, width: usize, mut value: u64| {
            for i in (at..at + width).rev() {
                text[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        // Years past 9999 do not occur before this code is long retired.
        put(0, 4, year.clamp(0, 9999) as u64);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, of_day / 3600);
        put(14, 2, of_day / 60 % 60);
        put(17, 2, of_day % 60);
        put(20, 6, u64::from(since_epoch.subsec_micros()));
        Timestamp(text)
    }
}

impl Timestamp {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a timestamp is ASCII digits and separators")
    }
}

/// Year, month and day of the `days`th day after 1970-01-01 (proleptic Gregorian calendar;
/// Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u64;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u64;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// One case: method, path, status, microseconds, backend, deployment, usage.
    type Case = (
        Method,
        &'static str,
        u16,
        u64,
        Option<&'static str>,
        Option<&'static str>,
        Option<Usage>,
    );

    fn exchange(case: &Case) -> Exchange<'_> {
        let (method, path, status, micros, backend, deployment, usage) = case;
        Exchange {
            method,
            path,
            status: *status,
            duration: Duration::from_micros(*micros),
            backend: *backend,
            deployment: *deployment,
            usage: *usage,
        }
    }

    /// The line tracing-subscriber writes for `access`'s event, configured as `init` does (the
    /// fast path is not installed in tests, so `access` goes through tracing).
    fn tracing_line(format: LogFormat, case: &Case) -> String {
        let captured = Captured::default();
        let builder = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("info"))
            .with_target(false)
            .with_ansi(false)
            .with_writer(captured.clone());
        let emit = || access(&exchange(case));
        match format {
            LogFormat::Text => tracing::subscriber::with_default(builder.finish(), emit),
            LogFormat::Json => {
                tracing::subscriber::with_default(builder.json().flatten_event(true).finish(), emit)
            }
        }
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    fn fast_line(format: LogFormat, case: &Case) -> String {
        let (method, path, status, micros, backend, deployment, usage) = case;
        let timestamp = Timestamp::from(SystemTime::now());
        let line = AccessLine {
            timestamp: timestamp.as_str(),
            level: "INFO",
            message: "request",
            method: method.as_str(),
            path,
            status: *status,
            duration_ms: *micros as f64 / 1000.0,
            backend: *backend,
            deployment: *deployment,
            input_tokens: usage.map(|u| u.input),
            output_tokens: usage.map(|u| u.output),
            total_tokens: usage.map(|u| u.total),
            micros: *micros,
        };
        let mut out = Vec::new();
        line.write(format, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// The line with its timestamp (the first 27 characters, or JSON's first value) blanked.
    fn without_timestamp(line: &str) -> String {
        match line.strip_prefix("{\"timestamp\":\"") {
            Some(rest) => format!("{{\"timestamp\":\"T{}", &rest[27..]),
            None => format!("T{}", &line[27..]),
        }
    }

    #[test]
    fn durations_are_written_as_debug_writes_them() {
        let mut micros = vec![
            0, 1, 9, 10, 99, 100, 101, 999, 1000, 1001, 1010, 1100, 123_456,
        ];
        micros.extend((0..=19).map(|e| 10u64.pow(e)));
        micros.extend([(1 << 40) - 1, 1 << 40, u64::MAX]);
        let mut rng = fastrand::Rng::with_seed(7);
        micros.extend((0..100_000).map(|_| rng.u64(0..100_000_000_000)));
        micros.extend((0..100_000).map(|_| rng.u64(..)));
        for micros in micros {
            let mut written = Vec::new();
            write_millis(&mut written, micros);
            let expected = format!("{:?}", micros as f64 / 1000.0);
            assert_eq!(String::from_utf8(written).unwrap(), expected, "{micros} µs");
        }
    }

    #[test]
    fn request_lines_are_written_as_tracing_subscriber_writes_them() {
        let usage = Some(Usage {
            input: 12,
            output: 345,
            total: 357,
        });
        let chat = "/openai/deployments/gpt-4o/chat/completions";
        let cases: [Case; 12] = [
            (
                Method::POST,
                chat,
                200,
                412,
                Some("r.openai.azure.com"),
                Some("gpt-4o"),
                usage,
            ),
            (
                Method::POST,
                chat,
                200,
                412,
                Some("10.0.0.7:8443"),
                Some("gpt-4o"),
                None,
            ),
            (
                Method::POST,
                "/openai/v1/responses",
                200,
                9,
                Some("r.openai.azure.com"),
                None,
                usage,
            ),
            (Method::POST, chat, 429, 77, None, Some("gpt-4o"), None),
            (Method::GET, "/health", 503, 1000, None, None, None),
            (
                Method::DELETE,
                "/a\"quoted\\path{x}",
                404,
                0,
                None,
                None,
                None,
            ),
            (
                Method::from_bytes(b"PURGE").unwrap(),
                "/",
                101,
                12_345_678,
                None,
                None,
                None,
            ),
            (Method::PUT, "/x", 502, 1, None, None, None),
            (
                Method::PATCH,
                "/x",
                200,
                3_000_000_000_000_000,
                None,
                None,
                None,
            ),
            (Method::GET, "/x", 0, 500, None, None, None),
            (Method::GET, "/x", 9, 120, None, None, None),
            (
                Method::GET,
                "/x",
                65_535,
                1_234_560,
                None,
                None,
                Some(Usage {
                    input: 0,
                    output: u64::from(u32::MAX),
                    total: 0,
                }),
            ),
        ];
        for format in [LogFormat::Text, LogFormat::Json] {
            for case in &cases {
                let expected = tracing_line(format, case);
                let fast = fast_line(format, case);
                assert_eq!(
                    without_timestamp(&fast),
                    without_timestamp(&expected),
                    "{format:?} {} {}",
                    case.0,
                    case.1
                );
            }
        }
        let line = tracing_line(LogFormat::Text, &cases[0]);
        assert!(
            line.ends_with(" backend=r.openai.azure.com deployment=gpt-4o input_tokens=12 output_tokens=345 total_tokens=357\n"),
            "{line}"
        );
    }

    #[test]
    fn request_lines_follow_the_log_filter() {
        let lines = |filter: &str| {
            let captured = Captured::default();
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(EnvFilter::new(filter))
                .with_ansi(false)
                .with_writer(captured.clone())
                .finish();
            tracing::subscriber::with_default(subscriber, || {
                access(&Exchange {
                    method: &Method::GET,
                    path: "/x",
                    status: 200,
                    duration: Duration::from_millis(1),
                    backend: None,
                    deployment: None,
                    usage: None,
                });
                tracing::info!("another line");
            });
            String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
        };
        let all = lines("info");
        assert!(
            all.contains("request method=GET path=/x status=200"),
            "{all}"
        );
        let without = lines("info,aoai_proxy::access=off");
        assert!(!without.contains("request method"), "{without}");
        assert!(without.contains("another line"), "{without}");
        assert!(lines("warn").is_empty());
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let at = |secs: u64, micros: u64| {
            Timestamp::from(UNIX_EPOCH + Duration::from_micros(secs * 1_000_000 + micros))
                .as_str()
                .to_owned()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_795_433_400, 123_456), "2026-11-23T11:30:00.123456Z");
        assert_eq!(at(4_102_444_799, 999_999), "2099-12-31T23:59:59.999999Z");
    }
}
