//! An egress proxy's answer to CONNECT, as bytes off the socket: on `200` the tunnel, with every
//! byte after the answer's head left for TLS; otherwise one error line, without the proxy's
//! credentials; never a panic or a hang.
#![no_main]
use aoai_proxy::egress::{ProxyUrl, tunnel};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    // Past the head's limit, and still within the pipe's capacity so that the write completes.
    if data.len() > 24 * 1024 {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let proxy = ProxyUrl::parse("http://user:hunter2@proxy.corp:3128").unwrap();
        let (mut ours, mut theirs) = tokio::io::duplex(32 * 1024);
        theirs.write_all(data).await.unwrap();
        theirs.shutdown().await.unwrap();
        match tunnel(&mut ours, &proxy, "r.openai.azure.com", 443).await {
            Ok(()) => {
                let end = data.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                assert!(data.starts_with(b"HTTP/1.") && data[..end].split(|&b| b == b' ').nth(1).is_some_and(|code| code.starts_with(b"200")));
                let mut rest = Vec::new();
                ours.read_to_end(&mut rest).await.unwrap();
                assert_eq!(rest, &data[end..], "the tunnel's bytes are left for TLS");
            }
            Err(error) => {
                let line = error.to_string();
                assert!(!line.chars().any(char::is_control), "{line:?}");
                assert!(!line.contains("hunter2"), "{line}");
            }
        }
        drop(theirs);
    });
});
