//! Diagnosis of TLS failures: finds the rustls error buried in a transport error (tonic, hyper,
//! reqwest, `std::io`) and turns it into one line that says what is wrong and what to do.
//!
//! A TLS failure of this kind never heals by retrying: a client given the wrong CA, or a server
//! presenting a CA certificate, fails the same way on every attempt. [`diagnose_tls`] is what tells
//! these apart from transport failures (connection refused, reset, timed out), which do.

use std::error::Error;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::UnixTime;
use rustls::{AlertDescription, CertificateError, InvalidMessage};

/// Longest source chain walked (guards against a pathological, self-referencing chain).
const MAX_CHAIN: usize = 64;

/// Explains a TLS failure found anywhere in `err`'s source chain, or `None` when the chain holds no
/// TLS error that retrying cannot fix (then `err` is a transport failure, or not a TLS one).
///
/// `ca_cert` is the CA file the client trusted (named in the hint; `None` says "the CA given with
/// --ca-cert"), `host` the host name or URL the client connected to (used when the TLS error does
/// not name it).
///
/// ```
/// use flotilla_client::diagnose_tls;
/// let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
/// assert_eq!(diagnose_tls(&refused, None, "localhost"), None);
/// let tls = std::io::Error::new(
///     std::io::ErrorKind::InvalidData,
///     rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
/// );
/// let hint = diagnose_tls(&tls, Some("ca.pem".as_ref()), "localhost").unwrap();
/// assert!(hint.contains("not signed by the CA in --ca-cert ca.pem"));
/// ```
pub fn diagnose_tls(
    err: &(dyn Error + 'static),
    ca_cert: Option<&Path>,
    host: &str,
) -> Option<String> {
    let tls = find_rustls_error(err)?;
    let ca = match ca_cert {
        Some(path) => format!("the CA in --ca-cert {}", path.display()),
        None => "the CA given with --ca-cert".to_owned(),
    };
    let host = host_of(host);
    match tls {
        rustls::Error::InvalidCertificate(cert) => Some(describe_certificate(cert, &ca, &host)),
        rustls::Error::PeerIncompatible(why) => Some(format!(
            "the coordinator at {host} and this program share no TLS version or cipher suite \
             ({why:?}): the server must offer TLS 1.2 or 1.3 with a modern cipher suite"
        )),
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::ProtocolVersion
            | AlertDescription::HandshakeFailure
            | AlertDescription::InsufficientSecurity),
        ) => Some(format!(
            "the coordinator at {host} refused the TLS handshake ({alert:?}): it and this program \
             share no TLS version or cipher suite; the server must offer TLS 1.2 or 1.3"
        )),
        rustls::Error::InvalidMessage(InvalidMessage::InvalidContentType) => Some(format!(
            "the server at {host} does not speak TLS (it answered in plain text): if it runs with \
             --insecure, use an http:// address and --insecure; otherwise check the port"
        )),
        _ => None,
    }
}

/// The first [`rustls::Error`] in `err`'s source chain.
///
/// `std::io::Error::source` skips the error it wraps (it returns the wrapped error's *source*), and
/// tokio-rustls reports TLS failures as an `io::Error` wrapping the rustls error, so wrapped errors
/// are looked into explicitly.
pub fn find_rustls_error<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(err);
    for _ in 0..MAX_CHAIN {
        let e = current?;
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(tls) = find_rustls_error(inner)
        {
            return Some(tls);
        }
        current = e.source();
    }
    None
}

fn describe_certificate(cert: &CertificateError, ca: &str, host: &str) -> String {
    match cert {
        // BadSignature: the issuer's *name* matched (two `flotilla dev-certs` CAs share theirs) but
        // not its key. Both mean the same to the user: the wrong CA file.
        CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
            "the coordinator's certificate is not signed by {ca}: give the CA that signed the \
             server certificate (`flotilla dev-certs` writes it as ca.pem)"
        ),
        CertificateError::Other(other)
            if matches!(other.0.downcast_ref::<webpki::Error>(), Some(webpki::Error::CaUsedAsEndEntity)) =>
        {
            "the coordinator's certificate is a CA certificate; the server must use a leaf \
             certificate signed by your CA, e.g. from `flotilla dev-certs`"
                .to_owned()
        }
        CertificateError::NotValidForNameContext { expected, presented } => {
            let expected = expected.to_str();
            let names: Vec<String> = presented.iter().map(|n| presented_name(n)).collect();
            let names = if names.is_empty() { "no names".to_owned() } else { names.join(", ") };
            format!(
                "the coordinator's certificate is not valid for host {expected} (it names {names}): \
                 connect with a name it lists, or give the server a certificate for {expected} \
                 (`flotilla dev-certs DIR --host {expected}`)"
            )
        }
        CertificateError::NotValidForName => format!(
            "the coordinator's certificate is not valid for host {host}: connect with a name it \
             lists, or give the server a certificate for {host} (`flotilla dev-certs DIR --host {host}`)"
        ),
        CertificateError::ExpiredContext { time, not_after } => format!(
            "the coordinator's certificate expired at {} (it is now {} here): give the server a \
             renewed certificate, or fix this machine's clock",
            rfc3339(*not_after),
            rfc3339(*time)
        ),
        CertificateError::Expired => "the coordinator's certificate has expired: give the server a \
             renewed certificate, or fix this machine's clock"
            .to_owned(),
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "the coordinator's certificate is not valid before {} (it is now {} here): check the \
             clocks of this machine and the server",
            rfc3339(*not_before),
            rfc3339(*time)
        ),
        CertificateError::NotValidYet => "the coordinator's certificate is not valid yet: check the \
             clocks of this machine and the server"
            .to_owned(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "the coordinator's certificate is not meant for TLS servers (its extendedKeyUsage lacks \
             serverAuth): give the server a server certificate, e.g. from `flotilla dev-certs`"
                .to_owned()
        }
        CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "the coordinator's certificate is signed with an algorithm this program does not \
             support: use ECDSA P-256/P-384, Ed25519 or RSA (2048 bits or more) with SHA-256 or better"
                .to_owned()
        }
        CertificateError::BadEncoding => "the coordinator's certificate is malformed: give the server \
             a valid PEM certificate, e.g. from `flotilla dev-certs`"
            .to_owned(),
        CertificateError::Revoked => "the coordinator's certificate has been revoked: give the server \
             a new certificate"
            .to_owned(),
        other => format!(
            "the coordinator's certificate was refused ({other:?}): check the server's --tls-cert \
             and the CA given here with --ca-cert"
        ),
    }
}

/// A subject-alternative name as webpki reports it (`DnsName("localhost")`), without the wrapper.
fn presented_name(name: &str) -> String {
    match name
        .strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
    {
        Some(dns) => dns.to_owned(),
        None => name.to_owned(),
    }
}

/// The host of `host_or_url` when it is a URL (`https://host:port/...`), else `host_or_url`.
fn host_of(host_or_url: &str) -> String {
    match host_or_url.parse::<tonic::transport::Uri>() {
        Ok(uri) if uri.scheme().is_some() => uri.host().unwrap_or(host_or_url).to_owned(),
        _ => host_or_url.to_owned(),
    }
}

fn rfc3339(t: UnixTime) -> String {
    let at: SystemTime = UNIX_EPOCH + Duration::from_secs(t.as_secs());
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A TLS failure as tonic reports it: a transport error whose io::Error wraps the rustls error.
    #[derive(Debug)]
    struct Wrapper(Box<dyn Error + Send + Sync>);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("transport error")
        }
    }

    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    fn wrapped(e: rustls::Error) -> Wrapper {
        Wrapper(Box::new(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e,
        )))
    }

    fn hint(e: rustls::Error) -> String {
        diagnose_tls(
            &wrapped(e),
            Some(Path::new("ca.pem")),
            "https://coord.example:7070",
        )
        .unwrap()
    }

    #[test]
    fn finds_the_rustls_error_inside_io_errors() {
        let e = wrapped(rustls::Error::InvalidCertificate(
            CertificateError::BadSignature,
        ));
        assert!(matches!(
            find_rustls_error(&e),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::BadSignature
            ))
        ));
        let refused = Wrapper(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(find_rustls_error(&refused).is_none());
        assert_eq!(diagnose_tls(&refused, None, "localhost"), None);
    }

    #[test]
    fn wrong_ca_names_the_file() {
        for e in [
            CertificateError::UnknownIssuer,
            CertificateError::BadSignature,
        ] {
            let h = hint(rustls::Error::InvalidCertificate(e));
            assert!(
                h.contains("not signed by the CA in --ca-cert ca.pem"),
                "{h}"
            );
            assert!(h.contains("flotilla dev-certs"), "{h}");
        }
        let without = diagnose_tls(
            &wrapped(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
            None,
            "h",
        )
        .unwrap();
        assert!(without.contains("the CA given with --ca-cert"), "{without}");
    }

    #[test]
    fn ca_as_leaf_is_recognised() {
        let other = rustls::OtherError(Arc::new(webpki::Error::CaUsedAsEndEntity));
        let h = hint(rustls::Error::InvalidCertificate(CertificateError::Other(
            other,
        )));
        assert!(
            h.starts_with("the coordinator's certificate is a CA certificate"),
            "{h}"
        );
        // Another webpki error is still permanent, but described generically.
        let other = rustls::OtherError(Arc::new(webpki::Error::EndEntityUsedAsCa));
        let h = hint(rustls::Error::InvalidCertificate(CertificateError::Other(
            other,
        )));
        assert!(h.contains("was refused"), "{h}");
    }

    #[test]
    fn name_mismatch_lists_the_names() {
        let e = CertificateError::NotValidForNameContext {
            expected: rustls::pki_types::ServerName::try_from("coord.example")
                .unwrap()
                .to_owned(),
            presented: vec![
                "DnsName(\"localhost\")".into(),
                "IpAddress(127.0.0.1)".into(),
            ],
        };
        let h = hint(rustls::Error::InvalidCertificate(e));
        assert!(
            h.contains(
                "not valid for host coord.example (it names localhost, IpAddress(127.0.0.1))"
            ),
            "{h}"
        );
        let h = hint(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        ));
        assert!(h.contains("not valid for host coord.example:"), "{h}");
    }

    #[test]
    fn expiry_gives_dates() {
        let e = CertificateError::ExpiredContext {
            time: UnixTime::since_unix_epoch(Duration::from_secs(1_800_000_000)),
            not_after: UnixTime::since_unix_epoch(Duration::from_secs(1_700_000_000)),
        };
        let h = hint(rustls::Error::InvalidCertificate(e));
        assert!(h.contains("expired at 2023-11-14T22:13:20Z"), "{h}");
        let e = CertificateError::NotValidYetContext {
            time: UnixTime::since_unix_epoch(Duration::from_secs(1_700_000_000)),
            not_before: UnixTime::since_unix_epoch(Duration::from_secs(1_800_000_000)),
        };
        assert!(hint(rustls::Error::InvalidCertificate(e)).contains("check the clocks"));
    }

    #[test]
    fn handshake_incompatibilities_and_plain_text() {
        let h = hint(rustls::Error::AlertReceived(
            AlertDescription::ProtocolVersion,
        ));
        assert!(h.contains("TLS 1.2 or 1.3"), "{h}");
        let h = hint(rustls::Error::InvalidMessage(
            InvalidMessage::InvalidContentType,
        ));
        assert!(h.contains("does not speak TLS"), "{h}");
        // Not a configuration problem: left to the transport's retry.
        let e = wrapped(rustls::Error::AlertReceived(
            AlertDescription::InternalError,
        ));
        assert_eq!(diagnose_tls(&e, None, "h"), None);
    }

    #[test]
    fn every_hint_is_one_line() {
        let e = CertificateError::InvalidPurpose;
        assert!(!hint(rustls::Error::InvalidCertificate(e)).contains('\n'));
        let e = CertificateError::UnsupportedSignatureAlgorithmContext {
            signature_algorithm_id: vec![1, 2, 3],
            supported_algorithms: Vec::new(),
        };
        let h = hint(rustls::Error::InvalidCertificate(e));
        assert!(
            h.contains("algorithm this program does not support") && !h.contains('\n'),
            "{h}"
        );
    }
}
