//! Configuration checks that happen before any network traffic: TLS by default, plain text only
//! with `insecure`, a usable CA file.

use std::path::Path;

use flotilla_client::{Client, ClientConfig, ClientError, ConfigError};

fn cfg(url: &str, dir: &Path) -> ClientConfig {
    ClientConfig::new(url, dir.join("state"))
}

fn config_error(c: ClientConfig) -> ConfigError {
    match Client::new(c) {
        Err(ClientError::Config(e)) => e,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn plain_text_needs_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let e = config_error(cfg("http://127.0.0.1:7000", dir.path()));
    assert!(matches!(e, ConfigError::InsecureNotAllowed { .. }), "{e}");
    assert!(e.to_string().contains("insecure"), "{e}");

    let mut ok = cfg("http://127.0.0.1:7000", dir.path());
    ok.insecure = true;
    let client = Client::new(ok).unwrap();
    assert_eq!(client.client_id(), None);
    // Nothing was written before enrolling.
    assert!(!dir.path().join("state").exists());
}

#[test]
fn tls_needs_a_readable_valid_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = config_error(cfg("https://coordinator.example:7443", dir.path()));
    assert!(matches!(e, ConfigError::MissingCaCert { .. }), "{e}");

    let missing = dir.path().join("no-such-ca.pem");
    let mut c = cfg("https://coordinator.example:7443", dir.path());
    c.ca_cert = Some(missing.clone());
    let e = config_error(c);
    assert!(matches!(e, ConfigError::ReadCaCert { .. }), "{e}");
    assert!(e.to_string().contains("no-such-ca.pem"), "{e}");

    for (name, contents) in [
        ("empty.pem", "".to_string()),
        ("text.pem", "this is not a certificate\n".to_string()),
        (
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
                .to_string(),
        ),
        (
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_string(),
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        let mut c = cfg("https://coordinator.example:7443", dir.path());
        c.ca_cert = Some(path);
        let e = config_error(c);
        assert!(matches!(e, ConfigError::BadCaCert { .. }), "{name}: {e}");
        assert!(e.to_string().contains(name), "{e}");
    }
}

#[test]
fn malformed_addresses_and_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        "",
        "coordinator:7443",
        "ftp://coordinator:21",
        "http://",
        "https://host:7443/some/path",
    ] {
        let mut c = cfg(url, dir.path());
        c.insecure = true;
        let e = config_error(c);
        assert!(matches!(e, ConfigError::InvalidUrl { .. }), "{url:?}: {e}");
    }
    let mut c = cfg("http://127.0.0.1:7000", dir.path());
    c.insecure = true;
    c.upload_chunk_bytes = 0;
    assert!(matches!(
        config_error(c),
        ConfigError::InvalidChunkSize { .. }
    ));
    let mut c = cfg("http://127.0.0.1:7000", dir.path());
    c.insecure = true;
    c.client_name = "  ".into();
    assert!(matches!(config_error(c), ConfigError::EmptyClientName));
    let mut c = cfg("http://127.0.0.1:7000", dir.path());
    c.insecure = true;
    c.backoff.multiplier = 0.0;
    assert!(matches!(config_error(c), ConfigError::InvalidBackoff(_)));
}

#[test]
fn corrupt_credential_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join(flotilla_client::CREDENTIAL_FILE), "{").unwrap();
    let mut c = cfg("http://127.0.0.1:7000", dir.path());
    c.insecure = true;
    match Client::new(c) {
        Err(e @ ClientError::CorruptCredential { .. }) => {
            assert!(e.to_string().contains("credential.json"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}
