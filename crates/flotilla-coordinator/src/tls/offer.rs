//! What the TLS listeners offer, read back from the rustls configuration they were built with:
//! the protocol versions, cipher suites and key-exchange groups a client can negotiate. The
//! evidence pack reports this, so a reviewer sees the server's actual offer rather than a claim.

use rustls::SupportedProtocolVersion;
use serde::{Deserialize, Serialize};

/// The protocol versions the listeners are built with ([`super::server_config`]): rustls' safe
/// defaults (TLS 1.3 and 1.2). One constant, so what is built and what is reported agree.
pub(crate) static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] = rustls::DEFAULT_VERSIONS;

/// The TLS offer of a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsOffer {
    /// Protocol versions a client can negotiate, newest first (`TLS 1.3`, `TLS 1.2`).
    pub versions: Vec<String>,
    /// Cipher suites, in the server's order of preference (IANA names). TLS 1.2 suites of both
    /// signature families are listed; a handshake can only use those matching the certificate's
    /// key (ECDSA or RSA).
    pub cipher_suites: Vec<String>,
    /// Key-exchange groups, in the server's order of preference.
    pub key_exchange_groups: Vec<String>,
    /// The cryptographic provider.
    pub provider: String,
    /// Whether the provider runs in FIPS mode.
    pub fips: bool,
}

fn version_name(v: rustls::ProtocolVersion) -> String {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLS 1.3".to_owned(),
        rustls::ProtocolVersion::TLSv1_2 => "TLS 1.2".to_owned(),
        other => format!("{other:?}"),
    }
}

/// The offer of `cfg`: its provider's cipher suites and groups, and the versions among
/// [`PROTOCOL_VERSIONS`] that at least one of those suites serves.
pub(crate) fn offer(cfg: &rustls::ServerConfig) -> TlsOffer {
    let provider = cfg.crypto_provider();
    let enabled = |v: rustls::ProtocolVersion| PROTOCOL_VERSIONS.iter().any(|p| p.version == v);
    let suites: Vec<_> = provider
        .cipher_suites
        .iter()
        .filter(|s| enabled(s.version().version))
        .collect();
    let mut versions = Vec::new();
    for v in [
        rustls::ProtocolVersion::TLSv1_3,
        rustls::ProtocolVersion::TLSv1_2,
    ] {
        if suites.iter().any(|s| s.version().version == v) {
            versions.push(version_name(v));
        }
    }
    TlsOffer {
        versions,
        cipher_suites: suites
            .iter()
            .map(|s| {
                let suite = s.suite();
                suite
                    .as_str()
                    .map_or_else(|| format!("{suite:?}"), str::to_owned)
            })
            .collect(),
        key_exchange_groups: provider
            .kx_groups
            .iter()
            .map(|g| {
                let name = g.name();
                name.as_str()
                    .map_or_else(|| format!("{name:?}"), str::to_owned)
            })
            .collect(),
        provider: "ring".to_owned(),
        fips: cfg.fips(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

    use super::*;

    /// Runs a handshake in memory; the negotiated (version, suite).
    fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> Result<(rustls::ProtocolVersion, rustls::CipherSuite), rustls::Error> {
        let mut c = ClientConnection::new(client, ServerName::try_from("localhost").unwrap())?;
        let mut s = ServerConnection::new(server)?;
        for _ in 0..20 {
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets()?;
        }
        Ok((
            c.protocol_version().expect("negotiated"),
            c.negotiated_cipher_suite().expect("negotiated").suite(),
        ))
    }

    /// Every version and cipher suite the offer lists is one a client restricted to it actually
    /// negotiates with the listeners' configuration.
    #[test]
    fn what_the_offer_lists_is_what_a_client_negotiates() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let server = super::super::server_config(&cert_path, &key_path, &[b"h2"]).unwrap();
        let offer = offer(&server);
        assert_eq!(offer.versions, ["TLS 1.3", "TLS 1.2"]);
        assert!(!offer.key_exchange_groups.is_empty());
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let ring = rustls::crypto::ring::default_provider();
        let mut negotiated = Vec::new();
        for suite in ring.cipher_suites.iter().copied() {
            // The test key is ECDSA: TLS 1.2's RSA suites need an RSA key (see the report of
            // issue 16: the offer lists them whatever the key is).
            if !suite.usable_for_signature_algorithm(rustls::SignatureAlgorithm::ECDSA) {
                negotiated.push((
                    version_name(suite.version().version),
                    suite.suite().as_str().unwrap().to_owned(),
                ));
                continue;
            }
            let provider = rustls::crypto::CryptoProvider {
                cipher_suites: vec![suite],
                ..rustls::crypto::ring::default_provider()
            };
            let mut client = ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&[suite.version()])
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            client.alpn_protocols = vec![b"h2".to_vec()];
            let (version, got) = handshake(server.clone(), Arc::new(client)).unwrap();
            assert_eq!(got, suite.suite());
            negotiated.push((version_name(version), got.as_str().unwrap().to_owned()));
        }
        let listed: Vec<String> = negotiated.iter().map(|(_, s)| s.clone()).collect();
        assert_eq!(listed, offer.cipher_suites);
        for v in &offer.versions {
            assert!(negotiated.iter().any(|(nv, _)| nv == v), "{v} negotiated");
        }
    }
}
