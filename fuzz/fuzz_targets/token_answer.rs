//! An identity endpoint's answer (Entra ID, IMDS, App Service): a token with a lifetime within
//! bounds, or one error line; the token is usable as a header or refused; never a panic.
#![no_main]
use std::time::Duration;

use aoai_proxy::credentials::answer::{MAX_TOKEN_LIFETIME, app_service_date, parse_token_answer};
use aoai_proxy::token::Token;
use http::StatusCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let status = match selector % 4 {
        0 => StatusCode::BAD_REQUEST,
        1 => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::OK,
    };
    match parse_token_answer("https://login.example/t/oauth2/v2.0/token", status, body) {
        Ok(acquired) => {
            assert!(acquired.lifetime > Duration::ZERO && acquired.lifetime <= MAX_TOKEN_LIFETIME);
            if let Some(refresh_in) = acquired.refresh_in {
                assert!(refresh_in < acquired.lifetime);
            }
            let _ = Token::bearer(&acquired.access_token, acquired.lifetime);
        }
        Err(error) => {
            let line = error.to_string();
            assert!(line.len() < 2048, "{} bytes", line.len());
            assert!(!line.chars().any(char::is_control), "{line:?}");
        }
    }
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = app_service_date(text);
    }
});
