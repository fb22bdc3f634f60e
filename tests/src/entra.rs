//! A mock Entra ID token endpoint over HTTPS (test CA): `POST /{tenant}/oauth2/v2.0/token`.
//!
//! It verifies what it receives the way Entra ID does: a client secret must match; a certificate
//! assertion must be a JWT whose `x5t#S256` names a registered certificate, whose signature
//! verifies with that certificate's key, and whose `aud`, `iss`, `sub`, `exp`, `nbf` and `jti` are
//! right; a federated (workload identity) assertion must equal the expected service-account token.
//! Anything else is refused with Azure's error JSON and an AADSTS code.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use ring::digest::{SHA1_FOR_LEGACY_USE_ONLY, SHA256, digest};
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256, UnparsedPublicKey};

use crate::server::{MockBody, MockServer, full, handler, json};
use crate::tokens::TokenLedger;

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The application registration the mock knows.
#[derive(Clone, Default)]
pub struct App {
    pub tenant_id: String,
    pub client_id: String,
    pub secret: Option<String>,
    /// Registered certificates (DER), as uploaded to the app registration.
    pub certificates: Vec<Vec<u8>>,
    /// The service-account token a federated credential accepts.
    pub federated_token: Option<String>,
    /// A federated credential as Entra ID checks one: any token its issuer signed for this
    /// subject and audience, verified with the issuer's key (the real node's kubelet projects
    /// tokens the test cannot know in advance).
    pub federated_issuer: Option<FederatedIssuer>,
}

/// The issuer, subject and audience of a federated credential, and the issuer's ES256 public key
/// (as its OIDC discovery document would publish it).
#[derive(Clone)]
pub struct FederatedIssuer {
    pub issuer: String,
    pub subject: String,
    pub audience: String,
    /// The P-256 public key, uncompressed (65 bytes).
    pub public_key: Vec<u8>,
}

impl FederatedIssuer {
    /// Whether `token` is a JWT this issuer signed for this subject and audience, unexpired.
    pub fn accepts(&self, token: &str) -> Result<(), String> {
        let parts: Vec<&str> = token.split('.').collect();
        let [header, payload, signature] = parts.as_slice() else {
            return Err("not a JWT".into());
        };
        let header = decode_json(header).ok_or("an unreadable JWT header")?;
        if header["alg"] != "ES256" {
            return Err(format!("alg {} is not ES256", header["alg"]));
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| "an unreadable signature")?;
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            &self.public_key,
        )
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
        .map_err(|_| "the signature is not the issuer's")?;
        let claims = decode_json(payload).ok_or("unreadable claims")?;
        let audiences = match &claims["aud"] {
            serde_json::Value::String(one) => vec![one.clone()],
            serde_json::Value::Array(many) => many
                .iter()
                .filter_map(|a| a.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if claims["iss"] != self.issuer.as_str() {
            return Err(format!("issuer {} is not {}", claims["iss"], self.issuer));
        }
        if claims["sub"] != self.subject.as_str() {
            return Err(format!("subject {} is not {}", claims["sub"], self.subject));
        }
        if !audiences.contains(&self.audience) {
            return Err(format!("audience {audiences:?} lacks {}", self.audience));
        }
        if claims["exp"].as_i64().is_none_or(|exp| exp <= now) {
            return Err("expired".into());
        }
        Ok(())
    }
}

/// Failures the endpoint can be told to produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Answer this HTTP status with an error body.
    Status(u16),
    /// Never answer.
    Hang,
    /// Answer 200 with a body that is not JSON.
    MalformedJson,
    /// Answer a token with `expires_in: 0`.
    ExpiresInZero,
}

/// One token request as received, and what the mock answered.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub tenant: String,
    pub form: HashMap<String, String>,
    /// The issued token, or the AADSTS error code.
    pub outcome: Result<String, String>,
    /// SHA-256 thumbprint of the certificate whose key signed the assertion, if any.
    pub signed_with: Option<Vec<u8>>,
    pub at: std::time::Instant,
}

struct State {
    app: Mutex<App>,
    lifetime: Mutex<Duration>,
    refresh_in: Mutex<Option<Duration>>,
    fault: Mutex<Fault>,
    requests: Mutex<Vec<TokenRequest>>,
    ledger: Arc<TokenLedger>,
    base_url: Mutex<String>,
}

/// The running mock endpoint.
pub struct MockEntra {
    server: Option<MockServer>,
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    state: Arc<State>,
}

impl MockEntra {
    /// Starts the endpoint for `app`, issuing tokens of `lifetime`, recorded in `ledger`.
    pub async fn start(
        app: App,
        tls: rustls::ServerConfig,
        lifetime: Duration,
        ledger: Arc<TokenLedger>,
    ) -> Self {
        Self::start_at(
            std::net::Ipv4Addr::LOCALHOST.into(),
            app,
            tls,
            lifetime,
            ledger,
        )
        .await
    }

    /// The same, listening on `ip` (the node tests' bridge gateway, which pods reach).
    pub async fn start_at(
        ip: std::net::IpAddr,
        app: App,
        tls: rustls::ServerConfig,
        lifetime: Duration,
        ledger: Arc<TokenLedger>,
    ) -> Self {
        let state = Arc::new(State {
            app: Mutex::new(app),
            lifetime: Mutex::new(lifetime),
            refresh_in: Mutex::new(None),
            fault: Mutex::new(Fault::None),
            requests: Mutex::new(Vec::new()),
            ledger,
            base_url: Mutex::new(String::new()),
        });
        let server = MockServer::https_at(ip, Self::handler(state.clone()), tls.clone()).await;
        *state.base_url.lock().unwrap() = server.url();
        Self {
            addr: server.addr,
            server: Some(server),
            tls,
            state,
        }
    }

    fn handler(state: Arc<State>) -> crate::server::Handler {
        handler(move |request, _| {
            let state = state.clone();
            async move { respond(state, request).await }
        })
    }

    /// The authority host to give the proxy (`AZURE_AUTHORITY_HOST`).
    pub fn authority(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The token endpoint URL for `tenant` (the `aud` an assertion must carry).
    pub fn token_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.authority())
    }

    pub fn set_fault(&self, fault: Fault) {
        *self.state.fault.lock().unwrap() = fault;
    }

    pub fn set_lifetime(&self, lifetime: Duration) {
        *self.state.lifetime.lock().unwrap() = lifetime;
    }

    pub fn set_refresh_in(&self, refresh_in: Option<Duration>) {
        *self.state.refresh_in.lock().unwrap() = refresh_in;
    }

    pub fn update_app(&self, change: impl FnOnce(&mut App)) {
        change(&mut self.state.app.lock().unwrap());
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Stops answering: connections are refused and open ones cut.
    pub fn stop(&mut self) {
        self.server = None;
    }

    /// Answers again, on the same address.
    pub async fn restart(&mut self) {
        let server = MockServer::start_on(
            self.addr,
            Self::handler(self.state.clone()),
            Some(self.tls.clone()),
        )
        .await;
        self.server = Some(server);
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Azure's error JSON for `code` (an AADSTS number) with HTTP `status`.
fn aad_error(status: u16, error: &str, code: u32, description: &str) -> Response<MockBody> {
    json(
        status,
        &serde_json::json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {description}\r\nTrace ID: 00000000-0000-0000-0000-000000000000\r\nCorrelation ID: 00000000-0000-0000-0000-000000000000\r\nTimestamp: 2026-11-22 10:00:00Z"),
            "error_codes": [code],
            "timestamp": "2026-11-22 10:00:00Z",
            "trace_id": "00000000-0000-0000-0000-000000000000",
            "correlation_id": "00000000-0000-0000-0000-000000000000",
        }),
    )
}

struct Rejection {
    status: u16,
    error: &'static str,
    code: u32,
    description: String,
}

fn reject(
    status: u16,
    error: &'static str,
    code: u32,
    description: impl Into<String>,
) -> Rejection {
    Rejection {
        status,
        error,
        code,
        description: description.into(),
    }
}

async fn respond(state: Arc<State>, request: Request<Incoming>) -> Response<MockBody> {
    let fault = state.fault.lock().unwrap().clone();
    match fault {
        Fault::Status(status) => {
            return aad_error(status, "temporarily_unavailable", 50196, "mock outage");
        }
        Fault::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        _ => {}
    }
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if request.method() != Method::POST
        || segments.len() != 4
        || segments[1..] != ["oauth2", "v2.0", "token"]
    {
        return json(404, &serde_json::json!({"error": "not_found"}));
    }
    let tenant = segments[0].to_string();
    let body: Bytes = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let base_url = state.base_url.lock().unwrap().clone();
    let endpoint = format!("{base_url}/{tenant}/oauth2/v2.0/token");
    let app = state.app.lock().unwrap().clone();

    let checked = check(&app, &tenant, &form, &endpoint);
    let record = |outcome: Result<String, String>, signed_with: Option<Vec<u8>>| {
        state.requests.lock().unwrap().push(TokenRequest {
            tenant: tenant.clone(),
            form: form.clone(),
            outcome,
            signed_with,
            at: std::time::Instant::now(),
        });
    };
    match checked {
        Err(r) => {
            record(Err(format!("AADSTS{}", r.code)), None);
            aad_error(r.status, r.error, r.code, &r.description)
        }
        Ok(signed_with) => {
            if fault == Fault::MalformedJson {
                record(Err("malformed".into()), signed_with);
                return Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(full("{\"access_token\": <truncated"))
                    .unwrap();
            }
            let lifetime = *state.lifetime.lock().unwrap();
            let token = state.ledger.issue("entra", lifetime);
            record(Ok(token.clone()), signed_with);
            let expires_in = if fault == Fault::ExpiresInZero {
                0
            } else {
                lifetime.as_secs()
            };
            let mut answer = serde_json::json!({
                "token_type": "Bearer",
                "expires_in": expires_in,
                "ext_expires_in": expires_in,
                "access_token": token,
            });
            if let Some(refresh_in) = *state.refresh_in.lock().unwrap() {
                answer["refresh_in"] = refresh_in.as_secs().into();
            }
            json(200, &answer)
        }
    }
}

/// Checks a token request; on success returns the thumbprint of the signing certificate, if any.
fn check(
    app: &App,
    tenant: &str,
    form: &HashMap<String, String>,
    endpoint: &str,
) -> Result<Option<Vec<u8>>, Rejection> {
    if tenant != app.tenant_id {
        return Err(reject(
            400,
            "invalid_request",
            90002,
            format!("Tenant '{tenant}' not found."),
        ));
    }
    let field = |name: &str| form.get(name).map(String::as_str);
    if field("grant_type") != Some("client_credentials") {
        return Err(reject(
            400,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        ));
    }
    if !field("scope").is_some_and(|s| s.ends_with("/.default")) {
        return Err(reject(
            400,
            "invalid_scope",
            1002012,
            "The provided value for scope is not valid.",
        ));
    }
    let client_id = field("client_id").unwrap_or_default();
    if client_id != app.client_id {
        return Err(reject(
            400,
            "unauthorized_client",
            700016,
            format!("Application with identifier '{client_id}' was not found in the directory."),
        ));
    }
    if let Some(secret) = field("client_secret") {
        return match &app.secret {
            Some(expected) if expected == secret => Ok(None),
            _ => Err(reject(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided.",
            )),
        };
    }
    if field("client_assertion_type") != Some(JWT_BEARER) {
        return Err(reject(
            400,
            "invalid_request",
            900144,
            "The request body must contain the parameter: 'client_assertion_type'.",
        ));
    }
    let assertion = field("client_assertion").unwrap_or_default();
    if let Some(issuer) = &app.federated_issuer {
        return match issuer.accepts(assertion) {
            Ok(()) => Ok(None),
            Err(why) => Err(reject(
                400,
                "invalid_client",
                700213,
                format!(
                    "No matching federated identity record found for presented assertion: {why}."
                ),
            )),
        };
    }
    if let Some(federated) = &app.federated_token {
        return if assertion == federated {
            Ok(None)
        } else {
            Err(reject(
                400,
                "invalid_client",
                700213,
                "No matching federated identity record found for presented assertion subject.",
            ))
        };
    }
    check_certificate_assertion(app, assertion, endpoint).map(Some)
}

fn decode_json(part: &str) -> Option<serde_json::Value> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

fn check_certificate_assertion(
    app: &App,
    assertion: &str,
    endpoint: &str,
) -> Result<Vec<u8>, Rejection> {
    let malformed = || {
        reject(
            401,
            "invalid_client",
            50027,
            "JWT token is invalid or is malformed.",
        )
    };
    let parts: Vec<&str> = assertion.split('.').collect();
    if parts.len() != 3 {
        return Err(malformed());
    }
    let header = decode_json(parts[0]).ok_or_else(malformed)?;
    let claims = decode_json(parts[1]).ok_or_else(malformed)?;
    let signature = URL_SAFE_NO_PAD.decode(parts[2]).map_err(|_| malformed())?;

    let thumbprint = header["x5t#S256"]
        .as_str()
        .and_then(|t| URL_SAFE_NO_PAD.decode(t).ok())
        .ok_or_else(|| {
            reject(
                401,
                "invalid_client",
                700027,
                "Client assertion contains no x5t#S256 header.",
            )
        })?;
    let certificate = app
        .certificates
        .iter()
        .find(|der| digest(&SHA256, der).as_ref() == thumbprint.as_slice())
        .ok_or_else(|| {
            reject(401, "invalid_client", 700027, "The certificate with identifier used to sign the client assertion is not registered on application.")
        })?;
    if let Some(x5t) = header["x5t"].as_str()
        && URL_SAFE_NO_PAD.decode(x5t).ok().as_deref()
            != Some(digest(&SHA1_FOR_LEGACY_USE_ONLY, certificate).as_ref())
    {
        return Err(reject(
            401,
            "invalid_client",
            700027,
            "The x5t header does not match the certificate.",
        ));
    }
    if let Some(chain) = header["x5c"].as_array() {
        let first = chain
            .first()
            .and_then(|c| c.as_str())
            .and_then(|c| STANDARD.decode(c).ok());
        if first.as_deref() != Some(certificate.as_slice()) {
            return Err(reject(
                401,
                "invalid_client",
                700027,
                "The x5c chain does not start with the signing certificate.",
            ));
        }
    }
    let algorithm: &'static dyn ring::signature::VerificationAlgorithm =
        match header["alg"].as_str() {
            Some("RS256") => &RSA_PKCS1_2048_8192_SHA256,
            Some("PS256") => &RSA_PSS_2048_8192_SHA256,
            _ => {
                return Err(reject(
                    401,
                    "invalid_client",
                    5002738,
                    "Invalid JWT signing algorithm.",
                ));
            }
        };
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).map_err(|_| malformed())?;
    let public_key = parsed.public_key().subject_public_key.data.to_vec();
    let signing_input = format!("{}.{}", parts[0], parts[1]);
    UnparsedPublicKey::new(algorithm, public_key)
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| {
            reject(
                401,
                "invalid_client",
                700027,
                "Client assertion failed signature validation.",
            )
        })?;

    let now = now_unix();
    let claim = |name: &str| claims[name].as_str().unwrap_or_default();
    if claim("aud") != endpoint {
        return Err(reject(
            401,
            "invalid_client",
            700212,
            format!(
                "Client assertion audience claim does not match the token endpoint ({}).",
                claim("aud")
            ),
        ));
    }
    if claim("iss") != app.client_id || claim("sub") != app.client_id {
        return Err(reject(
            401,
            "invalid_client",
            700023,
            "Client assertion issuer and subject must be the client id.",
        ));
    }
    if claim("jti").is_empty() {
        return Err(reject(
            401,
            "invalid_client",
            700024,
            "Client assertion has no jti.",
        ));
    }
    let exp = claims["exp"].as_i64().unwrap_or(0);
    let nbf = claims["nbf"].as_i64().unwrap_or(now);
    if exp <= now || exp > now + 3600 || nbf > now + 300 {
        return Err(reject(
            401,
            "invalid_client",
            700024,
            "Client assertion is not within its valid time range.",
        ));
    }
    Ok(thumbprint)
}
