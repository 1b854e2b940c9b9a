//! Client configuration and construction of the transport endpoint (TLS by default).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngExt;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Uri};

use crate::error::ConfigError;

/// Jittered exponential backoff used between reconnection attempts.
///
/// The n-th consecutive failure (n = 0, 1, …) waits a uniformly random time in
/// `[0, min(max, initial × multiplier^n)]` ("full jitter"), so that many clients reconnecting to a
/// restarted coordinator spread out instead of arriving together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Upper bound of the first delay (> 0).
    pub initial: Duration,
    /// Cap of the upper bound (≥ `initial`).
    pub max: Duration,
    /// Growth factor of the upper bound per consecutive failure (finite, ≥ 1).
    pub multiplier: f64,
}

impl Default for Backoff {
    /// 1 s initially, doubling, capped at 60 s.
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            multiplier: 2.0,
        }
    }
}

impl Backoff {
    /// Checks the ranges documented on the fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.initial.is_zero() {
            return Err(ConfigError::InvalidBackoff("initial must be > 0".into()));
        }
        if self.max < self.initial {
            return Err(ConfigError::InvalidBackoff("max must be >= initial".into()));
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(ConfigError::InvalidBackoff(format!(
                "multiplier must be finite and >= 1, got {}",
                self.multiplier
            )));
        }
        Ok(())
    }

    /// Upper bound of the delay after `failures` consecutive failures (0 = first failure).
    pub fn ceiling(&self, failures: u32) -> Duration {
        let max = self.max.as_secs_f64();
        // powi of a finite multiplier ≥ 1 is finite or +inf; min() then caps it.
        let grown = self.initial.as_secs_f64() * self.multiplier.powi(failures.min(1000) as i32);
        Duration::from_secs_f64(if grown.is_finite() {
            grown.min(max)
        } else {
            max
        })
    }

    /// A random delay in `[0, ceiling(failures)]` (full jitter).
    pub fn delay(&self, failures: u32) -> Duration {
        let ceiling = self.ceiling(failures).as_secs_f64();
        let u: f64 = rand::rng().random();
        Duration::from_secs_f64(ceiling * u)
    }
}

/// How to reach and authenticate with a coordinator, and where to keep state.
///
/// Construct with [`ClientConfig::new`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Coordinator address: `https://host:port` (verified with [`ClientConfig::ca_cert`]), or
    /// `http://host:port` only together with [`ClientConfig::insecure`].
    pub coordinator: String,
    /// PEM file with the CA certificate(s) that signed the coordinator's certificate. Required for
    /// `https://`.
    pub ca_cert: Option<PathBuf>,
    /// Allow a plain-text `http://` coordinator (development only: the credential travels in clear).
    pub insecure: bool,
    /// Directory for the client's persistent state (`credential.json`). Created if missing.
    pub state_dir: PathBuf,
    /// One-time enrollment token, needed only on the first start (before `credential.json` exists).
    pub enrollment_token: Option<String>,
    /// Human-readable name sent at enrollment (logs and admin API only; not an identity).
    pub client_name: String,
    /// Jobs this client is willing to serve; empty means any job it is eligible for.
    pub job_ids: Vec<String>,
    /// Attributes announced at every check-in, which the coordinator's eligibility policies read
    /// (`platform`, `app_version`, `charging`, `unmetered`, `idle`, `region`, `labels`, or any
    /// other key). At most 64, keys ≤ 64 bytes, values ≤ 256 bytes, or check-ins are refused.
    pub attributes: std::collections::BTreeMap<String, String>,
    /// Cohort labels sent with every federated evaluation report (`region → eu`,
    /// `device → phone`, …): the coordinator summarizes evaluations per `key=value`. At most 16;
    /// keys and values 1–64 bytes of printable ASCII, keys without `=` (checked by
    /// [`crate::Client::new`]).
    pub cohorts: std::collections::BTreeMap<String, String>,
    /// Reconnection backoff.
    pub backoff: Backoff,
    /// Payload bytes per upload chunk (default [`flotilla_proto::DEFAULT_CHUNK_BYTES`]).
    pub upload_chunk_bytes: usize,
}

impl ClientConfig {
    /// A configuration with TLS expected (no CA yet), no token, the client name `"flotilla-client"`,
    /// any job, default backoff and chunk size.
    pub fn new(coordinator: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            coordinator: coordinator.into(),
            ca_cert: None,
            insecure: false,
            state_dir: state_dir.into(),
            enrollment_token: None,
            client_name: "flotilla-client".into(),
            job_ids: Vec::new(),
            attributes: Default::default(),
            cohorts: Default::default(),
            backoff: Backoff::default(),
            upload_chunk_bytes: flotilla_proto::DEFAULT_CHUNK_BYTES,
        }
    }

    /// Path of the credential file inside [`ClientConfig::state_dir`].
    pub fn credential_path(&self) -> PathBuf {
        self.state_dir.join(crate::credential::CREDENTIAL_FILE)
    }

    /// Validates the configuration and builds the transport endpoint (TLS set up from the CA file
    /// for `https://`). Does not connect.
    pub(crate) fn endpoint(&self) -> Result<Endpoint, ConfigError> {
        self.backoff.validate()?;
        flotilla_registry::check_cohorts(&self.cohorts)
            .map_err(|e| ConfigError::InvalidCohorts(e.to_string()))?;
        if self.client_name.trim().is_empty() {
            return Err(ConfigError::EmptyClientName);
        }
        // The coordinator trims spaces only, and refuses any other control or whitespace character.
        flotilla_core::names::check_client_name(self.client_name.trim_matches(' '))?;
        if self.upload_chunk_bytes == 0 || self.upload_chunk_bytes > flotilla_proto::MAX_CHUNK_BYTES
        {
            return Err(ConfigError::InvalidChunkSize {
                got: self.upload_chunk_bytes,
                max: flotilla_proto::MAX_CHUNK_BYTES,
            });
        }
        let url = self.coordinator.trim();
        let bad = |reason: &str| ConfigError::InvalidUrl {
            url: self.coordinator.clone(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host"))?
            .to_owned();
        if uri
            .path_and_query()
            .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
        {
            return Err(bad("must not have a path"));
        }
        let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| bad(&e.to_string()))?;
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        match uri.scheme_str() {
            Some("https") => {
                let ca_path =
                    self.ca_cert
                        .as_deref()
                        .ok_or_else(|| ConfigError::MissingCaCert {
                            url: self.coordinator.clone(),
                        })?;
                let pem = read_ca_pem(ca_path)?;
                // Brackets of an IPv6 literal are not part of the TLS server name.
                let domain = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                let tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(pem))
                    .domain_name(domain);
                endpoint.tls_config(tls).map_err(|e| ConfigError::Tls {
                    url: self.coordinator.clone(),
                    reason: error_chain(&e),
                })
            }
            Some("http") => {
                if !self.insecure {
                    return Err(ConfigError::InsecureNotAllowed {
                        url: self.coordinator.clone(),
                    });
                }
                tracing::warn!(
                    coordinator = %self.coordinator,
                    "insecure mode: talking to the coordinator over plain-text HTTP; the credential \
                     and all traffic can be read and altered on the network"
                );
                Ok(endpoint)
            }
            Some(other) => Err(bad(&format!(
                "unsupported scheme {other:?} (use https:// or, with insecure, http://)"
            ))),
            None => Err(bad("missing scheme (use https://host:port)")),
        }
    }
}

/// Reads a CA PEM file and checks that it holds at least one certificate usable as a trust anchor.
pub(crate) fn read_ca_pem(path: &Path) -> Result<Vec<u8>, ConfigError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    let pem = std::fs::read(path).map_err(|source| ConfigError::ReadCaCert {
        path: path.to_owned(),
        source,
    })?;
    let bad = |reason: String| ConfigError::BadCaCert {
        path: path.to_owned(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("malformed PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("certificate cannot be used as a CA: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("no PEM \"CERTIFICATE\" block found".into()));
    }
    Ok(pem)
}

/// `e` and its sources on one line (a source whose text the line already holds is skipped).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_ceiling_grows_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(4), Duration::from_secs(1));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(1));
        for n in 0..50 {
            assert!(b.delay(n) <= b.ceiling(n));
        }
        let huge = Backoff {
            multiplier: f64::MAX,
            ..b
        };
        assert_eq!(huge.ceiling(10), Duration::from_secs(1));
    }

    #[test]
    fn backoff_validation() {
        let ok = Backoff::default();
        assert!(ok.validate().is_ok());
        for bad in [
            Backoff {
                initial: Duration::ZERO,
                ..ok
            },
            Backoff {
                max: Duration::from_millis(1),
                ..ok
            },
            Backoff {
                multiplier: 0.5,
                ..ok
            },
            Backoff {
                multiplier: f64::NAN,
                ..ok
            },
        ] {
            assert!(matches!(
                bad.validate(),
                Err(ConfigError::InvalidBackoff(_))
            ));
        }
    }
}
