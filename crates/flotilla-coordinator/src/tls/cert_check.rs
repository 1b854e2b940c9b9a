//! Refuses at start a server certificate that the coordinator's own clients (rustls/webpki) would
//! refuse at every handshake, naming the file and what to do instead.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::prelude::{ASN1Time, FromDer, X509Certificate};

/// What a development certificate is made with, suggested in every refusal.
const DEV_CERTS_HINT: &str = "e.g. `flotilla dev-certs DIR --host NAME`";

/// `notAfter` of the certificate `der`, Unix seconds (`None` if it does not parse).
pub(crate) fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Checks the leaf certificate `der` of the `--tls-cert` file `path` at the time `now`: refuses a
/// CA certificate (basicConstraints CA:TRUE), an expired or not yet valid certificate, one without
/// a subjectAltName (rustls clients ignore the subject's CN), and one whose extendedKeyUsage
/// excludes TLS servers. The error is one line naming the file.
pub(crate) fn check_server_cert(path: &Path, der: &[u8], now: SystemTime) -> Result<(), String> {
    let file = format!("--tls-cert {}", path.display());
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| format!("{file} does not hold a valid X.509 certificate ({e}); give the PEM server certificate, {DEV_CERTS_HINT}"))?;
    let bad_extension = |what: &str, e: x509_parser::error::X509Error| {
        format!(
            "{file} has a malformed {what} extension ({e}); clients refuse it. Use another certificate, {DEV_CERTS_HINT}"
        )
    };
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| bad_extension("basicConstraints", e))?
        .is_some_and(|bc| bc.value.ca);
    if is_ca {
        return Err(format!(
            "{file} is a CA certificate (basicConstraints CA:TRUE); clients refuse it. Use a leaf \
             certificate signed by your CA, {DEV_CERTS_HINT} (a plain `openssl req -x509` makes a CA \
             certificate)"
        ));
    }
    let now_s = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let validity = cert.validity();
    if validity.not_after.timestamp() < now_s {
        return Err(format!(
            "{file} expired at {}; clients refuse it. Renew the certificate, {DEV_CERTS_HINT} (or \
             fix this machine's clock)",
            date(&validity.not_after)
        ));
    }
    if validity.not_before.timestamp() > now_s {
        return Err(format!(
            "{file} is not valid before {}; clients refuse it until then. Check this machine's clock, \
             or use a certificate valid now, {DEV_CERTS_HINT}",
            date(&validity.not_before)
        ));
    }
    let names = cert
        .subject_alternative_name()
        .map_err(|e| bad_extension("subjectAltName", e))?
        .map_or(0, |san| san.value.general_names.len());
    if names == 0 {
        return Err(format!(
            "{file} has no subjectAltName; clients ignore the subject's CN and refuse it. Make a \
             certificate that lists the server's host names as subjectAltName, {DEV_CERTS_HINT} or \
             `openssl … -addext subjectAltName=DNS:NAME,IP:ADDRESS`"
        ));
    }
    let eku = cert
        .extended_key_usage()
        .map_err(|e| bad_extension("extendedKeyUsage", e))?;
    if let Some(eku) = eku
        && !(eku.value.server_auth || eku.value.any)
    {
        return Err(format!(
            "{file} is not meant for TLS servers (its extendedKeyUsage lacks serverAuth); clients \
             refuse it. Use a server certificate, {DEV_CERTS_HINT}"
        ));
    }
    Ok(())
}

/// `t` as RFC 3339 (`2021-01-01T00:00:00Z`).
fn date(t: &ASN1Time) -> String {
    match u64::try_from(t.timestamp()) {
        Ok(secs) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
        }
        Err(_) => t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    use super::*;

    fn der(params: CertificateParams) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn check(der: &[u8]) -> Result<(), String> {
        check_server_cert(Path::new("server.pem"), der, SystemTime::now())
    }

    fn leaf() -> CertificateParams {
        CertificateParams::new(vec!["localhost".to_owned()]).unwrap()
    }

    #[test]
    fn a_leaf_with_names_passes_and_a_ca_signed_server_certificate_passes() {
        check(&der(leaf())).unwrap();
        // What `flotilla dev-certs` writes: a server certificate signed by a development CA.
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let pem = p.signed_by(&key, &issuer).unwrap().pem();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        check(&der).unwrap();
    }

    #[test]
    fn a_ca_certificate_is_refused() {
        let mut p = leaf();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let e = check(&der(p)).unwrap_err();
        assert!(
            e.starts_with("--tls-cert server.pem is a CA certificate (basicConstraints CA:TRUE)"),
            "{e}"
        );
        assert!(e.contains("flotilla dev-certs"), "{e}");
    }

    #[test]
    fn expired_and_future_certificates_are_refused() {
        let mut p = leaf();
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let e = check(&der(p)).unwrap_err();
        assert!(e.contains("expired at 2021-01-01T00:00:00Z"), "{e}");

        let mut p = leaf();
        p.not_before = rcgen::date_time_ymd(2090, 1, 1);
        p.not_after = rcgen::date_time_ymd(2091, 1, 1);
        let e = check(&der(p)).unwrap_err();
        assert!(e.contains("not valid before"), "{e}");
        // …but valid once that time has come.
        let mut p = leaf();
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let at = UNIX_EPOCH + Duration::from_secs(1_600_000_000); // September 2020
        check_server_cert(Path::new("server.pem"), &der(p), at).unwrap();
    }

    #[test]
    fn a_certificate_without_subject_alt_name_is_refused() {
        let e = check(&der(CertificateParams::new(Vec::<String>::new()).unwrap())).unwrap_err();
        assert!(e.contains("has no subjectAltName"), "{e}");
    }

    #[test]
    fn a_client_only_certificate_is_refused() {
        let mut p = leaf();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let e = check(&der(p)).unwrap_err();
        assert!(e.contains("lacks serverAuth"), "{e}");
        let mut p = leaf();
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        check(&der(p)).unwrap();
    }

    #[test]
    fn garbage_is_refused() {
        let e = check(b"not a certificate").unwrap_err();
        assert!(e.contains("does not hold a valid X.509 certificate"), "{e}");
    }
}
