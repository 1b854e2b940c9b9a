//! Throw-away certificates: a CA and a server certificate it signed, as `flotilla dev-certs`
//! writes them (the tests must not depend on the CLI or the coordinator for this).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
};
/// The CA type of [`ca`], for signatures in tests.
pub use rcgen::{CertifiedIssuer, KeyPair};

/// The files [`write_dev_certs`] wrote.
#[derive(Debug, Clone)]
pub struct DevCerts {
    /// The CA's certificate (`ca.pem`): what clients trust.
    pub ca_cert: PathBuf,
    /// The server certificate (`server.pem`), signed by the CA.
    pub server_cert: PathBuf,
    /// The server's private key (`server-key.pem`).
    pub server_key: PathBuf,
}

impl DevCerts {
    /// The paths of certificates written into `dir` earlier.
    pub fn in_dir(dir: &Path) -> Self {
        DevCerts {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
        }
    }
}

/// A self-signed CA called `name`.
pub fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

/// A server certificate for `hosts` signed by `issuer`: (certificate PEM, private key PEM).
pub fn server_cert(issuer: &CertifiedIssuer<'static, KeyPair>, hosts: &[&str]) -> (String, String) {
    assert!(!hosts.is_empty(), "a server certificate needs a host name");
    let key = KeyPair::generate().expect("server key");
    let names: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
    let mut params = CertificateParams::new(names).expect("server certificate parameters");
    params.distinguished_name.push(DnType::CommonName, hosts[0]);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let cert = params.signed_by(&key, issuer).expect("server certificate");
    (cert.pem(), key.serialize_pem())
}

/// Writes a fresh development CA and a server certificate for `hosts` into `dir` (created if
/// absent).
pub fn write_dev_certs(dir: &Path, hosts: &[&str]) -> DevCerts {
    let issuer = ca("Flotilla development CA");
    let (cert, key) = server_cert(&issuer, hosts);
    std::fs::create_dir_all(dir).expect("certificate directory");
    let out = DevCerts::in_dir(dir);
    std::fs::write(&out.ca_cert, issuer.pem()).expect("write ca.pem");
    std::fs::write(&out.server_cert, cert).expect("write server.pem");
    std::fs::write(&out.server_key, key).expect("write server-key.pem");
    out
}

/// Certificates in `dir`, written by [`write_dev_certs`] if `dir` has none yet (a restarted
/// coordinator keeps its certificates, so clients keep trusting it).
pub fn dev_certs_in(dir: &Path, hosts: &[&str]) -> DevCerts {
    if dir.join("ca.pem").exists() {
        DevCerts::in_dir(dir)
    } else {
        write_dev_certs(dir, hosts)
    }
}
