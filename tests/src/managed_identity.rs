//! Mock managed-identity endpoints on 127.0.0.1 (plain HTTP, as the real ones are):
//! - IMDS shape: `GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=...`
//!   with `Metadata: true`, optional `client_id` / `object_id` / `msi_res_id`;
//! - App Service shape: `GET /msi/token?api-version=2019-08-01&resource=...` with
//!   `X-IDENTITY-HEADER: <secret>`, optional `client_id` / `object_id` / `mi_res_id`.
//!
//! Both answer with the string-typed numbers those services use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Response};

use crate::server::{MockBody, MockServer, handler, json};
use crate::tokens::TokenLedger;

/// The path of the App Service style endpoint on this mock.
pub const APP_SERVICE_PATH: &str = "/msi/token";

/// One request as received.
#[derive(Clone, Debug)]
pub struct MiRequest {
    pub path: String,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
}

pub struct MockManagedIdentity {
    pub server: MockServer,
    requests: Arc<Mutex<Vec<MiRequest>>>,
}

impl MockManagedIdentity {
    /// Starts both shapes; `identity_header` is the App Service secret.
    pub async fn start(
        identity_header: &str,
        lifetime: Duration,
        ledger: Arc<TokenLedger>,
    ) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        let identity_header = identity_header.to_string();
        let server = MockServer::http(handler(
            move |request: http::Request<hyper::body::Incoming>, _| {
                let recorded = recorded.clone();
                let ledger = ledger.clone();
                let identity_header = identity_header.clone();
                async move {
                    let query: HashMap<String, String> = form_urlencoded::parse(
                        request.uri().query().unwrap_or_default().as_bytes(),
                    )
                    .into_owned()
                    .collect();
                    let path = request.uri().path().to_string();
                    recorded.lock().unwrap().push(MiRequest {
                        path: path.clone(),
                        query: query.clone(),
                        headers: request.headers().clone(),
                    });
                    answer(
                        &path,
                        &query,
                        request.headers(),
                        &identity_header,
                        lifetime,
                        &ledger,
                    )
                }
            },
        ))
        .await;
        Self { server, requests }
    }

    /// Base URL for `AZURE_POD_IDENTITY_AUTHORITY_HOST`.
    pub fn imds_base(&self) -> String {
        self.server.url()
    }

    /// URL for `IDENTITY_ENDPOINT`.
    pub fn app_service_endpoint(&self) -> String {
        format!("{}{APP_SERVICE_PATH}", self.server.url())
    }

    pub fn requests(&self) -> Vec<MiRequest> {
        self.requests.lock().unwrap().clone()
    }
}

fn answer(
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    identity_header: &str,
    lifetime: Duration,
    ledger: &TokenLedger,
) -> Response<MockBody> {
    let resource = query.get("resource").cloned().unwrap_or_default();
    let expires_on = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + lifetime.as_secs();
    match path {
        "/metadata/identity/oauth2/token" => {
            if headers.get("metadata").map(|v| v.as_bytes()) != Some(b"true") {
                return json(
                    400,
                    &serde_json::json!({"error": "invalid_request", "error_description": "Required metadata header not specified"}),
                );
            }
            if query.get("api-version").map(String::as_str) != Some("2018-02-01")
                || resource.is_empty()
            {
                return json(
                    400,
                    &serde_json::json!({"error": "invalid_request", "error_description": "Required query variable 'resource' is missing"}),
                );
            }
            let token = ledger.issue("imds", lifetime);
            json(
                200,
                &serde_json::json!({
                    "access_token": token,
                    "client_id": query.get("client_id").cloned().unwrap_or_else(|| "system-assigned".into()),
                    "expires_in": lifetime.as_secs().to_string(),
                    "expires_on": expires_on.to_string(),
                    "ext_expires_in": lifetime.as_secs().to_string(),
                    "not_before": (expires_on - lifetime.as_secs()).to_string(),
                    "resource": resource,
                    "token_type": "Bearer",
                }),
            )
        }
        APP_SERVICE_PATH => {
            if headers.get("x-identity-header").map(|v| v.as_bytes())
                != Some(identity_header.as_bytes())
            {
                return json(
                    401,
                    &serde_json::json!({"statusCode": 401, "message": "Unauthorized: invalid X-IDENTITY-HEADER"}),
                );
            }
            if query.get("api-version").map(String::as_str) != Some("2019-08-01")
                || resource.is_empty()
            {
                return json(
                    400,
                    &serde_json::json!({"statusCode": 400, "message": "resource and api-version are required"}),
                );
            }
            let token = ledger.issue("appservice", lifetime);
            json(
                200,
                &serde_json::json!({
                    "access_token": token,
                    "expires_on": expires_on.to_string(),
                    "resource": resource,
                    "token_type": "Bearer",
                    "client_id": query.get("client_id").cloned().unwrap_or_default(),
                }),
            )
        }
        _ => json(404, &serde_json::json!({"error": "not_found"})),
    }
}
