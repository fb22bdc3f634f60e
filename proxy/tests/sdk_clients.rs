//! Real third-party clients through the proxy: the `async-openai` crate in its Azure mode (key in
//! `api-key`) and in its OpenAI mode (key as `Authorization: Bearer`), plain and streaming; and
//! on the Azure OpenAI v1 API, the requests the SDK sends for the Responses API (streamed), models,
//! embeddings, and multipart uploads (files, audio transcriptions), which pass unchanged.

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
    let _ = aoai_runtime::crypto_provider().install_default();
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

/// The OpenAI client on the Azure OpenAI v1 API through a proxy with the fixed token.
async fn v1_client() -> (MockOpenAi, TestProxy, Client<OpenAIConfig>) {
    install_crypto();
    let upstream = MockOpenAi::start().await;
    let proxy = TestProxy::start(&[("API_BASE_URL", &upstream.url())], fixed_token()).await;
    let client = Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("{}/openai/v1", proxy.url))
            .with_api_key("unused"),
    );
    (upstream, proxy, client)
}

#[tokio::test]
async fn the_responses_api_streams_through_unchanged() {
    use async_openai::types::responses::{CreateResponseArgs, ResponseStreamEvent};
    let (upstream, proxy, client) = v1_client().await;
    let request = CreateResponseArgs::default()
        .model("gpt-4o")
        .input("Say hello")
        .build()
        .unwrap();
    let answer = client
        .responses()
        .create(request.clone())
        .await
        .expect("a response");
    assert_eq!(answer.id, "resp_mock");

    let mut stream = client
        .responses()
        .create_stream(request)
        .await
        .expect("the stream opens");
    let (mut text, mut completed) = (String::new(), false);
    while let Some(event) = stream.next().await {
        match event.expect("a valid event") {
            ResponseStreamEvent::ResponseOutputTextDelta(delta) => text.push_str(&delta.delta),
            ResponseStreamEvent::ResponseCompleted(_) => completed = true,
            _ => {}
        }
    }
    assert_eq!(text, "part0 part1 part2 part3 part4 ");
    assert!(completed);
    let received = upstream.requests();
    assert_eq!(received[1].path_and_query, "/openai/v1/responses");
    let body: serde_json::Value = serde_json::from_slice(&received[1].body).unwrap();
    assert_eq!(body["stream"], true);
    assert_eq!(
        received[1].headers["authorization"],
        format!("Bearer {TOKEN}").as_str()
    );
    proxy.stop().await;
}

#[tokio::test]
async fn models_embeddings_and_multipart_uploads_pass_through_unchanged() {
    use async_openai::types::audio::{AudioInput, CreateTranscriptionRequestArgs};
    use async_openai::types::embeddings::CreateEmbeddingRequestArgs;
    use async_openai::types::files::{CreateFileRequestArgs, FileInput, FilePurpose};
    let (upstream, proxy, client) = v1_client().await;

    let models = client.models().list().await.expect("models");
    assert_eq!(models.data[0].id, "gpt-4o");
    let embedding = client
        .embeddings()
        .create(
            CreateEmbeddingRequestArgs::default()
                .model("text-embedding-3-small")
                .input("hello")
                .build()
                .unwrap(),
        )
        .await
        .expect("an embedding");
    assert_eq!(embedding.data[0].embedding, [0.25, -0.5, 1.0]);

    let jsonl: Vec<u8> = (0..2000)
        .flat_map(|i| format!("{{\"custom_id\":\"{i}\",\"method\":\"POST\"}}\n").into_bytes())
        .collect();
    let file = client
        .files()
        .create(
            CreateFileRequestArgs::default()
                .file(FileInput::from_vec_u8("batch.jsonl".into(), jsonl.clone()))
                .purpose(FilePurpose::Batch)
                .build()
                .unwrap(),
        )
        .await
        .expect("a file upload");
    assert_eq!(file.id, "file-mock");
    let audio: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let transcription = client
        .audio()
        .transcription()
        .create(
            CreateTranscriptionRequestArgs::default()
                .file(AudioInput::from_vec_u8("speech.wav".into(), audio.clone()))
                .model("gpt-4o-transcribe")
                .build()
                .unwrap(),
        )
        .await
        .expect("a transcription");

    let received = upstream.requests();
    let paths: Vec<&str> = received.iter().map(|r| r.path_and_query.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/openai/v1/models",
            "/openai/v1/embeddings",
            "/openai/v1/files",
            "/openai/v1/audio/transcriptions"
        ]
    );
    // Multipart bodies arrive byte for byte, with the boundary the SDK chose.
    for (request, content) in [(&received[2], &jsonl), (&received[3], &audio)] {
        let content_type = request.headers["content-type"].to_str().unwrap();
        let boundary = content_type
            .strip_prefix("multipart/form-data; boundary=")
            .expect("multipart");
        let body = &request.body;
        assert!(
            body.windows(boundary.len())
                .any(|w| w == boundary.as_bytes())
        );
        assert!(
            body.windows(content.len()).any(|w| w == content.as_slice()),
            "the file's bytes are intact"
        );
        assert_eq!(
            request.headers["authorization"],
            format!("Bearer {TOKEN}").as_str()
        );
    }
    assert_eq!(
        transcription.text,
        format!("transcribed {} bytes", received[3].body.len())
    );
    proxy.stop().await;
}
