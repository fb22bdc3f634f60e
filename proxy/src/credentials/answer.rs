//! An identity endpoint's answer, read without trusting it: Entra ID's token endpoint, IMDS and
//! App Service's managed-identity endpoint each spell the token's lifetime their own way, and a
//! proxy or a bug in between may send anything.

use std::time::Duration;

use aoai_proxy_contract::config::OneLine;
use http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::certificate::unix_now;
use super::{AcquireError, Acquired};

/// The longest lifetime believed. Tokens live hours (a day for managed identity, a little more
/// with continuous access evaluation); a longer claim is taken as this, so the token is still
/// refreshed in time, and no later instant is computed from an absurd number.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(48 * 3600);

/// The most of an error description kept: it ends up in logs and in `/health`.
const MAX_DESCRIPTION: usize = 300;

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    #[serde(default, deserialize_with = "seconds")]
    expires_in: Option<i64>,
    #[serde(default, deserialize_with = "timestamp")]
    expires_on: Option<i64>,
    #[serde(default, deserialize_with = "seconds")]
    refresh_in: Option<i64>,
}

#[derive(Deserialize, Default)]
struct ErrorResponse {
    error: Option<Value>,
    error_description: Option<String>,
    message: Option<String>,
}

/// Turns an identity endpoint's answer into a token or an error naming Azure's code.
pub fn parse_token_answer(
    endpoint: &str,
    status: StatusCode,
    body: &[u8],
) -> Result<Acquired, AcquireError> {
    if !status.is_success() {
        return Err(rejected(endpoint, status, body));
    }
    let malformed = |message: &str| AcquireError::Malformed {
        endpoint: endpoint.to_string(),
        message: message.to_string(),
    };
    let parsed: TokenResponse = serde_json::from_slice(body).map_err(|_| malformed("not JSON"))?;
    let access_token = parsed
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| malformed("no access_token"))?;
    let lifetime = match (parsed.expires_in, parsed.expires_on) {
        (Some(seconds), _) => seconds,
        (None, Some(on)) => on.saturating_sub(unix_now()),
        (None, None) => return Err(malformed("neither expires_in nor expires_on")),
    };
    if lifetime <= 0 {
        return Err(malformed(&format!(
            "the token expires immediately (lifetime {lifetime}s)"
        )));
    }
    let lifetime = Duration::from_secs(lifetime as u64).min(MAX_TOKEN_LIFETIME);
    let refresh_in = parsed
        .refresh_in
        .filter(|r| *r > 0)
        .map(|r| Duration::from_secs(r as u64))
        .filter(|r| *r < lifetime);
    Ok(Acquired {
        access_token,
        lifetime,
        refresh_in,
    })
}

/// The error an endpoint answered with: its code, and the first line of its description.
fn rejected(endpoint: &str, status: StatusCode, body: &[u8]) -> AcquireError {
    let parsed: ErrorResponse = serde_json::from_slice(body).unwrap_or_default();
    let error = match parsed.error {
        Some(Value::String(code)) => code,
        Some(Value::Object(object)) => object
            .get("code")
            .and_then(|c| c.as_str())
            .unwrap_or("error")
            .to_string(),
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    // Entra ID appends trace and correlation ids on further lines; the first line says it all.
    let description = parsed
        .error_description
        .or(parsed.message)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    let first_line = description.lines().next().unwrap_or_default().trim();
    AcquireError::Rejected {
        endpoint: endpoint.to_string(),
        status: status.as_u16(),
        error: printable(&error),
        description: printable(first_line),
    }
}

/// What the endpoint said, as it can stand in one line of a log: escaped, then cut.
fn printable(text: &str) -> String {
    truncate(&OneLine(text).to_string(), MAX_DESCRIPTION).to_string()
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A count of seconds as the endpoints send it: a JSON number (whole or not), or one in a string
/// (IMDS, App Service). Anything else is absent.
fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(Option::<Value>::deserialize(d)?.as_ref().and_then(number))
}

/// `expires_on`: Unix seconds as [`seconds`] reads them, or the date string of App Service's
/// 2017-09-01 API.
fn timestamp<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(Option::<Value>::deserialize(d)?
        .as_ref()
        .and_then(|value| number(value).or_else(|| value.as_str().and_then(app_service_date))))
}

fn number(value: &Value) -> Option<i64> {
    let from_float = |f: f64| f.is_finite().then_some(f as i64);
    match value {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_u64().map(|_| i64::MAX))
            .or_else(|| n.as_f64().and_then(from_float)),
        Value::String(text) => {
            let text = text.trim();
            text.parse::<i64>()
                .ok()
                .or_else(|| text.parse::<f64>().ok().and_then(from_float))
        }
        _ => None,
    }
}

/// App Service's older date form, `M/D/YYYY H:MM:SS [AM|PM] +HH:MM` (for example
/// `09/14/2017 00:00:00 PM +00:00`), as Unix seconds. The hour is read on a 24-hour clock, PM adds
/// twelve to a morning hour and AM makes 12 midnight, as the Azure SDKs read it.
pub fn app_service_date(text: &str) -> Option<i64> {
    let mut words = text.split_ascii_whitespace();
    let (date, time) = (words.next()?, words.next()?);
    let mut word = words.next()?;
    let meridiem = if word.eq_ignore_ascii_case("AM") || word.eq_ignore_ascii_case("PM") {
        let pm = word.eq_ignore_ascii_case("PM");
        word = words.next()?;
        Some(pm)
    } else {
        None
    };
    if words.next().is_some() {
        return None;
    }
    let [month, day, year] = fields(date, '/')?;
    let [mut hour, minute, second] = fields(time, ':')?;
    match meridiem {
        Some(true) if hour < 12 => hour += 12,
        Some(false) if hour == 12 => hour = 0,
        _ => {}
    }
    let (sign, offset) = match word.split_at_checked(1)? {
        ("+", rest) => (1, rest),
        ("-", rest) => (-1, rest),
        _ => return None,
    };
    let [offset_hours, offset_minutes] = fields(offset, ':')?;
    let date = time::Date::from_calendar_date(
        i32::from(year),
        time::Month::try_from(u8::try_from(month).ok()?).ok()?,
        u8::try_from(day).ok()?,
    )
    .ok()?;
    let time = time::Time::from_hms(
        u8::try_from(hour).ok()?,
        u8::try_from(minute).ok()?,
        u8::try_from(second).ok()?,
    )
    .ok()?;
    let offset = time::UtcOffset::from_hms(
        sign * i8::try_from(offset_hours).ok()?,
        sign * i8::try_from(offset_minutes).ok()?,
        0,
    )
    .ok()?;
    Some(
        time::PrimitiveDateTime::new(date, time)
            .assume_offset(offset)
            .unix_timestamp(),
    )
}

/// `N` numbers of at most four digits separated by `separator`.
fn fields<const N: usize>(text: &str, separator: char) -> Option<[u16; N]> {
    let mut fields = [0u16; N];
    let mut parts = text.split(separator);
    for field in &mut fields {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 4 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *field = part.parse().ok()?;
    }
    parts.next().is_none().then_some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EP: &str = "https://login.example/t/oauth2/v2.0/token";

    #[test]
    fn entra_success_with_refresh_in() {
        let body = br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"refresh_in":1799,"access_token":"eyJ0"}"#;
        let acquired = parse_token_answer(EP, StatusCode::OK, body).unwrap();
        assert_eq!(acquired.access_token, "eyJ0");
        assert_eq!(acquired.lifetime, Duration::from_secs(3599));
        assert_eq!(acquired.refresh_in, Some(Duration::from_secs(1799)));
    }

    #[test]
    fn imds_strings_and_expires_on() {
        let body = br#"{"access_token":"x","expires_in":"86399","expires_on":"1","resource":"r","token_type":"Bearer"}"#;
        assert_eq!(
            parse_token_answer(EP, StatusCode::OK, body)
                .unwrap()
                .lifetime,
            Duration::from_secs(86399)
        );
        let on = unix_now() + 600;
        let body = format!(r#"{{"access_token":"x","expires_on":"{on}"}}"#);
        let lifetime = parse_token_answer(EP, StatusCode::OK, body.as_bytes())
            .unwrap()
            .lifetime;
        assert!((598..=600).contains(&lifetime.as_secs()));
    }

    #[test]
    fn entra_error_keeps_code_and_first_line_only() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: abc\r\nCorrelation ID: def","error_codes":[7000215]}"#;
        let e = parse_token_answer(EP, StatusCode::UNAUTHORIZED, body).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{EP} answered HTTP 401 invalid_client: AADSTS7000215: Invalid client secret provided."
            )
        );
        assert!(!e.is_local());
    }

    #[test]
    fn an_error_with_control_characters_stays_one_line() {
        let body = br#"{"error":"bad\ncode","error_description":"first\rforged line\u001b[2J"}"#;
        let e = parse_token_answer(EP, StatusCode::BAD_REQUEST, body).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(r"{EP} answered HTTP 400 bad\ncode: first\rforged line\u{{1b}}[2J")
        );
    }

    #[test]
    fn unusable_answers() {
        for (status, body, fragment) in [
            (StatusCode::OK, &b"<html>"[..], "not JSON"),
            (StatusCode::OK, br#"{"expires_in":10}"#, "no access_token"),
            (
                StatusCode::OK,
                br#"{"access_token":"x"}"#,
                "neither expires_in",
            ),
            (
                StatusCode::OK,
                br#"{"access_token":"x","expires_in":0}"#,
                "expires immediately",
            ),
            (StatusCode::INTERNAL_SERVER_ERROR, b"oops", "HTTP 500"),
        ] {
            let e = parse_token_answer(EP, status, body)
                .unwrap_err()
                .to_string();
            assert!(e.contains(fragment), "{e}");
        }
    }

    fn lifetime(body: &str) -> Result<Duration, String> {
        parse_token_answer(EP, StatusCode::OK, body.as_bytes())
            .map(|a| a.lifetime)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn app_service_dates_are_read_as_the_azure_sdks_read_them() {
        // The documented example: a 24-hour clock with a redundant PM.
        assert_eq!(
            app_service_date("09/14/2017 00:00:00 PM +00:00"),
            Some(1_505_390_400)
        );
        assert_eq!(
            app_service_date("06/20/2019 02:57:58 +00:00"),
            Some(1_560_999_478)
        );
        assert_eq!(
            app_service_date("1/2/2030 3:04:05 AM +00:00"),
            Some(1_893_553_445)
        );
        assert_eq!(
            app_service_date("1/2/2030 12:00:00 AM +00:00"),
            Some(1_893_542_400)
        );
        assert_eq!(
            app_service_date("1/2/2030 01:00:00 +01:00"),
            Some(1_893_542_400)
        );
        for bad in [
            "",
            "09/14/2017",
            "13/14/2017 00:00:00 +00:00",
            "02/30/2017 00:00:00 +00:00",
            "09/14/2017 25:00:00 +00:00",
            "09/14/2017 00:00:00 PM",
            "09/14/2017 00:00:00 PM +99:00",
            "09/14/2017 00:00:00 XM +00:00",
            "09/14/99999 00:00:00 +00:00",
            "09/14/2017 00:00:00 +00:00 extra",
            "+9/14/2017 00:00:00 +00:00",
        ] {
            assert_eq!(app_service_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn every_form_of_the_lifetime() {
        let in_ten_minutes = unix_now() + 600;
        let in_a_while = |body: String| {
            let seconds = lifetime(&body).unwrap().as_secs();
            assert!((598..=600).contains(&seconds), "{body}: {seconds}");
        };
        for body in [
            r#"{"access_token":"x","expires_in":600}"#,
            r#"{"access_token":"x","expires_in":600.7}"#,
            r#"{"access_token":"x","expires_in":"600"}"#,
        ] {
            in_a_while(body.to_string());
        }
        in_a_while(format!(
            r#"{{"access_token":"x","expires_on":{in_ten_minutes}}}"#
        ));
        in_a_while(format!(
            r#"{{"access_token":"x","expires_on":"{in_ten_minutes}"}}"#
        ));
        let date = time::OffsetDateTime::from_unix_timestamp(in_ten_minutes).unwrap();
        let (hour, pm) = match date.hour() {
            0 => (12, false),
            h @ 1..=11 => (h, false),
            12 => (12, true),
            h => (h - 12, true),
        };
        in_a_while(format!(
            r#"{{"access_token":"x","expires_on":"{:02}/{:02}/{} {:02}:{:02}:{:02} {} +00:00"}}"#,
            u8::from(date.month()),
            date.day(),
            date.year(),
            hour,
            date.minute(),
            date.second(),
            if pm { "PM" } else { "AM" }
        ));
    }

    /// What a broken endpoint, or something between it and the proxy, may send: a clear error or
    /// a lifetime within bounds, never a panic.
    #[test]
    fn absurd_lifetimes_are_bounded_or_refused() {
        for huge in [
            r#"{"access_token":"x","expires_in":9223372036854775807}"#,
            r#"{"access_token":"x","expires_in":18446744073709551615}"#,
            r#"{"access_token":"x","expires_in":1e300}"#,
            r#"{"access_token":"x","expires_in":"1e300"}"#,
            r#"{"access_token":"x","expires_on":9223372036854775807}"#,
        ] {
            assert_eq!(lifetime(huge), Ok(MAX_TOKEN_LIFETIME), "{huge}");
        }
        let body = br#"{"access_token":"x","expires_in":3600,"refresh_in":1e300}"#;
        let acquired = parse_token_answer(EP, StatusCode::OK, body).unwrap();
        assert_eq!(acquired.refresh_in, None);
        for (refused, why) in [
            (
                r#"{"access_token":"x","expires_on":-9223372036854775808}"#,
                "expires immediately",
            ),
            (
                r#"{"access_token":"x","expires_in":-1e300}"#,
                "expires immediately",
            ),
            (
                r#"{"access_token":"x","expires_in":"NaN"}"#,
                "neither expires_in",
            ),
            (
                r#"{"access_token":"x","expires_in":[1]}"#,
                "neither expires_in",
            ),
            (
                r#"{"access_token":"x","expires_on":"tomorrow"}"#,
                "neither expires_in",
            ),
            (r#"{"access_token":7,"expires_in":1}"#, "not JSON"),
        ] {
            let error = lifetime(refused).unwrap_err();
            assert!(error.contains(why), "{refused}: {error}");
        }
    }

    #[test]
    fn a_huge_error_description_is_cut() {
        let body = format!(
            r#"{{"error":"{}","error_description":"{}"}}"#,
            "e".repeat(10_000),
            "é".repeat(10_000)
        );
        let error = parse_token_answer(EP, StatusCode::BAD_REQUEST, body.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(error.len() < 1000, "{}", error.len());
    }
}
