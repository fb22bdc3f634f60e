//! The PEM / PKCS#12 loader: any file content gives a certificate whose key matches, or an error;
//! never a panic, and the error never carries the input.
#![no_main]
use aoai_proxy::credentials::certificate::ClientCertificate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for password in [None, Some(""), Some("test-password")] {
        match ClientCertificate::parse(data, password) {
            Ok(certificate) => assert!(!certificate.leaf_der().is_empty()),
            Err(e) => {
                let message = e.to_string();
                assert!(!message.contains("PRIVATE KEY"));
            }
        }
    }
});
