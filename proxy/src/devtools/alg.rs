//! The JWS algorithms kaname verifies (RFC 7518 §3.1, RFC 8037), and the
//! kind of key each one signs with.

use std::fmt;

/// One JWS algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// The kind of key an algorithm signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A shared secret of at least this many bytes (RFC 7518 §3.2).
    Secret {
        min_len: usize,
    },
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl Alg {
    /// Every algorithm, in the order messages list them.
    pub const ALL: [Alg; 12] = [
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    /// The JOSE name (`RS256`), as a token's `alg` and the config write it.
    pub const fn name(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    /// The algorithm named `name`, in any case (`es256` is ES256).
    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }

    /// `HS256, HS384, …, EdDSA`: every name, for messages.
    pub fn all_names() -> String {
        let names: Vec<&str> = Alg::ALL.iter().map(|a| a.name()).collect();
        names.join(", ")
    }

    pub const fn key_kind(self) -> KeyKind {
        match self {
            Alg::HS256 => KeyKind::Secret { min_len: 32 },
            Alg::HS384 => KeyKind::Secret { min_len: 48 },
            Alg::HS512 => KeyKind::Secret { min_len: 64 },
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512 => {
                KeyKind::Rsa
            }
            Alg::ES256 => KeyKind::EcP256,
            Alg::ES384 => KeyKind::EcP384,
            Alg::EdDSA => KeyKind::Ed25519,
        }
    }

    /// HS256/384/512: signed with a shared secret, not a key pair.
    pub const fn is_hmac(self) -> bool {
        matches!(self.key_kind(), KeyKind::Secret { .. })
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl KeyKind {
    /// The algorithm a key of this kind signs with when none is named:
    /// RS256, ES256, ES384, EdDSA (HS256 for a secret).
    pub const fn default_alg(self) -> Alg {
        match self {
            KeyKind::Secret { .. } => Alg::HS256,
            KeyKind::Rsa => Alg::RS256,
            KeyKind::EcP256 => Alg::ES256,
            KeyKind::EcP384 => Alg::ES384,
            KeyKind::Ed25519 => Alg::EdDSA,
        }
    }
}

impl fmt::Display for KeyKind {
    /// `an RSA key`, for "K.pem holds an RSA key; ES256 needs an EC P-256 key".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::Secret { .. } => "a shared secret",
            KeyKind::Rsa => "an RSA key",
            KeyKind::EcP256 => "an EC P-256 key",
            KeyKind::EcP384 => "an EC P-384 key",
            KeyKind::Ed25519 => "an Ed25519 key",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_in_any_case() {
        for alg in Alg::ALL {
            assert_eq!(Alg::from_name(alg.name()), Some(alg));
            assert_eq!(Alg::from_name(&alg.name().to_lowercase()), Some(alg));
        }
        assert_eq!(Alg::from_name("none"), None);
        assert_eq!(Alg::from_name("ES512"), None);
        assert_eq!(Alg::from_name(""), None);
    }

    #[test]
    fn key_kinds_and_their_default_algorithm() {
        assert_eq!(Alg::HS384.key_kind(), KeyKind::Secret { min_len: 48 });
        assert_eq!(Alg::PS512.key_kind(), KeyKind::Rsa);
        assert!(Alg::HS512.is_hmac() && !Alg::EdDSA.is_hmac());
        for alg in [Alg::HS256, Alg::RS256, Alg::ES256, Alg::ES384, Alg::EdDSA] {
            assert_eq!(alg.key_kind().default_alg(), alg);
        }
        assert_eq!(KeyKind::EcP256.to_string(), "an EC P-256 key");
        assert!(
            Alg::all_names().starts_with("HS256, HS384") && Alg::all_names().ends_with("EdDSA")
        );
    }
}
