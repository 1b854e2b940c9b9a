//! Why a credential was refused: the `flotilla-auth-error` metadata of `UNAUTHENTICATED` statuses.
//!
//! The coordinator attaches it to every `UNAUTHENTICATED` answer so that a client can react without
//! parsing the human-readable message: [`AuthError::Expired`] means "enroll again", every other
//! reason means the credential will never work again.

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

/// Metadata key carrying the [`AuthError`] of an `UNAUTHENTICATED` status.
pub const AUTH_ERROR_KEY: &str = "flotilla-auth-error";

/// Why the coordinator refused a call's credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthError {
    /// No (or a malformed) `authorization: Bearer <credential>` header.
    Missing,
    /// No client has this credential.
    Unknown,
    /// The credential has expired: enroll again with an enrollment token.
    Expired,
    /// The client was revoked by an operator.
    Revoked,
}

impl AuthError {
    /// The metadata value: `missing`, `unknown`, `expired` or `revoked`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Unknown => "unknown",
            AuthError::Expired => "expired",
            AuthError::Revoked => "revoked",
        }
    }

    /// Parses a metadata value; `None` for anything else.
    pub fn parse(value: &str) -> Option<Self> {
        [
            AuthError::Missing,
            AuthError::Unknown,
            AuthError::Expired,
            AuthError::Revoked,
        ]
        .into_iter()
        .find(|r| r.as_str() == value)
    }

    /// An `UNAUTHENTICATED` status with `message` and this reason in its metadata.
    pub fn status(self, message: impl Into<String>) -> Status {
        let mut metadata = MetadataMap::new();
        metadata.insert(AUTH_ERROR_KEY, MetadataValue::from_static(self.as_str()));
        Status::with_metadata(Code::Unauthenticated, message, metadata)
    }

    /// The reason carried by `status`: `None` unless it is `UNAUTHENTICATED` with a known
    /// `flotilla-auth-error` value.
    pub fn of(status: &Status) -> Option<Self> {
        if status.code() != Code::Unauthenticated {
            return None;
        }
        let value = status.metadata().get(AUTH_ERROR_KEY)?.to_str().ok()?;
        Self::parse(value.trim())
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trip() {
        for r in [
            AuthError::Missing,
            AuthError::Unknown,
            AuthError::Expired,
            AuthError::Revoked,
        ] {
            let s = r.status("nope");
            assert_eq!(s.code(), Code::Unauthenticated);
            assert_eq!(s.message(), "nope");
            assert_eq!(AuthError::of(&s), Some(r));
            assert_eq!(AuthError::parse(r.as_str()), Some(r));
        }
        assert_eq!(AuthError::of(&Status::unauthenticated("plain")), None);
        assert_eq!(AuthError::parse("EXPIRED"), None);
        // Only UNAUTHENTICATED statuses carry a reason.
        let mut md = MetadataMap::new();
        md.insert(AUTH_ERROR_KEY, MetadataValue::from_static("expired"));
        let denied = Status::with_metadata(Code::PermissionDenied, "x", md);
        assert_eq!(AuthError::of(&denied), None);
    }
}
