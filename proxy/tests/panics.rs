//! The panic hook the binary installs: a panic anywhere is counted on `/metrics` and the process
//! goes on serving. (Its own test binary: the hook replaces the default panic message.)

mod common;

use aoai_e2e::client::get;
use aoai_e2e::openai::MockOpenAi;
use common::{TestProxy, fixed_token};

#[tokio::test]
async fn a_panic_is_counted_and_serving_goes_on() {
    aoai_proxy::panics::install_hook();
    let upstream = MockOpenAi::start().await;
    let proxy = TestProxy::start(&[("API_BASE_URL", &upstream.url())], fixed_token()).await;
    let metrics = || async {
        get(&format!("{}/metrics", proxy.admin_url), &[])
            .await
            .text()
    };
    assert!(metrics().await.contains("aoai_proxy_panics_total 0"));

    let crashed = std::thread::spawn(|| panic!("a bug somewhere")).join();
    assert!(crashed.is_err());

    assert!(metrics().await.contains("aoai_proxy_panics_total 1"));
    let answer = get(&format!("{}/openai/models", proxy.url), &[]).await;
    assert_eq!(answer.status, 200);
    proxy.stop().await;
}
