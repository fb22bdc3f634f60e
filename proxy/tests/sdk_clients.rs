//! Real third-party clients through the proxy: the `async-openai` crate in its Azure mode (key in
//! `api-key`) and in its OpenAI mode (key as `Authorization: Bearer`), plain and streaming.

mod common;

use aoai_e2e::openai::{COMPLETION_TEXT, MockOpenAi};
use async_openai::Client;
use async_openai::config::{AzureConfig, OpenAIConfig};
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs,
};
use common::{TOKEN, TestProxy, fixed_token};
use futures_util::StreamExt;

const CALLER_KEY: &str = "caller-key-1";

fn request(stream: bool) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model("gpt-4o-mini")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Say hello")
            .build()
            .unwrap()
            .into()])
        .stream(stream)
        .build()
        .unwrap()
}

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[tokio::test]
async fn async_openai_azure_client_chat_and_stream() {
    install_crypto();
    let upstream = MockOpenAi::start().await;
    let proxy = TestProxy::start(
        &[
            ("API_BASE_URL", &upstream.url()),
            ("EXPECTED_KEY", CALLER_KEY),
        ],
        fixed_token(),
    )
    .await;
    let client = Client::with_config(
        AzureConfig::new()
            .with_api_base(&proxy.url)
            .with_deployment_id("gpt-4o-mini")
            .with_api_version("2024-10-21")
            .with_api_key(CALLER_KEY),
    );

    let response = client
        .chat()
        .create(request(false))
        .await
        .expect("chat completion through the proxy");
    assert_eq!(
        response.choices[0].message.content.as_deref(),
        Some(COMPLETION_TEXT)
    );

    let mut stream = client
        .chat()
        .create_stream(request(true))
        .await
        .expect("stream opens");
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("valid chunk");
        if let Some(content) = &chunk.choices[0].delta.content {
            text.push_str(content);
        }
    }
    assert_eq!(text, "part0 part1 part2 part3 part4 ");

    let received = upstream.requests();
    assert_eq!(received.len(), 2);
    for r in &received {
        assert_eq!(
            r.path_and_query,
            "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            r.headers["authorization"],
            format!("Bearer {TOKEN}").as_str()
        );
        assert!(
            !r.headers.contains_key("api-key"),
            "the caller's key reached Azure"
        );
    }
    proxy.stop().await;
}

#[tokio::test]
async fn async_openai_openai_client_with_bearer_key() {
    install_crypto();
    let upstream = MockOpenAi::start().await;
    let proxy = TestProxy::start(
        &[
            ("API_BASE_URL", &upstream.url()),
            ("AOAI_PROXY_INBOUND_KEYS", "other,caller-key-1"),
        ],
        fixed_token(),
    )
    .await;
    // The Azure OpenAI v1 API: OpenAI SDKs with base_url <endpoint>/openai/v1.
    let client = Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("{}/openai/v1", proxy.url))
            .with_api_key(CALLER_KEY),
    );
    let response = client
        .chat()
        .create(request(false))
        .await
        .expect("chat completion through the proxy");
    assert_eq!(
        response.choices[0].message.content.as_deref(),
        Some(COMPLETION_TEXT)
    );

    let received = upstream.requests();
    assert_eq!(received[0].path_and_query, "/openai/v1/chat/completions");
    assert_eq!(
        received[0].headers["authorization"],
        format!("Bearer {TOKEN}").as_str()
    );

    // A wrong key never reaches Azure and gets the OpenAI error shape the SDK understands.
    let wrong = Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("{}/openai/v1", proxy.url))
            .with_api_key("wrong"),
    );
    let error = wrong
        .chat()
        .create(request(false))
        .await
        .expect_err("wrong key is refused");
    let message = error.to_string();
    assert!(message.contains("not accepted"), "{message}");
    assert_eq!(upstream.requests().len(), 1);
    proxy.stop().await;
}
