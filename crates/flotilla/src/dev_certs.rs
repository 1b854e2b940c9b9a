//! `flotilla dev-certs`: a development CA and a server certificate signed by it (rcgen), for tests
//! and demos. Production deployments bring their own certificates.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Paths of the PEM files written by [`write_dev_certs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCerts {
    /// The development CA's certificate (`ca.pem`): what clients trust (`--ca-cert`).
    pub ca_cert: PathBuf,
    /// The server certificate (`server.pem`), signed by the CA.
    pub server_cert: PathBuf,
    /// The server's private key (`server-key.pem`).
    pub server_key: PathBuf,
}

/// Writes a fresh development CA and a server certificate for `hosts` (DNS names or IP
/// addresses, e.g. `["localhost", "127.0.0.1"]`) signed by it, as PEM files in `dir`
/// (created if needed): `ca.pem`, `server.pem`, `server-key.pem`.
pub fn write_dev_certs(dir: &Path, hosts: &[&str]) -> Result<DevCerts> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    if hosts.is_empty() {
        bail!("certificate generation: at least one host name is needed");
    }
    let gen_err = |e: rcgen::Error| anyhow::anyhow!("certificate generation: {e}");
    let ca_key = KeyPair::generate().map_err(gen_err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Flotilla development CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(gen_err)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().map_err(gen_err)?;
    let names: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
    let mut params = CertificateParams::new(names).map_err(gen_err)?;
    params.distinguished_name.push(DnType::CommonName, hosts[0]);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;

    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let out = DevCerts {
        ca_cert: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server-key.pem"),
    };
    let write = |path: &Path, text: String| {
        std::fs::write(path, text).with_context(|| path.display().to_string())
    };
    write(&out.ca_cert, ca_cert.pem())?;
    write(&out.server_cert, cert.pem())?;
    write(&out.server_key, key.serialize_pem())?;
    Ok(out)
}
