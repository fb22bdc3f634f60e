//! The token the forwarding path attaches to every request.
//!
//! [`TokenSource`] is written by the credential refresher (or set directly by tests) and read on
//! the hot path with one atomic load: no lock, no await. A request never waits for a refresh; when
//! no usable token is held it gets a 503 with the reason, and is never forwarded unauthenticated.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio::sync::Notify;

/// An access token ready to be sent: the `Authorization` header value and its lifetime.
#[derive(Clone)]
pub struct Token {
    authorization: HeaderValue,
    acquired_at: Instant,
    /// Requests stop using the token at this instant, a little before it expires, so that a request
    /// in flight does not reach Azure with an expired token.
    usable_until: Instant,
    expires_at: Instant,
    expires_at_unix: u64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("expires_at_unix", &self.expires_at_unix)
            .finish_non_exhaustive()
    }
}

/// Largest safety margin kept before expiry.
const MAX_EXPIRY_MARGIN: Duration = Duration::from_secs(30);

impl Token {
    /// A bearer token valid for `lifetime` from now. Fails only on characters a header cannot carry.
    pub fn bearer(access_token: &str, lifetime: Duration) -> Result<Self, InvalidToken> {
        if access_token.is_empty() {
            return Err(InvalidToken);
        }
        let mut authorization =
            HeaderValue::try_from(format!("Bearer {access_token}")).map_err(|_| InvalidToken)?;
        authorization.set_sensitive(true);
        let now = Instant::now();
        let margin = (lifetime / 20).min(MAX_EXPIRY_MARGIN);
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Self {
            authorization,
            acquired_at: now,
            usable_until: now + lifetime.saturating_sub(margin),
            expires_at: now + lifetime,
            expires_at_unix: (unix_now + lifetime).as_secs(),
        })
    }

    pub fn authorization(&self) -> &HeaderValue {
        &self.authorization
    }

    pub fn is_usable(&self, now: Instant) -> bool {
        now < self.usable_until
    }

    pub fn acquired_at(&self) -> Instant {
        self.acquired_at
    }

    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// Expiry as seconds since the Unix epoch (for logs and metrics).
    pub fn expires_at_unix(&self) -> u64 {
        self.expires_at_unix
    }
}

/// The access token could not be put in a header (empty or with control characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the identity endpoint returned an access token that cannot be sent in a header")]
pub struct InvalidToken;

/// What the hot path sees: the current token, if any, and the latest problem.
#[derive(Debug, Clone, Default)]
struct State {
    token: Option<Token>,
    /// Why there is no usable token (or why the latest refresh failed), without secrets.
    problem: Option<Arc<str>>,
}

/// Why a request cannot be authenticated right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub Arc<str>);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The shared holder of the current token.
pub struct TokenSource {
    state: ArcSwap<State>,
    /// Woken when the upstream rejects the token (401), so the refresher renews it early.
    rejected: Notify,
}

impl Default for TokenSource {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenSource {
    /// An empty source: requests get 503 until a token is set.
    pub fn new() -> Self {
        Self {
            state: ArcSwap::from_pointee(State {
                token: None,
                problem: Some("no token acquired yet".into()),
            }),
            rejected: Notify::new(),
        }
    }

    /// A source holding a fixed token (tests and benchmarks).
    pub fn fixed(access_token: &str, lifetime: Duration) -> Result<Self, InvalidToken> {
        let source = Self::new();
        source.set(Token::bearer(access_token, lifetime)?);
        Ok(source)
    }

    /// The `Authorization` value to send, or why there is none. Lock-free.
    pub fn authorization(&self) -> Result<HeaderValue, Unavailable> {
        let state = self.state.load();
        match &state.token {
            Some(token) if token.is_usable(Instant::now()) => Ok(token.authorization.clone()),
            Some(token) => Err(Unavailable(
                match &state.problem {
                    Some(problem) => {
                        format!("the access token expired and could not be renewed: {problem}")
                    }
                    None => format!(
                        "the access token expired at {} (unix) and has not been renewed yet",
                        token.expires_at_unix
                    ),
                }
                .into(),
            )),
            None => Err(Unavailable(
                state
                    .problem
                    .clone()
                    .unwrap_or_else(|| "no token acquired yet".into()),
            )),
        }
    }

    /// The current token, usable or not.
    pub fn current(&self) -> Option<Token> {
        self.state.load().token.clone()
    }

    /// Installs a freshly acquired token and clears any problem.
    pub fn set(&self, token: Token) {
        self.state.store(Arc::new(State {
            token: Some(token),
            problem: None,
        }));
    }

    /// Records why the latest acquisition failed; the current token stays in use while usable.
    pub fn set_problem(&self, problem: impl Into<Arc<str>>) {
        let current = self.state.load();
        self.state.store(Arc::new(State {
            token: current.token.clone(),
            problem: Some(problem.into()),
        }));
    }

    /// Called by the forwarding path when the upstream answered 401. Never blocks.
    pub fn report_rejected(&self) {
        self.rejected.notify_one();
    }

    /// Resolves when the upstream has rejected the token (for the refresher).
    pub async fn rejected(&self) {
        self.rejected.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_source_explains_itself() {
        let source = TokenSource::new();
        assert_eq!(
            source.authorization().unwrap_err().to_string(),
            "no token acquired yet"
        );
        source.set_problem("AADSTS7000215: invalid client secret");
        assert_eq!(
            source.authorization().unwrap_err().to_string(),
            "AADSTS7000215: invalid client secret"
        );
    }

    #[test]
    fn token_is_sensitive_and_bearer() {
        let source = TokenSource::fixed("abc", Duration::from_secs(3600)).unwrap();
        let value = source.authorization().unwrap();
        assert_eq!(value, "Bearer abc");
        assert!(value.is_sensitive());
        assert!(!format!("{:?}", source.current().unwrap()).contains("abc"));
    }

    #[test]
    fn problem_keeps_the_valid_token() {
        let source = TokenSource::fixed("abc", Duration::from_secs(3600)).unwrap();
        source.set_problem("token endpoint unreachable");
        assert_eq!(source.authorization().unwrap(), "Bearer abc");
    }

    #[test]
    fn expired_token_is_not_used() {
        let source = TokenSource::fixed("abc", Duration::ZERO).unwrap();
        let reason = source.authorization().unwrap_err().to_string();
        assert!(reason.contains("expired"), "{reason}");
        source.set_problem("connection refused");
        let reason = source.authorization().unwrap_err().to_string();
        assert!(reason.contains("connection refused"), "{reason}");
    }

    #[test]
    fn margin_before_expiry() {
        let token = Token::bearer("t", Duration::from_secs(3600)).unwrap();
        let now = token.acquired_at();
        assert!(token.is_usable(now + Duration::from_secs(3569)));
        assert!(!token.is_usable(now + Duration::from_secs(3571)));
        let short = Token::bearer("t", Duration::from_secs(4)).unwrap();
        assert!(short.is_usable(short.acquired_at() + Duration::from_millis(3700)));
        assert!(!short.is_usable(short.acquired_at() + Duration::from_millis(3900)));
    }

    #[test]
    fn header_unsafe_tokens_are_rejected() {
        assert_eq!(
            Token::bearer("a\nb", Duration::from_secs(1)).unwrap_err(),
            InvalidToken
        );
        assert_eq!(
            Token::bearer("", Duration::from_secs(1)).unwrap_err(),
            InvalidToken
        );
    }
}
